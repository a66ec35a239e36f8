//! `drmq-loadtest catch-up`: how long a follower far behind takes to rejoin,
//! by snapshot and by replay, how fast the snapshot moves against the
//! loopback and write+fdatasync baselines of the same run, and what a
//! transfer costs the leader's produce latency.
//!
//! Each mode gets a fresh local cluster (3 brokers), so the two differ in one
//! broker flag only:
//! - `snapshot`: `--snapshot-catch-up-mib M` (the broker's default unless
//!   `--catch-up-mib` is given), below `--behind-mib`: the returning
//!   follower is more than M behind and is sent an archive of the leader's
//!   sealed segments, then replays the active segment's tail.
//! - `replay`: `--snapshot-catch-up-mib 0`: it replays every entry.
//!
//! Both use the same topic (1 partition, RF=3, no retention, the same
//! segment size) and the same data, so the log the follower misses is the
//! same size both ways; with retention instead, the snapshot would carry
//! only the retained part and the comparison would not be like for like.
//!
//! Per mode: a probe producer runs throughout at a fixed rate (open loop,
//! latency from the intended send time) to partitions of another topic on
//! the catch-up partition's shard and leader, and another to the catch-up
//! partition itself. The timeline:
//! 1. warm-up (1 s), then the `before` window (`--quiet-s`);
//! 2. kill -9 of one follower; `--behind-mib` MiB of 1 KiB messages at
//!    maximum rate (acks = quorum: leader and the other follower); wait
//!    until the other follower has every entry;
//! 3. restart of the follower; cluster status every 100 ms until its match
//!    index reaches the leader's commit index: the `catch-up` window (and
//!    within it the `transfer` window, while the leader reports a snapshot
//!    stream to it);
//! 4. the `after` window (`--quiet-s`), all three replicas up again.
//!
//! Latency percentiles are computed afterwards from every acknowledged
//! probe message, by the window its intended send time falls in.
//!
//! `--rounds N` repeats the modes, interleaved, each on a fresh cluster, and
//! prints medians; `--prefill-mib` writes that much with all three replicas
//! up first (a follower that holds a long log and misses part of it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use client::local::{find_drmq, random_secret, BrokerLog, LaunchOptions, LocalCluster};
use client::{Admin, ClientConfig, Producer, ProducerConfig};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use wire::{
    Acks, CleanupPolicy, ClusterStatusResponse, CreateTopicRequest, Durability, TopicConfig,
};

use crate::baseline;

/// Value size of every message (bulk and probes).
const MESSAGE_BYTES: usize = 1024;
/// How often the cluster status is read while the follower catches up.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Time given to the probes before the `before` window opens.
const PROBE_WARMUP: Duration = Duration::from_secs(1);
/// Admin requests (topic creation, status): per call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits for leaders / a caught-up second follower.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most probe samples kept per probe (2,000/s for ~80 minutes); beyond
/// that acknowledgements are counted but not recorded.
const SAMPLES_MAX: usize = 10_000_000;
/// Free disk space to leave on the data directory's file system.
const DISK_FLOOR_BYTES: u64 = 5 << 30;

