//! The Raft group driver (`broker::raft_group`) on a real glommio executor and a
//! real partition log, with the transport and the shard behind seams: a
//! transport that records every message and checks, at the moment it is
//! sent, that what it promises is on disk; hooks that record leadership
//! changes. Peers are played by the test, which steps their messages in.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use broker::peer::Transport;
use broker::raft_group::{LeaderChange, RaftGroup, RaftGroupHooks, RaftGroupKind};
use broker::replica::RaftState;
use broker::telemetry::Event;
use raft::{Entry, EntryPayload, Message, MessageBody, Role};
use storage::fault::{Fault, FaultPoint};
use storage::LogConfig;

const GROUP: u64 = 7;

/// Records what the driver sends and checks the persistence contract at
/// the moment of sending: an acknowledgement of entries only once they are
/// durable here, a granted vote only once term and vote are saved.
#[derive(Default)]
struct Recorder {
    group: RefCell<Option<Rc<RaftGroup>>>,
    sent: RefCell<Vec<Message>>,
    violations: RefCell<Vec<String>>,
}

impl Transport for Recorder {
    fn send(&self, msgs: Vec<Message>) {
        let g = self.group.borrow().clone().expect("group set");
        for m in &msgs {
            match &m.body {
                MessageBody::AppendResponse {
                    reject: false,
                    index,
                    ..
                } if *index > 0 => {
                    let log = g.part.log();
                    let durable = log.durable_offset();
                    match log.entry_end_offset(*index) {
                        Ok(end) if end <= durable => {}
                        other => self.violations.borrow_mut().push(format!(
                            "acknowledged entry {index} (ends at {other:?}) with only {durable} durable"
                        )),
                    }
                }
                // Every message of a term goes out once the term is saved
                // (pre-votes name the term they would campaign in).
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { .. } => {}
                _ if RaftState::load(&g.dir).unwrap_or_default().term < m.term => {
                    self.violations.borrow_mut().push(format!(
                        "sent {:?} of term {} before saving the term",
                        m.body, m.term
                    ));
                }
                MessageBody::VoteResponse { reject: false } => {
                    let saved = RaftState::load(&g.dir).unwrap_or_default();
                    if saved.term < m.term || saved.vote != Some(m.to) {
                        self.violations.borrow_mut().push(format!(
                            "granted a vote to {} at term {} with {saved:?} on disk",
                            m.to, m.term
                        ));
                    }
                }
                _ => {}
            }
        }
        self.sent.borrow_mut().extend(msgs);
    }
}

#[derive(Default)]
struct Hooks {
    changes: RefCell<Vec<LeaderChange>>,
    events: RefCell<Vec<Event>>,
}

impl RaftGroupHooks for Hooks {
    fn leader_changed(&self, change: LeaderChange) {
        self.changes.borrow_mut().push(change);
    }
    fn apply_commands(&self, _entries: &[Entry]) {}
    fn event(&self, event: Event) {
        self.events.borrow_mut().push(event);
    }
}

struct Harness {
    group: Rc<RaftGroup>,
    transport: Rc<Recorder>,
    hooks: Rc<Hooks>,
}

fn open(dir: &Path, config: LogConfig, replicas: Vec<u64>) -> Harness {
    let group = RaftGroup::open(
        GROUP,
        RaftGroupKind::Partition {
            topic: "t".into(),
            partition: 0,
        },
        dir.to_path_buf(),
        config,
        1,
        replicas,
        false,
    )
    .unwrap();
    let transport = Rc::new(Recorder::default());
    *transport.group.borrow_mut() = Some(group.clone());
    let hooks = Rc::new(Hooks::default());
    glommio::spawn_local(group.clone().run(transport.clone(), hooks.clone())).detach();
    Harness {
        group,
        transport,
        hooks,
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        ..LogConfig::default()
    }
}

fn on_executor(
    test: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { test().await })
        .unwrap()
        .join()
        .unwrap();
}

/// Waits (bounded) until `done` holds, yielding to the driver.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

fn msg(from: u64, term: u64, body: MessageBody) -> Message {
    Message {
        group_id: GROUP,
        from,
        to: 1,
        term,
        body,
    }
}

/// A follower's acknowledgement of every entry up to `index`.
fn acked(from: u64, term: u64, index: u64) -> Message {
    msg(
        from,
        term,
        MessageBody::AppendResponse {
            reject: false,
            index,
            hint_index: 0,
            hint_term: 0,
        },
    )
}

