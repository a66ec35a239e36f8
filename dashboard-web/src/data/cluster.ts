// Merging the brokers' streams into one cluster model. Pure functions: the
// store (store.ts) feeds them the latest sample of every broker whose socket
// is up; a down broker's last sample is stale and takes no part.
import type { BrokerId, GroupLag, GroupLease, PartitionSample, SampleFrame, SnapshotTransfer } from './protocol';
import type { LinkState } from './connection';
import { emptyRates, type Rates } from './rates';

export interface BrokerInput {
  id: BrokerId;
  client: string;
  http: string | null;
  state: LinkState;
  reason: string;
  sample: SampleFrame | null;
  rates: Rates;
}

export interface MergedReplica {
  broker: BrokerId;
  /** Whether the page has a live socket to this replica's broker. */
  up: boolean;
  /** From the leader's view; `null` when no leader report is at hand. */
  match_index: number | null;
  lag_entries: number | null;
  /** From the replica's own report; `null` if its broker is not reporting. */
  log_end_offset: number | null;
  role: string | null;
}

export interface MergedPartition {
  key: string;
  topic: string;
  partition: number;
  leader: BrokerId | null;
  /** The leader's broker has a live socket (false: leader believed dead). */
  leader_up: boolean;
  term: number;
  /** Whose report the leader-only fields come from (`null`: no leader report). */
  source: BrokerId | null;
  replicas: MergedReplica[];
  commit_index: number;
  high_watermark: number;
  log_start_offset: number;
  log_end_offset: number;
  size_bytes: number;
  snapshot_transfer: SnapshotTransfer | null;
}

export function partitionKey(topic: string, partition: number): string {
  return `${topic}/${partition}`;
}

function reporting(inputs: BrokerInput[]): { broker: BrokerId; sample: SampleFrame }[] {
  return inputs
    .filter((b) => b.state === 'up' && b.sample !== null)
    .map((b) => ({ broker: b.id, sample: b.sample! }));
}

/**
 * One row per partition from every live broker's replicas.
 * - The highest term any replica reports is the partition's term.
 * - The replica that says it is leader in that term gives the leader, the
 *   replicas' match index and lag, commit index, high watermark and log range.
 * - Without such a report (the leader's broker is down or not yet connected),
 *   the leader is the one most replicas in that term name, and the numbers are
 *   the largest the followers report (their own logs).
 */
export function mergePartitions(inputs: BrokerInput[]): MergedPartition[] {
  const up = new Set(inputs.filter((b) => b.state === 'up').map((b) => b.id));
  const byKey = new Map<string, { broker: BrokerId; p: PartitionSample }[]>();
  for (const { broker, sample } of reporting(inputs)) {
    for (const p of sample.partitions) {
      const key = partitionKey(p.topic, p.partition);
      let list = byKey.get(key);
      if (!list) byKey.set(key, (list = []));
      list.push({ broker, p });
    }
  }
  const out: MergedPartition[] = [];
  for (const [key, reports] of byKey) {
    const term = Math.max(...reports.map((r) => r.p.term));
    const current = reports.filter((r) => r.p.term === term);
    const leaderReport =
      current
        .filter((r) => r.p.role === 'leader' && r.p.leader === r.broker)
        .sort((a, b) => a.broker - b.broker)[0] ?? null;
    let leader: BrokerId | null;
    if (leaderReport) {
      leader = leaderReport.broker;
    } else {
      const votes = new Map<BrokerId, number>();
      for (const r of current) if (r.p.leader !== null) votes.set(r.p.leader, (votes.get(r.p.leader) ?? 0) + 1);
      leader = null;
      let best = 0;
      for (const [id, n] of [...votes].sort((a, b) => a[0] - b[0])) {
        if (n > best) {
          best = n;
          leader = id;
        }
      }
    }
    const own = new Map(reports.map((r) => [r.broker, r.p]));
    const replicaIds = new Set<BrokerId>();
    for (const r of leaderReport ? [leaderReport] : reports) for (const rep of r.p.replicas) replicaIds.add(rep.broker);
    for (const r of reports) replicaIds.add(r.broker);
    if (leader !== null) replicaIds.add(leader);
    const progress = new Map((leaderReport?.p.replicas ?? []).map((r) => [r.broker, r]));
    const replicas: MergedReplica[] = [...replicaIds]
      .sort((a, b) => a - b)
      .map((id) => ({
        broker: id,
        up: up.has(id),
        match_index: progress.get(id)?.match_index ?? null,
        lag_entries: progress.get(id)?.lag_entries ?? null,
        log_end_offset: own.get(id)?.log_end_offset ?? null,
        role: own.get(id)?.role ?? null,
      }));
    const maxOf = (f: (p: PartitionSample) => number) => Math.max(...reports.map((r) => f(r.p)));
    const src = leaderReport?.p;
    const first = reports[0].p;
    out.push({
      key,
      topic: first.topic,
      partition: first.partition,
      leader,
      leader_up: leader !== null && up.has(leader),
      term,
      source: leaderReport?.broker ?? null,
      replicas,
      commit_index: src ? src.commit_index : maxOf((p) => p.commit_index),
      high_watermark: src ? src.high_watermark : maxOf((p) => p.high_watermark),
      log_start_offset: src ? src.log_start_offset : maxOf((p) => p.log_start_offset),
      log_end_offset: src ? src.log_end_offset : maxOf((p) => p.log_end_offset),
      size_bytes: src ? src.size_bytes : maxOf((p) => p.size_bytes),
      snapshot_transfer: src?.snapshot_transfer ?? null,
    });
  }
  return out.sort((a, b) => (a.topic === b.topic ? a.partition - b.partition : a.topic < b.topic ? -1 : 1));
}

