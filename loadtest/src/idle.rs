//! `drmq-loadtest idle`: what an idle cluster costs as its partitions grow.
//!
//! It starts a local cluster (3 brokers by default, as `run --spawn-broker
//! --nodes 3` does), measures it with no topic (the controller group only:
//! the floor), then for each count in `--partitions` (ascending) adds a topic
//! with the partitions missing to reach that count (RF = `--replication`),
//! waits until every broker names a leader for every partition, lets the
//! creation settle (`--settle-s`), and measures a window of `--window-s`
//! with no client traffic at all. Per broker process it reports:
//! - CPU as % of one core: user + system time of all its threads (shards,
//!   telemetry, io_uring workers, blocking pool) from `/proc/PID/stat` over
//!   the window, and the threads that used most, by name;
//! - resident memory (`VmRSS`);
//! - context switches per second of all its threads (its wake-ups);
//! - peer frames sent per second and elections in the window (from its
//!   telemetry, `GET /api/status`): an idle cluster should hold no
//!   elections.
//!
//! The target (issue 15): 1,000 RF=3 partitions cost < 5 % of a core per
//! broker. It is a benchmark, not a test: the exit status says only whether
//! the run itself worked (leaders found, brokers alive).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use client::Admin;
use serde_json::{json, Value};

use crate::spawn::{self, LocalCluster};

/// How long a step waits for every partition to have a leader on every
/// broker (1,000 groups elect in a few seconds; a loaded 2-core machine
/// needs more).
const LEADERS_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the brokers are asked for leaders while waiting.
const LEADERS_POLL: Duration = Duration::from_millis(500);
/// Segments of the idle topics: 1,000 partitions x 3 replicas preallocate
/// one active segment each, so 1 MiB keeps the cluster at ~3 GB of disk.
const IDLE_SEGMENT_BYTES: u64 = 1 << 20;
/// Threads listed per broker (by CPU in the window).
const TOP_THREADS: usize = 4;
/// Most partitions one step may add (the wire allows more; the disk above
/// and the time to create them bound what makes sense here).
const PARTITIONS_MAX: u32 = 10_000;

