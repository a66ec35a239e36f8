//! Leader rebalancing: elections put leaders wherever a vote was won, so
//! after a broker fails and comes back the others would keep leading
//! everything (and a leader does most of a group's work: it sends, the
//! followers answer). Every `--leader-balance-interval-ms` (0: off) the
//! shards of a broker run one round together:
//!
//! 1. **Report.** At the round's start (rounds are counted from one instant
//!    of the broker, so its shards share them) each shard writes into the
//!    broker's [`Board`] (held in the shared `ClusterView`), for every
//!    partition group it holds (never the controller), the voters and the
//!    leader and term its replica knows.
//! 2. **Plan.** [`REPORT_PHASE`] later the first shard to ask makes the
//!    round's plan with [`raft::plan_leader_moves`] over every report of the
//!    round ([`plan`]); the others read the same plan, so the moves of
//!    different shards fit together without a message between them. A
//!    round in which a shard did not report has no plan, nor has one while
//!    a group is electing (no leader heard from, for less than
//!    [`LEADERLESS_WAIT_MAX`]): its leader is about to land somewhere and
//!    the counts would be wrong. A group is
//!    counted where its leader is; it may move only when that leader has
//!    held it (same leader, same term) for the settle time (the interval,
//!    at least [`SETTLED_MIN`]), and only to a voter heard from within
//!    [`HEARD_WITHIN`]. The plan uses nothing but what every broker's
//!    replicas know alike, so brokers that hold the same groups make the
//!    same plan, and each one's moves fit the others' (a broker cannot
//!    know how far behind the followers of another's groups are: counting
//!    that in once made two brokers each give the other a group).
//! 3. **Move.** Each shard starts, with `Raft::transfer_leader`, the moves
//!    whose source is this broker and whose group it owns (at most
//!    [`MOVES_PER_ROUND_MAX`] a round: a wave), if it still leads in the
//!    planned term and the target is ready ([`ready_followers`]:
//!    replicating and within [`CAUGHT_UP_ENTRIES_MAX`] entries of the
//!    leader's log). A move to a target not ready yet waits for a later
//!    round, so a broker that restarts is given leadership only once it
//!    has caught up; a group just moved is not moved again at once, and
//!    nothing oscillates while elections are still going on.
//!
//! Raft bounds a transfer: the leader refuses proposals (retriable) until
//! the target has caught up and been sent TimeoutNow, and abandons the
//! transfer after an election timeout (1 s) if the target never wins, so a
//! target that dies mid-transfer costs that group at most an election
//! timeout of refused proposals, never data. Produce requests whose entries
//! committed before the step-down are answered, the rest get `NotLeader`
//! and are retried (and deduplicated) at the new leader; consumer-group
//! coordinators on the offsets partitions reload in the new term as after
//! any leader change.
//!
//! Each broker plans over the groups it holds, so with replication below
//! the broker count the views differ between brokers; every move still
//! narrows the gap in its planner's view, and a broker only ever moves its
//! own leaderships.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft::{GroupLeadership, Raft, Role};

use crate::controller::CONTROLLER_GROUP;
use crate::shard::Shard;

/// How long the shards have to report before the round's plan is made: a
/// report is a few map insertions per group under the view's lock, so
/// 200 ms is far more than a shard needs even on a loaded core (a shard
/// that misses it only costs the round).
pub const REPORT_PHASE: Duration = Duration::from_millis(200);
/// A group's leader must have held it (same leader, same term) for at least
/// this long, and for at least one interval, before the group moves: two
/// election timeouts (ELECTION_TICKS × TICK = 1 s each), so a group whose
/// election is still settling, or that just moved, stays.
pub const SETTLED_MIN: Duration = Duration::from_secs(2);
/// A move's target must have been heard from this recently: every peer
/// sends a heartbeat of each group every 100 ms, so 1 s is ten missed.
pub const HEARD_WITHIN: Duration = Duration::from_secs(1);
/// A follower this close to the leader's last entry is ready to take over:
/// under load the pipelined appends in flight keep a live follower a few
/// entries behind (one entry per group commit), and the transfer itself
/// catches it up exactly before TimeoutNow (proposals wait meanwhile).
pub const CAUGHT_UP_ENTRIES_MAX: u64 = 64;
/// Moves one broker starts in a round (a wave): each pauses its group's
/// proposals for about one round trip plus an election, so a wave pauses
/// at most 32 groups at once, and a broker of 1,000 groups of which a third
/// must move (a restarted peer of three) is balanced in 11 rounds.
pub const MOVES_PER_ROUND_MAX: usize = 32;
/// No plan is made while a group has had no leader heard from for less
/// than this: an election takes an election timeout (1-2 s) and a round
/// trip, so a group without one for 10 s has no quorum, and it no longer
/// holds the others back.
pub const LEADERLESS_WAIT_MAX: Duration = Duration::from_secs(10);
/// The smallest interval besides 0 (off): it must leave room for the
/// report phase.
pub const INTERVAL_MS_MIN: u64 = 500;

