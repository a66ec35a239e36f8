//! Idempotent producers: per partition, the sequence state of each producer
//! id, so a batch retried after a timeout or a reconnect is appended once.
//!
//! A producer stamps `producer_id`, `producer_epoch` and `base_sequence` into
//! each batch (wire batch header); sequences count records per partition.
//! Until the controller hands out producer ids, clients choose a random
//! 63-bit id (a collision needs about 3 billion producers for even odds).

use std::collections::{HashMap, VecDeque};

use storage::Log;

use wire::ErrorCode;

/// Recent batches remembered per producer: a client retries only what is
/// in flight, so this bounds the batches an idempotent client may keep in
/// flight per partition (the pipeline producer's default window is 64).
/// 64 x 16 bytes per producer.
pub const RECENT_BATCHES_MAX: usize = wire::IDEMPOTENCE_WINDOW_BATCHES;
/// Producers tracked per partition; past this the one idle longest (lowest
/// last offset) is forgotten, and its next batch is accepted as from a new
/// producer. 10,000 × ~200 bytes = 2 MB per partition at worst.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Appended {
    epoch: i16,
    base_sequence: i32,
    record_count: u32,
    /// The Raft entry holding the batch.
    entry: u64,
}

impl Appended {
    fn same_batch(&self, id: BatchId) -> bool {
        self.epoch == id.epoch
            && self.base_sequence == id.base_sequence
            && self.record_count == id.record_count
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ProducerState {
    epoch: i16,
    next_sequence: i32,
    recent: VecDeque<Appended>,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// A retry of a batch already in the log (entry `entry`): answer with
    /// its offsets once that entry is committed.
    Duplicate {
        entry: u64,
    },
    /// Refused: fenced, out of order, or older than the window.
    Reject(Rejection),
}

/// Why a batch is refused (an [`crate::Error`] when answered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("epoch {epoch} is older than {current}")]
    Fenced { epoch: i16, current: i16 },
    #[error("new epoch {epoch} must start at sequence 0")]
    NewEpochSequence { epoch: i16 },
    #[error("sequence {sequence} is older than the {window} batches remembered")]
    SequenceTooOld { sequence: i32, window: usize },
    #[error("expected sequence {expected}, got {got}")]
    OutOfOrderSequence { expected: i32, got: i32 },
}

impl Rejection {
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::Fenced { .. } => ErrorCode::ProducerFenced,
            Rejection::SequenceTooOld { .. } => ErrorCode::DuplicateSequence,
            Rejection::NewEpochSequence { .. } | Rejection::OutOfOrderSequence { .. } => {
                ErrorCode::OutOfOrderSequence
            }
        }
    }
}

/// The identity fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub record_count: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerState>,
}

