//! The leader's half: decide which followers need a snapshot, take an
//! archive off the shard, and stream it to a follower that connects for it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use raft::{ProgressState, Role};
use storage::SnapshotReader;
use wire::{
    ErrorCode, ErrorResponse, FrameLimits, InstallSnapshotChunk, Message, SnapshotFetchRequest,
};

use super::{
    archive_dir, Archive, SendProgress, SnapshotEnv, Ticket, ARCHIVE_IDLE, ARCHIVE_RETRY,
    CHUNK_BYTES,
};
use crate::counters::bump;
use crate::producers::ProducerSnapshot;
use crate::raft_group::{RaftGroup, RaftGroupKind};
use crate::telemetry::Event;

/// A follower that needs a snapshot, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub follower: u64,
    pub match_index: u64,
}

impl RaftGroup {
    /// Followers Raft is streaming a snapshot to, or must: below the log
    /// start, or far behind (`raft::Config::snapshot_catch_up_bytes`; Raft
    /// then waits in snapshot state for an archive). Only followers heard
    /// from lately: an archive for a dead one would pin disk for nothing,
    /// and be stale when it returns. Empty unless this replica leads.
    pub(crate) fn snapshot_needs(&self) -> Vec<Need> {
        let raft = self.raft.borrow();
        if raft.role() != Role::Leader || self.kind == RaftGroupKind::Controller {
            return Vec::new();
        }
        // The log's first index is a lookup in its first segment: only
        // for a follower that may be below it (one that has every entry is
        // not; most are, most of the time).
        let last = raft.last_index();
        let first = std::cell::OnceCell::new();
        let mut out = Vec::new();
        for &r in self.replicas.iter().filter(|&&r| r != raft.id()) {
            let Some(pr) = raft.progress(r).filter(|p| p.recent_active) else {
                continue;
            };
            let below_start = || {
                pr.next_index <= last
                    && pr.next_index
                        < *first.get_or_init(|| raft::Storage::first_index(raft.storage()))
            };
            if pr.state == ProgressState::Snapshot || below_start() {
                out.push(Need {
                    follower: r,
                    match_index: pr.match_index,
                });
            }
        }
        out
    }

    /// Periodic, on the leader: takes an archive when a follower needs one
    /// and none is usable, points Raft at it, and removes archives nobody
    /// reads any more.
    pub(crate) fn manage_snapshots(self: &Rc<Self>, env: &Rc<SnapshotEnv>) {
        if self.failed.borrow().is_some() {
            return;
        }
        let needs = self.snapshot_needs();
        if needs.is_empty()
            && self.archives.current.borrow().is_none()
            && self.archives.retired.borrow().is_empty()
        {
            return; // nothing to start, nothing to expire: most groups
        }
        let start_prev = self.start_prev.get().0;
        let usable = self.archives.usable(start_prev);
        let first = raft::Storage::first_index(self.raft.borrow().storage());
        let enough =
            |a: &Archive| a.index + 1 >= first && needs.iter().all(|n| a.index > n.match_index);
        match &usable {
            Some(a) if enough(a) => {
                let mut started = false;
                for n in &needs {
                    match self.raft.borrow_mut().request_snapshot(n.follower) {
                        Ok(s) => started |= s,
                        Err(e) => {
                            tracing::warn!(group = self.id, follower = n.follower, error = %e, "requesting a snapshot")
                        }
                    }
                }
                if started {
                    self.poke_driver();
                }
            }
            _ if !needs.is_empty() && !self.archives.taking.get() => {
                let waiting = self
                    .archives
                    .failed_at
                    .get()
                    .is_some_and(|t| t.elapsed() < ARCHIVE_RETRY);
                if !waiting {
                    self.archives.taking.set(true);
                    let (g, env) = (self.clone(), env.clone());
                    glommio::spawn_local(async move {
                        if let Err(e) = g.take_archive(&env).await {
                            tracing::warn!(broker = env.broker, group = g.id, error = %e, "taking a snapshot archive; trying again in 5 s");
                            g.archives.failed_at.set(Some(Instant::now()));
                        }
                        g.archives.taking.set(false);
                    })
                    .detach();
                }
            }
            _ => {}
        }
        self.expire_archives(env, needs.is_empty());
    }

    /// Removes retired archives no transfer reads, and the current one once
    /// no follower needs it and it has been idle for [`ARCHIVE_IDLE`].
    fn expire_archives(&self, env: &SnapshotEnv, none_needed: bool) {
        self.archives.retired.borrow_mut().retain(|a| {
            if a.sends.get() > 0 {
                return true;
            }
            env.remove_dir(a.dir.clone());
            false
        });
        let idle = self
            .archives
            .current
            .borrow()
            .as_ref()
            .is_some_and(|a| a.sends.get() == 0 && a.last_used.get().elapsed() > ARCHIVE_IDLE);
        if none_needed && idle {
            if let Some(a) = self.archives.current.borrow_mut().take() {
                env.remove_dir(a.dir.clone());
            }
        }
    }

