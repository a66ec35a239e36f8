//! Key compaction for compacted topics ([`Cleanup::Compact`]): sealed
//! segments below a caller-given bound are rewritten keeping only the newest
//! record per key; tombstones (null value) go once their batch is older than
//! the grace. Offsets never change: a rewritten batch keeps its header (base
//! offset, term, timestamps) and its records keep their offset deltas, so
//! batches may have gaps. A batch left without records is dropped, except a
//! segment's last batch, which stays as a header-only placeholder so the
//! segment keeps its last base offset and term (Raft's view of it).
//!
//! Each segment is swapped atomically: `<base>.{log,index,timeindex}.swap`
//! are written, fdatasync'ed, renamed over the originals (indexes first, the
//! log last: a crash between leaves the old log beside new indexes, whose
//! footer then fails its check against the file and the index is rebuilt
//! from the old log), and the directory is fsync'ed. Leftover `*.swap`
//! files are removed by `Log::open`. Segments are rewritten oldest first, so
//! a crash can never leave a dropped tombstone while an older value of its
//! key survives in an older segment.
//!
//! A round has three steps: [`Log::plan_compaction`] (on the log's thread,
//! cheap), [`CompactJob::run`] (the reading, writing, fdatasyncs and renames;
//! blocking, on a thread that may block, paced to a byte rate), and
//! [`Log::finish_compaction`] (on the log's thread: reopens each rewritten
//! segment and swaps it in). The renames exchange the files
//! (`RENAME_EXCHANGE`), so a segment that retention removed meanwhile is
//! never brought back: the job skips it, and so does the finish.
//! [`Log::compact`] runs the three in a row on the caller's thread.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Cleanup, DiskBudget};
use crate::error::{Result, StorageError};
use crate::fault::{Fault, FaultPoint};
use crate::log::Log;
use crate::segment::{self, Segment};
use wire::batch::{self, RecordBatch};

/// Distinct keys one compaction round remembers: 1 Mi keys. With the byte
/// cap below the map stays under ~150 MiB (64 MiB of keys plus ~80 bytes of
/// hash-map and `Vec` overhead per key). When a round runs out, it compacts
/// only the segments its map fully covers; the next round goes further.
pub const COMPACT_KEY_COUNT_MAX: usize = 1 << 20;
/// Key bytes one compaction round remembers: 64 MiB.
pub const COMPACT_KEY_BYTES_MAX: usize = 64 << 20;

/// What [`Log::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Every segment that ends at or below this offset was examined with a
    /// key map covering it: none of its records is superseded by another
    /// record below this offset, and none of its tombstones had expired.
    pub clean_offset: u64,
    pub segments_rewritten: usize,
    pub records_removed: u64,
    /// Whole batches dropped (all records removed).
    pub batches_removed: u64,
    /// Data bytes of the rewritten segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The newest offset of every key below some bound.
type KeyMap = HashMap<Vec<u8>, u64>;

/// Which records of one batch stay.
enum Verdict<'a> {
    All,
    Some(Vec<&'a [u8]>),
}

/// Decides the records of a verified batch. A batch with a malformed record
/// is kept whole (its keys cannot be known).
fn judge<'a>(bytes: &'a [u8], newest: &KeyMap, expire_before_ms: i64) -> Result<Verdict<'a>> {
    let h = batch::header(bytes)?;
    let tombstone_expired = h.max_timestamp_ms < expire_before_ms;
    let mut kept = Vec::new();
    let mut all = true;
    let Ok(records) = RecordBatch::parse_without_crc(bytes).map(|b| b.records()) else {
        return Ok(Verdict::All);
    };
    for r in records {
        let Ok(r) = r else {
            return Ok(Verdict::All);
        };
        let offset = r.offset;
        let keep = match r.key {
            // Records without a key cannot be superseded.
            None => true,
            Some(k) => {
                newest.get(k).is_none_or(|&o| o == offset)
                    && (r.value.is_some() || !tombstone_expired)
            }
        };
        if keep {
            kept.push(r.raw);
        } else {
            all = false;
        }
    }
    Ok(if all {
        Verdict::All
    } else {
        Verdict::Some(kept)
    })
}

