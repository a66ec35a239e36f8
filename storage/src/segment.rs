//! One segment: a preallocated, memory-mapped `<base>.log` file plus its two
//! sparse index files. Synchronous and runtime-free; owned by one [`crate::Log`].

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use memmap2::MmapMut;

use crate::error::{Result, StorageError};
use crate::index::{self, Footer, IndexFile, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use wire::batch::{self, BatchHeader, RecordBatch, BATCH_HEADER_BYTES as HEADER_BYTES};

/// Bytes after a recovery stop point checked for leftovers, to tell a clean
/// end (zeros) from a torn or damaged tail in the report: 64 KiB bounds the
/// cost of the check on open.
const TAIL_PROBE_BYTES: usize = 64 << 10;

pub(crate) fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

pub(crate) fn paths(dir: &Path, base_offset: u64) -> [PathBuf; 3] {
    ["log", "index", "timeindex"].map(|e| dir.join(file_name(base_offset, e)))
}

/// Suffix of files being written by compaction; removed on open.
pub(crate) const SWAP_SUFFIX: &str = ".swap";

pub(crate) fn swap_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(SWAP_SUFFIX);
    PathBuf::from(s)
}

/// Reserves `[from, from+len)` on disk so appends into the map cannot hit
/// ENOSPC. File systems without fallocate fall back to a sparse `set_len`.
/// An empty range is a no-op: `fallocate` refuses a zero length with EINVAL
/// (a segment sealed exactly full has nothing to reserve when it is reopened
/// for a truncation).
pub(crate) fn preallocate(file: &File, path: &Path, from: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, from as i64, len as i64) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        let need = from + len;
        if file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len()
            < need
        {
            file.set_len(need)
                .map_err(|e| StorageError::io("set_len", path, e))?;
        }
        return Ok(());
    }
    Err(StorageError::io("fallocate", path, e))
}

/// Zeroes `range` of a mapped file: punch a hole (cheap, metadata only) and
/// reserve it again; or write zeros where punching is unsupported.
fn zero_range(file: &File, map: &mut [u8], path: &Path, range: Range<usize>) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let (from, len) = (range.start as i64, range.len() as i64);
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, from, len) } == 0 {
        // The map sees the hole as zeros; reserve the blocks again.
        return preallocate(file, path, from as u64, len as u64);
    }
    map[range].fill(0);
    Ok(())
}

/// Writes all of `parts` at `at` with `pwritev`, retrying short writes.
fn write_all_at(file: &File, parts: &[&[u8]; 2], at: u64) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0usize;
    // Bounded: every pass writes at least one byte or returns an error.
    while done < total {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let mut n_iov = 0;
        let mut skip = done;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            iov[n_iov] = libc::iovec {
                iov_base: p[skip..].as_ptr() as *mut libc::c_void,
                iov_len: p.len() - skip,
            };
            n_iov += 1;
            skip = 0;
        }
        // SAFETY: the iovecs point into live slices for the duration of the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                n_iov as i32,
                (at + done as u64) as i64,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += n as usize;
    }
    Ok(())
}

/// Whether the batch `h` continues the entry sequence after a batch with
/// entry index `prev.0` whose records ended at offset `prev.1` (`None`: no
/// batch before it, anything goes). Entry indexes increase; they go up by
/// exactly 1 unless offsets skip between the two batches, which only
/// compaction does (it drops batches whose records were all superseded).
pub(crate) fn entry_follows(prev: Option<(u64, u64)>, h: &BatchHeader) -> Result<(), String> {
    let Some((entry, end)) = prev else {
        return Ok(());
    };
    if h.entry_index <= entry || (h.base_offset <= end && h.entry_index != entry + 1) {
        return Err(format!(
            "batch at offset {} has entry index {}, which does not follow entry {entry}",
            h.base_offset, h.entry_index
        ));
    }
    Ok(())
}

/// How a scan of a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    pub valid_bytes: u32,
    /// `None`: the data ended cleanly (end of file or zeros after it).
    pub damage: Option<String>,
}

