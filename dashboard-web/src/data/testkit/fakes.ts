// Test doubles: samples built field by field, and sockets the test drives.
import type { PartitionSample, SampleFrame, ShardSample } from '../protocol';
import type { SocketLike } from '../connection';

export function shard(n: number, over: Partial<ShardSample> = {}): ShardSample {
  return {
    shard: n,
    produce_requests_total: 0,
    fetch_requests_total: 0,
    records_in_total: 0,
    records_out_total: 0,
    bytes_in_total: 0,
    bytes_out_total: 0,
    errors_total: {},
    connections: 0,
    busy_fraction: 0,
    task_queue_latency_us_max: 0,
    produce_latency_us_p50: null,
    produce_latency_us_p90: null,
    produce_latency_us_p99: null,
    produce_latency_us_p999: null,
    peer_lanes: [],
    ...over,
  };
}

export function part(topic: string, partition: number, over: Partial<PartitionSample> = {}): PartitionSample {
  return {
    topic,
    partition,
    shard: 0,
    role: 'follower',
    leader: null,
    term: 1,
    replicas: [],
    commit_index: 0,
    high_watermark: 0,
    log_start_offset: 0,
    log_end_offset: 0,
    size_bytes: 0,
    snapshot_transfer: null,
    ...over,
  };
}

export function sample(broker: number, over: Partial<SampleFrame> = {}): SampleFrame {
  return {
    v: 1,
    type: 'sample',
    broker,
    ts_ms: 1_000_000,
    uptime_ms: 10_000,
    interval_ms: 1000,
    controller: null,
    controller_term: 0,
    shards: [shard(0)],
    partitions: [],
    disk: { used_bytes: 0, free_bytes: 1e9, floor_bytes: 1e6, budget_bytes: null, full: false },
    groups: [],
    ...over,
  };
}

/** A socket whose server side the test plays. */
export class FakeSocket implements SocketLike {
  onopen: (() => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  closedByClient = false;

  constructor(readonly url: string) {}

  send(frame: unknown): void {
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }
  serverClose(code = 1006): void {
    this.onclose?.({ code, reason: '' });
  }
  close(): void {
    this.closedByClient = true;
  }
}

/** A socket factory that records every socket it made, per URL. */
export class FakeNetwork {
  sockets: FakeSocket[] = [];
  factory = (url: string): FakeSocket => {
    const s = new FakeSocket(url);
    this.sockets.push(s);
    return s;
  };
  /** The newest socket opened to `url`. */
  latest(url: string): FakeSocket {
    const list = this.sockets.filter((s) => s.url === url);
    if (list.length === 0) throw new Error(`no socket to ${url}`);
    return list[list.length - 1];
  }
  count(url: string): number {
    return this.sockets.filter((s) => s.url === url).length;
  }
}
