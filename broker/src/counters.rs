//! A shard's counters for telemetry: request, record and byte totals,
//! errors by wire code, the produce latency recorder ([`ShardCounters`]),
//! and how loaded the shard's core is ([`CoreLoad`]).
//!
//! Touched only by the shard's own thread: plain `Cell`s, no locks, and
//! nothing on the request path allocates (a fixed array per error code, a
//! histogram record per produce).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wire::ErrorCode;

use crate::telemetry::LatencyRecorder;

/// Slots of the error-code counter: wire codes are 0..=25 today and only
/// grow by one per new code, so 64 leaves room for years; a code past it
/// (none exists) is counted as `Unknown`.
const ERROR_CODES_MAX: usize = 64;

/// How often the task-queue probe wakes while the shard works: 100
/// samples of "how late" per one-second interval, at the cost of 100 timer
/// wake-ups a second.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How often it wakes while the shard is idle (no client request since the
/// last probe, which was on time): an idle core makes no task wait, and
/// each wake-up of an idle shard costs more than the probe measures (on
/// this 2-core VM, 100 probes a second were most of an empty broker's
/// 1-2 % of a core). Work, or a probe late by [`PROBE_LATE_BUSY`], brings
/// back the 10 ms probe at once; a wait that starts and ends between two
/// idle probes is missed.
pub const PROBE_IDLE_INTERVAL: Duration = Duration::from_millis(100);
/// A probe this late says the core is busy (Raft work needs no client).
pub const PROBE_LATE_BUSY: Duration = Duration::from_millis(1);

pub(crate) fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

/// Per-shard counters, totals since the process started.
pub struct ShardCounters {
    /// Produce requests answered, successfully or not.
    pub produce_requests: Cell<u64>,
    /// Record-batch bytes of produce requests accepted as leader.
    pub produce_bytes: Cell<u64>,
    /// Fetch requests answered, successfully or not.
    pub fetch_requests: Cell<u64>,
    /// Record-batch bytes returned by fetches.
    pub fetch_bytes: Cell<u64>,
    /// Records of produce requests accepted as leader (appended: a
    /// duplicate of an idempotent producer's batch is not counted again).
    pub records_in: Cell<u64>,
    /// Records returned by fetches.
    pub records_out: Cell<u64>,
    /// Error responses to clients, all codes together.
    pub errors: Cell<u64>,
    /// Error responses to clients, indexed by wire code.
    errors_by_code: [Cell<u64>; ERROR_CODES_MAX],
    pub segments_deleted: Cell<u64>,
    pub leader_changes: Cell<u64>,
    /// Elections won by this shard's groups (each election counts once in
    /// the cluster: only the winner counts it).
    pub elections: Cell<u64>,
    /// Compaction rounds completed on this shard's partitions.
    pub compactions: Cell<u64>,
    /// Segments those rounds rewrote, and their data bytes before and after.
    pub compaction_segments_rewritten: Cell<u64>,
    pub compaction_bytes_before: Cell<u64>,
    pub compaction_bytes_after: Cell<u64>,
    /// Produce latency, from the request frame read off the socket to its
    /// answer written to it.
    pub produce_latency: LatencyRecorder,
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters {
            produce_requests: Cell::new(0),
            produce_bytes: Cell::new(0),
            fetch_requests: Cell::new(0),
            fetch_bytes: Cell::new(0),
            records_in: Cell::new(0),
            records_out: Cell::new(0),
            errors: Cell::new(0),
            errors_by_code: std::array::from_fn(|_| Cell::new(0)),
            segments_deleted: Cell::new(0),
            leader_changes: Cell::new(0),
            elections: Cell::new(0),
            compactions: Cell::new(0),
            compaction_segments_rewritten: Cell::new(0),
            compaction_bytes_before: Cell::new(0),
            compaction_bytes_after: Cell::new(0),
            produce_latency: LatencyRecorder::default(),
        }
    }
}

impl ShardCounters {
    /// Counts one error response to a client. `None` is not an error: it
    /// is counted as `Unknown` (an answer that says error with no code).
    pub fn error(&self, code: ErrorCode) {
        let code = match code {
            ErrorCode::None => ErrorCode::Unknown,
            c => c,
        };
        let slot = usize::from(code as u16);
        let slot = if slot < ERROR_CODES_MAX {
            slot
        } else {
            usize::from(ErrorCode::Unknown as u16)
        };
        bump(&self.errors, 1);
        bump(&self.errors_by_code[slot], 1);
    }

    /// Error responses by `ErrorCode::name`, codes never sent left out.
    pub fn errors_by_code(&self) -> BTreeMap<&'static str, u64> {
        ErrorCode::ALL
            .iter()
            .filter_map(|&c| {
                let n = self.errors_by_code.get(usize::from(c as u16))?.get();
                (n > 0).then_some((c.name(), n))
            })
            .collect()
    }
}

/// How loaded one shard's core is over a sample interval.
pub struct CoreLoad {
    /// When the current interval started.
    since: Cell<Instant>,
    /// The latest the probe timer ran in the current interval.
    late_max: Cell<Duration>,
    /// The shard's client requests at the last probe.
    requests_seen: Cell<u64>,
}

