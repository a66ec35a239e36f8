//! Snapshot archives, the storage half: take a consistent archive of a
//! partition's sealed state, read it out in CRC-checked chunks (resumable
//! from any byte offset), and install a received one in place of the
//! partition, reopening the [`Log`] without a restart.
//!
//! An archive is a directory of hard links to sealed segments and their
//! indexes (sealed files are never written again: compaction and retention
//! replace or unlink them, which leaves the links intact) plus
//! `snapshot.meta`, whose bytes open the archive stream:
//!
//! | at | field |
//! |---|---|
//! | 0 | magic `DRSA` (u32) |
//! | 4 | version = 1 (u32) |
//! | 8 | `manifest_bytes`: bytes from 12 up to the CRC (u32) |
//! | 12 | last_included_offset (u64) |
//! | 20 | last_included_term (u64) |
//! | 28 | log_start_offset (u64) |
//! | 36 | extra_bytes (u32), then the opaque `extra` blob |
//! | .. | file_count (u32), then per file: name_bytes (u16), name, file_bytes (u64), crc32c of the file (u32) |
//! | .. | crc32c of everything above (u32) |
//!
//! The stream is these bytes followed by every file's bytes in manifest
//! order. The manifest CRC covers each file's CRC, so it is the archive's
//! checksum; the receiver checks every chunk's CRC, the manifest CRC, and
//! each file's size and CRC as it completes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::fault::{Fault, FaultPoint};
use crate::log::{Log, SEGMENT_COUNT_MAX};
use crate::segment;

/// Largest chunk: 2 MiB (DESIGN.md; `wire::SNAPSHOT_CHUNK_BYTES_MAX`).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 2 << 20;
/// Largest `extra` blob (producer and group state): 64 MiB.
pub const SNAPSHOT_EXTRA_BYTES_MAX: usize = 64 << 20;
/// Name of the metadata file in an archive and in an installed partition.
pub const SNAPSHOT_META_FILE: &str = "snapshot.meta";
/// The archive header as received, in a staging directory: present while
/// a transfer is under way, so it can resume after a restart.
const TRANSFER_HEADER_FILE: &str = "transfer.header";
/// Which installer owns a staging directory (a random u64).
const TRANSFER_ID_FILE: &str = "transfer.id";
const MAGIC: u32 = u32::from_le_bytes(*b"DRSA");
const VERSION: u32 = 1;
/// Three files per segment.
const FILE_COUNT_MAX: usize = 3 * SEGMENT_COUNT_MAX;
/// Per file entry: u16 name length, a 30-byte name at most
/// (`<20 digits>.timeindex`), u64 size, u32 CRC.
const FILE_ENTRY_BYTES_MAX: usize = 2 + 30 + 8 + 4;
/// Fixed manifest fields + extra + file list.
const MANIFEST_BYTES_MAX: usize =
    24 + 4 + SNAPSHOT_EXTRA_BYTES_MAX + 4 + FILE_COUNT_MAX * FILE_ENTRY_BYTES_MAX;
/// Read buffer for file CRCs: 1 MiB.
const CRC_BUFFER_BYTES: usize = 1 << 20;

/// What an archive holds besides the segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last offset the archive's segments cover.
    pub last_included_offset: u64,
    pub last_included_term: u64,
    /// The log start the installed partition gets.
    pub log_start_offset: u64,
    /// Opaque to storage: the broker's producer and group state.
    pub extra: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileEntry {
    name: String,
    bytes: u64,
    crc: u32,
}

