//! One Raft group on a shard: a partition (or the controller) with its
//! `Raft` state machine over the partition log, and the task that drives it.
//!
//! The driver follows the `raft::Ready` contract: append the entries (each
//! replica stamps base offset, term and entry index into the batch header),
//! make them durable (the shard's io_uring group commit), save term and vote
//! when they changed, and only then send the messages. Proposals made while a
//! Ready is being persisted ride in the next one, which is the group commit of
//! the replicated path.
//!
//! Produce requests wait on the entry their batch went into: when the commit
//! index passes it with the proposal's term still there, the request is
//! answered with the offsets the batch got; if the entry was replaced or this
//! node lost leadership, with a retriable `NotLeader`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use raft::{Entry, EntryPayload, Membership, Raft, Role};
use storage::notify::Notify;
use storage::shard::Partition;
use storage::{Log, LogConfig};

use crate::error::{chain, Error, Result};
use crate::peer::Transport;
use crate::producers::{batch_id, load_producers, BatchId, ProducerSnapshot, ProducerTable};
use crate::replica::{self, LogStore, RaftState};
use crate::telemetry::Event;

/// Raft timing in ticks of [`TICK`]: heartbeats every 100 ms, elections
/// after 1-2 s of silence. Generous for loaded 2-core test machines.
/// A shard ticks every group it holds: 50 ms (not 10) makes that a fifth of
/// the work (1,000 groups: 20,000 ticks a second instead of 100,000, each
/// touching the group's state), and election timeouts still fall on 20
/// distinct ticks of their 1-2 s range.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(50);
pub const HEARTBEAT_TICKS: u32 = 2;
pub const ELECTION_TICKS: u32 = 20;
/// A leader with nothing to replicate or tell heartbeats every 250 ms
/// instead of 100 (`raft::Config::idle_heartbeat_interval_ticks`): its
/// followers still hear it 4-8 times per election timeout, and its
/// check-quorum window (1 s) still holds a heartbeat answered within 750
/// ms; an idle cluster's heartbeats and answers drop to 40 %.
pub const IDLE_HEARTBEAT_TICKS: u32 = 5;
/// A preferred leader retries its first campaign every 4 ticks (200 ms)
/// for 16 ticks, all below the 20-tick minimum election timeout of the
/// others.
const FIRST_CAMPAIGN_EVERY_TICKS: u32 = 4;
const FIRST_CAMPAIGN_TICKS: u32 = 16;
/// A tick that produced nothing skips the look for a Ready (it reads the
/// log); every this many ticks (1 s, staggered by group) a group looks
/// anyway, as every tick did before, so an input that forgot to wake the
/// driver waits 1 s at most (less than an election timeout).
const READY_CHECK_EVERY_TICKS: u64 = 20;
/// Send-only Readies handled in a row where an input arose: one, and the
/// one its advance may make (a leader's appends after a commit); past that
/// the driver takes over.
const SEND_ONLY_READIES_MAX: usize = 2;
/// How often a Ready that met a full disk is tried again.
const DISK_FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// What a group is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaftGroupKind {
    Controller,
    Partition { topic: String, partition: u32 },
}

/// A committed produce: the offsets its batch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub base_offset: u64,
    pub last_offset: u64,
}

pub type WaitResult = Result<Committed, Error>;

struct Waiter {
    /// The term the entry must still have (`None`: whatever is there).
    term: Option<u64>,
    tx: flume::Sender<WaitResult>,
}

/// Leadership changes, for the shard (metadata, telemetry events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderChange {
    pub group: u64,
    pub kind: RaftGroupKind,
    pub leader: Option<u64>,
    pub term: u64,
    pub role: Role,
}

/// Hooks from the driver to the shard.
pub trait RaftGroupHooks {
    fn leader_changed(&self, change: LeaderChange);
    /// Controller commands, in commit order (controller group only).
    fn apply_commands(&self, entries: &[Entry]);
    /// A telemetry event of this group: [`Event::ElectionStarted`] when this
    /// replica starts a real vote, [`Event::LeaderChanged`] when it becomes
    /// leader (never from the other replicas). Never blocks.
    fn event(&self, _event: Event) {}
    /// The shard's snapshot context (transfer connections, counters).
    fn snapshot_env(&self) -> Option<Rc<crate::snapshot::SnapshotEnv>> {
        None
    }
}

impl RaftGroupKind {
    /// Topic and partition as telemetry names them (`None` for the controller).
    pub(crate) fn telemetry_names(&self) -> (Option<String>, Option<u32>) {
        match self {
            RaftGroupKind::Controller => (None, None),
            RaftGroupKind::Partition { topic, partition } => {
                (Some(topic.clone()), Some(*partition))
            }
        }
    }
}

