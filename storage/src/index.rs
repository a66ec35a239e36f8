//! Sparse index files: `<base>.index` (offset → position) and
//! `<base>.timeindex` (timestamp → position), both memory-mapped.
//!
//! While a segment is active its index files are preallocated to capacity and
//! entries are written into the map without syncing (recovery rebuilds the
//! active segment's index from the scan anyway). Sealing writes a footer
//! after the last entry, shrinks the file to fit and syncs it with the next
//! sync job. A sealed index is trusted only if its footer checks out:
//!
//! | at | field |
//! |---|---|
//! | 0 | magic `DRIX` (u32) |
//! | 4 | entry_bytes (u32) |
//! | 8 | entry_count (u32) |
//! | 12 | data_bytes of the segment file (u32) |
//! | 16 | next_offset: end of the segment's offset span (u64) |
//! | 24 | max_timestamp_ms (i64) |
//! | 32 | last_term (u64) |
//! | 40 | last_batch_base (u64) |
//! | 48 | crc32c over all entries and footer bytes [0..48) (u32) |
//! | 52 | zero (u32) |

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

pub(crate) const FOOTER_BYTES: usize = 56;
const FOOTER_MAGIC: u32 = u32::from_le_bytes(*b"DRIX");
/// Offset index entry: relative offset u32, position u32.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Time index entry: max timestamp so far i64, relative offset u32, position u32.
pub(crate) const TIME_ENTRY_BYTES: usize = 16;

/// What a sealed index footer records about its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub data_bytes: u32,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    pub last_term: u64,
    pub last_batch_base: u64,
}

pub(crate) struct IndexFile {
    pub path: PathBuf,
    /// Closed once the index is sealed and durable (the map stays): a log of
    /// many segments must not hold a descriptor per index file.
    file: Option<File>,
    map: MmapMut,
    entry_bytes: usize,
    count: usize,
    capacity: usize,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

impl IndexFile {
    /// Gives up the file and hands out the map (to be dropped elsewhere).
    pub fn into_map(self) -> MmapMut {
        self.map
    }
}

impl IndexFile {
    /// Creates (or replaces) an empty index with room for `capacity` entries.
    pub fn create(path: &Path, entry_bytes: usize, capacity: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let len = capacity * entry_bytes + FOOTER_BYTES;
        file.set_len(len as u64)?;
        // SAFETY: the file is private to this partition (one owner thread),
        // nobody truncates it while mapped except this type, which never
        // touches bytes past the current file length afterwards.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(IndexFile {
            path: path.to_owned(),
            file: Some(file),
            map,
            entry_bytes,
            count: 0,
            capacity,
        })
    }

    /// Opens a sealed index; `None` if it is missing, short or its footer or
    /// CRC does not check out.
    pub fn open_sealed(path: &Path, entry_bytes: usize) -> Option<(Self, Footer)> {
        let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        let len = file.metadata().ok()?.len() as usize;
        if len < FOOTER_BYTES || (len - FOOTER_BYTES) % entry_bytes != 0 {
            return None;
        }
        // SAFETY: as in `create`.
        let map = unsafe { MmapMut::map_mut(&file).ok()? };
        let count = (len - FOOTER_BYTES) / entry_bytes;
        let f = &map[len - FOOTER_BYTES..];
        if le_u32(f, 0) != FOOTER_MAGIC
            || le_u32(f, 4) as usize != entry_bytes
            || le_u32(f, 8) as usize != count
            || crc32c::crc32c(&map[..len - 8]) != le_u32(f, 48)
        {
            return None;
        }
        let footer = Footer {
            data_bytes: le_u32(f, 12),
            next_offset: le_u64(f, 16),
            max_timestamp_ms: le_u64(f, 24) as i64,
            last_term: le_u64(f, 32),
            last_batch_base: le_u64(f, 40),
        };
        Some((
            IndexFile {
                path: path.to_owned(),
                file: Some(file),
                map,
                entry_bytes,
                count,
                capacity: count,
            },
            footer,
        ))
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn entry(&self, i: usize) -> &[u8] {
        &self.map[i * self.entry_bytes..(i + 1) * self.entry_bytes]
    }

    /// Adds an entry; a full index drops it (the index is sparse, lookups
    /// then scan further, which stays correct).
    pub fn push(&mut self, entry: &[u8]) {
        debug_assert_eq!(entry.len(), self.entry_bytes);
        if self.count < self.capacity {
            let at = self.count * self.entry_bytes;
            self.map[at..at + self.entry_bytes].copy_from_slice(entry);
            self.count += 1;
        }
    }

    /// Forgets entries from `count` on (after a truncation).
    pub fn truncate_entries(&mut self, count: usize) {
        self.count = self.count.min(count);
    }

    /// Writes the footer after the last entry and shrinks the file to fit.
    /// `torn` writes only half the footer (fault injection).
    pub fn seal(&mut self, footer: Footer, torn: bool) -> io::Result<()> {
        let at = self.count * self.entry_bytes;
        let mut f = [0u8; FOOTER_BYTES];
        f[0..4].copy_from_slice(&FOOTER_MAGIC.to_le_bytes());
        f[4..8].copy_from_slice(&(self.entry_bytes as u32).to_le_bytes());
        f[8..12].copy_from_slice(&(self.count as u32).to_le_bytes());
        f[12..16].copy_from_slice(&footer.data_bytes.to_le_bytes());
        f[16..24].copy_from_slice(&footer.next_offset.to_le_bytes());
        f[24..32].copy_from_slice(&footer.max_timestamp_ms.to_le_bytes());
        f[32..40].copy_from_slice(&footer.last_term.to_le_bytes());
        f[40..48].copy_from_slice(&footer.last_batch_base.to_le_bytes());
        let mut crc = crc32c::crc32c(&self.map[..at]);
        crc = crc32c::crc32c_append(crc, &f[..48]);
        f[48..52].copy_from_slice(&crc.to_le_bytes());
        let n = if torn { FOOTER_BYTES / 2 } else { FOOTER_BYTES };
        self.map[at..at + n].copy_from_slice(&f[..n]);
        if torn {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file()?.set_len((at + FOOTER_BYTES) as u64)?;
        self.capacity = self.count;
        Ok(())
    }

    /// The open file, opened again if it was released.
    pub fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().read(true).write(true).open(&self.path)?);
        }
        Ok(self.file.as_ref().expect("just opened"))
    }

    /// Closes the file descriptor (the map stays valid for reads).
    pub fn release(&mut self) {
        self.file = None;
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }
}

