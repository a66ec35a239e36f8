import { describe, expect, it } from 'vitest';
import { LeaderTracker, clusterTotals, mergeController, mergeGroupLag, mergeGroups, mergePartitions, type BrokerInput } from './cluster';
import { emptyRates } from './rates';
import type { SampleFrame } from './protocol';
import { part, sample } from './testkit/fakes';

function input(id: number, s: SampleFrame | null, state: BrokerInput['state'] = 'up', rates = emptyRates()): BrokerInput {
  return { id, client: `b${id}:9092`, http: `b${id}:8080`, state, reason: '', sample: s, rates };
}

const replicas = (lags: [number, number, number]) => [
  { broker: 1, match_index: 100 - lags[0], lag_entries: lags[0] },
  { broker: 2, match_index: 100 - lags[1], lag_entries: lags[1] },
  { broker: 3, match_index: 100 - lags[2], lag_entries: lags[2] },
];

describe('merging partitions from every broker', () => {
  it("takes lag, match index, commit and high watermark from the leader's view, log ends from each replica", () => {
    const leaderView = part('orders', 0, { role: 'leader', leader: 2, term: 5, replicas: replicas([3, 0, 40]), high_watermark: 900, commit_index: 97, log_end_offset: 1000 });
    // followers know no lag, and their high watermark trails the leader's
    const f1 = part('orders', 0, { role: 'follower', leader: 2, term: 5, replicas: replicas([0, 0, 0]).map((r) => ({ ...r, match_index: null, lag_entries: null })), high_watermark: 850, log_end_offset: 990 });
    const f3 = part('orders', 0, { role: 'follower', leader: 2, term: 5, high_watermark: 800, log_end_offset: 700 });
    const [p] = mergePartitions([input(1, sample(1, { partitions: [f1] })), input(2, sample(2, { partitions: [leaderView] })), input(3, sample(3, { partitions: [f3] }))]);
    expect(p.leader).toBe(2);
    expect(p.source).toBe(2);
    expect(p.leader_up).toBe(true);
    expect(p.term).toBe(5);
    expect(p.high_watermark).toBe(900);
    expect(p.commit_index).toBe(97);
    expect(p.replicas.map((r) => [r.broker, r.lag_entries, r.match_index, r.log_end_offset])).toEqual([
      [1, 3, 97, 990],
      [2, 0, 100, 1000],
      [3, 40, 60, 700],
    ]);
  });

  it('the freshest term wins: a deposed leader still claiming leadership in an older term loses', () => {
    const stale = part('orders', 1, { role: 'leader', leader: 1, term: 3, replicas: replicas([0, 0, 0]) });
    const fresh = part('orders', 1, { role: 'leader', leader: 3, term: 4, replicas: replicas([5, 6, 0]) });
    const follower = part('orders', 1, { role: 'follower', leader: 3, term: 4 });
    const [p] = mergePartitions([input(1, sample(1, { partitions: [stale] })), input(2, sample(2, { partitions: [follower] })), input(3, sample(3, { partitions: [fresh] }))]);
    expect(p.leader).toBe(3);
    expect(p.term).toBe(4);
    expect(p.replicas.find((r) => r.broker === 1)!.lag_entries).toBe(5);
  });

  it("ignores a down broker's stale sample, and names the followers' leader when the leader is not reporting", () => {
    const oldLeader = part('t', 0, { role: 'leader', leader: 1, term: 9, replicas: replicas([0, 0, 0]), high_watermark: 500 });
    const f2 = part('t', 0, { role: 'follower', leader: 1, term: 9, high_watermark: 480, log_end_offset: 510 });
    const f3 = part('t', 0, { role: 'follower', leader: 1, term: 9, high_watermark: 470, log_end_offset: 505 });
    const [p] = mergePartitions([input(1, sample(1, { partitions: [oldLeader] }), 'down'), input(2, sample(2, { partitions: [f2] })), input(3, sample(3, { partitions: [f3] }))]);
    expect(p.leader).toBe(1);
    expect(p.leader_up).toBe(false);
    expect(p.source).toBeNull();
    // without the leader: the largest the followers know
    expect(p.high_watermark).toBe(480);
    expect(p.log_end_offset).toBe(510);
    expect(p.replicas.find((r) => r.broker === 2)!.lag_entries).toBeNull();
    expect(p.replicas.find((r) => r.broker === 1)!.up).toBe(false);
  });

  it('shows no leader during an election (candidates in a newer term name none)', () => {
    const cand = part('t', 0, { role: 'candidate', leader: null, term: 10 });
    const f = part('t', 0, { role: 'follower', leader: 1, term: 9 });
    const [p] = mergePartitions([input(2, sample(2, { partitions: [cand] })), input(3, sample(3, { partitions: [f] }))]);
    expect(p.term).toBe(10);
    expect(p.leader).toBeNull();
  });

  it('lists partitions sorted by topic then number', () => {
    const ps = mergePartitions([input(1, sample(1, { partitions: [part('b', 1), part('a', 10), part('a', 2)] }))]);
    expect(ps.map((p) => p.key)).toEqual(['a/2', 'a/10', 'b/1']);
  });
});