/// How a follower comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Snapshot,
    Replay,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s.trim() {
            "snapshot" => Ok(Mode::Snapshot),
            "replay" => Ok(Mode::Replay),
            other => Err(format!("`{other}`: expected snapshot or replay")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Snapshot => "snapshot",
            Mode::Replay => "replay",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct CatchUpArgs {
    /// The `drmq` binary (default: $DRMQ_BIN, else the one next to this
    /// executable).
    #[arg(long)]
    pub drmq: Option<PathBuf>,
    /// Directory under which each mode's cluster keeps its data (a fresh
    /// subdirectory, removed afterwards); default the temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Append the brokers' log (stderr) to this file.
    #[arg(long)]
    pub broker_log: Option<PathBuf>,
    /// Shards per broker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub shards: u16,
    /// Modes in order: snapshot and/or replay.
    #[arg(long, value_delimiter = ',', default_value = "snapshot,replay", value_parser = Mode::parse)]
    pub modes: Vec<Mode>,
    /// MiB of 1 KiB messages written while the follower is down.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub behind_mib: u64,
    /// MiB written before the kill (all three replicas hold it): the
    /// follower then holds that much log and misses --behind-mib of it.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub prefill_mib: u64,
    /// The brokers' `--snapshot-rate-mb` (default: the broker's, 100).
    #[arg(long)]
    pub snapshot_rate_mb: Option<u64>,
    /// The brokers' `--snapshot-catch-up-mib` in snapshot mode (default:
    /// the broker's, 256); must be below --behind-mib.
    #[arg(long)]
    pub catch_up_mib: Option<u64>,
    /// Segment size of the catch-up topic, MiB (only sealed segments go in
    /// a snapshot).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub segment_mib: u64,
    /// Probe rate in msgs/s of 1 KiB, for each of the two probes (0: none).
    #[arg(long, default_value_t = 2000.0)]
    pub probe_rate: f64,
    /// Partitions of the probe topic (those on the catch-up partition's
    /// shard and leader are probed).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub probe_partitions: u32,
    /// Seconds of the windows without a transfer (before the kill, after
    /// the rejoin).
    #[arg(long, default_value_t = 10.0)]
    pub quiet_s: f64,
    /// Rounds: the modes run this many times, interleaved (snapshot,
    /// replay, snapshot, ...), each on a fresh cluster; medians are printed
    /// after the rows.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Seconds the follower may take to rejoin (and the bulk write to
    /// finish) before the mode is given up.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// Seconds per baseline measurement.
    #[arg(long, default_value_t = 1.0)]
    pub baseline_s: f64,
    /// Skip the baselines.
    #[arg(long)]
    pub no_baselines: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

fn positive(flag: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{flag} must be a positive number, not {v}"))
    }
}

/// The broker's default of `--snapshot-catch-up-mib`.
const BROKER_CATCH_UP_MIB_DEFAULT: u64 = 256;

/// Flag checks (a problem is a usage error).
pub fn validate(a: &CatchUpArgs) -> Result<(), String> {
    positive("--quiet-s", a.quiet_s)?;
    positive("--timeout-s", a.timeout_s)?;
    positive("--baseline-s", a.baseline_s)?;
    if !(a.probe_rate.is_finite() && a.probe_rate >= 0.0 && a.probe_rate <= 100_000.0) {
        return Err(format!(
            "--probe-rate must be in 0..=100000 msgs/s, not {}",
            a.probe_rate
        ));
    }
    if a.modes.is_empty() {
        return Err("--modes: give snapshot and/or replay".into());
    }
    if a.modes.contains(&Mode::Snapshot) {
        let threshold = a.catch_up_mib.unwrap_or(BROKER_CATCH_UP_MIB_DEFAULT);
        if threshold == 0 || threshold >= a.behind_mib {
            return Err(format!(
                "--catch-up-mib {threshold} (0 or not below --behind-mib {}): the follower would replay, not get a snapshot",
                a.behind_mib
            ));
        }
    }
    if a.snapshot_rate_mb == Some(0) {
        return Err("--snapshot-rate-mb must be at least 1".into());
    }
    Ok(())
}

/// Disk a mode needs: the log on three brokers (records carry ~4 % of
/// framing on 1 KiB values), a staged snapshot beside the follower's log,
/// the probes' writes and preallocated segments, plus the floor to keep.
pub fn disk_needed_bytes(log_mib: u64, segment_mib: u64, probe_partitions: u32) -> u64 {
    let log = (log_mib << 20) * 105 / 100;
    let segments =
        (u64::from(probe_partitions) * PROBE_SEGMENT_BYTES + 2 * (segment_mib << 20)) * 3;
    log * 4 + segments + DISK_FLOOR_BYTES
}

/// Segment size of the probe topic (segments are preallocated).
const PROBE_SEGMENT_BYTES: u64 = 8 << 20;

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = zeroed_statvfs();
    // SAFETY: `c` is a NUL-terminated path and `s` a valid statvfs to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then_some(s.f_bavail * s.f_frsize)
}

fn zeroed_statvfs() -> libc::statvfs {
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

// ---------------------------------------------------------------------------
// Pure logic: latency windows and the status observations.

/// A probe's acknowledged message: intended send time and latency, µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub intended_us: u64,
    pub latency_us: u64,
}

/// Latency over a window of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowStats {
    pub from_s: f64,
    pub to_s: f64,
    pub acked: u64,
    pub failed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Percentiles of the samples whose intended send time is in
/// `[from_us, to_us)`; failures (by intended time) in the same window.
pub fn window_stats(samples: &[Sample], failures: &[u64], from_us: u64, to_us: u64) -> WindowStats {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds");
    for s in samples {
        if (from_us..to_us).contains(&s.intended_us) {
            h.saturating_record(s.latency_us.max(1));
        }
    }
    let failed = failures
        .iter()
        .filter(|t| (from_us..to_us).contains(*t))
        .count() as u64;
    let q = |q| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    WindowStats {
        from_s: from_us as f64 / 1e6,
        to_s: to_us as f64 / 1e6,
        acked: h.len(),
        failed,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if h.is_empty() { 0 } else { h.max() },
    }
}

/// Width of a [`timeline`] bucket.
pub const TIMELINE_BUCKET_US: u64 = 250_000;

/// One bucket of a probe's timeline: by intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    pub from_s: f64,
    pub acked: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The samples in [`TIMELINE_BUCKET_US`] buckets of intended send time,
/// from the first bucket with a sample to the last (empty ones included).
pub fn timeline(samples: &[Sample]) -> Vec<Bucket> {
    let mut hists: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    for s in samples {
        hists
            .entry(s.intended_us / TIMELINE_BUCKET_US)
            .or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("constant bounds")
            })
            .saturating_record(s.latency_us.max(1));
    }
    let (Some(&first), Some(&last)) = (hists.keys().next(), hists.keys().next_back()) else {
        return Vec::new();
    };
    (first..=last)
        .map(|i| {
            let h = hists.get(&i);
            Bucket {
                from_s: (i * TIMELINE_BUCKET_US) as f64 / 1e6,
                acked: h.map_or(0, |h| h.len()),
                p99_us: h.map_or(0, |h| h.value_at_quantile(0.99)),
                max_us: h.map_or(0, |h| h.max()),
            }
        })
        .collect()
}

/// `during / before`, None without a baseline.
pub fn ratio(during: u64, before: u64) -> Option<f64> {
    (before > 0).then(|| during as f64 / before as f64)
}

/// What one cluster status says about the returning follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub leader: u64,
    pub commit_index: u64,
    pub match_index: u64,
    pub lag: u64,
    /// `(bytes sent, bytes total, bytes/s)` while the leader streams a
    /// snapshot to it.
    pub snapshot: Option<(u64, u64, u64)>,
}

/// The partition as its leader reports it, and the follower's replica
/// entry there (None: no leader reports the partition, or it does not list
/// the follower).
pub fn observe(
    s: &ClusterStatusResponse,
    topic: &str,
    partition: u32,
    follower: u64,
) -> Option<Observation> {
    let p = s
        .partitions
        .iter()
        .find(|p| p.topic == topic && p.partition == partition && p.leader.is_some())?;
    let r = p.replicas.iter().find(|r| r.broker == follower)?;
    Some(Observation {
        leader: p.leader?,
        commit_index: p.commit_index,
        match_index: r.match_index,
        lag: r.lag,
        snapshot: r
            .snapshot
            .as_ref()
            .map(|s| (s.bytes_sent, s.bytes_total, s.bytes_per_sec)),
    })
}

impl Observation {
    /// Caught up: it holds everything the leader has committed.
    pub fn caught_up(&self) -> bool {
        self.match_index >= self.commit_index
    }
}

/// The transfer as seen in the polls: when a snapshot stream to the
/// follower was first and last reported, its size and the rates the leader
/// reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TransferSeen {
    pub first_us: Option<u64>,
    /// The first poll without the stream after it was seen (or the last
    /// poll with it, if it never ended in the polls).
    pub end_us: Option<u64>,
    pub bytes_sent_max: u64,
    pub bytes_total: u64,
    pub reported_bytes_per_sec_max: u64,
    /// Times a stream appeared after one had ended (restarts).
    pub streams: u32,
    pub last_seen_us: Option<u64>,
}

impl TransferSeen {
    pub fn add(&mut self, at_us: u64, snapshot: Option<(u64, u64, u64)>) {
        match snapshot {
            Some((sent, total, rate)) => {
                if self.first_us.is_none() || self.end_us.is_some() {
                    self.streams += 1;
                }
                self.first_us.get_or_insert(at_us);
                self.end_us = None;
                self.bytes_sent_max = self.bytes_sent_max.max(sent);
                self.bytes_total = self.bytes_total.max(total);
                self.reported_bytes_per_sec_max = self.reported_bytes_per_sec_max.max(rate);
                self.last_seen_us = Some(at_us);
            }
            None => {
                if self.first_us.is_some() && self.end_us.is_none() {
                    self.end_us = Some(at_us);
                }
            }
        }
    }

    /// The window `[first seen, end)`, closed at the last sighting if it
    /// never ended in the polls.
    pub fn window_us(&self) -> Option<(u64, u64)> {
        let first = self.first_us?;
        let end = self.end_us.or(self.last_seen_us)?;
        Some((first, end.max(first)))
    }
}