/// One piece of an archive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of `data` in the archive.
    pub offset: u64,
    pub data: Vec<u8>,
    /// crc32c of `data`.
    pub crc: u32,
    /// The archive ends with this chunk.
    pub done: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Archive {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn valid_name(name: &str) -> bool {
    let Some((stem, ext)) = name.split_once('.') else {
        return false;
    };
    stem.len() == 20
        && stem.bytes().all(|b| b.is_ascii_digit())
        && matches!(ext, "log" | "index" | "timeindex")
}

fn encode(meta: &SnapshotMeta, files: &[FileEntry]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&meta.last_included_offset.to_le_bytes());
    m.extend_from_slice(&meta.last_included_term.to_le_bytes());
    m.extend_from_slice(&meta.log_start_offset.to_le_bytes());
    m.extend_from_slice(&(meta.extra.len() as u32).to_le_bytes());
    m.extend_from_slice(&meta.extra);
    m.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for f in files {
        m.extend_from_slice(&(f.name.len() as u16).to_le_bytes());
        m.extend_from_slice(f.name.as_bytes());
        m.extend_from_slice(&f.bytes.to_le_bytes());
        m.extend_from_slice(&f.crc.to_le_bytes());
    }
    let mut out = Vec::with_capacity(16 + m.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Bytes of the whole header (magic through CRC), from its first 12 bytes.
fn header_len(first12: &[u8], path: &Path) -> Result<usize> {
    let u = |at: usize| {
        u32::from_le_bytes([
            first12[at],
            first12[at + 1],
            first12[at + 2],
            first12[at + 3],
        ])
    };
    if u(0) != MAGIC || u(4) != VERSION {
        return Err(bad(path, "not a version 1 snapshot archive"));
    }
    let m = u(8) as usize;
    if m > MANIFEST_BYTES_MAX {
        return Err(bad(
            path,
            format!("manifest of {m} bytes, more than {MANIFEST_BYTES_MAX}"),
        ));
    }
    Ok(12 + m + 4)
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Parses and verifies a whole header.
fn decode(h: &[u8], path: &Path) -> Result<(SnapshotMeta, Vec<FileEntry>)> {
    if h.len() < 16 || header_len(&h[..12], path)? != h.len() {
        return Err(bad(path, "header length does not add up"));
    }
    let (body, crc) = h.split_at(h.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad(path, "manifest crc32c mismatch"));
    }
    let mut c = Cursor {
        b: &body[12..],
        at: 0,
    };
    let parsed = (|| {
        let last_included_offset = c.u64()?;
        let last_included_term = c.u64()?;
        let log_start_offset = c.u64()?;
        let extra_len = c.u32()? as usize;
        if extra_len > SNAPSHOT_EXTRA_BYTES_MAX {
            return None;
        }
        let extra = c.take(extra_len)?.to_vec();
        let n = c.u32()? as usize;
        if n > FILE_COUNT_MAX {
            return None;
        }
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            let len = c.u16()? as usize;
            let name = std::str::from_utf8(c.take(len)?).ok()?.to_string();
            files.push(FileEntry {
                name,
                bytes: c.u64()?,
                crc: c.u32()?,
            });
        }
        (c.at == c.b.len()).then_some((
            SnapshotMeta {
                last_included_offset,
                last_included_term,
                log_start_offset,
                extra,
            },
            files,
        ))
    })();
    let Some((meta, files)) = parsed else {
        return Err(bad(path, "malformed manifest"));
    };
    if let Some(f) = files.iter().find(|f| !valid_name(&f.name)) {
        return Err(bad(path, format!("file name {:?} not allowed", f.name)));
    }
    Ok((meta, files))
}

/// The CRC that ends a complete header.
fn manifest_crc(header: &[u8]) -> u32 {
    let n = header.len();
    if n < 4 {
        return 0;
    }
    u32::from_le_bytes([header[n - 4], header[n - 3], header[n - 2], header[n - 1]])
}

fn file_crc(path: &Path) -> Result<(u64, u32)> {
    let mut f = File::open(path).map_err(|e| StorageError::io("open", path, e))?;
    let mut buf = vec![0u8; CRC_BUFFER_BYTES];
    let (mut bytes, mut crc) = (0u64, 0u32);
    // Bounded by the file size.
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| StorageError::io("read", path, e))?;
        if n == 0 {
            return Ok((bytes, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync dir", dir, e))
}

/// Writes `bytes` to `dir/name` atomically (tmp, fsync, rename, fsync dir).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| StorageError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| StorageError::io("rename", &tmp, e))?;
    fsync_dir(dir)
}

/// The metadata of an installed partition (or an archive directory), if any.
pub fn read_snapshot_meta(dir: &Path) -> Result<Option<SnapshotMeta>> {
    let p = dir.join(SNAPSHOT_META_FILE);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(decode(&b, &p)?.0)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("read", &p, e)),
    }
}

impl Log {
    /// Takes an archive in `snapshot_dir` (which must not exist, on the
    /// same file system): hard links of every sealed segment (and its
    /// indexes) that ends at or below `upto_offset` (the commit index),
    /// capped at the durable offset, plus `snapshot.meta`. Roll first to
    /// include the active segment's data. Everything is fsync'ed.
    /// Blocking: [`Log::plan_snapshot`] and [`SnapshotPlan::take`] split it
    /// for a caller that must not block (a shard).
    pub fn take_snapshot(
        &self,
        snapshot_dir: &Path,
        upto_offset: u64,
        extra: Vec<u8>,
    ) -> Result<SnapshotMeta> {
        self.plan_snapshot(upto_offset)?.take(snapshot_dir, extra)
    }

