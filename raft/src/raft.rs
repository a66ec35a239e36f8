//! The Raft state machine: [`Raft::step`] (messages in), [`Raft::tick`] (time),
//! [`Raft::propose`] (data in), and [`Raft::ready`] / [`Raft::advance`]
//! (everything to persist, send and apply, out).

use std::collections::{BTreeMap, VecDeque};

use crate::config::{Config, UNCOMMITTED_ENTRIES_MAX};
use crate::error::{Error, StorageError};
use crate::log::{must, RaftLog};
use crate::progress::{Progress, ProgressState};
use crate::rng::Rng;
use crate::storage::Storage;
use crate::types::{
    ConfChange, Entry, EntryPayload, HardState, Membership, Message, MessageBody, NodeId, Role,
    SnapshotChunk, SnapshotMeta, SoftState, MEMBERS_MAX,
};

/// On restart, the log after the membership point is scanned for membership
/// entries in reads of this many bytes (bounds memory, not time).
const MEMBERSHIP_SCAN_BYTES: u64 = 4 << 20;
/// A snapshot transfer whose acknowledged offset has not moved for this many
/// heartbeat responses resends the chunk at that offset (the chunk or its
/// answer was lost). Two, so one slow answer does not cause a resend.
const SNAPSHOT_STALL_HEARTBEATS: u32 = 2;

/// Everything the driver must do after the node changed, in this order:
///
/// 1. If `snapshot` is set: install the staged snapshot payload (all
///    `snapshot_chunks` received so far) and replace the log by it. Write each
///    `snapshot_chunks` element to the staging area first (`offset == 0`
///    starts a new one).
/// 2. Append `entries` (first deleting every entry at or above
///    `entries[0].index`).
/// 3. Persist `hard_state` if set (term, vote, commit).
/// 4. Make 1-3 durable (fsync). Only then
/// 5. send `messages`: a vote, an append acknowledgement or a snapshot
///    acknowledgement promises state that must survive a crash.
/// 6. Apply `committed_entries` (they are already durable, so this may also be
///    done before or during 1-5).
/// 7. Call [`Raft::advance`].
///
/// All `snapshot_chunks` of one Ready belong to one snapshot; when `snapshot`
/// is set they are its last chunks. `soft_state` (leader and role) is
/// informational.
///
/// When `send_before_persisting` is set, `messages` may go out at once,
/// before steps 1-4 (Raft thesis 10.2.1): the Ready comes from a node that
/// was leader already at the last Ready, in the same term with the same vote
/// (durable then), and installs no snapshot. A leader's messages (appends,
/// heartbeats, snapshot tickets) promise nothing about its own disk: the
/// leader counts itself towards a quorum only for entries that
/// [`Raft::advance`] reported durable. Sending them first lets the
/// followers write and sync while the leader does.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    pub snapshot_chunks: Vec<SnapshotChunk>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub send_before_persisting: bool,
}

/// What a handed-out Ready promised to persist (checked against on advance).
#[derive(Debug)]
struct ReadyInFlight {
    snapshot_index: Option<u64>,
    last_entry: Option<(u64, u64)>,
}

/// A snapshot being received from the leader.
#[derive(Debug)]
struct Receiving {
    meta: SnapshotMeta,
    next_offset: u64,
}

/// One node of one Raft group. Deterministic: the same config, storage and
/// sequence of calls produce the same outputs.
#[derive(Debug)]
pub struct Raft<S: Storage> {
    cfg: Config,
    term: u64,
    vote: Option<NodeId>,
    log: RaftLog<S>,
    role: Role,
    leader: Option<NodeId>,
    /// Membership in effect at `base_membership_index` (committed).
    base_membership: Membership,
    /// Membership entries after it, in log order; the last one is in effect.
    membership_log: Vec<(u64, Membership)>,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    /// The commit index the leader's last heartbeats carried.
    heartbeat_commit: u64,
    transferee: Option<NodeId>,
    /// Uncommitted proposals of this leader: (index, bytes).
    uncommitted: VecDeque<(u64, u64)>,
    uncommitted_bytes: u64,
    /// Proposals were appended since the last Ready; appends go out with it.
    append_pending: bool,
    msgs: Vec<Message>,
    rng: Rng,
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    receiving: Option<Receiving>,
    snapshot_chunks: Vec<SnapshotChunk>,
    ready_in_flight: Option<ReadyInFlight>,
}

enum VoteTally {
    Won,
    Lost,
    Pending,
}