impl CoreLoad {
    pub fn new(now: Instant) -> CoreLoad {
        CoreLoad {
            since: Cell::new(now),
            late_max: Cell::new(Duration::ZERO),
            requests_seen: Cell::new(0),
        }
    }

    /// The probe ran `late` after its timer was due.
    pub fn note_late(&self, late: Duration) {
        if late > self.late_max.get() {
            self.late_max.set(late);
        }
    }

    /// A probe ran `late`, with `requests` client requests answered by the
    /// shard so far: notes it and says when the next probe is due
    /// ([`PROBE_INTERVAL`] while the shard works, [`PROBE_IDLE_INTERVAL`]
    /// while it is idle).
    pub fn probe(&self, late: Duration, requests: u64) -> Duration {
        self.note_late(late);
        let worked = self.requests_seen.replace(requests) != requests;
        if worked || late >= PROBE_LATE_BUSY {
            PROBE_INTERVAL
        } else {
            PROBE_IDLE_INTERVAL
        }
    }

    /// Ends the interval at `now`, in which the executor ran for `busy`:
    /// returns the busy fraction (0..=1) and the longest the probe waited
    /// for the core, µs; the next interval starts at `now`.
    pub fn take_with(&self, busy: Duration, now: Instant) -> (f64, u64) {
        let wall = now.saturating_duration_since(self.since.replace(now));
        let fraction = if wall.is_zero() {
            0.0
        } else {
            (busy.as_secs_f64() / wall.as_secs_f64()).clamp(0.0, 1.0)
        };
        let late = self.late_max.replace(Duration::ZERO);
        (
            fraction,
            u64::try_from(late.as_micros()).unwrap_or(u64::MAX),
        )
    }

    /// [`CoreLoad::take_with`] of this executor now. glommio's
    /// `executor_stats()` hands over the stats gathered since it was last
    /// called and starts them again, so nothing else on a shard may call it.
    /// Its `total_runtime` is the time spent running task queues and
    /// polling io_uring, spinning and parking excluded.
    pub fn take(&self) -> (f64, u64) {
        let busy = glommio::executor().executor_stats().total_runtime();
        self.take_with(busy, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_code_name_and_in_total() {
        let c = ShardCounters::default();
        assert!(c.errors_by_code().is_empty());
        c.error(ErrorCode::NotLeader);
        c.error(ErrorCode::NotLeader);
        c.error(ErrorCode::UnknownTopicOrPartition);
        c.error(ErrorCode::None);
        let by_code = c.errors_by_code();
        assert_eq!(by_code.get("NotLeader"), Some(&2));
        assert_eq!(by_code.get("UnknownTopicOrPartition"), Some(&1));
        assert_eq!(by_code.get("Unknown"), Some(&1), "None counts as Unknown");
        assert!(!by_code.contains_key("None"));
        assert_eq!(c.errors.get(), 4);
        assert_eq!(by_code.values().sum::<u64>(), c.errors.get());
    }

    #[test]
    fn every_wire_code_has_a_slot_of_its_own() {
        for &code in ErrorCode::ALL {
            assert!(usize::from(code as u16) < ERROR_CODES_MAX, "{code}");
        }
        let c = ShardCounters::default();
        for &code in ErrorCode::ALL.iter().filter(|&&c| c != ErrorCode::None) {
            c.error(code);
        }
        assert_eq!(c.errors_by_code().len(), ErrorCode::ALL.len() - 1);
    }

    #[test]
    fn the_probe_slows_down_while_the_shard_idles_and_speeds_up_at_work_or_lateness() {
        let load = CoreLoad::new(Instant::now());
        let on_time = Duration::from_micros(50);
        assert_eq!(load.probe(on_time, 0), PROBE_IDLE_INTERVAL, "idle");
        assert_eq!(load.probe(on_time, 3), PROBE_INTERVAL, "requests came in");
        assert_eq!(load.probe(on_time, 3), PROBE_IDLE_INTERVAL, "none since");
        assert_eq!(
            load.probe(PROBE_LATE_BUSY, 3),
            PROBE_INTERVAL,
            "late: the core is busy without clients"
        );
        assert_eq!(load.probe(on_time, 3), PROBE_IDLE_INTERVAL);
        let (_, late_us) = load.take_with(Duration::ZERO, Instant::now());
        assert_eq!(late_us, 1000, "every probe counts towards the maximum");
    }

    #[test]
    fn core_load_is_a_fraction_of_the_interval_and_the_latest_probe() {
        let start = Instant::now();
        let load = CoreLoad::new(start);
        load.note_late(Duration::from_micros(300));
        load.note_late(Duration::from_micros(120));
        let (busy, late) =
            load.take_with(Duration::from_millis(250), start + Duration::from_secs(1));
        assert!((busy - 0.25).abs() < 1e-9, "{busy}");
        assert_eq!(late, 300);
        // A new interval: the maximum starts again; busy never passes 1.
        let (busy, late) = load.take_with(Duration::from_secs(5), start + Duration::from_secs(2));
        assert_eq!((busy, late), (1.0, 0));
        // No time passed: nothing to divide by.
        assert_eq!(
            load.take_with(Duration::ZERO, start + Duration::from_secs(2))
                .0,
            0.0
        );
    }
}