impl ProducerTable {
    pub fn check(&self, id: BatchId) -> Verdict {
        if id.producer_id < 0 {
            return Verdict::Append;
        }
        let Some(state) = self.producers.get(&id.producer_id) else {
            return Verdict::Append;
        };
        if id.epoch < state.epoch {
            return Verdict::Reject(Rejection::Fenced {
                epoch: id.epoch,
                current: state.epoch,
            });
        }
        if id.epoch > state.epoch {
            return if id.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::Reject(Rejection::NewEpochSequence { epoch: id.epoch })
            };
        }
        if let Some(a) = state.recent.iter().find(|a| a.same_batch(id)) {
            return Verdict::Duplicate { entry: a.entry };
        }
        if id.base_sequence == state.next_sequence {
            return Verdict::Append;
        }
        let behind = state.next_sequence.wrapping_sub(id.base_sequence);
        if behind > 0 {
            Verdict::Reject(Rejection::SequenceTooOld {
                sequence: id.base_sequence,
                window: RECENT_BATCHES_MAX,
            })
        } else {
            Verdict::Reject(Rejection::OutOfOrderSequence {
                expected: state.next_sequence,
                got: id.base_sequence,
            })
        }
    }

    /// Records a batch held by Raft entry `entry`. Recording the same batch
    /// again (the leader records at proposal and again when it persists)
    /// changes nothing.
    pub fn record(&mut self, id: BatchId, entry: u64) {
        if id.producer_id < 0 {
            return;
        }
        if let Some(state) = self.producers.get_mut(&id.producer_id) {
            if state.recent.iter().any(|a| a.same_batch(id)) {
                // The same entry again (proposal, then persistence): nothing
                // changes. A second copy in a later entry (written after
                // the table had forgotten the first) is not recorded: a
                // retry is answered with the first copy's offsets, and
                // `recent` stays in entry order for
                // [`ProducerTable::truncate_from`].
                return;
            }
            if id.epoch < state.epoch {
                return; // fenced: never moves the producer back
            }
        }
        if !self.producers.contains_key(&id.producer_id)
            && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX
        {
            let idlest = self
                .producers
                .iter()
                .min_by_key(|(_, s)| s.recent.back().map_or(0, |a| a.entry))
                .map(|(&pid, _)| pid);
            if let Some(pid) = idlest {
                self.producers.remove(&pid);
            }
        }
        let state = self.producers.entry(id.producer_id).or_default();
        if id.epoch != state.epoch {
            // Batches of the old epoch stay (a truncation back into that
            // epoch needs them), but never match a batch of the new one.
            state.epoch = id.epoch;
            state.next_sequence = id.base_sequence;
        }
        let end = id.base_sequence.wrapping_add(id.record_count as i32);
        // A batch older than the newest one recorded (the leader records at
        // proposal and again at persistence; more than the window may be in
        // between) does not move the next sequence back.
        if !state.recent.is_empty() && end.wrapping_sub(state.next_sequence) < 0 {
            return;
        }
        state.next_sequence = end;
        if state.recent.len() == RECENT_BATCHES_MAX {
            state.recent.pop_front();
        }
        state.recent.push_back(Appended {
            epoch: id.epoch,
            base_sequence: id.base_sequence,
            record_count: id.record_count,
            entry,
        });
    }

    /// Forgets every batch held by entry `first` or a later one (Raft
    /// replaced or never wrote them): each producer's state becomes what it
    /// was before its earliest removed batch — exact, because one
    /// producer's batches enter the log in sequence order. Kept batches
    /// are untouched, so the table survives truncation and leader changes
    /// without reading the log.
    pub fn truncate_from(&mut self, first: u64) {
        self.producers.retain(|_, state| {
            let mut earliest = None;
            while state.recent.back().is_some_and(|a| a.entry >= first) {
                earliest = state.recent.pop_back();
            }
            let Some(removed) = earliest else {
                return true;
            };
            match state.recent.back() {
                Some(last) => {
                    state.epoch = last.epoch;
                    state.next_sequence = last.base_sequence.wrapping_add(last.record_count as i32);
                }
                // Nothing of this producer is left in the window: if its
                // first batch went, it is unknown again; otherwise it
                // continues where the removed batch began.
                None if removed.base_sequence == 0 => return false,
                None => {
                    state.epoch = removed.epoch;
                    state.next_sequence = removed.base_sequence;
                }
            }
            true
        });
    }

    /// The highest entry any producer's remembered batch is in.
    pub fn last_entry(&self) -> u64 {
        self.producers
            .values()
            .filter_map(|s| s.recent.back().map(|a| a.entry))
            .max()
            .unwrap_or(0)
    }

    /// Serialises the table (see [`ProducerTable::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.producers.len() * 32);
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        for pid in ids {
            let s = &self.producers[pid];
            out.extend_from_slice(&pid.to_le_bytes());
            out.extend_from_slice(&s.epoch.to_le_bytes());
            out.extend_from_slice(&s.next_sequence.to_le_bytes());
            out.extend_from_slice(&(s.recent.len() as u16).to_le_bytes());
            for a in &s.recent {
                out.extend_from_slice(&a.epoch.to_le_bytes());
                out.extend_from_slice(&a.base_sequence.to_le_bytes());
                out.extend_from_slice(&a.record_count.to_le_bytes());
                out.extend_from_slice(&a.entry.to_le_bytes());
            }
        }
        out
    }

    /// Reads what [`ProducerTable::encode`] wrote; every count is checked
    /// against the bytes present before anything is allocated.
    pub fn decode(mut b: &[u8]) -> Result<ProducerTable, String> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if b.len() < n {
                return Err("producer state truncated".into());
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        fn arr<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], String> {
            let mut a = [0u8; N];
            a.copy_from_slice(take(b, N)?);
            Ok(a)
        }
        const PRODUCER_BYTES_MIN: usize = 8 + 2 + 4 + 2;
        const APPENDED_BYTES: usize = 2 + 4 + 4 + 8;
        let count = u32::from_le_bytes(arr(&mut b)?) as usize;
        if count > PRODUCERS_PER_PARTITION_MAX || count * PRODUCER_BYTES_MIN > b.len() {
            return Err(format!("producer state claims {count} producers"));
        }
        let mut producers = HashMap::with_capacity(count);
        for _ in 0..count {
            let pid = i64::from_le_bytes(arr(&mut b)?);
            let epoch = i16::from_le_bytes(arr(&mut b)?);
            let next_sequence = i32::from_le_bytes(arr(&mut b)?);
            let n = u16::from_le_bytes(arr(&mut b)?) as usize;
            if n > RECENT_BATCHES_MAX || n * APPENDED_BYTES > b.len() {
                return Err(format!("producer {pid} claims {n} batches"));
            }
            let mut recent = VecDeque::with_capacity(n);
            for _ in 0..n {
                recent.push_back(Appended {
                    epoch: i16::from_le_bytes(arr(&mut b)?),
                    base_sequence: i32::from_le_bytes(arr(&mut b)?),
                    record_count: u32::from_le_bytes(arr(&mut b)?),
                    entry: u64::from_le_bytes(arr(&mut b)?),
                });
            }
            producers.insert(
                pid,
                ProducerState {
                    epoch,
                    next_sequence,
                    recent,
                },
            );
        }
        if !b.is_empty() {
            return Err(format!("{} bytes after the producer state", b.len()));
        }
        Ok(ProducerTable { producers })
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// The producer table as of Raft entry `entry` (committed and durable when
/// saved, so no truncation can remove it), saved beside the segments as
/// `producers.state`: at open the table is this plus the entries after it,
/// so idempotence survives restarts, segment rolls and retention without
/// reading the whole log. Like Kafka's producer-state snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSnapshot {
    pub entry: u64,
    /// The term of `entry`, to check at open that the log still holds it.
    pub term: u64,
    pub table: ProducerTable,
}

