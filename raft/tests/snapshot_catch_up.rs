//! Catch-up by snapshot of a far-behind follower (`snapshot_catch_up_bytes`):
//! regression tests found by review.

mod common;

use common::Cluster;
use raft::ProgressState;

/// A follower that the quorum needs (two voters; or three with one down)
/// comes back while the leader holds more than `snapshot_catch_up_bytes` of
/// *uncommitted* entries. The snapshot the leader can offer ends at or below
/// the commit index, i.e. at or below the follower's match index, so it is
/// "not fresh": `send_append` still moves the follower to Snapshot state
/// and sends nothing. No newer snapshot can ever exist (nothing commits
/// without this follower), so the group never commits again.
#[test]
fn a_quorum_follower_far_behind_only_in_uncommitted_entries_is_not_wedged_in_snapshot_state() {
    let mut cluster = Cluster::with_config(2, |c| c.snapshot_catch_up_bytes = 200);
    cluster.campaign(1);
    cluster.propose(1, b"committed");
    let committed = cluster.node(1).commit_index();
    cluster.isolate(2);
    // Accepted by the leader, not committable without node 2.
    for i in 0..20u8 {
        let _ = cluster.node_mut(1).propose(vec![i; 64]);
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), committed);
    let last = cluster.node(1).last_index();
    cluster.heal();
    cluster.tick_all(60);
    let pr = cluster.node(1).progress(2).unwrap().clone();
    assert!(
        cluster.node(1).commit_index() >= last,
        "commit stuck at {} (last {last}); follower 2 progress state {:?}, match {}",
        cluster.node(1).commit_index(),
        pr.state,
        pr.match_index
    );
    assert_ne!(pr.state, ProgressState::Snapshot);
}

/// Control: the same story without the catch-up threshold commits.
#[test]
fn control_the_same_story_without_the_threshold_commits() {
    let mut cluster = Cluster::with_config(2, |c| c.snapshot_catch_up_bytes = 0);
    cluster.campaign(1);
    cluster.propose(1, b"committed");
    cluster.isolate(2);
    for i in 0..20u8 {
        let _ = cluster.node_mut(1).propose(vec![i; 64]);
    }
    cluster.stabilize();
    let last = cluster.node(1).last_index();
    cluster.heal();
    cluster.tick_all(60);
    assert!(cluster.node(1).commit_index() >= last);
}