/// Counts what compaction would remove from a segment: (records, batches).
fn removals(
    s: &Segment,
    newest: &KeyMap,
    expire_before_ms: i64,
    pacer: &mut Pacer,
) -> Result<(u64, u64)> {
    let (mut records, mut batches) = (0u64, 0u64);
    let end = s.data_bytes as usize;
    let mut pos = 0;
    while pos < end {
        let (h, bytes) = s.batch_at(pos)?;
        pacer.note(bytes.len());
        if let Verdict::Some(kept) = judge(bytes, newest, expire_before_ms)? {
            records += u64::from(h.record_count) - kept.len() as u64;
            let last = pos + bytes.len() == end;
            if kept.is_empty() && !last {
                batches += 1;
            }
        }
        pos += h.batch_bytes as usize;
    }
    Ok((records, batches))
}

/// Writes the compacted copy of `old` as `.swap` files, sealed, not synced.
fn write_swap(
    dir: &Path,
    old: &Segment,
    newest: &KeyMap,
    expire_before_ms: i64,
    interval: u32,
    pacer: &mut Pacer,
) -> Result<Segment> {
    let mut new = Segment::create(dir, old.base_offset, old.data_bytes, interval, true)?;
    let written = (|| {
        let end = old.data_bytes as usize;
        let mut pos = 0;
        let mut written_back = 0u32;
        while pos < end {
            let (h, bytes) = old.batch_at(pos)?;
            pacer.note(bytes.len());
            let last = pos + bytes.len() == end;
            pos += h.batch_bytes as usize;
            let rebuilt;
            let out: &[u8] = match judge(bytes, newest, expire_before_ms)? {
                Verdict::All => bytes,
                Verdict::Some(kept) if kept.is_empty() && !last => continue,
                Verdict::Some(kept) => {
                    rebuilt = batch::rebuild(bytes, &kept);
                    &rebuilt
                }
            };
            pacer.note(out.len());
            let oh = batch::header(out)?;
            new.append(out, &oh, interval, false)
                .map_err(|e| StorageError::io("compact write", &new.log_path, e))?;
            if new.data_bytes - written_back >= WRITEBACK_CHUNK_BYTES {
                let file = new
                    .handle()
                    .map_err(|e| StorageError::io("open", &new.log_path, e))?;
                start_writeback(&file, written_back, new.data_bytes - written_back);
                written_back = new.data_bytes;
            }
        }
        // The segment keeps its span even if its last records went.
        new.next_offset = old.next_offset;
        new.seal(false)
    })();
    if let Err(e) = written {
        let _ = new.delete_files();
        return Err(e);
    }
    Ok(new)
}

/// Bytes of a rewritten segment handed to the kernel's writeback at a time
/// (`sync_file_range`), so that its fdatasync finds little left and the
/// disk sees a steady trickle rather than a segment-sized burst competing
/// with produce fdatasyncs: 1 MiB is ~30 ms of the default 32 MB/s budget.
const WRITEBACK_CHUNK_BYTES: u32 = 1 << 20;

/// Starts writing `[from, from + len)` of `file` back to disk without
/// waiting. Advisory: the fdatasync after it reports any error.
fn start_writeback(file: &File, from: u32, len: u32) {
    // SAFETY: a plain syscall on a descriptor we own.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            i64::from(from),
            i64::from(len),
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn sync_swap(new: &mut Segment) -> io::Result<()> {
    new.handle()?.sync_data()?;
    new.index.file()?.sync_data()?;
    new.time_index.file()?.sync_data()
}

/// Paces the bytes a compaction reads and writes to a rate by sleeping
/// between batches. It runs on a thread that may block (never a shard).
struct Pacer {
    /// 0: unpaced.
    bytes_per_sec_max: u64,
    start: Instant,
    bytes: u64,
}

/// Shortest pause the pacer takes: a sleep wakes up to a scheduler tick
/// (1-4 ms) late, so shorter ones would cost wake-ups without smoothing.
const PACE_SLEEP_MIN: Duration = Duration::from_millis(5);

impl Pacer {
    fn new(bytes_per_sec_max: u64) -> Pacer {
        Pacer {
            bytes_per_sec_max,
            start: Instant::now(),
            bytes: 0,
        }
    }

    fn note(&mut self, bytes: usize) {
        if self.bytes_per_sec_max == 0 {
            return;
        }
        self.bytes += bytes as u64;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec_max as f64);
        let ahead = due.saturating_sub(self.start.elapsed());
        if ahead >= PACE_SLEEP_MIN {
            std::thread::sleep(ahead);
        }
    }
}

