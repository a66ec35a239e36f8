//! What a leader knows about each follower: how far its log matches, what to
//! send next, and how much is in flight (thesis 3.5; the probe / replicate /
//! snapshot states follow etcd's design).

use std::collections::VecDeque;

use crate::types::SnapshotMeta;

/// How the leader currently talks to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's match point is unknown: one append at a time, backing
    /// off on rejection until the logs match.
    Probe,
    /// The logs match: appends are pipelined up to the in-flight window.
    Replicate,
    /// The follower needs entries below the log start: a snapshot is streamed.
    Snapshot,
}

/// A snapshot being streamed to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTransfer {
    pub meta: SnapshotMeta,
    /// The follower has acknowledged every byte below this offset.
    pub acked_offset: u64,
    /// Heartbeat responses since the acknowledged offset last moved.
    pub stalled_heartbeats: u32,
}

/// The bounded window of append messages in flight to one follower: each slot
/// holds the last index the message carried and its bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    slots: VecDeque<(u64, u64)>,
    bytes: u64,
    count_max: usize,
    bytes_max: u64,
}

impl Inflights {
    pub fn new(count_max: usize, bytes_max: u64) -> Self {
        Inflights {
            slots: VecDeque::with_capacity(count_max),
            bytes: 0,
            count_max,
            bytes_max,
        }
    }

    pub fn full(&self) -> bool {
        self.slots.len() >= self.count_max || self.bytes >= self.bytes_max
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    pub fn add(&mut self, last_index: u64, bytes: u64) {
        assert!(!self.full(), "inflight window overrun");
        self.slots.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all acknowledged (<= `index`).
    pub fn free_to(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.slots.front() {
            if last > index {
                break;
            }
            self.slots.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message (after a heartbeat response shows the follower
    /// alive, so a lost message cannot wedge the window).
    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.slots.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub fn reset(&mut self) {
        self.slots.clear();
        self.bytes = 0;
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be durable on the follower and to match ours.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    pub state: ProgressState,
    /// In probe state: an append is outstanding, wait for its answer or a
    /// heartbeat response before sending another.
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    pub snapshot: Option<SnapshotTransfer>,
    /// The highest commit index sent in an append; while it lags the leader's,
    /// an empty append is worth sending.
    pub sent_commit: u64,
}

impl Progress {
    pub fn new(next_index: u64, count_max: usize, bytes_max: u64) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(count_max, bytes_max),
            recent_active: false,
            snapshot: None,
            sent_commit: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.snapshot = None;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        let after_snapshot = self.snapshot.as_ref().map(|s| s.meta.index);
        self.reset_state(ProgressState::Probe);
        self.next_index = match after_snapshot {
            Some(index) => (self.match_index + 1).max(index + 1),
            None => self.match_index + 1,
        };
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    pub fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.reset_state(ProgressState::Snapshot);
        self.snapshot = Some(SnapshotTransfer {
            meta,
            acked_offset: 0,
            stalled_heartbeats: 0,
        });
    }

    /// True when nothing more may be sent now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// A successful append response up to `index`; false if stale.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// An append of entries up to `last_index` (of `bytes`) was sent.
    pub fn sent(&mut self, last_index: u64, bytes: u64, entry_count: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entry_count > 0 {
                    self.next_index = last_index + 1;
                    self.inflights.add(last_index, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("append sent in snapshot state"),
        }
    }

    /// A rejection of the append at `rejected` (its prev index); `hint` is the
    /// largest index that may match. False if the rejection is stale.
    pub fn maybe_decrease_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = rejected.min(hint + 1).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_is_bounded_by_count_and_bytes() {
        let mut window = Inflights::new(3, 100);
        window.add(5, 10);
        window.add(7, 10);
        assert!(!window.full());
        window.add(9, 90);
        assert!(window.full());
        window.free_to(7);
        assert_eq!(window.count(), 1);
        assert!(!window.full(), "90 of 100 bytes and 1 of 3 slots in use");
        window.add(10, 10);
        assert!(window.full(), "the byte budget is reached");
        window.free_first();
        assert!(!window.full());
    }

    #[test]
    fn probe_backs_off_to_the_hint_but_never_below_match() {
        let mut p = Progress::new(11, 4, 1 << 20);
        p.match_index = 3;
        assert!(
            !p.maybe_decrease_to(7, 2),
            "a rejection of another prev index is stale"
        );
        assert!(p.maybe_decrease_to(10, 5));
        assert_eq!(p.next_index, 6);
        assert!(p.maybe_decrease_to(5, 0));
        assert_eq!(p.next_index, 4, "never below match + 1");
    }
}