pub struct RaftGroup {
    pub id: u64,
    pub kind: RaftGroupKind,
    pub dir: PathBuf,
    pub part: Rc<Partition>,
    pub replicas: Vec<u64>,
    pub(crate) raft: RefCell<Raft<LogStore>>,
    pub(crate) start_prev: Rc<Cell<(u64, u64)>>,
    pub(crate) saved: Cell<RaftState>,
    dirty: Cell<bool>,
    wake: Notify,
    waiters: RefCell<BTreeMap<u64, Vec<Waiter>>>,
    /// First offset not committed: what consumers may read up to.
    pub high_watermark: Cell<u64>,
    /// Signalled when the high watermark moves (long-polling fetches).
    pub committed: Notify,
    /// Signalled when entries became durable here (acks = leader).
    persisted: Notify,
    pub producers: RefCell<ProducerTable>,
    /// Set when persisting failed: the group stops (its data stays as it
    /// was on disk) and every request gets this error.
    pub failed: RefCell<Option<String>>,
    stopped: Cell<bool>,
    /// Serialises writes of `raft.state`.
    pub(crate) save_lock: glommio::sync::Semaphore,
    /// Held by whatever rewrites or links sealed segments off the shard
    /// (background compaction, taking a snapshot archive, installing one),
    /// so an archive never links a segment halfway through its swap.
    pub maintenance: glommio::sync::Semaphore,
    /// Compacted topics: every segment ending at or below this offset was
    /// compacted by a round of this process (0 after a start or a snapshot
    /// install, so the next check looks at the whole log again).
    pub(crate) clean_offset: Cell<u64>,
    /// The running compaction round's stop flag, if one runs.
    pub(crate) compaction_stop: RefCell<Option<std::sync::Arc<std::sync::atomic::AtomicBool>>>,
    /// Ticks left in which a preferred leader campaigns again while no
    /// leader is known (see [`RaftGroup::tick`]).
    first_campaigns: Cell<u32>,
    /// The term the producer table was last checked in: a term change may
    /// have dropped proposals it points at.
    producers_term: Cell<u64>,
    /// Bumped on every change of the producer table; what was saved last.
    producers_version: Cell<u64>,
    producers_saved: Cell<(u64, u64)>,
    /// Entries read back from the log for Raft (sending to followers, the
    /// controller applying its commands): partitions never read their
    /// committed entries back.
    pub entries_read: Rc<Cell<u64>>,
    /// The shard's hooks, once the driver runs (for reporting a failure).
    hooks: RefCell<Option<Rc<dyn RaftGroupHooks>>>,
    /// Archives this replica offers as leader (shared with its `LogStore`).
    pub(crate) archives: Rc<crate::snapshot::Archives>,
    /// The snapshot this replica receives as follower.
    pub(crate) inbox: crate::snapshot::sink::Inbox,
    /// The last leader this replica learnt of (any term, itself included):
    /// the `previous_leader` of its next leadership.
    known_leader: Cell<Option<u64>>,
    /// The term of the last election this replica reported starting.
    election_term: Cell<u64>,
    /// The term of the last leadership this replica reported.
    leader_term: Cell<u64>,
    /// Where the driver sends, once it runs: also where send-only Readies
    /// go ([`RaftGroup::settle`]).
    transport: RefCell<Option<Rc<dyn Transport>>>,
    /// Ticks so far (for [`READY_CHECK_EVERY_TICKS`]).
    ticks: Cell<u64>,
    /// (commit, last entry, log start) the high watermark was last
    /// computed from: an idle group's Readies do not look it up again.
    high_watermark_basis: Cell<(u64, u64, u64)>,
}