    /// Takes an archive of everything committed: rolls the active segment
    /// (so the archive reaches the commit point), waits for the roll's
    /// contents to commit, plans on the shard and links, fsyncs and
    /// checksums on the blocking pool. Holds `maintenance` (no compaction
    /// swaps a segment meanwhile).
    async fn take_archive(self: &Rc<Self>, env: &SnapshotEnv) -> Result<(), String> {
        // A long compaction round would hold the follower back: it stops at
        // its next segment (a snapshot of what it swapped in is consistent).
        self.stop_compaction();
        let _permit = self
            .maintenance
            .acquire_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        let rolled_end = {
            let mut log = self.part.log_mut();
            // Without the roll (a full disk) the archive holds what is
            // sealed already, which may still be enough.
            if let Err(e) = log.roll() {
                tracing::info!(group = self.id, error = %e, "not rolling for the snapshot archive");
            }
            log.active_base_offset()
        };
        // Bounded: 100 × 20 ms; a partition that commits nothing for two
        // seconds gets the archive of what is committed.
        for _ in 0..100 {
            if self.high_watermark.get() >= rolled_end || self.role() != Role::Leader {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        }
        let plan = self
            .part
            .log()
            .plan_snapshot(self.high_watermark.get())
            .map_err(|e| e.to_string())?;
        let index = plan.last_entry_index;
        let term = plan.last_included_term;
        if self
            .archives
            .current
            .borrow()
            .as_ref()
            .is_some_and(|a| a.index >= index)
        {
            return Err(format!(
                "nothing committed past the current archive (entry {index}) yet"
            ));
        }
        let dir = archive_dir(&self.dir, index);
        let extra = {
            let mut table = self.producers.borrow().clone();
            table.truncate_from(index + 1);
            ProducerSnapshot {
                entry: index,
                term,
                table,
            }
            .encode()
        };
        let taken = glommio::executor()
            .spawn_blocking({
                let dir = dir.clone();
                move || -> Result<SnapshotReader, String> {
                    if let Some(parent) = dir.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                    }
                    plan.take(&dir, extra).map_err(|e| e.to_string())?;
                    SnapshotReader::open(&dir).map_err(|e| e.to_string())
                }
            })
            .await?;
        let archive = Rc::new(Archive {
            index,
            term,
            dir,
            ticket: Ticket {
                archive_id: taken.archive_id(),
                total_bytes: taken.total_bytes(),
            },
            reader: Arc::new(taken),
            sends: Cell::new(0),
            last_used: Cell::new(Instant::now()),
        });
        bump(&env.counters.archives, 1);
        tracing::info!(
            broker = env.broker,
            group = self.id,
            index,
            bytes = archive.ticket.total_bytes,
            "took a snapshot archive"
        );
        if let Some(old) = self.archives.current.borrow_mut().replace(archive) {
            self.archives.retired.borrow_mut().push(old);
        }
        Ok(())
    }

    /// The group is going away (its topic was deleted): removes its
    /// archives and any staged transfer (a fetch still running stops at
    /// its next chunk: the group is stopped).
    pub(crate) fn forget_snapshots(&self) {
        let Some(env) = self.snapshot_env() else {
            return;
        };
        let current = self.archives.current.borrow_mut().take();
        let retired = std::mem::take(&mut *self.archives.retired.borrow_mut());
        for a in current.into_iter().chain(retired) {
            env.remove_dir(a.dir.clone());
        }
        let staging = storage::SnapshotInstaller::staging_path(&self.dir);
        if staging.exists() {
            env.remove_dir(super::sink::retire_dir(staging));
        }
    }

    fn poke_driver(&self) {
        self.poke();
    }
}

/// Counts a transfer reading an archive, also when its task is dropped.
struct Reading(Rc<Archive>);

impl Reading {
    fn new(a: Rc<Archive>) -> Reading {
        a.sends.set(a.sends.get() + 1);
        Reading(a)
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.sends.set(self.0.sends.get().saturating_sub(1));
        self.0.last_used.set(Instant::now());
    }
}