/// Called at the three stages of each segment swap (`renamed`: after the
/// renames) with the file concerned: the fault point in [`Log::compact`],
/// nothing off the shard.
type StageHook<'a> = &'a mut dyn FnMut(bool, &Path) -> Result<()>;

/// A failure of the blocking part, and whether a segment's renames had
/// happened (then the log must be poisoned).
type JobFailure = (StorageError, bool);

/// The blocking part of a compaction round, planned on the log's thread by
/// [`Log::plan_compaction`]: everything it needs, by value (`Send`).
/// [`CompactJob::run`] opens the sealed segments by path (sealed files
/// change only by compaction, which runs one round at a time per log),
/// builds the key map, writes, fdatasyncs and renames the rewritten
/// segments; [`Log::finish_compaction`] then swaps them in on the log's
/// thread. Until then the log keeps reading its old maps (the replaced
/// inodes stay mapped).
#[derive(Debug)]
pub struct CompactJob {
    dir: PathBuf,
    index_interval_bytes: u32,
    /// Sealed segments that start below `bound`, oldest first.
    bases: Vec<u64>,
    bound: u64,
    expire_before_ms: i64,
    disk_budget: Option<Arc<DiskBudget>>,
    /// The log's first offset when planned: where the clean prefix starts.
    first_offset: u64,
    /// End of the last sealed segment at or below `bound`: the furthest
    /// this round's clean offset can get.
    reach_offset: u64,
    /// (entry index, term) of that segment's last batch.
    last_entry: Option<(u64, u64)>,
    bytes_per_sec_max: u64,
    /// Set from outside: stop at the next segment (see [`CompactJob::stopper`]).
    stop: Arc<AtomicBool>,
}

/// One segment renamed into place by a [`CompactJob`].
#[derive(Debug)]
struct Swapped {
    base_offset: u64,
    records_removed: u64,
    batches_removed: u64,
}

/// What a [`CompactJob`] did on disk, for [`Log::finish_compaction`].
#[derive(Debug)]
pub struct CompactDone {
    dir: PathBuf,
    swapped: Vec<Swapped>,
    clean_offset: u64,
    failure: Option<JobFailure>,
}

impl CompactJob {
    /// Caps the bytes the job reads and writes per second (0: no cap).
    pub fn pace(&mut self, bytes_per_sec_max: u64) {
        self.bytes_per_sec_max = bytes_per_sec_max;
    }

    /// A flag that, once set (from any thread), makes the job stop at the
    /// next segment it reads or rewrites, before touching that segment's
    /// files: a snapshot or a deletion need not wait out a long round.
    /// Segments swapped before are reported as usual.
    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The last entry (index, term) of the range this round may rewrite,
    /// `None` if it can rewrite nothing. Batches below it may lose entries:
    /// Raft must not replicate from there once a segment is swapped.
    pub fn last_entry(&self) -> Option<(u64, u64)> {
        self.last_entry
    }

    /// The furthest offset this round's clean offset can reach: a caller
    /// that knows the log is clean up to here has nothing to run.
    pub fn reach_offset(&self) -> u64 {
        self.reach_offset
    }

    /// Runs the round. Blocking: reads the sealed bytes below the bound
    /// twice, writes the rewritten segments once, fdatasyncs each and the
    /// directory. Never on a shard thread.
    pub fn run(self) -> CompactDone {
        self.run_with(&mut |_, _| Ok(()))
    }

    fn run_with(self, hook: StageHook) -> CompactDone {
        let mut done = CompactDone {
            dir: self.dir.clone(),
            swapped: Vec::new(),
            clean_offset: self.first_offset,
            failure: None,
        };
        let mut pacer = Pacer::new(self.bytes_per_sec_max);
        if let Err(f) = self.compact_into(&mut done, &mut pacer, hook) {
            done.failure = Some(f);
        }
        done
    }

