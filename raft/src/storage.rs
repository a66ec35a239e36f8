//! How Raft reads the log: the [`Storage`] trait, and [`MemStorage`], an
//! in-memory implementation for tests and the simulation.
//!
//! Raft never writes through this trait. Everything to write comes out in a
//! [`crate::Ready`]; the driver writes it (to the partition log, in DRMQ) and
//! calls [`crate::Raft::advance`]. Raft reads back what was written here.

use crate::error::StorageError;
use crate::types::{Entry, HardState, Membership, SnapshotMeta};

/// What a node restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The last hard state the driver persisted.
    pub hard_state: HardState,
    /// The membership in effect at `membership_index`. Raft scans the entries
    /// after `membership_index` for later membership entries, so the driver
    /// keeps this point recent (e.g. its applied index, or the snapshot index).
    pub membership: Membership,
    pub membership_index: u64,
}

/// Read access to the durable log.
///
/// # Correctness
/// - The log is consecutive: every index in `first_index()..=last_index()` holds
///   an entry, with no hole; `term(first_index() - 1)` is the snapshot's term.
/// - It holds exactly what the driver persisted from `Ready`s: an append of
///   entries starting at index `i` first deletes every entry at `i` or above.
/// - `entries(lo, hi, max_bytes)` returns at least one entry when `lo < hi`,
///   even if that entry alone exceeds `max_bytes`.
/// - A read inside the stated range only fails on an I/O error.
pub trait Storage {
    /// Hard state and membership to restart from.
    fn initial_state(&self) -> Result<InitialState, StorageError>;
    /// The first index still in the log (snapshot index + 1).
    fn first_index(&self) -> u64;
    /// The last index in the log (the snapshot index when the log is empty).
    fn last_index(&self) -> u64;
    /// The term of entry `index`, for `index` in `first_index()-1..=last_index()`.
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Entries `lo..hi`, stopping before `max_bytes` is exceeded (but at least one).
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// The latest snapshot (index 0 when there is none).
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// About how many bytes of log entries from `index` on (an estimate is
    /// enough: it only decides between replay and snapshot, see
    /// [`crate::Config::snapshot_catch_up_bytes`]). 0 by default.
    fn bytes_from(&self, _index: u64) -> u64 {
        0
    }
    /// Up to `max_bytes` of the payload of the snapshot at `index`, from
    /// `offset`. `SnapshotOutOfDate` if that snapshot was replaced.
    fn snapshot_chunk(
        &self,
        index: u64,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StorageError>;
}

/// An in-memory log, hard state and snapshot. The driver writes it with
/// [`MemStorage::append`], [`MemStorage::set_hard_state`],
/// [`MemStorage::install_snapshot`] and [`MemStorage::compact`].
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    snapshot_data: Vec<u8>,
    /// Entries `snapshot.index + 1 ..`.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// An empty log whose initial membership is `membership` (at index 0).
    pub fn new(membership: Membership) -> Self {
        MemStorage {
            snapshot: SnapshotMeta {
                membership,
                ..SnapshotMeta::default()
            },
            ..MemStorage::default()
        }
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The latest snapshot's payload.
    pub fn snapshot_data(&self) -> &[u8] {
        &self.snapshot_data
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Appends `entries`, first deleting every entry at or above `entries[0].index`.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index > self.snapshot.index && first.index <= self.last_index() + 1,
            "append at {} leaves a hole or rewrites the snapshot (log {}..={})",
            first.index,
            self.first_index(),
            self.last_index()
        );
        let keep = (first.index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                first.index + offset as u64,
                "entries must be consecutive"
            );
        }
        self.entries.extend_from_slice(entries);
    }

    /// Records a snapshot taken by the driver at `meta.index` (<= the applied
    /// index) and drops the log up to it. `meta.size_bytes` is set from `data`.
    pub fn compact(&mut self, mut meta: SnapshotMeta, data: Vec<u8>) {
        meta.size_bytes = data.len() as u64;
        assert!(meta.index > self.snapshot.index && meta.index <= self.last_index());
        assert_eq!(
            self.term(meta.index),
            Ok(meta.term),
            "snapshot term must match the log"
        );
        let drop = (meta.index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = meta;
        self.snapshot_data = data;
    }

    /// Replaces the whole log by a snapshot received from the leader.
    pub fn install_snapshot(&mut self, mut meta: SnapshotMeta, data: Vec<u8>) {
        meta.size_bytes = data.len() as u64;
        self.entries.clear();
        self.snapshot = meta;
        self.snapshot_data = data;
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            membership: self.snapshot.membership.clone(),
            membership_index: self.snapshot.index,
        })
    }

    fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.snapshot.index {
            return Err(StorageError::Compacted(index));
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        Ok(self.entries[(index - self.snapshot.index - 1) as usize].term)
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo <= self.snapshot.index {
            return Err(StorageError::Compacted(lo));
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable(hi));
        }
        let mut out = Vec::new();
        let mut total_bytes = 0;
        for index in lo..hi {
            let entry = &self.entries[(index - self.snapshot.index - 1) as usize];
            total_bytes += entry.size_bytes();
            if !out.is_empty() && total_bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }

    fn bytes_from(&self, index: u64) -> u64 {
        let skip = index.saturating_sub(self.snapshot.index + 1) as usize;
        self.entries.iter().skip(skip).map(Entry::size_bytes).sum()
    }

    fn snapshot_chunk(
        &self,
        index: u64,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StorageError> {
        if index != self.snapshot.index {
            return Err(StorageError::SnapshotOutOfDate(index));
        }
        let start = (offset as usize).min(self.snapshot_data.len());
        let end = (start + max_bytes as usize).min(self.snapshot_data.len());
        Ok(self.snapshot_data[start..end].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::data(vec![index as u8]),
        }
    }

    #[test]
    fn append_truncates_conflicts_and_compact_moves_the_log_start() {
        let mut s = MemStorage::new(Membership::with_voters([1]));
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        s.append(&[entry(3, 2), entry(4, 2)]);
        assert_eq!(s.last_index(), 4);
        assert_eq!(s.term(3), Ok(2));
        s.compact(
            SnapshotMeta {
                index: 2,
                term: 1,
                ..Default::default()
            },
            vec![9],
        );
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.term(2), Ok(1));
        assert_eq!(s.term(1), Err(StorageError::Compacted(1)));
        assert_eq!(
            s.entries(3, 5, 0).unwrap().len(),
            1,
            "at least one entry even over budget"
        );
        assert_eq!(s.snapshot_chunk(2, 0, 10), Ok(vec![9]));
        assert_eq!(
            s.snapshot_chunk(1, 0, 10),
            Err(StorageError::SnapshotOutOfDate(1))
        );
    }
}
