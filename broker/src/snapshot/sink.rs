//! The follower's half: hold Raft's snapshot ticket back until the archive
//! is staged (fetching it on a connection of its own, resuming what a
//! previous fetch made durable), then let Raft take it and install it in
//! place when the Ready asks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use raft::{Membership, MessageBody};
use storage::SnapshotInstaller;
use wire::{FrameDecoder, FrameLimits, Message, SnapshotFetchRequest};

use super::{SnapshotEnv, Ticket, FETCH_RETRY, TRANSFER_IDLE_TIMEOUT};
use crate::counters::bump;
use crate::error::{Error, Result};
use crate::producers::{load_producers, ProducerSnapshot};
use crate::raft_group::RaftGroup;
use crate::replica::RaftState;

/// A snapshot this follower is receiving.
pub struct Receive {
    pub leader: u64,
    pub index: u64,
    pub term: u64,
    pub ticket: Ticket,
    /// The fetch task's generation (a newer one makes it stop).
    gen: u64,
    running: bool,
    failed_at: Option<Instant>,
    /// The archive, completely staged and durable.
    complete: Option<SnapshotInstaller>,
    /// The latest ticket message, stepped into Raft once complete.
    pending: Option<raft::Message>,
    /// Archive bytes staged so far.
    pub bytes_received: Rc<Cell<u64>>,
}

/// A group's receiving side.
#[derive(Default)]
pub struct Inbox {
    pub current: RefCell<Option<Receive>>,
    gen: Cell<u64>,
    /// One fetch at a time writes the staging directory.
    staging: RefCell<Option<Rc<glommio::sync::Semaphore>>>,
}

impl Inbox {
    fn staging_lock(&self) -> Rc<glommio::sync::Semaphore> {
        self.staging
            .borrow_mut()
            .get_or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone()
    }
}

impl RaftGroup {
    /// Decides whether a Raft message may be stepped now. Everything but
    /// a snapshot ticket may. A ticket is held back (and its archive
    /// fetched) until the archive is completely staged; a ticket for what
    /// this replica already holds goes to Raft, which answers it; one from
    /// a deposed leader is dropped.
    pub(crate) fn snapshot_gate(self: &Rc<Self>, m: &mut raft::Message) -> bool {
        let from = m.from;
        let MessageBody::InstallSnapshot { meta, .. } = &mut m.body else {
            return true;
        };
        meta.membership = Membership::with_voters(self.replicas.iter().copied());
        let (index, term) = (meta.index, meta.term);
        if m.term < self.term() {
            return false; // a deposed leader's: Raft would ignore it
        }
        let held = raft::Storage::term(self.raft.borrow().storage(), index) == Ok(term);
        if index <= self.commit_index() || held {
            return true; // Raft answers it: nothing to fetch
        }
        let MessageBody::InstallSnapshot { data, .. } = &m.body else {
            return true;
        };
        let Some(ticket) = Ticket::decode(data) else {
            tracing::warn!(
                group = self.id,
                from,
                "a snapshot ticket that does not decode; ignored"
            );
            return false;
        };
        if self.raft.borrow().has_pending_snapshot() {
            return false; // Raft holds one until it is installed; it ignores others
        }
        let Some(env) = self.snapshot_env() else {
            return false;
        };
        let msg = m.clone();
        let mut cur = self.inbox.current.borrow_mut();
        match cur.as_mut() {
            Some(r)
                if r.leader == from && r.index == index && r.term == term && r.ticket == ticket =>
            {
                if r.complete.is_some() {
                    return true;
                }
                r.pending = Some(msg);
                if r.running || r.failed_at.is_some_and(|t| t.elapsed() < FETCH_RETRY) {
                    return false;
                }
            }
            _ => {
                *cur = Some(Receive {
                    leader: from,
                    index,
                    term,
                    ticket,
                    gen: 0,
                    running: false,
                    failed_at: None,
                    complete: None,
                    pending: Some(msg),
                    bytes_received: Rc::new(Cell::new(0)),
                });
            }
        }
        let gen = self.inbox.gen.get() + 1;
        self.inbox.gen.set(gen);
        let Some(r) = cur.as_mut() else {
            return false;
        };
        r.gen = gen;
        r.running = true;
        r.failed_at = None;
        let job = Fetch {
            leader: from,
            index,
            term,
            ticket,
            gen,
            received: r.bytes_received.clone(),
        };
        drop(cur);
        let g = self.clone();
        glommio::spawn_local(async move { g.fetch(env, job).await }).detach();
        false
    }

