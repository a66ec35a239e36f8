// The cluster client: learns the brokers from /api/cluster, keeps a socket to
// each, and turns their frames into one ClusterView for the views. Time,
// sockets and HTTP come in through ClientOptions, so tests drive it whole.
import {
  BrokerConnection,
  realClock,
  browserSocketFactory,
  type Clock,
  type LinkState,
  type SocketFactory,
} from './connection';
import {
  LeaderTracker,
  clusterTotals,
  mergeController,
  mergeGroupLag,
  mergeGroups,
  mergePartitions,
  type BrokerInput,
  type MergedPartition,
  type Totals,
} from './cluster';
import { SeriesBuffer } from './history';
import { telemetryAddress, type BrokerId, type ClusterInfo, type EventFrame, type Frame, type SampleFrame } from './protocol';
import { RateTracker, emptyRates, rateOf } from './rates';
import { describeEvent } from './events';

/** How often the broker list is fetched again from a live broker. */
export const LIST_REFRESH_MS = 10_000;
/** How often a history point is taken for the charts. */
export const TICK_MS = 1000;
/** Events the feed keeps (newest first). */
export const FEED_EVENTS_MAX = 500;
/** How long a changed leader stays highlighted. */
export const LEADER_CHANGE_HIGHLIGHT_MS = 15_000;
/** Initial /api/cluster retry delays: 1 s doubling to 10 s. */
const LIST_RETRY_MS_MIN = 1000;
const LIST_RETRY_MS_MAX = 10_000;

export const THROUGHPUT_SERIES = ['records_in', 'records_out', 'bytes_in', 'bytes_out'];

export interface PageLocation {
  host: string;
  hostname: string;
  protocol: string;
}

export interface ClientOptions {
  clock?: Clock;
  socketFactory?: SocketFactory;
  fetchJson?: (url: string) => Promise<unknown>;
  location?: PageLocation;
  random?: () => number;
}

export interface FeedEvent {
  id: string;
  ts_ms: number;
  broker: BrokerId | null;
  kind: string;
  text: string;
  /** `broker`: an event frame; `dashboard`: what this page saw (a socket up/down). */
  source: 'broker' | 'dashboard';
}

export interface PartitionView extends MergedPartition {
  /** Produce rate from the leader's log end, records/s (`null`: not known yet). */
  records_per_sec: number | null;
  /** When the leader last changed, if within the highlight window. */
  leader_changed_ms: number | null;
  previous_leader: BrokerId | null;
}

export interface BrokerView extends BrokerInput {
  /** Lanes (`shard/peer/lane`) that dropped frames since the previous sample. */
  dropping_lanes: Set<string>;
  last_frame_ms: number | null;
  /** Partitions this broker leads (merged view). */
  leads: number;
  is_controller: boolean;
}

export interface ClusterView {
  version: number;
  served_by: BrokerId | null;
  list_error: string | null;
  brokers: BrokerView[];
  controller: BrokerId | null;
  controller_term: number | null;
  partitions: PartitionView[];
  totals: Totals;
  groups: ReturnType<typeof mergeGroups>;
  group_lag: ReturnType<typeof mergeGroupLag>;
  events: FeedEvent[];
  throughput: SeriesBuffer;
  /** Per broker: busy fraction per shard over time (series `shard <n>`). */
  busy: Map<BrokerId, SeriesBuffer>;
  now_ms: number;
}

interface BrokerEntry {
  id: BrokerId;
  client: string;
  http: string | null;
  conn: BrokerConnection | null;
  state: LinkState;
  reason: string;
  sample: SampleFrame | null;
  rates: RateTracker;
  /** Lanes (`shard/peer/lane`) whose dropped total rose since the previous sample. */
  dropping: Set<string>;
}

export function laneKey(shard: number, peer: BrokerId, lane: string): string {
  return `${shard}/${peer}/${lane}`;
}

/** Lanes whose dropped total rose between two samples of one broker (none across a restart). */
export function droppingLanes(prev: SampleFrame | null, cur: SampleFrame): Set<string> {
  const out = new Set<string>();
  if (!prev || cur.uptime_ms < prev.uptime_ms) return out;
  const before = new Map<string, number>();
  for (const sh of prev.shards) for (const l of sh.peer_lanes) before.set(laneKey(sh.shard, l.peer, l.lane), l.frames_dropped_total);
  for (const sh of cur.shards) {
    for (const l of sh.peer_lanes) {
      const k = laneKey(sh.shard, l.peer, l.lane);
      const b = before.get(k);
      if (b !== undefined && l.frames_dropped_total > b) out.add(k);
    }
  }
  return out;
}

function defaultFetchJson(url: string): Promise<unknown> {
  return fetch(url, { cache: 'no-store' }).then((r) => {
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  });
}

