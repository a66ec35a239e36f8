//! `drmq-loadtest`: the DRMQ load-test harness.
//!
//! # Layout
//! | module       | what it holds                                                      |
//! |--------------|--------------------------------------------------------------------|
//! | `run`        | one run: producer/consumer threads, id checks, histograms, progress |
//! | `report`     | the final table, `--json`, HDR histogram logs                      |
//! | `baseline`   | raw loopback TCP and write+fdatasync loops at the same batch size  |
//! | `spawn`      | a local single broker for `--spawn-broker` and `bench`             |
//! | `dashboards` | `--dashboards N`: WebSocket clients reading the brokers' `/ws`     |
//! | `catchup`    | `catch-up`: a follower far behind rejoins by snapshot / by replay   |
//! | `idle`       | `idle`: CPU, memory and wake-ups of an idle cluster as partitions grow |
//! | `partitions` | `bench --compare-partitions`: throughput at two partition counts     |
//!
//! `drmq-loadtest run` drives a broker (given by `--brokers`, or started by
//! `--spawn-broker`); `drmq-loadtest bench` runs the fixed suite on a broker
//! it starts itself. Bad flags are one line on stderr and exit status 2.

mod baseline;
mod catchup;
mod dashboards;
mod fault;
mod group;
mod idle;
mod partitions;
mod plot;
mod report;
mod run;
mod spawn;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use wire::Acks;

use crate::fault::FaultSpec;
use crate::report::Report;
use crate::run::{SizeSpec, Stop, Workload};
use crate::spawn::LocalCluster;
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(name = "drmq-loadtest", version, about = "Load test for DRMQ brokers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One workload against a broker (or one it starts with --spawn-broker).
    Run(Box<RunArgs>),
    /// The fixed suite on brokers it starts: RF=1 on one broker and RF=3 on
    /// three; 100 B and 1 KiB messages; 1 and 16 partitions; maximum rate,
    /// then 50 % of it for latency; RF=3 with a follower stopped and with the
    /// leader killed; optionally a latency-versus-throughput plot.
    Bench(BenchArgs),
    /// Catch-up of a follower far behind, by snapshot and by replay, on
    /// local 3-broker clusters it starts: rejoin time, transfer MB/s against
    /// the loopback and write+fdatasync baselines, and produce latency to
    /// the leader's shard during the transfer against without.
    CatchUp(catchup::CatchUpArgs),
    /// The cost of an idle cluster as partitions grow: CPU (% of a core),
    /// memory, wake-ups and peer frames per broker, with no topic and then
    /// with each --partitions count, on a local cluster it starts.
    Idle(idle::IdleArgs),
}

