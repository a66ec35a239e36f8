//! The Raft paper's scenarios, each written as the story it tells. Section
//! numbers refer to "In Search of an Understandable Consensus Algorithm
//! (Extended Version)" and, for thesis sections, Ongaro's PhD thesis.

mod common;

use common::{storage_with_terms, Cluster};
use raft::{
    ConfChange, EntryPayload, Error, Message, MessageBody, ProgressState, Raft, Role, Storage,
};

#[test]
fn section_5_2_a_candidate_with_votes_from_a_majority_becomes_the_only_leader() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), 1);
    for id in [2, 3] {
        assert_eq!(cluster.node(id).role(), Role::Follower);
        assert_eq!(cluster.node(id).leader(), Some(1));
        assert_eq!(cluster.node(id).vote(), Some(1));
    }
    // The leader's no-op of term 1 commits everywhere.
    for id in 1..=3 {
        assert_eq!(cluster.node(id).commit_index(), 1);
    }
}

#[test]
fn section_5_3_a_committed_entry_reaches_every_state_machine() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.propose(1, b"x");
    cluster.propose(1, b"y");
    for id in 1..=3 {
        assert_eq!(
            cluster.applied[&id],
            vec![b"x".to_vec(), b"y".to_vec()],
            "node {id}"
        );
    }
}

#[test]
fn thesis_9_6_pre_vote_keeps_an_isolated_node_from_inflating_the_term() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.isolate(3);
    cluster.tick_node(3, 100);
    assert_eq!(
        cluster.node(3).term(),
        1,
        "pre-votes that fail do not bump the term"
    );
    assert_eq!(cluster.node(3).role(), Role::PreCandidate);
    cluster.heal();
    cluster.tick_all(4);
    assert_eq!(
        cluster.leader(),
        Some(1),
        "the rejoining node did not depose the leader"
    );
    assert_eq!(cluster.node(1).term(), 1);
    assert_eq!(cluster.node(3).leader(), Some(1));
}

#[test]
fn thesis_6_2_check_quorum_a_leader_cut_off_from_the_majority_steps_down() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.isolate(1);
    cluster.tick_node(1, 2 * 10);
    assert_eq!(
        cluster.node(1).role(),
        Role::Follower,
        "no quorum heard: step down"
    );
    // The majority side elects a new leader on its own.
    cluster.tick_all(40);
    let leader = cluster.leader().expect("majority elects a leader");
    assert_ne!(leader, 1);
    assert!(cluster.node(leader).term() >= 2);
}

#[test]
fn thesis_4_2_3_followers_with_a_live_leader_ignore_a_disruptive_candidate() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    // Node 3 campaigns although the leader is fine (say its clock jumped).
    cluster.node_mut(3).campaign();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(cluster.node(1).term(), 1, "nobody granted the pre-vote");
}

/// Figure 7: a new leader (term 8) meets followers with every kind of
/// divergent log; it brings all of them in line with its own.
#[test]
fn figure_7_a_new_leader_forces_every_follower_log_to_match_its_own() {
    let voters = [1, 2, 3, 4, 5, 6, 7];
    let leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let logs: [(u64, &[u64]); 7] = [
        (1, &leader_terms),
        (2, &[1, 1, 1, 4, 4, 5, 5, 6, 6]),       // (a) missing one
        (3, &[1, 1, 1, 4]),                      // (b) missing many
        (4, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]), // (c) one extra uncommitted
        (5, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]), // (d) extra entries of term 7
        (6, &[1, 1, 1, 4, 4, 4, 4]),             // (e) missing and extra
        (7, &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]), // (f) a whole divergent history
    ];
    let storages = logs
        .iter()
        .map(|(id, terms)| (*id, storage_with_terms(&voters, terms, 7)))
        .collect();
    let mut cluster = Cluster::from_storages(storages, |_| {});
    cluster.campaign(1);
    assert_eq!(
        cluster.node(1).role(),
        Role::Leader,
        "votes from a, b, e, f"
    );
    assert_eq!(cluster.node(1).term(), 8);
    let leader_log = cluster.log_terms(1);
    assert_eq!(leader_log.len(), 11, "ten entries plus the term-8 no-op");
    for id in 2..=7 {
        assert_eq!(
            cluster.log_terms(id),
            leader_log,
            "follower {id} matches the leader"
        );
        assert_eq!(cluster.node(id).commit_index(), 11);
    }
}