/** The controller of the live sample with the highest controller term. */
export function mergeController(inputs: BrokerInput[], fallback: BrokerId | null): { id: BrokerId | null; term: number | null } {
  let best: SampleFrame | null = null;
  for (const { sample } of reporting(inputs)) {
    if (typeof sample.controller_term !== 'number') continue;
    if (!best || sample.controller_term > best.controller_term) best = sample;
  }
  if (!best) return { id: fallback, term: null };
  return { id: best.controller ?? null, term: best.controller_term };
}

export type Totals = Rates;

/** Cluster rates: the sum of the live brokers' latest rates (null if none has one). */
export function clusterTotals(inputs: BrokerInput[]): Totals {
  const out = emptyRates();
  for (const b of inputs) {
    if (b.state !== 'up') continue;
    for (const k of Object.keys(out) as (keyof Rates)[]) {
      const v = b.rates[k];
      if (v === null) continue;
      out[k] = (out[k] ?? 0) + v;
    }
  }
  return out;
}

/** Consumer-group leases from every live coordinator, one per (group, member): the latest lease wins. */
export function mergeGroups(inputs: BrokerInput[]): (GroupLease & { coordinator: BrokerId })[] {
  const m = new Map<string, GroupLease & { coordinator: BrokerId }>();
  for (const { broker, sample } of reporting(inputs)) {
    for (const g of sample.groups ?? []) {
      const key = `${g.group}\u0000${g.member}`;
      const prev = m.get(key);
      if (!prev || g.lease_expires_ms > prev.lease_expires_ms) m.set(key, { ...g, coordinator: broker });
    }
  }
  return [...m.values()].sort((a, b) => (a.group === b.group ? (a.member < b.member ? -1 : 1) : a.group < b.group ? -1 : 1));
}

/**
 * Lag per group: each group from the coordinator reporting the highest
 * generation (after a failover the old coordinator may still report it a
 * moment). A partition's lag is recomputed against the high watermark merged
 * from its leader's report when there is one (the coordinator may hold no
 * replica, or a follower's that lags); the group's lag is the sum, null if
 * any partition's is unknown.
 */
export function mergeGroupLag(inputs: BrokerInput[], partitions: MergedPartition[]): (GroupLag & { coordinator: BrokerId })[] {
  const hw = new Map<string, number>();
  for (const p of partitions) if (p.source !== null) hw.set(partitionKey(p.topic, p.partition), p.high_watermark);
  const m = new Map<string, GroupLag & { coordinator: BrokerId }>();
  for (const { broker, sample } of reporting(inputs)) {
    for (const g of sample.group_lag ?? []) {
      const prev = m.get(g.group);
      if (prev && prev.generation >= g.generation) continue;
      const parts = g.partitions.map((p) => {
        const high = hw.get(partitionKey(p.topic, p.partition)) ?? p.high_watermark;
        return { ...p, high_watermark: high, lag: high === null ? null : Math.max(0, high - p.committed) };
      });
      const lag = parts.reduce<number | null>((sum, p) => (sum === null || p.lag === null ? null : sum + p.lag), 0);
      m.set(g.group, { ...g, partitions: parts, lag, coordinator: broker });
    }
  }
  return [...m.values()].sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : 0));
}

export interface LeaderChange {
  key: string;
  topic: string;
  partition: number;
  from: BrokerId | null;
  to: BrokerId | null;
  term: number;
  at_ms: number;
}

/**
 * Remembers each partition's leader across merges and reports changes, so the
 * views can highlight them. The first sight of a partition is not a change;
 * neither is a leader seen again in an older term (a stale report).
 */
export class LeaderTracker {
  private known = new Map<string, { leader: BrokerId | null; term: number }>();
  private changedAt = new Map<string, number>();

  update(partitions: MergedPartition[], nowMs: number): LeaderChange[] {
    const changes: LeaderChange[] = [];
    for (const p of partitions) {
      const prev = this.known.get(p.key);
      if (prev && p.term < prev.term) continue;
      // A partition between leaders keeps its last leader, so X, none, Y is
      // one change from X to Y; a first election (none to Y) is no change.
      this.known.set(p.key, { leader: p.leader ?? prev?.leader ?? null, term: p.term });
      if (prev && prev.leader !== null && p.leader !== null && prev.leader !== p.leader) {
        changes.push({ key: p.key, topic: p.topic, partition: p.partition, from: prev.leader, to: p.leader, term: p.term, at_ms: nowMs });
        this.changedAt.set(p.key, nowMs);
      }
    }
    return changes;
  }

  /** When the leader of `key` last changed, or `null`. */
  lastChange(key: string): number | null {
    return this.changedAt.get(key) ?? null;
  }
}