#[derive(Args, Clone)]
struct BrokerArgs {
    /// Start local brokers for the run (see --nodes), stop them and remove
    /// their data after.
    #[arg(long)]
    spawn_broker: bool,
    /// Brokers --spawn-broker starts: a local cluster (replication up to
    /// this many).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=7))]
    nodes: u16,
    /// The `drmq` binary for --spawn-broker (default: $DRMQ_BIN, else the
    /// one next to this executable; without one --spawn-broker fails).
    #[arg(long)]
    drmq: Option<PathBuf>,
    /// Shards of the spawned broker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    /// Data directory of the spawned broker (kept afterwards); default a
    /// fresh temporary directory, removed afterwards.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Append the spawned brokers' log (stderr) to this file.
    #[arg(long)]
    broker_log: Option<PathBuf>,
    /// One more `drmq broker` argument for every spawned broker (repeat
    /// for more), e.g. `--broker-arg=--leader-balance-interval-ms=0`.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    broker_args: Vec<String>,
    /// Where the fdatasync baseline writes (default: the spawned broker's data
    /// directory, else the current directory).
    #[arg(long)]
    baseline_dir: Option<PathBuf>,
    /// Seconds per baseline measurement.
    #[arg(long, default_value_t = 1.0)]
    baseline_s: f64,
    /// Skip the baselines.
    #[arg(long)]
    no_baselines: bool,
    /// The brokers' telemetry addresses (`--http` of `drmq broker`),
    /// HOST:PORT[,HOST:PORT...], to report their counters and for
    /// --dashboards; known already with --spawn-broker.
    #[arg(long, value_delimiter = ',')]
    http: Vec<SocketAddr>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Brokers to bootstrap from, HOST:PORT[,HOST:PORT...].
    // The conflict is declared here: `bench` flattens BrokerArgs too and
    // has no --brokers (clap's debug assertions reject a dangling name).
    #[arg(
        long,
        required_unless_present = "spawn_broker",
        conflicts_with = "spawn_broker"
    )]
    brokers: Option<String>,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Topic (created if missing).
    #[arg(long, default_value = "loadtest")]
    topic: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    partitions: u32,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=7))]
    replication: u16,
    /// Segment size of a created topic.
    #[arg(long)]
    segment_bytes: Option<u64>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    producers: u16,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    consumers: u16,
    /// Value size: BYTES, or MIN-MAX for a uniform distribution (at least 16).
    #[arg(long, default_value = "1024", value_parser = SizeSpec::parse)]
    message_bytes: SizeSpec,
    /// Keyed messages, keys drawn from N distinct values (unkeyed if absent).
    #[arg(long)]
    keys: Option<u64>,
    /// quorum (the default) or leader.
    #[arg(long, default_value = "quorum", value_parser = parse_acks)]
    acks: Acks,
    /// Producer batch size per partition.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(64..=3 * 1024 * 1024))]
    batch_bytes: u64,
    /// How long a batch waits to fill, in microseconds.
    #[arg(long, default_value_t = 1000)]
    linger_us: u64,
    /// Produce requests in flight per producer (the closed-loop window).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    in_flight: u64,
    /// Batch bytes in flight per producer (the client's default if absent).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    in_flight_bytes: Option<u64>,
    /// Target rate in msgs/s over all producers (open loop); maximum rate if
    /// absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured after warm-up.
    #[arg(long, conflicts_with = "messages")]
    duration_s: Option<f64>,
    /// Messages in all (warm-up included) instead of a duration.
    #[arg(long)]
    messages: Option<u64>,
    /// Seconds at the start excluded from the results.
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A scripted fault on the spawned brokers, at SECS from the start
    /// (warm-up included): kill-leader@SECS[:RESTART_AFTER_SECS[:TIMES]]
    /// (kill -9 of partition 0's leader, restarted after 5 s by default;
    /// TIMES kills in all, each RESTART_AFTER_SECS after the last restart) or
    /// pause-follower@SECS:FOR_SECS (SIGSTOP of one of its followers).
    #[arg(long, value_parser = FaultSpec::parse, requires = "spawn_broker")]
    fault: Option<FaultSpec>,
    /// Write HDR histogram logs (ack, e2e, send delay) into this directory.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Open N dashboards (WebSocket clients reading and parsing every frame
    /// of `ws://HTTP/ws`) on each broker during the run; needs the brokers'
    /// --http addresses (known with --spawn-broker).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=dashboards::CLIENTS_PER_BROKER_MAX as i64))]
    dashboards: u16,
    /// The consumers are members of this consumer group (its offsets are
    /// set to the log ends first; it must have no members); reports the
    /// time of each rebalance.
    #[arg(long)]
    group: Option<String>,
    /// With --group: during the window one member leaves and one crashes
    /// (stops heartbeating), each replaced by a new member; every rebalance
    /// is timed (needs --consumers 2 or more).
    #[arg(long, requires = "group")]
    group_churn: bool,
    /// With --group: the members join first but read nothing until the
    /// producers are done; reports the group's read rate on that backlog.
    #[arg(long, requires = "group", conflicts_with = "group_churn")]
    group_after_produce: bool,
    /// With --group: the members' lease.
    #[arg(long, default_value_t = 3000, requires = "group", value_parser = clap::value_parser!(u64).range(500..=300_000))]
    lease_ms: u64,
    /// With --group: the members' heartbeat interval (default: a quarter of
    /// the lease). A rebalance waits for the members' next heartbeats.
    #[arg(long, requires = "group", value_parser = clap::value_parser!(u64).range(10..=300_000))]
    heartbeat_ms: Option<u64>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct BenchArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Seconds measured per case, after warm-up.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    #[arg(long, default_value_t = 64 * 1024)]
    batch_bytes: u64,
    /// Write every case's report as a JSON array here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Which parts to run: replication 1 (one broker) and/or 3 (three).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    rf: Vec<u16>,
    /// Also run 1 KiB at 10-90 % of the maximum rate and draw latency
    /// against throughput into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Instead of the suite: the cost of N open dashboards per broker. Runs
    /// the maximum-rate case (1 KiB, 1 partition) without and with them,
    /// interleaved (--compare-rounds pairs), on the same brokers and topic,
    /// and prints the throughput ratio.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=dashboards::CLIENTS_PER_BROKER_MAX as i64))]
    compare_dashboards: Option<u16>,
    /// Instead of the suite: throughput at two partition counts, A,B (e.g.
    /// 16,256). Runs the maximum-rate case (1 KiB, RF=3 on three brokers)
    /// on A and on B partitions, interleaved (--compare-rounds pairs), on
    /// the same brokers, and prints B's throughput as a fraction of A's.
    #[arg(long, value_delimiter = ',', conflicts_with = "compare_dashboards")]
    compare_partitions: Option<Vec<u32>>,
    /// Pairs of runs for --compare-dashboards (without, with) and
    /// --compare-partitions (A, B).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=20))]
    compare_rounds: u16,
    #[arg(long)]
    quiet: bool,
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "quorum" | "all" => Ok(Acks::Quorum),
        "leader" | "1" => Ok(Acks::Leader),
        _ => Err(format!("`{s}`: expected quorum or leader")),
    }
}

