//! Spreading leaders: every leader does more work (it sends, the followers
//! only answer), so a broker that leads most partitions is the bottleneck.
//! [`plan_leader_moves`] looks at who leads which group and returns the
//! transfers that even out the count; the driver calls
//! [`crate::Raft::transfer_leader`] on each group's leader for them, a few at a
//! time. Pure and deterministic, like the rest of the crate.

use std::collections::{BTreeMap, BTreeSet};

use crate::progress::ProgressState;
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{GroupId, NodeId, Role};

/// At most this many moves per plan: each transfer costs a short pause in its
/// group (proposals wait for the TimeoutNow election), so a driver moves
/// leaders in small waves and plans again after they settle.
pub const LEADER_MOVES_PER_PLAN_MAX: usize = 64;

/// One group's current leader and voters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLeadership {
    pub group_id: GroupId,
    pub leader: NodeId,
    pub voters: Vec<NodeId>,
}

/// Transfer the leadership of `group_id` from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderMove {
    pub group_id: GroupId,
    pub from: NodeId,
    pub to: NodeId,
}

/// Moves that bring every node's leader count within one of the others'
/// (where the voter sets allow), at most `moves_max` (capped at
/// [`LEADER_MOVES_PER_PLAN_MAX`]). Each group moves at most once per plan.
pub fn plan_leader_moves(groups: &[GroupLeadership], moves_max: usize) -> Vec<LeaderMove> {
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    for g in groups {
        for v in &g.voters {
            led.entry(*v).or_insert(0);
        }
        *led.entry(g.leader).or_insert(0) += 1;
    }
    let mut moved: BTreeSet<GroupId> = BTreeSet::new();
    let mut moves = Vec::new();
    while moves.len() < moves_max.min(LEADER_MOVES_PER_PLAN_MAX) {
        // The best move: from a most-loaded node to the least-loaded voter of
        // one of its groups, if that strictly narrows the gap.
        let mut best: Option<(usize, usize, &GroupLeadership, NodeId)> = None;
        for g in groups {
            if moved.contains(&g.group_id) {
                continue;
            }
            let from_count = led[&g.leader];
            for &to in &g.voters {
                let to_count = led[&to];
                if to == g.leader || to_count + 1 >= from_count {
                    continue;
                }
                let better = best
                    .is_none_or(|(f, t, _, _)| from_count > f || (from_count == f && to_count < t));
                if better {
                    best = Some((from_count, to_count, g, to));
                }
            }
        }
        let Some((_, _, g, to)) = best else { break };
        *led.get_mut(&g.leader).expect("counted") -= 1;
        *led.get_mut(&to).expect("counted") += 1;
        moved.insert(g.group_id);
        moves.push(LeaderMove {
            group_id: g.group_id,
            from: g.leader,
            to,
        });
    }
    moves
}

/// The voters a leader could hand its group to now: replicating (their
/// log matches ours) and at most `lag_entries_max` entries behind our last
/// one, and answering: heard from within the current check-quorum window
/// (an idle group's stopped replica still looks caught up). The driver
/// also checks that the target's node was heard from lately, and
/// [`Raft::transfer_leader`] gives up after an election timeout if the
/// target never takes over.
pub fn transfer_targets<S: Storage>(raft: &Raft<S>, lag_entries_max: u64) -> Vec<NodeId> {
    if raft.role() != Role::Leader {
        return Vec::new();
    }
    let last = raft.last_index();
    raft.membership()
        .voters
        .iter()
        .copied()
        .filter(|&v| v != raft.id())
        .filter(|&v| {
            raft.progress(v).is_some_and(|p| {
                p.state == ProgressState::Replicate
                    && p.recent_active
                    && p.match_index.saturating_add(lag_entries_max) >= last
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(group_id: GroupId, leader: NodeId) -> GroupLeadership {
        GroupLeadership {
            group_id,
            leader,
            voters: vec![1, 2, 3],
        }
    }

    #[test]
    fn nine_groups_led_by_one_node_end_up_three_per_node() {
        let groups: Vec<GroupLeadership> = (0..9).map(|g| group(g, 1)).collect();
        let moves = plan_leader_moves(&groups, 100);
        assert_eq!(moves.len(), 6);
        let mut count = BTreeMap::new();
        for g in &groups {
            let leader = moves
                .iter()
                .find(|m| m.group_id == g.group_id)
                .map_or(g.leader, |m| m.to);
            *count.entry(leader).or_insert(0) += 1;
        }
        assert_eq!(count.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
    }

    #[test]
    fn a_balanced_cluster_needs_no_moves_and_voter_sets_are_respected() {
        let groups = vec![group(1, 1), group(2, 2), group(3, 3), group(4, 1)];
        assert!(
            plan_leader_moves(&groups, 10).is_empty(),
            "2-1-1 is within one"
        );
        let pinned = vec![
            GroupLeadership {
                group_id: 1,
                leader: 1,
                voters: vec![1],
            },
            GroupLeadership {
                group_id: 2,
                leader: 1,
                voters: vec![1],
            },
            GroupLeadership {
                group_id: 3,
                leader: 1,
                voters: vec![1, 2],
            },
        ];
        let moves = plan_leader_moves(&pinned, 10);
        assert_eq!(
            moves,
            vec![LeaderMove {
                group_id: 3,
                from: 1,
                to: 2
            }]
        );
    }

    #[test]
    fn the_plan_is_capped() {
        let groups: Vec<GroupLeadership> = (0..300).map(|g| group(g, 1)).collect();
        assert_eq!(plan_leader_moves(&groups, 5).len(), 5);
        assert_eq!(
            plan_leader_moves(&groups, 1000).len(),
            LEADER_MOVES_PER_PLAN_MAX
        );
    }
}
