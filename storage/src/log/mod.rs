//! The partition log: an ordered run of segments, the last one active.
//! Synchronous and runtime-free; one owner (a shard), no locks.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::config::{LogConfig, SyncPolicy};
use crate::error::{Result, StorageError};
use crate::fault::{Fault, FaultPoint};
use crate::segment::{self, Retired, Segment, SWAP_SUFFIX};
use wire::batch::{self, BatchError, BatchHeader};

// `Log` by job: recovery (`open`), the Raft-entry view, the log start
// (retention), sync rounds. The type and its appends and reads live here.
mod entries;
mod recovery;
mod retention;
mod sync;

use retention::write_entry_start_file;
pub use retention::StartPlan;
pub use sync::blocking_sync;

/// Free space is checked (statvfs) after every 1 MiB appended, and on every
/// append while below the floor: at 1 GB/s that is ~1000 cheap syscalls a
/// second, and the floor can be overshot by at most 1 MiB per partition.
const SPACE_CHECK_INTERVAL_BYTES: u64 = 1 << 20;
/// File holding the log start offset (u64 LE + crc32c of those 8 bytes).
pub(crate) const LOG_START_FILE: &str = "log-start";
/// File holding the entry index the log continues at while it holds no
/// batch (u64 LE + crc32c of those 8 bytes); see [`Log::next_entry_index`].
pub(crate) const ENTRY_START_FILE: &str = "entry-start";
/// Most segments a partition may have: 1 TiB of default 128 MiB segments
/// (8192), with 8x headroom for small segments. Bounds open files and maps.
pub const SEGMENT_COUNT_MAX: usize = 65_536;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    pub term: u64,
    /// The Raft entry index stamped into the batch.
    pub entry_index: u64,
}

/// The last batch in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastBatch {
    pub base_offset: u64,
    /// The offset after the batch's last record, minus one.
    pub last_offset: u64,
    pub term: u64,
    /// The batch's Raft entry index.
    pub entry_index: u64,
}

/// Bytes borrowed from the map: whole batches, all with valid CRCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOut<'a> {
    pub bytes: &'a [u8],
    /// Where the next read should start.
    pub next_offset: u64,
}

/// One place where recovery cut the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub path: PathBuf,
    pub position: u64,
    pub reason: String,
    /// Later segment files deleted because they followed the damage.
    pub segments_dropped: usize,
}

/// What `Log::open` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Segments whose bytes were scanned with CRC checks (the active one,
    /// and any sealed one whose index was missing or damaged).
    pub segments_scanned: usize,
    pub bytes_scanned: u64,
    pub indexes_rebuilt: usize,
    pub truncations: Vec<Truncation>,
}

/// Files and targets one fdatasync round covers. Produced by
/// [`Log::begin_sync`], performed by a syncer (io_uring on a shard, or
/// [`Log::sync_now`]), and handed back with [`Log::finish_sync`].
#[derive(Debug)]
pub struct SyncJob {
    pub files: Vec<SyncFile>,
    /// The partition directory needs an fsync too (files made or removed).
    pub dir: Option<PathBuf>,
    target_offset: u64,
    epoch: u64,
    dir_epoch: u64,
    marks: Vec<(u64, (u64, u64), u32, bool)>,
}

#[derive(Debug, Clone)]
pub struct SyncFile {
    pub path: PathBuf,
    /// (device, inode): a syncer may cache open files by it.
    pub file_id: (u64, u64),
    pub file: Rc<File>,
}

/// What retention or `move_start` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub segments: usize,
    pub bytes: u64,
}

pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// Ordered by base offset, chained (`next_offset` of one is the base of
    /// the next); the last is the active segment and is never sealed.
    pub(crate) segments: Vec<Segment>,
    log_start_offset: u64,
    /// The entry index of the next append while the log holds no batch
    /// (otherwise the last batch's entry index + 1 rules).
    empty_next_entry: u64,
    /// Writes of `entry-start` so far (to notice one racing a [`StartPlan`]).
    entry_start_writes: u64,
    /// See [`Log::blocking_syncs`].
    blocking_syncs: u64,
    durable_offset: u64,
    poisoned: Option<String>,
    /// Bumped by every truncation, so a sync that raced one does not
    /// declare the replaced bytes durable.
    epoch: u64,
    dir_epoch: u64,
    dir_synced_epoch: u64,
    space_full: bool,
    space_unchecked_bytes: u64,
    last_sync_ms: i64,
    /// Retired segment files awaiting deletion by the caller.
    pub(crate) retired: Retired,
}

fn parse_base(name: &[u8]) -> Option<u64> {
    let stem = name.strip_suffix(b".log")?;
    if stem.len() != 20 || !stem.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(stem).ok()?.parse().ok()
}

/// Bytes available to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| StorageError::Config(format!("path with NUL: {}", dir.display())))?;
    let mut st: libc::statvfs = unsafe_zeroed_statvfs();
    // SAFETY: c is a valid C string, st a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(StorageError::io("statvfs", dir, io::Error::last_os_error()));
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn unsafe_zeroed_statvfs() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct of integers; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl Log {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.active().next_offset
    }

    /// Every offset below this is on disk (covered by a completed fdatasync).
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset.min(self.next_offset())
    }

    /// Total bytes of batches held.
    pub fn data_bytes(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.data_bytes)).sum()
    }

    #[cfg(feature = "test-util")]
    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.base_offset).collect()
    }

    /// Whether writes are refused until reopen, and why.
    /// The base offset of the active segment: everything below it is sealed.
    pub fn active_base_offset(&self) -> u64 {
        self.active().base_offset
    }

    /// Data bytes of the segments that hold offsets at or after `offset`
    /// (the segment holding it counts whole): about what a replica that
    /// has everything below `offset` would have to replay.
    pub fn bytes_from(&self, offset: u64) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.next_offset > offset)
            .map(|s| u64::from(s.data_bytes))
            .sum()
    }

    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    pub(crate) fn active(&self) -> &Segment {
        let s = self.segments.last();
        debug_assert!(s.is_some(), "a log always has an active segment");
        match s {
            Some(s) => s,
            None => unreachable_active(),
        }
    }

    fn active_mut(&mut self) -> &mut Segment {
        match self.segments.last_mut() {
            Some(s) => s,
            None => unreachable_active(),
        }
    }

    pub(crate) fn writable(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(r) => Err(StorageError::Poisoned {
                path: self.dir.clone(),
                reason: r.clone(),
            }),
        }
    }

    pub(crate) fn poison(&mut self, err: StorageError) -> StorageError {
        if self.poisoned.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %err, "partition refuses writes until reopened");
            self.poisoned = Some(err.to_string());
        }
        // A poisoned log is never worth a retry: say so to the caller.
        if err.is_retriable() {
            return StorageError::Poisoned {
                path: self.dir.clone(),
                reason: err.to_string(),
            };
        }
        err
    }

    /// A fatal error poisons; a retriable one passes through.
    fn fail(&mut self, err: StorageError) -> StorageError {
        if err.is_retriable() {
            err
        } else {
            self.poison(err)
        }
    }

    /// Simulates a power cut: every byte not covered by a completed sync is
    /// lost, index files not yet synced vanish; the log refuses all writes.
    pub(crate) fn power_cut(&mut self, point: FaultPoint) -> StorageError {
        for s in &mut self.segments {
            s.lose_unsynced();
            if s.index_dirty {
                let _ = std::fs::remove_file(&s.index.path);
                let _ = std::fs::remove_file(&s.time_index.path);
            }
        }
        self.poisoned = Some(format!("simulated power cut at {point}"));
        StorageError::Crashed {
            point: point.name(),
        }
    }

    /// Applies an armed fault at `point`: `Ok(true)` for a torn write the
    /// caller must simulate, `Ok(false)` for no fault.
    fn fault(&mut self, point: FaultPoint, path: &Path) -> Result<bool> {
        let tearable = matches!(point, FaultPoint::Append | FaultPoint::IndexWrite);
        match self.config.faults.hit(point) {
            None => Ok(false),
            Some(Fault::TornWrite) if tearable => Ok(true),
            Some(Fault::PowerCut) => Err(self.power_cut(point)),
            Some(f) => Err(self.fail(StorageError::io(point.name(), path, f.io_error()))),
        }
    }

    /// Leader append: stamps the next offset, `term` and the next entry
    /// index ([`Log::next_entry_index`]) into the batch.
    pub fn append(&mut self, batch: &[u8], term: u64) -> Result<AppendInfo> {
        let entry_index = self.next_entry_index();
        self.append_entry(batch, term, entry_index)
    }

    /// Appends the Raft entry `entry_index` holding `batch`: stamps the next
    /// offset, `term` and `entry_index` into the stored bytes (the caller's
    /// buffer is not changed). `entry_index` must be
    /// [`Log::next_entry_index`] (`NotContiguous` otherwise, nothing written).
    pub fn append_entry(
        &mut self,
        batch: &[u8],
        term: u64,
        entry_index: u64,
    ) -> Result<AppendInfo> {
        let mut h = self.check_batch(batch, term)?;
        self.check_entry_index(entry_index)?;
        h.base_offset = self.next_offset();
        h.term = term;
        h.entry_index = entry_index;
        self.append_checked(batch, h)
    }

    /// Follower append: the batch already carries base offset, term and
    /// entry index, all kept; the base must be the next offset and the entry
    /// index the next entry index.
    pub fn append_replicated(&mut self, batch: &[u8]) -> Result<AppendInfo> {
        // The term check uses the batch's own stamped term.
        let term = batch::header(batch)?.term;
        let h = self.check_batch(batch, term)?;
        if h.base_offset != self.next_offset() {
            return Err(StorageError::NotContiguous {
                reason: format!(
                    "base offset {} but the log ends at {}",
                    h.base_offset,
                    self.next_offset()
                ),
            });
        }
        self.check_entry_index(h.entry_index)?;
        self.append_checked(batch, h)
    }

    fn check_entry_index(&self, entry_index: u64) -> Result<()> {
        let next = self.next_entry_index();
        if entry_index != next {
            return Err(StorageError::NotContiguous {
                reason: format!("entry index {entry_index} but the next entry index is {next}"),
            });
        }
        Ok(())
    }

    fn check_batch(&self, batch: &[u8], term: u64) -> Result<BatchHeader> {
        self.writable()?;
        let h = batch::check(batch)?;
        if h.record_count == 0 {
            // Header-only batches exist only as compaction placeholders.
            return Err(BatchError::BadRecordCount { record_count: 0 }.into());
        }
        if h.batch_bytes as usize != batch.len() {
            return Err(BatchError::Short {
                have: batch.len(),
                need: h.batch_bytes as usize,
            }
            .into());
        }
        if h.batch_bytes > self.config.segment_bytes_max {
            return Err(StorageError::BatchTooLarge {
                batch_bytes: h.batch_bytes,
                segment_bytes_max: self.config.segment_bytes_max,
            });
        }
        if let Some(last) = self.last_batch() {
            if term < last.term {
                return Err(StorageError::NotContiguous {
                    reason: format!("term {term} below the last batch's term {}", last.term),
                });
            }
        }
        Ok(h)
    }

    fn append_checked(&mut self, batch: &[u8], h: BatchHeader) -> Result<AppendInfo> {
        self.check_space(batch.len() as u64)?;
        let now = self.config.clock.now_ms();
        let active = self.active();
        let aged = self.config.segment_age_ms_max > 0
            && active
                .first_append_ms
                .is_some_and(|t| now.saturating_sub(t) >= self.config.segment_age_ms_max as i64);
        if active.data_bytes > 0 && (!active.has_room(batch.len()) || aged) {
            self.roll()?;
        }
        let path = self.active().log_path.clone();
        let torn = self.fault(FaultPoint::Append, &path)?;
        let interval = self.config.index_interval_bytes;
        let active = self.active_mut();
        if let Err(e) = active.append(batch, &h, interval, torn) {
            return Err(self.fail(StorageError::io("append", path, e)));
        }
        active.first_append_ms.get_or_insert(now);
        Ok(AppendInfo {
            base_offset: h.base_offset,
            last_offset: h.base_offset + u64::from(h.record_count) - 1,
            term: h.term,
            entry_index: h.entry_index,
        })
    }

    /// True while the last append was refused for lack of space (it
    /// clears when an append succeeds again). Lets a caller refuse new work
    /// early without trying an append.
    pub fn space_full(&self) -> bool {
        self.space_full
    }

    fn check_space(&mut self, incoming: u64) -> Result<()> {
        self.space_unchecked_bytes += incoming;
        if !self.space_full && self.space_unchecked_bytes < SPACE_CHECK_INTERVAL_BYTES {
            return Ok(());
        }
        self.space_unchecked_bytes = 0;
        let free = free_bytes(&self.dir)?;
        self.space_full = free < self.config.free_bytes_floor;
        if self.space_full {
            // Check again on the next append, so writes resume as soon as
            // space returns.
            return Err(StorageError::DiskFull {
                op: "append",
                path: self.dir.clone(),
                detail: format!(
                    "{free} bytes free, below the floor of {}",
                    self.config.free_bytes_floor
                ),
            });
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one at the next offset.
    /// A no-op on an empty active segment.
    pub fn roll(&mut self) -> Result<()> {
        self.writable()?;
        if self.active().data_bytes == 0 {
            return Ok(());
        }
        if self.segments.len() >= SEGMENT_COUNT_MAX {
            return Err(StorageError::DiskFull {
                op: "roll",
                path: self.dir.clone(),
                detail: format!("{SEGMENT_COUNT_MAX} segments; retention must free some"),
            });
        }
        let path = self.dir.clone();
        self.fault(FaultPoint::Roll, &path)?;
        let cap = self.config.segment_bytes_max;
        if let Some(b) = &self.config.disk_budget {
            if !b.try_take(u64::from(cap)) {
                return Err(StorageError::DiskFull {
                    op: "roll",
                    path,
                    detail: format!("broker disk budget spent ({} bytes used)", b.bytes_used()),
                });
            }
        }
        let next = self.next_offset();
        let made = Segment::create(
            &self.dir,
            next,
            cap,
            self.config.index_interval_bytes,
            false,
        );
        let new = match made {
            Ok(s) => s,
            Err(e) => {
                if let Some(b) = &self.config.disk_budget {
                    b.give(u64::from(cap));
                }
                return Err(self.fail(e));
            }
        };
        let ix_path = self.active().index.path.clone();
        let torn = match self.fault(FaultPoint::IndexWrite, &ix_path) {
            Ok(t) => t,
            Err(e) => {
                // Keep the new file out of the way: the old segment stays active.
                let _ = new.delete_files();
                return Err(e);
            }
        };
        let old = self.active_mut();
        let freed = u64::from(old.capacity_bytes - old.data_bytes);
        if let Err(e) = old.seal(torn) {
            let _ = new.delete_files();
            return Err(self.fail(e));
        }
        if let Some(b) = &self.config.disk_budget {
            b.give(freed);
        }
        self.segments.push(new);
        self.dir_epoch += 1;
        Ok(())
    }

    /// Bytes from `from_offset`: whole batches starting with the one that
    /// holds it, at most `bytes_max` (but at least one batch), and only
    /// batches whose last offset is below `end_offset` (the commit index,
    /// exclusive). Never crosses a segment; read again at `next_offset`.
    pub fn read(&self, from_offset: u64, bytes_max: usize, end_offset: u64) -> Result<ReadOut<'_>> {
        let next = self.next_offset();
        if from_offset < self.log_start_offset || from_offset > next {
            return Err(StorageError::OffsetOutOfRange {
                offset: from_offset,
                start: self.log_start_offset,
                end: next,
            });
        }
        if from_offset == next {
            return Ok(ReadOut {
                bytes: &[],
                next_offset: next,
            });
        }
        let mut i = self.segment_for(from_offset);
        while i + 1 < self.segments.len() && from_offset >= self.segments[i].next_offset {
            i += 1;
        }
        let s = &self.segments[i];
        let (range, next_offset) = s.read(from_offset, bytes_max, end_offset)?;
        Ok(ReadOut {
            bytes: s.slice(range),
            next_offset,
        })
    }

    /// Index of the segment whose span holds `offset` (the last with base <= it).
    fn segment_for(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    #[cfg(feature = "test-util")]
    /// Term of the batch holding `offset`.
    pub fn term_at(&self, offset: u64) -> Result<u64> {
        let next = self.next_offset();
        if offset < self.log_start_offset || offset >= next {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset,
                end: next,
            });
        }
        let s = &self.segments[self.segment_for(offset)];
        Ok(s.batch_holding(offset)?.term)
    }

    /// Base offset of the first batch with a timestamp at or after `ts`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>> {
        for s in &self.segments {
            if s.data_bytes > 0 && s.max_timestamp_ms >= ts {
                return s.offset_for_timestamp(ts);
            }
        }
        Ok(None)
    }

    /// The last batch, if the log holds any.
    pub fn last_batch(&self) -> Option<LastBatch> {
        let s = self
            .segments
            .iter()
            .rev()
            .find(|s| s.last_batch_base.is_some())?;
        Some(LastBatch {
            base_offset: s.last_batch_base?,
            last_offset: s.next_offset - 1,
            term: s.last_term,
            entry_index: s.last_entry_index?,
        })
    }

    /// Removes every batch at or above `offset` (a batch boundary) — Raft's
    /// conflict resolution. The removed bytes are zeroed and later segments
    /// deleted; both become durable with the next sync.
    pub fn truncate_suffix(&mut self, offset: u64) -> Result<()> {
        self.writable()?;
        let next = self.next_offset();
        if offset >= next {
            return Ok(());
        }
        if offset < self.log_start_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset,
                end: next,
            });
        }
        let i = self.segment_for(offset);
        let path = self.segments[i].log_path.clone();
        self.fault(FaultPoint::Truncate, &path)?;
        // Check the boundary before changing anything.
        let h = self.segments[i].batch_holding(offset)?;
        if h.base_offset != offset && offset != self.segments[i].base_offset {
            return Err(StorageError::NotBatchBoundary { offset });
        }
        if i == 0 && self.segments[0].first_entry_index == Some(h.entry_index) {
            // The log is left without a batch: keep where entries continue.
            self.write_entry_start(h.entry_index)?;
        }
        // Cut the segment that holds `offset` before deleting the later
        // ones: a failure while reopening or zeroing it then leaves the log
        // whole (recovery rebuilds its index), and one while deleting leaves
        // a segment that ends short of its successor, which recovery cuts
        // there. Deleting first could leave a log ending at this segment's
        // old end, neither before nor after the truncation.
        let interval = self.config.index_interval_bytes;
        let cap = self.config.segment_bytes_max;
        let s = &mut self.segments[i];
        let before = s.disk_bytes();
        if let Err(e) = s.truncate(offset, interval, cap) {
            return Err(self.poison(e));
        }
        let grown = s.disk_bytes().saturating_sub(before);
        if let Some(b) = &self.config.disk_budget {
            b.take(grown);
        }
        while self.segments.len() > i + 1 {
            if let Some(s) = self.segments.pop() {
                if let Err(e) = s.delete_files() {
                    return Err(self.poison(e));
                }
                if let Some(b) = &self.config.disk_budget {
                    b.give(s.disk_bytes());
                }
                self.dir_epoch += 1;
            }
        }
        self.epoch += 1;
        self.durable_offset = self.durable_offset.min(offset);
        Ok(())
    }
}

#[cold]
fn unreachable_active() -> ! {
    // Every constructor and every removal keeps at least one segment.
    panic!("storage invariant broken: log without an active segment")
}
