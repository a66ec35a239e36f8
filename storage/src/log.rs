//! The partition log: an ordered run of segments, the last one active.
//! Synchronous and runtime-free; one owner (a shard), no locks.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::batch::{self, BatchError, BatchHeader};
use crate::config::{LogConfig, SyncPolicy};
use crate::error::{Result, StorageError};
use crate::fault::{Fault, FaultPoint};
use crate::segment::{self, Retired, Segment, SWAP_SUFFIX};

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
    retired: Retired,
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
    /// Opens (or creates) the partition in `dir`, recovering as needed:
    /// sealed segments with a valid index are trusted (their batches are
    /// CRC-checked lazily when first read); the active segment, and any
    /// segment whose index is missing or damaged, are scanned with CRC
    /// checks; the log is cut at the first bad or torn batch.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<(Log, RecoveryReport)> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
        let mut bases = Vec::new();
        let rd = std::fs::read_dir(&dir).map_err(|e| StorageError::io("read dir", &dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| StorageError::io("read dir", &dir, e))?;
            let name = ent.file_name();
            let n = name.as_bytes();
            if n.ends_with(SWAP_SUFFIX.as_bytes())
                || n.ends_with(b".tmp")
                || n.ends_with(crate::segment::DELETED_SUFFIX.as_bytes())
            {
                // Leftover of an interrupted compaction or metadata write, or
                // a retired segment whose deletion had not run yet.
                let p = ent.path();
                std::fs::remove_file(&p).map_err(|e| StorageError::io("remove", &p, e))?;
            } else if let Some(b) = parse_base(n) {
                bases.push(b);
            }
        }
        bases.sort_unstable();
        if bases.len() > SEGMENT_COUNT_MAX {
            return Err(StorageError::Config(format!(
                "{} segments in {}, more than {SEGMENT_COUNT_MAX}",
                bases.len(),
                dir.display()
            )));
        }
        let cfg = &config;
        let interval = cfg.index_interval_bytes;
        let mut report = RecoveryReport::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len() + 1);
        let mut i = 0;
        while i < bases.len() {
            let base = bases[i];
            let last = i + 1 == bases.len();
            let expect = segments.last().map(|s| s.next_offset);
            let min_term = segments.last().map_or(0, |s| s.last_term);
            let prev_entry = segments
                .last()
                .and_then(|s| Some((s.last_entry_index?, s.last_batch_end)));
            let cut = |segments_dropped, position, reason: String, path: PathBuf| Truncation {
                path,
                position,
                reason,
                segments_dropped,
            };
            if expect.is_some_and(|e| e != base) {
                let path = segment::paths(&dir, base)[0].clone();
                let reason = format!("segment base {base} does not follow offset {expect:?}");
                report
                    .truncations
                    .push(cut(bases.len() - i, 0, reason, path));
                for &b in &bases[i..] {
                    for p in segment::paths(&dir, b) {
                        let _ = std::fs::remove_file(p);
                    }
                }
                break;
            }
            if !last {
                if let Some(s) = Segment::open_sealed(&dir, base)? {
                    // Its first entry must continue the previous segment's
                    // (else it is scanned, which cuts the log there).
                    let chained = s
                        .first_header()
                        .is_none_or(|h| segment::entry_follows(prev_entry, &h).is_ok());
                    if s.last_term >= min_term && chained {
                        segments.push(s);
                        i += 1;
                        continue;
                    }
                }
            }
            let orig_len = std::fs::metadata(segment::paths(&dir, base)[0].clone())
                .map(|m| m.len())
                .unwrap_or(0);
            let mut s = Segment::open_for_scan(&dir, base, cfg.segment_bytes_max, interval)?;
            let end = s.scan(interval, min_term, prev_entry);
            report.segments_scanned += 1;
            report.bytes_scanned += u64::from(end.valid_bytes);
            let next_base = bases.get(i + 1).copied();
            // Compaction may have removed the records at the end of a sealed
            // segment: its batches then end short of the next segment's
            // base. Such a file ends exactly after its last batch (sealed,
            // shrunk to its data, fsynced before the swap); a crash-damaged
            // one ends in zeros instead. Accept the gap only in the former.
            let compaction_gap = !last
                && end.damage.is_none()
                && orig_len > 0
                && u64::from(end.valid_bytes) == orig_len
                && next_base.is_some_and(|nb| nb > s.next_offset);
            let damaged = end.damage.clone().or_else(|| {
                next_base
                    .filter(|&nb| nb != s.next_offset && !compaction_gap)
                    .map(|nb| {
                        format!(
                            "data ends at offset {} but the next segment starts at {nb}",
                            s.next_offset
                        )
                    })
            });
            if let Some(reason) = damaged {
                let dropped = bases.len() - i - 1;
                tracing::warn!(
                    path = %s.log_path.display(),
                    position = end.valid_bytes,
                    reason = %reason,
                    dropped_segments = dropped,
                    "recovery: truncating the log at a torn or corrupt batch"
                );
                report.truncations.push(cut(
                    dropped,
                    u64::from(end.valid_bytes),
                    reason,
                    s.log_path.clone(),
                ));
                for &b in &bases[i + 1..] {
                    for p in segment::paths(&dir, b) {
                        let _ = std::fs::remove_file(p);
                    }
                }
                s.truncate(s.next_offset, interval, cfg.segment_bytes_max)?;
                segments.push(s);
                break;
            }
            if !last {
                // A sealed segment with a bad or missing index: rebuilt.
                if compaction_gap {
                    if let Some(nb) = next_base {
                        s.next_offset = nb;
                    }
                }
                s.seal(false)?;
                report.indexes_rebuilt += 1;
            } else {
                // Erase anything past the valid data (stale or torn bytes),
                // so later appends can never be followed by old batches.
                let next = s.next_offset;
                s.truncate(next, interval, cfg.segment_bytes_max)?;
            }
            segments.push(s);
            i += 1;
        }
        let log_start_file = read_log_start(&dir);
        if segments.last().is_none_or(|s| s.sealed) {
            let at = segments
                .last()
                .map_or(log_start_file.unwrap_or(0), |s| s.next_offset);
            segments.push(Segment::create(
                &dir,
                at,
                cfg.segment_bytes_max,
                interval,
                false,
            )?);
        }
        report.segments = segments.len();
        let first_base = segments[0].base_offset;
        let next = segments.last().map_or(0, |s| s.next_offset);
        let log_start = log_start_file.unwrap_or(first_base).clamp(first_base, next);
        let empty_next_entry = read_u64_file(&dir, ENTRY_START_FILE).unwrap_or(1).max(1);
        if let Some(b) = &cfg.disk_budget {
            b.take(segments.iter().map(Segment::disk_bytes).sum());
        }
        let active_base = segments.last().map_or(0, |s| s.base_offset);
        let mut log = Log {
            dir,
            config,
            segments,
            log_start_offset: log_start,
            empty_next_entry,
            entry_start_writes: 0,
            blocking_syncs: 0,
            // What recovery found is on disk or in the page cache; only a
            // sync in this process proves the former, so durability restarts
            // at the active segment.
            durable_offset: active_base.max(log_start),
            poisoned: None,
            epoch: 0,
            dir_epoch: 1,
            dir_synced_epoch: 0,
            space_full: false,
            space_unchecked_bytes: SPACE_CHECK_INTERVAL_BYTES,
            last_sync_ms: 0,
            retired: Retired::default(),
        };
        if log_start_file.is_some_and(|v| v != log_start) {
            // The file claimed a start past the recovered end (its data was
            // lost in a crash): store what holds now, or a later append
            // would bring the old value back into range.
            log.write_log_start()?;
        }
        Ok((log, report))
    }

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

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.base_offset).collect()
    }

    /// Whether writes are refused until reopen, and why.
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
    fn holds_batches(&self) -> bool {
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
    fn write_entry_start(&mut self, index: u64) -> Result<()> {
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
    fn entry_start_for(&self, offset: u64) -> Option<u64> {
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

    fn entry_out_of_range(&self, index: u64) -> StorageError {
        StorageError::EntryOutOfRange {
            index,
            first: self.first_entry_index(),
            next: self.next_entry_index(),
        }
    }

    /// (segment, position) of entry `index`.
    fn locate_entry(&self, index: u64) -> Result<(usize, usize)> {
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

    fn entry_header(&self, index: u64) -> Result<BatchHeader> {
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

    fn delete_segment_files(&mut self, s: Segment) -> Result<()> {
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
    fn write_log_start(&mut self) -> Result<()> {
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

/// `entry-start` to write before a log-start move, prepared on the shard
/// by [`Log::plan_move_start`] and written off it: its two fsyncs must not
/// stall a shard's other partitions.
#[derive(Debug)]
pub struct StartPlan {
    dir: PathBuf,
    index: u64,
    writes_seen: u64,
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
fn write_entry_start_file(dir: &Path, tmp_suffix: &str, index: u64) -> Result<()> {
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

fn read_log_start(dir: &Path) -> Option<u64> {
    read_u64_file(dir, LOG_START_FILE)
}

/// A `u64 LE + crc32c` file (`log-start`, `entry-start`); `None` if it is
/// missing or damaged.
fn read_u64_file(dir: &Path, name: &str) -> Option<u64> {
    let b = std::fs::read(dir.join(name)).ok()?;
    if b.len() != 12 {
        return None;
    }
    let v: [u8; 8] = b[..8].try_into().ok()?;
    let crc: [u8; 4] = b[8..].try_into().ok()?;
    (crc32c::crc32c(&v) == u32::from_le_bytes(crc)).then(|| u64::from_le_bytes(v))
}

#[cold]
fn unreachable_active() -> ! {
    // Every constructor and every removal keeps at least one segment.
    panic!("storage invariant broken: log without an active segment")
}