    fn compact_into(
        &self,
        done: &mut CompactDone,
        pacer: &mut Pacer,
        hook: StageHook,
    ) -> Result<(), JobFailure> {
        let before = |e| (e, false);
        let (segments, bound) = self.open_segments().map_err(before)?;
        let stop = &*self.stop;
        let (newest, map_end) = key_map(&segments, bound, pacer, stop).map_err(before)?;
        // Bounded by the segment count; oldest first (see the module doc).
        for s in segments.iter().take_while(|s| s.next_offset <= map_end) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (records, batches) =
                removals(s, &newest, self.expire_before_ms, pacer).map_err(before)?;
            if records > 0 && self.rewrite(s, &newest, pacer, hook)? {
                done.swapped.push(Swapped {
                    base_offset: s.base_offset,
                    records_removed: records,
                    batches_removed: batches,
                });
            }
            done.clean_offset = s.next_offset;
        }
        Ok(())
    }

    /// Opens the planned segments, skipping those retention removed since
    /// (their log file is gone); stops at one whose index does not check
    /// out, which caps the bound there.
    fn open_segments(&self) -> Result<(Vec<Segment>, u64)> {
        let mut out = Vec::with_capacity(self.bases.len());
        for &base in &self.bases {
            let log_path = &segment::paths(&self.dir, base)[0];
            if !log_path.exists() {
                continue;
            }
            match Segment::open_sealed(&self.dir, base)? {
                Some(s) => out.push(s),
                None => return Ok((out, self.bound.min(base))),
            }
        }
        Ok((out, self.bound))
    }

    /// Rewrites one segment and renames it into place; `Ok(false)` if the
    /// segment vanished (retention) before its renames.
    fn rewrite(
        &self,
        old: &Segment,
        newest: &KeyMap,
        pacer: &mut Pacer,
        hook: StageHook,
    ) -> Result<bool, JobFailure> {
        let temp_bytes = u64::from(old.data_bytes);
        if let Some(b) = &self.disk_budget {
            if !b.try_take(temp_bytes) {
                let e = StorageError::DiskFull {
                    op: "compact",
                    path: self.dir.clone(),
                    detail: format!("broker disk budget spent ({} bytes used)", b.bytes_used()),
                };
                return Err((e, false));
            }
        }
        let r = self.swap_files(old, newest, pacer, hook);
        if let Some(b) = &self.disk_budget {
            b.give(temp_bytes);
        }
        r
    }

    fn swap_files(
        &self,
        old: &Segment,
        newest: &KeyMap,
        pacer: &mut Pacer,
        hook: StageHook,
    ) -> Result<bool, JobFailure> {
        let base = old.base_offset;
        let interval = self.index_interval_bytes;
        let mut new = write_swap(
            &self.dir,
            old,
            newest,
            self.expire_before_ms,
            interval,
            pacer,
        )
        .map_err(|e| (e, false))?;
        let swap_log = new.log_path.clone();
        let renamed = (|| {
            hook(false, &swap_log)?;
            sync_swap(&mut new).map_err(|e| StorageError::io("fdatasync", &swap_log, e))?;
            hook(false, &swap_log)?;
            let [log_p, ix_p, tix_p] = segment::paths(&self.dir, base);
            for (from, to) in [
                (&new.index.path, &ix_p),
                (&new.time_index.path, &tix_p),
                (&new.log_path, &log_p),
            ] {
                if !replace_existing(from, to).map_err(|e| StorageError::io("rename", from, e))? {
                    return Ok(false);
                }
            }
            Ok(true)
        })();
        match renamed {
            Ok(true) => {}
            Ok(false) => {
                // Gone: the `.swap` names hold whatever was exchanged.
                let _ = new.delete_files();
                return Ok(false);
            }
            Err(e) => {
                if !matches!(e, StorageError::Crashed { .. }) {
                    // Whatever was not renamed yet; a renamed index beside
                    // the old log is detected on open (footer vs. file)
                    // and rebuilt.
                    let _ = new.delete_files();
                }
                return Err((e, false));
            }
        }
        let log_p = segment::paths(&self.dir, base)[0].clone();
        hook(true, &log_p).map_err(|e| (e, true))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (StorageError::io("fsync dir", &self.dir, e), true))?;
        // The `.swap` names now hold the old files (the log's thread still
        // maps their inodes); leftovers would go on open.
        let _ = new.delete_files();
        Ok(true)
    }
}

/// Puts `from` where `to` is, only if `to` still exists: an exchange fails
/// when retention removed `to` meanwhile, so a removed segment is never
/// brought back. The old file is left at `from`. `Ok(false)`: `to` is
/// gone. Where the file system lacks the exchange, a check and a plain
/// rename (retention and compaction of one log are then kept apart by the
/// caller's lock only).
fn replace_existing(from: &Path, to: &Path) -> io::Result<bool> {
    let Err(e) = rename_exchange(from, to) else {
        return Ok(true);
    };
    match e.raw_os_error() {
        Some(libc::ENOENT) if from.exists() => Ok(false),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if !to.exists() {
                return Ok(false);
            }
            std::fs::rename(from, to)?;
            Ok(true)
        }
        _ => Err(e),
    }
}

