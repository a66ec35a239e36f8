//! Sync rounds: what to fdatasync so appends become durable, and the
//! bookkeeping once a round ends.

use super::*;

impl Log {
    /// Whether a sync is due under the interval policy (always false under
    /// `EveryBatch`, whose appends each wait for a sync).
    pub fn interval_sync_due(&self) -> bool {
        match self.config.sync_policy {
            SyncPolicy::EveryBatch => false,
            SyncPolicy::IntervalMs(ms) => {
                self.needs_sync()
                    && self.config.clock.now_ms().saturating_sub(self.last_sync_ms) >= ms as i64
            }
        }
    }

    /// File descriptors the log holds open: the active segment's three and
    /// those of sealed segments not yet durable; sealed, durable segments
    /// are read through their maps alone.
    pub fn open_files(&self) -> usize {
        self.segments.iter().map(|s| s.open_files()).sum()
    }

    /// Whether anything written is not yet durable.
    pub fn needs_sync(&self) -> bool {
        self.dir_epoch != self.dir_synced_epoch
            || self
                .segments
                .iter()
                .any(|s| s.synced_bytes < s.data_bytes || s.index_dirty)
            || self.durable_offset < self.next_offset()
    }

    /// Starts a sync round: what to fdatasync so everything appended so far
    /// becomes durable. `None` if nothing needs it.
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>> {
        self.writable()?;
        if !self.needs_sync() {
            return Ok(None);
        }
        let mut files = Vec::new();
        let mut marks = Vec::new();
        let n = self.segments.len();
        for (i, s) in self.segments.iter_mut().enumerate() {
            let data = s.synced_bytes < s.data_bytes
                || (i + 1 == n && self.durable_offset < s.next_offset);
            if data {
                let file = s
                    .handle()
                    .map_err(|e| StorageError::io("open", &s.log_path, e))?;
                files.push(SyncFile {
                    path: s.log_path.clone(),
                    file_id: s.file_id,
                    file,
                });
            }
            if s.index_dirty {
                for ix in [&mut s.index, &mut s.time_index] {
                    let file = Rc::new(
                        ix.file()
                            .and_then(|f| f.try_clone())
                            .map_err(|e| StorageError::io("dup", &ix.path, e))?,
                    );
                    files.push(SyncFile {
                        path: ix.path.clone(),
                        file_id: (0, 0),
                        file,
                    });
                }
            }
            if data || s.index_dirty {
                marks.push((s.base_offset, s.file_id, s.data_bytes, s.index_dirty));
            }
        }
        let dir = (self.dir_epoch != self.dir_synced_epoch).then(|| self.dir.clone());
        Ok(Some(SyncJob {
            files,
            dir,
            target_offset: self.next_offset(),
            epoch: self.epoch,
            dir_epoch: self.dir_epoch,
            marks,
        }))
    }

    /// Ends a sync round with the syncer's result. A failure poisons the
    /// partition: after a failed fdatasync the page cache state is unknown.
    /// Returns the durable offset.
    pub fn finish_sync(&mut self, job: SyncJob, result: io::Result<()>) -> Result<u64> {
        self.writable()?;
        let path = job
            .files
            .first()
            .map_or_else(|| self.dir.clone(), |f| f.path.clone());
        let fault = self.config.faults.hit(FaultPoint::Fsync);
        let result = match fault {
            Some(Fault::PowerCut) => return Err(self.power_cut(FaultPoint::Fsync)),
            Some(f) => Err(f.io_error()),
            None => result,
        };
        if let Err(e) = result {
            // A round that could not open a file to sync (out of descriptors
            // or memory) synced nothing that failed: the pages are intact
            // and dirty; say retriable, and mark nothing.
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM)
            ) {
                return Err(StorageError::io("open for fdatasync", path, e));
            }
            // Even ENOSPC from fdatasync is fatal: the written pages are in
            // an unknown state.
            let err = StorageError::Io {
                op: "fdatasync",
                path,
                source: e,
            };
            return Err(self.poison(err));
        }
        // A truncation since the round began (`epoch`) may have rewritten
        // bytes the round's fdatasync ran before: its marks prove nothing.
        let marks = if job.epoch == self.epoch {
            job.marks
        } else {
            Vec::new()
        };
        for (base, id, bytes, index) in marks {
            if let Some(s) = self
                .segments
                .iter_mut()
                .find(|s| s.base_offset == base && s.file_id == id)
            {
                s.synced_bytes = s.synced_bytes.max(bytes.min(s.data_bytes));
                if index {
                    s.index_dirty = false;
                }
                // Sealed and durable now: its descriptors can go.
                s.release_files();
            }
        }
        if job.dir.is_some() {
            self.dir_synced_epoch = self.dir_synced_epoch.max(job.dir_epoch);
        }
        if job.epoch == self.epoch {
            self.durable_offset = self.durable_offset.max(job.target_offset);
        }
        self.last_sync_ms = self.config.clock.now_ms();
        Ok(self.durable_offset())
    }

    /// Performs a sync round right here with blocking fdatasync calls. For
    /// tests, tools and threads that may block — never on a shard, which
    /// uses [`crate::shard::Partition`] (io_uring).
    pub fn sync_now(&mut self) -> Result<u64> {
        let Some(job) = self.begin_sync()? else {
            return Ok(self.durable_offset());
        };
        let r = match &self.config.syncer {
            None => blocking_sync(&job),
            Some(syncer) => crate::syncer::run_round(&job, &**syncer),
        };
        self.finish_sync(job, r)
    }
}

/// fdatasync every file of the job, then fsync the directory (the
/// operating system's calls, [`crate::syncer::OsSyncer`]).
pub fn blocking_sync(job: &SyncJob) -> io::Result<()> {
    crate::syncer::run_round(job, &crate::syncer::OsSyncer)
}