impl RaftGroup {
    /// Opens (or creates) the group's log in `dir` and restarts Raft from it.
    /// `replay` restarts the applied index at the log start, so committed
    /// entries are handed to [`RaftGroupHooks::apply_commands`] again (the
    /// controller rebuilds its state that way).
    pub fn open(
        id: u64,
        kind: RaftGroupKind,
        dir: PathBuf,
        config: LogConfig,
        me: u64,
        replicas: Vec<u64>,
        replay: bool,
    ) -> Result<Rc<RaftGroup>> {
        let (mut log, report) = Log::open(&dir, config).map_err(|source| Error::OpenLog {
            dir: dir.clone(),
            source,
        })?;
        // Recovered bytes may have been in the page cache only: make them
        // durable before Raft counts them as persisted.
        log.sync_now().map_err(|source| Error::SyncLog {
            dir: dir.clone(),
            source,
        })?;
        if !report.truncations.is_empty() {
            tracing::warn!(group = id, dir = %dir.display(), truncations = ?report.truncations, "recovered a damaged tail");
        }
        let state = RaftState::load(&dir)?;
        let producers = load_producers(&dir, &log);
        let part = Partition::new(log);
        let entries_read = Rc::new(Cell::new(0));
        let start_prev = Rc::new(Cell::new((state.start_prev_index, state.start_prev_term)));
        let archives = Rc::new(crate::snapshot::Archives::default());
        let store = LogStore {
            archives: archives.clone(),
            part: part.clone(),
            entries_read: entries_read.clone(),
            membership: Membership::with_voters(replicas.iter().copied()),
            hard_state: raft::HardState {
                term: state.term,
                vote: state.vote,
                // Only term and vote are saved on every change; commit is
                // learnt again from the leader (a lower commit is safe).
                commit: state.commit.min(raft::Storage::last_index(&LogStore {
                    archives: archives.clone(),
                    part: part.clone(),
                    entries_read: entries_read.clone(),
                    membership: Membership::default(),
                    hard_state: raft::HardState::default(),
                    start_prev: start_prev.clone(),
                })),
            },
            start_prev: start_prev.clone(),
        };
        let mut cfg = raft::Config::new(me, id);
        cfg.election_timeout_ticks = ELECTION_TICKS;
        cfg.heartbeat_interval_ticks = HEARTBEAT_TICKS;
        cfg.idle_heartbeat_interval_ticks = IDLE_HEARTBEAT_TICKS;
        cfg.seed = crate::topics::fnv1a(id.to_le_bytes().into_iter().chain(me.to_le_bytes()));
        cfg.applied_index = if replay { 0 } else { store.hard_state.commit };
        // A partition's log is what consumers read: committed entries need
        // no applying, so they are never read back (the controller applies
        // its commands and gets them).
        cfg.deliver_committed_entries = kind == RaftGroupKind::Controller;
        let raft = Raft::new(cfg, store).map_err(|error| Error::RaftStart {
            dir: dir.clone(),
            error,
        })?;
        let high_watermark = high_watermark(&part.log(), raft.commit_index());
        Ok(Rc::new(RaftGroup {
            id,
            kind,
            dir,
            part,
            replicas,
            raft: RefCell::new(raft),
            start_prev,
            saved: Cell::new(state),
            dirty: Cell::new(true),
            wake: Notify::default(),
            waiters: RefCell::new(BTreeMap::new()),
            high_watermark: Cell::new(high_watermark),
            committed: Notify::default(),
            persisted: Notify::default(),
            producers: RefCell::new(producers),
            failed: RefCell::new(None),
            stopped: Cell::new(false),
            save_lock: glommio::sync::Semaphore::new(1),
            maintenance: glommio::sync::Semaphore::new(1),
            clean_offset: Cell::new(0),
            compaction_stop: RefCell::new(None),
            first_campaigns: Cell::new(0),
            producers_term: Cell::new(0),
            producers_version: Cell::new(0),
            producers_saved: Cell::new((0, 0)),
            entries_read,
            hooks: RefCell::new(None),
            archives,
            inbox: Default::default(),
            known_leader: Cell::new(None),
            election_term: Cell::new(0),
            leader_term: Cell::new(0),
            transport: RefCell::new(None),
            ticks: Cell::new(0),
            high_watermark_basis: Cell::new((0, 0, 0)),
        }))
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.borrow().leader()
    }
    pub fn term(&self) -> u64 {
        self.raft.borrow().term()
    }
    pub fn role(&self) -> Role {
        self.raft.borrow().role()
    }
    pub fn commit_index(&self) -> u64 {
        self.raft.borrow().commit_index()
    }
    /// The last index of the log (durable or not).
    pub fn last_index(&self) -> u64 {
        self.raft.borrow().last_index()
    }
    /// The group's voters.
    pub fn replicas(&self) -> &[u64] {
        &self.replicas
    }
    /// `(replica, match index)` as the leader sees them (empty elsewhere).
    pub fn replica_progress(&self) -> Vec<(u64, u64)> {
        let raft = self.raft.borrow();
        self.replicas
            .iter()
            .map(|&r| {
                let m = if r == raft.id() {
                    raft.persisted_index()
                } else {
                    raft.progress(r).map_or(0, |p| p.match_index)
                };
                (r, m)
            })
            .collect()
    }

    pub(crate) fn poke(&self) {
        self.dirty.set(true);
        self.wake.notify_all();
    }

    pub fn tick(&self) {
        if self.stopped.get() {
            return; // nobody takes its Readies any more: nothing may pile up
        }
        let ticks = self.ticks.get() + 1;
        self.ticks.set(ticks);
        let before = {
            let raft = self.raft.borrow();
            (raft.role(), raft.term())
        };
        // A new group's preferred leader campaigns at once, but its peers
        // may not have created the group yet (they apply the controller's
        // command a moment later) and drop its votes: it tries again every
        // few ticks for a while, before their own timers can fire.
        let left = self.first_campaigns.get();
        if left > 0 {
            self.first_campaigns.set(left - 1);
            let retry = left % FIRST_CAMPAIGN_EVERY_TICKS == 0;
            if retry && self.leader().is_none() {
                self.raft.borrow_mut().campaign();
            }
        }
        if let Err(e) = self.raft.borrow_mut().tick() {
            tracing::warn!(group = self.id, error = %e, "tick");
        }
        // A tick only sends messages or changes role or term: most ticks
        // of most groups do neither, and looking for a Ready reads the log.
        let moved = {
            let raft = self.raft.borrow();
            raft.has_messages() || (raft.role(), raft.term()) != before
        };
        if moved || (ticks + self.id) % READY_CHECK_EVERY_TICKS == 0 {
            self.settle();
        }
    }