const SNAPSHOT_FILE: &str = "producers.state";
const SNAPSHOT_MAGIC: u32 = 0x4452_5031; // "DRP1"
/// Largest file: 10,000 producers × (16 + 64 × 18) bytes ≈ 11.7 MB.
const SNAPSHOT_BYTES_MAX: u64 = 16 << 20;

impl ProducerSnapshot {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let table = self.table.encode();
        let mut b = Vec::with_capacity(24 + table.len() + 4);
        b.extend_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
        b.extend_from_slice(&self.entry.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        b.extend_from_slice(&table);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<ProducerSnapshot, String> {
        if b.len() < 24 {
            return Err(format!("{} bytes, too short", b.len()));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let u64_at =
            |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
            return Err("checksum mismatch".into());
        }
        if body[..4] != SNAPSHOT_MAGIC.to_le_bytes() {
            return Err("bad magic".into());
        }
        Ok(ProducerSnapshot {
            entry: u64_at(4),
            term: u64_at(12),
            table: ProducerTable::decode(&body[20..])?,
        })
    }

    /// Replaces `dir/producers.state` atomically and durably (blocking).
    pub fn save(&self, dir: &std::path::Path) -> std::io::Result<()> {
        crate::replica::replace_file(dir, SNAPSHOT_FILE, &self.encode())
    }

    /// Reads `dir/producers.state`: `None` if there is none.
    pub fn load(dir: &std::path::Path) -> Result<Option<ProducerSnapshot>, String> {
        use std::io::Read as _;
        let path = dir.join(SNAPSHOT_FILE);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut b = Vec::new();
        f.take(SNAPSHOT_BYTES_MAX)
            .read_to_end(&mut b)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Self::decode(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The idempotence fields of a producer's batch (`None` for control batches).
pub fn batch_id(bytes: &[u8]) -> Option<BatchId> {
    let b = wire::RecordBatch::parse_without_crc(bytes).ok()?;
    (!b.is_control()).then(|| BatchId {
        producer_id: b.producer_id(),
        epoch: b.producer_epoch(),
        base_sequence: b.base_sequence(),
        record_count: b.record_count(),
    })
}

/// Entries scanned to rebuild the producer table when no saved table can be
/// used (none saved yet, or it contradicts the log): the last 64 MiB of the
/// log, which holds every batch a producer can still be retrying unless the
/// broker wrote more than that since the last save (every 5 s).
const PRODUCER_SCAN_BYTES_MAX: u64 = 64 << 20;

/// The idempotent-producer table at open: the saved table (as of a
/// committed entry) plus the entries written after it; without a usable
/// saved table, a scan of the log's tail.
pub(crate) fn load_producers(dir: &std::path::Path, log: &Log) -> ProducerTable {
    let first = log.first_entry_index();
    let next = log.next_entry_index();
    let saved = match ProducerSnapshot::load(dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "producer state not used");
            None
        }
    };
    // Usable if its entry is still this log's (same term), or already
    // removed by retention (a committed prefix never changes).
    let usable = saved.filter(|s| {
        s.entry < next && (s.entry < first || log.entry_term(s.entry).ok() == Some(s.term))
    });
    let (mut table, from) = match usable {
        Some(s) => (s.table, (s.entry + 1).max(first)),
        None => {
            let tail = log.next_offset().saturating_sub(PRODUCER_SCAN_BYTES_MAX);
            let from = log.entry_for_offset(tail.max(log.log_start_offset()));
            (ProducerTable::default(), from.unwrap_or(first).max(first))
        }
    };
    scan_producers(log, &mut table, from, next);
    table
}

/// Records the producer batches of entries `[from, to)` in `table`.
fn scan_producers(log: &Log, table: &mut ProducerTable, from: u64, to: u64) {
    let mut at = from;
    // Bounded: each read returns at least one entry or ends the loop.
    while at < to {
        let Ok(batches) = log.read_entries(at, to, 4 << 20) else {
            break;
        };
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            if let Some(id) = batch_id(b) {
                table.record(id, at);
            }
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: i32, n: u32) -> BatchId {
        BatchId {
            producer_id: 7,
            epoch: 0,
            base_sequence: seq,
            record_count: n,
        }
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_with_its_original_offsets() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(id(0, 3)), Verdict::Append);
        t.record(id(0, 3), 100);
        assert_eq!(t.check(id(0, 3)), Verdict::Duplicate { entry: 100 });
        t.record(id(0, 3), 100);
        t.record(id(0, 3), 101);
        assert_eq!(
            t.check(id(0, 3)),
            Verdict::Duplicate { entry: 100 },
            "recording again keeps the first copy: a retry gets its original offsets"
        );
        assert_eq!(t.check(id(3, 2)), Verdict::Append);
    }

    #[test]
    fn gaps_old_sequences_and_old_epochs_are_refused() {
        let mut t = ProducerTable::default();
        // Two batches more than the window: the first two fall out of it.
        let batches = RECENT_BATCHES_MAX as i32 + 2;
        for (i, seq) in (0..batches).map(|i| (i, i * 2)) {
            t.record(id(seq, 2), i as u64 * 2);
        }
        let code = |v: Verdict| match v {
            Verdict::Reject(e) => e.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(t.check(id(batches * 2 + 6, 1))),
            ErrorCode::OutOfOrderSequence
        );
        assert_eq!(code(t.check(id(0, 2))), ErrorCode::DuplicateSequence); // fell out of the window
        assert!(matches!(
            t.check(id(12, 2)),
            Verdict::Duplicate { entry: 12 }
        ));
        let newer = BatchId {
            epoch: 1,
            ..id(0, 1)
        };
        assert_eq!(t.check(newer), Verdict::Append);
        t.record(newer, 50);
        assert_eq!(code(t.check(id(14, 1))), ErrorCode::ProducerFenced);
    }

    #[test]
    fn truncation_restores_each_producer_to_before_its_first_removed_batch() {
        let mut t = ProducerTable::default();
        let other = |seq| BatchId {
            producer_id: 8,
            ..id(seq, 1)
        };
        t.record(id(0, 2), 10);
        t.record(other(0), 11);
        t.record(id(2, 2), 12);
        t.record(id(4, 2), 13);
        t.record(other(1), 14);
        t.truncate_from(12);
        assert_eq!(t.check(id(0, 2)), Verdict::Duplicate { entry: 10 });
        assert_eq!(t.check(id(2, 2)), Verdict::Append, "entry 12 is gone");
        assert_eq!(t.check(other(0)), Verdict::Duplicate { entry: 11 });
        assert_eq!(t.check(other(1)), Verdict::Append);
        // A producer whose every batch went is unknown again.
        t.truncate_from(11);
        assert_eq!(t.len(), 1);
        assert_eq!(t.check(other(0)), Verdict::Append);
        assert_eq!(t.check(id(0, 2)), Verdict::Duplicate { entry: 10 });
        t.truncate_from(10);
        assert!(t.is_empty());
        // One whose window starts mid-stream continues where it was cut.
        let mut t = ProducerTable::default();
        for (i, seq) in (0..RECENT_BATCHES_MAX as i32 + 5).enumerate() {
            t.record(id(seq, 1), 100 + i as u64);
        }
        t.truncate_from(100);
        assert!(matches!(t.check(id(4, 1)), Verdict::Reject(_)));
        assert_eq!(t.check(id(5, 1)), Verdict::Append);
    }

    #[test]
    fn a_second_copy_in_a_later_entry_is_forgotten_when_that_entry_goes() {
        let mut t = ProducerTable::default();
        t.record(id(0, 1), 10);
        t.record(id(1, 1), 11);
        // The same batch again, later in the log (written after a table
        // that had forgotten it accepted it).
        t.record(id(0, 1), 12);
        t.truncate_from(12);
        assert_eq!(
            t.check(id(0, 1)),
            Verdict::Duplicate { entry: 10 },
            "entry 12 is gone: a retry is answered with the first copy's offsets"
        );
        assert_eq!(t.check(id(1, 1)), Verdict::Duplicate { entry: 11 });
    }

    #[test]
    fn a_new_epoch_truncated_away_brings_the_old_one_back() {
        let mut t = ProducerTable::default();
        t.record(id(0, 3), 1);
        let newer = BatchId {
            epoch: 1,
            ..id(0, 1)
        };
        t.record(newer, 2);
        assert!(matches!(t.check(id(3, 1)), Verdict::Reject(_)));
        t.truncate_from(2);
        assert_eq!(t.check(id(3, 1)), Verdict::Append);
        assert_eq!(t.check(id(0, 3)), Verdict::Duplicate { entry: 1 });
    }

    #[test]
    fn the_table_round_trips_and_damage_is_refused() {
        let mut t = ProducerTable::default();
        for seq in 0..70 {
            t.record(id(seq, 1), seq as u64);
        }
        t.record(
            BatchId {
                producer_id: 1 << 40,
                ..id(0, 5)
            },
            99,
        );
        let b = t.encode();
        assert_eq!(ProducerTable::decode(&b).unwrap(), t);
        for cut in [0, 3, 4, 20, b.len() - 1] {
            assert!(ProducerTable::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = b.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ProducerTable::decode(&huge).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ProducerSnapshot::load(dir.path()).unwrap(), None);
        let snap = ProducerSnapshot {
            entry: 70,
            term: 3,
            table: t,
        };
        snap.save(dir.path()).unwrap();
        assert_eq!(ProducerSnapshot::load(dir.path()).unwrap(), Some(snap));
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(ProducerSnapshot::load(dir.path())
            .unwrap_err()
            .contains("checksum"));
    }

    #[test]
    fn batches_without_a_producer_id_are_never_deduplicated() {
        let mut t = ProducerTable::default();
        let anon = BatchId {
            producer_id: -1,
            ..id(0, 1)
        };
        t.record(anon, 0);
        assert_eq!(t.check(anon), Verdict::Append);
        assert!(t.is_empty());
    }
}