/// Swaps two names atomically (`renameat2` with `RENAME_EXCHANGE`; both
/// must exist, on one file system).
pub(crate) fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    let flags = libc::RENAME_EXCHANGE;
    // SAFETY: two valid C strings; a plain syscall.
    match unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The newest offset per key among the records below `bound` in
/// `segments` (sealed, oldest first), and the offset up to which the map
/// is complete (short of `bound` when it hit its limits or was stopped).
fn key_map(
    segments: &[Segment],
    bound: u64,
    pacer: &mut Pacer,
    stop: &AtomicBool,
) -> Result<(KeyMap, u64)> {
    let mut newest = KeyMap::new();
    let mut key_bytes = 0usize;
    for s in segments {
        if s.base_offset >= bound {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            // Complete below this segment only; the caller stops anyway.
            return Ok((newest, s.base_offset));
        }
        let end = s.data_bytes as usize;
        let mut pos = 0;
        while pos < end {
            let (h, bytes) = s.batch_at(pos)?;
            if h.base_offset >= bound {
                return Ok((newest, bound));
            }
            pacer.note(bytes.len());
            let records = RecordBatch::parse_without_crc(bytes).map(|b| b.records());
            for r in records.into_iter().flatten() {
                let Ok(r) = r else { break };
                let offset = r.offset;
                if offset >= bound {
                    break;
                }
                let Some(k) = r.key else { continue };
                if let Some(o) = newest.get_mut(k) {
                    *o = offset;
                    continue;
                }
                if newest.len() >= COMPACT_KEY_COUNT_MAX
                    || key_bytes + k.len() > COMPACT_KEY_BYTES_MAX
                {
                    // Entries already taken from this batch point at
                    // real, durable records: they may supersede.
                    return Ok((newest, h.base_offset));
                }
                key_bytes += k.len();
                newest.insert(k.to_vec(), offset);
            }
            pos += h.batch_bytes as usize;
        }
    }
    Ok((newest, bound))
}

impl Log {
    /// Compacts the sealed segments that end at or below `bound_offset`
    /// (the commit index: what can never be truncated), keeping the newest
    /// record per key and dropping tombstones whose batch is older than the
    /// topic's `tombstone_grace_ms`. The bound is also capped at the durable
    /// offset (a superseding record must survive a crash) and at the active
    /// segment, which is never compacted. Records without a key are kept.
    ///
    /// Blocking, all on the calling thread: [`Log::plan_compaction`], then
    /// [`CompactJob::run`] (with the `compact` fault point), then
    /// [`Log::finish_compaction`]. A shard runs the middle step on a thread
    /// that may block instead.
    ///
    /// Errors before a segment's swap leave it untouched and the log
    /// writable; an error after the rename (directory fsync) poisons it.
    /// Raft must not replicate from below the compaction bound (batches
    /// there may have gaps): a follower that needs it gets a snapshot.
    pub fn compact(&mut self, bound_offset: u64) -> Result<CompactReport> {
        let job = self.plan_compaction(bound_offset)?;
        let done = job.run_with(&mut |renamed, path| self.compact_fault(renamed, path));
        self.finish_compaction(done)
    }

