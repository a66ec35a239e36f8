import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BACKOFF_BASE_MS, BACKOFF_MAX_MS, BrokerConnection, SILENCE_DOWN_MS, backoffDelay, realClock, type LinkState } from './connection';
import type { Frame } from './protocol';
import { FakeNetwork, sample } from './testkit/fakes';

const URL = 'ws://b1:8080/ws';

function setup() {
  const net = new FakeNetwork();
  const states: { state: LinkState; reason: string; at: number }[] = [];
  const frames: Frame[] = [];
  const bad: string[] = [];
  const conn = new BrokerConnection(
    URL,
    {
      onFrame: (f) => frames.push(f),
      onState: (state, reason) => states.push({ state, reason, at: Date.now() }),
      onBadFrame: (e) => bad.push(e),
    },
    { clock: realClock, socketFactory: net.factory, random: () => 0.5 },
  );
  conn.start();
  return { net, states, frames, bad, conn };
}

describe('broker connection: up, down and reconnect', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(0);
  });
  afterEach(() => vi.useRealTimers());

  it('is up on the first frame, not on open, and passes frames on', () => {
    const { net, states, frames, conn } = setup();
    expect(conn.state).toBe('connecting');
    net.latest(URL).onopen?.();
    expect(conn.state).toBe('connecting');
    net.latest(URL).send(sample(1));
    expect(conn.state).toBe('up');
    expect(states.map((s) => s.state)).toEqual(['up']);
    expect(frames).toHaveLength(1);
    expect(frames[0].broker).toBe(1);
  });

  it('marks the broker down as soon as the socket closes', () => {
    const { net, conn, states } = setup();
    net.latest(URL).send(sample(1));
    vi.advanceTimersByTime(500);
    net.latest(URL).serverClose();
    expect(conn.state).toBe('down');
    expect(states.at(-1)!.at).toBe(500);
    expect(states.at(-1)!.reason).toMatch(/closed/);
  });

  it('marks a silent broker down after 3 s without a frame, and not before', () => {
    const { net, conn } = setup();
    const s = net.latest(URL);
    s.send(sample(1));
    // frames every second keep it up for a long time
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(1000);
      s.send(sample(1));
    }
    expect(conn.state).toBe('up');
    vi.advanceTimersByTime(SILENCE_DOWN_MS - 1);
    expect(conn.state).toBe('up');
    vi.advanceTimersByTime(1);
    expect(conn.state).toBe('down');
    expect(s.closedByClient).toBe(true);
  });

  it('reconnects with doubling delays capped at the maximum, and is up again on a frame', () => {
    const { net, conn } = setup();
    net.latest(URL).send(sample(1));
    net.latest(URL).serverClose();
    expect(net.count(URL)).toBe(1);
    const expected = [500, 1000, 2000, 4000, 5000, 5000];
    for (const delay of expected) {
      vi.advanceTimersByTime(delay - 1);
      const before = net.count(URL);
      vi.advanceTimersByTime(1);
      expect(net.count(URL)).toBe(before + 1);
      // the new socket fails at once (the broker is still dead)
      net.latest(URL).serverClose();
      expect(conn.state).toBe('down');
    }
    // it comes back: the next attempt delivers a frame
    vi.advanceTimersByTime(BACKOFF_MAX_MS);
    net.latest(URL).send(sample(1));
    expect(conn.state).toBe('up');
    // and the backoff starts from the base again after a success
    net.latest(URL).serverClose();
    const n = net.count(URL);
    vi.advanceTimersByTime(BACKOFF_BASE_MS);
    expect(net.count(URL)).toBe(n + 1);
  });

  it('treats a socket that connects but never sends as down after 3 s and retries', () => {
    const { net, conn } = setup();
    net.latest(URL).onopen?.();
    vi.advanceTimersByTime(SILENCE_DOWN_MS);
    expect(conn.state).toBe('down');
    vi.advanceTimersByTime(BACKOFF_BASE_MS);
    expect(net.count(URL)).toBe(2);
  });

  it('ignores a late message or close from a socket it has given up on', () => {
    const { net, conn, frames } = setup();
    const old = net.latest(URL);
    old.send(sample(1));
    // keep the handlers the connection installed, as a browser's queued
    // callbacks would still be delivered after the page gave up on the socket
    const lateMessage = old.onmessage!;
    const lateClose = old.onclose!;
    vi.advanceTimersByTime(SILENCE_DOWN_MS); // silent: abandoned
    vi.advanceTimersByTime(BACKOFF_BASE_MS);
    const fresh = net.latest(URL);
    expect(fresh).not.toBe(old);
    fresh.send(sample(1));
    expect(conn.state).toBe('up');
    lateMessage({ data: JSON.stringify(sample(9)) });
    lateClose({ code: 1006 });
    expect(conn.state).toBe('up');
    expect(net.count(URL)).toBe(2);
    expect(frames.map((f) => f.broker)).toEqual([1, 1]);
  });

  it('reports a bad frame without dropping the connection', () => {
    const { net, conn, bad, frames } = setup();
    net.latest(URL).send('{not json');
    net.latest(URL).send({ v: 2, type: 'sample', broker: 1, ts_ms: 1 });
    expect(bad).toHaveLength(2);
    expect(bad[1]).toMatch(/version 2/);
    expect(frames).toHaveLength(0);
    // a frame, even a bad one, proves the broker is alive
    expect(conn.state).toBe('up');
  });

  it('stops for good: no reconnect after stop', () => {
    const { net, conn } = setup();
    net.latest(URL).send(sample(1));
    conn.stop();
    vi.advanceTimersByTime(60_000);
    expect(net.count(URL)).toBe(1);
    expect(net.latest(URL).closedByClient).toBe(true);
  });

  it('moves to a new address at once', () => {
    const { net, conn } = setup();
    net.latest(URL).send(sample(1));
    conn.setUrl('ws://b1-new:8080/ws');
    expect(net.latest(URL).closedByClient).toBe(true);
    expect(net.count('ws://b1-new:8080/ws')).toBe(1);
  });

  it('jitters each delay within ±20 %', () => {
    expect(backoffDelay(0, () => 0)).toBe(400);
    expect(backoffDelay(0, () => 1)).toBe(600);
    expect(backoffDelay(50, () => 0.5)).toBe(BACKOFF_MAX_MS);
  });
});