    /// What [`Log::take_snapshot`] would archive, decided from memory only
    /// (no I/O): the sealed segments that end at or below `upto_offset`
    /// (capped at the durable offset) and the archive's metadata.
    pub fn plan_snapshot(&self, upto_offset: u64) -> Result<SnapshotPlan> {
        let snapshot_dir = self.dir.as_path();
        let upto = upto_offset.min(self.durable_offset());
        let n = self.segments.len() - 1;
        let included: Vec<_> = self.segments[..n]
            .iter()
            .take_while(|s| s.next_offset <= upto)
            .collect();
        let Some(last) = included.last() else {
            return Err(bad(
                snapshot_dir,
                format!("no sealed segment ends at or below {upto}"),
            ));
        };
        // The last segment holding an entry names the archive's last entry
        // and its term (a sealed segment may hold none).
        let Some((last_entry_index, last_term)) = included
            .iter()
            .rev()
            .find_map(|s| s.last_entry_index.map(|e| (e, s.last_term)))
        else {
            return Err(bad(snapshot_dir, "the sealed segments hold no entry"));
        };
        Ok(SnapshotPlan {
            partition_dir: self.dir.clone(),
            bases: included.iter().map(|s| s.base_offset).collect(),
            last_included_offset: last.next_offset - 1,
            last_included_term: last_term,
            last_entry_index,
            log_start_offset: self.log_start_offset(),
        })
    }

    /// Replaces this partition with a completely received archive: the
    /// staging directory gets an empty active segment at the offset after
    /// the archive, the log start and `snapshot.meta`, is fsync'ed, and is
    /// exchanged with the partition directory in one `renameat2
    /// (RENAME_EXCHANGE)`; the parent is fsync'ed, the old state removed and
    /// the log reopened. A crash before the exchange leaves the old
    /// partition (the staging directory is wiped by the next installer);
    /// after it, the new one. Fault point `install`: hit before and after
    /// the exchange.
    pub fn install_snapshot(&mut self, mut inst: SnapshotInstaller) -> Result<SnapshotMeta> {
        inst.prepare()?;
        let (meta, old) = self.install_prepared(inst)?;
        sync_parent(&self.dir)?;
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(dir = %old.display(), error = %e, "could not remove the replaced partition");
        }
        Ok(meta)
    }

    /// The quick part of [`Log::install_snapshot`], for a shard: checks
    /// that the staging directory is still this installer's and prepared
    /// ([`SnapshotInstaller::prepare`], blocking, done before), exchanges it
    /// with the partition directory and reopens the log. Returns the
    /// directory that now holds the replaced partition (the staging name),
    /// for the caller to remove off its thread. The exchange is durable
    /// only once the caller ran [`sync_parent`]: acknowledge nothing
    /// before. Fault point `install`: hit before and after the exchange.
    pub fn install_prepared(&mut self, inst: SnapshotInstaller) -> Result<(SnapshotMeta, PathBuf)> {
        self.writable()?;
        let Some((meta, _)) = inst.finished() else {
            return Err(bad(&inst.staging, "archive not completely received"));
        };
        if !inst.prepared {
            return Err(bad(&inst.staging, "staging directory not prepared"));
        }
        inst.check_owner()?;
        let staging = inst.staging.clone();
        self.install_fault()?;
        exchange(&staging, &self.dir)?;
        self.install_fault()?;
        for name in [TRANSFER_HEADER_FILE, TRANSFER_ID_FILE] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        // The old partition is now under the staging name.
        if let Some(b) = &self.config.disk_budget {
            b.give(self.segments.iter().map(|s| s.disk_bytes()).sum());
        }
        // Past the exchange this log's files are gone: a failed reopen must
        // leave it refusing writes, never writing into the new directory.
        let (log, _) = match Log::open(&self.dir, self.config.clone()) {
            Ok(l) => l,
            Err(e) => {
                let reason = e.to_string();
                self.poison(StorageError::Poisoned {
                    path: self.dir.clone(),
                    reason: format!("reopening after a snapshot install: {reason}"),
                });
                return Err(StorageError::Poisoned {
                    path: self.dir.clone(),
                    reason,
                });
            }
        };
        *self = log;
        Ok((meta.clone(), staging))
    }

    fn install_fault(&mut self) -> Result<()> {
        match self.config.faults.hit(FaultPoint::Install) {
            None => Ok(()),
            Some(Fault::PowerCut) => Err(self.power_cut(FaultPoint::Install)),
            Some(f) => Err(StorageError::io("install", &self.dir, f.io_error())),
        }
    }
}