    /// Plans a compaction round below `bound_offset` (see [`Log::compact`]
    /// for what goes) without touching anything: cheap, on the log's thread.
    pub fn plan_compaction(&self, bound_offset: u64) -> Result<CompactJob> {
        self.writable()?;
        let Cleanup::Compact { tombstone_grace_ms } = self.config.cleanup else {
            return Err(StorageError::Config(format!(
                "{}: compaction needs cleanup = compact",
                self.dir.display()
            )));
        };
        let grace = i64::try_from(tombstone_grace_ms).unwrap_or(i64::MAX);
        let bound = bound_offset
            .min(self.durable_offset())
            .min(self.active().base_offset);
        let sealed = &self.segments[..self.segments.len() - 1];
        let first_offset = self.segments[0].base_offset;
        let last = sealed.iter().take_while(|s| s.next_offset <= bound).last();
        Ok(CompactJob {
            dir: self.dir.clone(),
            index_interval_bytes: self.config.index_interval_bytes,
            bases: sealed
                .iter()
                .take_while(|s| s.base_offset < bound)
                .map(|s| s.base_offset)
                .collect(),
            bound,
            expire_before_ms: self.config.clock.now_ms().saturating_sub(grace),
            disk_budget: self.config.disk_budget.clone(),
            first_offset,
            reach_offset: last.map_or(first_offset, |s| s.next_offset),
            last_entry: last.and_then(|s| Some((s.last_entry_index?, s.last_term))),
            bytes_per_sec_max: 0,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Swaps the segments a [`CompactJob`] rewrote into the log (each
    /// reopened from its new files; one retention removed meanwhile is
    /// skipped) and reports. The replaced maps go to [`Log::take_retired`]
    /// with [`crate::LogConfig::defer_deletes`], so the caller can unmap
    /// them off its thread. The job's error comes back here, poisoning the
    /// log if a segment's renames had happened.
    pub fn finish_compaction(&mut self, done: CompactDone) -> Result<CompactReport> {
        if done.dir != self.dir {
            return Err(StorageError::Config(format!(
                "compaction of {} finished on {}",
                done.dir.display(),
                self.dir.display()
            )));
        }
        let mut report = CompactReport {
            clean_offset: done.clean_offset,
            ..CompactReport::default()
        };
        for sw in &done.swapped {
            let found = self.segments[..self.segments.len() - 1]
                .iter()
                .position(|s| s.base_offset == sw.base_offset);
            let Some(i) = found else { continue };
            let log_p = segment::paths(&self.dir, sw.base_offset)[0].clone();
            let fresh = match Segment::open_sealed(&self.dir, sw.base_offset) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    let e = StorageError::Corrupt {
                        path: log_p,
                        position: 0,
                        reason: "compacted segment fails its index check after the swap".into(),
                    };
                    return Err(self.poison(e));
                }
                Err(e) => return Err(self.poison(e)),
            };
            report.segments_rewritten += 1;
            report.records_removed += sw.records_removed;
            report.batches_removed += sw.batches_removed;
            report.bytes_before += u64::from(self.segments[i].data_bytes);
            report.bytes_after += u64::from(fresh.data_bytes);
            if let Some(b) = &self.config.disk_budget {
                b.give(self.segments[i].disk_bytes());
                b.take(fresh.disk_bytes());
            }
            let old = std::mem::replace(&mut self.segments[i], fresh);
            if self.config.defer_deletes {
                old.release_maps(&mut self.retired);
            }
        }
        match done.failure {
            None => Ok(report),
            Some((e, true)) => Err(self.poison(e)),
            Some((e, false)) => Err(e),
        }
    }

    /// Bytes of sealed segments that end above `clean_offset` (written
    /// since the log was last compacted that far), and of all sealed
    /// segments: their ratio is how dirty the log is.
    pub fn compaction_dirt(&self, clean_offset: u64) -> (u64, u64) {
        let sealed = &self.segments[..self.segments.len() - 1];
        sealed.iter().fold((0, 0), |(dirty, all), s| {
            let b = u64::from(s.data_bytes);
            let d = if s.next_offset > clean_offset { b } else { 0 };
            (dirty + d, all + b)
        })
    }

    /// Fault point `compact`: a power cut stops the log; other faults fail
    /// the step, poisoning only once the swap is visible (`renamed`).
    fn compact_fault(&mut self, renamed: bool, path: &Path) -> Result<()> {
        match self.config.faults.hit(FaultPoint::Compact) {
            None => Ok(()),
            Some(Fault::PowerCut) => Err(self.power_cut(FaultPoint::Compact)),
            Some(f) => {
                let e = StorageError::io("compact", path, f.io_error());
                Err(if renamed { self.poison(e) } else { e })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_never_recreates_a_file_removed_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("a.swap"), d.path().join("a"));
        std::fs::write(&from, b"new").unwrap();
        assert!(!replace_existing(&from, &to).unwrap());
        assert!(!to.exists(), "the removed file came back");
        assert_eq!(std::fs::read(&from).unwrap(), b"new");
        std::fs::write(&to, b"old").unwrap();
        assert!(replace_existing(&from, &to).unwrap());
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        // The old file is left at the swap name (removed by the caller).
        assert_eq!(std::fs::read(&from).unwrap(), b"old");
        assert!(replace_existing(&d.path().join("missing"), &to).is_err());
    }
}