fn batch(value: &[u8]) -> Vec<u8> {
    let mut b = wire::RecordBatchBuilder::new();
    b.push(wire::NewRecord {
        value: Some(value),
        ..Default::default()
    });
    b.finish()
}

impl Harness {
    fn sent(&self, pick: impl Fn(&Message) -> bool) -> Vec<Message> {
        self.transport
            .sent
            .borrow()
            .iter()
            .filter(|m| pick(m))
            .cloned()
            .collect()
    }

    /// Waits (bounded) until a message matching `pick` has been sent.
    /// Proposes `payload` as leader in `term`, starts a task waiting for
    /// its commit, and waits until the entry has been sent to a follower.
    async fn propose_and_send(
        &self,
        payload: &[u8],
        term: u64,
    ) -> (u64, glommio::Task<broker::raft_group::WaitResult>) {
        let (index, proposed_in) = self.group.propose(batch(payload)).unwrap();
        assert_eq!(proposed_in, term);
        let g = self.group.clone();
        let waiter = glommio::spawn_local(async move { g.wait_committed(index, Some(term)).await });
        self.until_sent("the entry is sent", |m| {
            matches!(&m.body, MessageBody::Append { entries, .. }
                    if entries.iter().any(|e| e.index == index))
        })
        .await;
        (index, waiter)
    }

    /// Asserts that `waiter` is answered (within 5 s) with the offsets of
    /// entry `index` in this log.
    async fn assert_answered_with_offsets(
        &self,
        waiter: glommio::Task<broker::raft_group::WaitResult>,
        index: u64,
        why: &str,
    ) {
        let answer = glommio::timer::timeout(Duration::from_secs(5), async { Ok(waiter.await) })
            .await
            .expect("the waiter is answered");
        let committed = answer.unwrap_or_else(|e| panic!("{why}: {e}"));
        let log_base = self.group.part.log().entry_base_offset(index).unwrap();
        assert_eq!(committed.base_offset, log_base);
    }

    async fn until_sent(&self, what: &str, pick: impl Fn(&Message) -> bool) {
        until(what, || !self.sent(&pick).is_empty()).await;
    }

    /// Waits (bounded) until the group has failed.
    async fn until_failed(&self) {
        until("the group fails", || self.group.failed.borrow().is_some()).await;
    }

    fn assert_contract_kept(&self) {
        let v = self.transport.violations.borrow();
        assert!(v.is_empty(), "persistence contract broken: {v:?}");
    }

    /// Makes node 1 the leader of voters 1, 2, 3 with node 2's votes, and
    /// commits its no-op with node 2's acknowledgement. Returns the term.
    async fn elect(&self) -> u64 {
        self.group.campaign();
        self.until_sent("a pre-vote goes out", |m| {
            matches!(m.body, MessageBody::PreVote { .. })
        })
        .await;
        let term = self.group.term() + 1;
        self.group
            .step(msg(2, term, MessageBody::PreVoteResponse { reject: false }));
        self.until_sent("a vote request goes out", |m| {
            matches!(m.body, MessageBody::Vote { .. })
        })
        .await;
        self.group
            .step(msg(2, term, MessageBody::VoteResponse { reject: false }));
        until("leadership", || self.group.role() == Role::Leader).await;
        self.ack(2, term, 1).await;
        term
    }

    /// Makes node 1 leader of the next term with node 2's (pre-)votes,
    /// whatever it knew before; returns the term.
    async fn win(&self) -> u64 {
        let count = |pre: bool| {
            self.sent(|m| match m.body {
                MessageBody::PreVote { .. } => pre,
                MessageBody::Vote { .. } => !pre,
                _ => false,
            })
            .len()
        };
        let (pre_votes, votes) = (count(true), count(false));
        self.group.campaign();
        until("a pre-vote goes out", || count(true) > pre_votes).await;
        let term = self.group.term() + 1;
        self.group
            .step(msg(2, term, MessageBody::PreVoteResponse { reject: false }));
        until("a vote request goes out", || count(false) > votes).await;
        self.group
            .step(msg(2, term, MessageBody::VoteResponse { reject: false }));
        until("leadership", || self.group.role() == Role::Leader).await;
        term
    }

    fn events(&self) -> Vec<Event> {
        self.hooks.events.borrow().clone()
    }