/// Figure 8: a leader may not conclude that an entry of an earlier term is
/// committed because it is stored on a majority.
#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed_until_a_current_term_entry_is() {
    let voters = [1, 2, 3, 4, 5];
    // State of figure 8 (c) before S1 replicates: S1 and S2 hold (2, term 2),
    // S5 holds (2, term 3) that nobody else has; everybody is in term 3.
    let storages = vec![
        (1, storage_with_terms(&voters, &[1, 2], 3)),
        (2, storage_with_terms(&voters, &[1, 2], 3)),
        (3, storage_with_terms(&voters, &[1], 3)),
        (4, storage_with_terms(&voters, &[1], 3)),
        (5, storage_with_terms(&voters, &[1, 3], 3)),
    ];
    // As in the paper: no leader lease (check-quorum), one entry per message.
    let mut cluster = Cluster::from_storages(storages, |c| {
        c.msg_bytes_max = 32;
        c.check_quorum = false;
    });
    // S1 is elected in term 4 with votes of S2, S3 and S4 (S5's log is newer),
    // but only manages to replicate entry 2 (term 2) to S3: the network strips
    // the term-4 entries, and no append reaches S4 or S5.
    cluster.rewrite = Some(Box::new(|mut m| {
        if let MessageBody::Append { entries, .. } = &mut m.body {
            if m.to == 4 || m.to == 5 {
                return None;
            }
            entries.retain(|e| e.term != 4);
        }
        Some(m)
    }));
    cluster.node_mut(1).campaign();
    cluster.stabilize();
    cluster.tick_all(4);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), 4);
    for id in [1, 2, 3] {
        assert_eq!(
            cluster.node(id).log_term(2),
            Some(2),
            "S{id} holds entry 2 of term 2"
        );
    }
    assert!(
        cluster.node(1).commit_index() < 2,
        "a majority holds entry 2, yet it is not committed"
    );

    // (d) Good thing: S1 crashes, S5 wins term 5 (its last term 3 beats 2) and
    // overwrites entry 2 everywhere.
    cluster.crash(1);
    cluster.heal();
    cluster.node_mut(5).campaign();
    cluster.stabilize();
    assert_eq!(cluster.node(5).role(), Role::Leader);
    for id in [2, 3, 4, 5] {
        assert_eq!(
            cluster.node(id).log_term(2),
            Some(3),
            "S{id} now holds entry 2 of term 3"
        );
    }

    // (e) Once the leader commits an entry of its own term, earlier ones go with it.
    assert!(cluster.node(5).commit_index() >= 3);
}

/// Figure 8 played from the start, as the paper tells it, on five servers
/// with empty logs. The Figure 8 test above starts from a prepared (c); this
/// one lives through (a) to (d) and watches every Ready: no server may report
/// the term-2 entries committed while they sit on a majority only by
/// replication in a later term, and no committed entry ever changes.
#[test]
fn figure_8_played_from_the_start_a_replicated_old_term_entry_is_never_reported_committed() {
    // As in the paper: no leader lease, so any server may be elected when asked.
    let mut cluster = Cluster::with_config(5, |c| c.check_quorum = false);

    // Term 1: S1 leads and commits entry 1 (its no-op) everywhere.
    cluster.campaign(1);
    assert_eq!(cluster.node(1).term(), 1);
    for id in 1..=5 {
        assert_eq!(cluster.log_terms(id), vec![(1, 1)], "S{id}");
        assert_eq!(cluster.node(id).commit_index(), 1, "S{id}");
    }

    // (a) S1 leads term 2 (votes of everyone) and replicates its term-2
    // entries (the no-op at 2 and "x" at 3) to S2 only.
    cluster.rewrite = Some(Box::new(|m| {
        let append = matches!(m.body, MessageBody::Append { .. });
        (!(append && m.from == 1 && m.to != 2)).then_some(m)
    }));
    cluster.campaign(1);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), 2);
    let x = cluster.propose(1, b"x");
    assert_eq!(x, 3);
    for id in [1, 2] {
        assert_eq!(cluster.log_terms(id), vec![(1, 1), (2, 2), (3, 2)], "S{id}");
    }
    for id in [3, 4, 5] {
        assert_eq!(cluster.log_terms(id), vec![(1, 1)], "S{id}");
    }
    assert_eq!(cluster.node(1).commit_index(), 1, "2 of 5 is no majority");

    // (b) S1 crashes; S5 wins term 3 with the votes of S3 and S4 (S2's log
    // is newer and refuses), writes its no-op at index 2, and crashes before
    // sending it to anyone.
    cluster.crash(1);
    cluster.rewrite = Some(Box::new(|m| {
        let append = matches!(m.body, MessageBody::Append { .. });
        (!(append && m.from == 5)).then_some(m)
    }));
    cluster.campaign(5);
    assert_eq!(cluster.node(5).role(), Role::Leader);
    assert_eq!(cluster.node(5).term(), 3);
    assert_eq!(cluster.log_terms(5), vec![(1, 1), (2, 3)]);
    cluster.crash(5);

    // (c) S1 restarts and is elected for term 4 by S2, S3 and S4 (its first
    // pre-vote, refused by S3 and S4 who voted in term 3, only teaches it term 3). It replicates its term-2 entries to
    // S3, but none of its term-4 entries reaches anyone, and nothing reaches
    // S4. Entries 2 and 3 (term 2) are now on S1, S2 and S3: a majority.
    cluster.restart(1);
    cluster.rewrite = Some(Box::new(|mut m| {
        if let MessageBody::Append { entries, .. } = &mut m.body {
            if m.to == 4 {
                return None;
            }
            entries.retain(|e| e.term != 4);
        }
        Some(m)
    }));
    cluster.campaign(1);
    assert_eq!(cluster.node(1).role(), Role::Follower, "pre-vote refused");
    assert_eq!(cluster.node(1).term(), 3, "but the refusals carried term 3");
    cluster.campaign(1);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), 4);
    for id in [1, 2, 3] {
        assert_eq!(cluster.node(id).log_term(2), Some(2), "S{id}");
        assert_eq!(cluster.node(id).log_term(3), Some(2), "S{id}");
    }
    for id in [1, 2, 3, 4] {
        assert!(
            cluster.node(id).commit_index() < 2,
            "S{id} commits up to {} though no term-4 entry is on a majority",
            cluster.node(id).commit_index()
        );
    }
    assert!(
        cluster.committed.range(2..).next().is_none(),
        "no Ready reported an entry past 1 committed: {:?}",
        cluster.committed
    );
    assert!(cluster.applied.values().all(|state| state.is_empty()));

    // (d) S1 crashes; S5 restarts and is elected for term 5 by S2, S3 and S4
    // (its last term 3 beats their 2 and 1; again a first refused pre-vote
    // teaches it the current term, 4) and overwrites index 2 and 3
    // everywhere: had entry 3 been committed in (c), "x" would now be lost.
    cluster.crash(1);
    cluster.restart(5);
    cluster.heal();
    cluster.campaign(5);
    assert_eq!(cluster.node(5).role(), Role::Follower, "pre-vote refused");
    assert_eq!(cluster.node(5).term(), 4, "but the refusals carried term 4");
    cluster.campaign(5);
    assert_eq!(cluster.node(5).role(), Role::Leader);
    assert_eq!(cluster.node(5).term(), 5);
    cluster.restart(1);
    cluster.tick_all(3);
    assert_eq!(
        cluster.committed_changed,
        vec![],
        "committed entries never change (index, term, node)"
    );
    let leader_log = cluster.log_terms(5);
    assert_eq!(leader_log, vec![(1, 1), (2, 3), (3, 5)]);
    for id in 1..=5 {
        assert_eq!(cluster.log_terms(id), leader_log, "S{id}");
        assert_eq!(cluster.node(id).commit_index(), 3, "S{id}");
        assert!(cluster.applied[&id].is_empty(), "S{id} never applied x");
    }
    assert_eq!(cluster.committed.get(&2).map(|c| c.0), Some(3));
}

