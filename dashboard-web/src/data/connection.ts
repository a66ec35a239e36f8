// One broker's WebSocket: up/down detection and reconnection with backoff.
// Time and sockets come in from outside (Clock, SocketFactory), so tests run
// it on fake timers with fake sockets.
import { parseFrame, type Frame } from './protocol';

/** No frame for this long means the broker is down (it sends one a second). */
export const SILENCE_DOWN_MS = 3000;
/** First reconnect delay; doubles per failed attempt up to the maximum. */
export const BACKOFF_BASE_MS = 500;
/** Reconnect delay cap: a returning broker is seen within about 5 s. */
export const BACKOFF_MAX_MS = 5000;
/** ± jitter on each delay, so many pages do not reconnect in step. */
export const BACKOFF_JITTER = 0.2;

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof setTimeout>),
};

/** The part of the browser's WebSocket the connection uses. */
export interface SocketLike {
  onopen: (() => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: (() => void) | null;
  close(): void;
}

export type SocketFactory = (url: string) => SocketLike;

export const browserSocketFactory: SocketFactory = (url) => new WebSocket(url) as unknown as SocketLike;

export type LinkState = 'connecting' | 'up' | 'down';

export interface ConnectionEvents {
  onFrame(frame: Frame): void;
  onState(state: LinkState, reason: string): void;
  onBadFrame?(error: string): void;
}

export interface ConnectionOptions {
  clock?: Clock;
  socketFactory?: SocketFactory;
  /** 0..1; 0.5 means no jitter. */
  random?: () => number;
}

/** The delay before reconnect attempt `attempt` (0-based), jitter applied. */
export function backoffDelay(attempt: number, random: () => number): number {
  const raw = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 20));
  return Math.round(raw * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * random()));
}

export class BrokerConnection {
  private readonly clock: Clock;
  private readonly socketFactory: SocketFactory;
  private readonly random: () => number;
  private socket: SocketLike | null = null;
  /** Bumped per socket, so callbacks of an abandoned socket do nothing. */
  private generation = 0;
  private silenceTimer: unknown = null;
  private reconnectTimer: unknown = null;
  private attempt = 0;
  private stopped = false;
  private _state: LinkState = 'connecting';
  private _lastFrameMs: number | null = null;
  private _url: string;

  constructor(url: string, private readonly events: ConnectionEvents, opts: ConnectionOptions = {}) {
    this._url = url;
    this.clock = opts.clock ?? realClock;
    this.socketFactory = opts.socketFactory ?? browserSocketFactory;
    this.random = opts.random ?? Math.random;
  }

  get state(): LinkState {
    return this._state;
  }
  get url(): string {
    return this._url;
  }
  get lastFrameMs(): number | null {
    return this._lastFrameMs;
  }

  start(): void {
    this.stopped = false;
    this.open();
  }

  /** The broker moved: drop the socket and connect to the new address now. */
  setUrl(url: string): void {
    if (url === this._url) return;
    this._url = url;
    if (this.stopped) return;
    this.abandonSocket();
    this.clearReconnect();
    this.attempt = 0;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    this.abandonSocket();
    this.clearReconnect();
  }

  private open(): void {
    const gen = ++this.generation;
    let socket: SocketLike;
    try {
      socket = this.socketFactory(this._url);
    } catch (e) {
      this.fail(gen, `cannot open socket: ${String(e)}`);
      return;
    }
    this.socket = socket;
    // A socket that neither delivers a frame nor closes counts as silent.
    this.armSilence(gen);
    socket.onmessage = (ev) => {
      if (gen !== this.generation) return;
      if (typeof ev.data !== 'string') return;
      this._lastFrameMs = this.clock.now();
      this.armSilence(gen);
      const parsed = parseFrame(ev.data);
      if (this._state !== 'up') {
        this.attempt = 0;
        this.setState('up', 'frame received');
      }
      if (parsed.ok) this.events.onFrame(parsed.frame);
      else this.events.onBadFrame?.(parsed.error);
    };
    socket.onclose = (ev) => {
      const why = ev?.code ? `socket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})` : 'socket closed';
      this.fail(gen, why);
    };
    socket.onerror = () => this.fail(gen, 'socket error');
  }

  private armSilence(gen: number): void {
    if (this.silenceTimer !== null) this.clock.clearTimeout(this.silenceTimer);
    this.silenceTimer = this.clock.setTimeout(() => {
      this.silenceTimer = null;
      this.fail(gen, `no frame for ${SILENCE_DOWN_MS} ms`);
    }, SILENCE_DOWN_MS);
  }

  /** The current socket failed: mark down, drop it, schedule a reconnect. */
  private fail(gen: number, reason: string): void {
    if (gen !== this.generation || this.stopped) return;
    this.abandonSocket();
    this.setState('down', reason);
    const delay = backoffDelay(this.attempt, this.random);
    this.attempt += 1;
    this.clearReconnect();
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.open();
    }, delay);
  }

  private abandonSocket(): void {
    this.generation += 1;
    if (this.silenceTimer !== null) {
      this.clock.clearTimeout(this.silenceTimer);
      this.silenceTimer = null;
    }
    const s = this.socket;
    this.socket = null;
    if (s) {
      s.onopen = s.onmessage = s.onclose = s.onerror = null;
      try {
        s.close();
      } catch {
        // closing a socket that never opened may throw; it is gone either way
      }
    }
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== null) {
      this.clock.clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
  }

  private setState(state: LinkState, reason: string): void {
    if (state === this._state) return;
    this._state = state;
    this.events.onState(state, reason);
  }
}
