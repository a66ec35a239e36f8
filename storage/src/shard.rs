//! The only glommio code in storage: a [`Partition`] owns a [`Log`] on one
//! shard and performs its sync rounds with io_uring `fdatasync`, so nothing
//! blocks the executor.
//!
//! Group commit: under [`SyncPolicy::EveryBatch`] an append waits until a
//! sync round covers it. At most one round is in flight per partition; the
//! appends that arrive meanwhile wait for it to end and are then covered
//! together by the next round — one fdatasync for all of them. Under
//! [`SyncPolicy::IntervalMs`] appends return at once and
//! [`Partition::flush_loop`] syncs on the interval.
//!
//! The fdatasync calls of a round go through io_uring, or through the
//! [`Syncer`] of the log's config when a test set one.

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{BufferedFile, Directory};

use crate::config::SyncPolicy;
use crate::error::{Result, StorageError};
use crate::log::{AppendInfo, Log, SyncFile, SyncJob};
use crate::notify::Notify;
use crate::syncer::Syncer;

/// Open files the syncer keeps per partition: the active segment and the one
/// just sealed are all a round usually touches; 4 leaves headroom.
const SYNC_FILE_CACHE_MAX: usize = 4;

/// Performs sync rounds through io_uring.
#[derive(Default)]
struct UringSyncer {
    files: HashMap<(u64, u64), Rc<BufferedFile>>,
}

impl UringSyncer {
    async fn file(
        &mut self,
        id: (u64, u64),
        path: &std::path::Path,
    ) -> io::Result<Rc<BufferedFile>> {
        if let Some(f) = self.files.get(&id) {
            return Ok(f.clone());
        }
        let f = Rc::new(BufferedFile::open(path).await.map_err(io::Error::from)?);
        if id != (0, 0) {
            if self.files.len() >= SYNC_FILE_CACHE_MAX {
                self.files.clear();
            }
            self.files.insert(id, f.clone());
        }
        Ok(f)
    }

    /// io_uring fdatasync of one file of a round.
    async fn fdatasync(&mut self, sf: &SyncFile) -> io::Result<()> {
        let f = match self.file(sf.file_id, &sf.path).await {
            Ok(f) => f,
            // Deleted since the round began (truncation, retention):
            // nothing of it needs to be durable.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f.fdatasync().await.map_err(io::Error::from)
    }

    /// io_uring fsync of the partition directory.
    async fn fsync_dir(&mut self, dir: &std::path::Path) -> io::Result<()> {
        let dir = Directory::open(dir).await.map_err(io::Error::from)?;
        dir.sync().await.map_err(io::Error::from)
    }

    /// Runs the syncs of one round: through io_uring, or through the
    /// configured [`Syncer`] seam when there is one (tests).
    async fn run(&mut self, job: &SyncJob, seam: Option<&dyn Syncer>) -> io::Result<()> {
        for sf in &job.files {
            match seam {
                None => self.fdatasync(sf).await?,
                Some(seam) => seam.fdatasync(sf)?,
            }
        }
        if let Some(d) = &job.dir {
            match seam {
                None => self.fsync_dir(d).await?,
                Some(seam) => seam.fsync_dir(d)?,
            }
        }
        Ok(())
    }
}

/// A log owned by one glommio shard, with group commit.
pub struct Partition {
    log: RefCell<Log>,
    syncer: RefCell<UringSyncer>,
    /// The log's configured [`Syncer`], if any (taken at construction).
    seam: Option<Rc<dyn Syncer>>,
    in_flight: Cell<bool>,
    round_done: Notify,
    sync_rounds: Cell<u64>,
}

impl Partition {
    pub fn new(log: Log) -> Rc<Self> {
        let seam = log.config().syncer.clone();
        Rc::new(Partition {
            log: RefCell::new(log),
            syncer: RefCell::default(),
            seam,
            in_flight: Cell::new(false),
            round_done: Notify::default(),
            sync_rounds: Cell::new(0),
        })
    }

    /// The log, for reads and other synchronous calls. Do not hold it
    /// across an await.
    pub fn log(&self) -> Ref<'_, Log> {
        self.log.borrow()
    }

