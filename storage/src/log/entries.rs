//! The Raft-entry view of the log: entry indexes, lookups, reads,
//! truncation by entry, and `entry-start`.

use super::*;

impl Log {
    // ---- Raft entries ------------------------------------------------------
    //
    // Every Raft entry is one batch, its entry index stamped in the header
    // (outside the CRC); indexes go up by exactly 1 from batch to batch
    // (appends enforce it, recovery cuts the log where it breaks). No extra
    // index file: entry `i` is found by a binary search over the segments
    // (each knows its first and last entry index, read from headers in the
    // map on open) and, inside one, over the sparse offset index, reading the
    // batch header at each probed point, then a walk of at most about
    // `index_interval_bytes` of batch headers: O(log segments + log index
    // points) header reads, each a page of a map.
    //
    // Key compaction drops batches whose records were all superseded, which
    // leaves gaps in the entry indexes below the compaction point: entry
    // lookups are only guaranteed above the compacted range (Raft sends a
    // snapshot below it). A missing entry is `EntryNotFound`, never another
    // entry.

    /// Whether any segment holds a batch (batches below the log start
    /// included).
    pub(super) fn holds_batches(&self) -> bool {
        self.segments.iter().any(|s| s.data_bytes > 0)
    }

    /// The entry index the next append gets: one past the last batch's
    /// entry index, or, while the log holds no batch, the value given by
    /// [`Log::set_next_entry_index`] or kept when the log was emptied
    /// (retention, `move_start`, truncation), 1 by default. Survives a
    /// reopen (file `entry-start` while empty, the batches otherwise).
    pub fn next_entry_index(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .find_map(|s| s.last_entry_index)
            .map_or(self.empty_next_entry, |e| e + 1)
    }

    /// The last entry's index; 0 if the log never held an entry (then
    /// [`Log::next_entry_index`] is 1).
    pub fn last_entry_index(&self) -> u64 {
        self.next_entry_index().saturating_sub(1)
    }

    /// The entry index of the first batch still served: the one holding the
    /// log start offset. [`Log::next_entry_index`] when the log holds no
    /// entry at or above the log start.
    pub fn first_entry_index(&self) -> u64 {
        let start = self.log_start_offset;
        if start >= self.next_offset() {
            return self.next_entry_index();
        }
        let s = &self.segments[self.segment_for(start)];
        let Some(first) = s.first_entry_index else {
            return self.next_entry_index();
        };
        // A damaged header here falls back to the segment's first entry
        // (reads report the damage).
        s.position_holding(start)
            .and_then(|pos| s.header_at(pos))
            .map_or(first, |h| h.entry_index)
    }

    /// Sets the entry index of the next append while the log holds no batch
    /// (after a snapshot install, or a log emptied by retention). Persisted
    /// at once (`entry-start`: tmp, fsync, rename, fsync of the directory;
    /// blocking). `NotContiguous` if the log holds a batch or `index` is 0.
    pub fn set_next_entry_index(&mut self, index: u64) -> Result<()> {
        self.writable()?;
        if self.holds_batches() {
            return Err(StorageError::NotContiguous {
                reason: format!(
                    "the next entry index can only be set on an empty log (it holds entries up to {})",
                    self.last_entry_index()
                ),
            });
        }
        if index == 0 {
            return Err(StorageError::NotContiguous {
                reason: "entry indexes start at 1".into(),
            });
        }
        self.write_entry_start(index)
    }

    /// Writes `entry-start` durably (tmp, fsync, rename, fsync dir) and sets
    /// the in-memory value. Called before a change that empties the log,
    /// so a crash leaves either the old batches or the right value.
    pub(super) fn write_entry_start(&mut self, index: u64) -> Result<()> {
        let written = write_entry_start_file(&self.dir, "tmp", index);
        written.map_err(|e| self.fail(e))?;
        self.empty_next_entry = index;
        self.entry_start_writes += 1;
        self.blocking_syncs += 1;
        Ok(())
    }

    /// Fsyncs this log made itself, blocking the calling thread (outside
    /// sync rounds): writing `entry-start` inline. A shard should see none
    /// from retention, which writes it off the shard ([`StartPlan`]).
    pub fn blocking_syncs(&self) -> u64 {
        self.blocking_syncs
    }

    /// What moving the log start to `offset` needs made durable first, to be
    /// done off the shard with [`StartPlan::persist`] and reported back with
    /// [`Log::start_plan_persisted`]; [`Log::move_start`] then has nothing
    /// left to sync. `None`: nothing to write.
    pub fn plan_move_start(&self, offset: u64) -> Option<StartPlan> {
        let index = self.entry_start_for(offset)?;
        Some(StartPlan {
            dir: self.dir.clone(),
            index,
            writes_seen: self.entry_start_writes,
        })
    }

    /// Takes the result of [`StartPlan::persist`]: on success `entry-start`
    /// holds the plan's value, unless this log wrote it meanwhile — then
    /// the file is written again with what this log holds, so file and
    /// memory never disagree.
    pub fn start_plan_persisted(&mut self, plan: StartPlan, result: Result<()>) -> Result<()> {
        if plan.writes_seen == self.entry_start_writes {
            result.map_err(|e| self.fail(e))?;
            self.empty_next_entry = plan.index;
            self.entry_start_writes += 1;
            return Ok(());
        }
        // Raced with an inline write: whichever rename came last is on disk.
        let current = self.empty_next_entry;
        self.write_entry_start(current)
    }