/// Section 5.4.1: a voter grants its vote (and its pre-vote) only to a
/// candidate whose log is at least as up to date as its own: the later last
/// term wins; with equal last terms, the longer log wins.
#[test]
fn section_5_4_1_a_vote_goes_only_to_a_candidate_whose_log_is_at_least_as_up_to_date() {
    // (voter's log terms, candidate's log terms, granted)
    let cases: [(&[u64], &[u64], bool); 6] = [
        (&[1, 1, 1], &[1, 2], true),     // higher last term, shorter log: wins
        (&[1, 2, 2], &[1, 2], false),    // same last term, shorter log: loses
        (&[1, 2], &[1, 1, 1, 1], false), // lower last term, longer log: loses
        (&[1, 2], &[1, 2], true),        // the same log
        (&[1, 2], &[1, 2, 2], true),     // same last term, longer log
        (&[], &[1], true),               // anything beats an empty log
    ];
    for (voter_log, candidate_log, granted) in cases {
        for pre_vote in [true, false] {
            // A fresh voter 2 in term 5 that has heard from no leader.
            let storage = storage_with_terms(&[1, 2, 3], voter_log, 5);
            let mut voter = Raft::new(common::config(2), storage).unwrap();
            let last_index = candidate_log.len() as u64;
            let last_term = candidate_log.last().copied().unwrap_or(0);
            let body = if pre_vote {
                MessageBody::PreVote {
                    last_index,
                    last_term,
                }
            } else {
                MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer: false,
                }
            };
            voter
                .step(Message {
                    group_id: 1,
                    from: 1,
                    to: 2,
                    term: 6,
                    body,
                })
                .unwrap();
            let ready = voter.ready().unwrap();
            let answers: Vec<_> = ready.messages.iter().map(|m| &m.body).collect();
            let expected = if pre_vote {
                MessageBody::PreVoteResponse { reject: !granted }
            } else {
                MessageBody::VoteResponse { reject: !granted }
            };
            assert_eq!(
                answers,
                vec![&expected],
                "voter {voter_log:?}, candidate {candidate_log:?}, pre-vote {pre_vote}"
            );
            let vote = ready.hard_state.map_or(voter.vote(), |hs| hs.vote);
            let voted = !pre_vote && granted;
            assert_eq!(vote, voted.then_some(1), "the vote persisted");
        }
    }

    // The same rule in an election. S1's log is shorter than both others';
    // its last term beats S2's, but equals S3's, whose log is longer.
    let voters = [1, 2, 3];
    let storages = vec![
        (1, storage_with_terms(&voters, &[1, 2], 2)),
        (2, storage_with_terms(&voters, &[1, 1, 1], 2)),
        (3, storage_with_terms(&voters, &[1, 2, 2], 2)),
    ];
    let mut cluster = Cluster::from_storages(storages, |_| {});
    cluster.campaign(1);
    let answers = |from| -> Vec<MessageBody> {
        cluster
            .delivered
            .iter()
            .filter(|m| m.from == from && m.to == 1)
            .filter(|m| {
                matches!(
                    m.body,
                    MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. }
                )
            })
            .map(|m| m.body.clone())
            .collect()
    };
    assert_eq!(
        answers(2),
        vec![
            MessageBody::PreVoteResponse { reject: false },
            MessageBody::VoteResponse { reject: false }
        ],
        "S2 grants: S1's last term 2 beats its 1, though S1's log is shorter"
    );
    assert_eq!(
        answers(3)[0],
        MessageBody::PreVoteResponse { reject: true },
        "S3 refuses: same last term, and S1's log is shorter"
    );
    assert!(answers(3)
        .iter()
        .all(|b| *b != MessageBody::VoteResponse { reject: false }));
    assert_eq!(cluster.node(1).role(), Role::Leader, "S1 and S2 are 2 of 3");
    assert_eq!(cluster.node(1).term(), 3);
    assert_eq!(cluster.node(3).vote(), None, "S3 voted for nobody");
    // S3's uncommitted entry 3 gives way to the leader's log.
    assert_eq!(cluster.log_terms(3), cluster.log_terms(1));
    assert_eq!(cluster.log_terms(1), vec![(1, 1), (2, 2), (3, 3)]);
}