    /// After an input (a tick, a message): a Ready that only sends
    /// (`raft::Raft::ready_sends_only`: nothing to write, apply or report)
    /// is handled here at once, its heartbeats held for the shard's next
    /// flush; anything else wakes the driver. So an idle group's heartbeats
    /// and their answers cost no task wake-up, and those of all groups go
    /// to a peer in one frame per tick. The controller always uses its
    /// driver (it saves its commit index).
    fn settle(&self) {
        for _ in 0..SEND_ONLY_READIES_MAX {
            if self.stopped.get() {
                return;
            }
            let (ready, send_only) = {
                let raft = self.raft.borrow();
                let send_only = raft.ready_sends_only();
                (send_only || raft.has_ready(), send_only)
            };
            if !ready {
                return;
            }
            let transport = self.transport.borrow().clone();
            let Some(transport) =
                transport.filter(|_| send_only && self.kind != RaftGroupKind::Controller)
            else {
                break;
            };
            let rd = match self.raft.borrow_mut().ready() {
                Ok(rd) => rd,
                Err(e) => return self.fail(&format!("{e}")),
            };
            let saved = self.saved.get();
            assert!(
                rd.snapshot.is_none()
                    && rd.snapshot_chunks.is_empty()
                    && rd.entries.is_empty()
                    && rd.committed_entries.is_empty()
                    && rd.soft_state.is_none()
                    && rd
                        .hard_state
                        .is_none_or(|h| (h.term, h.vote) == (saved.term, saved.vote)),
                "group {}: a send-only Ready asks for more: {rd:?}",
                self.id
            );
            transport.hold(rd.messages);
            let commit = self.commit_index();
            if let Err(e) = self.raft.borrow_mut().advance() {
                return self.fail(&format!("{e}"));
            }
            // Nothing was written: only a moved commit changes the high
            // watermark or answers a produce request.
            let moved = self.commit_index();
            if rd.hard_state.is_some() || moved != commit {
                self.after_commit();
            }
            // Advancing made more only if it sent (a leader's appends after
            // a commit) or moved the commit; else nothing is left to look
            // for (a look reads the log).
            if moved == commit && !self.raft.borrow().has_messages() {
                return;
            }
        }
        self.poke();
    }

    pub fn step(self: &Rc<Self>, mut m: raft::Message) {
        if self.stopped.get() {
            return;
        }
        let ticket = matches!(m.body, raft::MessageBody::InstallSnapshot { .. });
        if ticket && !self.snapshot_gate(&mut m) {
            return;
        }
        let commit_before = self.commit_index();
        let stepped = self.raft.borrow_mut().step(m);
        // A follower's acknowledgement can commit entries while the driver
        // waits for this node's own fsync of a later Ready: answer their
        // producers now, not after that fsync. (Not the controller: its
        // commands are answered after the driver applied them.)
        if self.commit_index() > commit_before && self.kind != RaftGroupKind::Controller {
            self.after_commit();
        }
        match stepped {
            Ok(()) => {}
            // This replica's log contradicts the leader: stop the group (it
            // must not vote or acknowledge again) and say why; the broker's
            // other groups keep serving.
            Err(e @ raft::Error::LogLost { .. }) => self.fail(&format!("{e}")),
            Err(e) => tracing::warn!(group = self.id, error = %e, "step"),
        }
        self.settle();
    }

    /// Starts an election now (the preferred leader of a new group does, so
    /// leaders spread as the controller placed them).
    pub fn campaign(&self) {
        self.raft.borrow_mut().campaign();
        self.first_campaigns.set(FIRST_CAMPAIGN_TICKS);
        self.poke();
    }

    /// Hands leadership to the most caught-up other replica (graceful
    /// shutdown: clients see a quick hand-over, not an election timeout).
    /// Returns whether a transfer started.
    pub fn hand_over(&self) -> bool {
        let mut raft = self.raft.borrow_mut();
        if raft.role() != Role::Leader {
            return false;
        }
        let me = raft.id();
        let best = self
            .replicas
            .iter()
            .copied()
            .filter(|&r| r != me)
            .max_by_key(|&r| raft.progress(r).map_or(0, |p| p.match_index));
        let started = best.is_some_and(|to| raft.transfer_leader(to).is_ok());
        drop(raft);
        self.poke();
        started
    }