describe('controller, totals and groups', () => {
  it('believes the live sample with the highest controller term', () => {
    const inputs = [
      input(1, sample(1, { controller: 1, controller_term: 3 }), 'down'),
      input(2, sample(2, { controller: 3, controller_term: 4 })),
      input(3, sample(3, { controller: 2, controller_term: 2 })),
    ];
    expect(mergeController(inputs, 1)).toEqual({ id: 3, term: 4 });
    expect(mergeController([input(1, null, 'connecting')], 7)).toEqual({ id: 7, term: null });
  });

  it('sums the rates of live brokers only', () => {
    const r = (n: number) => ({ ...emptyRates(), records_in_total: n, bytes_in_total: n * 10 });
    const t = clusterTotals([input(1, null, 'up', r(100)), input(2, null, 'down', r(1000)), input(3, null, 'up', r(50))]);
    expect(t.records_in_total).toBe(150);
    expect(t.bytes_in_total).toBe(1500);
    expect(t.records_out_total).toBeNull();
  });

  it('takes each group from its newest coordinator and its lag against the leader high watermark', () => {
    const lagOf = (generation: number, committed: number, hw: number | null) => ({
      group: 'g',
      generation,
      members: 2,
      partitions: [{ topic: 't', partition: 0, committed, high_watermark: hw, lag: hw === null ? null : hw - committed }],
      lag: hw === null ? null : hw - committed,
    });
    const inputs = [
      input(1, sample(1, { group_lag: [lagOf(3, 10, 12)], partitions: [part('t', 0, { role: 'leader', leader: 1, term: 2, high_watermark: 40 })] })),
      input(2, sample(2, { group_lag: [lagOf(2, 5, 12)] })),
    ];
    const merged = mergePartitions(inputs);
    const lag = mergeGroupLag(inputs, merged);
    expect(lag).toHaveLength(1);
    expect(lag[0].coordinator).toBe(1);
    expect(lag[0].partitions[0].high_watermark).toBe(40);
    expect(lag[0].partitions[0].lag).toBe(30);
    expect(lag[0].lag).toBe(30);
    // Without a leader report and with none from the coordinator: unknown.
    const unknown = mergeGroupLag([input(2, sample(2, { group_lag: [lagOf(2, 5, null)] }))], []);
    expect(unknown[0].lag).toBeNull();
    // Brokers older than issue 14 send no group_lag.
    expect(mergeGroupLag([input(3, sample(3, {}))], [])).toEqual([]);
  });

  it('keeps one lease per member, the latest', () => {
    const lease = (exp: number) => ({ group: 'g', member: 'm1', generation: 1, partitions: [{ topic: 't', partition: 0 }], lease_expires_ms: exp });
    const groups = mergeGroups([input(1, sample(1, { groups: [lease(100)] })), input(2, sample(2, { groups: [lease(200)] }))]);
    expect(groups).toHaveLength(1);
    expect(groups[0].coordinator).toBe(2);
    expect(groups[0].lease_expires_ms).toBe(200);
  });
});

describe('leader changes', () => {
  const merged = (leader: number | null, term: number) =>
    mergePartitions([input(2, sample(2, { partitions: [part('t', 0, { role: leader === 2 ? 'leader' : 'follower', leader, term })] }))]);

  it('reports a change from the last known leader, across an election with no leader', () => {
    const tr = new LeaderTracker();
    expect(tr.update(merged(1, 3), 0)).toEqual([]);
    expect(tr.update(merged(null, 4), 1000)).toEqual([]);
    const changes = tr.update(merged(2, 4), 2000);
    expect(changes).toHaveLength(1);
    expect(changes[0]).toMatchObject({ key: 't/0', from: 1, to: 2, term: 4, at_ms: 2000 });
    expect(tr.lastChange('t/0')).toBe(2000);
  });

  it('does not count a first election, a repeat, or a stale older-term report', () => {
    const tr = new LeaderTracker();
    tr.update(merged(null, 1), 0);
    expect(tr.update(merged(2, 1), 10)).toEqual([]);
    expect(tr.update(merged(2, 1), 20)).toEqual([]);
    expect(tr.update(merged(3, 0), 30)).toEqual([]);
    expect(tr.lastChange('t/0')).toBeNull();
  });
});
