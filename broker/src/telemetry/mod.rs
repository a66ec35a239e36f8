//! The telemetry core: a thread of its own, not a shard. Shards send it a
//! [`ShardSample`] once a second and [`Event`]s as they happen, over bounded
//! flume channels with `try_send` (a slow core drops samples and events; it
//! never slows a shard). The core keeps the latest sample of every shard,
//! puts together one JSON frame per second (docs/TELEMETRY.md, version 1),
//! shares it among the dashboards connected over WebSockets, and answers
//! HTTP on `--http` ([`crate::http`]): the dashboard's files, `/metrics`
//! (Prometheus), `/api/status` and `/api/cluster`.
//!
//! | module | what |
//! |---|---|
//! | `mod` (here) | what shards send: samples, events, the latency recorder |
//! | [`core`] | the core thread: latest samples, frames, derived events, routes |
//! | [`metrics`] | the Prometheus text |

pub mod core;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

/// Samples queued for the core: a few seconds of every shard.
pub const SAMPLES_QUEUED_MAX: usize = 1024;
/// Events queued for the core; past this a shard drops events (counted:
/// the core skips their `seq` numbers, so a page sees the gap).
pub const EVENTS_QUEUED_MAX: usize = 4096;
/// Upper bounds of the produce latency histogram's buckets, µs (Prometheus
/// `le` labels; `+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Produce latency percentiles over one interval, µs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
}

/// One lane of a shard to one peer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LaneSample {
    pub peer: u64,
    /// `"control"` or `"bulk"`.
    pub lane: &'static str,
    pub up: bool,
    pub frames_queued: u64,
    pub frames_dropped_total: u64,
    pub reconnects_total: u64,
}

/// A replica's progress as the leader knows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplicaSample {
    pub broker: u64,
    /// `None` when this broker is not the leader.
    pub match_index: Option<u64>,
    pub lag_entries: Option<u64>,
}

/// A snapshot this replica is sending.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SnapshotTransferSample {
    pub to: u64,
    pub bytes_sent: u64,
    pub bytes_total: u64,
    pub bytes_per_sec: u64,
}

/// One partition replica in a shard sample.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionSample {
    pub topic: String,
    pub partition: u32,
    pub shard: usize,
    /// `"leader"`, `"follower"`, `"pre_candidate"` or `"candidate"`.
    pub role: &'static str,
    pub leader: Option<u64>,
    pub term: u64,
    /// Every voter, sorted by broker.
    pub replicas: Vec<ReplicaSample>,
    pub commit_index: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// The offset the next appended record gets.
    pub log_end_offset: u64,
    pub size_bytes: u64,
    pub snapshot_transfer: Option<SnapshotTransferSample>,
    /// Compacted topics: every segment ending at or below this offset was
    /// compacted since the broker started; `None` for other topics.
    pub clean_offset: Option<u64>,
}

/// One broker as this broker knows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BrokerSample {
    pub id: u64,
    /// Client address (`HOST:PORT` of its shard 0), if known.
    pub client: Option<String>,
    /// Telemetry address, if known.
    pub http: Option<String>,
    pub alive: bool,
}

/// What shard 0 adds to its sample: the cluster as this broker sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterSample {
    pub controller: Option<u64>,
    pub controller_term: u64,
    /// Every configured broker (this one included), sorted by id.
    pub brokers: Vec<BrokerSample>,
}

/// A consumer-group member's lease, on the shard coordinating its group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupLeaseSample {
    pub group: String,
    pub member: String,
    pub generation: u64,
    pub partitions: Vec<(String, u32)>,
    /// Time left on the lease when the sample was taken.
    pub lease_left_ms: u64,
}

/// A group's committed offsets, on the shard coordinating it (lag is
/// worked out by the core, against the high watermarks it knows).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupOffsetsSample {
    pub group: String,
    pub generation: u64,
    pub members: usize,
    /// (topic, partition, committed offset)
    pub offsets: Vec<(String, u32, u64)>,
}