#[test]
fn section_5_1_a_stale_leader_steps_down_and_its_uncommitted_entries_are_replaced() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.isolate(1);
    let stale_index = cluster.node_mut(1).propose(b"lost".to_vec()).unwrap();
    cluster.stabilize();
    cluster.tick_all(40);
    let new_leader = cluster
        .leader()
        .filter(|&l| l != 1)
        .expect("2 or 3 took over");
    cluster.propose(new_leader, b"kept");
    cluster.heal();
    cluster.tick_all(5);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(cluster.node(1).leader(), Some(new_leader));
    assert_ne!(
        cluster.node(1).log_term(stale_index),
        Some(1),
        "the stale entry is gone"
    );
    for id in 1..=3 {
        assert_eq!(cluster.applied[&id], vec![b"kept".to_vec()], "node {id}");
    }
}

#[test]
fn a_follower_rejoining_after_a_partition_catches_up() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.isolate(3);
    for i in 0..20u8 {
        cluster.propose(1, &[i]);
    }
    assert_eq!(cluster.node(3).last_index(), 1, "node 3 saw nothing");
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(cluster.log_terms(3), cluster.log_terms(1));
    assert_eq!(cluster.applied[&3].len(), 20);
    assert_eq!(
        cluster.node(1).progress(3).unwrap().state,
        ProgressState::Replicate
    );
}

#[test]
fn fast_back_off_a_follower_with_a_long_divergent_tail_is_repaired_in_few_round_trips() {
    // Follower 3 has 50 entries of term 2 that nobody else has.
    let mut terms_3 = vec![1];
    terms_3.extend(std::iter::repeat_n(2, 50));
    let storages = vec![
        (1, storage_with_terms(&[1, 2, 3], &[1, 3], 3)),
        (2, storage_with_terms(&[1, 2, 3], &[1, 3], 3)),
        (3, storage_with_terms(&[1, 2, 3], &terms_3, 3)),
    ];
    let mut cluster = Cluster::from_storages(storages, |_| {});
    cluster.campaign(1);
    let rejections = cluster
        .delivered
        .iter()
        .filter(|m| {
            m.from == 3 && matches!(m.body, MessageBody::AppendResponse { reject: true, .. })
        })
        .count();
    assert!(
        rejections <= 2,
        "{rejections} rejections: one hint skips the whole term"
    );
    assert_eq!(cluster.log_terms(3), cluster.log_terms(1));
}

#[test]
fn section_5_2_a_restarted_node_does_not_vote_twice_in_one_term() {
    let mut cluster = Cluster::with_config(3, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    // Node 1 asks for votes in term 1; only node 3 hears it and grants.
    cluster.cut.insert((1, 2));
    cluster.node_mut(1).campaign();
    cluster.handle_ready(1);
    cluster.cut.insert((3, 1)); // the grant is lost
    while cluster.deliver_one() {}
    let ready = cluster.handle_ready(3).expect("node 3 persists its vote");
    assert_eq!(
        ready.hard_state.unwrap().vote,
        Some(1),
        "the vote is in the Ready's hard state"
    );
    // Node 3 crashes and restarts: the vote must have survived.
    cluster.crash(3);
    cluster.restart(3);
    assert_eq!(cluster.node(3).vote(), Some(1));
    // Node 2 campaigns in the same term 1 and asks node 3.
    cluster.heal();
    cluster.queue.clear();
    cluster.node_mut(2).campaign();
    assert_eq!(cluster.node(2).term(), 1);
    cluster.stabilize();
    let answer = cluster
        .delivered
        .iter()
        .rev()
        .find(|m| m.from == 3 && m.to == 2)
        .expect("node 3 answered");
    assert_eq!(answer.body, MessageBody::VoteResponse { reject: true });
    assert_ne!(cluster.node(2).role(), Role::Leader);
}

#[test]
fn persistence_contract_acknowledgements_travel_with_the_entries_they_acknowledge() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.node_mut(1).propose(b"x".to_vec()).unwrap();
    // Leader Ready: the entry to persist, the appends to send; nothing
    // committed yet, since the leader's own copy is not durable.
    let ready = cluster.handle_ready(1).unwrap();
    assert_eq!(ready.entries.len(), 1);
    assert!(ready.committed_entries.is_empty());
    assert!(ready
        .messages
        .iter()
        .all(|m| matches!(m.body, MessageBody::Append { .. })));
    cluster.deliver_one();
    let ready = cluster.handle_ready(2).unwrap();
    assert_eq!(
        ready.entries.len(),
        1,
        "the follower's Ready carries the entry..."
    );
    let ack = ready.messages.iter().find(|m| m.to == 1).unwrap();
    assert!(
        matches!(
            ack.body,
            MessageBody::AppendResponse {
                reject: false,
                index: 2,
                ..
            }
        ),
        "...and its acknowledgement, to be sent only after the entry is durable"
    );
    // A node that crashes before persisting a Ready loses its entries and
    // never sent the acknowledgement: no promise was broken.
    cluster.node_mut(1).propose(b"y".to_vec()).unwrap();
    cluster.handle_ready(1);
    cluster.queue.retain(|m| m.to == 3);
    cluster.deliver_one();
    let raft3 = cluster.node_mut(3);
    let _unpersisted = raft3.ready().unwrap();
    cluster.crash(3);
    cluster.restart(3);
    assert_eq!(
        cluster.node(3).last_index(),
        1,
        "node 3 never persisted entries 2 and 3"
    );
}