    /// Node `from` acknowledges entries up to `index`; waits for the commit.
    async fn ack(&self, from: u64, term: u64, index: u64) {
        until("the append goes out", || {
            self.group.role() != Role::Leader
                || !self
                    .sent(|m| {
                        m.to == from
                            && matches!(&m.body, MessageBody::Append { entries, .. }
                            if entries.last().is_some_and(|e| e.index >= index))
                    })
                    .is_empty()
        })
        .await;
        self.group.step(acked(from, term, index));
        until("the commit", || self.group.commit_index() >= index).await;
    }
}

#[test]
fn nothing_is_promised_to_a_peer_before_it_is_durable() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let h = open(dir.path(), config(), vec![1, 2, 3]);
            // A candidate asks for our vote: term and vote must be saved
            // before the grant leaves.
            h.group.step(msg(
                2,
                5,
                MessageBody::Vote {
                    last_index: 0,
                    last_term: 0,
                    transfer: false,
                },
            ));
            h.until_sent("the vote is answered", |m| {
                matches!(m.body, MessageBody::VoteResponse { .. })
            })
            .await;
            let granted = h.sent(|m| matches!(m.body, MessageBody::VoteResponse { reject: false }));
            assert_eq!(granted.len(), 1, "the vote is granted");
            // Its leader sends entries: they must be durable before the
            // acknowledgement leaves.
            let entries = vec![
                Entry {
                    index: 1,
                    term: 5,
                    payload: EntryPayload::Empty,
                },
                Entry {
                    index: 2,
                    term: 5,
                    payload: EntryPayload::data(batch(b"one")),
                },
                Entry {
                    index: 3,
                    term: 5,
                    payload: EntryPayload::data(batch(b"two")),
                },
            ];
            h.group.step(msg(
                2,
                5,
                MessageBody::Append {
                    prev_index: 0,
                    prev_term: 0,
                    entries,
                    commit: 1,
                },
            ));
            h.until_sent("the entries are acknowledged", |m| {
                matches!(
                    m.body,
                    MessageBody::AppendResponse {
                        reject: false,
                        index: 3,
                        ..
                    }
                )
            })
            .await;
            h.assert_contract_kept();
            h.group.stop();
        })
    });
}

#[test]
fn a_produce_committed_before_a_step_down_is_answered_with_its_offsets() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let h = open(dir.path(), config(), vec![1, 2, 3]);
            let term = h.elect().await;
            let (index, waiter) = h.propose_and_send(b"payload", term).await;
            // In one step, with no Ready in between: node 2 acknowledges
            // the entry (it commits) and node 3 takes over at a higher term
            // (this node steps down).
            h.group.step(acked(2, term, index));
            assert_eq!(h.group.commit_index(), index, "committed by the ack");
            h.group.step(msg(
                3,
                term + 1,
                MessageBody::Append {
                    prev_index: index,
                    prev_term: term,
                    entries: vec![],
                    commit: index,
                },
            ));
            assert_eq!(h.group.role(), Role::Follower);
            h.assert_answered_with_offsets(
                waiter,
                index,
                "a committed entry is acknowledged, not refused",
            )
            .await;
            h.assert_contract_kept();
            h.group.stop();
        })
    });
}

#[test]
fn a_replica_whose_fsync_fails_stops_advertising_itself_as_leader() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let config = config();
            let faults = config.faults.clone();
            let h = open(dir.path(), config, vec![1, 2, 3]);
            let term = h.elect().await;
            assert_eq!(
                h.hooks.changes.borrow().last().and_then(|c| c.leader),
                Some(1)
            );
            faults.arm(FaultPoint::Fsync, Fault::Eio, 0);
            let (index, _) = h.group.propose(batch(b"lost")).unwrap();
            let g = h.group.clone();
            let answer = glommio::timer::timeout(Duration::from_secs(5), async {
                Ok(g.wait_committed(index, Some(term)).await)
            })
            .await
            .expect("the waiter is answered");
            assert!(answer.is_err(), "a write that failed is not acknowledged");
            h.until_failed().await;
            let last = h.hooks.changes.borrow().last().cloned().unwrap();
            assert_eq!(
                (last.leader, last.role),
                (None, Role::Follower),
                "the failed replica must stop advertising itself as leader"
            );
            let why = h.group.failed.borrow().clone().unwrap();
            assert!(why.contains("fdatasync"), "{why}");
        })
    });
}