pub(crate) fn offset_entry(rel_offset: u32, position: u32) -> [u8; OFFSET_ENTRY_BYTES] {
    let mut e = [0u8; OFFSET_ENTRY_BYTES];
    e[..4].copy_from_slice(&rel_offset.to_le_bytes());
    e[4..].copy_from_slice(&position.to_le_bytes());
    e
}

pub(crate) fn time_entry(ts: i64, rel_offset: u32, position: u32) -> [u8; TIME_ENTRY_BYTES] {
    let mut e = [0u8; TIME_ENTRY_BYTES];
    e[..8].copy_from_slice(&ts.to_le_bytes());
    e[8..12].copy_from_slice(&rel_offset.to_le_bytes());
    e[12..].copy_from_slice(&position.to_le_bytes());
    e
}

/// Position to start scanning from for `rel_offset`: the last entry at or
/// below it (0 if none).
pub(crate) fn lookup_offset(ix: &IndexFile, rel_offset: u32) -> u32 {
    let (mut lo, mut hi) = (0usize, ix.count());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if le_u32(ix.entry(mid), 0) <= rel_offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        0
    } else {
        le_u32(ix.entry(lo - 1), 4)
    }
}

/// Position (in the segment file) of offset-index entry `i` (< `count()`).
pub(crate) fn offset_entry_position(ix: &IndexFile, i: usize) -> u32 {
    le_u32(ix.entry(i), 4)
}

/// Position to start scanning from for the first batch with max timestamp
/// >= `ts`: the entry before the first whose running max reaches `ts`.
pub(crate) fn lookup_time(ix: &IndexFile, ts: i64) -> u32 {
    let (mut lo, mut hi) = (0usize, ix.count());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if (le_u64(ix.entry(mid), 0) as i64) < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        0
    } else {
        le_u32(ix.entry(lo - 1), 12)
    }
}

/// The running max timestamp of the last time-index entry, if any.
pub(crate) fn last_time(ix: &IndexFile) -> Option<i64> {
    ix.count()
        .checked_sub(1)
        .map(|i| le_u64(ix.entry(i), 0) as i64)
}