/// Serves one transfer connection (the follower sent `req` after the
/// handshake): streams the archive from the follower's resume point, or
/// from 0 if it staged another archive, rate-limited, reading each chunk
/// on the blocking pool while the previous one is written.
pub async fn serve(
    mut stream: TcpStream,
    req: SnapshotFetchRequest,
    from: u64,
    g: Rc<RaftGroup>,
    env: Rc<SnapshotEnv>,
) {
    let archive = g
        .archives
        .current
        .borrow()
        .as_ref()
        .filter(|a| a.index == req.snapshot_index && a.term == req.snapshot_term)
        .cloned();
    let replica = g.replicas.contains(&from) && from != env.broker;
    let Some(archive) = archive.filter(|_| replica) else {
        let msg = format!(
            "no archive at entry {} (term {}) of group {} here",
            req.snapshot_index, req.snapshot_term, req.group
        );
        let e = ErrorResponse::new(ErrorCode::UnknownTopicOrPartition, msg);
        let _ = write(&mut stream, e.into()).await;
        return;
    };
    let total = archive.ticket.total_bytes;
    let resume = req.archive_id == archive.ticket.archive_id && req.offset <= total;
    let start = if resume { req.offset } else { 0 };
    let c = &env.counters;
    bump(&c.started, 1);
    if resume && start > 0 {
        bump(&c.resumed, 1);
    }
    let (topic, partition) = g.kind.telemetry_names();
    if start == 0 {
        if let (Some(topic), Some(partition)) = (topic.clone(), partition) {
            env.telemetry.event(Event::SnapshotStarted {
                topic,
                partition,
                to: from,
                bytes_total: total,
            });
        }
    }
    let now = Instant::now();
    let progress = Rc::new(SendProgress {
        to: from,
        bytes_total: total,
        bytes_sent: Cell::new(start),
        started: now,
        rate_mark: Cell::new((now, start)),
        bytes_per_sec: Cell::new(0),
    });
    g.archives
        .sending
        .borrow_mut()
        .insert(from, progress.clone());
    let reading = Reading::new(archive.clone());
    let result = stream_chunks(&mut stream, &archive, start, &g, &env, &progress).await;
    drop(reading);
    {
        // Only this transfer's entry: a newer connection from the same
        // follower may have replaced it.
        let mut sending = g.archives.sending.borrow_mut();
        if sending.get(&from).is_some_and(|p| Rc::ptr_eq(p, &progress)) {
            sending.remove(&from);
        }
    }
    let ok = result.is_ok();
    match result {
        Ok(()) => bump(&c.finished, 1),
        Err(e) => {
            bump(&c.failed, 1);
            tracing::info!(broker = env.broker, group = g.id, to = from, error = %e, "snapshot transfer ended early");
        }
    }
    if ok || progress.bytes_sent.get() < total {
        if let (Some(topic), Some(partition)) = (topic, partition) {
            env.telemetry.event(Event::SnapshotFinished {
                topic,
                partition,
                to: from,
                bytes_total: total,
                ok,
                duration_ms: progress.started.elapsed().as_millis() as u64,
            });
        }
    }
}

async fn stream_chunks(
    stream: &mut TcpStream,
    archive: &Archive,
    start: u64,
    g: &RaftGroup,
    env: &SnapshotEnv,
    progress: &SendProgress,
) -> Result<(), String> {
    let read = |at: u64| {
        let reader = archive.reader.clone();
        glommio::executor().spawn_blocking(move || reader.read_chunk(at, CHUNK_BYTES))
    };
    let mut next = read(start).await.map_err(|e| e.to_string())?;
    // Bounded: every chunk moves forward by at least one byte (the
    // reader refuses offsets past the end) until `done`.
    loop {
        let chunk = next;
        let at = chunk.offset + chunk.data.len() as u64;
        let done = chunk.done;
        // Read the next chunk while this one waits for the budget and the socket.
        let prefetch = (!done).then(|| read(at));
        let wait = env.limiter.reserve(chunk.data.len());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        let len = chunk.data.len() as u64;
        let msg = InstallSnapshotChunk {
            group: g.id,
            term: g.term(),
            leader: env.broker,
            snapshot_index: archive.index,
            snapshot_term: archive.term,
            offset: chunk.offset,
            total_bytes: archive.ticket.total_bytes,
            data: chunk.data,
            chunk_crc: chunk.crc,
            done,
        };
        write(stream, msg.into()).await?;
        progress.bytes_sent.set(at);
        bump(&env.counters.bytes_sent, len);
        archive.last_used.set(Instant::now());
        match prefetch {
            None => return Ok(()),
            Some(p) => next = p.await.map_err(|e| e.to_string())?,
        }
    }
}

pub(crate) async fn write(stream: &mut TcpStream, msg: Message) -> Result<(), String> {
    let limits = FrameLimits::new(crate::peer::PEER_FRAME_BYTES_MAX).unwrap_or_default();
    let frame = msg.encode(0, limits).map_err(|e| e.to_string())?;
    let w = async {
        stream.write_all(&frame).await?;
        stream.flush().await
    };
    match glommio::timer::timeout(super::TRANSFER_IDLE_TIMEOUT, async {
        w.await.map_err(glommio::GlommioError::from)
    })
    .await
    {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("writing a chunk: {e}")),
    }
}