#[test]
fn a_follower_whose_fsync_fails_keeps_naming_the_leader_it_knows() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let config = config();
            let faults = config.faults.clone();
            let h = open(dir.path(), config, vec![1, 2, 3]);
            faults.arm(FaultPoint::Fsync, Fault::Eio, 0);
            h.group.step(msg(
                2,
                4,
                MessageBody::Append {
                    prev_index: 0,
                    prev_term: 0,
                    entries: vec![Entry {
                        index: 1,
                        term: 4,
                        payload: EntryPayload::Empty,
                    }],
                    commit: 0,
                },
            ));
            h.until_failed().await;
            let last = h.hooks.changes.borrow().last().cloned().unwrap();
            assert_eq!(
                last.leader,
                Some(2),
                "a failed follower's broker must keep pointing clients at the leader"
            );
        })
    });
}

#[test]
fn a_heartbeat_beyond_this_log_stops_the_group_with_a_clear_error() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let h = open(dir.path(), config(), vec![1, 2, 3]);
            // The leader believes this replica holds entry 40 (its disk was
            // wiped since): no crash, the group stops and says why.
            h.group
                .step(msg(2, 3, MessageBody::Heartbeat { commit: 40 }));
            h.until_failed().await;
            let why = h.group.failed.borrow().clone().unwrap();
            assert!(why.contains("lost"), "{why}");
            assert!(
                h.sent(|m| matches!(m.body, MessageBody::HeartbeatResponse))
                    .is_empty(),
                "a replica that lost acknowledged entries answers nothing"
            );
        })
    });
}

#[test]
fn a_partition_never_reads_its_committed_entries_back() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let count = 200u64;
            {
                let h = open(dir.path(), config(), vec![1]);
                h.group.campaign();
                until("leadership", || h.group.role() == Role::Leader).await;
                let mut last = 0;
                for i in 0..count {
                    last = h
                        .group
                        .propose(batch(format!("m{i}").as_bytes()))
                        .unwrap()
                        .0;
                }
                until("every entry commits", || h.group.commit_index() >= last).await;
                assert_eq!(
                    h.group.entries_read.get(),
                    0,
                    "a lone leader reads nothing back"
                );
                h.group.stop();
            }
            // Restarted: the saved commit index is old (term and vote are
            // all that is saved on every change), so everything since is
            // committed again, without being read, CRC-checked and copied.
            let h = open(dir.path(), config(), vec![1]);
            let end = h.group.part.log().last_entry_index();
            assert!(end > count);
            h.group.campaign();
            until("the old entries are committed again", || {
                h.group.commit_index() > end
            })
            .await;
            assert_eq!(
                h.group.entries_read.get(),
                0,
                "committed entries were read back from the log"
            );
            h.group.stop();
        })
    });
}

#[test]
fn the_producer_table_survives_truncation_and_a_restart() {
    use broker::producers::{BatchId, Verdict};
    fn producer_batch(seq: i32) -> Vec<u8> {
        let value = vec![b'v'; 4096];
        let mut b = wire::RecordBatchBuilder::new().producer(99, 0, seq);
        b.push(wire::NewRecord {
            value: Some(&value),
            ..Default::default()
        });
        b.finish()
    }
    let id = |seq: i32| BatchId {
        producer_id: 99,
        epoch: 0,
        base_sequence: seq,
        record_count: 1,
    };
    on_executor(move || {
        Box::pin(async move {
            let dir = tempfile::tempdir().unwrap();
            let (first_entry, last_entry) = {
                let h = open(dir.path(), config(), vec![1]);
                h.group.campaign();
                until("leadership", || h.group.role() == Role::Leader).await;
                // Enough batches to roll several 64 KiB segments: a table
                // rebuilt from the active segment alone would miss the first.
                let mut entries = Vec::new();
                for seq in 0..40 {
                    let (index, _) = h.group.propose(producer_batch(seq)).unwrap();
                    h.group.record_producer(id(seq), index);
                    entries.push(index);
                }
                let last = *entries.last().unwrap();
                until("every entry commits", || h.group.commit_index() >= last).await;
                h.group.save_producers().await.unwrap();
                h.group.stop();
                (entries[0], last)
            };
            let h = open(dir.path(), config(), vec![1]);
            assert!(
                h.group.part.log().segment_bases().len() > 2,
                "the batches span several segments"
            );
            let check = |seq| h.group.producers.borrow().check(id(seq));
            assert_eq!(check(0), Verdict::Duplicate { entry: first_entry });
            assert_eq!(check(39), Verdict::Duplicate { entry: last_entry });
            assert_eq!(check(40), Verdict::Append);
            h.group.stop();
        })
    });
}