    pub fn log_mut(&self) -> RefMut<'_, Log> {
        self.log.borrow_mut()
    }

    /// Completed sync rounds (fdatasync batches) so far.
    pub fn sync_rounds(&self) -> u64 {
        self.sync_rounds.get()
    }

    /// Leader append; under `EveryBatch` returns once the batch is durable.
    pub async fn append(&self, batch: &[u8], term: u64) -> Result<AppendInfo> {
        let info = self.log.borrow_mut().append(batch, term)?;
        self.after_append(info).await
    }

    /// Appends Raft entry `entry_index` ([`Log::append_entry`]); under
    /// `EveryBatch` returns once the batch is durable.
    pub async fn append_entry(
        &self,
        batch: &[u8],
        term: u64,
        entry_index: u64,
    ) -> Result<AppendInfo> {
        let info = self
            .log
            .borrow_mut()
            .append_entry(batch, term, entry_index)?;
        self.after_append(info).await
    }

    /// Follower append; under `EveryBatch` returns once the batch is durable.
    pub async fn append_replicated(&self, batch: &[u8]) -> Result<AppendInfo> {
        let info = self.log.borrow_mut().append_replicated(batch)?;
        self.after_append(info).await
    }

    async fn after_append(&self, info: AppendInfo) -> Result<AppendInfo> {
        if self.log.borrow().config().sync_policy == SyncPolicy::EveryBatch {
            self.wait_durable(info.last_offset + 1).await?;
        }
        Ok(info)
    }

    /// Waits until every offset below `end_offset` is durable (or the log
    /// ends), running a sync round if none is in flight.
    pub async fn wait_durable(&self, end_offset: u64) -> Result<u64> {
        // Bounded: each pass either returns or completes/awaits one round;
        // a round covers everything appended before it began.
        loop {
            {
                let log = self.log.borrow();
                let target = end_offset.min(log.next_offset());
                if log.durable_offset() >= target {
                    return Ok(log.durable_offset());
                }
                if let Some(reason) = log.poisoned() {
                    return Err(StorageError::Poisoned {
                        path: log.dir().to_path_buf(),
                        reason: reason.to_string(),
                    });
                }
            }
            if self.in_flight.get() {
                self.round_done.wait().await;
                continue;
            }
            self.sync_round().await?;
        }
    }

    /// Runs one sync round now (unless one is in flight, then waits for it).
    pub async fn sync_round(&self) -> Result<u64> {
        if self.in_flight.get() {
            self.round_done.wait().await;
            return Ok(self.log.borrow().durable_offset());
        }
        let job = self.log.borrow_mut().begin_sync()?;
        let Some(job) = job else {
            return Ok(self.log.borrow().durable_offset());
        };
        self.in_flight.set(true);
        // Only one round is in flight, so the syncer is free: move it out
        // for the round instead of holding a borrow across the awaits.
        let mut syncer = self.syncer.take();
        let r = syncer.run(&job, self.seam.as_deref()).await;
        self.syncer.replace(syncer);
        let done = self.log.borrow_mut().finish_sync(job, r);
        self.in_flight.set(false);
        self.sync_rounds.set(self.sync_rounds.get() + 1);
        self.round_done.notify_all();
        done
    }

    /// Replaces the log by a completely received and prepared snapshot
    /// archive ([`Log::install_prepared`]) once no sync round is in flight,
    /// and forgets the files the syncer held open (the new log's files may
    /// reuse their ids). Returns the archive's metadata and the directory
    /// holding the replaced partition, for the caller to remove; the caller
    /// makes the exchange durable ([`crate::snapshot::sync_parent`]) before
    /// acknowledging. Only the exchange and the reopen (one header read per
    /// segment) run here; receiving, fsyncing and preparing the files
    /// happened before, off the shard.
    pub async fn install_snapshot(
        &self,
        inst: crate::snapshot::SnapshotInstaller,
    ) -> Result<(crate::snapshot::SnapshotMeta, std::path::PathBuf)> {
        self.wait_sync_idle().await;
        self.install_now(inst)
    }

    /// Waits until no sync round is in flight. Bounded when the caller
    /// appends nothing meanwhile (rounds start from appends and flushes).
    pub async fn wait_sync_idle(&self) {
        while self.in_flight.get() {
            self.round_done.wait().await;
        }
    }

    /// [`Partition::install_snapshot`] without the wait: the caller checked
    /// [`Partition::wait_sync_idle`] with no await since. Refused while a
    /// round is in flight.
    pub fn install_now(
        &self,
        inst: crate::snapshot::SnapshotInstaller,
    ) -> Result<(crate::snapshot::SnapshotMeta, std::path::PathBuf)> {
        if self.in_flight.get() {
            return Err(StorageError::Config(
                "a snapshot install raced a sync round".into(),
            ));
        }
        let r = self.log.borrow_mut().install_prepared(inst);
        self.syncer.borrow_mut().files.clear();
        self.round_done.notify_all();
        r
    }

    /// Under `IntervalMs`, syncs when the interval has passed since the last
    /// round. Returns whether a round ran.
    pub async fn flush_if_due(&self) -> Result<bool> {
        if !self.log.borrow().interval_sync_due() {
            return Ok(false);
        }
        self.sync_round().await?;
        Ok(true)
    }

    /// Background task for the interval policy: wakes every interval and
    /// syncs if needed; ends when the partition is poisoned.
    pub async fn flush_loop(self: Rc<Self>) -> StorageError {
        let interval_ms = match self.log.borrow().config().sync_policy {
            SyncPolicy::IntervalMs(ms) => ms,
            SyncPolicy::EveryBatch => 1000,
        };
        loop {
            glommio::timer::sleep(Duration::from_millis(interval_ms)).await;
            match self.flush_if_due().await {
                // Out of descriptors for a moment: the next interval retries.
                Err(e) if e.is_retriable() => {}
                Err(e) => return e,
                Ok(_) => {}
            }
        }
    }
}
