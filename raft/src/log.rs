//! The Raft log as Raft sees it: the durable part (read through [`Storage`])
//! followed by an unstable tail of entries (and possibly a snapshot) that were
//! accepted in memory but not yet persisted by the driver.

use crate::error::{Error, StorageError};
use crate::storage::Storage;
use crate::types::{Entry, SnapshotMeta};

/// Entries and a snapshot not yet durable.
#[derive(Debug, Default)]
struct Unstable {
    /// A snapshot received from the leader, to be installed by the driver.
    snapshot: Option<SnapshotMeta>,
    /// Index of `entries[0]`.
    offset: u64,
    entries: Vec<Entry>,
    /// Entries up to this index were handed out in a `Ready` not yet advanced.
    in_progress: u64,
    snapshot_in_progress: bool,
}

/// The log: storage plus unstable tail, with the commit and applied indexes.
#[derive(Debug)]
pub struct RaftLog<S> {
    pub(crate) storage: S,
    unstable: Unstable,
    pub(crate) committed: u64,
    /// Highest index handed to the driver to apply.
    pub(crate) applied: u64,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(storage: S, committed: u64, applied: u64) -> Self {
        let last = storage.last_index();
        RaftLog {
            storage,
            unstable: Unstable {
                offset: last + 1,
                in_progress: last,
                ..Unstable::default()
            },
            committed,
            applied,
        }
    }

    pub fn first_index(&self) -> u64 {
        match &self.unstable.snapshot {
            Some(snapshot) => snapshot.index + 1,
            None => self.storage.first_index(),
        }
    }

    pub fn last_index(&self) -> u64 {
        if let Some(last) = self.unstable.entries.last() {
            return last.index;
        }
        match &self.unstable.snapshot {
            Some(snapshot) => snapshot.index,
            None => self.storage.last_index(),
        }
    }

    /// Entries up to this index are durable (and match what Raft holds).
    pub fn persisted_index(&self) -> u64 {
        if self.unstable.entries.is_empty() && self.unstable.snapshot.is_none() {
            self.storage.last_index()
        } else {
            self.unstable.offset - 1
        }
    }

    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        if let Some(snapshot) = &self.unstable.snapshot {
            if index == snapshot.index {
                return Ok(snapshot.term);
            }
            if index < snapshot.index {
                return Err(StorageError::Compacted(index));
            }
        }
        if index >= self.unstable.offset {
            let position = (index - self.unstable.offset) as usize;
            return match self.unstable.entries.get(position) {
                Some(entry) => Ok(entry.term),
                None => Err(StorageError::Unavailable(index)),
            };
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        self.storage.term(index)
    }

    pub fn last_term(&self) -> u64 {
        // The last index is always readable: it is either an unstable entry, the
        // unstable snapshot, or inside storage's range.
        self.term(self.last_index()).unwrap_or(0)
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Ok(term)
    }