/// Makes a directory exchange of `partition_dir` durable: fsyncs its parent.
/// Blocking.
pub fn sync_parent(partition_dir: &Path) -> Result<()> {
    match partition_dir.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Atomically exchanges two directories (same file system).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    crate::compact::rename_exchange(a, b).map_err(|e| StorageError::io("renameat2 exchange", b, e))
}

/// An archive decided on a shard ([`Log::plan_snapshot`]) and taken
/// anywhere ([`SnapshotPlan::take`]): it names files only. Sealed segment
/// files are never written again; compaction replaces them (by rename) and
/// retention unlinks them, so a caller that takes the plan off the shard
/// keeps compaction out meanwhile, and a segment unlinked in between fails
/// the take (the caller plans again).
#[derive(Debug, Clone)]
pub struct SnapshotPlan {
    partition_dir: PathBuf,
    bases: Vec<u64>,
    pub last_included_offset: u64,
    pub last_included_term: u64,
    /// The Raft entry index of the last batch in the archive.
    pub last_entry_index: u64,
    pub log_start_offset: u64,
}

impl SnapshotPlan {
    /// Hard-links the planned segments into the archive directory, fsyncs
    /// them, computes their CRCs and writes `snapshot.meta`. Blocking. On
    /// an error the partial directory is removed.
    /// `snapshot_dir` must not exist and be on the partition's file system.
    pub fn take(self, snapshot_dir: &Path, extra: Vec<u8>) -> Result<SnapshotMeta> {
        if extra.len() > SNAPSHOT_EXTRA_BYTES_MAX {
            return Err(bad(snapshot_dir, format!("extra of {} bytes", extra.len())));
        }
        std::fs::create_dir(snapshot_dir)
            .map_err(|e| StorageError::io("create dir", snapshot_dir, e))?;
        let r = self.link_all(snapshot_dir, extra);
        if r.is_err() {
            let _ = std::fs::remove_dir_all(snapshot_dir);
        }
        r
    }

    fn link_all(&self, dir: &Path, extra: Vec<u8>) -> Result<SnapshotMeta> {
        let meta = SnapshotMeta {
            last_included_offset: self.last_included_offset,
            last_included_term: self.last_included_term,
            log_start_offset: self.log_start_offset,
            extra,
        };
        let mut files = Vec::with_capacity(self.bases.len() * 3);
        for &base in &self.bases {
            for src in segment::paths(&self.partition_dir, base) {
                let name = src
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let dst = dir.join(&name);
                std::fs::hard_link(&src, &dst)
                    .map_err(|e| StorageError::io("hard link", &src, e))?;
                // The sealed files may still wait for their first sync round.
                File::open(&dst)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| StorageError::io("fdatasync", &dst, e))?;
                let (bytes, crc) = file_crc(&dst)?;
                files.push(FileEntry { name, bytes, crc });
            }
        }
        write_atomic(dir, SNAPSHOT_META_FILE, &encode(&meta, &files))?;
        Ok(meta)
    }
}

/// Reads an archive directory out as a byte stream, in chunks, from any
/// offset (resume after an interrupted transfer).
pub struct SnapshotReader {
    dir: PathBuf,
    meta: SnapshotMeta,
    header: Vec<u8>,
    /// (entry, archive offset of its first byte).
    files: Vec<(FileEntry, u64)>,
    total_bytes: u64,
}