/// A flag problem: one line on stderr, exit status 2.
fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("drmq-loadtest: error: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message, without its usage block, on one line.
            let text = e.render().to_string();
            let line = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let line = line.trim_start_matches("error: ");
            return usage_error(line);
        }
    };
    let result = match cli.cmd {
        Cmd::Run(args) => match validate_run(&args) {
            Err(msg) => return usage_error(msg),
            Ok(()) => cmd_run(*args),
        },
        Cmd::Bench(args) => match validate_broker_args(&args.broker)
            .and_then(|()| positive("--duration-s", args.duration_s))
            .and_then(|()| non_negative("--warmup-s", args.warmup_s))
        {
            Err(msg) => return usage_error(msg),
            Ok(()) => cmd_bench(args),
        },
        Cmd::CatchUp(args) => match catchup::validate(&args) {
            Err(msg) => return usage_error(msg),
            Ok(()) => catchup::cmd(args),
        },
        Cmd::Idle(args) => match idle::validate(&args) {
            Err(msg) => return usage_error(msg),
            Ok(()) => idle::cmd(args),
        },
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("drmq-loadtest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn positive(flag: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{flag} must be a positive number, not {v}"))
    }
}

fn non_negative(flag: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(format!("{flag} must be zero or more, not {v}"))
    }
}

fn validate_broker_args(b: &BrokerArgs) -> Result<(), String> {
    positive("--baseline-s", b.baseline_s)
}

fn validate_run(a: &RunArgs) -> Result<(), String> {
    validate_broker_args(&a.broker)?;
    if a.dashboards > 0 && !a.broker.spawn_broker && a.broker.http.is_empty() {
        return Err("--dashboards needs the brokers' --http addresses (or --spawn-broker)".into());
    }
    wire::validate_topic_name(&a.topic).map_err(|e| format!("--topic: {e}"))?;
    if let Some(r) = a.rate {
        positive("--rate", r)?;
    }
    if let Some(d) = a.duration_s {
        positive("--duration-s", d)?;
    }
    non_negative("--warmup-s", a.warmup_s)?;
    if a.messages == Some(0) {
        return Err("--messages must be at least 1".into());
    }
    if let Some(n) = a.messages {
        if n / u64::from(a.producers) >= run::MESSAGES_PER_PRODUCER_MAX {
            return Err(format!(
                "--messages {n}: at most {} per producer",
                run::MESSAGES_PER_PRODUCER_MAX
            ));
        }
    }
    if a.keys == Some(0) {
        return Err("--keys must be at least 1".into());
    }
    let (_, max) = a.message_bytes.bounds();
    if max as u64 + 64 > a.batch_bytes {
        return Err(format!(
            "--batch-bytes {} cannot hold a {max}-byte message",
            a.batch_bytes
        ));
    }
    if a.linger_us > 10_000_000 {
        return Err("--linger-us must be at most 10 s".into());
    }
    Ok(())
}