    /// Proposes a batch; returns its entry index and term.
    pub fn propose(&self, batch: Vec<u8>) -> Result<(u64, u64)> {
        if let Some(e) = self.failed.borrow().as_ref() {
            return Err(Error::ReplicaFailed(e.clone()));
        }
        let mut raft = self.raft.borrow_mut();
        let term = raft.term();
        match raft.propose(batch) {
            Ok(index) => {
                drop(raft);
                self.poke();
                Ok((index, term))
            }
            Err(raft::Error::NotLeader { leader }) => Err(Error::NotLeaderHere { leader }),
            // Retryable (LeaderNotAvailable), too large, or fatal: see
            // `Error::code`.
            Err(e) => Err(Error::Raft(e)),
        }
    }

    /// Waits until entry `index` is committed; `term`: the term it was
    /// proposed in (the answer is `NotLeader` if another entry replaced it).
    pub async fn wait_committed(&self, index: u64, term: Option<u64>) -> WaitResult {
        if let Some(e) = self.failed.borrow().as_ref() {
            return Err(Error::ReplicaFailed(e.clone()));
        }
        if self.stopped.get() {
            return Err(Error::PartitionClosed);
        }
        // Answered now only if committed and written here as Raft has it
        // (`written_commit`); otherwise the next `after_commit` answers it.
        // (The commit index first: a new proposal is past it, so the file
        // is not read on the produce path.)
        if index <= self.commit_index() && self.written_commit().is_some_and(|upto| index <= upto) {
            return self.committed_offsets(index, term);
        }
        let (tx, rx) = flume::bounded(1);
        self.waiters
            .borrow_mut()
            .entry(index)
            .or_default()
            .push(Waiter { term, tx });
        rx.recv_async().await.unwrap_or(Err(Error::PartitionClosed))
    }

    /// Waits until entry `index` is durable on this node (acks = leader).
    pub async fn wait_persisted(&self, index: u64, term: Option<u64>) -> WaitResult {
        loop {
            if self.stopped.get() {
                return Err(Error::PartitionClosed);
            }
            let (persisted, role) = {
                let raft = self.raft.borrow();
                (raft.persisted_index(), raft.role())
            };
            if persisted >= index {
                return self.committed_offsets(index, term);
            }
            if role != Role::Leader {
                return Err(Error::LeadershipChangedUnwritten);
            }
            self.persisted.wait().await;
        }
    }

    fn committed_offsets(&self, index: u64, term: Option<u64>) -> WaitResult {
        let log = self.part.log();
        let found = log.entry_term(index).and_then(|t| {
            Ok((
                t,
                log.entry_base_offset(index)?,
                log.entry_end_offset(index)?,
            ))
        });
        match found {
            Ok((t, base, end)) if term.is_none_or(|want| want == t) => Ok(Committed {
                base_offset: base,
                last_offset: end.saturating_sub(1),
            }),
            Ok(_) => Err(Error::LeadershipChanged),
            Err(e) => Err(Error::EntryLookup(e)),
        }
    }

    /// Records a batch in the producer table (the leader does at proposal,
    /// every replica again when the entry is written).
    pub fn record_producer(&self, id: BatchId, entry: u64) {
        self.producers.borrow_mut().record(id, entry);
        self.producers_version.set(self.producers_version.get() + 1);
    }

