//! Moving the log start: retention and the files that record it.

use super::*;

impl Log {
    /// Moves the log start to `offset` (retention or a snapshot): offsets
    /// below it are no longer served; whole segments below it are deleted.
    /// An offset past the end empties the log, which continues at `offset`.
    pub fn move_start(&mut self, offset: u64) -> Result<Removed> {
        self.writable()?;
        if offset <= self.log_start_offset {
            return Ok(Removed::default());
        }
        let mut removed = Removed::default();
        // Already durable when the caller ran a [`StartPlan`] off the shard.
        if let Some(index) = self.entry_start_for(offset) {
            self.write_entry_start(index)?;
        }
        if offset >= self.next_offset() && offset > self.active().base_offset {
            let cap = self.config.segment_bytes_max;
            let fresh = Segment::create(
                &self.dir,
                offset,
                cap,
                self.config.index_interval_bytes,
                false,
            )
            .map_err(|e| self.fail(e))?;
            for s in std::mem::replace(&mut self.segments, vec![fresh]) {
                removed.segments += 1;
                removed.bytes += u64::from(s.data_bytes);
                self.delete_segment_files(s)?;
            }
            if let Some(b) = &self.config.disk_budget {
                b.take(u64::from(cap));
            }
            self.durable_offset = offset;
        } else {
            while self.segments.len() > 1 && self.segments[0].next_offset <= offset {
                let s = self.segments.remove(0);
                removed.segments += 1;
                removed.bytes += u64::from(s.data_bytes);
                self.delete_segment_files(s)?;
            }
        }
        self.log_start_offset = offset;
        self.write_log_start()?;
        Ok(removed)
    }

    pub(super) fn delete_segment_files(&mut self, s: Segment) -> Result<()> {
        let disk_bytes = s.disk_bytes();
        if self.config.defer_deletes {
            let mut retired = std::mem::take(&mut self.retired);
            let r = s.retire(&mut retired);
            self.retired = retired;
            r.map_err(|e| self.poison(e))?;
        } else {
            s.delete_files().map_err(|e| self.poison(e))?;
        }
        if let Some(b) = &self.config.disk_budget {
            b.give(disk_bytes);
        }
        self.dir_epoch += 1;
        Ok(())
    }

    /// Writes the log start next to the segments (tmp + rename, made
    /// durable by the next sync's directory fsync; losing it in a crash only
    /// means serving a little more history).
    pub(super) fn write_log_start(&mut self) -> Result<()> {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&self.log_start_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b[..8]);
        b[8..].copy_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join(format!("{LOG_START_FILE}.tmp"));
        let dst = self.dir.join(LOG_START_FILE);
        std::fs::write(&tmp, b).map_err(|e| self.fail(StorageError::io("write", &tmp, e)))?;
        std::fs::rename(&tmp, &dst).map_err(|e| self.fail(StorageError::io("rename", &tmp, e)))?;
        self.dir_epoch += 1;
        Ok(())
    }

    /// Segments removed since the last call, their files renamed to
    /// `*.deleted`, for the caller to release off the shard with
    /// [`Retired::dispose`] (only with [`LogConfig::defer_deletes`];
    /// otherwise always empty).
    pub fn take_retired(&mut self) -> Retired {
        std::mem::take(&mut self.retired)
    }

    /// Deletes whole sealed segments, oldest first, while the log is over
    /// `retention_bytes_max` or their newest timestamp is older than
    /// `retention_age_ms_max`. Only segments that end at or below
    /// `bound_offset` go (the caller passes what Raft no longer needs).
    pub fn apply_retention(&mut self, bound_offset: u64) -> Result<Removed> {
        match self.retention_cut(bound_offset) {
            Some(offset) => self.move_start(offset),
            None => Ok(Removed::default()),
        }
    }

    /// The new log start [`Log::apply_retention`] would move to (a segment
    /// boundary), without removing anything: a caller that must record
    /// something about the cut first (Raft: the term of the entry before
    /// the new start) asks, records, then applies.
    pub fn retention_cut(&self, bound_offset: u64) -> Option<u64> {
        let now = self.config.clock.now_ms();
        let mut total = self.data_bytes();
        let mut cut = None;
        for s in &self.segments[..self.segments.len() - 1] {
            if s.next_offset > bound_offset {
                break;
            }
            let bytes = u64::from(s.data_bytes);
            let over_bytes = self
                .config
                .retention_bytes_max
                .is_some_and(|m| total - bytes >= m);
            let over_age = self
                .config
                .retention_age_ms_max
                .is_some_and(|age| s.max_timestamp_ms < now.saturating_sub(age as i64));
            if !(over_bytes || over_age) {
                break;
            }
            total -= bytes;
            cut = Some(s.next_offset);
        }
        cut
    }
}

/// `entry-start` to write before a log-start move, prepared on the shard
/// by [`Log::plan_move_start`] and written off it: its two fsyncs must not
/// stall a shard's other partitions.
#[derive(Debug)]
pub struct StartPlan {
    pub(super) dir: PathBuf,
    pub(super) index: u64,
    pub(super) writes_seen: u64,
}

impl StartPlan {
    /// Writes `entry-start` durably (tmp, fsync, rename, fsync directory).
    /// Blocking: run it on a thread that may block.
    pub fn persist(&self) -> Result<()> {
        write_entry_start_file(&self.dir, "plan.tmp", self.index)
    }
}

/// Writes `dir/entry-start` durably through the temporary file `tmp_suffix`
/// (the shard's inline writes and a [`StartPlan`] use different ones).
pub(super) fn write_entry_start_file(dir: &Path, tmp_suffix: &str, index: u64) -> Result<()> {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&index.to_le_bytes());
    let crc = crc32c::crc32c(&b[..8]);
    b[8..].copy_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{ENTRY_START_FILE}.{tmp_suffix}"));
    let dst = dir.join(ENTRY_START_FILE);
    let mut f = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
    io::Write::write_all(&mut f, &b).map_err(|e| StorageError::io("write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| StorageError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| StorageError::io("rename", &tmp, e))?;
    // Past the rename the file may hold the new value: never retriable (the
    // caller's memory and the file could disagree), the log is poisoned.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StorageError::Io {
            op: "fsync dir",
            path: dir.to_path_buf(),
            source,
        })
}
