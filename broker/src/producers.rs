//! Idempotent producers: per partition, the sequence state of each producer
//! id, so a batch retried after a timeout or a reconnect is appended once.
//!
//! A producer stamps `producer_id`, `producer_epoch` and `base_sequence` into
//! each batch (wire batch header); sequences count records per partition.
//! Until the controller hands out producer ids, clients choose a random
//! 63-bit id (a collision needs about 3 billion producers for even odds).

use std::collections::{HashMap, VecDeque};

use wire::ErrorCode;

/// Recent batches remembered per producer: a client retries only what is
/// in flight, so this bounds the batches an idempotent client may keep in
/// flight per partition (the pipeline producer's default window is 64).
/// 64 x 16 bytes per producer.
pub const RECENT_BATCHES_MAX: usize = 64;
/// Producers tracked per partition; past this the one idle longest (lowest
/// last offset) is forgotten, and its next batch is accepted as from a new
/// producer. 10,000 × ~200 bytes = 2 MB per partition at worst.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Appended {
    base_sequence: i32,
    record_count: u32,
    /// The Raft entry holding the batch.
    entry: u64,
}

#[derive(Debug, Default)]
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
    Reject {
        code: ErrorCode,
        reason: String,
    },
}

/// The identity fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub record_count: u32,
}

#[derive(Debug, Default)]
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
            return Verdict::Reject {
                code: ErrorCode::ProducerFenced,
                reason: format!("epoch {} is older than {}", id.epoch, state.epoch),
            };
        }
        if id.epoch > state.epoch {
            return if id.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::Reject {
                    code: ErrorCode::OutOfOrderSequence,
                    reason: format!("new epoch {} must start at sequence 0", id.epoch),
                }
            };
        }
        if let Some(a) = state
            .recent
            .iter()
            .find(|a| a.base_sequence == id.base_sequence && a.record_count == id.record_count)
        {
            return Verdict::Duplicate { entry: a.entry };
        }
        if id.base_sequence == state.next_sequence {
            return Verdict::Append;
        }
        let behind = state.next_sequence.wrapping_sub(id.base_sequence);
        if behind > 0 {
            Verdict::Reject {
                code: ErrorCode::DuplicateSequence,
                reason: format!(
                    "sequence {} is older than the {RECENT_BATCHES_MAX} batches remembered",
                    id.base_sequence
                ),
            }
        } else {
            Verdict::Reject {
                code: ErrorCode::OutOfOrderSequence,
                reason: format!(
                    "expected sequence {}, got {}",
                    state.next_sequence, id.base_sequence
                ),
            }
        }
    }

    /// Records a batch held by Raft entry `entry`. Recording the same batch
    /// again (the leader records at proposal and again when it persists)
    /// only updates its entry.
    pub fn record(&mut self, id: BatchId, entry: u64) {
        if id.producer_id < 0 {
            return;
        }
        if let Some(state) = self.producers.get_mut(&id.producer_id) {
            if state.epoch == id.epoch {
                if let Some(a) = state.recent.iter_mut().find(|a| {
                    a.base_sequence == id.base_sequence && a.record_count == id.record_count
                }) {
                    a.entry = entry;
                    return;
                }
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
            state.epoch = id.epoch;
            state.recent.clear();
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
            base_sequence: id.base_sequence,
            record_count: id.record_count,
            entry,
        });
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
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
        t.record(id(0, 3), 101);
        assert_eq!(
            t.check(id(0, 3)),
            Verdict::Duplicate { entry: 101 },
            "recording again moves it, no second copy"
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
            Verdict::Reject { code, .. } => code,
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