pub(crate) struct Segment {
    pub base_offset: u64,
    /// End (exclusive) of the offsets this segment covers.
    pub next_offset: u64,
    pub log_path: PathBuf,
    /// Closed once the segment is sealed and durable ([`Segment::release_files`]),
    /// opened again when it is written (truncation) or synced: a log of
    /// thousands of segments holds descriptors only for the few in use.
    file: Option<Rc<File>>,
    map: MmapMut,
    pub data_bytes: u32,
    pub capacity_bytes: u32,
    pub synced_bytes: u32,
    /// Every batch below this position passed its CRC in this process.
    verified_bytes: Cell<u32>,
    pub index: IndexFile,
    pub time_index: IndexFile,
    pub sealed: bool,
    /// The sealed index files still need an fsync.
    pub index_dirty: bool,
    pub max_timestamp_ms: i64,
    pub last_term: u64,
    pub last_batch_base: Option<u64>,
    /// Entry index of the first and the last batch (`None`: no batch).
    pub first_entry_index: Option<u64>,
    pub last_entry_index: Option<u64>,
    /// `base_offset + record_count` of the last batch (its own end, which a
    /// compacted batch's span can exceed).
    pub last_batch_end: u64,
    bytes_since_index: u32,
    pub first_append_ms: Option<i64>,
    /// (device, inode) of the log file, so a syncer can cache open files.
    pub file_id: (u64, u64),
}

fn index_capacity(capacity_bytes: u32, interval: u32) -> usize {
    (capacity_bytes / interval) as usize + 1
}

fn map_file(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: segment files belong to one partition, owned by one thread;
    // they are only resized by this type, which never reads past the length
    // it set. Other processes must not modify a partition's directory.
    unsafe { MmapMut::map_mut(file) }.map_err(|e| StorageError::io("mmap", path, e))
}

impl Segment {
    /// Creates an empty active segment, preallocated to `capacity_bytes`.
    /// `swap` names the files with [`SWAP_SUFFIX`] (compaction output, made
    /// final by [`Segment::rename_final`]).
    pub fn create(
        dir: &Path,
        base_offset: u64,
        capacity_bytes: u32,
        interval: u32,
        swap: bool,
    ) -> Result<Self> {
        let mut ps = paths(dir, base_offset);
        if swap {
            ps = ps.map(|p| swap_path(&p));
        }
        let [log_path, ix_path, tix_path] = ps.clone();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(|e| StorageError::io("create segment", &log_path, e))?;
        let made = (|| {
            preallocate(&file, &log_path, 0, u64::from(capacity_bytes))?;
            file.set_len(u64::from(capacity_bytes))
                .map_err(|e| StorageError::io("set_len", &log_path, e))?;
            let n = index_capacity(capacity_bytes, interval);
            let index = IndexFile::create(&ix_path, OFFSET_ENTRY_BYTES, n)
                .map_err(|e| StorageError::io("create index", &ix_path, e))?;
            let time_index = IndexFile::create(&tix_path, TIME_ENTRY_BYTES, n)
                .map_err(|e| StorageError::io("create time index", &tix_path, e))?;
            Self::assemble(
                base_offset,
                log_path.clone(),
                file,
                capacity_bytes,
                index,
                time_index,
            )
        })();
        if made.is_err() {
            // Leave no half-made segment behind (a later open would see it).
            for p in &ps {
                let _ = std::fs::remove_file(p);
            }
        }
        made
    }