/// What a shard reports once a second. Counters are totals since the
/// process started; the interval figures cover the last sample interval.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ShardSample {
    pub shard: usize,
    pub produce_requests: u64,
    /// Record-batch bytes of produce requests accepted as leader.
    pub produce_bytes: u64,
    pub fetch_requests: u64,
    /// Record-batch bytes returned by fetches.
    pub fetch_bytes: u64,
    /// Records in produce requests accepted as leader.
    pub records_in: u64,
    /// Records returned by fetches.
    pub records_out: u64,
    /// Error responses to clients, all codes together.
    pub errors: u64,
    /// Error responses by wire code name (`ErrorCode::name`).
    pub errors_by_code: BTreeMap<&'static str, u64>,
    pub segments_deleted: u64,
    /// Snapshot catch-up, totals since start (see `crate::snapshot`).
    pub snapshot_transfers_started: u64,
    pub snapshot_transfers_finished: u64,
    pub snapshot_transfers_resumed: u64,
    pub snapshot_transfers_failed: u64,
    pub snapshot_bytes_sent: u64,
    pub snapshot_bytes_received: u64,
    pub snapshot_installs: u64,
    pub snapshot_archives: u64,
    pub leader_changes: u64,
    pub elections: u64,
    /// Compaction rounds completed, segments they rewrote, and those
    /// segments' data bytes before and after.
    pub compactions: u64,
    pub compaction_segments_rewritten: u64,
    pub compaction_bytes_before: u64,
    pub compaction_bytes_after: u64,
    pub peer_frames_sent: u64,
    pub peer_frames_dropped: u64,
    /// Client connections open now.
    pub connections: u64,
    /// Fraction of the interval the core ran tasks, 0..=1.
    pub busy_fraction: f64,
    /// Longest a runnable task waited in the interval, µs.
    pub task_queue_latency_us_max: u64,
    /// Produce latency over the interval; `None` with no produce answered.
    pub produce_latency_us: Option<Percentiles>,
    /// Produce latencies since start, cumulative per [`LATENCY_BUCKETS_US`]
    /// bound, then `+Inf` (so `LATENCY_BUCKETS_US.len() + 1` counts).
    pub produce_latency_buckets: Vec<u64>,
    /// Sum of all produce latencies since start, µs.
    pub produce_latency_sum_us: u64,
    pub peer_lanes: Vec<LaneSample>,
    pub partitions: Vec<PartitionSample>,
    /// Whether a partition log of this shard is in the disk-full state.
    pub disk_full: bool,
    /// Shard 0 only.
    pub cluster: Option<ClusterSample>,
    /// Leases of the consumer groups this shard coordinates.
    pub group_leases: Vec<GroupLeaseSample>,
    /// Committed offsets of the consumer groups this shard coordinates.
    pub group_offsets: Vec<GroupOffsetsSample>,
}

/// Things that happen, sent by the shard where they happen (the core adds
/// broker, time and sequence number; broker up/down and disk full/ok it
/// derives itself from the samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This broker became leader (`topic` `None`: the controller group).
    LeaderChanged {
        topic: Option<String>,
        partition: Option<u32>,
        term: u64,
        leader: u64,
        previous_leader: Option<u64>,
    },
    /// This broker started a (real, not pre-) vote.
    ElectionStarted {
        topic: Option<String>,
        partition: Option<u32>,
        term: u64,
        candidate: u64,
    },
    /// Committed by the controller while this broker led it.
    TopicCreated {
        topic: String,
        partitions: u32,
        replication_factor: u16,
    },
    TopicDeleted {
        topic: String,
    },
    SnapshotStarted {
        topic: String,
        partition: u32,
        to: u64,
        bytes_total: u64,
    },
    SnapshotFinished {
        topic: String,
        partition: u32,
        to: u64,
        bytes_total: u64,
        ok: bool,
        duration_ms: u64,
    },
    /// A consumer group's membership changed (by its coordinator, once the
    /// change committed): `why` is `joined`, `left` or `expired`.
    GroupRebalanced {
        group: String,
        generation: u64,
        members: usize,
        member: String,
        why: &'static str,
    },
}

/// Where shards send to; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Telemetry {
    samples: flume::Sender<ShardSample>,
    events: flume::Sender<Event>,
    /// Events dropped because the core was behind, not yet numbered by it.
    events_dropped: Arc<AtomicU64>,
}

impl Telemetry {
    /// Sends a sample; dropped if the core is behind.
    pub fn sample(&self, s: ShardSample) {
        let _ = self.samples.try_send(s);
    }