#[test]
fn a_single_node_commits_only_after_its_own_write_is_durable() {
    let mut cluster = Cluster::new(1);
    cluster.campaign(1);
    cluster.stabilize();
    cluster.node_mut(1).propose(b"solo".to_vec()).unwrap();
    let first = cluster.handle_ready(1).unwrap();
    assert_eq!(first.entries.len(), 1);
    assert!(first.committed_entries.is_empty());
    let second = cluster.handle_ready(1).unwrap();
    assert_eq!(second.committed_entries.len(), 1, "committed after advance");
}

#[test]
fn thesis_3_10_leadership_transfer_hands_over_without_an_election_timeout() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.isolate(3);
    cluster.propose(1, b"a");
    cluster.heal();
    cluster.node_mut(1).transfer_leader(3).unwrap();
    assert_eq!(
        cluster.node_mut(1).propose(b"b".to_vec()),
        Err(Error::TransferInProgress),
        "proposals wait while the target catches up"
    );
    cluster.stabilize();
    assert_eq!(
        cluster.leader(),
        Some(3),
        "3 caught up, got TimeoutNow and won"
    );
    assert_eq!(cluster.node(3).term(), 2);
    assert!(cluster
        .delivered
        .iter()
        .any(|m| m.body == MessageBody::TimeoutNow));
    cluster.propose(3, b"c");
    assert_eq!(cluster.applied[&1], vec![b"a".to_vec(), b"c".to_vec()]);
}

#[test]
fn a_leadership_transfer_to_an_unreachable_node_is_abandoned_after_an_election_timeout() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.isolate(3);
    cluster.node_mut(1).transfer_leader(3).unwrap();
    cluster.stabilize();
    cluster
        .cut
        .retain(|&(a, b)| a != 1 && b != 1 || a == 3 || b == 3);
    cluster.tick_node(1, 11);
    assert_eq!(cluster.leader(), Some(1));
    assert!(cluster.node_mut(1).propose(b"again".to_vec()).is_ok());
}

#[test]
fn a_follower_behind_the_log_start_receives_the_snapshot_in_resumable_chunks() {
    let mut cluster = Cluster::with_config(3, |c| c.snapshot_chunk_bytes = 16);
    cluster.campaign(1);
    cluster.isolate(3);
    for i in 0..30u8 {
        cluster.propose(1, &[i; 3]);
    }
    cluster.compact(1);
    assert!(
        cluster.node(1).first_index() > 2,
        "the leader dropped its log"
    );
    // Lose every third chunk on the way: the transfer resumes by offset.
    cluster.heal();
    let mut seen = 0;
    cluster.rewrite = Some(Box::new(move |m| {
        if let MessageBody::InstallSnapshot { .. } = m.body {
            seen += 1;
            if seen % 3 == 0 {
                return None;
            }
        }
        Some(m)
    }));
    cluster.tick_all(60);
    let chunks = cluster
        .delivered
        .iter()
        .filter(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }))
        .count();
    assert!(
        chunks > 5,
        "{chunks} chunks: 30 x 7 bytes in 16-byte chunks"
    );
    assert_eq!(
        cluster.applied[&3], cluster.applied[&1],
        "state restored from the snapshot"
    );
    assert_eq!(
        cluster.node(3).storage().first_index(),
        cluster.node(1).first_index()
    );
    cluster.propose(1, b"after");
    assert_eq!(cluster.applied[&3].last().unwrap(), b"after");
    assert_eq!(
        cluster.node(1).progress(3).unwrap().state,
        ProgressState::Replicate
    );
}

