// Types of the telemetry protocol, version 1: docs/TELEMETRY.md is the
// source of truth; these types follow it field by field.

export const PROTOCOL_VERSION = 1;

export type BrokerId = number;

export interface ClusterBroker {
  id: BrokerId;
  client: string;
  http: string | null;
  alive: boolean;
}

export interface ClusterInfo {
  v?: number;
  broker: BrokerId;
  controller: BrokerId | null;
  brokers: ClusterBroker[];
}

export interface PeerLane {
  peer: BrokerId;
  lane: 'control' | 'bulk' | string;
  up: boolean;
  frames_queued: number;
  frames_dropped_total: number;
  reconnects_total: number;
}

export interface ShardSample {
  shard: number;
  produce_requests_total: number;
  fetch_requests_total: number;
  records_in_total: number;
  records_out_total: number;
  bytes_in_total: number;
  bytes_out_total: number;
  errors_total: Record<string, number>;
  connections: number;
  busy_fraction: number;
  task_queue_latency_us_max: number;
  produce_latency_us_p50: number | null;
  produce_latency_us_p90: number | null;
  produce_latency_us_p99: number | null;
  produce_latency_us_p999: number | null;
  peer_lanes: PeerLane[];
}

export interface ReplicaProgress {
  broker: BrokerId;
  match_index: number | null;
  lag_entries: number | null;
}

export interface SnapshotTransfer {
  to: BrokerId;
  bytes_sent: number;
  bytes_total: number;
  bytes_per_sec: number;
}

export type Role = 'leader' | 'follower' | 'pre_candidate' | 'candidate';

export interface PartitionSample {
  topic: string;
  partition: number;
  shard: number;
  role: Role | string;
  leader: BrokerId | null;
  term: number;
  replicas: ReplicaProgress[];
  commit_index: number;
  high_watermark: number;
  log_start_offset: number;
  log_end_offset: number;
  size_bytes: number;
  snapshot_transfer: SnapshotTransfer | null;
}

export interface DiskSample {
  used_bytes: number;
  free_bytes: number;
  floor_bytes: number;
  budget_bytes: number | null;
  full: boolean;
}

export interface GroupLease {
  group: string;
  member: string;
  generation: number;
  partitions: { topic: string; partition: number }[];
  lease_expires_ms: number;
}

export interface GroupLagPartition {
  topic: string;
  partition: number;
  committed: number;
  /** As the coordinator's replicas know it; null if it holds no replica. */
  high_watermark: number | null;
  lag: number | null;
}

/** A group's committed offsets and lag, from its coordinator (issue 14). */
export interface GroupLag {
  group: string;
  generation: number;
  members: number;
  partitions: GroupLagPartition[];
  lag: number | null;
}

export interface SampleFrame {
  v: number;
  type: 'sample';
  broker: BrokerId;
  ts_ms: number;
  uptime_ms: number;
  interval_ms: number;
  controller: BrokerId | null;
  controller_term: number;
  shards: ShardSample[];
  partitions: PartitionSample[];
  disk: DiskSample;
  groups: GroupLease[];
  /** Absent from brokers older than issue 14. */
  group_lag?: GroupLag[];
}

export type EventKind =
  | 'leader_changed'
  | 'election_started'
  | 'broker_up'
  | 'broker_down'
  | 'disk_full'
  | 'disk_ok'
  | 'snapshot_started'
  | 'snapshot_finished'
  | 'topic_created'
  | 'topic_deleted'
  | 'group_rebalanced';

export interface EventFrame {
  v: number;
  type: 'event';
  broker: BrokerId;
  ts_ms: number;
  seq: number;
  kind: EventKind | string;
  // The fields of each kind (docs/TELEMETRY.md, "event" frame).
  [field: string]: unknown;
}

export type Frame = SampleFrame | EventFrame;

export type ParseResult =
  | { ok: true; frame: Frame }
  | { ok: false; error: string };

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/**
 * Parses one WebSocket text frame. Checks the envelope and the fields the page
 * cannot do without; a frame that fails is reported, not thrown, so one bad
 * frame never breaks the page.
 */
export function parseFrame(text: string): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, error: 'not JSON' };
  }
  if (!isObject(value)) return { ok: false, error: 'not a JSON object' };
  if (value.v !== PROTOCOL_VERSION) {
    return { ok: false, error: `protocol version ${String(value.v)}, expected ${PROTOCOL_VERSION}` };
  }
  if (typeof value.broker !== 'number' || typeof value.ts_ms !== 'number') {
    return { ok: false, error: 'missing broker or ts_ms' };
  }
  if (value.type === 'sample') {
    if (
      typeof value.uptime_ms !== 'number' ||
      !Array.isArray(value.shards) ||
      !Array.isArray(value.partitions) ||
      !isObject(value.disk)
    ) {
      return { ok: false, error: 'sample without uptime_ms, shards, partitions or disk' };
    }
    if (!Array.isArray(value.groups)) value.groups = [];
    if (!Array.isArray(value.group_lag)) value.group_lag = [];
    return { ok: true, frame: value as unknown as SampleFrame };
  }
  if (value.type === 'event') {
    if (typeof value.kind !== 'string' || typeof value.seq !== 'number') {
      return { ok: false, error: 'event without kind or seq' };
    }
    return { ok: true, frame: value as unknown as EventFrame };
  }
  return { ok: false, error: `unknown frame type ${String(value.type)}` };
}

/**
 * The `host:port` to open a broker's socket on: the page's own origin for the
 * broker that served it, and the page's host name instead of an unspecified
 * address (0.0.0.0, ::) that a broker might advertise.
 */
export function telemetryAddress(
  broker: ClusterBroker,
  servedBy: BrokerId | null,
  pageHost: string,
  pageHostname: string,
): string | null {
  if (broker.id === servedBy && pageHost) return pageHost;
  if (!broker.http) return null;
  const m = /^(.*):(\d+)$/.exec(broker.http);
  if (!m) return broker.http;
  const host = m[1];
  if (host === '' || host === '0.0.0.0' || host === '::' || host === '[::]') {
    const h = pageHostname.includes(':') ? `[${pageHostname}]` : pageHostname;
    return `${h}:${m[2]}`;
  }
  return broker.http;
}
