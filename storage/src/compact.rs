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

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;

use crate::config::Cleanup;
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
fn removals(s: &Segment, newest: &KeyMap, expire_before_ms: i64) -> Result<(u64, u64)> {
    let (mut records, mut batches) = (0u64, 0u64);
    let end = s.data_bytes as usize;
    let mut pos = 0;
    while pos < end {
        let (h, bytes) = s.batch_at(pos)?;
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
) -> Result<Segment> {
    let mut new = Segment::create(dir, old.base_offset, old.data_bytes, interval, true)?;
    let written = (|| {
        let end = old.data_bytes as usize;
        let mut pos = 0;
        while pos < end {
            let (h, bytes) = old.batch_at(pos)?;
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
            let oh = batch::header(out)?;
            new.append(out, &oh, interval, false)
                .map_err(|e| StorageError::io("compact write", &new.log_path, e))?;
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

fn sync_swap(new: &mut Segment) -> io::Result<()> {
    new.handle()?.sync_data()?;
    new.index.file()?.sync_data()?;
    new.time_index.file()?.sync_data()
}

impl Log {
    /// Compacts the sealed segments that end at or below `bound_offset`
    /// (the commit index: what can never be truncated), keeping the newest
    /// record per key and dropping tombstones whose batch is older than the
    /// topic's `tombstone_grace_ms`. The bound is also capped at the durable
    /// offset (a superseding record must survive a crash) and at the active
    /// segment, which is never compacted. Records without a key are kept.
    ///
    /// Blocking: writes and fdatasyncs the rewritten segments here. Work is
    /// bounded by the sealed bytes below the bound (read twice, written
    /// once); a shard runs it from its compaction task queue.
    ///
    /// Errors before a segment's swap leave it untouched and the log
    /// writable; an error after the rename (directory fsync) poisons it.
    /// Raft must not replicate from below the compaction bound (batches
    /// there may have gaps): a follower that needs it gets a snapshot.
    pub fn compact(&mut self, bound_offset: u64) -> Result<CompactReport> {
        self.writable()?;
        let Cleanup::Compact { tombstone_grace_ms } = self.config.cleanup else {
            return Err(StorageError::Config(format!(
                "{}: compaction needs cleanup = compact",
                self.dir.display()
            )));
        };
        let grace = i64::try_from(tombstone_grace_ms).unwrap_or(i64::MAX);
        let expire_before_ms = self.config.clock.now_ms().saturating_sub(grace);
        let bound = bound_offset
            .min(self.durable_offset())
            .min(self.active().base_offset);
        let (newest, map_end) = self.key_map(bound)?;
        let mut report = CompactReport {
            clean_offset: self.segments[0].base_offset,
            ..CompactReport::default()
        };
        let mut i = 0;
        // Bounded by the segment count; oldest first (see the module doc).
        while i + 1 < self.segments.len() && self.segments[i].next_offset <= map_end {
            let (records, batches) = removals(&self.segments[i], &newest, expire_before_ms)?;
            if records > 0 {
                self.rewrite(i, &newest, expire_before_ms, &mut report)?;
                report.records_removed += records;
                report.batches_removed += batches;
            }
            report.clean_offset = self.segments[i].next_offset;
            i += 1;
        }
        Ok(report)
    }

    /// The newest offset per key among the records below `bound` in sealed
    /// segments, and the offset up to which the map is complete (short of
    /// `bound` when it hit its limits).
    fn key_map(&self, bound: u64) -> Result<(KeyMap, u64)> {
        let mut newest = KeyMap::new();
        let mut key_bytes = 0usize;
        for s in &self.segments[..self.segments.len() - 1] {
            if s.base_offset >= bound {
                break;
            }
            let end = s.data_bytes as usize;
            let mut pos = 0;
            while pos < end {
                let (h, bytes) = s.batch_at(pos)?;
                if h.base_offset >= bound {
                    return Ok((newest, bound));
                }
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

    fn rewrite(
        &mut self,
        i: usize,
        newest: &KeyMap,
        expire_before_ms: i64,
        report: &mut CompactReport,
    ) -> Result<()> {
        let interval = self.config.index_interval_bytes;
        let base = self.segments[i].base_offset;
        let temp_bytes = u64::from(self.segments[i].data_bytes);
        if let Some(b) = &self.config.disk_budget {
            if !b.try_take(temp_bytes) {
                return Err(StorageError::DiskFull {
                    op: "compact",
                    path: self.dir.clone(),
                    detail: format!("broker disk budget spent ({} bytes used)", b.bytes_used()),
                });
            }
        }
        let give_temp = |log: &Log| {
            if let Some(b) = &log.config.disk_budget {
                b.give(temp_bytes);
            }
        };
        let mut new = match write_swap(
            &self.dir,
            &self.segments[i],
            newest,
            expire_before_ms,
            interval,
        ) {
            Ok(s) => s,
            Err(e) => {
                give_temp(self);
                return Err(e);
            }
        };
        let swap_log = new.log_path.clone();
        let before_rename = (|| {
            self.compact_fault(false, &swap_log)?;
            sync_swap(&mut new).map_err(|e| StorageError::io("fdatasync", &swap_log, e))?;
            self.compact_fault(false, &swap_log)?;
            let [log_p, ix_p, tix_p] = segment::paths(&self.dir, base);
            for (from, to) in [
                (&new.index.path, &ix_p),
                (&new.time_index.path, &tix_p),
                (&new.log_path, &log_p),
            ] {
                std::fs::rename(from, to).map_err(|e| StorageError::io("rename", from, e))?;
            }
            Ok(())
        })();
        if let Err(e) = before_rename {
            give_temp(self);
            if !matches!(e, StorageError::Crashed { .. }) {
                // Whatever was not renamed yet; a renamed index beside the
                // old log is detected on open (footer vs. file) and rebuilt.
                let _ = new.delete_files();
            }
            return Err(e);
        }
        drop(new);
        give_temp(self);
        let log_p = segment::paths(&self.dir, base)[0].clone();
        self.compact_fault(true, &log_p)?;
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            return Err(self.poison(StorageError::io("fsync dir", &self.dir, e)));
        }
        let fresh = match Segment::open_sealed(&self.dir, base) {
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
        report.bytes_before += u64::from(self.segments[i].data_bytes);
        report.bytes_after += u64::from(fresh.data_bytes);
        if let Some(b) = &self.config.disk_budget {
            b.give(self.segments[i].disk_bytes());
            b.take(fresh.disk_bytes());
        }
        self.segments[i] = fresh;
        Ok(())
    }
}