/// Local brokers shared with a fault thread.
type Shared = Arc<Mutex<LocalCluster>>;

/// The brokers of a run, with the local ones kept alive while it runs, and
/// the telemetry addresses to read counters from.
fn brokers_for(
    brokers: Option<&str>,
    b: &BrokerArgs,
) -> Result<(Vec<SocketAddr>, Option<Shared>, Vec<SocketAddr>)> {
    if b.spawn_broker {
        let local = spawn::start_local(
            b.drmq.as_deref(),
            b.data_dir.as_deref(),
            b.shards,
            b.nodes,
            b.broker_log.as_deref(),
            &b.broker_args,
        )?;
        eprintln!(
            "drmq-loadtest: started {} broker(s) (pids {:?}) on {:?} with data in {}",
            local.nodes(),
            (0..local.nodes())
                .filter_map(|i| local.pid(i))
                .collect::<Vec<_>>(),
            local.listens,
            local.data_dir.display()
        );
        let https = if b.http.is_empty() {
            local.https.clone()
        } else {
            b.http.clone()
        };
        Ok((
            local.listens.clone(),
            Some(Arc::new(Mutex::new(local))),
            https,
        ))
    } else {
        let spec = brokers.context("--brokers or --spawn-broker is needed")?;
        Ok((client::parse_brokers(spec)?, None, b.http.clone()))
    }
}

fn local_data_dir(local: Option<&Shared>) -> Option<PathBuf> {
    local.and_then(|l| l.lock().ok().map(|l| l.data_dir.clone()))
}

struct Baselines {
    tcp: Option<baseline::TcpBaseline>,
    fsync: Option<baseline::FsyncBaseline>,
}

fn measure_baselines(b: &BrokerArgs, local_dir: Option<PathBuf>, batch_bytes: usize) -> Baselines {
    if b.no_baselines {
        return Baselines {
            tcp: None,
            fsync: None,
        };
    }
    let dur = Duration::from_secs_f64(b.baseline_s);
    let dir: PathBuf = b
        .baseline_dir
        .clone()
        .or(local_dir)
        .unwrap_or_else(|| PathBuf::from("."));
    let tcp = baseline::tcp(batch_bytes, dur)
        .map_err(|e| eprintln!("drmq-loadtest: tcp baseline failed: {e:#}"))
        .ok();
    let fsync = baseline::fsync(&dir, batch_bytes, dur)
        .map_err(|e| {
            eprintln!(
                "drmq-loadtest: fsync baseline failed in {}: {e:#}",
                dir.display()
            )
        })
        .ok();
    Baselines { tcp, fsync }
}