/// One group as a shard of this broker sees it at a round's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupReport {
    pub group: u64,
    pub voters: Vec<u64>,
    pub leader: Option<u64>,
    pub term: u64,
}

/// A leadership move this broker makes: hand `group`, led here in `term`,
/// to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub group: u64,
    pub to: u64,
    pub term: u64,
}

/// When this broker first saw a group's current leader and term.
#[derive(Clone, Copy, Debug)]
struct Seen {
    leader: Option<u64>,
    term: u64,
    since: Instant,
}

/// The broker's shared balancing state: the shards' reports and the plan
/// of the current round.
#[derive(Debug)]
pub struct Board {
    /// Rounds are counted from here.
    epoch: Instant,
    /// By shard: the round of its last report and its groups.
    reports: Vec<Option<(u64, Vec<GroupReport>)>>,
    seen: HashMap<u64, Seen>,
    /// Groups without a leader heard from, since when (at plan time).
    leaderless: HashMap<u64, Instant>,
    /// The round whose plan this is, and this broker's moves in it.
    plan: Option<(u64, Vec<Move>)>,
}

impl Default for Board {
    fn default() -> Board {
        Board::new(Instant::now())
    }
}

impl Board {
    pub fn new(epoch: Instant) -> Board {
        Board {
            epoch,
            reports: Vec::new(),
            seen: HashMap::new(),
            leaderless: HashMap::new(),
            plan: None,
        }
    }

    /// The next round after `now` and the instant it starts.
    pub fn next_round(&self, every: Duration, now: Instant) -> (u64, Instant) {
        let every_ns = every.as_nanos().max(1);
        let round = (now.saturating_duration_since(self.epoch).as_nanos() / every_ns) as u64 + 1;
        let rounds = u32::try_from(round).unwrap_or(u32::MAX);
        (round, self.epoch + every.saturating_mul(rounds))
    }

    /// Shard `shard` (of `shards`) reports its groups for `round`.
    pub fn report(
        &mut self,
        shard: usize,
        shards: usize,
        round: u64,
        groups: Vec<GroupReport>,
        now: Instant,
    ) {
        if self.reports.len() != shards {
            self.reports.resize(shards, None);
        }
        for g in &groups {
            let changed = self
                .seen
                .get(&g.group)
                .is_none_or(|s| s.leader != g.leader || s.term != g.term);
            if changed {
                self.seen.insert(
                    g.group,
                    Seen {
                        leader: g.leader,
                        term: g.term,
                        since: now,
                    },
                );
            }
        }
        if let Some(slot) = self.reports.get_mut(shard) {
            *slot = Some((round, groups));
        }
    }

    /// This broker's (`me`) moves in `round`: the round's plan, made by the
    /// first caller once every shard has reported for it (none otherwise).
    /// `alive` tells whether a broker was heard from lately.
    pub fn moves(
        &mut self,
        round: u64,
        me: u64,
        settle: Duration,
        alive: &dyn Fn(u64) -> bool,
        now: Instant,
    ) -> Vec<Move> {
        if let Some((r, moves)) = &self.plan {
            if *r == round {
                return moves.clone();
            }
        }
        let complete = !self.reports.is_empty()
            && self
                .reports
                .iter()
                .all(|r| r.as_ref().is_some_and(|(at, _)| *at == round));
        let moves = if complete {
            let reports: Vec<&GroupReport> = self
                .reports
                .iter()
                .flatten()
                .flat_map(|(_, groups)| groups)
                .collect();
            // Forget groups no shard holds any more (deleted topics).
            let held: HashSet<u64> = reports.iter().map(|r| r.group).collect();
            self.seen.retain(|g, _| held.contains(g));
            // Groups electing: their leaders are about to land somewhere,
            // so counts made now would be wrong (two brokers could each
            // give the other a group). Wait for them, not for a group stuck
            // without a quorum.
            let leaderless: HashSet<u64> = reports
                .iter()
                .filter(|r| r.group != CONTROLLER_GROUP && !r.leader.is_some_and(alive))
                .map(|r| r.group)
                .collect();
            self.leaderless.retain(|g, _| leaderless.contains(g));
            for g in leaderless {
                self.leaderless.entry(g).or_insert(now);
            }
            let electing = self
                .leaderless
                .values()
                .any(|since| now.saturating_duration_since(*since) < LEADERLESS_WAIT_MAX);
            let seen = &self.seen;
            let settled = |r: &GroupReport| {
                seen.get(&r.group)
                    .is_some_and(|s| now.saturating_duration_since(s.since) >= settle)
            };
            if electing {
                Vec::new()
            } else {
                let moves = plan(me, &reports, &settled, alive);
                if !moves.is_empty() {
                    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
                    for r in &reports {
                        if let Some(l) = r.leader.filter(|&l| alive(l)) {
                            *led.entry(l).or_default() += 1;
                        }
                    }
                    tracing::info!(broker = me, round, ?led, ?moves, "leader balance plan");
                }
                moves
            }
        } else {
            Vec::new()
        };
        self.plan = Some((round, moves.clone()));
        moves
    }
}