#[derive(Args, Clone)]
pub struct IdleArgs {
    /// Partition counts to measure, ascending (after the empty cluster).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    partitions: Vec<u32>,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    replication: u16,
    /// Brokers to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    nodes: u16,
    /// Shards per broker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 20.0)]
    window_s: f64,
    /// Seconds between the last leader appearing and the window.
    #[arg(long, default_value_t = 5.0)]
    settle_s: f64,
    /// The `drmq` binary (default: $DRMQ_BIN, else the one next to this
    /// executable).
    #[arg(long)]
    drmq: Option<PathBuf>,
    /// Data directory (kept afterwards); default a fresh temporary one,
    /// removed afterwards.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Append the brokers' log (stderr) to this file.
    #[arg(long)]
    broker_log: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn validate(a: &IdleArgs) -> Result<(), String> {
    crate::positive("--window-s", a.window_s)?;
    crate::non_negative("--settle-s", a.settle_s)?;
    if a.replication > a.nodes {
        return Err(format!(
            "--replication {} needs at least as many --nodes ({})",
            a.replication, a.nodes
        ));
    }
    if a.partitions.is_empty() || !a.partitions.windows(2).all(|w| w[0] < w[1]) {
        return Err("--partitions must be ascending counts".into());
    }
    if a.partitions[0] == 0 || a.partitions[a.partitions.len() - 1] > PARTITIONS_MAX {
        return Err(format!("--partitions must be in 1..={PARTITIONS_MAX}"));
    }
    Ok(())
}

/// One thread's or process's CPU time in clock ticks, from a `stat` file:
/// utime + stime (fields 14 and 15, counted after the `(comm)` field, which
/// may hold spaces).
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The `(comm)` of a `stat` file.
fn stat_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// `Name:   value kB` lines of a `status` file.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What one reading of a process shows.
#[derive(Default, Clone)]
struct ProcReading {
    ticks: u64,
    /// CPU ticks by thread name (threads of one name summed).
    threads: BTreeMap<String, u64>,
    ctx_switches: u64,
    rss_kib: u64,
}

fn read_proc(pid: u32) -> Result<ProcReading> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(base.join("stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
    let mut r = ProcReading {
        ticks: stat_ticks(&stat).context("parsing /proc/PID/stat")?,
        rss_kib: status_field(&status, "VmRSS").unwrap_or(0),
        ..Default::default()
    };
    // Threads come and go (the blocking pool): a vanished one is skipped.
    if let Ok(tasks) = std::fs::read_dir(base.join("task")) {
        for t in tasks.flatten() {
            let (Ok(stat), Ok(status)) = (
                std::fs::read_to_string(t.path().join("stat")),
                std::fs::read_to_string(t.path().join("status")),
            ) else {
                continue;
            };
            if let (Some(comm), Some(ticks)) = (stat_comm(&stat), stat_ticks(&stat)) {
                *r.threads.entry(thread_kind(comm)).or_insert(0) += ticks;
            }
            r.ctx_switches += status_field(&status, "voluntary_ctxt_switches").unwrap_or(0)
                + status_field(&status, "nonvoluntary_ctxt_switches").unwrap_or(0);
        }
    }
    Ok(r)
}

/// Thread names with their numbers taken off (`iou-wrk-123` → `iou-wrk`),
/// so threads of one kind add up; shards keep theirs (`shard-0`).
fn thread_kind(comm: &str) -> String {
    if comm.starts_with("shard-") {
        return comm.to_owned();
    }
    comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_')
        .to_owned()
}

/// CPU seconds (user + system, all threads) a process used so far; `None`
/// once it is gone.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_ticks(&stat)? as f64 / clock_ticks_per_s())
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Telemetry counters of one broker, summed over its shards.
fn telemetry(http: SocketAddr) -> Option<(u64, u64)> {
    let v = spawn::api_status(http)?;
    let mut frames = 0;
    let mut elections = 0;
    for s in v["shards"].as_array()? {
        frames += s["peer_frames_sent"].as_u64().unwrap_or(0);
        elections += s["elections"].as_u64().unwrap_or(0);
    }
    Some((frames, elections))
}

/// One broker's figures over a window.
struct BrokerFigures {
    broker: usize,
    cpu_pct: f64,
    rss_mib: f64,
    ctx_switches_per_s: f64,
    peer_frames_per_s: Option<f64>,
    elections: Option<u64>,
    leaders: usize,
    threads: Vec<(String, f64)>,
}

/// Measures every broker over `window` (no traffic from here meanwhile
/// but the two telemetry readings).
fn measure(
    cluster: &LocalCluster,
    window: Duration,
    leaders: &BTreeMap<u64, usize>,
) -> Result<Vec<BrokerFigures>> {
    let hz = clock_ticks_per_s();
    let pids: Vec<u32> = (0..cluster.nodes())
        .map(|i| {
            cluster
                .pid(i)
                .with_context(|| format!("broker {} is not running", i + 1))
        })
        .collect::<Result<_>>()?;
    let tel0: Vec<_> = cluster.https.iter().map(|h| telemetry(*h)).collect();
    let t0 = Instant::now();
    let before: Vec<ProcReading> = pids.iter().map(|&p| read_proc(p)).collect::<Result<_>>()?;
    std::thread::sleep(window);
    let after: Vec<ProcReading> = pids.iter().map(|&p| read_proc(p)).collect::<Result<_>>()?;
    let wall_s = t0.elapsed().as_secs_f64();
    let tel1: Vec<_> = cluster.https.iter().map(|h| telemetry(*h)).collect();
    let mut out = Vec::new();
    for i in 0..pids.len() {
        let (b, a) = (&before[i], &after[i]);
        let pct = |ticks: u64| ticks as f64 / hz / wall_s * 100.0;
        let mut threads: Vec<(String, f64)> = a
            .threads
            .iter()
            .map(|(name, &t)| {
                let old = b.threads.get(name).copied().unwrap_or(0);
                (name.clone(), pct(t.saturating_sub(old)))
            })
            .filter(|(_, p)| *p > 0.0)
            .collect();
        threads.sort_by(|x, y| y.1.total_cmp(&x.1));
        threads.truncate(TOP_THREADS);
        let tel = tel0[i].zip(tel1[i]);
        out.push(BrokerFigures {
            broker: i + 1,
            cpu_pct: pct(a.ticks.saturating_sub(b.ticks)),
            rss_mib: a.rss_kib as f64 / 1024.0,
            ctx_switches_per_s: a.ctx_switches.saturating_sub(b.ctx_switches) as f64 / wall_s,
            // Samples are taken once a second: the window is off by up to
            // a second at each end.
            peer_frames_per_s: tel.map(|((f0, _), (f1, _))| f1.saturating_sub(f0) as f64 / wall_s),
            elections: tel.map(|((_, e0), (_, e1))| e1.saturating_sub(e0)),
            leaders: leaders.get(&(i as u64 + 1)).copied().unwrap_or(0),
            threads,
        });
    }
    Ok(out)
}

/// Waits until every broker names a leader for every partition of
/// `topics`; returns the leaders per broker id.
fn wait_leaders(brokers: &[SocketAddr], topics: &[String]) -> Result<BTreeMap<u64, usize>> {
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    // Bounded by the deadline.
    loop {
        let mut missing = 0usize;
        let mut leaders = BTreeMap::new();
        for (i, b) in brokers.iter().enumerate() {
            let admin = Admin::new(vec![*b], Duration::from_secs(5));
            match admin.metadata(Some(topics.to_vec())) {
                Ok(m) => {
                    for t in &m.topics {
                        for p in &t.partitions {
                            match p.leader {
                                None => missing += 1,
                                // Counted from the first broker's view.
                                Some(l) if i == 0 => *leaders.entry(l).or_insert(0) += 1,
                                Some(_) => {}
                            }
                        }
                        if t.partitions.is_empty() {
                            missing += 1;
                        }
                    }
                }
                Err(_) => missing += 1,
            }
        }
        if missing == 0 {
            return Ok(leaders);
        }
        if Instant::now() >= deadline {
            bail!("{missing} partition(s) still without a leader after {LEADERS_TIMEOUT:?}");
        }
        std::thread::sleep(LEADERS_POLL);
    }
}

fn print_step(partitions: u32, figures: &[BrokerFigures]) {
    for f in figures {
        let threads: Vec<String> = f
            .threads
            .iter()
            .map(|(n, p)| format!("{n} {p:.2}"))
            .collect();
        println!(
            "{partitions:>10} {:>6} {:>8.2} {:>8.1} {:>10.0} {:>11} {:>7} {:>7}  {}",
            f.broker,
            f.cpu_pct,
            f.rss_mib,
            f.ctx_switches_per_s,
            f.peer_frames_per_s
                .map_or("-".into(), |v| format!("{v:.0}")),
            f.elections.map_or("-".into(), |e| e.to_string()),
            f.leaders,
            threads.join(", "),
        );
    }
}

fn step_json(partitions: u32, figures: &[BrokerFigures]) -> Value {
    json!({
        "partitions": partitions,
        "brokers": figures.iter().map(|f| json!({
            "broker": f.broker,
            "cpu_pct_of_core": f.cpu_pct,
            "rss_mib": f.rss_mib,
            "ctx_switches_per_s": f.ctx_switches_per_s,
            "peer_frames_sent_per_s": f.peer_frames_per_s,
            "elections": f.elections,
            "leaders": f.leaders,
            "threads_cpu_pct": f.threads.iter().map(|(n, p)| json!({"thread": n, "cpu_pct": p})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "cpu_pct_of_core_max": figures.iter().map(|f| f.cpu_pct).fold(0.0, f64::max),
    })
}

pub fn cmd(a: IdleArgs) -> Result<bool> {
    let cluster = spawn::start_local(
        a.drmq.as_deref(),
        a.data_dir.as_deref(),
        a.shards,
        a.nodes,
        a.broker_log.as_deref(),
        // The brokers' defaults, leader rebalancing included: its rounds
        // are part of what an idle broker costs.
        &[],
    )?;
    eprintln!(
        "drmq-loadtest: started {} broker(s) (pids {:?}) with data in {}",
        cluster.nodes(),
        (0..cluster.nodes())
            .filter_map(|i| cluster.pid(i))
            .collect::<Vec<_>>(),
        cluster.data_dir.display()
    );
    let result = steps(&a, &cluster);
    drop(cluster);
    let (steps, ok) = result?;
    if let Some(path) = &a.json {
        crate::write_json(
            path,
            &json!({
                "idle": {
                    "nodes": a.nodes,
                    "shards": a.shards,
                    "replication": a.replication,
                    "window_s": a.window_s,
                    "steps": steps,
                }
            }),
        )?;
    }
    Ok(ok)
}

fn steps(a: &IdleArgs, cluster: &LocalCluster) -> Result<(Vec<Value>, bool)> {
    let window = Duration::from_secs_f64(a.window_s);
    let settle = Duration::from_secs_f64(a.settle_s);
    let brokers = cluster.listens.clone();
    println!(
        "idle cluster: {} broker(s), {} shard(s) each, RF={}, {:.0} s windows; CPU in % of one core",
        a.nodes, a.shards, a.replication, a.window_s
    );
    println!(
        "{:>10} {:>6} {:>8} {:>8} {:>10} {:>11} {:>7} {:>7}  threads (% of a core)",
        "partitions", "broker", "cpu %", "RSS MiB", "ctxsw/s", "frames/s", "elect", "leads"
    );
    // The floor: the controller group and the shards' own timers.
    wait_leaders(&brokers, &[])?;
    std::thread::sleep(settle);
    let floor = measure(cluster, window, &BTreeMap::new())?;
    print_step(0, &floor);
    let mut out = vec![step_json(0, &floor)];
    let mut topics: Vec<String> = Vec::new();
    let mut have = 0u32;
    let mut worst: f64 = 0.0;
    for &count in &a.partitions {
        let topic = format!("idle-{count}");
        spawn::ensure_topic(
            &brokers,
            &topic,
            count - have,
            a.replication,
            Some(IDLE_SEGMENT_BYTES),
        )?;
        topics.push(topic);
        have = count;
        let t = Instant::now();
        let leaders = wait_leaders(&brokers, &topics)?;
        eprintln!(
            "drmq-loadtest: {count} partitions have leaders everywhere after {:.1} s",
            t.elapsed().as_secs_f64()
        );
        std::thread::sleep(settle);
        let figures = measure(cluster, window, &leaders)?;
        print_step(count, &figures);
        worst = figures.iter().map(|f| f.cpu_pct).fold(worst, f64::max);
        out.push(step_json(count, &figures));
    }
    println!(
        "most CPU of one broker at {} partitions: {worst:.2} % of a core (target < 5 %)",
        have
    );
    Ok((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        // Fields: pid (comm) state ppid pgrp session tty tpgid flags minflt
        // cminflt majflt cmajflt utime stime ...
        let stat = "4242 (drmq (shard) 0) S 1 2 3 0 -1 4194560 10 0 0 0 1234 567 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_comm(stat), Some("drmq (shard) 0"));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_and_thread_kinds_are_parsed() {
        let status = "Name:\tdrmq\nVmRSS:\t  20480 kB\nvoluntary_ctxt_switches:\t17\n";
        assert_eq!(status_field(status, "VmRSS"), Some(20480));
        assert_eq!(status_field(status, "voluntary_ctxt_switches"), Some(17));
        assert_eq!(status_field(status, "VmSwap"), None);
        assert_eq!(thread_kind("iou-wrk-1234"), "iou-wrk");
        assert_eq!(thread_kind("shard-1"), "shard-1");
        assert_eq!(thread_kind("drmq"), "drmq");
    }
}