impl SnapshotReader {
    pub fn open(snapshot_dir: &Path) -> Result<Self> {
        let p = snapshot_dir.join(SNAPSHOT_META_FILE);
        let header = std::fs::read(&p).map_err(|e| StorageError::io("read", &p, e))?;
        let (meta, entries) = decode(&header, &p)?;
        let mut at = header.len() as u64;
        let mut files = Vec::with_capacity(entries.len());
        for f in entries {
            let len = f.bytes;
            files.push((f, at));
            at += len;
        }
        Ok(SnapshotReader {
            dir: snapshot_dir.to_path_buf(),
            meta,
            header,
            files,
            total_bytes: at,
        })
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The archive's identity: its manifest CRC (which covers every file's
    /// CRC). A resumed transfer continues only into the same archive.
    pub fn archive_id(&self) -> u32 {
        manifest_crc(&self.header)
    }

    /// The chunk at `offset`: at most `bytes_max` (capped at
    /// [`SNAPSHOT_CHUNK_BYTES_MAX`]) bytes, with its crc32c.
    pub fn read_chunk(&self, offset: u64, bytes_max: usize) -> Result<Chunk> {
        if offset > self.total_bytes {
            return Err(bad(
                &self.dir,
                format!("offset {offset} past the end {}", self.total_bytes),
            ));
        }
        let want =
            (bytes_max.clamp(1, SNAPSHOT_CHUNK_BYTES_MAX) as u64).min(self.total_bytes - offset);
        let mut data = Vec::with_capacity(want as usize);
        let mut at = offset;
        let end = offset + want;
        let h = self.header.len() as u64;
        if at < h {
            let to = end.min(h);
            data.extend_from_slice(&self.header[at as usize..to as usize]);
            at = to;
        }
        // The first file holding `at`, then on: bounded by the chunk size.
        let mut i = self.files.partition_point(|(f, s)| s + f.bytes <= at);
        while at < end && i < self.files.len() {
            let (f, start) = &self.files[i];
            let to = end.min(start + f.bytes);
            let p = self.dir.join(&f.name);
            let file = File::open(&p).map_err(|e| StorageError::io("open", &p, e))?;
            let from = data.len();
            data.resize(from + (to - at) as usize, 0);
            file.read_exact_at(&mut data[from..], at - start)
                .map_err(|e| StorageError::io("read", &p, e))?;
            at = to;
            i += 1;
        }
        Ok(Chunk {
            offset,
            crc: crc32c::crc32c(&data),
            done: end == self.total_bytes,
            data,
        })
    }

    /// Chunks from `from_offset` to the end.
    pub fn chunks(
        &self,
        from_offset: u64,
        bytes_max: usize,
    ) -> impl Iterator<Item = Result<Chunk>> + '_ {
        let mut at = Some(from_offset);
        std::iter::from_fn(move || {
            let off = at?;
            let r = self.read_chunk(off, bytes_max);
            at = match &r {
                Ok(c) if !c.done => Some(off + c.data.len() as u64),
                _ => None,
            };
            Some(r)
        })
    }
}

/// Receives an archive into `<partition>.staging`, checking every chunk,
/// the manifest and every file; [`Log::install_snapshot`] then swaps it in.
pub struct SnapshotInstaller {
    staging: PathBuf,
    received: u64,
    header: Vec<u8>,
    need_header: usize,
    parsed: Option<(SnapshotMeta, Vec<FileEntry>)>,
    file_index: usize,
    file: Option<(File, u64, u32)>,
    failed: Option<String>,
    /// Written into the staging directory as `transfer.id` when it was
    /// created: another installer that took the directory over replaced it.
    token: u64,
    prepared: bool,
}

impl SnapshotInstaller {
    /// The staging directory of `partition_dir`.
    pub fn staging_path(partition_dir: &Path) -> PathBuf {
        let mut s = partition_dir.as_os_str().to_owned();
        s.push(".staging");
        PathBuf::from(s)
    }