impl<S: Storage> Raft<S> {
    /// Starts (or restarts) a node from what `storage` holds.
    pub fn new(cfg: Config, storage: S) -> Result<Self, Error> {
        cfg.validate()?;
        let init = storage.initial_state()?;
        let hard_state = init.hard_state;
        let first_index = storage.first_index();
        let last_index = storage.last_index();
        let snapshot_index = first_index - 1;
        if hard_state.commit > last_index {
            return Err(Error::Corrupt(format!(
                "commit {} beyond last index {last_index}",
                hard_state.commit
            )));
        }
        let committed = hard_state.commit.max(snapshot_index);
        let applied = cfg.applied_index.max(snapshot_index);
        if applied > committed {
            return Err(Error::Corrupt(format!(
                "applied {applied} beyond commit {committed}"
            )));
        }
        let members = init.membership.voters.len() + init.membership.learners.len();
        if members > MEMBERS_MAX {
            return Err(Error::Corrupt(format!(
                "{members} members exceed MEMBERS_MAX"
            )));
        }
        let mut membership_log = Vec::new();
        let mut next = (init.membership_index + 1).max(first_index);
        while next <= last_index {
            let batch = storage.entries(next, last_index + 1, MEMBERSHIP_SCAN_BYTES)?;
            for entry in &batch {
                if let EntryPayload::Membership(m) = &entry.payload {
                    membership_log.push((entry.index, m.clone()));
                }
            }
            next += batch.len() as u64;
        }
        let rng = Rng::new(cfg.seed ^ cfg.id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut raft = Raft {
            term: hard_state.term,
            vote: hard_state.vote,
            log: RaftLog::new(storage, committed, applied),
            role: Role::Follower,
            leader: None,
            base_membership: init.membership,
            membership_log,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_timeout_ticks,
            heartbeat_commit: 0,
            transferee: None,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            append_pending: false,
            msgs: Vec::new(),
            rng,
            prev_hard_state: hard_state,
            prev_soft_state: SoftState {
                leader: None,
                role: Role::Follower,
            },
            receiving: None,
            snapshot_chunks: Vec::new(),
            ready_in_flight: None,
            cfg,
        };
        raft.fold_committed_membership();
        raft.become_follower(hard_state.term, None);
        Ok(raft)
    }

    // ----- observers -----

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> u64 {
        self.log.committed
    }
    pub fn applied_index(&self) -> u64 {
        self.log.applied
    }
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    /// Entries up to here are durable.
    pub fn persisted_index(&self) -> u64 {
        self.log.persisted_index()
    }
    /// The term of entry `index`, if the log still holds it.
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.log.term(index).ok()
    }
    /// Entries `lo..hi` of the log (durable and unstable).
    pub fn log_entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, Error> {
        let hi = hi.min(self.log.last_index() + 1);
        let mut out = Vec::new();
        let mut next = lo;
        while next < hi {
            let batch = self.log.entries(next, hi, u64::MAX)?;
            next += batch.len() as u64;
            out.extend(batch);
        }
        Ok(out)
    }
    /// The membership in effect (that of the last membership entry in the log).
    pub fn membership(&self) -> &Membership {
        self.membership_log
            .last()
            .map_or(&self.base_membership, |(_, m)| m)
    }
    /// The leader's view of `id` (leaders only).
    /// See [`Config::snapshot_catch_up_bytes`].
    pub fn set_snapshot_catch_up_bytes(&mut self, bytes: u64) {
        self.cfg.snapshot_catch_up_bytes = bytes;
    }