// ---------------------------------------------------------------------------
// Probes.

/// One fixed-rate producer thread; stopped and joined when dropped.
struct Probe {
    name: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ProbeOut>>,
}

#[derive(Debug, Default)]
struct ProbeOut {
    samples: Vec<Sample>,
    failures: Vec<u64>,
    errors: BTreeMap<String, u64>,
    sent: u64,
    not_recorded: u64,
    fatal: Option<String>,
}

impl Probe {
    fn start(
        name: &'static str,
        brokers: &[SocketAddr],
        topic: &str,
        partitions: Vec<u32>,
        rate: f64,
        t0: Instant,
    ) -> Result<Probe> {
        let mut cfg = ProducerConfig::new(ClientConfig::new(brokers.to_vec()), topic);
        cfg.acks = Acks::Quorum;
        cfg.linger = Duration::from_millis(1);
        cfg.in_flight_max = 32;
        let producer = Producer::new(cfg).with_context(|| format!("probe producer on {topic}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || probe_loop(producer, &partitions, rate, t0, &s))?;
        Ok(Probe {
            name,
            stop,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> ProbeOut {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| ProbeOut {
                fatal: Some(format!("probe {} panicked", self.name)),
                ..Default::default()
            })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn us_since(t0: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(t0).as_micros() as u64
}

/// Open loop: message `n` is due at `start + n / rate`, latency is counted
/// from then (a stalled producer cannot hide it); round-robin over the
/// partitions. Bounded by the stop flag (and a final flush deadline).
fn probe_loop(
    mut p: Producer,
    partitions: &[u32],
    rate: f64,
    t0: Instant,
    stop: &AtomicBool,
) -> ProbeOut {
    let mut out = ProbeOut::default();
    let interval_us = 1e6 / rate;
    let start_us = us_since(t0, Instant::now());
    let mut value = vec![0x5au8; MESSAGE_BYTES];
    let take = |p: &mut Producer, out: &mut ProbeOut| {
        for d in p.take_deliveries() {
            let done = us_since(t0, d.done_at);
            match &d.result {
                Ok(_) => {
                    for &intended in &d.tags {
                        if out.samples.len() < SAMPLES_MAX {
                            out.samples.push(Sample {
                                intended_us: intended,
                                latency_us: done.saturating_sub(intended),
                            });
                        } else {
                            out.not_recorded += 1;
                        }
                    }
                }
                Err(e) => {
                    *out.errors.entry(e.kind().to_owned()).or_insert(0) += d.tags.len() as u64;
                    out.failures.extend(d.tags.iter().copied());
                }
            }
        }
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let intended = start_us + (n as f64 * interval_us) as u64;
        let now = us_since(t0, Instant::now());
        if intended > now {
            p.poll(Duration::from_micros((intended - now).min(50_000)));
            take(&mut p, &mut out);
            continue;
        }
        value[..8].copy_from_slice(&n.to_le_bytes());
        let partition = partitions[(n % partitions.len() as u64) as usize];
        if let Err(e) = p.send_to(partition, None, &value, (intended / 1000) as i64, intended) {
            out.fatal = Some(e.to_string());
            break;
        }
        n += 1;
        out.sent += 1;
        take(&mut p, &mut out);
    }
    if let Err(e) = p.flush(Instant::now() + Duration::from_secs(30)) {
        out.fatal.get_or_insert(e.to_string());
    }
    take(&mut p, &mut out);
    out
}

// ---------------------------------------------------------------------------
// The run.

#[derive(Debug, Serialize)]
struct Timeline {
    kill_s: f64,
    bulk_done_s: f64,
    restart_s: f64,
    listening_s: f64,
    caught_up_s: Option<f64>,
}

/// A mode's figures.
#[derive(Debug, Serialize)]
struct ModeResult {
    mode: Mode,
    broker_args: Vec<String>,
    leader: u64,
    follower: u64,
    shard: u32,
    behind_bytes: u64,
    prefill_bytes: u64,
    /// Snapshot bytes sent per byte the follower missed.
    snapshot_sent_per_behind: f64,
    bulk_write_s: f64,
    bulk_failed: u64,
    /// The partition's size on the leader when the follower restarted
    /// (telemetry, up to 1 s old).
    leader_log_bytes: Option<u64>,
    /// Restart of the follower's process until it listened.
    follower_start_s: f64,
    /// Restart of the follower's process until its match index reached the
    /// leader's commit index (None: not within --timeout-s).
    rejoin_s: Option<f64>,
    /// Leaders' `snapshot_bytes_sent` over the catch-up (summed over the
    /// brokers that stayed up).
    snapshot_bytes_sent: u64,
    transfer: TransferSeen,
    transfer_s: Option<f64>,
    /// Snapshot bytes sent / transfer window.
    transfer_mb_per_s: Option<f64>,
    /// What the follower caught up on / rejoin time: snapshot bytes sent,
    /// else (replay) the leader's log size.
    catch_up_mb_per_s: Option<f64>,
    /// The returning follower's counters since its restart, and the other
    /// brokers' deltas over the catch-up.
    follower_counters: BTreeMap<String, u64>,
    leader_counter_deltas: BTreeMap<String, u64>,
    leader_changes_seen: u32,
    /// Seconds since the mode's start: kill, bulk write done, restart,
    /// caught up.
    timeline: Timeline,
    probes: Vec<Value>,
    ok: bool,
    notes: Vec<String>,
}

const SNAPSHOT_COUNTERS: [&str; 9] = [
    "snapshot_transfers_started",
    "snapshot_transfers_finished",
    "snapshot_transfers_resumed",
    "snapshot_transfers_failed",
    "snapshot_bytes_sent",
    "snapshot_bytes_received",
    "snapshot_installs",
    "snapshot_archives",
    "elections",
];

fn counters(http: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let v = crate::spawn::api_status(http)?;
    let mut out = BTreeMap::new();
    for shard in v["shards"].as_array()? {
        for name in SNAPSHOT_COUNTERS {
            *out.entry(name.to_owned()).or_insert(0) += shard[name].as_u64().unwrap_or(0);
        }
    }
    Some(out)
}

/// The partition's `size_bytes` in the broker's telemetry.
fn partition_size(http: SocketAddr, topic: &str, partition: u32) -> Option<u64> {
    let v = crate::spawn::api_status(http)?;
    v["shards"].as_array()?.iter().find_map(|s| {
        s["partitions"].as_array()?.iter().find_map(|p| {
            (p["topic"] == topic && p["partition"] == partition)
                .then(|| p["size_bytes"].as_u64())
                .flatten()
        })
    })
}

fn create_topic(brokers: &[SocketAddr], name: &str, partitions: u32, segment: u64) -> Result<()> {
    let req = CreateTopicRequest {
        name: name.to_owned(),
        partitions,
        replication: 3,
        config: TopicConfig {
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: Some(segment),
            segment_ms: None,
            cleanup: CleanupPolicy::Delete,
            durability: Durability::EveryBatch,
            tombstone_retention_ms: None,
        },
        timeout_ms: 10_000,
    };
    Admin::new(brokers.to_vec(), Duration::from_secs(20))
        .ensure_topic(req)
        .with_context(|| format!("creating topic {name}"))
}

/// Polls (bounded) until `f` gives a value.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(brokers: &[SocketAddr]) -> Option<ClusterStatusResponse> {
    Admin::new(brokers.to_vec(), Duration::from_secs(2))
        .cluster_status()
        .ok()
}

fn say(quiet: bool, msg: impl std::fmt::Display) {
    if !quiet {
        eprintln!("drmq-loadtest catch-up: {msg}");
    }
}

/// Writes `count` 1 KiB messages to partition 0 of `topic` at maximum rate
/// (acks = quorum); returns the failed ones. Bounded by `limit`.
fn bulk_write(brokers: &[SocketAddr], topic: &str, count: u64, limit: Duration) -> Result<u64> {
    let mut cfg = ProducerConfig::new(ClientConfig::new(brokers.to_vec()), topic);
    cfg.acks = Acks::Quorum;
    cfg.batch_bytes_max = 256 * 1024;
    cfg.in_flight_max = 16;
    let mut p = Producer::new(cfg)?;
    let value = vec![0xa5u8; MESSAGE_BYTES];
    let deadline = Instant::now() + limit;
    let mut failed = 0;
    for i in 0..count {
        p.send_to(0, None, &value, 0, i)?;
        if i % 4096 == 0 {
            for d in p.take_deliveries() {
                if d.result.is_err() {
                    failed += d.tags.len() as u64;
                }
            }
            if Instant::now() >= deadline {
                bail!("the bulk write did not finish within {limit:?} ({i} of {count} sent)");
            }
        }
    }
    p.flush(deadline)?;
    for d in p.take_deliveries() {
        if d.result.is_err() {
            failed += d.tags.len() as u64;
        }
    }
    Ok(failed)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn run_mode(a: &CatchUpArgs, mode: Mode, drmq: &Path, base_dir: &Path) -> Result<ModeResult> {
    let mut broker_args = Vec::new();
    if let Some(r) = a.snapshot_rate_mb {
        broker_args.extend(["--snapshot-rate-mb".to_owned(), r.to_string()]);
    }
    match (mode, a.catch_up_mib) {
        (Mode::Replay, _) => broker_args.extend(["--snapshot-catch-up-mib".into(), "0".into()]),
        (Mode::Snapshot, Some(m)) => {
            broker_args.extend(["--snapshot-catch-up-mib".to_owned(), m.to_string()])
        }
        (Mode::Snapshot, None) => {}
    }
    let dir = base_dir.join(format!(
        "drmq-catchup-{}-{}-{}",
        std::process::id(),
        random_secret(),
        mode.name()
    ));
    let mut opts = LaunchOptions::new(drmq.to_owned(), dir, 3, a.shards);
    opts.remove_data_dir = true;
    opts.secret = Some(format!("catchup-{}", random_secret()));
    opts.extra_args = broker_args.clone();
    opts.parent_death_signal = true;
    if let Some(p) = &a.broker_log {
        opts.log = BrokerLog::Append(p.clone());
    }
    // Dropped last (after the probes): kills the brokers, removes the data.
    let mut cluster = LocalCluster::start(opts).context("starting the brokers")?;
    say(
        a.quiet,
        format!(
            "{}: 3 brokers up (pids {:?}), args {broker_args:?}, data in {}",
            mode.name(),
            (0..3).filter_map(|i| cluster.pid(i)).collect::<Vec<_>>(),
            cluster.data_dir.display()
        ),
    );
    let brokers = cluster.listens.clone();
    let https = cluster.https.clone();
    let topic = format!("catchup-{}", mode.name());
    let probe_topic = format!("catchup-{}-probe", mode.name());
    let segment = a.segment_mib << 20;
    create_topic(&brokers, &topic, 1, segment)?;
    // Probe partitions: small segments (they are preallocated).
    create_topic(
        &brokers,
        &probe_topic,
        a.probe_partitions,
        PROBE_SEGMENT_BYTES,
    )?;
    if !cluster.wait_caught_up(SETTLE_TIMEOUT) {
        bail!("the topics' replicas did not settle within {SETTLE_TIMEOUT:?}");
    }
    let admin = Admin::new(brokers.clone(), ADMIN_TIMEOUT);
    let d = admin.describe_topic(&topic)?;
    let part = d.topic.partitions.first().context("no partition 0")?;
    let (leader, shard) = (
        part.leader.context("partition 0 has no leader")?,
        part.shard,
    );
    let follower = *part
        .replicas
        .iter()
        .find(|&&b| b != leader)
        .context("no follower")?;
    let other = *part
        .replicas
        .iter()
        .find(|&&b| b != leader && b != follower)
        .context("RF=3 has a second follower")?;
    let probe_desc = admin.describe_topic(&probe_topic)?;
    let same_shard: Vec<_> = probe_desc
        .topic
        .partitions
        .iter()
        .filter(|p| p.shard == shard)
        .collect();
    let mut notes = Vec::new();
    let mut probe_parts: Vec<u32> = same_shard
        .iter()
        .filter(|p| p.leader == Some(leader))
        .map(|p| p.partition)
        .collect();
    if probe_parts.is_empty() {
        notes.push(format!(
            "no partition of {probe_topic} on shard {shard} is led by broker {leader}: the shard probe writes to shard {shard} of other leaders"
        ));
        probe_parts = same_shard.iter().map(|p| p.partition).collect();
    }
    say(
        a.quiet,
        format!(
            "{topic}-0: leader {leader}, shard {shard}, follower to kill {follower}; {probe_topic} partitions {probe_parts:?} on the same shard{}",
            if notes.is_empty() { " and leader" } else { "" }
        ),
    );

    if a.prefill_mib > 0 {
        let t = Instant::now();
        let failed = bulk_write(
            &brokers,
            &topic,
            a.prefill_mib * 1024,
            Duration::from_secs_f64(a.timeout_s),
        )?;
        if failed > 0 {
            notes.push(format!("{failed} messages of the prefill failed"));
        }
        say(
            a.quiet,
            format!(
                "prefilled {} MiB in {:.1} s; waiting for every replica to hold it",
                a.prefill_mib,
                t.elapsed().as_secs_f64()
            ),
        );
        if !cluster.wait_caught_up(SETTLE_TIMEOUT) {
            bail!("the replicas did not catch up with the prefill within {SETTLE_TIMEOUT:?}");
        }
    }
    let t0 = Instant::now();
    let mut probes = Vec::new();
    if a.probe_rate > 0.0 {
        if !probe_parts.is_empty() {
            probes.push(Probe::start(
                "same-shard",
                &brokers,
                &probe_topic,
                probe_parts.clone(),
                a.probe_rate,
                t0,
            )?);
        } else {
            notes.push(format!("no partition of {probe_topic} on shard {shard}"));
        }
        probes.push(Probe::start(
            "catch-up-partition",
            &brokers,
            &topic,
            vec![0],
            a.probe_rate,
            t0,
        )?);
    }
    std::thread::sleep(PROBE_WARMUP);
    let before_from = us_since(t0, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(a.quiet_s));

    // The follower goes away; the leader writes --behind-mib.
    let fi = follower as usize - 1;
    let kill_us = us_since(t0, Instant::now());
    cluster.kill(fi);
    let live: Vec<SocketAddr> = (0..3).filter(|&i| i != fi).map(|i| brokers[i]).collect();
    say(
        a.quiet,
        format!(
            "killed broker {follower}; writing {} MiB to {topic}-0",
            a.behind_mib
        ),
    );
    let limit = Duration::from_secs_f64(a.timeout_s);
    let bulk_start = Instant::now();
    let bulk_failed = bulk_write(&live, &topic, a.behind_mib * 1024, limit)?;
    let bulk_write_s = bulk_start.elapsed().as_secs_f64();
    let bulk_done_us = us_since(t0, Instant::now());
    say(
        a.quiet,
        format!(
            "wrote {} MiB in {bulk_write_s:.1} s ({:.1} MB/s), {bulk_failed} failed; waiting for broker {other} to hold it all",
            a.behind_mib,
            mb(a.behind_mib << 20) / bulk_write_s
        ),
    );
    wait_for("the second follower catching up", SETTLE_TIMEOUT, || {
        let s = status(&live)?;
        let o = observe(&s, &topic, 0, other)?;
        o.caught_up().then_some(())
    })?;
    let leader_now = observe(
        &status(&live).context("cluster status")?,
        &topic,
        0,
        follower,
    )
    .map_or(leader, |o| o.leader);
    if leader_now != leader {
        notes.push(format!(
            "leadership of {topic}-0 moved from {leader} to {leader_now} while the follower was down"
        ));
    }
    // Telemetry samples are a second old at most.
    std::thread::sleep(Duration::from_millis(1100));
    let leader_log_bytes = partition_size(https[leader_now as usize - 1], &topic, 0);
    let live_https: Vec<(usize, SocketAddr)> =
        (0..3).filter(|&i| i != fi).map(|i| (i, https[i])).collect();
    let before_counters: Vec<_> = live_https.iter().map(|(_, h)| counters(*h)).collect();

    // Back: restart and poll until it has every committed entry.
    let restart_us = us_since(t0, Instant::now());
    let restart_at = Instant::now();
    cluster.restart(fi).context("restarting the follower")?;
    let follower_start_s = restart_at.elapsed().as_secs_f64();
    say(
        a.quiet,
        format!("broker {follower} restarted (listening after {follower_start_s:.2} s); waiting for it to catch up"),
    );
    let mut transfer = TransferSeen::default();
    let mut leaders_seen = vec![leader_now];
    let mut caught_up_us = None;
    let mut last: Option<Observation> = None;
    let mut last_print = Instant::now();
    let deadline = restart_at + limit;
    // Bounded by the deadline, one poll per POLL_INTERVAL.
    while Instant::now() < deadline {
        let polled = Instant::now();
        let o = status(&brokers).and_then(|s| observe(&s, &topic, 0, follower));
        let at = us_since(t0, Instant::now());
        if let Some(o) = &o {
            transfer.add(at, o.snapshot);
            if !leaders_seen.contains(&o.leader) {
                leaders_seen.push(o.leader);
            }
            if o.caught_up() {
                caught_up_us = Some(at);
                last = Some(o.clone());
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(2) {
                last_print = Instant::now();
                say(
                    a.quiet,
                    format!(
                        "  match {} / commit {} (lag {}){}",
                        o.match_index,
                        o.commit_index,
                        o.lag,
                        o.snapshot.map_or(String::new(), |(s, t, r)| format!(
                            ", snapshot {:.0}/{:.0} MB at {:.1} MB/s",
                            mb(s),
                            mb(t),
                            mb(r)
                        ))
                    ),
                );
            }
            last = Some(o.clone());
        }
        std::thread::sleep(POLL_INTERVAL.saturating_sub(polled.elapsed()));
    }
    let rejoin_s = caught_up_us.map(|c| (c - restart_us) as f64 / 1e6);
    match rejoin_s {
        Some(s) => say(a.quiet, format!("broker {follower} caught up in {s:.2} s")),
        None => {
            notes.push(format!(
                "broker {follower} did not catch up within {:.0} s; last seen {last:?}",
                a.timeout_s
            ));
            say(a.quiet, notes.last().expect("just pushed"));
        }
    }
    std::thread::sleep(Duration::from_millis(1100));
    let after_counters: Vec<_> = live_https.iter().map(|(_, h)| counters(*h)).collect();
    let follower_counters = counters(https[fi]).unwrap_or_default();
    let mut leader_counter_deltas = BTreeMap::new();
    for (b, a2) in before_counters.iter().zip(&after_counters) {
        if let (Some(b), Some(a2)) = (b, a2) {
            for (k, v) in a2 {
                *leader_counter_deltas.entry(k.clone()).or_insert(0) +=
                    v.saturating_sub(b.get(k).copied().unwrap_or(0));
            }
        }
    }
    let snapshot_bytes_sent = leader_counter_deltas
        .get("snapshot_bytes_sent")
        .copied()
        .unwrap_or(0);

    // The window after, all three up again.
    let after_from = us_since(t0, Instant::now()) + 1_000_000;
    std::thread::sleep(Duration::from_secs_f64(a.quiet_s + 1.0));
    let after_to = us_since(t0, Instant::now());
    let outs: Vec<(&'static str, ProbeOut)> =
        probes.into_iter().map(|p| (p.name, p.finish())).collect();

    let transfer_s = transfer
        .window_us()
        .map(|(f, e)| (e - f) as f64 / 1e6)
        .filter(|s| *s > 0.0);
    let transfer_mb_per_s = transfer_s
        .filter(|_| snapshot_bytes_sent > 0)
        .map(|s| mb(snapshot_bytes_sent) / s);
    let caught_up_bytes = if snapshot_bytes_sent > 0 {
        Some(snapshot_bytes_sent)
    } else {
        leader_log_bytes
    };
    let catch_up_mb_per_s = rejoin_s
        .zip(caught_up_bytes)
        .map(|(s, b)| mb(b) / s.max(1e-6));
    let mut windows: Vec<(&str, u64, u64)> = vec![
        ("before", before_from, kill_us),
        (
            "catch_up",
            restart_us,
            caught_up_us.unwrap_or_else(|| us_since(t0, deadline)),
        ),
    ];
    if let Some((f, e)) = transfer.window_us() {
        windows.push(("transfer", f, e));
    }
    windows.push(("after", after_from, after_to));
    let mut probes_json = Vec::new();
    for (name, out) in &outs {
        let mut w = serde_json::Map::new();
        for (wname, f, t) in &windows {
            w.insert(
                (*wname).to_owned(),
                serde_json::to_value(window_stats(&out.samples, &out.failures, *f, *t))?,
            );
        }
        let before_p99 = w["before"]["p99_us"].as_u64().unwrap_or(0);
        let p99_ratio = |k: &str| {
            w.get(k)
                .and_then(|v| v["p99_us"].as_u64())
                .and_then(|d| ratio(d, before_p99))
        };
        let (r_catch, r_transfer, r_after) = (
            p99_ratio("catch_up"),
            p99_ratio("transfer"),
            p99_ratio("after"),
        );
        if let Some(f) = &out.fatal {
            notes.push(format!("probe {name}: {f}"));
        }
        probes_json.push(json!({
            "probe": name,
            "topic": if *name == "same-shard" { &probe_topic } else { &topic },
            "partitions": if *name == "same-shard" { probe_parts.clone() } else { vec![0] },
            "rate": a.probe_rate,
            "sent": out.sent,
            "errors": out.errors,
            "not_recorded": out.not_recorded,
            "windows": w,
            "p99_ratio_catch_up_to_before": r_catch,
            "p99_ratio_transfer_to_before": r_transfer,
            "p99_ratio_after_to_before": r_after,
            "timeline": timeline(&out.samples),
        }));
    }
    let snapshot_expected = mode == Mode::Snapshot;
    let installs = follower_counters
        .get("snapshot_installs")
        .copied()
        .unwrap_or(0);
    if snapshot_expected && installs == 0 {
        notes.push("snapshot mode, but the follower installed no snapshot".into());
    }
    if !snapshot_expected && (installs > 0 || snapshot_bytes_sent > 0) {
        notes.push("replay mode, but a snapshot was sent".into());
    }
    let ok = rejoin_s.is_some()
        && bulk_failed == 0
        && (installs > 0) == snapshot_expected
        && outs.iter().all(|(_, o)| o.fatal.is_none());
    drop(cluster);
    Ok(ModeResult {
        mode,
        broker_args,
        leader: leader_now,
        follower,
        shard,
        behind_bytes: a.behind_mib << 20,
        prefill_bytes: a.prefill_mib << 20,
        snapshot_sent_per_behind: snapshot_bytes_sent as f64 / (a.behind_mib << 20) as f64,
        bulk_write_s,
        bulk_failed,
        leader_log_bytes,
        follower_start_s,
        rejoin_s,
        snapshot_bytes_sent,
        transfer,
        transfer_s,
        transfer_mb_per_s,
        catch_up_mb_per_s,
        follower_counters,
        leader_counter_deltas,
        leader_changes_seen: leaders_seen.len() as u32 - 1,
        timeline: Timeline {
            kill_s: kill_us as f64 / 1e6,
            bulk_done_s: bulk_done_us as f64 / 1e6,
            restart_s: restart_us as f64 / 1e6,
            listening_s: restart_us as f64 / 1e6 + follower_start_s,
            caught_up_s: caught_up_us.map(|c| c as f64 / 1e6),
        },
        probes: probes_json,
        ok,
        notes,
    })
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1e3;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(results: &[ModeResult], tcp: Option<f64>, fsync: Option<f64>) {
    println!();
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7} {:>7} {:>9}",
        "mode",
        "behind MB",
        "log MB",
        "rejoin s",
        "snap MB",
        "xfer s",
        "xfer MB/s",
        "/tcp",
        "/fsync",
        "rejoin MB/s"
    );
    for r in results {
        let rate = r.transfer_mb_per_s;
        println!(
            "{:<9} {:>9.0} {:>9} {:>9} {:>10.1} {:>10} {:>9} {:>7} {:>7} {:>9}",
            r.mode.name(),
            mb(r.behind_bytes),
            r.leader_log_bytes
                .map_or("-".into(), |b| format!("{:.0}", mb(b))),
            fmt_opt(r.rejoin_s, 2),
            mb(r.snapshot_bytes_sent),
            fmt_opt(r.transfer_s, 2),
            fmt_opt(rate, 1),
            fmt_opt(rate.zip(tcp).map(|(r, t)| r / t), 3),
            fmt_opt(rate.zip(fsync).map(|(r, f)| r / f), 3),
            fmt_opt(r.catch_up_mb_per_s, 1),
        );
    }
    println!();
    println!(
        "{:<9} {:<19} {:<9} {:>8} {:>24} {:>8}",
        "mode", "probe", "window", "acked", "p50 / p99 / p99.9 ms", "p99 ×"
    );
    for r in results {
        for p in &r.probes {
            let before = p["windows"]["before"]["p99_us"].as_u64().unwrap_or(0);
            for w in ["before", "catch_up", "transfer", "after"] {
                let Some(v) = p["windows"].get(w) else {
                    continue;
                };
                let g = |k: &str| v[k].as_u64().unwrap_or(0);
                println!(
                    "{:<9} {:<19} {:<9} {:>8} {:>24} {:>8}",
                    r.mode.name(),
                    p["probe"].as_str().unwrap_or("?"),
                    w,
                    g("acked"),
                    format!(
                        "{} / {} / {}",
                        ms(g("p50_us")),
                        ms(g("p99_us")),
                        ms(g("p999_us"))
                    ),
                    fmt_opt(ratio(g("p99_us"), before), 2),
                );
            }
        }
    }
    for r in results {
        for n in &r.notes {
            println!("note ({}): {n}", r.mode.name());
        }
    }
}

/// The middle value (the mean of the middle two for an even count); None
/// for none. NaNs are left out.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Medians over the rounds of one mode.
#[derive(Debug, Serialize)]
struct Summary {
    mode: Mode,
    rounds: usize,
    rejoin_s: Option<f64>,
    rejoin_s_all: Vec<Option<f64>>,
    transfer_mb_per_s: Option<f64>,
    transfer_to_tcp: Option<f64>,
    transfer_to_fsync: Option<f64>,
    catch_up_mb_per_s: Option<f64>,
    /// Per probe: median p99 (µs) before / during the catch-up / during the
    /// transfer / after, and the median of each round's during/before ratio.
    probes: Vec<Value>,
}

fn summarize(
    modes: &[Mode],
    results: &[ModeResult],
    tcp: Option<f64>,
    fsync: Option<f64>,
) -> Vec<Summary> {
    let mut out = Vec::new();
    for &mode in modes {
        let rs: Vec<&ModeResult> = results.iter().filter(|r| r.mode == mode).collect();
        if rs.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&ModeResult) -> Option<f64>| {
            median(rs.iter().filter_map(|r| f(r)).collect())
        };
        let transfer = med(&|r| r.transfer_mb_per_s);
        let mut probes = Vec::new();
        for name in ["same-shard", "catch-up-partition"] {
            let ps: Vec<&Value> = rs
                .iter()
                .flat_map(|r| r.probes.iter())
                .filter(|p| p["probe"] == name)
                .collect();
            if ps.is_empty() {
                continue;
            }
            let p99 = |w: &str| {
                median(
                    ps.iter()
                        .filter_map(|p| p["windows"][w]["p99_us"].as_u64())
                        .map(|v| v as f64)
                        .collect(),
                )
            };
            let r = |k: &str| median(ps.iter().filter_map(|p| p[k].as_f64()).collect());
            probes.push(json!({
                "probe": name,
                "p99_us_before": p99("before"),
                "p99_us_catch_up": p99("catch_up"),
                "p99_us_transfer": p99("transfer"),
                "p99_us_after": p99("after"),
                "p99_ratio_catch_up_to_before": r("p99_ratio_catch_up_to_before"),
                "p99_ratio_transfer_to_before": r("p99_ratio_transfer_to_before"),
                "p99_ratio_after_to_before": r("p99_ratio_after_to_before"),
            }));
        }
        out.push(Summary {
            mode,
            rounds: rs.len(),
            rejoin_s: med(&|r| r.rejoin_s),
            rejoin_s_all: rs.iter().map(|r| r.rejoin_s).collect(),
            transfer_mb_per_s: transfer,
            transfer_to_tcp: transfer.zip(tcp).map(|(r, t)| r / t),
            transfer_to_fsync: transfer.zip(fsync).map(|(r, f)| r / f),
            catch_up_mb_per_s: med(&|r| r.catch_up_mb_per_s),
            probes,
        });
    }
    out
}

fn print_summary(summary: &[Summary]) {
    if summary.iter().all(|s| s.rounds < 2) {
        return;
    }
    println!();
    println!("medians over the rounds:");
    for s in summary {
        println!(
            "{:<9} rounds {}  rejoin {} s {:?}  transfer {} MB/s (/tcp {}, /fsync {})  rejoin MB/s {}",
            s.mode.name(),
            s.rounds,
            fmt_opt(s.rejoin_s, 2),
            s.rejoin_s_all
                .iter()
                .map(|v| fmt_opt(*v, 2))
                .collect::<Vec<_>>(),
            fmt_opt(s.transfer_mb_per_s, 1),
            fmt_opt(s.transfer_to_tcp, 3),
            fmt_opt(s.transfer_to_fsync, 3),
            fmt_opt(s.catch_up_mb_per_s, 1),
        );
        for p in &s.probes {
            let ms = |k: &str| fmt_opt(p[k].as_f64().map(|v| v / 1e3), 1);
            let x = |k: &str| fmt_opt(p[k].as_f64(), 2);
            println!(
                "  {:<19} p99 ms before {} catch-up {} transfer {} after {};  ratio to before (median of rounds): catch-up {} transfer {} after {}",
                p["probe"].as_str().unwrap_or("?"),
                ms("p99_us_before"),
                ms("p99_us_catch_up"),
                ms("p99_us_transfer"),
                ms("p99_us_after"),
                x("p99_ratio_catch_up_to_before"),
                x("p99_ratio_transfer_to_before"),
                x("p99_ratio_after_to_before"),
            );
        }
    }
}

/// The subcommand. Returns whether every mode rejoined as it should.
pub fn cmd(a: CatchUpArgs) -> Result<bool> {
    let drmq = find_drmq(a.drmq.as_deref()).context(
        "the drmq binary is needed: give --drmq PATH or $DRMQ_BIN, or build it next to drmq-loadtest",
    )?;
    let base_dir = a.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base_dir)
        .with_context(|| format!("creating {}", base_dir.display()))?;
    let need = disk_needed_bytes(
        a.behind_mib + a.prefill_mib,
        a.segment_mib,
        a.probe_partitions,
    );
    if let Some(free) = free_bytes(&base_dir) {
        if free < need {
            bail!(
                "{} has {:.1} GB free; a {} MiB-behind run needs about {:.1} GB (keeping {:.0} GB free): lower --behind-mib or give --data-dir elsewhere",
                base_dir.display(),
                free as f64 / 1e9,
                a.behind_mib,
                need as f64 / 1e9,
                DISK_FLOOR_BYTES as f64 / 1e9
            );
        }
    }
    let chunk = 2 << 20;
    let dur = Duration::from_secs_f64(a.baseline_s);
    let (tcp, fsync) = if a.no_baselines {
        (None, None)
    } else {
        let tcp = baseline::tcp(chunk, dur).ok();
        let fsync = baseline::fsync(&base_dir, chunk, dur).ok();
        say(
            a.quiet,
            format!(
                "baselines (2 MiB writes): loopback TCP {} MB/s, write+fdatasync {} MB/s",
                fmt_opt(tcp.as_ref().map(|t| t.bytes_per_s / 1e6), 0),
                fmt_opt(fsync.as_ref().map(|f| f.bytes_per_s / 1e6), 0)
            ),
        );
        (tcp, fsync)
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for round in 0..a.rounds {
        for &mode in &a.modes {
            say(
                a.quiet,
                format!("round {} of {}: {}", round + 1, a.rounds, mode.name()),
            );
            match run_mode(&a, mode, &drmq, &base_dir) {
                Ok(r) => results.push(r),
                Err(e) => {
                    eprintln!("drmq-loadtest catch-up: {}: {e:#}", mode.name());
                    errors.push(json!({ "mode": mode, "round": round, "error": format!("{e:#}") }));
                }
            }
        }
    }
    let tcp_mb = tcp.as_ref().map(|t| t.bytes_per_s / 1e6);
    let fsync_mb = fsync.as_ref().map(|f| f.bytes_per_s / 1e6);
    print_table(&results, tcp_mb, fsync_mb);
    let summary = summarize(&a.modes, &results, tcp_mb, fsync_mb);
    print_summary(&summary);
    if let Some(path) = &a.json {
        let v = json!({
            "behind_mib": a.behind_mib,
            "prefill_mib": a.prefill_mib,
            "segment_mib": a.segment_mib,
            "snapshot_rate_mb": a.snapshot_rate_mb,
            "catch_up_mib": a.catch_up_mib,
            "probe_rate": a.probe_rate,
            "quiet_s": a.quiet_s,
            "shards": a.shards,
            "rounds": a.rounds,
            "baselines": { "tcp": tcp, "fsync": fsync },
            "summary": summary,
            "modes": results,
            "errors": errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        say(a.quiet, format!("wrote {}", path.display()));
    }
    Ok(errors.is_empty() && results.iter().all(|r| r.ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{PartitionStatus, ReplicaStatus, SnapshotProgress};

    fn s(intended_us: u64, latency_us: u64) -> Sample {
        Sample {
            intended_us,
            latency_us,
        }
    }

    #[test]
    fn windows_take_the_samples_sent_in_them_by_intended_time() {
        // 1..=100 ms latencies sent in [0, 100), 1 s ones in [100, 200).
        let mut samples: Vec<Sample> = (0..100).map(|i| s(i, (i + 1) * 1000)).collect();
        samples.extend((100..200).map(|i| s(i, 1_000_000)));
        let failures = [50, 150, 151];
        let w = window_stats(&samples, &failures, 0, 100);
        assert_eq!((w.acked, w.failed), (100, 1));
        // HDR histograms at 3 significant digits: within 0.1 %.
        let near = |v: u64, want: u64| v.abs_diff(want) * 1000 <= want;
        assert!(near(w.p50_us, 50_000), "{w:?}");
        assert!(near(w.p99_us, 99_000), "{w:?}");
        assert!(near(w.max_us, 100_000), "{w:?}");
        let w = window_stats(&samples, &failures, 100, 200);
        assert_eq!((w.acked, w.failed), (100, 2));
        assert!(near(w.p50_us, 1_000_000));
        // The window's end is excluded; an empty window is zeros.
        assert_eq!(window_stats(&samples, &failures, 99, 100).acked, 1);
        let e = window_stats(&samples, &failures, 500, 600);
        assert_eq!((e.acked, e.p99_us, e.max_us), (0, 0, 0));
        assert_eq!(ratio(30, 10), Some(3.0));
        assert_eq!(ratio(30, 0), None);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn the_timeline_has_every_bucket_from_the_first_sample_to_the_last() {
        let b = TIMELINE_BUCKET_US;
        let samples = [s(b + 1, 10), s(b + 2, 30), s(3 * b, 5_000)];
        let t = timeline(&samples);
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].acked, t[0].max_us), (2, 30));
        assert_eq!(t[0].from_s, b as f64 / 1e6);
        assert_eq!((t[1].acked, t[1].p99_us), (0, 0));
        assert_eq!(t[2].acked, 1);
        assert!(t[2].max_us.abs_diff(5_000) <= 50);
        assert!(timeline(&[]).is_empty());
    }

    fn status_with(
        leader: Option<u64>,
        commit: u64,
        matched: u64,
        snap: bool,
    ) -> ClusterStatusResponse {
        ClusterStatusResponse {
            controller: Some(1),
            brokers: Vec::new(),
            partitions: vec![
                PartitionStatus {
                    topic: "other".into(),
                    partition: 0,
                    leader: Some(3),
                    term: 1,
                    commit_index: 999,
                    log_start_offset: 0,
                    replicas: vec![ReplicaStatus {
                        broker: 2,
                        match_index: 0,
                        lag: 999,
                        snapshot: None,
                    }],
                },
                PartitionStatus {
                    topic: "t".into(),
                    partition: 0,
                    leader,
                    term: 4,
                    commit_index: commit,
                    log_start_offset: 0,
                    replicas: vec![
                        ReplicaStatus {
                            broker: 1,
                            match_index: commit,
                            lag: 0,
                            snapshot: None,
                        },
                        ReplicaStatus {
                            broker: 2,
                            match_index: matched,
                            lag: commit - matched,
                            snapshot: snap.then_some(SnapshotProgress {
                                bytes_sent: 10,
                                bytes_total: 100,
                                bytes_per_sec: 5,
                            }),
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn the_follower_is_observed_in_its_leaders_entry_only() {
        let o = observe(&status_with(Some(1), 50, 20, true), "t", 0, 2).unwrap();
        assert_eq!(
            o,
            Observation {
                leader: 1,
                commit_index: 50,
                match_index: 20,
                lag: 30,
                snapshot: Some((10, 100, 5)),
            }
        );
        assert!(!o.caught_up());
        assert!(observe(&status_with(Some(1), 50, 50, false), "t", 0, 2)
            .unwrap()
            .caught_up());
        // No leader reports it, or it does not list the follower.
        assert!(observe(&status_with(None, 50, 50, false), "t", 0, 2).is_none());
        assert!(observe(&status_with(Some(1), 50, 50, false), "t", 0, 3).is_none());
        assert!(observe(&status_with(Some(1), 50, 50, false), "t", 1, 2).is_none());
    }

    #[test]
    fn a_transfer_window_runs_from_first_sighting_to_the_first_poll_without_it() {
        let mut t = TransferSeen::default();
        t.add(100, None);
        assert_eq!(t.window_us(), None);
        t.add(200, Some((0, 1000, 0)));
        t.add(300, Some((500, 1000, 50)));
        assert_eq!(
            t.window_us(),
            Some((200, 300)),
            "closed at the last sighting"
        );
        t.add(400, None);
        t.add(500, None);
        assert_eq!(t.window_us(), Some((200, 400)));
        assert_eq!((t.bytes_sent_max, t.bytes_total, t.streams), (500, 1000, 1));
        assert_eq!(t.reported_bytes_per_sec_max, 50);
        // A second stream (a restarted transfer) extends the window.
        t.add(600, Some((100, 1000, 10)));
        t.add(700, None);
        assert_eq!(t.window_us(), Some((200, 700)));
        assert_eq!(t.streams, 2);
    }

    #[test]
    fn modes_and_flags_are_checked() {
        assert_eq!(Mode::parse("snapshot"), Ok(Mode::Snapshot));
        assert_eq!(Mode::parse(" replay"), Ok(Mode::Replay));
        assert!(Mode::parse("both").is_err());
        assert!(disk_needed_bytes(1024, 64, 16) > 4 * (1 << 30) + DISK_FLOOR_BYTES);
        assert!(disk_needed_bytes(64, 64, 16) < disk_needed_bytes(1024, 64, 16));
    }
}
