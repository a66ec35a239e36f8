import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ClusterClient, LIST_REFRESH_MS, droppingLanes, laneKey } from './store';
import { SILENCE_DOWN_MS, realClock } from './connection';
import type { ClusterInfo, SampleFrame } from './protocol';
import { FakeNetwork, part, sample, shard } from './testkit/fakes';

const LIST: ClusterInfo = {
  v: 1,
  broker: 1,
  controller: 1,
  brokers: [
    { id: 1, client: 'h1:9092', http: 'h1:8080', alive: true },
    { id: 2, client: 'h2:9092', http: 'h2:8080', alive: true },
    { id: 3, client: 'h3:9092', http: '0.0.0.0:8083', alive: true },
  ],
};
const WS = { 1: 'ws://page.example:8080/ws', 2: 'ws://h2:8080/ws', 3: 'ws://page.example:8083/ws' } as const;

/** Broker `id`'s sample at the fake clock's now, with `records` produced so far. */
function brokerSample(id: number, records: number, uptimeStart = 0, leaderOf: Record<string, number> = { 't/0': 1 }, term = 1): SampleFrame {
  const partitions = Object.entries(leaderOf).map(([key, leader]) => {
    const [topic, p] = key.split('/');
    return part(topic, Number(p), { role: leader === id ? 'leader' : 'follower', leader, term, log_end_offset: records });
  });
  return sample(id, {
    ts_ms: Date.now(),
    uptime_ms: Date.now() - uptimeStart + 1,
    controller: 1,
    controller_term: term,
    shards: [shard(0, { records_in_total: records, busy_fraction: 0.5 })],
    partitions,
  });
}

function setup() {
  const net = new FakeNetwork();
  const fetched: string[] = [];
  const answers = new Map<string, () => unknown>([['./api/cluster', () => LIST]]);
  const client = new ClusterClient({
    clock: realClock,
    socketFactory: net.factory,
    random: () => 0.5,
    location: { host: 'page.example:8080', hostname: 'page.example', protocol: 'http:' },
    fetchJson: async (url) => {
      fetched.push(url);
      const a = answers.get(url);
      if (!a) throw new Error(`unreachable: ${url}`);
      return a();
    },
  });
  return { net, fetched, answers, client };
}