/// What telemetry shows of elections (docs/TELEMETRY.md, events): a real
/// vote started by this replica, and leadership reported by the new leader
/// only, once per gain, with the leader it knew in an earlier term.
#[test]
fn leadership_is_reported_once_per_gain_by_the_new_leader_with_the_one_before() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let h = open(dir.path(), config(), vec![1, 2, 3]);
            let leader_changed = |term, previous_leader| Event::LeaderChanged {
                topic: Some("t".into()),
                partition: Some(0),
                term,
                leader: 1,
                previous_leader,
            };
            let election = |term| Event::ElectionStarted {
                topic: Some("t".into()),
                partition: Some(0),
                term,
                candidate: 1,
            };
            // Node 2 leads term 1: this replica follows and reports nothing.
            h.group
                .step(msg(2, 1, MessageBody::Heartbeat { commit: 0 }));
            until("following node 2", || h.group.leader() == Some(2)).await;
            until("the shard hears of it", || {
                h.hooks.changes.borrow().iter().any(|c| c.leader == Some(2))
            })
            .await;
            assert_eq!(h.events(), [], "a follower reports no leadership");
            // This replica wins term 2: one election, one leadership,
            // naming node 2 as the leader before.
            let t2 = h.win().await;
            assert_eq!(t2, 2);
            until("the events", || h.events().len() == 2).await;
            assert_eq!(h.events(), [election(2), leader_changed(2, Some(2))]);
            // Node 3 takes over in term 3: nothing from this replica.
            h.group
                .step(msg(3, 3, MessageBody::Heartbeat { commit: 0 }));
            until("following node 3", || h.group.leader() == Some(3)).await;
            until("the shard hears of it", || {
                h.hooks.changes.borrow().iter().any(|c| c.leader == Some(3))
            })
            .await;
            assert_eq!(h.events().len(), 2, "{:?}", h.events());
            // And wins again in term 4: node 3 was the leader before.
            let t4 = h.win().await;
            assert_eq!(t4, 4);
            until("the events", || h.events().len() == 4).await;
            assert_eq!(h.events()[2..], [election(4), leader_changed(4, Some(3))]);
            // Heartbeats and commits as leader report nothing more.
            glommio::timer::sleep(Duration::from_millis(300)).await;
            let gained = h
                .events()
                .iter()
                .filter(|e| matches!(e, Event::LeaderChanged { .. }))
                .count();
            assert_eq!(gained, 2, "{:?}", h.events());
            h.group.stop();
        })
    });
}

/// A lone voter goes from follower to leader in one step: its election is
/// still reported, before its leadership, and there was no leader before.
#[test]
fn a_single_voter_reports_its_election_and_its_leadership() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let h = open(dir.path(), config(), vec![1]);
            h.group.campaign();
            until("leadership", || h.group.role() == Role::Leader).await;
            until("the events", || h.events().len() == 2).await;
            let term = h.group.term();
            assert_eq!(
                h.events(),
                [
                    Event::ElectionStarted {
                        topic: Some("t".into()),
                        partition: Some(0),
                        term,
                        candidate: 1,
                    },
                    Event::LeaderChanged {
                        topic: Some("t".into()),
                        partition: Some(0),
                        term,
                        leader: 1,
                        previous_leader: None,
                    },
                ]
            );
            h.group.stop();
        })
    });
}

#[test]
fn an_idle_followers_heartbeat_answers_leave_at_once_but_a_new_term_is_saved_first() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let h = open(dir.path(), config(), vec![1, 2, 3]);
            let answers = |h: &Harness| {
                h.sent(|m| matches!(m.body, MessageBody::HeartbeatResponse))
                    .len()
            };
            // A heartbeat of a new term: the term must be saved before the
            // answer, so the driver answers (after its write).
            h.group
                .step(msg(2, 1, MessageBody::Heartbeat { commit: 0 }));
            assert_eq!(answers(&h), 0, "not before the term is saved");
            h.until_sent("the answer", |m| {
                matches!(m.body, MessageBody::HeartbeatResponse)
            })
            .await;
            assert_eq!(RaftState::load(&h.group.dir).unwrap().term, 1);
            // The next heartbeats need nothing written: answered where they
            // are stepped, without waiting for the driver's task.
            for n in 2..=4 {
                h.group
                    .step(msg(2, 1, MessageBody::Heartbeat { commit: 0 }));
                assert_eq!(answers(&h), n);
            }
            // A newer leader's heartbeat goes through the driver again.
            h.group
                .step(msg(3, 2, MessageBody::Heartbeat { commit: 0 }));
            assert_eq!(answers(&h), 4);
            until("the answer in term 2", || {
                !h.sent(|m| m.term == 2 && matches!(m.body, MessageBody::HeartbeatResponse))
                    .is_empty()
            })
            .await;
            h.assert_contract_kept();
            h.group.stop();
        })
    });
}