    /// The `entry-start` value moving the log start to `offset` must make
    /// durable first, if it differs from the one already there.
    pub(super) fn entry_start_for(&self, offset: u64) -> Option<u64> {
        if offset <= self.log_start_offset {
            return None;
        }
        let empties = offset >= self.next_offset()
            || (self.active().data_bytes == 0 && offset >= self.active().base_offset);
        let index = if empties {
            // No batch will be left: keep where entries continue.
            self.holds_batches().then(|| self.next_entry_index())?
        } else {
            // Where entries continue after the segments about to go: kept
            // durably first, so a crash that later loses every remaining
            // (not yet durable) batch restarts the entry sequence there and
            // not at an older `entry-start`.
            let gone = self
                .segments
                .iter()
                .take(self.segments.len() - 1)
                .take_while(|s| s.next_offset <= offset)
                .count();
            self.segments[..gone]
                .iter()
                .rev()
                .find_map(|s| s.last_entry_index)
                .map(|e| e + 1)
                .filter(|&f| f > self.empty_next_entry)?
        };
        (index != self.empty_next_entry).then_some(index)
    }

    pub(super) fn entry_out_of_range(&self, index: u64) -> StorageError {
        StorageError::EntryOutOfRange {
            index,
            first: self.first_entry_index(),
            next: self.next_entry_index(),
        }
    }

    /// (segment, position) of entry `index`.
    pub(super) fn locate_entry(&self, index: u64) -> Result<(usize, usize)> {
        if index < self.first_entry_index() || index >= self.next_entry_index() {
            return Err(self.entry_out_of_range(index));
        }
        // Segments with batches come first, ordered by entry index; only
        // the (empty) active segment can have none.
        let i = self
            .segments
            .partition_point(|s| s.first_entry_index.is_some_and(|e| e <= index))
            .saturating_sub(1);
        match self.segments[i].find_entry(index)? {
            Some(pos) => Ok((i, pos)),
            None => Err(StorageError::EntryNotFound {
                index,
                reason: format!(
                    "no batch of {} has it (removed by key compaction)",
                    self.segments[i].log_path.display()
                ),
            }),
        }
    }

    pub(super) fn entry_header(&self, index: u64) -> Result<BatchHeader> {
        let (i, pos) = self.locate_entry(index)?;
        self.segments[i].header_at(pos)
    }

    /// The term stamped in entry `index`'s batch header.
    pub fn entry_term(&self, index: u64) -> Result<u64> {
        Ok(self.entry_header(index)?.term)
    }

    /// The base offset of entry `index`'s batch.
    pub fn entry_base_offset(&self, index: u64) -> Result<u64> {
        Ok(self.entry_header(index)?.base_offset)
    }

    /// The offset after entry `index`'s records: base offset + record count
    /// (the high watermark once the entry is committed).
    pub fn entry_end_offset(&self, index: u64) -> Result<u64> {
        let h = self.entry_header(index)?;
        Ok(h.base_offset + u64::from(h.record_count))
    }

    #[cfg(feature = "test-util")]
    /// The bytes of entry `index` (one whole batch, CRC-checked), borrowed
    /// from the segment's map.
    pub fn read_entry(&self, index: u64) -> Result<&[u8]> {
        let (i, pos) = self.locate_entry(index)?;
        Ok(self.segments[i].batch_at(pos)?.1)
    }

    /// Entries `[lo, hi)`, one CRC-checked batch each, borrowed from the
    /// maps, at most `bytes_max` bytes in all but at least one entry when
    /// `lo < hi`. May cross segments. Stops short (returning what it has)
    /// at a damaged batch or a gap left by compaction; the next call from
    /// there reports it. `EntryOutOfRange` if `lo` is outside the entries
    /// or `hi` past [`Log::next_entry_index`].
    pub fn read_entries(&self, lo: u64, hi: u64, bytes_max: usize) -> Result<Vec<&[u8]>> {
        if hi > self.next_entry_index() {
            return Err(self.entry_out_of_range(hi));
        }
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        let (mut i, mut pos) = self.locate_entry(lo)?;
        let mut bytes = 0usize;
        let mut want = lo;
        while want < hi && i < self.segments.len() {
            let s = &self.segments[i];
            if pos >= s.data_bytes as usize {
                i += 1;
                pos = 0;
                continue;
            }
            let (h, b) = match s.batch_at(pos) {
                Ok(x) => x,
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            };
            if h.entry_index != want || (!out.is_empty() && bytes + b.len() > bytes_max) {
                break;
            }
            bytes += b.len();
            out.push(b);
            want += 1;
            pos += b.len();
        }
        Ok(out)
    }

    /// Removes entry `index` and every later one (Raft's conflict
    /// resolution): [`Log::truncate_suffix`] at its base offset. Afterwards
    /// [`Log::next_entry_index`] is `index` (above the compacted range). An
    /// index at or past the next entry index is a no-op.
    pub fn truncate_entries_from(&mut self, index: u64) -> Result<()> {
        if index >= self.next_entry_index() {
            return Ok(());
        }
        let base = self.entry_base_offset(index)?;
        self.truncate_suffix(base)
    }

    /// The entry holding record `offset` (for mapping a commit index to
    /// offsets and back); `None` outside `[log_start_offset, next_offset)`
    /// or where the batch header is damaged. An offset in a gap left by
    /// compaction belongs to the batch before it.
    pub fn entry_for_offset(&self, offset: u64) -> Option<u64> {
        if offset < self.log_start_offset || offset >= self.next_offset() {
            return None;
        }
        let i = self.segment_for(offset);
        let s = &self.segments[i];
        let h = s.header_at(s.position_holding(offset).ok()?).ok()?;
        if h.base_offset > offset && i > 0 {
            // In a gap before the segment's first batch.
            return self.segments[i - 1].last_entry_index;
        }
        Some(h.entry_index)
    }
}