    /// Saves the producer table as of the last entry that is committed and
    /// durable here ([`ProducerSnapshot`]), off the shard, if it changed
    /// since the last save. A restart then reads only the entries after it.
    pub async fn save_producers(&self) -> std::io::Result<()> {
        let _permit = self
            .save_lock
            .acquire_permit(1)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let version = self.producers_version.get();
        let upto = {
            let raft = self.raft.borrow();
            raft.commit_index().min(raft.persisted_index())
        };
        let (saved_version, saved_upto) = self.producers_saved.get();
        // Due when the table changed, or when batches it recorded before
        // the last save have committed since (the last save left them out).
        let newest = self.producers.borrow().last_entry().min(upto);
        let due = version != saved_version || newest > saved_upto;
        if !due || upto <= saved_upto || self.stopped.get() {
            return Ok(());
        }
        let Ok(term) = self.part.log().entry_term(upto) else {
            return Ok(()); // not in this log (yet, or any more)
        };
        let mut table = self.producers.borrow().clone();
        table.truncate_from(upto + 1);
        let snapshot = ProducerSnapshot {
            entry: upto,
            term,
            table,
        };
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || snapshot.save(&dir))
            .await?;
        self.producers_saved.set((version, upto));
        Ok(())
    }

    /// Stops the group after a failure that leaves its state unusable here
    /// (a failed fsync, a log that contradicts the leader): waiters and
    /// later requests get the reason, and the shard stops advertising this
    /// replica as leader.
    fn fail(&self, why: &str) {
        if self.failed.borrow().is_some() {
            return;
        }
        tracing::error!(group = self.id, dir = %self.dir.display(), error = %why, "group stopped");
        *self.failed.borrow_mut() = Some(why.to_owned());
        self.fail_waiters(|| Error::ReplicaFailed(why.to_owned()));
        self.stop();
        // A leader stops naming itself; a follower keeps naming the leader
        // it knows (its broker's metadata stays right for the partition).
        let (role, leader) = {
            let raft = self.raft.borrow();
            (raft.role(), raft.leader())
        };
        let leader = leader.filter(|_| role != Role::Leader);
        if let Some(hooks) = self.hooks.borrow().as_ref() {
            hooks.leader_changed(LeaderChange {
                group: self.id,
                kind: self.kind.clone(),
                leader,
                term: self.term(),
                role: Role::Follower,
            });
        }
    }

    fn fail_waiters(&self, error: impl Fn() -> Error) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters.into_values().flatten() {
            let _ = w.tx.try_send(Err(error()));
        }
    }

    /// Waits until everything in the log is durable (a graceful stop).
    pub async fn sync(&self) -> Result<()> {
        let end = self.part.log().next_offset();
        self.part.wait_durable(end).await?;
        Ok(())
    }

    /// See `raft::Config::snapshot_catch_up_bytes`.
    pub fn set_snapshot_catch_up_bytes(&self, bytes: u64) {
        self.raft.borrow_mut().set_snapshot_catch_up_bytes(bytes);
    }

    /// Asks the running compaction round of this replica, if any, to stop
    /// at its next segment (it still swaps in what it finished; the
    /// `maintenance` permit is free soon after).
    pub(crate) fn stop_compaction(&self) {
        if let Some(stop) = &*self.compaction_stop.borrow() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    pub(crate) fn snapshot_env(&self) -> Option<Rc<crate::snapshot::SnapshotEnv>> {
        self.hooks.borrow().as_ref().and_then(|h| h.snapshot_env())
    }

    pub(crate) fn note_producers_changed(&self) {
        self.producers_version.set(self.producers_version.get() + 1);
    }

    /// After a snapshot install: the high watermark covers the snapshot.
    pub(crate) fn after_install(&self, index: u64) {
        let hw = high_watermark(&self.part.log(), index).max(self.high_watermark.get());
        if hw != self.high_watermark.get() {
            self.high_watermark.set(hw);
            self.committed.notify_all();
        }
    }

    /// Stops the driver (the partition was deleted or the broker stops).
    pub fn stop(&self) {
        self.stopped.set(true);
        self.fail_waiters(|| Error::PartitionClosed);
        self.poke();
        self.committed.notify_all();
        self.persisted.notify_all();
    }

    /// The driver task: runs until [`RaftGroup::stop`] or a persistence failure.
    /// The hooks are in place from the call on (before the task first runs).
    pub fn run(
        self: Rc<Self>,
        outbox: Rc<dyn Transport>,
        hooks: Rc<dyn RaftGroupHooks>,
    ) -> impl std::future::Future<Output = ()> {
        *self.hooks.borrow_mut() = Some(hooks.clone());
        *self.transport.borrow_mut() = Some(outbox.clone());
        self.drive(outbox, hooks)
    }

    async fn drive(self: Rc<Self>, outbox: Rc<dyn Transport>, hooks: Rc<dyn RaftGroupHooks>) {
        loop {
            if self.stopped.get() {
                return;
            }
            let ready = self.dirty.replace(false) || self.raft.borrow().has_ready();
            if !ready {
                self.wake.wait().await;
                continue;
            }
            while !self.stopped.get() && self.raft.borrow().has_ready() {
                if let Err(e) = self.process_ready(&*outbox, &*hooks).await {
                    self.fail(&chain(&e));
                    return;
                }
                // A Ready with nothing to persist never awaits: let the
                // shard's other groups and connections run between them.
                glommio::yield_if_needed().await;
            }
        }
    }

    async fn process_ready(
        &self,
        outbox: &dyn Transport,
        hooks: &dyn RaftGroupHooks,
    ) -> Result<()> {
        let mut rd = self.raft.borrow_mut().ready()?;
        // A leader sends its appends before its own fsync (see
        // `raft::Ready`): the followers' writes and syncs overlap its own.
        if rd.send_before_persisting {
            outbox.send(std::mem::take(&mut rd.messages));
        }
        // A term change may have dropped this node's own proposals that
        // never reached its log (a new leader's entries take their indexes):
        // forget what the producer table recorded past the log's end. The
        // entries of this Ready are recorded again as they are written.
        // Synchronous with the Ready, so no proposal slips in between.
        let term = self.term();
        if term != self.producers_term.get() {
            let next = self.part.log().next_entry_index();
            self.producers.borrow_mut().truncate_from(next);
            self.producers_version.set(self.producers_version.get() + 1);
            self.producers_term.set(term);
        }
        // A snapshot's chunks are its ticket only (see `crate::snapshot`):
        // the archive is staged already.
        if let Some(meta) = &rd.snapshot {
            self.install_snapshot(meta).await?;
        }
        if let Some(ss) = rd.soft_state {
            if ss.role != Role::Leader {
                // Entries committed before the step-down are answered as
                // committed; only the rest are told to retry.
                // Not past this Ready's own entries: they replace what the
                // log holds from their first index on.
                let mut held = self.commit_index().min(self.part.log().last_entry_index());
                if let Some(first) = rd.entries.first() {
                    held = held.min(first.index - 1);
                }
                self.answer_waiters(held);
                self.fail_waiters(|| Error::LeadershipChanged);
            }
            self.report_role(ss.role, ss.leader, hooks);
            hooks.leader_changed(LeaderChange {
                group: self.id,
                kind: self.kind.clone(),
                leader: ss.leader,
                term: self.term(),
                role: ss.role,
            });
        }
        if !rd.entries.is_empty() {
            // A full disk is a state, not a failure: keep this Ready and
            // try again until space returns (nothing is acknowledged
            // meanwhile; the leader refuses new proposals while full).
            let mut warned = false;
            loop {
                match self.append_entries(&rd.entries) {
                    Ok(()) => break,
                    Err(e) if e.is_retriable() => {
                        if !warned {
                            tracing::warn!(group = self.id, error = %e, "out of disk space or resources: retrying until they return");
                            warned = true;
                        }
                        glommio::timer::sleep(DISK_FULL_RETRY).await;
                        if self.stopped.get() {
                            return Err(Error::StoppedWhileDiskFull);
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if warned {
                tracing::info!(group = self.id, "appending again");
            }
            // Opening a file for the sync round can meet the same
            // retriable shortage (descriptors): wait it out the same way.
            let end = self.part.log().next_offset();
            let mut warned = false;
            loop {
                match self.part.wait_durable(end).await {
                    Ok(_) => break,
                    Err(e) if e.is_retriable() && !self.stopped.get() => {
                        if !warned {
                            tracing::warn!(group = self.id, error = %e, "sync: retrying until resources return");
                            warned = true;
                        }
                        glommio::timer::sleep(DISK_FULL_RETRY).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if warned {
                tracing::info!(group = self.id, "syncing again");
            }
        }
        if let Some(hs) = rd.hard_state {
            let saved = self.saved.get();
            // Term and vote must be durable before the messages go out;
            // the controller also saves its commit index (rare changes), so
            // a restarted broker applies its topics at once.
            let controller_commit =
                self.kind == RaftGroupKind::Controller && hs.commit != saved.commit;
            if hs.term != saved.term || hs.vote != saved.vote || controller_commit {
                self.save_state(|s| {
                    s.term = hs.term;
                    s.vote = hs.vote;
                    s.commit = hs.commit;
                })
                .await
                .map_err(Error::SaveState)?;
            }
        }
        outbox.send(rd.messages);
        if !rd.committed_entries.is_empty() && self.kind == RaftGroupKind::Controller {
            hooks.apply_commands(&rd.committed_entries);
        }
        self.raft.borrow_mut().advance()?;
        self.persisted.notify_all();
        self.after_commit();
        Ok(())
    }

    /// Telemetry events of a role change seen in a Ready. A real election
    /// is reported once per term, when this replica is seen as candidate —
    /// or as leader of a term it was never seen candidate in (a single
    /// voter, or votes that came back before the driver looked, go from
    /// follower to leader in one Ready). Leadership is reported by the new
    /// leader only, with the leader it knew before (an earlier term: one
    /// leader per term).
    fn report_role(&self, role: Role, leader: Option<u64>, hooks: &dyn RaftGroupHooks) {
        let term = self.term();
        if matches!(role, Role::Candidate | Role::Leader) && self.election_term.get() != term {
            self.election_term.set(term);
            let (topic, partition) = self.kind.telemetry_names();
            hooks.event(Event::ElectionStarted {
                topic,
                partition,
                term,
                candidate: self.raft.borrow().id(),
            });
        }
        if role == Role::Leader && self.leader_term.get() != term {
            self.leader_term.set(term);
            let (topic, partition) = self.kind.telemetry_names();
            hooks.event(Event::LeaderChanged {
                topic,
                partition,
                term,
                leader: self.raft.borrow().id(),
                previous_leader: self.known_leader.get(),
            });
        }
        if leader.is_some() {
            self.known_leader.set(leader);
        }
    }

    /// Writes a Ready's entries (first removing a conflicting suffix; again
    /// from the start on a retry, which rewrites the same entries).
    fn append_entries(&self, entries: &[Entry]) -> Result<(), storage::StorageError> {
        let mut log = self.part.log_mut();
        // Entries the log already holds with the same term are the same
        // entries (log matching): a retry after a refused roll keeps them
        // instead of truncating back into sealed segments.
        let next = log.next_entry_index();
        let held = entries
            .iter()
            .take_while(|e| e.index < next && log.entry_term(e.index).ok() == Some(e.term))
            .count();
        let entries = &entries[held..];
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let truncated = first < next;
        if truncated {
            log.truncate_entries_from(first)?;
        }
        if truncated {
            self.producers.borrow_mut().truncate_from(first);
            self.producers_version.set(self.producers_version.get() + 1);
        }
        for e in entries {
            let batch = replica::entry_batch(&e.payload);
            log.append_entry(&batch, e.term, e.index)?;
            if let EntryPayload::Data(bytes) = &e.payload {
                if let Some(id) = batch_id(bytes) {
                    self.record_producer(id, e.index);
                }
            }
        }
        Ok(())
    }

    /// Moves the high watermark to the commit index and answers the
    /// produce requests it covers.
    ///
    /// Only entries this replica's file holds as Raft does count: the file
    /// lags Raft's log while a Ready is being written (a leader's commit can
    /// come from its followers first), and on a follower whose Ready
    /// replaces a stale suffix it still holds the old entries at those
    /// indexes. What is not counted now is counted when the driver has
    /// written the Ready and calls this again.
    fn after_commit(&self) {
        let Some(commit) = self.written_commit() else {
            return;
        };
        // The high watermark is a function of these three (entries up to
        // the commit never change): most Readies move none of them.
        let basis = {
            let log = self.part.log();
            (commit, log.last_entry_index(), log.log_start_offset())
        };
        if basis != self.high_watermark_basis.get() {
            self.high_watermark_basis.set(basis);
            // Never backwards: a new leader's commit index can lag the old
            // one's until its first entry commits.
            let hw = high_watermark(&self.part.log(), commit).max(self.high_watermark.get());
            if hw != self.high_watermark.get() {
                self.high_watermark.set(hw);
                self.committed.notify_all();
            }
        }
        self.answer_waiters(commit);
    }

    /// The commit index bounded by the entries written to this replica's
    /// file, or `None` if the file's entry there is not Raft's (a stale
    /// suffix not yet replaced). Entries with the same index and term are
    /// the same entry, with the same entries before them.
    ///
    /// A snapshot received but not yet installed moves the commit index
    /// past what the file holds, whose suffix may be stale: nothing counts
    /// until the driver has installed it. An entry whose header cannot be
    /// read counts, so its waiters get the lookup error at once.
    fn written_commit(&self) -> Option<u64> {
        let raft = self.raft.borrow();
        if raft.has_pending_snapshot() {
            return None;
        }
        let commit = raft.commit_index();
        let log = self.part.log();
        let upto = commit.min(log.last_entry_index());
        if upto == 0 || upto < log.first_entry_index() {
            return Some(upto);
        }
        let Ok(on_disk) = log.entry_term(upto) else {
            return Some(upto);
        };
        match raft.log_term(upto) {
            Some(t) if t != on_disk => None,
            _ => Some(upto),
        }
    }

    /// Answers the produce requests waiting for entries up to `upto`
    /// (committed, and in this log) with their offsets.
    fn answer_waiters(&self, upto: u64) {
        let done: Vec<(u64, Vec<Waiter>)> = {
            let mut waiters = self.waiters.borrow_mut();
            let rest = waiters.split_off(&(upto + 1));
            std::mem::replace(&mut *waiters, rest).into_iter().collect()
        };
        for (index, ws) in done {
            for w in ws {
                let _ = w.tx.try_send(self.committed_offsets(index, w.term));
            }
        }
    }

    /// Changes and saves `raft.state`: one writer at a time (the driver
    /// saving term and vote, retention saving the log-start point), each
    /// starting from what the other saved. The two fsyncs run on glommio's
    /// blocking pool, so an election of one group does not stall the shard's
    /// other partitions.
    async fn save_state(&self, change: impl FnOnce(&mut RaftState)) -> std::io::Result<()> {
        let _permit = self
            .save_lock
            .acquire_permit(1)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut state = self.saved.get();
        change(&mut state);
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || state.save(&dir))
            .await?;
        self.saved.set(state);
        Ok(())
    }

    /// Records, durably and before retention removes anything, the entry
    /// before the new log start and its term, so `term(first - 1)` stays
    /// answerable after the cut (and after a restart).
    pub async fn save_start_prev(&self, index: u64, term: u64) -> std::io::Result<()> {
        self.save_state(|s| {
            s.start_prev_index = index;
            s.start_prev_term = term;
        })
        .await
    }

    /// The log-start point Raft reads: (entry index, term).
    pub fn start_prev(&self) -> (u64, u64) {
        self.start_prev.get()
    }

    /// Makes the saved log-start point the one Raft reads (once the cut is
    /// done).
    pub fn use_start_prev(&self, index: u64, term: u64) {
        self.start_prev.set((index, term));
    }
}

/// The first offset past entry `commit`, or past the last entry this log
/// holds if the commit index is ahead of it (a follower learns commit
/// indexes before the entries arrive).
fn high_watermark(log: &Log, commit: u64) -> u64 {
    let c = commit.min(log.last_entry_index());
    if c == 0 || c < log.first_entry_index() {
        return log.log_start_offset();
    }
    log.entry_end_offset(c)
        .unwrap_or_else(|_| log.log_start_offset())
}
