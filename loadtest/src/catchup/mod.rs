//! `drmq-loadtest catch-up`: how long a follower far behind takes to rejoin,
//! by snapshot and by replay, how fast the snapshot moves against the
//! loopback and write+fdatasync baselines of the same run, and what a
//! transfer costs the leader's produce latency.
//!
//! Each mode gets a fresh local cluster (3 brokers, leader rebalancing off:
//! the probes must keep writing to the leader they were placed on), so the
//! two differ in one broker flag only:
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

mod observe;
mod probe;
mod report;
mod round;

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
use observe::*;
use probe::*;
use report::*;
use round::*;

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

fn say(quiet: bool, msg: impl std::fmt::Display) {
    if !quiet {
        eprintln!("drmq-loadtest catch-up: {msg}");
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

    #[test]
    fn modes_and_flags_are_checked() {
        assert_eq!(Mode::parse("snapshot"), Ok(Mode::Snapshot));
        assert_eq!(Mode::parse(" replay"), Ok(Mode::Replay));
        assert!(Mode::parse("both").is_err());
        assert!(disk_needed_bytes(1024, 64, 16) > 4 * (1 << 30) + DISK_FLOOR_BYTES);
        assert!(disk_needed_bytes(64, 64, 16) < disk_needed_bytes(1024, 64, 16));
    }
}