fn cmd_run(a: RunArgs) -> Result<bool> {
    let (brokers, local, https) = brokers_for(a.brokers.as_deref(), &a.broker)?;
    spawn::ensure_topic(
        &brokers,
        &a.topic,
        a.partitions,
        a.replication,
        a.segment_bytes,
    )?;
    let stop = match (a.duration_s, a.messages) {
        (_, Some(n)) => Stop::Messages(n),
        (Some(d), None) => Stop::Duration(Duration::from_secs_f64(d)),
        (None, None) => Stop::Duration(Duration::from_secs(10)),
    };
    let w = Workload {
        brokers,
        topic: a.topic.clone(),
        producers: usize::from(a.producers),
        consumers: usize::from(a.consumers),
        size: a.message_bytes,
        keys: a.keys,
        acks: a.acks,
        batch_bytes: a.batch_bytes as usize,
        linger: Duration::from_micros(a.linger_us),
        in_flight: a.in_flight as usize,
        in_flight_bytes: a
            .in_flight_bytes
            .map_or(client::IN_FLIGHT_BYTES_DEFAULT, |b| b as usize),
        rate: a.rate,
        stop,
        warmup: Duration::from_secs_f64(a.warmup_s),
        drain_timeout: run::DRAIN_TIMEOUT_DEFAULT,
        progress: !a.quiet,
        https,
        dashboards: usize::from(a.dashboards),
        started: None,
        group: match &a.group {
            Some(g) => {
                wire::validate_group_name(g)?;
                if a.group_churn && a.consumers < 2 {
                    anyhow::bail!("--group-churn needs --consumers 2 or more");
                }
                Some(group::GroupPlan {
                    group: g.clone(),
                    churn: a.group_churn,
                    after_produce: a.group_after_produce,
                    lease: Duration::from_millis(a.lease_ms),
                    heartbeat: a.heartbeat_ms.map(Duration::from_millis),
                })
            }
            None => None,
        },
    };
    let (w, outcome, fault) = run_with_fault(w, a.fault, local.as_ref())?;
    let base = measure_baselines(&a.broker, local_data_dir(local.as_ref()), w.batch_bytes);
    let name = a.topic.clone();
    let report = Report {
        name: name.clone(),
        workload: &w,
        outcome: &outcome,
        tcp: base.tcp.as_ref(),
        fsync: base.fsync.as_ref(),
    };
    let j = print_report(&report, fault.as_ref());
    if let Some(path) = &a.json {
        write_json(path, &j)?;
    }
    if let Some(dir) = &a.hdr_log {
        report::write_hdr_logs(dir, &name, &outcome)?;
    }
    drop(local);
    Ok(report.ok() && fault.as_ref().is_none_or(|f| f.ok()))
}