    /// Continues the transfer staged beside `partition_dir` by an earlier
    /// installer (this process or one before a restart): the header it
    /// received, every file that is complete and matches its CRC, and the
    /// durable part of the file it was writing (each chunk is fdatasync'ed
    /// before the next is taken). `None` when nothing resumable is there
    /// (then [`SnapshotInstaller::new`] starts over). Bytes that were
    /// damaged in the partial file fail that file's CRC at its end, which
    /// fails the install: never a mix. Blocking (reads the staged files).
    pub fn resume(partition_dir: &Path) -> Result<Option<Self>> {
        let staging = Self::staging_path(partition_dir);
        let hp = staging.join(TRANSFER_HEADER_FILE);
        let header = match std::fs::read(&hp) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("read", &hp, e)),
        };
        let Ok(parsed) = decode(&header, &hp) else {
            return Ok(None);
        };
        let tp = staging.join(TRANSFER_ID_FILE);
        let token = match std::fs::read(&tp) {
            Ok(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().unwrap_or_default()),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("read", &tp, e)),
        };
        let mut received = header.len() as u64;
        let mut file_index = 0;
        let mut file = None;
        for f in &parsed.1 {
            let p = staging.join(&f.name);
            let len = match std::fs::metadata(&p) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(StorageError::io("stat", &p, e)),
            };
            let (bytes, crc) = file_crc(&p)?;
            if bytes != len || bytes > f.bytes || (bytes == f.bytes && crc != f.crc) {
                return Ok(None);
            }
            received += bytes;
            if bytes < f.bytes {
                let h = OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .map_err(|e| StorageError::io("open", &p, e))?;
                file = Some((h, bytes, crc));
                break;
            }
            file_index += 1;
        }
        // Files past the resume point were never made durable: start them again.
        let next_file = file_index + usize::from(file.is_some());
        for f in parsed.1.iter().skip(next_file) {
            let p = staging.join(&f.name);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &p, e)),
            }
        }
        let need_header = header.len();
        Ok(Some(SnapshotInstaller {
            staging,
            received,
            header,
            need_header,
            parsed: Some(parsed),
            file_index,
            file,
            failed: None,
            token,
            prepared: false,
        }))
    }

    /// Bytes of the whole archive stream, once its header is in.
    pub fn total_bytes(&self) -> Option<u64> {
        let (_, files) = self.parsed.as_ref()?;
        Some(self.header.len() as u64 + files.iter().map(|f| f.bytes).sum::<u64>())
    }

    /// Whether the staging directory is still this installer's (no other
    /// installer started over in it meanwhile).
    fn check_owner(&self) -> Result<()> {
        let tp = self.staging.join(TRANSFER_ID_FILE);
        match std::fs::read(&tp) {
            Ok(b) if b == self.token.to_le_bytes() => Ok(()),
            Ok(_) | Err(_) => Err(bad(
                &self.staging,
                "the staging directory was taken over by another transfer",
            )),
        }
    }

    /// Readies a completely received archive to become the partition:
    /// an empty active segment at the offset after the archive, the log
    /// start and `snapshot.meta`, everything fsync'ed. Blocking (a few
    /// small files and fsyncs); the caller may add files of its own (Raft
    /// state) before or after. [`Log::install_prepared`] then swaps it in.
    pub fn prepare(&mut self) -> Result<()> {
        let Some((meta, header)) = self.finished() else {
            return Err(bad(&self.staging, "archive not completely received"));
        };
        self.check_owner()?;
        if self.prepared {
            return Ok(());
        }
        let staging = self.staging.clone();
        let next = meta.last_included_offset + 1;
        let active = staging.join(segment::file_name(next, "log"));
        File::create(&active).map_err(|e| StorageError::io("create", &active, e))?;
        let start = meta.log_start_offset.min(next);
        let mut ls = [0u8; 12];
        ls[..8].copy_from_slice(&start.to_le_bytes());
        let crc = crc32c::crc32c(&ls[..8]);
        ls[8..].copy_from_slice(&crc.to_le_bytes());
        let header = header.to_vec();
        write_atomic(&staging, crate::log::LOG_START_FILE, &ls)?;
        write_atomic(&staging, SNAPSHOT_META_FILE, &header)?;
        // Both transfer files stay until the exchange (the owner check; a
        // crash before it resumes a complete archive); `Log::open` ignores
        // them, and they are removed right after.
        fsync_dir(&staging)?;
        self.prepared = true;
        Ok(())
    }

    /// The identity of the archive being received ([`SnapshotReader::archive_id`]),
    /// once its header is in.
    pub fn archive_id(&self) -> Option<u32> {
        self.parsed.as_ref().map(|_| manifest_crc(&self.header))
    }

    /// Starts a fresh staging directory beside `partition_dir` (removing
    /// one left by an earlier, interrupted install).
    pub fn new(partition_dir: &Path) -> Result<Self> {
        let staging = Self::staging_path(partition_dir);
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove", &staging, e)),
        }
        std::fs::create_dir(&staging).map_err(|e| StorageError::io("create dir", &staging, e))?;
        let token = {
            use std::hash::{BuildHasher, Hasher};
            // A per-process random seed (std's hash keys), per call varied.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        write_atomic(&staging, TRANSFER_ID_FILE, &token.to_le_bytes())?;
        Ok(SnapshotInstaller {
            token,
            prepared: false,
            staging,
            received: 0,
            header: Vec::new(),
            need_header: 12,
            parsed: None,
            file_index: 0,
            file: None,
            failed: None,
        })
    }

    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// The archive offset the sender should continue from.
    pub fn next_offset(&self) -> u64 {
        self.received
    }

    pub fn is_complete(&self) -> bool {
        self.finished().is_some()
    }

    /// The archive's metadata (its `extra` included), once complete.
    pub fn meta(&self) -> Option<&SnapshotMeta> {
        self.finished().map(|(m, _)| m)
    }

    fn finished(&self) -> Option<(&SnapshotMeta, &[u8])> {
        let (meta, files) = self.parsed.as_ref()?;
        (self.failed.is_none() && self.file_index == files.len())
            .then_some((meta, &self.header[..]))
    }

    /// Takes the chunk at `offset` (which must be [`Self::next_offset`])
    /// if `crc` matches. A bad chunk changes nothing; a file or manifest
    /// that fails its check fails the whole install.
    pub fn write_chunk(&mut self, offset: u64, data: &[u8], crc: u32) -> Result<()> {
        if let Some(r) = &self.failed {
            return Err(bad(&self.staging, format!("install failed earlier: {r}")));
        }
        if data.len() > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(bad(&self.staging, format!("chunk of {} bytes", data.len())));
        }
        if data.is_empty() {
            // It would move nothing: a stream of them would never end.
            return Err(bad(&self.staging, format!("empty chunk at {offset}")));
        }
        let computed = crc32c::crc32c(data);
        if computed != crc {
            return Err(bad(
                &self.staging,
                format!("chunk at {offset}: crc32c {computed:#010x}, expected {crc:#010x}"),
            ));
        }
        if offset != self.received {
            return Err(bad(
                &self.staging,
                format!("chunk at {offset}, expected {}", self.received),
            ));
        }
        let r = self.take(data);
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    fn take(&mut self, mut data: &[u8]) -> Result<()> {
        let files_before = self.file_index + usize::from(self.file.is_some());
        // Bounded: every pass consumes bytes or fails.
        while !data.is_empty() || (self.parsed.is_some() && self.file.is_none() && !self.all_done())
        {
            if self.parsed.is_none() {
                let n = (self.need_header - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..n]);
                data = &data[n..];
                self.received += n as u64;
                if self.header.len() == 12 && self.need_header == 12 {
                    self.need_header = header_len(&self.header, &self.staging)?;
                }
                if self.header.len() == self.need_header && self.need_header > 12 {
                    self.parsed = Some(decode(&self.header, &self.staging)?);
                    write_atomic(&self.staging, TRANSFER_HEADER_FILE, &self.header)?;
                }
                continue;
            }
            if self.all_done() {
                return Err(bad(&self.staging, "bytes past the end of the archive"));
            }
            let entry = match &self.parsed {
                Some((_, files)) => files[self.file_index].clone(),
                None => continue,
            };
            let p = self.staging.join(&entry.name);
            if self.file.is_none() {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(|e| StorageError::io("create", &p, e))?;
                self.file = Some((f, 0, 0));
            }
            let Some((f, written, crc)) = self.file.as_mut() else {
                continue;
            };
            let n = ((entry.bytes - *written) as usize).min(data.len());
            f.write_all(&data[..n])
                .map_err(|e| StorageError::io("write", &p, e))?;
            *crc = crc32c::crc32c_append(*crc, &data[..n]);
            *written += n as u64;
            data = &data[n..];
            self.received += n as u64;
            if *written == entry.bytes {
                if *crc != entry.crc {
                    return Err(bad(
                        &p,
                        format!("file crc32c {crc:#010x}, manifest says {:#010x}", entry.crc),
                    ));
                }
                f.sync_data()
                    .map_err(|e| StorageError::io("fdatasync", &p, e))?;
                self.file = None;
                self.file_index += 1;
            }
        }
        if let Some((f, _, _)) = &self.file {
            // What `next_offset` reports is durable: a resume starts there.
            f.sync_data()
                .map_err(|e| StorageError::io("fdatasync", &self.staging, e))?;
        }
        // New files' names must survive a crash too.
        if self.file_index + usize::from(self.file.is_some()) != files_before || self.all_done() {
            fsync_dir(&self.staging)?;
        }
        Ok(())
    }

    fn all_done(&self) -> bool {
        self.parsed
            .as_ref()
            .is_some_and(|(_, files)| self.file_index == files.len())
    }
}