/// The moves of broker `me` that even out the leaders of `reports` (see
/// the module's doc for who counts and what may move).
pub fn plan(
    me: u64,
    reports: &[&GroupReport],
    settled: &dyn Fn(&GroupReport) -> bool,
    alive: &dyn Fn(u64) -> bool,
) -> Vec<Move> {
    let mut groups = Vec::with_capacity(reports.len());
    let mut terms = HashMap::with_capacity(reports.len());
    for r in reports {
        if r.group == CONTROLLER_GROUP {
            continue;
        }
        // A group without a leader, or whose leader is not heard from (a
        // dead broker's, before the election), is not counted.
        let Some(leader) = r.leader.filter(|&l| alive(l)) else {
            continue;
        };
        let mut voters = vec![leader];
        if settled(r) {
            voters.extend(
                r.voters
                    .iter()
                    .copied()
                    .filter(|&v| v != leader && alive(v)),
            );
        }
        terms.insert(r.group, r.term);
        groups.push(GroupLeadership {
            group_id: r.group,
            leader,
            voters,
        });
    }
    // The same plan on every shard: the same order of groups.
    groups.sort_by_key(|g| g.group_id);
    raft::plan_leader_moves(&groups, raft::balance::LEADER_MOVES_PER_PLAN_MAX)
        .into_iter()
        .filter(|m| m.from == me)
        .take(MOVES_PER_ROUND_MAX)
        .map(|m| Move {
            group: m.group_id,
            to: m.to,
            term: terms[&m.group_id],
        })
        .collect()
}

/// The followers of a group led by `raft` that could take over now:
/// replicating, and within [`CAUGHT_UP_ENTRIES_MAX`] of its last entry.
/// Empty where `raft` does not lead.
pub fn ready_followers<S: raft::Storage>(raft: &Raft<S>) -> Vec<u64> {
    raft::transfer_targets(raft, CAUGHT_UP_ENTRIES_MAX)
}

/// This shard's groups, for the round's report.
fn reports(shard: &Shard) -> Vec<GroupReport> {
    let me = shard.config.id;
    shard
        .groups
        .borrow()
        .values()
        .filter(|g| g.id != CONTROLLER_GROUP)
        .map(|g| {
            let failed = g.failed.borrow().is_some();
            let raft = g.raft.borrow();
            // A failed group no longer leads (as the cluster view says).
            let leader = raft.leader().filter(|&l| !(failed && l == me));
            GroupReport {
                group: g.id,
                voters: raft.membership().voters.iter().copied().collect(),
                leader,
                term: raft.term(),
            }
        })
        .collect()
}

/// Starts the moves of this shard's groups, each checked again first.
fn start_moves(shard: &Shard, moves: &[Move]) {
    let groups = shard.groups.borrow();
    for m in moves {
        // Another shard's group: that shard starts it.
        let Some(g) = groups.get(&m.group) else {
            continue;
        };
        if g.failed.borrow().is_some() {
            continue;
        }
        let mut raft = g.raft.borrow_mut();
        if raft.role() != Role::Leader
            || raft.term() != m.term
            || !ready_followers(&raft).contains(&m.to)
        {
            continue;
        }
        match raft.transfer_leader(m.to) {
            Ok(()) => {
                drop(raft);
                g.poke();
                tracing::info!(
                    broker = shard.config.id,
                    shard = shard.id,
                    group = m.group,
                    to = m.to,
                    term = m.term,
                    "moving leadership to balance leaders"
                );
            }
            Err(e) => {
                tracing::debug!(broker = shard.config.id, shard = shard.id, group = m.group, to = m.to, error = %e, "leadership move refused")
            }
        }
    }
}