    /// Sends an event; dropped (and counted) if the core is behind.
    pub fn event(&self, e: Event) {
        if self.events.try_send(e).is_err() {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of events dropped and not yet numbered by the core: it
    /// takes them (`swap(0)`) and skips as many `seq` numbers.
    pub fn events_dropped(&self) -> Arc<AtomicU64> {
        self.events_dropped.clone()
    }

    /// A handle and the receiving ends of its channels, bounded as the
    /// core's are (tests, tools: what a shard sends, without a core).
    pub fn channels() -> (
        Telemetry,
        flume::Receiver<ShardSample>,
        flume::Receiver<Event>,
    ) {
        let (samples, samples_rx) = flume::bounded(SAMPLES_QUEUED_MAX);
        let (events, events_rx) = flume::bounded(EVENTS_QUEUED_MAX);
        let events_dropped = Arc::default();
        (
            Telemetry {
                samples,
                events,
                events_dropped,
            },
            samples_rx,
            events_rx,
        )
    }

    /// A pair of channels with nobody at the other end (tests, tools).
    pub fn detached() -> Telemetry {
        let (samples, _) = flume::bounded(1);
        let (events, _) = flume::bounded(1);
        Telemetry {
            samples,
            events,
            events_dropped: Arc::default(),
        }
    }
}

/// Produce latencies on one shard: a histogram for the interval's
/// percentiles and cumulative buckets for Prometheus. Not `Send`: one per
/// shard, touched only by its thread.
pub struct LatencyRecorder {
    interval: std::cell::RefCell<hdrhistogram::Histogram<u64>>,
    buckets: std::cell::RefCell<[u64; LATENCY_BUCKETS_US.len() + 1]>,
    sum_us: std::cell::Cell<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            // 1 µs to 1 hour, 2 significant digits: about 20 KB.
            interval: std::cell::RefCell::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                    .expect("valid histogram bounds"),
            ),
            buckets: std::cell::RefCell::new([0; LATENCY_BUCKETS_US.len() + 1]),
            sum_us: std::cell::Cell::new(0),
        }
    }
}

impl LatencyRecorder {
    /// Records one latency.
    pub fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.interval.borrow_mut().saturating_record(us);
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        self.buckets.borrow_mut()[i] += 1;
        self.sum_us.set(self.sum_us.get().saturating_add(us));
    }

    /// The interval's percentiles (then starts a new interval), the
    /// cumulative bucket counts (each bound's count includes the smaller
    /// ones, as Prometheus wants) and the sum.
    pub fn take(&self) -> (Option<Percentiles>, Vec<u64>, u64) {
        let mut h = self.interval.borrow_mut();
        let p = (!h.is_empty()).then(|| Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
        });
        h.reset();
        let mut total = 0;
        let cumulative = self
            .buckets
            .borrow()
            .iter()
            .map(|&n| {
                total += n;
                total
            })
            .collect();
        (p, cumulative, self.sum_us.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn channels_deliver_what_shards_send_and_a_full_queue_drops_without_blocking() {
        let (t, samples, events) = Telemetry::channels();
        t.sample(ShardSample {
            shard: 3,
            ..ShardSample::default()
        });
        assert_eq!(samples.try_recv().map(|s| s.shard), Ok(3));
        let deleted = |i: usize| Event::TopicDeleted {
            topic: format!("t{i}"),
        };
        for i in 0..EVENTS_QUEUED_MAX + 10 {
            t.event(deleted(i));
        }
        let got: Vec<Event> = events.try_iter().collect();
        assert_eq!(got.len(), EVENTS_QUEUED_MAX, "the newest are dropped");
        assert_eq!(got[0], deleted(0));
        assert_eq!(
            t.events_dropped().load(Ordering::Relaxed),
            10,
            "and counted"
        );
    }

    #[test]
    fn latencies_give_interval_percentiles_and_cumulative_buckets() {
        let r = LatencyRecorder::default();
        assert_eq!(r.take().0, None);
        for ms in 1..=100u64 {
            r.record(Duration::from_millis(ms));
        }
        let (p, buckets, sum) = r.take();
        let p = p.unwrap();
        assert!((49_000..=51_000).contains(&p.p50), "{p:?}");
        assert!((98_000..=100_999).contains(&p.p99), "{p:?}");
        assert_eq!(buckets.len(), LATENCY_BUCKETS_US.len() + 1);
        // le=1ms holds the 1 ms record; le=10ms holds 10; +Inf all 100.
        assert_eq!(buckets[3], 1);
        assert_eq!(buckets[6], 10);
        assert_eq!(*buckets.last().unwrap(), 100);
        assert_eq!(sum, (1..=100u64).sum::<u64>() * 1000);
        // The next interval starts empty; the buckets keep counting.
        assert_eq!(r.take().0, None);
        r.record(Duration::from_secs(20));
        let (_, buckets, _) = r.take();
        assert_eq!(buckets[LATENCY_BUCKETS_US.len() - 1], 100);
        assert_eq!(*buckets.last().unwrap(), 101);
    }
}