describe('cluster client', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(1_000_000);
  });
  afterEach(() => vi.useRealTimers());

  it("connects to every broker: the page's origin for the one that served it, the page host for 0.0.0.0", async () => {
    const { net, client } = setup();
    client.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(net.sockets.map((s) => s.url).sort()).toEqual([WS[1], WS[2], WS[3]].sort());
    const v = client.getSnapshot();
    expect(v.served_by).toBe(1);
    expect(v.brokers.map((b) => b.state)).toEqual(['connecting', 'connecting', 'connecting']);
    client.stop();
  });

  it('stays live when the broker that served the page dies: down within 3 s, new leader shown, list refreshed elsewhere', async () => {
    const { net, client, fetched, answers } = setup();
    client.start();
    await vi.advanceTimersByTimeAsync(0);
    const send = (id: 1 | 2 | 3, s: SampleFrame) => net.latest(WS[id]).send(s);
    let records = 0;
    for (let i = 0; i < 3; i++) {
      records += 1000;
      for (const id of [1, 2, 3] as const) send(id, brokerSample(id, records));
      await vi.advanceTimersByTimeAsync(1000);
    }
    let v = client.getSnapshot();
    expect(v.brokers.map((b) => b.state)).toEqual(['up', 'up', 'up']);
    expect(v.partitions[0].leader).toBe(1);
    // three brokers each report 1000 records/s on their shard
    expect(v.totals.records_in_total).toBe(3000);

    // broker 1 stops sending (a kill -9 whose FIN is lost); the others go on
    const killedAt = Date.now();
    let downAt: number | null = null;
    for (let i = 0; i < 5 && downAt === null; i++) {
      records += 1000;
      for (const id of [2, 3] as const) send(id, brokerSample(id, records, 0, { 't/0': i >= 1 ? 2 : 1 }, i >= 1 ? 2 : 1));
      await vi.advanceTimersByTimeAsync(1000);
      if (client.getSnapshot().brokers[0].state === 'down') downAt = Date.now();
    }
    expect(downAt).not.toBeNull();
    expect(downAt! - killedAt).toBeLessThanOrEqual(SILENCE_DOWN_MS + 1000);
    v = client.getSnapshot();
    expect(v.brokers.map((b) => b.state)).toEqual(['down', 'up', 'up']);
    expect(v.partitions[0].leader).toBe(2);
    expect(v.partitions[0].term).toBe(2);
    expect(v.partitions[0].leader_changed_ms).not.toBeNull();
    expect(v.partitions[0].previous_leader).toBe(1);
    // totals: only the live brokers
    expect(v.totals.records_in_total).toBe(2000);
    expect(v.events.some((e) => e.kind === 'dashboard_broker_down' && e.broker === 1)).toBe(true);

    // the periodic list refresh goes to a live broker, not the dead origin
    answers.set('http://h2:8080/api/cluster', () => ({ ...LIST, broker: 2, controller: 2 }));
    fetched.length = 0;
    for (let t = 0; t < LIST_REFRESH_MS; t += 1000) {
      for (const id of [2, 3] as const) send(id, brokerSample(id, records, 0, { 't/0': 2 }, 2));
      await vi.advanceTimersByTimeAsync(1000);
    }
    expect(fetched[0]).toBe('http://h2:8080/api/cluster');
    expect(client.getSnapshot().brokers.map((b) => b.state)).toEqual(['down', 'up', 'up']);
    client.stop();
  });

  it('marks a returning broker up and handles its counters starting again from 0', async () => {
    const { net, client } = setup();
    client.start();
    await vi.advanceTimersByTimeAsync(0);
    const s1 = net.latest(WS[1]);
    s1.send(brokerSample(1, 5_000_000));
    await vi.advanceTimersByTimeAsync(1000);
    s1.send(brokerSample(1, 5_001_000));
    expect(client.getSnapshot().brokers[0].rates.records_in_total).toBe(1000);
    s1.serverClose();
    expect(client.getSnapshot().brokers[0].state).toBe('down');
    expect(client.getSnapshot().brokers[0].rates.records_in_total).toBeNull();

    // restarted 2 s later; the client retries at 0.5 s, 1 s, 2 s
    const restartAt = Date.now() + 2000;
    for (let i = 0; i < 20 && client.getSnapshot().brokers[0].state !== 'up'; i++) {
      await vi.advanceTimersByTimeAsync(250);
      const s = net.latest(WS[1]);
      if (s === s1) continue;
      if (Date.now() < restartAt) s.serverClose();
      else s.send(brokerSample(1, 10, restartAt));
    }
    const b1 = client.getSnapshot().brokers[0];
    expect(b1.state).toBe('up');
    expect(Date.now() - restartAt).toBeLessThan(5000);
    expect(b1.rates.records_in_total).toBeNull();
    await vi.advanceTimersByTimeAsync(1000);
    net.latest(WS[1]).send(brokerSample(1, 510, restartAt));
    expect(client.getSnapshot().brokers[0].rates.records_in_total).toBe(500);
    expect(client.getSnapshot().events.some((e) => e.kind === 'dashboard_broker_up' && e.broker === 1)).toBe(true);
    client.stop();
  });

  it('keeps retrying the initial broker list until it loads', async () => {
    const { net, client, answers, fetched } = setup();
    answers.delete('./api/cluster');
    client.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(client.getSnapshot().list_error).toMatch(/unreachable/);
    answers.set('./api/cluster', () => LIST);
    await vi.advanceTimersByTimeAsync(1000);
    expect(fetched.length).toBe(2);
    expect(client.getSnapshot().list_error).toBeNull();
    expect(net.sockets).toHaveLength(3);
    client.stop();
  });

  it('puts broker events in the feed, newest first, with a readable line', async () => {
    const { net, client } = setup();
    client.start();
    await vi.advanceTimersByTimeAsync(0);
    const ev = (seq: number, kind: string, fields: object) => ({ v: 1, type: 'event', broker: 2, ts_ms: Date.now(), seq, kind, ...fields });
    net.latest(WS[2]).send(ev(0, 'election_started', { topic: 't', partition: 0, term: 2, candidate: 2 }));
    net.latest(WS[2]).send(ev(1, 'leader_changed', { topic: 't', partition: 0, term: 2, leader: 2, previous_leader: 1 }));
    net.latest(WS[2]).send(ev(2, 'group_rebalanced', { group: 'g', generation: 5, members: 2, member: 'm-1', why: 'expired' }));
    const feed = client.getSnapshot().events.filter((e) => e.source === 'broker');
    expect(feed.map((e) => e.kind)).toEqual(['group_rebalanced', 'leader_changed', 'election_started']);
    expect(feed[0].text).toBe('group g: member m-1 lease expired; generation 5, 2 member(s)');
    expect(feed[1].text).toBe('t/0: leader 1 → 2 (term 2)');
    client.stop();
  });

  it('keeps the throughput chart to the last five minutes', async () => {
    const { client } = setup();
    client.start();
    await vi.advanceTimersByTimeAsync(10 * 60 * 1000);
    const [xs] = client.getSnapshot().throughput.data();
    expect(xs.length).toBeGreaterThan(290);
    expect(xs.length).toBeLessThanOrEqual(302);
    expect(xs[xs.length - 1] - xs[0]).toBeLessThanOrEqual(300);
    client.stop();
  });
});

describe('starving peer lanes', () => {
  const lanes = (dropped: number, uptime: number) =>
    sample(3, {
      uptime_ms: uptime,
      shards: [shard(1, { peer_lanes: [{ peer: 1, lane: 'bulk', up: true, frames_queued: 200, frames_dropped_total: dropped, reconnects_total: 0 }] })],
    });

  it('flags a lane whose dropped total rose since the previous sample, not one that dropped long ago', () => {
    expect([...droppingLanes(lanes(10, 1000), lanes(14, 2000))]).toEqual([laneKey(1, 1, 'bulk')]);
    expect(droppingLanes(lanes(14, 2000), lanes(14, 3000)).size).toBe(0);
    expect(droppingLanes(null, lanes(14, 3000)).size).toBe(0);
  });

  it('does not flag a restarted broker whose totals started again', () => {
    expect(droppingLanes(lanes(500, 9000), lanes(3, 1000)).size).toBe(0);
  });
});