    /// A snapshot received from the leader waits for the driver to install
    /// it (it came out, or will come out, in a Ready).
    pub fn has_pending_snapshot(&self) -> bool {
        self.log.has_pending_snapshot()
    }
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }
    pub fn storage(&self) -> &S {
        &self.log.storage
    }
    /// The driver writes what a `Ready` asks for through this.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }
    /// Drops the node, keeping only what was durable (a crash, in tests).
    pub fn into_storage(self) -> S {
        self.log.storage
    }
    /// True when this node may campaign: it is a voter.
    pub fn promotable(&self) -> bool {
        self.membership().is_voter(self.cfg.id)
    }

    // ----- inputs -----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) -> Result<(), Error> {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.role != Role::Leader {
            // The timer first: it is a field, `promotable` a membership lookup.
            if self.election_elapsed >= self.randomized_election_timeout && self.promotable() {
                self.election_elapsed = 0;
                self.campaign_inner(false);
            }
            return Ok(());
        }
        self.heartbeat_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                // Thesis 6.2: a leader that cannot reach a quorum steps down so
                // clients look for the real one.
                self.become_follower(self.term, None);
                return Ok(());
            }
            self.transferee = None;
        }
        // An idle group's heartbeats only feed timers: they may come at the
        // longer idle interval (still below the election timeout).
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks
            && (self.heartbeat_elapsed >= self.cfg.idle_heartbeat_interval_ticks
                || !self.idle_as_leader())
        {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    /// A leader with nothing to replicate or tell: no transfer under way,
    /// every entry committed, the last heartbeats carried that commit, and
    /// every follower (learners too) in replicate state with every entry.
    fn idle_as_leader(&self) -> bool {
        let last = self.log.last_index();
        self.transferee.is_none()
            && self.log.committed == last
            && self.heartbeat_commit == last
            && self.progress.iter().all(|(&id, p)| {
                id == self.cfg.id || (p.state == ProgressState::Replicate && p.match_index == last)
            })
    }

    /// Starts an election now (pre-vote first, if enabled).
    pub fn campaign(&mut self) {
        self.campaign_inner(false);
    }

    /// Proposes application data; returns the entry's index. Leaders only.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, Error> {
        self.propose_payload(EntryPayload::data(data))
    }

    /// Proposes a single-server membership change; returns the entry's index.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<u64, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        // One change at a time, and only after this leader committed an entry
        // of its term (the fix for single-server changes, Ongaro 2015).
        let pending = self
            .membership_log
            .last()
            .is_some_and(|(i, _)| *i > self.log.committed);
        if pending || self.log.term(self.log.committed) != Ok(self.term) {
            return Err(Error::ConfChangePending);
        }
        match change {
            ConfChange::RemoveNode(id) if id == self.cfg.id => {
                return Err(Error::InvalidConfChange(
                    "transfer leadership before removing the leader",
                ));
            }
            ConfChange::PromoteLearner(id) => {
                let match_index = self.progress.get(&id).map_or(0, |p| p.match_index);
                if match_index < self.log.committed {
                    return Err(Error::LearnerBehind {
                        id,
                        match_index,
                        commit_index: self.log.committed,
                    });
                }
            }
            _ => {}
        }
        let next = self.membership().apply(change)?;
        self.propose_payload(EntryPayload::Membership(next))
    }

    /// Hands leadership to `to` (thesis 3.10): catch it up, then TimeoutNow.
    /// Proposals are refused until it completes or an election timeout passes.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.cfg.id || !self.membership().is_voter(to) {
            return Err(Error::InvalidTransferTarget(to));
        }
        if self.transferee == Some(to) {
            return Ok(());
        }
        self.transferee = Some(to);
        self.election_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == self.last_index());
        if caught_up {
            self.send(to, self.term, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true)?;
        }
        Ok(())
    }

    /// Starts (or restarts with a newer one) streaming the storage's
    /// current snapshot to follower `to`, even though its log could still be
    /// replayed: the driver decides that copying the snapshot is cheaper
    /// (the follower is far behind). Nothing happens unless this node leads,
    /// `to` is a peer, and the snapshot reaches past what `to` holds and
    /// past the one already being sent to it. Returns whether it started.
    pub fn request_snapshot(&mut self, to: NodeId) -> Result<bool, Error> {
        if self.role != Role::Leader || to == self.cfg.id {
            return Ok(false);
        }
        let meta = self.log.storage.snapshot_meta();
        let Some(pr) = self.progress.get_mut(&to) else {
            return Ok(false);
        };
        let sending = pr.snapshot.as_ref().map_or(0, |s| s.meta.index);
        if meta.index <= pr.match_index
            || meta.index <= sending
            || meta.index + 1 < self.log.first_index()
        {
            return Ok(false);
        }
        pr.become_snapshot(meta);
        self.send_snapshot_chunk(to)?;
        Ok(true)
    }

    /// Feeds one message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        assert_eq!(m.group_id, self.cfg.group_id, "message for another group");
        assert_eq!(m.to, self.cfg.id, "message for another node");
        if m.term > self.term {
            if let MessageBody::PreVote { .. } | MessageBody::Vote { .. } = m.body {
                let transfer = matches!(m.body, MessageBody::Vote { transfer: true, .. });
                let in_lease = self.cfg.check_quorum
                    && self.leader.is_some()
                    && self.election_elapsed < self.cfg.election_timeout_ticks;
                if in_lease && !transfer {
                    // Thesis 4.2.3: a node that hears from a live leader ignores
                    // disruptive candidates (e.g. a removed server).
                    return Ok(());
                }
            }
            match m.body {
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { reject: false } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader would otherwise never learn of the new
                    // term (pre-vote keeps us from bumping it by campaigning).
                    self.send(m.from, self.term, MessageBody::HeartbeatResponse);
                }
                MessageBody::PreVote { .. } => {
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::PreVoteResponse { reject: true },
                    );
                }
                _ => {}
            }
            return Ok(());
        }
        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, true);
                Ok(())
            }
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, false);
                Ok(())
            }
            body => match self.role {
                Role::Leader => self.step_leader(m.from, body),
                Role::PreCandidate | Role::Candidate => self.step_candidate(m.from, m.term, body),
                Role::Follower => self.step_follower(m.from, body),
            },
        }
    }

    // ----- Ready / advance -----

    /// True when [`Raft::ready`] has something (and no Ready is in flight).
    pub fn has_ready(&self) -> bool {
        self.ready_in_flight.is_none()
            && (self.append_pending
                || !self.msgs.is_empty()
                || !self.snapshot_chunks.is_empty()
                || self.log.has_unstable()
                || self.log.has_next_committed()
                || self.hard_state() != self.prev_hard_state
                || self.soft_state() != self.prev_soft_state)
    }

    /// True when the Ready [`Raft::ready`] would hand out now asks for
    /// nothing but sending its messages: no snapshot or chunks, no entries,
    /// no committed entries to apply, the same role and leader as at the
    /// last Ready, and the same term and vote (durable since that Ready).
    /// Only the commit index may have moved, and it is volatile state
    /// (Figure 2: a restarted node learns it again), so nothing needs to be
    /// written before the messages go. Steps 1-4 and 6 of the contract are
    /// then empty: a driver may take such a Ready, send its messages and
    /// [`Raft::advance`] at once, where the input that made it arose (an
    /// idle group's heartbeats and their answers need no disk and no task).
    pub fn ready_sends_only(&self) -> bool {
        let nothing_else = self.ready_in_flight.is_none()
            && !self.append_pending
            && self.snapshot_chunks.is_empty()
            && !self.log.has_unstable()
            && self.term == self.prev_hard_state.term
            && self.vote == self.prev_hard_state.vote
            && self.soft_state() == self.prev_soft_state;
        // What is left of `has_ready`, the log read (committed entries)
        // last: a heartbeat's Ready is told by its messages alone.
        nothing_else
            && !(self.cfg.deliver_committed_entries && self.log.has_next_committed())
            && (!self.msgs.is_empty()
                || self.log.committed != self.prev_hard_state.commit
                || self.log.has_next_committed())
    }

    /// Whether messages wait for the next Ready: cheaper than
    /// [`Raft::has_ready`] (no storage read), so a driver ticking thousands
    /// of groups can tell which ticks produced anything (a tick only sends
    /// messages or changes role or term).
    pub fn has_messages(&self) -> bool {
        !self.msgs.is_empty()
    }

    /// Takes everything to persist, send and apply. Call [`Raft::advance`]
    /// once it is durable; until then `ready` may not be called again.
    pub fn ready(&mut self) -> Result<Ready, Error> {
        assert!(
            self.ready_in_flight.is_none(),
            "ready() called again before advance()"
        );
        if self.append_pending {
            self.append_pending = false;
            if self.role == Role::Leader {
                for id in self.peer_ids() {
                    while self.send_append(id, false)? {}
                }
            }
        }
        let (snapshot, entries) = self.log.take_unstable();
        let committed_entries = if self.cfg.deliver_committed_entries {
            self.log
                .next_committed(self.cfg.committed_bytes_per_ready_max)?
        } else {
            self.log.applied = self.log.applied.max(self.log.next_applied());
            Vec::new()
        };
        if let Some(last) = committed_entries.last() {
            self.log.applied = last.index;
        }
        let hard_state = self.hard_state();
        let same_vote = hard_state.term == self.prev_hard_state.term
            && hard_state.vote == self.prev_hard_state.vote;
        let hard_state = (hard_state != self.prev_hard_state).then(|| {
            self.prev_hard_state = hard_state;
            hard_state
        });
        let soft_state = self.soft_state();
        let same_role = soft_state == self.prev_soft_state;
        let soft_state = (soft_state != self.prev_soft_state).then(|| {
            self.prev_soft_state = soft_state;
            soft_state
        });
        let send_before_persisting = self.role == Role::Leader
            && same_role
            && same_vote
            && snapshot.is_none()
            && self.snapshot_chunks.is_empty();
        self.ready_in_flight = Some(ReadyInFlight {
            snapshot_index: snapshot.as_ref().map(|s| s.index),
            last_entry: entries.last().map(|e| (e.index, e.term)),
        });
        Ok(Ready {
            soft_state,
            hard_state,
            snapshot,
            snapshot_chunks: std::mem::take(&mut self.snapshot_chunks),
            entries,
            messages: std::mem::take(&mut self.msgs),
            committed_entries,
            send_before_persisting,
        })
    }

    /// The last Ready is durable (and its messages sent).
    pub fn advance(&mut self) -> Result<(), Error> {
        let done = self
            .ready_in_flight
            .take()
            .expect("advance() without ready()");
        let (index, term) = done.last_entry.unwrap_or((0, 0));
        self.log.stable_to(done.snapshot_index, index, term);
        if self.role == Role::Leader && self.maybe_commit()? {
            self.broadcast_append()?;
        }
        Ok(())
    }

    // ----- roles -----

    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let timeout = u64::from(self.cfg.election_timeout_ticks);
        self.randomized_election_timeout = (timeout + self.rng.below(timeout)) as u32;
        self.votes.clear();
        self.transferee = None;
        self.progress.clear();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.append_pending = false;
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_leader(&mut self) -> Result<(), Error> {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.sync_progress();
        // Section 5.4.2 / 8: commit earlier terms' entries by committing one of
        // our own term.
        let entry = Entry {
            index: self.last_index() + 1,
            term: self.term,
            payload: EntryPayload::Empty,
        };
        self.log.append(vec![entry]);
        self.broadcast_append()
    }

    /// Creates progress for new members and drops it for removed ones.
    fn sync_progress(&mut self) {
        let next_index = self.last_index() + 1;
        let members: Vec<NodeId> = self.membership().members().collect();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut p = Progress::new(
                    next_index,
                    self.cfg.inflight_msgs_max,
                    self.cfg.inflight_bytes_max,
                );
                p.recent_active = true;
                p
            });
        }
        if self
            .transferee
            .is_some_and(|t| !self.progress.contains_key(&t))
        {
            self.transferee = None;
        }
    }

    fn campaign_inner(&mut self, transfer: bool) {
        if !self.promotable() {
            return;
        }
        if !self.cfg.pre_vote || transfer {
            self.real_election(transfer);
            return;
        }
        // Pre-vote (thesis 9.6): ask first, without touching any term.
        self.votes.clear();
        self.role = Role::PreCandidate;
        self.leader = None;
        if let VoteTally::Won = self.poll(self.cfg.id, true) {
            self.real_election(false);
            return;
        }
        let body = MessageBody::PreVote {
            last_index: self.last_index(),
            last_term: self.log.last_term(),
        };
        self.send_to_voters(self.term + 1, body);
    }

    fn real_election(&mut self, transfer: bool) {
        self.reset(self.term + 1);
        self.role = Role::Candidate;
        self.vote = Some(self.cfg.id);
        if let VoteTally::Won = self.poll(self.cfg.id, true) {
            self.become_leader_infallible();
            return;
        }
        let body = MessageBody::Vote {
            last_index: self.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        self.send_to_voters(self.term, body);
    }

    fn become_leader_infallible(&mut self) {
        // become_leader only reads the log to build appends; with a single
        // voter there is nobody to send to, so no read happens.
        if let Err(e) = self.become_leader() {
            panic!("single-voter leader failed to start: {e}");
        }
    }

    fn send_to_voters(&mut self, term: u64, body: MessageBody) {
        let voters: Vec<NodeId> = self
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.cfg.id)
            .collect();
        for voter in voters {
            self.send(voter, term, body.clone());
        }
    }

    fn poll(&mut self, from: NodeId, granted: bool) -> VoteTally {
        self.votes.entry(from).or_insert(granted);
        let membership = self.membership();
        let quorum = membership.quorum();
        let (mut yes, mut no) = (0, 0);
        for voter in &membership.voters {
            match self.votes.get(voter) {
                Some(true) => yes += 1,
                Some(false) => no += 1,
                None => {}
            }
        }
        if yes >= quorum {
            VoteTally::Won
        } else if no >= quorum || membership.voters.len() - no < quorum {
            VoteTally::Lost
        } else {
            VoteTally::Pending
        }
    }

    fn quorum_active(&mut self) -> bool {
        let id = self.cfg.id;
        let membership = self.membership().clone();
        let mut active = 0;
        for voter in &membership.voters {
            if *voter == id || self.progress.get(voter).is_some_and(|p| p.recent_active) {
                active += 1;
            }
        }
        for (peer, p) in self.progress.iter_mut() {
            if *peer != id {
                p.recent_active = false;
            }
        }
        active >= membership.quorum()
    }

    // ----- message handling -----

    fn send(&mut self, to: NodeId, term: u64, body: MessageBody) {
        self.msgs.push(Message {
            group_id: self.cfg.group_id,
            from: self.cfg.id,
            to,
            term,
            body,
        });
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: u64,
        last_index: u64,
        last_term: u64,
        pre_vote: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        if can_vote && self.log.is_up_to_date(last_index, last_term) {
            if pre_vote {
                self.send(from, term, MessageBody::PreVoteResponse { reject: false });
            } else {
                self.election_elapsed = 0;
                self.vote = Some(from);
                self.send(from, term, MessageBody::VoteResponse { reject: false });
            }
        } else if pre_vote {
            self.send(
                from,
                self.term,
                MessageBody::PreVoteResponse { reject: true },
            );
        } else {
            self.send(from, self.term, MessageBody::VoteResponse { reject: true });
        }
    }

    fn step_follower(&mut self, from: NodeId, body: MessageBody) -> Result<(), Error> {
        match body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = Some(from);
                self.handle_append(from, prev_index, prev_term, entries, commit)
            }
            MessageBody::Heartbeat { commit } => {
                self.election_elapsed = 0;
                self.leader = Some(from);
                // The leader sends at most the match index it learnt from
                // this node's own acknowledgements: a commit beyond this
                // log means entries acknowledged here were lost since.
                let last_index = self.log.last_index();
                if commit > last_index {
                    return Err(Error::LogLost { commit, last_index });
                }
                self.log.commit_to(commit);
                self.fold_committed_membership();
                self.send(from, self.term, MessageBody::HeartbeatResponse);
                Ok(())
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                self.election_elapsed = 0;
                self.leader = Some(from);
                self.handle_snapshot(from, meta, offset, data, done);
                Ok(())
            }
            MessageBody::TimeoutNow => {
                self.campaign_inner(true);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_candidate(&mut self, from: NodeId, term: u64, body: MessageBody) -> Result<(), Error> {
        match body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // A leader of our term exists (section 5.2).
                self.become_follower(self.term, Some(from));
                self.step_follower(from, body)
            }
            MessageBody::PreVoteResponse { reject } if self.role == Role::PreCandidate => {
                // A grant carries the term we would campaign in; a rejection our
                // own (higher ones made us a follower in `step`).
                let current = if reject {
                    term == self.term
                } else {
                    term == self.term + 1
                };
                if current {
                    match self.poll(from, !reject) {
                        VoteTally::Won => self.real_election(false),
                        VoteTally::Lost => self.become_follower(self.term, None),
                        VoteTally::Pending => {}
                    }
                }
                Ok(())
            }
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate => {
                match self.poll(from, !reject) {
                    VoteTally::Won => self.become_leader()?,
                    VoteTally::Lost => self.become_follower(self.term, None),
                    VoteTally::Pending => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_leader(&mut self, from: NodeId, body: MessageBody) -> Result<(), Error> {
        if !self.progress.contains_key(&from) {
            return Ok(());
        }
        match body {
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => self.handle_append_response(from, reject, index, hint_index, hint_term),
            MessageBody::HeartbeatResponse => self.handle_heartbeat_response(from),
            MessageBody::SnapshotResponse {
                snapshot_index,
                next_offset,
                done,
            } => self.handle_snapshot_response(from, snapshot_index, next_offset, done),
            _ => Ok(()),
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) -> Result<(), Error> {
        if prev_index < self.log.committed {
            let index = self.log.committed;
            let body = MessageBody::AppendResponse {
                reject: false,
                index,
                hint_index: 0,
                hint_term: 0,
            };
            self.send(from, self.term, body);
            return Ok(());
        }
        let memberships: Vec<(u64, Membership)> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        match self.log.maybe_append(prev_index, prev_term, entries) {
            Some((last_new, rewritten_from)) => {
                if let Some(first) = rewritten_from {
                    self.membership_log.retain(|(i, _)| *i < first);
                    self.membership_log
                        .extend(memberships.into_iter().filter(|(i, _)| *i >= first));
                }
                self.log.commit_to(commit.min(last_new));
                self.fold_committed_membership();
                let body = MessageBody::AppendResponse {
                    reject: false,
                    index: last_new,
                    hint_index: 0,
                    hint_term: 0,
                };
                self.send(from, self.term, body);
            }
            None => {
                let hint_index = self
                    .log
                    .find_conflict_by_term(prev_index.min(self.last_index()), prev_term);
                let hint_term = self.log.term(hint_index).unwrap_or(0);
                let body = MessageBody::AppendResponse {
                    reject: true,
                    index: prev_index,
                    hint_index,
                    hint_term,
                };
                self.send(from, self.term, body);
            }
        }
        Ok(())
    }

    fn handle_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) {
        let snapshot_index = meta.index;
        if self.log.has_pending_snapshot() {
            // The previous snapshot is not installed yet; the chunks of one
            // Ready must belong to one snapshot. The leader resends.
            return;
        }
        if meta.index <= self.log.committed || self.log.match_term(meta.index, meta.term) {
            // We already hold everything the snapshot covers.
            self.log.commit_to(meta.index);
            self.fold_committed_membership();
            self.receiving = None;
            let body = MessageBody::SnapshotResponse {
                snapshot_index,
                next_offset: 0,
                done: true,
            };
            self.send(from, self.term, body);
            return;
        }
        let expected = match &self.receiving {
            Some(r) if r.meta == meta => r.next_offset,
            _ => 0,
        };
        if offset != expected {
            // Out of order, duplicated, or after our restart: ask to resume.
            let body = MessageBody::SnapshotResponse {
                snapshot_index,
                next_offset: expected,
                done: false,
            };
            self.send(from, self.term, body);
            return;
        }
        let next_offset = offset + data.len() as u64;
        self.snapshot_chunks.push(SnapshotChunk {
            meta: meta.clone(),
            offset,
            data,
            done,
        });
        if done {
            self.receiving = None;
            self.base_membership = meta.membership.clone();
            self.membership_log.clear();
            self.log.restore(meta);
        } else {
            self.receiving = Some(Receiving { meta, next_offset });
        }
        let body = MessageBody::SnapshotResponse {
            snapshot_index,
            next_offset,
            done,
        };
        self.send(from, self.term, body);
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        reject: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    ) -> Result<(), Error> {
        let last_index = self.last_index();
        let hint = if reject && hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term)
        } else {
            hint_index
        };
        let pr = self
            .progress
            .get_mut(&from)
            .expect("checked by step_leader");
        pr.recent_active = true;
        if reject {
            if pr.maybe_decrease_to(index, hint) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, true)?;
            }
            return Ok(());
        }
        if !pr.maybe_update(index) {
            return Ok(());
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot => {
                if pr
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| pr.match_index >= s.meta.index)
                {
                    pr.become_probe();
                }
            }
            ProgressState::Replicate => pr.inflights.free_to(index),
        }
        let match_index = pr.match_index;
        if self.maybe_commit()? {
            self.broadcast_append()?;
        }
        while self.send_append(from, false)? {}
        if self.transferee == Some(from) && match_index == last_index {
            self.send(from, self.term, MessageBody::TimeoutNow);
        }
        Ok(())
    }

    fn handle_heartbeat_response(&mut self, from: NodeId) -> Result<(), Error> {
        let last_index = self.last_index();
        let pr = self
            .progress
            .get_mut(&from)
            .expect("checked by step_leader");
        pr.recent_active = true;
        pr.probe_sent = false;
        match pr.state {
            ProgressState::Snapshot => {
                let stalled = pr.snapshot.as_mut().map_or(0, |s| {
                    s.stalled_heartbeats += 1;
                    s.stalled_heartbeats
                });
                if stalled >= SNAPSHOT_STALL_HEARTBEATS {
                    if let Some(s) = pr.snapshot.as_mut() {
                        s.stalled_heartbeats = 0;
                    }
                    self.send_snapshot_chunk(from)?;
                }
            }
            ProgressState::Replicate | ProgressState::Probe => {
                if pr.state == ProgressState::Replicate && pr.inflights.full() {
                    pr.inflights.free_first();
                }
                if pr.match_index < last_index {
                    // An empty append at next - 1 reveals a lost message.
                    self.send_append(from, true)?;
                }
            }
        }
        Ok(())
    }

    fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        snapshot_index: u64,
        next_offset: u64,
        done: bool,
    ) -> Result<(), Error> {
        let pr = self
            .progress
            .get_mut(&from)
            .expect("checked by step_leader");
        pr.recent_active = true;
        let Some(transfer) = pr.snapshot.as_mut() else {
            return Ok(());
        };
        if pr.state != ProgressState::Snapshot || transfer.meta.index != snapshot_index {
            return Ok(());
        }
        if done {
            pr.match_index = pr.match_index.max(snapshot_index);
            pr.become_probe();
            return self.send_append(from, true).map(|_| ());
        }
        if next_offset > transfer.acked_offset {
            transfer.acked_offset = next_offset;
            transfer.stalled_heartbeats = 0;
            self.send_snapshot_chunk(from)?;
        } else if next_offset < transfer.acked_offset {
            // The follower lost its staging area (restart): resume from its
            // offset at the next resend, so streams are never duplicated.
            transfer.acked_offset = next_offset;
        }
        Ok(())
    }

    // ----- leader sending -----

    /// Sends an append to `to` if its progress allows; false if nothing was sent.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> Result<bool, Error> {
        let Some(pr) = self.progress.get(&to) else {
            return Ok(false);
        };
        if to == self.cfg.id || pr.is_paused() {
            return Ok(false);
        }
        let next_index = pr.next_index;
        let probing = pr.state == ProgressState::Probe;
        let catch_up = self.cfg.snapshot_catch_up_bytes;
        // Only committed bytes count: a snapshot never covers the rest, and
        // a follower the quorum needs for them must get them by replay. And
        // the snapshot is the whole log: only when the follower lacks at
        // least half of it (the snapshot is then at most twice the replay).
        let far = || {
            let s = &self.log.storage;
            let behind = s
                .bytes_from(next_index)
                .saturating_sub(s.bytes_from(self.log.committed + 1));
            behind > catch_up && behind.saturating_mul(2) >= s.bytes_from(self.log.first_index())
        };
        if probing && catch_up > 0 && far() {
            // Far behind: the snapshot is cheaper than the replay. One that
            // does not reach past what the follower has is not sent: the
            // follower waits in snapshot state for the driver to take a
            // newer one ([`Raft::request_snapshot`]); a stalled transfer
            // is retried on heartbeats meanwhile.
            let meta = self.log.storage.snapshot_meta();
            if meta.index + 1 >= self.log.first_index() {
                let fresh = meta.index > pr.match_index;
                let pr = self.progress.get_mut(&to).expect("looked up above");
                pr.become_snapshot(meta);
                if fresh {
                    self.send_snapshot_chunk(to)?;
                }
                return Ok(true);
            }
        }
        let prev_index = next_index - 1;
        let prev_term = match self.log.term(prev_index) {
            Ok(term) => term,
            Err(StorageError::Compacted(_)) => return self.send_snapshot(to),
            Err(e) => return Err(e.into()),
        };
        let last_index = self.last_index();
        let entries = if next_index <= last_index {
            match self
                .log
                .entries(next_index, last_index + 1, self.cfg.msg_bytes_max)
            {
                Ok(entries) => entries,
                Err(StorageError::Compacted(_)) => return self.send_snapshot(to),
                Err(e) => return Err(e.into()),
            }
        } else {
            Vec::new()
        };
        let commit = self.log.committed;
        let commit_lagging = self
            .progress
            .get(&to)
            .is_some_and(|p| p.sent_commit < commit);
        if entries.is_empty() && !allow_empty && !commit_lagging {
            return Ok(false);
        }
        let entry_bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let entry_count = entries.len();
        let pr = self.progress.get_mut(&to).expect("looked up above");
        pr.sent(prev_index + entry_count as u64, entry_bytes, entry_count);
        pr.sent_commit = pr.sent_commit.max(commit);
        let body = MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        };
        self.send(to, self.term, body);
        Ok(true)
    }

    fn send_snapshot(&mut self, to: NodeId) -> Result<bool, Error> {
        let meta = self.log.storage.snapshot_meta();
        if meta.index + 1 < self.log.first_index() {
            // A storage whose snapshot does not reach its log start cannot
            // catch this follower up: try again later (no message sent).
            return Ok(false);
        }
        let pr = self.progress.get_mut(&to).expect("caller checked");
        pr.become_snapshot(meta);
        self.send_snapshot_chunk(to)?;
        Ok(true)
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) -> Result<(), Error> {
        let pr = self.progress.get_mut(&to).expect("caller checked");
        let Some(transfer) = pr.snapshot.as_ref() else {
            return Ok(());
        };
        let meta = transfer.meta.clone();
        let offset = transfer.acked_offset;
        let chunk =
            self.log
                .storage
                .snapshot_chunk(meta.index, offset, self.cfg.snapshot_chunk_bytes);
        let data = match chunk {
            Ok(data) => data,
            Err(StorageError::SnapshotOutOfDate(_)) => {
                // The driver took a newer snapshot: start over with it.
                let newer = self.log.storage.snapshot_meta();
                assert!(
                    newer.index > meta.index,
                    "snapshot replaced by an older one"
                );
                pr.become_snapshot(newer.clone());
                self.log
                    .storage
                    .snapshot_chunk(newer.index, 0, self.cfg.snapshot_chunk_bytes)?
            }
            // Nothing to send now; the transfer is asked for again on the
            // next heartbeat response.
            Err(StorageError::SnapshotUnavailable) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let meta = pr
            .snapshot
            .as_ref()
            .map(|s| s.meta.clone())
            .expect("set above");
        let offset = pr.snapshot.as_ref().map_or(0, |s| s.acked_offset);
        let done = offset + data.len() as u64 >= meta.size_bytes;
        self.send(
            to,
            self.term,
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            },
        );
        Ok(())
    }

    /// Every node with replication progress except this one.
    fn peer_ids(&self) -> Vec<NodeId> {
        self.progress
            .keys()
            .copied()
            .filter(|&id| id != self.cfg.id)
            .collect()
    }

    fn broadcast_append(&mut self) -> Result<(), Error> {
        for id in self.peer_ids() {
            self.send_append(id, true)?;
        }
        Ok(())
    }

    fn broadcast_heartbeat(&mut self) {
        self.heartbeat_commit = self.log.committed;
        let peers: Vec<(NodeId, u64)> = self
            .progress
            .iter()
            .filter(|(&id, _)| id != self.cfg.id)
            .map(|(&id, p)| (id, p.match_index.min(self.log.committed)))
            .collect();
        for (id, commit) in peers {
            self.send(id, self.term, MessageBody::Heartbeat { commit });
        }
    }

    /// Figure 8 rule (section 5.4.2): commit the quorum's match index only if
    /// that entry is of the current term.
    fn maybe_commit(&mut self) -> Result<bool, Error> {
        let id = self.cfg.id;
        let persisted = self.log.persisted_index();
        let membership = self.membership();
        let mut matches: Vec<u64> = membership
            .voters
            .iter()
            .map(|v| {
                if *v == id {
                    persisted
                } else {
                    self.progress.get(v).map_or(0, |p| p.match_index)
                }
            })
            .collect();
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matches[membership.quorum() - 1];
        if quorum_index <= self.log.committed || must(self.log.term(quorum_index))? != self.term {
            return Ok(false);
        }
        self.log.commit_to(quorum_index);
        self.fold_committed_membership();
        while self
            .uncommitted
            .front()
            .is_some_and(|(i, _)| *i <= quorum_index)
        {
            let (_, bytes) = self.uncommitted.pop_front().expect("checked");
            self.uncommitted_bytes -= bytes;
        }
        Ok(true)
    }

    fn propose_payload(&mut self, payload: EntryPayload) -> Result<u64, Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(Error::TransferInProgress);
        }
        let index = self.last_index() + 1;
        let entry = Entry {
            index,
            term: self.term,
            payload,
        };
        let entry_bytes = entry.size_bytes();
        if entry_bytes > self.cfg.msg_bytes_max {
            return Err(Error::ProposalTooLarge {
                entry_bytes,
                limit_bytes: self.cfg.msg_bytes_max,
            });
        }
        if self.uncommitted_bytes + entry_bytes > self.cfg.uncommitted_bytes_max
            || self.uncommitted.len() >= UNCOMMITTED_ENTRIES_MAX
        {
            return Err(Error::UncommittedFull {
                entry_count: self.uncommitted.len(),
                entry_bytes: self.uncommitted_bytes,
            });
        }
        let membership = match &entry.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        };
        self.log.append(vec![entry]);
        self.uncommitted.push_back((index, entry_bytes));
        self.uncommitted_bytes += entry_bytes;
        if let Some(m) = membership {
            self.membership_log.push((index, m));
            self.sync_progress();
        }
        self.append_pending = true;
        Ok(index)
    }

    /// Membership entries at or below the commit index can never be
    /// truncated: fold them into the base (keeps `membership_log` short).
    fn fold_committed_membership(&mut self) {
        let committed = self.log.committed;
        let folded = self
            .membership_log
            .iter()
            .take_while(|(i, _)| *i <= committed)
            .count();
        if folded > 0 {
            let (_, m) = self
                .membership_log
                .drain(..folded)
                .next_back()
                .expect("folded > 0");
            self.base_membership = m;
        }
    }
}
