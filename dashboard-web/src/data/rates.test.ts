import { describe, expect, it } from 'vitest';
import { RateTracker, rateOf } from './rates';
import { sample, shard } from './testkit/fakes';

describe('rates from cumulative counters', () => {
  it('divides the counter difference summed over shards by the broker time between samples', () => {
    const t = new RateTracker();
    expect(t.push(sample(1, { ts_ms: 1000, uptime_ms: 5000, shards: [shard(0, { records_in_total: 100 }), shard(1, { records_in_total: 50 })] })).records_in_total).toBeNull();
    const r = t.push(sample(1, { ts_ms: 3000, uptime_ms: 7000, shards: [shard(0, { records_in_total: 300 }), shard(1, { records_in_total: 250 })] }));
    // (200 + 200) records over 2 s
    expect(r.records_in_total).toBe(200);
    expect(r.bytes_out_total).toBe(0);
  });

  it('sums errors over every code', () => {
    const t = new RateTracker();
    t.push(sample(1, { ts_ms: 0, shards: [shard(0, { errors_total: { NotLeader: 1 } })] }));
    const r = t.push(sample(1, { ts_ms: 1000, uptime_ms: 11_000, shards: [shard(0, { errors_total: { NotLeader: 4, DiskFull: 2 } })] }));
    expect(r.errors).toBe(5);
  });

  it('gives no rate, not a negative one, across a restart, then rates from the new base', () => {
    const t = new RateTracker();
    t.push(sample(1, { ts_ms: 1000, uptime_ms: 900_000, shards: [shard(0, { records_in_total: 1_000_000 })] }));
    // restarted: uptime went down, counters start again from near 0
    const across = t.push(sample(1, { ts_ms: 5000, uptime_ms: 1000, shards: [shard(0, { records_in_total: 40 })] }));
    expect(across.records_in_total).toBeNull();
    const after = t.push(sample(1, { ts_ms: 6000, uptime_ms: 2000, shards: [shard(0, { records_in_total: 140 })] }));
    expect(after.records_in_total).toBe(100);
  });

  it('treats a counter that went down as a reset of that counter only', () => {
    const t = new RateTracker();
    t.push(sample(1, { ts_ms: 0, uptime_ms: 1000, shards: [shard(0, { records_in_total: 500, bytes_in_total: 100 })] }));
    const r = t.push(sample(1, { ts_ms: 1000, uptime_ms: 2000, shards: [shard(0, { records_in_total: 10, bytes_in_total: 300 })] }));
    expect(r.records_in_total).toBeNull();
    expect(r.bytes_in_total).toBe(200);
  });

  it('gives no rates when the shard set changed or time did not advance', () => {
    const t = new RateTracker();
    t.push(sample(1, { ts_ms: 0, uptime_ms: 1000, shards: [shard(0, { records_in_total: 1 })] }));
    expect(t.push(sample(1, { ts_ms: 1000, uptime_ms: 2000, shards: [shard(0), shard(1)] })).records_in_total).toBeNull();
    expect(t.push(sample(1, { ts_ms: 1000, uptime_ms: 2000, shards: [shard(0), shard(1)] })).records_in_total).toBeNull();
  });

  it('forgets its base when cleared (the broker went down)', () => {
    const t = new RateTracker();
    t.push(sample(1, { ts_ms: 0, shards: [shard(0, { records_in_total: 0 })] }));
    t.clear();
    expect(t.push(sample(1, { ts_ms: 60_000, uptime_ms: 70_000, shards: [shard(0, { records_in_total: 600 })] })).records_in_total).toBeNull();
  });

  it('rateOf: per second, null on reset', () => {
    expect(rateOf(100, 0, 400, 1500)).toBe(200);
    expect(rateOf(400, 0, 100, 1500)).toBeNull();
    expect(rateOf(1, 10, 2, 10)).toBeNull();
  });
});