    fn assemble(
        base_offset: u64,
        log_path: PathBuf,
        file: File,
        capacity_bytes: u32,
        index: IndexFile,
        time_index: IndexFile,
    ) -> Result<Self> {
        let md = file
            .metadata()
            .map_err(|e| StorageError::io("stat", &log_path, e))?;
        let map = map_file(&file, &log_path)?;
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            log_path,
            file: Some(Rc::new(file)),
            map,
            data_bytes: 0,
            capacity_bytes,
            synced_bytes: 0,
            verified_bytes: Cell::new(0),
            index,
            time_index,
            sealed: false,
            index_dirty: false,
            max_timestamp_ms: i64::MIN,
            last_term: 0,
            last_batch_base: None,
            first_entry_index: None,
            last_entry_index: None,
            last_batch_end: base_offset,
            bytes_since_index: 0,
            first_append_ms: None,
            file_id: (md.dev(), md.ino()),
        })
    }

    /// Opens a sealed segment whose index footers check out against the
    /// file; `None` if anything is off (then the caller scans instead).
    pub fn open_sealed(dir: &Path, base_offset: u64) -> Result<Option<Self>> {
        let [log_path, ix_path, tix_path] = paths(dir, base_offset);
        let Some((index, f)) = IndexFile::open_sealed(&ix_path, OFFSET_ENTRY_BYTES) else {
            return Ok(None);
        };
        let Some((time_index, tf)) = IndexFile::open_sealed(&tix_path, TIME_ENTRY_BYTES) else {
            return Ok(None);
        };
        let (file, len) = open_segment_file(&log_path)?;
        if f != tf
            || f.data_bytes == 0
            || u64::from(f.data_bytes) != len
            || f.next_offset < base_offset
        {
            return Ok(None);
        }
        let mut s = Self::assemble(base_offset, log_path, file, f.data_bytes, index, time_index)?;
        // The footer says where the last batch is; check that one header so a
        // swapped or rewritten log file is not trusted with a stale index.
        let Some(last) = s.batch_positions_tail_check(&f) else {
            return Ok(None);
        };
        let Ok(first) = batch::header(&s.map[..f.data_bytes as usize]) else {
            return Ok(None);
        };
        if first.entry_index > last.entry_index {
            return Ok(None);
        }
        s.first_entry_index = Some(first.entry_index);
        s.last_entry_index = Some(last.entry_index);
        s.last_batch_end = last.base_offset + u64::from(last.record_count);
        s.data_bytes = f.data_bytes;
        s.synced_bytes = f.data_bytes;
        s.next_offset = f.next_offset;
        s.max_timestamp_ms = f.max_timestamp_ms;
        s.last_term = f.last_term;
        s.last_batch_base = Some(f.last_batch_base);
        s.sealed = true;
        s.release_files();
        Ok(Some(s))
    }

    /// The last batch's header if it is where the footer says.
    fn batch_positions_tail_check(&self, f: &Footer) -> Option<BatchHeader> {
        let rel = f.last_batch_base.saturating_sub(self.base_offset);
        let rel = u32::try_from(rel).ok()?;
        let mut pos = index::lookup_offset(&self.index, rel) as usize;
        let end = f.data_bytes as usize;
        while pos < end {
            let h = batch::header(&self.map[pos..end]).ok()?;
            let next = pos + h.batch_bytes as usize;
            if next == end {
                return (h.base_offset == f.last_batch_base && h.term == f.last_term).then_some(h);
            }
            pos = next;
        }
        None
    }

    /// Opens a segment's log file for a full scan (recovery of the active
    /// segment or of a sealed one with a bad index). Fresh index files are
    /// made; the caller then runs [`Segment::scan`]. The file is extended to
    /// `capacity_bytes` if shorter.
    pub fn open_for_scan(
        dir: &Path,
        base_offset: u64,
        capacity_bytes: u32,
        interval: u32,
    ) -> Result<Self> {
        let [log_path, ix_path, tix_path] = paths(dir, base_offset);
        let (file, len) = open_segment_file(&log_path)?;
        let capacity = len
            .max(u64::from(capacity_bytes))
            .min(u64::from(crate::SEGMENT_BYTES_MAX));
        if len < capacity {
            file.set_len(capacity)
                .map_err(|e| StorageError::io("set_len", &log_path, e))?;
        }
        let capacity = capacity as u32;
        let n = index_capacity(capacity, interval);
        let index = IndexFile::create(&ix_path, OFFSET_ENTRY_BYTES, n)
            .map_err(|e| StorageError::io("create index", &ix_path, e))?;
        let time_index = IndexFile::create(&tix_path, TIME_ENTRY_BYTES, n)
            .map_err(|e| StorageError::io("create time index", &tix_path, e))?;
        Self::assemble(base_offset, log_path, file, capacity, index, time_index)
    }

    /// Walks the batches from position 0 to the end of the file, checking
    /// framing, CRC, increasing offsets, non-decreasing terms and entry
    /// indexes that continue the sequence ([`entry_follows`]; `prev_entry` is
    /// the previous segment's last entry index and last batch end, if any),
    /// rebuilding both indexes. Stops at the first batch that fails.
    pub fn scan(
        &mut self,
        interval: u32,
        min_term: u64,
        prev_entry: Option<(u64, u64)>,
    ) -> ScanEnd {
        self.index.truncate_entries(0);
        self.time_index.truncate_entries(0);
        self.reset_tail_state();
        let end = self.capacity_bytes as usize;
        let mut pos = 0usize;
        let mut last_term = min_term;
        let damage = loop {
            if pos + HEADER_BYTES > end {
                break None;
            }
            let h = match batch::check(&self.map[pos..end]) {
                Ok(h) => h,
                Err(e) => {
                    let probe = &self.map[pos..end.min(pos + TAIL_PROBE_BYTES)];
                    break probe.iter().any(|&b| b != 0).then(|| e.to_string());
                }
            };
            if h.base_offset < self.next_offset {
                break Some(format!(
                    "batch offset {} below the expected {}",
                    h.base_offset, self.next_offset
                ));
            }
            if h.term < last_term {
                break Some(format!(
                    "batch term {} below the previous {last_term}",
                    h.term
                ));
            }
            let prev = match self.last_entry_index {
                Some(e) => Some((e, self.last_batch_end)),
                None => prev_entry,
            };
            if let Err(reason) = entry_follows(prev, &h) {
                break Some(reason);
            }
            last_term = h.term;
            self.note_batch(pos as u32, &h, interval);
            pos += h.batch_bytes as usize;
        };
        self.data_bytes = pos as u32;
        self.synced_bytes = pos as u32;
        self.verified_bytes.set(pos as u32);
        ScanEnd {
            valid_bytes: pos as u32,
            damage,
        }
    }

    fn reset_tail_state(&mut self) {
        self.next_offset = self.base_offset;
        self.max_timestamp_ms = i64::MIN;
        self.last_term = 0;
        self.last_batch_base = None;
        self.first_entry_index = None;
        self.last_entry_index = None;
        self.last_batch_end = self.base_offset;
        self.bytes_since_index = 0;
    }

    /// Updates the in-memory state and the indexes for a batch written at `pos`.
    fn note_batch(&mut self, pos: u32, h: &BatchHeader, interval: u32) {
        let rel = (h.base_offset - self.base_offset) as u32;
        if self.last_batch_base.is_none() || self.bytes_since_index >= interval {
            self.index.push(&index::offset_entry(rel, pos));
            self.bytes_since_index = 0;
        }
        if h.max_timestamp_ms > self.max_timestamp_ms {
            self.max_timestamp_ms = h.max_timestamp_ms;
            let due = index::last_time(&self.time_index).is_none() || self.bytes_since_index == 0;
            if due {
                self.time_index
                    .push(&index::time_entry(h.max_timestamp_ms, rel, pos));
            }
        }
        self.bytes_since_index += h.batch_bytes;
        self.next_offset = h.base_offset + u64::from(h.record_count);
        self.last_term = h.term;
        self.last_batch_base = Some(h.base_offset);
        self.first_entry_index.get_or_insert(h.entry_index);
        self.last_entry_index = Some(h.entry_index);
        self.last_batch_end = h.base_offset + u64::from(h.record_count);
    }

    pub fn has_room(&self, batch_bytes: usize) -> bool {
        self.data_bytes as usize + batch_bytes <= self.capacity_bytes as usize
    }

    /// Writes a checked batch at the write position, stamping base offset,
    /// term and entry index from `h`. The bytes go in with one `pwritev` into the page cache that
    /// the map shares (coherent on Linux), which costs the same as the raw
    /// sequential write it is measured against and, unlike stores into the
    /// map, turns an I/O error into an error instead of a SIGBUS. `torn`
    /// writes only half, then fails (fault injection); the write position
    /// does not move then.
    pub fn append(
        &mut self,
        bytes: &[u8],
        h: &BatchHeader,
        interval: u32,
        torn: bool,
    ) -> io::Result<()> {
        let pos = self.data_bytes as usize;
        let len = bytes.len();
        debug_assert!(self.has_room(len) && !self.sealed);
        let mut head = [0u8; HEADER_BYTES];
        head.copy_from_slice(&bytes[..HEADER_BYTES]);
        batch::stamp(&mut head, h.base_offset, h.term, h.entry_index);
        let body = &bytes[HEADER_BYTES..];
        let body = if torn { &body[..body.len() / 2] } else { body };
        let file = self.handle()?;
        write_all_at(&file, &[&head, body], pos as u64)?;
        if torn {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.note_batch(pos as u32, h, interval);
        self.data_bytes += len as u32;
        if self.verified_bytes.get() == pos as u32 {
            self.verified_bytes.set(self.data_bytes);
        }
        Ok(())
    }

    /// Position of the batch that holds `offset` (the last batch whose base
    /// is at or below it), or of the first batch if all are above it.
    fn locate(&self, offset: u64) -> Result<usize> {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let end = self.data_bytes as usize;
        let mut pos = index::lookup_offset(&self.index, rel) as usize;
        // A hint that does not land on a sane header means a bad index entry:
        // fall back to a scan from the start (still bounded by the segment).
        if pos >= end
            || batch::header(&self.map[pos..end])
                .map(|h| h.base_offset > offset)
                .unwrap_or(true)
        {
            pos = 0;
        }
        loop {
            let h = self.header_at(pos)?;
            let next = pos + h.batch_bytes as usize;
            if next >= end {
                return Ok(pos);
            }
            let nh = self.header_at(next)?;
            if nh.base_offset > offset {
                return Ok(pos);
            }
            pos = next;
        }
    }

    /// The header at `pos` (unverified; framing checked).
    pub fn header_at(&self, pos: usize) -> Result<BatchHeader> {
        let end = self.data_bytes as usize;
        let h = batch::header(&self.map[pos..end]).map_err(|e| self.corrupt(pos, e.to_string()))?;
        if pos + h.batch_bytes as usize > end {
            return Err(self.corrupt(pos, "batch runs past the segment end".into()));
        }
        Ok(h)
    }

    fn corrupt(&self, pos: usize, reason: String) -> StorageError {
        StorageError::Corrupt {
            path: self.log_path.clone(),
            position: pos as u64,
            reason,
        }
    }

    /// CRC-checks the batch at `pos` unless it is below the verified mark.
    fn verify_at(&self, pos: usize) -> Result<BatchHeader> {
        let h = self.header_at(pos)?;
        if pos + h.batch_bytes as usize <= self.verified_bytes.get() as usize {
            return Ok(h);
        }
        let end = self.data_bytes as usize;
        batch::check(&self.map[pos..end]).map_err(|e| self.corrupt(pos, e.to_string()))?;
        if self.verified_bytes.get() as usize == pos {
            self.verified_bytes.set(pos as u32 + h.batch_bytes);
        }
        Ok(h)
    }

    /// Whole batches starting with the one that holds `from_offset`, at most
    /// `bytes_max` (but at least one batch), only batches whose records all
    /// lie below `end_offset`. Returns the byte range and the offset to read
    /// next.
    ///
    /// A batch "holds" the offsets from its base up to the next batch's base
    /// (or the segment end): after compaction its records may have gaps and
    /// `base + record_count` can fall short of that, so the next read starts
    /// at the next batch's base, never inside a gap (which would return the
    /// same batch again).
    pub fn read(
        &self,
        from_offset: u64,
        bytes_max: usize,
        end_offset: u64,
    ) -> Result<(Range<usize>, u64)> {
        if self.data_bytes == 0 {
            return Ok((0..0, from_offset.max(self.next_offset)));
        }
        let start = self.locate(from_offset)?;
        let end = self.data_bytes as usize;
        let mut pos = start;
        let mut next_offset = from_offset;
        while pos < end {
            let h = match self.verify_at(pos) {
                Ok(h) => h,
                // Serve what passed; the next read reports the damage.
                Err(_) if pos > start => break,
                Err(e) => return Err(e),
            };
            let len = h.batch_bytes as usize;
            if pos > start && pos + len - start > bytes_max {
                break;
            }
            let span_end = self.span_end(pos + len, &h);
            if !self.records_below(pos, &h, span_end, end_offset) {
                break;
            }
            pos += len;
            next_offset = span_end.max(next_offset);
        }
        if pos == end {
            next_offset = next_offset.max(self.next_offset);
        }
        Ok((start..pos, next_offset))
    }

    /// End of the offsets the batch ending at `next_pos` holds: the next
    /// batch's base, or the segment end. A damaged next header falls back
    /// to the batch's own count (the next read then reports the damage).
    fn span_end(&self, next_pos: usize, h: &BatchHeader) -> u64 {
        let own = h.base_offset + u64::from(h.record_count);
        if next_pos >= self.data_bytes as usize {
            return self.next_offset.max(own);
        }
        match self.header_at(next_pos) {
            Ok(nh) if nh.base_offset >= own => nh.base_offset,
            _ => own,
        }
    }

    /// Whether every record of the (verified) batch at `pos` is below
    /// `end_offset`. Decided from the header unless the batch has gaps that
    /// straddle the bound (only compacted batches can): then its records'
    /// offset deltas are walked.
    fn records_below(&self, pos: usize, h: &BatchHeader, span_end: u64, end_offset: u64) -> bool {
        let own = h.base_offset + u64::from(h.record_count);
        if span_end <= end_offset {
            return true;
        }
        if own > end_offset {
            return false;
        }
        let bytes = &self.map[pos..pos + h.batch_bytes as usize];
        match RecordBatch::parse_without_crc(bytes)
            .ok()
            .and_then(|b| b.last_record_offset())
        {
            Some(last) => last < end_offset,
            None => h.record_count == 0,
        }
    }

    /// The verified batch at `pos`: its header and bytes.
    pub fn batch_at(&self, pos: usize) -> Result<(BatchHeader, &[u8])> {
        let h = self.verify_at(pos)?;
        Ok((h, &self.map[pos..pos + h.batch_bytes as usize]))
    }

    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        &self.map[r]
    }

    /// The header of the batch holding `offset` (the last batch whose base
    /// is at or below it: gaps left by compaction belong to the batch before).
    pub fn batch_holding(&self, offset: u64) -> Result<BatchHeader> {
        let pos = self.locate(offset)?;
        self.verify_at(pos)
    }

    /// Position of the batch with entry index `entry`, `None` if the segment
    /// holds no such batch (outside its entries, or removed by compaction).
    ///
    /// Entry indexes increase from batch to batch, so this is a binary search
    /// over the sparse offset index, reading the batch header at each probed
    /// index point (O(log n) header reads, each a page of the map), then a
    /// forward walk over headers from the last point at or below `entry`
    /// (about `index_interval_bytes` of batches). Headers only: the caller
    /// verifies the CRC of the batch it serves.
    pub fn find_entry(&self, entry: u64) -> Result<Option<usize>> {
        let (Some(first), Some(last)) = (self.first_entry_index, self.last_entry_index) else {
            return Ok(None);
        };
        if entry < first || entry > last {
            return Ok(None);
        }
        let end = self.data_bytes as usize;
        let (mut lo, mut hi) = (0usize, self.index.count());
        // Invariant: the index points below `lo` start at or below `entry`.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let pos = index::offset_entry_position(&self.index, mid) as usize;
            let at_or_below = pos < end
                && batch::header(&self.map[pos..end]).is_ok_and(|h| h.entry_index <= entry);
            if at_or_below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut pos = match lo {
            0 => 0,
            n => index::offset_entry_position(&self.index, n - 1) as usize,
        };
        // A point that does not land on a sane header at or below `entry`
        // means a bad index entry: walk from the start instead.
        if pos >= end || !batch::header(&self.map[pos..end]).is_ok_and(|h| h.entry_index <= entry) {
            pos = 0;
        }
        while pos < end {
            let h = self.header_at(pos)?;
            if h.entry_index == entry {
                return Ok(Some(pos));
            }
            if h.entry_index > entry {
                return Ok(None);
            }
            pos += h.batch_bytes as usize;
        }
        Ok(None)
    }

    /// Header of the first batch (unverified), `None` for an empty segment
    /// or a damaged header.
    pub fn first_header(&self) -> Option<BatchHeader> {
        (self.data_bytes > 0)
            .then(|| batch::header(&self.map[..self.data_bytes as usize]).ok())
            .flatten()
    }

    /// Position of the batch holding `offset` (see [`Segment::batch_holding`]).
    pub fn position_holding(&self, offset: u64) -> Result<usize> {
        self.locate(offset)
    }

    /// Base offset of the first batch whose max timestamp is >= `ts`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>> {
        let end = self.data_bytes as usize;
        let mut pos = index::lookup_time(&self.time_index, ts) as usize;
        if pos >= end {
            pos = 0;
        }
        while pos < end {
            let h = self.verify_at(pos)?;
            if h.max_timestamp_ms >= ts {
                return Ok(Some(h.base_offset));
            }
            pos += h.batch_bytes as usize;
        }
        Ok(None)
    }

    /// Drops every batch whose base offset is >= `offset` (which must be a
    /// batch boundary or the segment end) and zeroes the dropped bytes, so
    /// they can never be recovered. A sealed segment becomes active again.
    pub fn truncate(&mut self, offset: u64, interval: u32, capacity_bytes: u32) -> Result<()> {
        let end = self.data_bytes as usize;
        let mut pos = 0usize;
        while pos < end {
            let h = self.header_at(pos)?;
            if h.base_offset >= offset {
                if h.base_offset != offset {
                    return Err(StorageError::NotBatchBoundary { offset });
                }
                break;
            }
            pos += h.batch_bytes as usize;
        }
        if pos == end && offset != self.next_offset {
            return Err(StorageError::NotBatchBoundary { offset });
        }
        if self.sealed {
            self.unseal(capacity_bytes, interval)?;
        }
        let file = self
            .handle()
            .map_err(|e| StorageError::io("open", &self.log_path, e))?;
        zero_range(
            &file,
            &mut self.map,
            &self.log_path,
            pos..self.capacity_bytes as usize,
        )?;
        // Rebuild tail state and indexes up to the cut (bounded by the segment).
        let verified = self.verified_bytes.get().min(pos as u32);
        let synced = self.synced_bytes;
        self.scan(interval, 0, None);
        self.synced_bytes = synced;
        self.data_bytes = pos as u32;
        self.verified_bytes.set(verified);
        self.next_offset = offset.max(self.base_offset);
        self.synced_bytes = self.synced_bytes.min(pos as u32);
        Ok(())
    }

    /// Re-extends a sealed segment to `capacity_bytes` and makes its index
    /// files writable again.
    fn unseal(&mut self, capacity_bytes: u32, interval: u32) -> Result<()> {
        let cap = capacity_bytes.max(self.data_bytes);
        let file = self
            .handle()
            .map_err(|e| StorageError::io("open", &self.log_path, e))?;
        preallocate(
            &file,
            &self.log_path,
            u64::from(self.data_bytes),
            u64::from(cap - self.data_bytes),
        )?;
        file.set_len(u64::from(cap))
            .map_err(|e| StorageError::io("set_len", &self.log_path, e))?;
        self.map = map_file(&file, &self.log_path)?;
        self.capacity_bytes = cap;
        let n = index_capacity(cap, interval);
        let ix = self.index.path.clone();
        let tix = self.time_index.path.clone();
        self.index = IndexFile::create(&ix, OFFSET_ENTRY_BYTES, n)
            .map_err(|e| StorageError::io("create index", &ix, e))?;
        self.time_index = IndexFile::create(&tix, TIME_ENTRY_BYTES, n)
            .map_err(|e| StorageError::io("create time index", &tix, e))?;
        self.sealed = false;
        Ok(())
    }

    /// Seals: shrinks the log file to its data and writes both index footers.
    /// The caller syncs data and indexes with the next sync job.
    pub fn seal(&mut self, torn_index: bool) -> Result<()> {
        let f = self.footer();
        self.index
            .seal(f, torn_index)
            .map_err(|e| StorageError::io("seal index", &self.index.path, e))?;
        self.time_index
            .seal(f, false)
            .map_err(|e| StorageError::io("seal time index", &self.time_index.path, e))?;
        self.handle()
            .and_then(|f| f.set_len(u64::from(self.data_bytes)))
            .map_err(|e| StorageError::io("set_len", &self.log_path, e))?;
        self.sealed = true;
        self.index_dirty = true;
        Ok(())
    }

    fn footer(&self) -> Footer {
        Footer {
            data_bytes: self.data_bytes,
            next_offset: self.next_offset,
            max_timestamp_ms: self.max_timestamp_ms,
            last_term: self.last_term,
            last_batch_base: self.last_batch_base.unwrap_or(self.base_offset),
        }
    }

    /// Zeroes the unsynced tail: what a power cut leaves (fault injection).
    pub fn lose_unsynced(&mut self) {
        let from = self.synced_bytes as usize;
        let to = self.data_bytes.max(self.synced_bytes) as usize;
        let to = to.min(self.map.len());
        self.map[from..to].fill(0);
    }

    /// The open log file, opened again if it was released.
    pub fn handle(&mut self) -> io::Result<Rc<File>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let f = Rc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.log_path)?,
        );
        self.file = Some(f.clone());
        Ok(f)
    }

    /// Closes the segment's three file descriptors if it is sealed and
    /// everything in it is durable; its maps stay, so reads are unchanged.
    /// A sync round that still holds the file keeps it open until it ends.
    pub fn release_files(&mut self) {
        if self.sealed && self.synced_bytes >= self.data_bytes && !self.index_dirty {
            self.file = None;
            self.index.release();
            self.time_index.release();
        }
    }

    /// Descriptors this segment holds open (0 to 3).
    pub fn open_files(&self) -> usize {
        usize::from(self.file.is_some())
            + usize::from(self.index.is_open())
            + usize::from(self.time_index.is_open())
    }

    /// Bytes this segment takes on disk (preallocation included).
    pub fn disk_bytes(&self) -> u64 {
        u64::from(if self.sealed {
            self.data_bytes
        } else {
            self.capacity_bytes
        })
    }

    /// Renames the segment's files to `<name>.deleted` and hands back its
    /// maps and the new paths: a rename is cheap, while unmapping a large
    /// segment and unlinking it (freeing its extents and page-cache pages)
    /// can take tens of milliseconds, which the caller can spend on another
    /// thread ([`Retired::dispose`]). `Log::open` removes leftovers.
    pub fn retire(self, into: &mut Retired) -> Result<()> {
        for p in [&self.log_path, &self.index.path, &self.time_index.path] {
            let mut dead = p.as_os_str().to_owned();
            dead.push(DELETED_SUFFIX);
            let dead = PathBuf::from(dead);
            match std::fs::rename(p, &dead) {
                Ok(()) => into.paths.push(dead),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("rename", p, e)),
            }
        }
        self.release_maps(into);
        Ok(())
    }

    /// Hands the maps over for unmapping off the caller's thread, leaving
    /// the files alone (compaction replaced them already).
    pub fn release_maps(self, into: &mut Retired) {
        into.maps.push(self.map);
        into.maps.push(self.index.into_map());
        into.maps.push(self.time_index.into_map());
    }

    pub fn delete_files(&self) -> Result<()> {
        for p in [&self.log_path, &self.index.path, &self.time_index.path] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", p, e)),
            }
        }
        Ok(())
    }
}

/// Suffix of retired segment files awaiting deletion (see
/// [`Segment::retire`]).
pub const DELETED_SUFFIX: &str = ".deleted";

/// Segments removed from a log whose maps and files are still to be
/// released; `Send`, so another thread can do the slow part.
#[derive(Debug, Default)]
pub struct Retired {
    maps: Vec<MmapMut>,
    paths: Vec<PathBuf>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty() && self.paths.is_empty()
    }

    /// The renamed files, for tests and logs.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Unmaps and unlinks; returns the files that could not be removed.
    pub fn dispose(self) -> Vec<(PathBuf, io::Error)> {
        drop(self.maps);
        let mut failed = Vec::new();
        for p in self.paths {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => failed.push((p, e)),
            }
        }
        failed
    }
}

/// Opens a segment file for reading and writing, with its current length.
fn open_segment_file(log_path: &Path) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(log_path)
        .map_err(|e| StorageError::io("open segment", log_path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", log_path, e))?
        .len();
    Ok((file, len))
}