function isClusterInfo(x: unknown): x is ClusterInfo {
  const o = x as ClusterInfo;
  return typeof o === 'object' && o !== null && typeof o.broker === 'number' && Array.isArray(o.brokers);
}

export class ClusterClient {
  private readonly clock: Clock;
  private readonly socketFactory: SocketFactory;
  private readonly fetchJson: (url: string) => Promise<unknown>;
  private readonly loc: PageLocation;
  private readonly random: () => number;
  private brokers = new Map<BrokerId, BrokerEntry>();
  private servedBy: BrokerId | null = null;
  private listController: BrokerId | null = null;
  private listError: string | null = null;
  private events: FeedEvent[] = [];
  private eventSeq = 0;
  private leaders = new LeaderTracker();
  private previousLeader = new Map<string, BrokerId | null>();
  private logEnds = new Map<string, { ts: number; end: number; leader: BrokerId | null }>();
  private partitionRates = new Map<string, number | null>();
  private throughput = new SeriesBuffer(THROUGHPUT_SERIES);
  private busy = new Map<BrokerId, SeriesBuffer>();
  private listeners = new Set<() => void>();
  private version = 0;
  private view: ClusterView | null = null;
  private timers: unknown[] = [];
  private stopped = false;
  private listAttempt = 0;

  constructor(opts: ClientOptions = {}) {
    this.clock = opts.clock ?? realClock;
    this.socketFactory = opts.socketFactory ?? browserSocketFactory;
    this.fetchJson = opts.fetchJson ?? defaultFetchJson;
    this.loc = opts.location ?? { host: location.host, hostname: location.hostname, protocol: location.protocol };
    this.random = opts.random ?? Math.random;
  }

  start(): void {
    this.stopped = false;
    void this.loadInitialList();
    this.every(TICK_MS, () => this.tick());
    this.every(LIST_REFRESH_MS, () => void this.refreshList());
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers = [];
    for (const b of this.brokers.values()) b.conn?.stop();
  }

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getSnapshot = (): ClusterView => {
    if (!this.view || this.view.version !== this.version) this.view = this.buildView();
    return this.view;
  };

  /** A repeating timer on the injected clock (re-armed after each run). */
  private every(ms: number, fn: () => void): void {
    const slot = this.timers.length;
    const run = () => {
      if (this.stopped) return;
      fn();
      this.timers[slot] = this.clock.setTimeout(run, ms);
    };
    this.timers.push(this.clock.setTimeout(run, ms));
  }

  private changed(): void {
    this.version += 1;
    for (const l of this.listeners) l();
  }

  private async loadInitialList(): Promise<void> {
    while (!this.stopped) {
      try {
        const info = await this.fetchJson('./api/cluster');
        if (!isClusterInfo(info)) throw new Error('/api/cluster: not a cluster description');
        this.servedBy = info.broker;
        this.applyList(info);
        return;
      } catch (e) {
        this.listError = String(e instanceof Error ? e.message : e);
        this.changed();
        const delay = Math.min(LIST_RETRY_MS_MAX, LIST_RETRY_MS_MIN * 2 ** this.listAttempt++);
        await new Promise<void>((resolve) => this.clock.setTimeout(resolve, delay));
      }
    }
  }

  /** Fetches the list from the first live broker that answers. */
  async refreshList(): Promise<void> {
    const live = [...this.brokers.values()].filter((b) => b.state === 'up' && b.conn);
    for (const b of live) {
      const url = `${this.loc.protocol}//${b.conn!.url.replace(/^wss?:\/\//, '').replace(/\/ws$/, '')}/api/cluster`;
      try {
        const info = await this.fetchJson(url);
        if (!isClusterInfo(info)) continue;
        this.applyList(info);
        return;
      } catch {
        // try the next live broker
      }
    }
  }

  /** Adopts a broker list: new brokers get a socket, moved ones reconnect, gone ones close. */
  applyList(info: ClusterInfo): void {
    this.listError = null;
    this.listController = info.controller ?? null;
    const seen = new Set<BrokerId>();
    for (const b of info.brokers) {
      seen.add(b.id);
      const addr = telemetryAddress(b, this.servedBy, this.loc.host, this.loc.hostname);
      const url = addr ? `${this.loc.protocol === 'https:' ? 'wss' : 'ws'}://${addr}/ws` : null;
      let e = this.brokers.get(b.id);
      if (!e) {
        e = { id: b.id, client: b.client, http: b.http, conn: null, state: 'connecting', reason: '', sample: null, rates: new RateTracker(), dropping: new Set() };
        this.brokers.set(b.id, e);
      }
      e.client = b.client;
      e.http = b.http;
      if (url === null) {
        e.conn?.stop();
        e.conn = null;
        e.state = 'down';
        e.reason = 'no telemetry address';
      } else if (!e.conn) {
        e.conn = this.connect(e, url);
      } else {
        e.conn.setUrl(url);
      }
    }
    for (const [id, e] of this.brokers) {
      if (!seen.has(id)) {
        e.conn?.stop();
        this.brokers.delete(id);
        this.busy.delete(id);
      }
    }
    this.changed();
  }