/// A follower learns a commit index in the same message that replaces a
/// stale suffix of its log: until the driver has written the new entries,
/// the file still holds the old ones at those indexes, and the high
/// watermark must not be read from them (a consumer would be served
/// records that were never committed).
#[test]
fn a_commit_learned_with_a_truncation_is_not_read_from_the_stale_suffix() {
    fn records(n: usize) -> Vec<u8> {
        let mut b = wire::RecordBatchBuilder::new();
        for _ in 0..n {
            b.push(wire::NewRecord {
                value: Some(b"stale"),
                ..Default::default()
            });
        }
        b.finish()
    }
    fn data(index: u64, term: u64, payload: Vec<u8>) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::data(payload),
        }
    }
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let h = open(dir.path(), config(), vec![1, 2, 3]);
            let acknowledged = |term: u64, index: u64| {
                move |m: &Message| {
                    m.term == term
                        && matches!(m.body, MessageBody::AppendResponse { reject: false, index: i, .. } if i == index)
                }
            };
            // Term 1: three committed entries.
            let append = |from, term, prev_index, prev_term, entries, commit| {
                msg(
                    from,
                    term,
                    MessageBody::Append {
                        prev_index,
                        prev_term,
                        entries,
                        commit,
                    },
                )
            };
            h.group.step(append(
                2,
                1,
                0,
                0,
                vec![
                    data(1, 1, batch(b"a")),
                    data(2, 1, batch(b"b")),
                    data(3, 1, batch(b"c")),
                ],
                3,
            ));
            h.until_sent("term 1 acknowledged", acknowledged(1, 3))
                .await;
            // Term 2: a leader that is about to lose sends three large
            // batches that never commit.
            h.group.step(append(
                2,
                2,
                3,
                1,
                (4..=6).map(|i| data(i, 2, records(50))).collect(),
                3,
            ));
            h.until_sent("term 2 acknowledged", acknowledged(2, 6))
                .await;
            // Term 3: the new leader replaces them and says entry 6 is
            // committed, all in one message.
            h.group.step(append(
                3,
                3,
                3,
                1,
                (4..=6).map(|i| data(i, 3, batch(b"new"))).collect(),
                6,
            ));
            let at_step = h.group.high_watermark.get();
            assert!(
                at_step <= 6,
                "high watermark {at_step} read from the stale suffix (6 records are committed)"
            );
            h.until_sent("term 3 acknowledged", acknowledged(3, 6))
                .await;
            until("the high watermark covers the commit", || {
                h.group.high_watermark.get() == 6
            })
            .await;
            h.group.stop();
        })
    });
}

/// A leader sends its appends before its own write; if that write then
/// fails for a full disk (retried every 500 ms), its followers can commit
/// the entry before this log holds it. The producer must get its offsets
/// once the write succeeds, not an error for an entry it cannot find yet
/// (a retry would then write it twice).
#[test]
fn a_commit_ahead_of_the_leaders_own_write_waits_for_the_write() {
    on_executor(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let config = config();
            let faults = config.faults.clone();
            let h = open(dir.path(), config, vec![1, 2, 3]);
            let term = h.elect().await;
            faults.arm(FaultPoint::Append, Fault::Enospc, 0);
            let (index, waiter) = h.propose_and_send(b"payload", term).await;
            assert!(
                h.group.part.log().last_entry_index() < index,
                "the entry left before this log held it (the full disk)"
            );
            // Both followers have it: a quorum without this node.
            for from in [2, 3] {
                h.group.step(acked(from, term, index));
            }
            assert_eq!(h.group.commit_index(), index, "committed by the acks");
            h.assert_answered_with_offsets(
                waiter,
                index,
                "a committed entry is acknowledged once written",
            )
            .await;
            h.group.stop();
        })
    });
}