#[test]
fn a_leader_asked_to_snapshot_a_far_behind_follower_sends_it_even_though_the_log_still_reaches() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.isolate(3);
    for i in 0..20u8 {
        cluster.propose(1, &[i; 3]);
    }
    // Follower 2 is up to date, so nothing newer than its match index:
    // nothing to do.
    assert!(!cluster.node_mut(1).request_snapshot(2).unwrap());
    // A snapshot without dropping the log start below follower 3's need.
    let before = cluster.node(1).first_index();
    cluster.compact(1);
    assert!(cluster.node(1).first_index() > before);
    cluster.heal();
    assert!(cluster.node_mut(1).request_snapshot(3).unwrap());
    assert_eq!(
        cluster.node(1).progress(3).unwrap().state,
        ProgressState::Snapshot
    );
    // Asked again while it is being sent: not restarted.
    assert!(!cluster.node_mut(1).request_snapshot(3).unwrap());
    assert!(
        !cluster.node_mut(2).request_snapshot(3).unwrap(),
        "not the leader"
    );
    cluster.tick_all(40);
    assert_eq!(cluster.applied[&3], cluster.applied[&1]);
    cluster.propose(1, b"after");
    assert_eq!(cluster.applied[&3].last().unwrap(), b"after");
}

#[test]
fn thesis_4_2_1_a_learner_catches_up_before_it_may_vote() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    for i in 0..10u8 {
        cluster.propose(1, &[i]);
    }
    cluster.add_blank_node(4);
    cluster.isolate(4);
    cluster
        .node_mut(1)
        .propose_conf_change(ConfChange::AddLearner(4))
        .unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).membership().is_learner(4));
    assert!(matches!(
        cluster
            .node_mut(1)
            .propose_conf_change(ConfChange::PromoteLearner(4)),
        Err(Error::LearnerBehind { id: 4, .. })
    ));
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(
        cluster.applied[&4].len(),
        10,
        "the learner has the whole log"
    );
    assert!(!cluster.node(4).promotable(), "a learner never campaigns");
    cluster
        .node_mut(1)
        .propose_conf_change(ConfChange::PromoteLearner(4))
        .unwrap();
    cluster.stabilize();
    cluster.tick_all(2);
    for id in 1..=4 {
        assert!(
            cluster.node(id).membership().is_voter(4),
            "node {id} sees 4 as voter"
        );
    }
    // Now 4 counts: with 2 and 3 down, 1 and 4 are not a majority of 4.
    cluster.isolate(2);
    cluster.isolate(3);
    let index = cluster
        .node_mut(1)
        .propose(b"needs 3 of 4".to_vec())
        .unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).commit_index() < index);
    cluster.heal();
    cluster.tick_all(2);
    assert!(cluster.node(1).commit_index() >= index);
}

#[test]
fn thesis_4_1_removing_a_voter_shrinks_the_quorum_and_the_leader_cannot_remove_itself() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    assert!(matches!(
        cluster
            .node_mut(1)
            .propose_conf_change(ConfChange::RemoveNode(1)),
        Err(Error::InvalidConfChange(_))
    ));
    cluster
        .node_mut(1)
        .propose_conf_change(ConfChange::RemoveNode(3))
        .unwrap();
    assert_eq!(
        cluster
            .node_mut(1)
            .propose_conf_change(ConfChange::AddLearner(9)),
        Err(Error::ConfChangePending),
        "one change at a time"
    );
    cluster.stabilize();
    assert_eq!(cluster.node(1).membership().voters.len(), 2);
    cluster.crash(3);
    cluster.propose(1, b"two of two");
    assert_eq!(cluster.applied[&2], vec![b"two of two".to_vec()]);
    let entries = cluster.node(2).log_entries(1, 10).unwrap();
    assert!(entries
        .iter()
        .any(|e| matches!(e.payload, EntryPayload::Membership(_))));
}

#[test]
fn thesis_6_2_a_leader_that_can_send_but_not_hear_back_steps_down() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    // Asymmetric partition: 1 -> others works, others -> 1 is cut.
    cluster.cut.insert((2, 1));
    cluster.cut.insert((3, 1));
    cluster.tick_all(25);
    assert_ne!(
        cluster.node(1).role(),
        Role::Leader,
        "no answers for an election timeout"
    );
    // Its heartbeats kept 2 and 3 from electing anyone while it was leader;
    // once it stops, one of them takes over.
    cluster.tick_all(60);
    let leader = cluster.leader().expect("a leader among 2 and 3");
    assert_ne!(leader, 1);
}

#[test]
fn a_leader_that_can_hear_but_not_send_is_replaced_and_learns_the_new_term() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.cut.insert((1, 2));
    cluster.cut.insert((1, 3));
    cluster.tick_all(60);
    let leader = cluster.leader().expect("2 or 3 leads");
    assert_ne!(leader, 1);
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(cluster.node(1).term(), cluster.node(leader).term());
}

#[test]
fn an_invalid_config_is_refused_with_a_typed_error() {
    let mut cfg = common::config(1);
    cfg.election_timeout_ticks = 1;
    let storage = raft::MemStorage::new(raft::Membership::with_voters([1]));
    let err = raft::Raft::new(cfg, storage).unwrap_err();
    assert!(matches!(
        err,
        Error::Config(raft::ConfigError::ElectionNotAboveHeartbeat { .. })
    ));
    assert!(!err.is_retryable());
}

