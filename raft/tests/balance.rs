//! What a driver that spreads leaders (`plan_leader_moves` +
//! `transfer_leader`, thesis 3.10) relies on: it hands a group only to a
//! follower that has caught up, and a transfer to a target that dies never
//! costs the group its leader or an entry.

mod common;

use common::Cluster;
use raft::{transfer_targets, Config, Error, MessageBody, Role};

/// Lag allowed in these tests: a follower missing more than this many
/// entries is not a target.
const LAG_ENTRIES_MAX: u64 = 2;

#[test]
fn a_follower_that_was_away_becomes_a_transfer_target_only_once_it_has_caught_up() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    assert_eq!(
        transfer_targets(cluster.node(1), LAG_ENTRIES_MAX),
        vec![2, 3]
    );
    assert!(
        transfer_targets(cluster.node(2), LAG_ENTRIES_MAX).is_empty(),
        "only a leader has targets"
    );
    cluster.isolate(3);
    for i in 0..5u8 {
        cluster.propose(1, &[i]);
    }
    assert_eq!(
        transfer_targets(cluster.node(1), LAG_ENTRIES_MAX),
        vec![2],
        "3 misses five entries"
    );
    cluster.heal();
    // The next heartbeat finds 3 behind; the appends that follow catch it up.
    let heartbeat = Config::new(1, 1).heartbeat_interval_ticks;
    cluster.tick_node(1, heartbeat);
    assert_eq!(cluster.node(3).last_index(), cluster.node(1).last_index());
    assert_eq!(
        transfer_targets(cluster.node(1), LAG_ENTRIES_MAX),
        vec![2, 3]
    );
}

#[test]
fn thesis_3_10_a_transfer_whose_caught_up_target_dies_is_abandoned_and_loses_nothing() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.propose(1, b"a");
    assert!(transfer_targets(cluster.node(1), 0).contains(&3));
    // Caught up: TimeoutNow goes out at once; 3 dies before it arrives.
    cluster.node_mut(1).transfer_leader(3).unwrap();
    cluster.handle_ready(1);
    cluster.crash(3);
    cluster.stabilize();
    assert_eq!(
        cluster.node_mut(1).propose(b"b".to_vec()),
        Err(Error::TransferInProgress),
        "proposals wait for the transfer"
    );
    // One election timeout later the leader gives up and serves again.
    let timeout = Config::new(1, 1).election_timeout_ticks;
    cluster.tick_node(1, timeout + 1);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), 1, "no election happened");
    cluster.propose(1, b"b");
    for id in [1, 2] {
        assert_eq!(
            cluster.applied[&id],
            vec![b"a".to_vec(), b"b".to_vec()],
            "node {id}"
        );
    }
    // 3 comes back and gets everything; no TimeoutNow ever reached it.
    cluster.restart(3);
    cluster.tick_node(1, Config::new(1, 1).heartbeat_interval_ticks);
    assert_eq!(cluster.node(3).last_index(), cluster.node(1).last_index());
    assert!(!cluster
        .delivered
        .iter()
        .any(|m| m.body == MessageBody::TimeoutNow));
    assert!(cluster.committed_changed.is_empty());
}

/// A follower of an idle group looks caught up forever (replicating, every
/// entry) even after its replica stopped answering: only one that answered
/// within the last check-quorum window is a target, or the balancer would
/// hand it the group round after round, each attempt refusing produce
/// requests for an election timeout.
#[test]
fn a_follower_silent_for_a_check_quorum_window_is_not_a_transfer_target() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.propose(1, b"a");
    assert_eq!(transfer_targets(cluster.node(1), 0), vec![2, 3]);
    cluster.crash(3);
    let timeout = Config::new(1, 1).election_timeout_ticks;
    cluster.tick_node(1, timeout + 1);
    assert_eq!(cluster.node(1).role(), Role::Leader, "2 keeps the quorum");
    assert_eq!(
        transfer_targets(cluster.node(1), 0),
        vec![2],
        "3 answered nothing for a whole window"
    );
}