/// The shard's part in every round, while the broker runs (nothing when
/// the interval is 0).
pub(crate) async fn run(shard: Rc<Shard>) {
    let interval_ms = shard.config.leader_balance_interval_ms;
    if interval_ms == 0 {
        return;
    }
    let every = Duration::from_millis(interval_ms);
    let settle = every.max(SETTLED_MIN);
    let me = shard.config.id;
    loop {
        let Some((round, start)) = shard
            .cluster
            .with_balance(HEARD_WITHIN, |b, _| b.next_round(every, Instant::now()))
        else {
            return;
        };
        glommio::timer::sleep(start.saturating_duration_since(Instant::now())).await;
        let groups = reports(&shard);
        shard.cluster.with_balance(HEARD_WITHIN, |b, _| {
            b.report(shard.id, shard.shards, round, groups, Instant::now())
        });
        glommio::timer::sleep(REPORT_PHASE).await;
        let moves = shard
            .cluster
            .with_balance(HEARD_WITHIN, |b, alive| {
                b.moves(round, me, settle, alive, Instant::now())
            })
            .unwrap_or_default();
        if !moves.is_empty() {
            start_moves(&shard, &moves);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(3);

    fn report(group: u64, leader: u64) -> GroupReport {
        GroupReport {
            group,
            voters: vec![1, 2, 3],
            leader: Some(leader),
            term: 7,
        }
    }

    fn all_alive(_: u64) -> bool {
        true
    }

    fn refs(reports: &[GroupReport]) -> Vec<&GroupReport> {
        reports.iter().collect()
    }

    /// Partitions led by brokers 1, 2 and 3 once `moves` are done.
    fn leaders_after(reports: &[GroupReport], moves: &[Move]) -> Vec<usize> {
        let mut count = [0; 4];
        for r in reports {
            let to = moves
                .iter()
                .find(|m| m.group == r.group)
                .map_or(r.leader.unwrap(), |m| m.to);
            count[to as usize] += 1;
        }
        count[1..].to_vec()
    }

    #[test]
    fn brokers_holding_the_same_groups_make_plans_that_fit_together() {
        // Broker 3 came back: 1 and 2 lead six groups each.
        let reports: Vec<GroupReport> = (1..=12)
            .map(|g| report(g, if g <= 6 { 1 } else { 2 }))
            .collect();
        let from_1 = plan(1, &refs(&reports), &|_| true, &all_alive);
        let from_2 = plan(2, &refs(&reports), &|_| true, &all_alive);
        assert!(
            from_1.iter().chain(&from_2).all(|m| m.to == 3),
            "1 and 2 never trade groups: {from_1:?} {from_2:?}"
        );
        let both: Vec<Move> = from_1.iter().chain(&from_2).copied().collect();
        assert_eq!(leaders_after(&reports, &both), vec![4, 4, 4]);
        assert!(both.iter().all(|m| m.term == 7));
        // Broker 3 plans nothing of its own (it leads nothing).
        assert!(plan(3, &refs(&reports), &|_| true, &all_alive).is_empty());
    }

    #[test]
    fn dead_targets_unsettled_groups_and_the_controller_stay() {
        let reports: Vec<GroupReport> = (1..=6)
            .map(|g| report(g, if g <= 3 { 1 } else { 2 }))
            .collect();
        let moves = plan(1, &refs(&reports), &|_| true, &|b| b != 3);
        assert!(moves.is_empty(), "3 is not heard from: {moves:?}");
        let moves = plan(1, &refs(&reports), &|_| false, &all_alive);
        assert!(moves.is_empty(), "no leader has settled: {moves:?}");
        // Only group 2 has settled: it is the one that moves.
        let moves = plan(1, &refs(&reports), &|r| r.group == 2, &all_alive);
        assert_eq!(
            moves,
            vec![Move {
                group: 2,
                to: 3,
                term: 7
            }]
        );
        // The controller neither moves nor counts.
        let mut reports: Vec<GroupReport> = (1..=4).map(|g| report(g, 1)).collect();
        reports[0].group = CONTROLLER_GROUP;
        let moves = plan(1, &refs(&reports), &|_| true, &all_alive);
        assert_eq!(leaders_after(&reports[1..], &moves), vec![1, 1, 1]);
        assert!(moves.iter().all(|m| m.group != CONTROLLER_GROUP));
    }

    #[test]
    fn a_group_whose_leader_is_not_heard_from_is_not_counted() {
        // Broker 3 died leading groups 4-6 (no election yet): 1 leads 1-3
        // and must not give any away to 2 on their account.
        let reports: Vec<GroupReport> = (1..=6)
            .map(|g| report(g, if g <= 3 { 1 } else { 3 }))
            .collect();
        let moves = plan(1, &refs(&reports), &|_| true, &|b| b != 3);
        assert_eq!(moves.len(), 1, "3-0 between 1 and 2 becomes 2-1: {moves:?}");
        assert_eq!(moves[0].to, 2);
    }

    #[test]
    fn every_shard_reads_one_plan_per_round_made_from_every_shards_report() {
        let t0 = Instant::now();
        let mut board = Board::new(t0);
        let every = Duration::from_secs(3);
        let (round, start) = board.next_round(every, t0 + Duration::from_millis(10));
        assert_eq!((round, start), (1, t0 + every));
        // Broker 1 leads all six groups, three on each of its two shards.
        let shard =
            |s: u64| -> Vec<GroupReport> { (0..3).map(|i| report(1 + s * 3 + i, 1)).collect() };
        board.report(0, 2, round, shard(0), start);
        // Not every shard has reported: no plan this round, for anyone.
        let later = start + SETTLE;
        assert!(board.moves(round, 1, SETTLE, &all_alive, later).is_empty());
        board.report(1, 2, round, shard(1), start);
        assert!(board.moves(round, 1, SETTLE, &all_alive, later).is_empty());
        // Next round: leaders seen since `start`, settled by `later`.
        let round = round + 1;
        board.report(0, 2, round, shard(0), later);
        board.report(1, 2, round, shard(1), later);
        let first = board.moves(round, 1, SETTLE, &all_alive, later);
        assert_eq!(first.len(), 4, "6-0-0 becomes 2-2-2: {first:?}");
        // A shard asking later in the round reads the same plan, whatever
        // changed meanwhile.
        board.report(0, 2, round, Vec::new(), later);
        assert_eq!(board.moves(round, 1, SETTLE, &all_alive, later), first);
        let reports: Vec<GroupReport> = shard(0).into_iter().chain(shard(1)).collect();
        assert_eq!(leaders_after(&reports, &first), vec![2, 2, 2]);
    }

    #[test]
    fn no_plan_while_a_group_elects_unless_it_has_been_without_a_leader_too_long() {
        // Broker 3 died leading group 4: 1 leads 1-3, 2 nothing, and 4 is
        // about to elect a leader (maybe 2, which would even the count).
        let t0 = Instant::now();
        let mut board = Board::new(t0);
        let groups: Vec<GroupReport> = (1..=4)
            .map(|g| report(g, if g <= 3 { 1 } else { 3 }))
            .collect();
        let dead_3 = |b: u64| b != 3;
        board.report(0, 1, 1, groups.clone(), t0);
        let t1 = t0 + SETTLE;
        board.report(0, 1, 2, groups.clone(), t1);
        assert!(
            board.moves(2, 1, SETTLE, &dead_3, t1).is_empty(),
            "group 4 is electing"
        );
        // Still without a leader long after: it no longer holds back.
        let t2 = t1 + LEADERLESS_WAIT_MAX;
        board.report(0, 1, 3, groups, t2);
        assert_eq!(
            board.moves(3, 1, SETTLE, &dead_3, t2),
            vec![Move {
                group: 1,
                to: 2,
                term: 7
            }]
        );
    }

    #[test]
    fn a_new_leader_or_term_restarts_the_settle_time() {
        let t0 = Instant::now();
        let mut board = Board::new(t0);
        let groups = |term: u64| -> Vec<GroupReport> {
            (1..=3)
                .map(|g| GroupReport {
                    term,
                    ..report(g, 1)
                })
                .collect()
        };
        board.report(0, 1, 1, groups(7), t0);
        let t1 = t0 + SETTLE;
        board.report(0, 1, 2, groups(8), t1);
        assert!(
            board.moves(2, 1, SETTLE, &all_alive, t1).is_empty(),
            "term 8 was first seen just now"
        );
        let t2 = t1 + SETTLE;
        board.report(0, 1, 3, groups(8), t2);
        assert_eq!(board.moves(3, 1, SETTLE, &all_alive, t2).len(), 2);
    }
}