#[test]
#[should_panic(expected = "ready() called again before advance()")]
fn taking_a_second_ready_before_advance_is_a_programmer_error() {
    let mut cluster = Cluster::new(1);
    cluster.node_mut(1).campaign();
    let _first = cluster.node_mut(1).ready().unwrap();
    let _second = cluster.node_mut(1).ready();
}

#[test]
fn proposals_beyond_the_uncommitted_budget_are_refused_until_commits_catch_up() {
    let mut cluster = Cluster::with_config(3, |c| {
        c.msg_bytes_max = 1024;
        c.uncommitted_bytes_max = 4096;
    });
    cluster.campaign(1);
    cluster.isolate(2);
    cluster.isolate(3);
    let mut accepted = 0;
    let err = loop {
        match cluster.node_mut(1).propose(vec![0; 1000]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(accepted, 4, "4 x 1024 bytes fill the 4096-byte budget");
    assert!(matches!(err, Error::UncommittedFull { entry_count: 4, .. }));
    assert!(err.is_retryable());
    cluster.heal();
    cluster.tick_all(3);
    assert!(cluster.node_mut(1).propose(vec![0; 1000]).is_ok());
}

#[test]
fn a_leader_sends_appends_before_its_own_write_and_counts_itself_only_once_durable() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    assert_eq!(cluster.leader(), Some(1));
    cluster.node_mut(1).propose(b"x".to_vec()).unwrap();
    // An established leader's Ready: its appends may leave first.
    let ready = cluster.node_mut(1).ready().unwrap();
    assert!(ready.send_before_persisting, "{ready:?}");
    assert_eq!(ready.entries.len(), 1);
    let index = ready.entries[0].index;
    cluster.queue.extend(ready.messages.iter().cloned());
    // Both followers write, sync and acknowledge while the leader's own
    // write is still pending; their Readies may not send first.
    for id in [2, 3] {
        cluster.deliver_one();
        let raft = cluster.node_mut(id);
        assert!(raft.has_ready());
        let ready = cluster.handle_ready(id).unwrap();
        assert!(
            !ready.send_before_persisting,
            "a follower's acks wait for its disk"
        );
    }
    cluster.deliver_one();
    cluster.deliver_one();
    // Two followers of three are a quorum without the leader's copy.
    assert_eq!(cluster.node(1).commit_index(), index);
    // The leader crashes before its own write was durable: the entry lives on.
    cluster.crash(1);
    cluster.restart(1);
    assert!(
        cluster.node(1).last_index() < index,
        "the leader lost its copy"
    );
    cluster.campaign(2);
    assert_eq!(cluster.leader(), Some(2));
    let leader = cluster.node(2);
    assert!(leader.commit_index() >= index && leader.last_index() >= index);
    // A new leader's first Ready changes role: it waits for the disk.
    let mut cluster = Cluster::new(3);
    cluster.node_mut(1).campaign();
    let first = cluster.handle_ready(1).unwrap();
    assert!(
        !first.send_before_persisting,
        "a candidate's vote requests wait for its vote"
    );
}

#[test]
fn a_leader_only_counts_itself_once_its_ready_is_advanced() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.node_mut(1).propose(b"x".to_vec()).unwrap();
    let ready = cluster.node_mut(1).ready().unwrap();
    let index = ready.entries[0].index;
    // Only follower 2 hears of it: leader (not durable) + one follower is
    // not a quorum of durable copies.
    cluster
        .queue
        .extend(ready.messages.iter().filter(|m| m.to == 2).cloned());
    cluster.deliver_one();
    cluster.handle_ready(2);
    cluster.deliver_one();
    assert!(cluster.node(1).commit_index() < index);
    // Once the leader's write is durable, it counts.
    cluster.node_mut(1).storage_mut().append(&ready.entries);
    cluster.node_mut(1).advance().unwrap();
    assert_eq!(cluster.node(1).commit_index(), index);
}

/// Ticks `id` alone (no stabilizing) until it has messages to send.
fn tick_until_messages(cluster: &mut Cluster, id: u64) {
    for _ in 0..100 {
        cluster.node_mut(id).tick().unwrap();
        if cluster.node(id).has_messages() {
            return;
        }
    }
    panic!("node {id} sent nothing in 100 ticks");
}