    /// Raft paper 5.4.1: is a log ending at (`last_index`, `last_term`) at
    /// least as up to date as ours?
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// Entries `lo..hi` within `max_bytes` (at least one).
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted(lo));
        }
        assert!(
            hi <= self.last_index() + 1,
            "entries({lo}, {hi}) past last {}",
            self.last_index()
        );
        let mut out = if lo < self.unstable.offset {
            let stable_hi = hi.min(self.unstable.offset);
            self.storage.entries(lo, stable_hi, max_bytes)?
        } else {
            Vec::new()
        };
        if hi > self.unstable.offset
            && (out.is_empty() || out.last().map(|e| e.index + 1) == Some(self.unstable.offset))
        {
            let mut total_bytes: u64 = out.iter().map(Entry::size_bytes).sum();
            let start = lo.max(self.unstable.offset);
            for index in start..hi {
                let entry = &self.unstable.entries[(index - self.unstable.offset) as usize];
                total_bytes += entry.size_bytes();
                if !out.is_empty() && total_bytes > max_bytes {
                    break;
                }
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Largest index <= `index` whose term is <= `term` (fast back-off; the
    /// idea of etcd's findConflictByTerm). Stops at the log start.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> u64 {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Ok(t) if t > term && index > 0 => index -= 1,
                _ => return index,
            }
        }
    }

    /// Appends entries (leader path); returns the new last index.
    pub fn append(&mut self, entries: Vec<Entry>) -> u64 {
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.committed,
                "append below commit {}",
                self.committed
            );
            self.truncate_and_append(entries);
        }
        self.last_index()
    }

    /// Follower path of AppendEntries: if our log matches (`prev_index`,
    /// `prev_term`), append `entries` (truncating a conflicting suffix) and
    /// return `(last_new_index, first_rewritten_index)`.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
    ) -> Option<(u64, Option<u64>)> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        let conflict = entries
            .iter()
            .position(|e| !self.match_term(e.index, e.term));
        let Some(position) = conflict else {
            return Some((last_new, None));
        };
        let first = entries[position].index;
        assert!(
            first > self.committed,
            "entry {first} conflicts with committed log (commit {})",
            self.committed
        );
        let rest: Vec<Entry> = entries.into_iter().skip(position).collect();
        self.truncate_and_append(rest);
        Some((last_new, Some(first)))
    }

    fn truncate_and_append(&mut self, entries: Vec<Entry>) {
        let first = entries[0].index;
        let unstable = &mut self.unstable;
        if first == unstable.offset + unstable.entries.len() as u64 {
            unstable.entries.extend(entries);
        } else if first <= unstable.offset {
            // Replaces the whole unstable tail (and some durable entries, which
            // the next Ready overwrites).
            unstable.offset = first;
            unstable.entries = entries;
        } else {
            unstable
                .entries
                .truncate((first - unstable.offset) as usize);
            unstable.entries.extend(entries);
        }
        unstable.in_progress = unstable.in_progress.min(first - 1);
    }

    pub fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond last index {}",
                self.last_index()
            );
            self.committed = index;
        }
    }

    /// Replaces the log by a snapshot (follower receiving InstallSnapshot).
    pub fn restore(&mut self, meta: SnapshotMeta) {
        assert!(meta.index > self.committed, "restore below commit");
        self.committed = meta.index;
        self.applied = meta.index;
        self.unstable = Unstable {
            offset: meta.index + 1,
            in_progress: meta.index,
            snapshot: Some(meta),
            ..Unstable::default()
        };
    }

    /// A snapshot received from the leader is not yet durable.
    pub fn has_pending_snapshot(&self) -> bool {
        self.unstable.snapshot.is_some()
    }

    /// Entries not yet handed out for persistence.
    pub fn has_unstable(&self) -> bool {
        let unstable = &self.unstable;
        (unstable.snapshot.is_some() && !unstable.snapshot_in_progress)
            || unstable.offset + unstable.entries.len() as u64 > unstable.in_progress + 1
    }

    /// Takes the unstable snapshot and entries to persist, marking them in progress.
    pub fn take_unstable(&mut self) -> (Option<SnapshotMeta>, Vec<Entry>) {
        let unstable = &mut self.unstable;
        let snapshot = if unstable.snapshot_in_progress {
            None
        } else {
            unstable.snapshot.clone()
        };
        unstable.snapshot_in_progress = unstable.snapshot.is_some();
        let from = (unstable.in_progress + 1).max(unstable.offset);
        let entries = unstable.entries[(from - unstable.offset) as usize..].to_vec();
        unstable.in_progress = unstable.offset + unstable.entries.len() as u64 - 1;
        (snapshot, entries)
    }

    /// The driver persisted entries up to (`index`, `term`) and maybe a snapshot.
    pub fn stable_to(&mut self, snapshot_index: Option<u64>, index: u64, term: u64) {
        let unstable = &mut self.unstable;
        if let Some(snapshot_index) = snapshot_index {
            if unstable.snapshot.as_ref().map(|s| s.index) == Some(snapshot_index) {
                unstable.snapshot = None;
                unstable.snapshot_in_progress = false;
            }
        }
        if index < unstable.offset {
            return;
        }
        let position = (index - unstable.offset) as usize;
        if unstable.entries.get(position).map(|e| e.term) == Some(term) {
            unstable.entries.drain(..=position);
            unstable.offset = index + 1;
        }
    }

    /// Committed, durable entries not yet handed out, within `max_bytes`.
    pub fn next_committed(&self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let hi = self.committed.min(self.persisted_index());
        if hi <= self.applied {
            return Ok(Vec::new());
        }
        self.entries(self.applied + 1, hi + 1, max_bytes)
    }

    /// The index everything committed and persisted here reaches.
    pub fn next_applied(&self) -> u64 {
        self.committed.min(self.persisted_index())
    }

    pub fn has_next_committed(&self) -> bool {
        self.committed.min(self.persisted_index()) > self.applied
    }
}

/// Maps a storage error where the entry must exist to a fatal error.
pub(crate) fn must(result: Result<u64, StorageError>) -> Result<u64, Error> {
    result.map_err(Error::Storage)
}