/// Runs `w`, with `fault` applied to the `local` brokers when both are
/// given (timed from the run's start).
fn run_with_fault(
    mut w: Workload,
    fault: Option<FaultSpec>,
    local: Option<&Shared>,
) -> Result<(Workload, run::Outcome, Option<fault::FaultReport>)> {
    let thread = match (fault, local) {
        (Some(spec), Some(l)) => Some((spec, fault::spawn(spec, l.clone(), w.topic.clone()))),
        _ => None,
    };
    w.started = thread.as_ref().map(|(_, f)| f.start.clone());
    let outcome = run::run(&w);
    w.started = None;
    if let Some((_, f)) = &thread {
        f.run_over.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let outcome = outcome?;
    let fault = match thread {
        Some((spec, f)) => {
            let log = f
                .thread
                .join()
                .map_err(|_| anyhow::anyhow!("the fault thread panicked"))?;
            Some(fault::analyse(spec, log, &outcome))
        }
        None => None,
    };
    Ok((w, outcome, fault))
}

/// Prints a run's report (and its fault's) and returns them as JSON.
fn print_report(report: &Report, fault: Option<&fault::FaultReport>) -> serde_json::Value {
    report.print();
    let mut j = report.to_json();
    if let Some(f) = fault {
        f.print(report.outcome);
        j["fault"] = f.to_json(report.outcome);
    }
    j
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Segments of the bench topics: 32 MiB (preallocated), so the ~80
/// partitions of a suite do not reserve 10 GB per broker.
const BENCH_SEGMENT_BYTES: Option<u64> = Some(32 << 20);

/// How long a bench case waits for the replicas to catch up first.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// One bench case's results.
struct Case {
    json: serde_json::Value,
    line: String,
    msgs_per_s: f64,
    ack_p50_us: u64,
    ack_p99_us: u64,
    ok: bool,
}

/// Creates a bench topic; a failure names the brokers whose disk is full.
fn bench_topic(
    brokers: &[SocketAddr],
    https: &[SocketAddr],
    topic: &str,
    partitions: u32,
    rf: u16,
) -> Result<()> {
    bench_topic_with(brokers, https, topic, partitions, rf, BENCH_SEGMENT_BYTES)
}

/// [`bench_topic`] with its segment size.
fn bench_topic_with(
    brokers: &[SocketAddr],
    https: &[SocketAddr],
    topic: &str,
    partitions: u32,
    rf: u16,
    segment_bytes: Option<u64>,
) -> Result<()> {
    spawn::ensure_topic(brokers, topic, partitions, rf, segment_bytes).map_err(|e| {
        let full = spawn::disks_full(https);
        if full.is_empty() {
            e
        } else {
            anyhow::anyhow!("{e:#} ({})", full.join("; "))
        }
    })
}

/// Runs one bench case (with an optional fault) and formats its summary line.
#[allow(clippy::too_many_arguments)]
fn bench_case(
    a: &BenchArgs,
    brokers: &[SocketAddr],
    https: &[SocketAddr],
    local: Option<&Shared>,
    base: &Baselines,
    topic: &str,
    size: usize,
    rate: Option<f64>,
    fault: Option<FaultSpec>,
    dashboards: usize,
) -> Result<Case> {
    let w = Workload {
        brokers: brokers.to_vec(),
        topic: topic.to_owned(),
        producers: 1,
        consumers: 1,
        size: SizeSpec::Fixed(size),
        keys: None,
        acks: Acks::Quorum,
        batch_bytes: a.batch_bytes as usize,
        linger: Duration::from_millis(1),
        in_flight: 64,
        // The suite measures the maximum: a window of 64 full batches.
        in_flight_bytes: 64 * a.batch_bytes as usize,
        rate,
        stop: Stop::Duration(Duration::from_secs_f64(a.duration_s)),
        warmup: Duration::from_secs_f64(a.warmup_s),
        drain_timeout: run::DRAIN_TIMEOUT_DEFAULT,
        progress: !a.quiet,
        https: https.to_vec(),
        dashboards,
        started: None,
        group: None,
    };
    if let Some(l) = local {
        let caught_up = l.lock().map(|c| c.wait_caught_up(CATCH_UP_TIMEOUT));
        if !matches!(caught_up, Ok(true)) {
            eprintln!("drmq-loadtest: replicas still catching up after {CATCH_UP_TIMEOUT:?}; running {topic} anyway");
            for line in spawn::disks_full(https) {
                eprintln!("drmq-loadtest: {line}");
            }
        }
    }
    let (w, outcome, fault) = run_with_fault(w, fault, local)?;
    let report = Report {
        name: topic.to_owned(),
        workload: &w,
        outcome: &outcome,
        tcp: base.tcp.as_ref(),
        fsync: base.fsync.as_ref(),
    };
    let json = print_report(&report, fault.as_ref());
    if let Some(dir) = &a.hdr_log {
        report::write_hdr_logs(dir, topic, &outcome)?;
    }
    let elections = outcome
        .broker_counters
        .as_ref()
        .and_then(|c| c.get("elections").copied());
    let line = format!(
        "{topic:<28} {:>10.0} {:>7.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>5}",
        report.msgs_per_s(),
        report.bytes_per_s() / 1e6,
        outcome.ack_us.value_at_quantile(0.5),
        outcome.ack_us.value_at_quantile(0.99),
        outcome.ack_us.value_at_quantile(0.999),
        outcome.e2e_us.value_at_quantile(0.5),
        outcome.e2e_us.value_at_quantile(0.99),
        base.tcp.as_ref().map_or("-".into(), |t| format!(
            "{:.3}",
            report.bytes_per_s() / t.bytes_per_s
        )),
        base.fsync.as_ref().map_or("-".into(), |f| format!(
            "{:.2}",
            report.bytes_per_s() / f.bytes_per_s
        )),
        elections.map_or("-".into(), |e| e.to_string()),
    );
    // The case's data goes with it: the suite needs the disk of one case.
    spawn::delete_topic(brokers, local_data_dir(local).as_deref(), topic)?;
    Ok(Case {
        json,
        line,
        msgs_per_s: report.msgs_per_s(),
        ack_p50_us: outcome.ack_us.value_at_quantile(0.5),
        ack_p99_us: outcome.ack_us.value_at_quantile(0.99),
        ok: report.ok() && fault.as_ref().is_none_or(|f| f.ok()),
    })
}

fn cmd_bench(a: BenchArgs) -> Result<bool> {
    if let Some(n) = a.compare_dashboards {
        return compare_dashboards(&a, usize::from(n));
    }
    if let Some(counts) = &a.compare_partitions {
        return partitions::compare_partitions(&a, counts);
    }
    let mut cases: Vec<Case> = Vec::new();
    let mut series: Vec<plot::Series> = Vec::new();
    for (nodes, rf) in [(1u16, 1u16), (3, 3)] {
        if !a.rf.contains(&rf) {
            continue;
        }
        let mut b = a.broker.clone();
        b.spawn_broker = true;
        b.nodes = nodes;
        let (brokers, local, https) = brokers_for(None, &b)?;
        let mut max_1k_1p = None;
        for size in [1024usize, 100] {
            let base =
                measure_baselines(&b, local_data_dir(local.as_ref()), a.batch_bytes as usize);
            for partitions in [1u32, 16] {
                let mut max_rate = None;
                for half in [false, true] {
                    let topic = format!(
                        "bench-rf{rf}-{size}b-{partitions}p-{}",
                        if half { "half" } else { "max" }
                    );
                    bench_topic(&brokers, &https, &topic, partitions, rf)?;
                    let rate = if half {
                        max_rate.map(|r: f64| r / 2.0)
                    } else {
                        None
                    };
                    let c = bench_case(
                        &a,
                        &brokers,
                        &https,
                        local.as_ref(),
                        &base,
                        &topic,
                        size,
                        rate,
                        None,
                        0,
                    )?;
                    if !half {
                        max_rate = Some(c.msgs_per_s.max(1.0));
                        if size == 1024 && partitions == 1 {
                            max_1k_1p = max_rate;
                        }
                    }
                    cases.push(c);
                }
            }
        }
        let max = max_1k_1p.unwrap_or(1.0);
        let base = measure_baselines(&b, local_data_dir(local.as_ref()), a.batch_bytes as usize);
        if rf == 3 {
            // Maximum rate with a follower stopped for the whole run (its
            // ratio to the healthy maximum above is the figure); then the
            // same load (50 % of the 1 KiB, 1-partition maximum) healthy,
            // with a follower stopped, and with the leader killed.
            let fault_at = a.warmup_s + 1.0;
            let pause_for = (a.duration_s - 2.0).max(1.0);
            let whole_run = a.warmup_s + a.duration_s;
            let half = Some(max / 2.0);
            let pause = |at_s, for_s| Some(FaultSpec::PauseFollower { at_s, for_s });
            for (name, rate, fault) in [
                ("max-paused", None, pause(0.0, whole_run)),
                ("healthy", half, None),
                ("pause", half, pause(fault_at, pause_for)),
                (
                    "kill",
                    half,
                    Some(FaultSpec::KillLeader {
                        at_s: fault_at,
                        restart_after_s: 3.0,
                        times: 1,
                    }),
                ),
            ] {
                let topic = format!("bench-rf3-1024b-1p-{name}");
                bench_topic(&brokers, &https, &topic, 1, rf)?;
                cases.push(bench_case(
                    &a,
                    &brokers,
                    &https,
                    local.as_ref(),
                    &base,
                    &topic,
                    1024,
                    rate,
                    fault,
                    0,
                )?);
            }
        }
        if a.plot.is_some() {
            let mut points = Vec::new();
            for pct in [10u32, 30, 50, 70, 90] {
                let topic = format!("bench-rf{rf}-1024b-1p-at{pct}");
                bench_topic(&brokers, &https, &topic, 1, rf)?;
                let c = bench_case(
                    &a,
                    &brokers,
                    &https,
                    local.as_ref(),
                    &base,
                    &topic,
                    1024,
                    Some(max * f64::from(pct) / 100.0),
                    None,
                    0,
                )?;
                points.push(plot::Point {
                    msgs_per_s: c.msgs_per_s,
                    p50_ms: c.ack_p50_us as f64 / 1e3,
                    p99_ms: c.ack_p99_us as f64 / 1e3,
                });
                cases.push(c);
            }
            series.push(plot::Series {
                name: format!(
                    "RF={rf} ({nodes} broker{})",
                    if nodes > 1 { "s" } else { "" }
                ),
                points,
            });
        }
        drop(local);
    }
    println!();
    println!(
        "{:<28} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>5}",
        "case",
        "msgs/s",
        "MB/s",
        "ack p50",
        "ack p99",
        "p99.9",
        "e2e p50",
        "e2e p99",
        "/tcp",
        "/fsync",
        "elect"
    );
    for c in &cases {
        println!("{}", c.line);
    }
    if let Some(path) = &a.json {
        write_json(
            path,
            &json!(cases.iter().map(|c| &c.json).collect::<Vec<_>>()),
        )?;
    }
    if let Some(path) = &a.plot {
        std::fs::write(
            path,
            plot::svg(
                "publish-ack latency vs throughput, 1 KiB messages, 1 partition",
                &series,
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("drmq-loadtest: wrote {}", path.display());
    }
    Ok(cases.iter().all(|c| c.ok))
}

/// `bench --compare-dashboards N`: the maximum-rate case (1 KiB, 1
/// partition, as the suite's first case) run `--compare-rounds` times
/// without and with N dashboards per broker on the same brokers, in ABBA
/// order (without, with; with, without; ...) and each run on a fresh topic,
/// so drift (page cache, disk use, thermal) falls on both sides alike. The ratio is mean
/// with / mean without; the spread of the runs without dashboards is
/// printed beside it as the noise it must be read against.
fn compare_dashboards(a: &BenchArgs, n: usize) -> Result<bool> {
    let mut ok = true;
    let mut out = Vec::new();
    let mut summary = Vec::new();
    for (nodes, rf) in [(1u16, 1u16), (3, 3)] {
        if !a.rf.contains(&rf) {
            continue;
        }
        let mut b = a.broker.clone();
        b.spawn_broker = true;
        b.nodes = nodes;
        let (brokers, local, https) = brokers_for(None, &b)?;
        let none = Baselines {
            tcp: None,
            fsync: None,
        };
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let mut rounds = Vec::new();
        for round in 0..a.compare_rounds {
            let mut pair = [serde_json::Value::Null, serde_json::Value::Null];
            // ABBA: the order alternates, so a drift over the rounds
            // falls on both sides alike; each run writes a fresh topic, so
            // none starts behind a bigger log than the other.
            let order = if round % 2 == 0 { [0, n] } else { [n, 0] };
            for dashboards in order {
                let topic = format!("bench-rf{rf}-1024b-1p-dashboards-{round}-{dashboards}");
                bench_topic(&brokers, &https, &topic, 1, rf)?;
                let c = bench_case(
                    a,
                    &brokers,
                    &https,
                    local.as_ref(),
                    &none,
                    &topic,
                    1024,
                    None,
                    None,
                    dashboards,
                )?;
                ok &= c.ok;
                if dashboards == 0 {
                    without.push(c.msgs_per_s);
                } else {
                    if c.json["dashboards"]["frames"].as_u64().unwrap_or(0) == 0 {
                        eprintln!("drmq-loadtest: warning: the dashboards received no frames; the comparison measures nothing");
                    }
                    with.push(c.msgs_per_s);
                }
                pair[usize::from(dashboards != 0)] = c.json;
            }
            rounds.push(json!({ "without": pair[0], "with": pair[1] }));
        }
        drop(local);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (m0, m1) = (mean(&without), mean(&with));
        let ratio = m1 / m0.max(1e-9);
        let spread = without.iter().cloned().fold(f64::MIN, f64::max)
            - without.iter().cloned().fold(f64::MAX, f64::min);
        summary.push(format!(
            "RF={rf}: {n} dashboard(s) per broker: without {m0:.0} msgs/s {without:.0?}, with {m1:.0} msgs/s {with:.0?}; ratio {ratio:.4} (throughput {:+.2} %; runs without dashboards spread {:.2} %)",
            (ratio - 1.0) * 100.0,
            spread / m0.max(1e-9) * 100.0,
        ));
        out.push(json!({
            "rf": rf,
            "nodes": nodes,
            "dashboards_per_broker": n,
            "rounds": rounds,
            "without_msgs_per_s": without,
            "with_msgs_per_s": with,
            "without_msgs_per_s_mean": m0,
            "with_msgs_per_s_mean": m1,
            "ratio": ratio,
            "throughput_change_pct": (ratio - 1.0) * 100.0,
            "without_spread_pct": spread / m0.max(1e-9) * 100.0,
        }));
    }
    println!();
    for line in &summary {
        println!("{line}");
    }
    if let Some(path) = &a.json {
        write_json(path, &json!({ "compare_dashboards": out }))?;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap checks the definition (every `conflicts_with` names an argument
    /// of its command) only in debug builds, and panics there.
    #[test]
    fn the_command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