  private connect(e: BrokerEntry, url: string): BrokerConnection {
    const conn = new BrokerConnection(
      url,
      {
        onFrame: (f) => this.onFrame(e, f),
        onState: (state, reason) => {
          const was = e.state;
          e.state = state;
          e.reason = reason;
          if (state === 'down') e.rates.clear();
          if (state === 'down' || (state === 'up' && was === 'down')) {
            this.pushEvent({
              ts_ms: this.clock.now(),
              broker: e.id,
              kind: state === 'up' ? 'dashboard_broker_up' : 'dashboard_broker_down',
              text: state === 'up' ? `broker ${e.id} is reachable again` : `broker ${e.id} unreachable: ${reason}`,
              source: 'dashboard',
            });
          }
          this.changed();
        },
      },
      { clock: this.clock, socketFactory: this.socketFactory, random: this.random },
    );
    conn.start();
    return conn;
  }

  private onFrame(e: BrokerEntry, f: Frame): void {
    if (f.type === 'sample') {
      e.dropping = droppingLanes(e.sample, f);
      e.sample = f;
      e.rates.push(f);
    } else {
      this.onEvent(f);
    }
    this.changed();
  }

  private onEvent(f: EventFrame): void {
    this.pushEvent({ ts_ms: f.ts_ms, broker: f.broker, kind: f.kind, text: describeEvent(f), source: 'broker' });
  }

  private pushEvent(ev: Omit<FeedEvent, 'id'>): void {
    this.events.unshift({ ...ev, id: `e${this.eventSeq++}` });
    if (this.events.length > FEED_EVENTS_MAX) this.events.length = FEED_EVENTS_MAX;
  }

  private inputs(): BrokerInput[] {
    return [...this.brokers.values()]
      .sort((a, b) => a.id - b.id)
      .map((b) => ({ id: b.id, client: b.client, http: b.http, state: b.state, reason: b.reason, sample: b.sample, rates: b.state === 'up' ? b.rates.rates() : emptyRates() }));
  }

  /** Once a second: chart points and per-partition rates. */
  tick(): void {
    const now = this.clock.now();
    const inputs = this.inputs();
    const t = clusterTotals(inputs);
    this.throughput.push(now, [t.records_in_total ?? 0, t.records_out_total ?? 0, t.bytes_in_total ?? 0, t.bytes_out_total ?? 0]);
    for (const b of inputs) {
      if (!b.sample) continue;
      let buf = this.busy.get(b.id);
      const names = b.sample.shards.map((s) => `shard ${s.shard}`);
      if (!buf || buf.names.join() !== names.join()) this.busy.set(b.id, (buf = new SeriesBuffer(names)));
      buf.push(now, b.state === 'up' ? b.sample.shards.map((s) => s.busy_fraction) : names.map(() => null));
    }
    for (const p of mergePartitions(inputs)) {
      const prev = this.logEnds.get(p.key);
      this.logEnds.set(p.key, { ts: now, end: p.log_end_offset, leader: p.leader });
      this.partitionRates.set(p.key, prev ? rateOf(prev.end, prev.ts, p.log_end_offset, now) : null);
    }
    this.changed();
  }

  private buildView(): ClusterView {
    const now = this.clock.now();
    const inputs = this.inputs();
    const merged = mergePartitions(inputs);
    for (const c of this.leaders.update(merged, now)) this.previousLeader.set(c.key, c.from);
    const partitions: PartitionView[] = merged.map((p) => {
      const at = this.leaders.lastChange(p.key);
      const recent = at !== null && now - at < LEADER_CHANGE_HIGHLIGHT_MS;
      return {
        ...p,
        records_per_sec: this.partitionRates.get(p.key) ?? null,
        leader_changed_ms: recent ? at : null,
        previous_leader: recent ? (this.previousLeader.get(p.key) ?? null) : null,
      };
    });
    const controller = mergeController(inputs, this.listController);
    const brokers: BrokerView[] = inputs.map((b) => ({
      ...b,
      last_frame_ms: this.brokers.get(b.id)?.conn?.lastFrameMs ?? null,
      dropping_lanes: this.brokers.get(b.id)?.dropping ?? new Set(),
      leads: merged.filter((p) => p.leader === b.id).length,
      is_controller: controller.id === b.id,
    }));
    return {
      version: this.version,
      served_by: this.servedBy,
      list_error: this.listError,
      brokers,
      controller: controller.id,
      controller_term: controller.term,
      partitions,
      totals: clusterTotals(inputs),
      groups: mergeGroups(inputs),
      group_lag: mergeGroupLag(inputs, merged),
      events: this.events.slice(),
      throughput: this.throughput,
      busy: this.busy,
      now_ms: now,
    };
  }
}