    async fn fetch(self: Rc<Self>, env: Rc<SnapshotEnv>, job: Fetch) {
        let lock = self.inbox.staging_lock();
        let Ok(_permit) = lock.acquire_permit(1).await else {
            return;
        };
        let result = self.fetch_archive(&env, &job).await;
        let pending = {
            let mut cur = self.inbox.current.borrow_mut();
            let Some(r) = cur.as_mut().filter(|r| r.gen == job.gen) else {
                return; // superseded: a newer ticket took over
            };
            r.running = false;
            match result {
                Ok(inst) => {
                    r.complete = Some(inst);
                    r.pending.take()
                }
                Err(e) => {
                    bump(&env.counters.failed, 1);
                    r.failed_at = Some(Instant::now());
                    tracing::warn!(broker = env.broker, group = self.id, leader = job.leader, error = %e, "snapshot fetch failed; retrying on the leader's next ticket");
                    None
                }
            }
        };
        if let Some(m) = pending {
            self.step(m);
        }
    }

    async fn fetch_archive(
        &self,
        env: &SnapshotEnv,
        job: &Fetch,
    ) -> std::result::Result<SnapshotInstaller, String> {
        let dir = self.dir.clone();
        let id = job.ticket.archive_id;
        let (mut inst, resumed) = glommio::executor()
            .spawn_blocking(move || -> std::result::Result<_, String> {
                let staged = SnapshotInstaller::resume(&dir).map_err(|e| e.to_string())?;
                if let Some(i) = staged.filter(|i| i.archive_id() == Some(id)) {
                    return Ok((i, true));
                }
                Ok((
                    SnapshotInstaller::new(&dir).map_err(|e| e.to_string())?,
                    false,
                ))
            })
            .await?;
        job.received.set(inst.next_offset());
        if inst.is_complete() {
            return Ok(inst); // staged completely before a restart
        }
        if resumed {
            bump(&env.counters.resumed, 1);
        }
        tracing::info!(
            broker = env.broker,
            group = self.id,
            leader = job.leader,
            index = job.index,
            from_offset = inst.next_offset(),
            total = job.ticket.total_bytes,
            resumed,
            "fetching a snapshot"
        );
        let addr = env
            .peer_addr(job.leader)
            .ok_or_else(|| format!("no address for broker {}", job.leader))?;
        let mut stream = crate::peer::connect_transfer(&env.identity, job.leader, addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = SnapshotFetchRequest {
            group: self.id,
            from: env.broker,
            snapshot_index: job.index,
            snapshot_term: job.term,
            archive_id: inst.archive_id().unwrap_or(0),
            offset: inst.next_offset(),
        };
        let limits = FrameLimits::new(crate::peer::PEER_FRAME_BYTES_MAX).unwrap_or_default();
        let frame = Message::from(req)
            .encode(0, limits)
            .map_err(|e| e.to_string())?;
        stream.write_all(&frame).await.map_err(|e| e.to_string())?;
        let mut decoder = FrameDecoder::new(limits);
        let mut buf = vec![0u8; 256 << 10];
        // Bounded: every chunk moves the staged offset forward or ends the
        // fetch; an idle socket ends it after the timeout.
        loop {
            if self.inbox.gen.get() != job.gen || self.is_stopped() {
                return Err("superseded".into());
            }
            let read = crate::peer::read_frame(&mut stream, &mut decoder, &mut buf);
            let frame = glommio::timer::timeout(TRANSFER_IDLE_TIMEOUT, async {
                read.await
                    .map_err(|e| glommio::GlommioError::from(std::io::Error::other(e.to_string())))
            })
            .await
            .map_err(|e| e.to_string())?;
            let c = match frame.message().map_err(|e| e.to_string())? {
                Message::InstallSnapshotChunk(c) => c,
                Message::ErrorResponse(e) => return Err(format!("leader: {}", e.message)),
                other => return Err(format!("unexpected {} on a transfer", other.kind().name())),
            };
            if c.group != self.id
                || c.leader != job.leader
                || c.snapshot_index != job.index
                || c.snapshot_term != job.term
                || c.total_bytes != job.ticket.total_bytes
            {
                return Err("a chunk of another snapshot".into());
            }
            if c.offset == 0 && inst.next_offset() > 0 {
                // The leader starts over (it serves another archive now).
                let dir = self.dir.clone();
                inst = glommio::executor()
                    .spawn_blocking(move || SnapshotInstaller::new(&dir))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if c.data.is_empty() && !c.done {
                return Err("an empty chunk".into());
            }
            let len = c.data.len() as u64;
            let (i, written) = glommio::executor()
                .spawn_blocking(move || {
                    let r = inst.write_chunk(c.offset, &c.data, c.chunk_crc);
                    (inst, r)
                })
                .await;
            inst = i;
            written.map_err(|e| e.to_string())?;
            // The archive must be the one the ticket names, and no larger:
            // a manifest claiming more would fill the disk.
            if let Some(total) = inst.total_bytes() {
                if inst.archive_id() != Some(job.ticket.archive_id)
                    || total != job.ticket.total_bytes
                {
                    return Err(format!(
                        "the archive received is not the one the ticket names ({total} bytes, id {:?})",
                        inst.archive_id()
                    ));
                }
            }
            bump(&env.counters.bytes_received, len);
            job.received.set(inst.next_offset());
            if inst.is_complete() {
                return Ok(inst);
            }
            if c.done {
                return Err("the leader ended the stream before the archive was complete".into());
            }
        }
    }

    /// Installs the staged archive Raft's Ready names: writes the group's
    /// Raft state (log start point = the snapshot) and the producer table
    /// into the staging directory, exchanges it with the partition's, and
    /// reopens the log in place. Other partitions keep serving; this group
    /// appends nothing meanwhile (its driver is here).
    pub(crate) async fn install_snapshot(&self, meta: &raft::SnapshotMeta) -> Result<()> {
        // Until it is done no ticket passes the gate, and no fetch can take
        // the staging directory over (it waits for the staging lock).
        let lock = self.inbox.staging_lock();
        let _staging = lock
            .acquire_permit(1)
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        self.install_staged(meta).await
    }

    async fn install_staged(&self, meta: &raft::SnapshotMeta) -> Result<()> {
        let staged = {
            let mut cur = self.inbox.current.borrow_mut();
            let found = cur
                .as_mut()
                .filter(|r| r.index == meta.index && r.term == meta.term)
                .and_then(|r| r.complete.take());
            if found.is_some() {
                *cur = None;
            }
            found
        };
        let Some(mut inst) = staged else {
            return Err(Error::SnapshotMissing { index: meta.index });
        };
        if inst.meta().map(|m| m.last_included_term) != Some(meta.term) {
            return Err(Error::SnapshotMismatch {
                index: meta.index,
                why: "its last entry's term is not the one Raft names".into(),
            });
        }
        self.stop_compaction();
        let _maintenance = self
            .maintenance
            .acquire_permit(1)
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        // No `raft.state` write (term and vote, retention's start point)
        // may land between reading `saved` and the exchange.
        let _state = self
            .save_lock
            .acquire_permit(1)
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        let saved = self.saved.get();
        let state = RaftState {
            term: saved.term,
            vote: saved.vote,
            commit: meta.index,
            start_prev_index: meta.index,
            start_prev_term: meta.term,
        };
        let extra = inst.meta().map(|m| m.extra.clone()).unwrap_or_default();
        // The producer table was saved as of the archive's last entry: one
        // for another entry is another archive.
        if let Ok(p) = ProducerSnapshot::decode(&extra) {
            if (p.entry, p.term) != (meta.index, meta.term) {
                return Err(Error::SnapshotMismatch {
                    index: meta.index,
                    why: format!(
                        "its producer state is as of entry {} (term {})",
                        p.entry, p.term
                    ),
                });
            }
        }
        let staging = inst.staging_dir().to_path_buf();
        let group = self.id;
        // Everything but the exchange and the reopen, off the shard: the
        // Raft state, the producer table, the empty active segment, the log
        // start and `snapshot.meta`, all fsync'ed.
        let inst = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<SnapshotInstaller> {
                state.save(&staging)?;
                match ProducerSnapshot::decode(&extra) {
                    Ok(p) => p.save(&staging)?,
                    Err(e) if !extra.is_empty() => {
                        tracing::warn!(group, error = %e, "the snapshot's producer state does not decode; rebuilt from the log")
                    }
                    Err(_) => {}
                }
                inst.prepare().map_err(std::io::Error::other)?;
                Ok(inst)
            })
            .await
            .map_err(Error::SaveState)?;
        self.part.wait_sync_idle().await;
        // Deleted meanwhile (its directory renamed, perhaps a new topic of
        // the same name since): never exchange. No await from here to the
        // exchange.
        if self.is_stopped() {
            return Err(Error::PartitionClosed);
        }
        let (_, old) = self
            .part
            .install_now(inst)
            .map_err(|source| Error::SyncLog {
                dir: self.dir.clone(),
                source,
            })?;
        let old = retire_dir(old);
        let last = self.part.log().last_entry_index();
        if last != meta.index {
            return Err(Error::SnapshotMismatch {
                index: meta.index,
                why: format!("the installed log ends at entry {last}"),
            });
        }
        // Durable before anything is acknowledged (the Ready's messages).
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || storage::snapshot::sync_parent(&dir))
            .await
            .map_err(|source| Error::SyncLog {
                dir: self.dir.clone(),
                source,
            })?;
        self.saved.set(state);
        self.start_prev.set((meta.index, meta.term));
        self.clean_offset.set(0);
        let table = load_producers(&self.dir, &self.part.log());
        *self.producers.borrow_mut() = table;
        self.note_producers_changed();
        self.after_install(meta.index);
        if let Some(env) = self.snapshot_env() {
            bump(&env.counters.installs, 1);
            env.remove_dir(old);
            tracing::info!(
                broker = env.broker,
                group = self.id,
                index = meta.index,
                "installed a snapshot"
            );
        }
        Ok(())
    }
}

/// Renames a directory about to be removed to a name of its own
/// (`<dir>.<ms>.deleted`, which a start also removes), so a later staging
/// directory at the same path is never removed with it.
pub(crate) fn retire_dir(dir: std::path::PathBuf) -> std::path::PathBuf {
    let mut to = dir.clone().into_os_string();
    to.push(format!(
        ".{}{}",
        crate::replica::now_ms(),
        crate::runtime::DELETED_SUFFIX
    ));
    let to = std::path::PathBuf::from(to);
    match std::fs::rename(&dir, &to) {
        Ok(()) => to,
        Err(_) => dir,
    }
}

/// What one fetch task fetches.
struct Fetch {
    leader: u64,
    index: u64,
    term: u64,
    ticket: Ticket,
    gen: u64,
    received: Rc<Cell<u64>>,
}