#[test]
fn persistence_contract_an_idle_groups_heartbeats_and_their_answers_need_nothing_written() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    // The leader's heartbeat tick: a Ready that only sends (Figure 2: term
    // and vote are durable already, nothing else is persistent state).
    tick_until_messages(&mut cluster, 1);
    assert!(cluster.node(1).ready_sends_only());
    let beat = cluster.handle_ready(1).unwrap();
    assert!(beat.entries.is_empty() && beat.hard_state.is_none() && beat.soft_state.is_none());
    assert_eq!(beat.messages.len(), 2);
    assert!(beat
        .messages
        .iter()
        .all(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
    // The follower's answer: only a message as well.
    assert!(cluster.deliver_one());
    let follower = cluster.delivered.last().unwrap().to;
    assert!(cluster.node(follower).ready_sends_only());
    let answer = cluster.handle_ready(follower).unwrap();
    assert!(answer.entries.is_empty() && answer.soft_state.is_none());
    assert_eq!(answer.messages.len(), 1);
    assert_eq!(answer.messages[0].body, MessageBody::HeartbeatResponse);
    // A follower's tick short of its election timeout makes nothing at
    // all: a driver need not look for a Ready after it.
    cluster.node_mut(follower).tick().unwrap();
    assert!(!cluster.node(follower).has_messages());
    assert!(!cluster.node(follower).has_ready());
    // The leader takes the answer without anything to send back.
    assert!(cluster.deliver_one());
    cluster.stabilize();
    assert!(!cluster.node(1).has_ready());
}

#[test]
fn persistence_contract_a_ready_that_writes_or_promises_is_never_send_only() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    // Entries to write (and the appends that carry them).
    cluster.node_mut(1).propose(b"x".to_vec()).unwrap();
    assert!(cluster.node(1).has_ready());
    assert!(!cluster.node(1).ready_sends_only());
    // While a Ready is in flight, a heartbeat tick adds messages but no
    // Ready: they wait for advance (and the entries' fsync).
    let in_flight = cluster.node_mut(1).ready().unwrap();
    assert_eq!(in_flight.entries.len(), 1);
    tick_until_messages(&mut cluster, 1);
    assert!(!cluster.node(1).has_ready());
    assert!(!cluster.node(1).ready_sends_only());
    let leader = cluster.node_mut(1);
    leader.storage_mut().append(&in_flight.entries);
    if let Some(hs) = in_flight.hard_state {
        leader.storage_mut().set_hard_state(hs);
    }
    leader.advance().unwrap();
    cluster.queue.extend(in_flight.messages);
    cluster.stabilize();
    // A heartbeat of a newer term: the follower must save the term first
    // (section 5.1) and reports a new leader.
    let term = cluster.node(2).term() + 1;
    cluster
        .node_mut(2)
        .step(Message {
            group_id: 1,
            from: 3,
            to: 2,
            term,
            body: MessageBody::Heartbeat { commit: 0 },
        })
        .unwrap();
    assert!(cluster.node(2).has_ready());
    assert!(!cluster.node(2).ready_sends_only());
    let saved = cluster.handle_ready(2).unwrap();
    assert_eq!(saved.hard_state.map(|h| h.term), Some(term));
    // A campaign: a new role (and, past the pre-vote, a new term and vote).
    cluster.node_mut(3).campaign();
    assert!(!cluster.node(3).ready_sends_only());
}

/// Heartbeats every 2 ticks, every 6 when idle; elections after 10-20.
fn idle_heartbeats(c: &mut raft::Config) {
    c.idle_heartbeat_interval_ticks = 6;
}

/// Heartbeats delivered from `from` to `to` so far.
fn heartbeats(cluster: &Cluster, from: u64, to: u64) -> usize {
    cluster
        .delivered
        .iter()
        .filter(|m| m.from == from && m.to == to && matches!(m.body, MessageBody::Heartbeat { .. }))
        .count()
}

#[test]
fn thesis_6_2_an_idle_leader_heartbeats_less_often_and_keeps_its_followers_and_its_quorum() {
    let mut cluster = Cluster::with_config(3, idle_heartbeats);
    cluster.campaign(1);
    cluster.tick_all(6);
    let before = heartbeats(&cluster, 1, 2);
    // Ten election timeouts of idleness: one heartbeat every 6 ticks is
    // enough for every election timer (10-20 ticks) and for check-quorum.
    cluster.tick_all(120);
    let idle = heartbeats(&cluster, 1, 2) - before;
    assert!((19..=21).contains(&idle), "{idle} heartbeats in 120 ticks");
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(cluster.node(1).term(), 1, "no election");
    // Something to replicate: back to the 2-tick interval while a follower
    // lacks entries (node 3, cut off), although node 2 has them all.
    cluster.cut.insert((1, 3));
    cluster.propose(1, b"x");
    let before = heartbeats(&cluster, 1, 2);
    cluster.tick_node(1, 12);
    let busy = heartbeats(&cluster, 1, 2) - before;
    assert_eq!(busy, 6, "a heartbeat every 2 ticks while node 3 lags");
    cluster.heal();
    cluster.tick_all(12);
    assert_eq!(cluster.node(3).commit_index(), cluster.node(1).last_index());
    // Idle again once node 3 caught up and knows the commit.
    let before = heartbeats(&cluster, 1, 2);
    cluster.tick_all(60);
    let again = heartbeats(&cluster, 1, 2) - before;
    assert!((9..=11).contains(&again), "{again} heartbeats in 60 ticks");
}

#[test]
fn thesis_6_2_an_idle_leader_cut_off_from_the_majority_still_steps_down() {
    let mut cluster = Cluster::with_config(3, idle_heartbeats);
    cluster.campaign(1);
    cluster.tick_all(12);
    cluster.isolate(1);
    cluster.tick_node(1, 2 * 10);
    assert_ne!(cluster.node(1).role(), Role::Leader, "no quorum heard");
    cluster.tick_all(40);
    let leader = cluster.leader().expect("the majority elects a leader");
    assert_ne!(leader, 1);
}
