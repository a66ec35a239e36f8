// Rates from cumulative counters (docs/TELEMETRY.md, "Counters and restarts").
import type { SampleFrame } from './protocol';

/** The counters the page turns into rates, summed over a broker's shards. */
export const RATE_KEYS = [
  'produce_requests_total',
  'fetch_requests_total',
  'records_in_total',
  'records_out_total',
  'bytes_in_total',
  'bytes_out_total',
] as const;

export type RateKey = (typeof RATE_KEYS)[number];

/** Per-second rates; a key is `null` when this step has no rate for it. */
export type Rates = Record<RateKey, number | null> & { errors: number | null };

/** One broker's counters at one sample, per shard (reset detection) and summed. */
export interface CounterSnapshot {
  ts_ms: number;
  uptime_ms: number;
  /** shard -> key -> value; `errors` is the sum over all codes. */
  shards: Map<number, Record<RateKey | 'errors', number>>;
}

export function snapshotOf(sample: SampleFrame): CounterSnapshot {
  const shards = new Map<number, Record<RateKey | 'errors', number>>();
  for (const s of sample.shards) {
    let errors = 0;
    for (const n of Object.values(s.errors_total ?? {})) errors += Number(n) || 0;
    shards.set(s.shard, {
      produce_requests_total: s.produce_requests_total,
      fetch_requests_total: s.fetch_requests_total,
      records_in_total: s.records_in_total,
      records_out_total: s.records_out_total,
      bytes_in_total: s.bytes_in_total,
      bytes_out_total: s.bytes_out_total,
      errors,
    });
  }
  return { ts_ms: sample.ts_ms, uptime_ms: sample.uptime_ms, shards };
}

export function emptyRates(): Rates {
  return {
    produce_requests_total: null,
    fetch_requests_total: null,
    records_in_total: null,
    records_out_total: null,
    bytes_in_total: null,
    bytes_out_total: null,
    errors: null,
  };
}

/**
 * Why a pair of snapshots gives no rates at all: `null` if it gives them.
 * A restart (uptime went down, the shard set changed) resets every counter.
 */
export function resetReason(prev: CounterSnapshot, cur: CounterSnapshot): string | null {
  if (cur.uptime_ms < prev.uptime_ms) return 'restart';
  if (cur.ts_ms <= prev.ts_ms) return 'time did not advance';
  if (cur.shards.size !== prev.shards.size) return 'shard set changed';
  for (const id of cur.shards.keys()) if (!prev.shards.has(id)) return 'shard set changed';
  return null;
}

/**
 * Rates per second between two snapshots of one broker, summed over shards.
 * A key whose counter went down on any shard is a reset for that key: `null`
 * for this step rather than a negative or a made-up number.
 */
export function ratesBetween(prev: CounterSnapshot, cur: CounterSnapshot): Rates {
  const out = emptyRates();
  if (resetReason(prev, cur) !== null) return out;
  const seconds = (cur.ts_ms - prev.ts_ms) / 1000;
  const keys = [...RATE_KEYS, 'errors'] as const;
  for (const key of keys) {
    let delta = 0;
    let reset = false;
    for (const [id, c] of cur.shards) {
      const p = prev.shards.get(id)!;
      const d = c[key] - p[key];
      if (d < 0 || !Number.isFinite(d)) {
        reset = true;
        break;
      }
      delta += d;
    }
    out[key] = reset ? null : delta / seconds;
  }
  return out;
}

/** Keeps the previous snapshot of one broker and answers the latest rates. */
export class RateTracker {
  private prev: CounterSnapshot | null = null;
  private latest: Rates = emptyRates();

  /** Feeds a sample; returns the rates since the previous one. */
  push(sample: SampleFrame): Rates {
    const cur = snapshotOf(sample);
    this.latest = this.prev ? ratesBetween(this.prev, cur) : emptyRates();
    this.prev = cur;
    return this.latest;
  }

  rates(): Rates {
    return this.latest;
  }

  /** Forget the base (the broker went down: its next sample starts afresh). */
  clear(): void {
    this.prev = null;
    this.latest = emptyRates();
  }
}

/** Rate of a single cumulative value; `null` on reset or no time passed. */
export function rateOf(prevValue: number, prevTs: number, value: number, ts: number): number | null {
  if (ts <= prevTs || value < prevValue) return null;
  return ((value - prevValue) * 1000) / (ts - prevTs);
}
