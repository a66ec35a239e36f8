//! `drmq`: the broker and its command-line client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use broker::config::{load_file, parse_peers, BrokerConfig, FileConfig};
use clap::{Args, Parser, Subcommand};
use client::local::{BrokerLog, LaunchOptions, LocalCluster, PortPlan};
use client::{parse_brokers, Admin};
use serde_json::{json, Value};
use wire::*;

mod cli;
mod group;
mod table;

#[derive(Parser, Debug)]
#[command(
    name = "drmq",
    version,
    about = "DRMQ: a distributed, replicated message log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one broker.
    Broker(BrokerArgs),
    /// Run a local cluster of brokers as child processes.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// First client port: broker i serves clients from PORT + 16(i-1),
        /// peers from PORT + 200 + 16(i-1), HTTP on PORT - 1012 + i.
        #[arg(long, default_value_t = 9092)]
        port: u16,
    },
    /// Create, delete, list and describe topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce stdin lines as messages.
    Produce {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        key_separator: Option<char>,
        #[arg(long)]
        idempotent: bool,
        /// Largest record batch, in bytes: keep it under the topic's
        /// segment size (a batch never spans segments).
        #[arg(long, default_value_t = 1 << 20)]
        batch_bytes: usize,
    },
    /// Consume messages as JSON lines.
    Consume {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        topic: String,
        /// Consume as a member of this consumer group: the group's members
        /// share the topic's partitions, and offsets are committed.
        #[arg(long)]
        group: Option<String>,
        /// Where to start: earliest, latest or an offset (with --group:
        /// earliest or latest, for partitions the group never committed).
        #[arg(long, default_value = "earliest")]
        from: String,
        #[arg(long)]
        max_messages: Option<u64>,
        #[arg(long)]
        idle_timeout_ms: Option<u64>,
        /// With --group: the lease asked for (renewed by heartbeats every
        /// quarter of it).
        #[arg(long, default_value_t = 3_000, requires = "group")]
        lease_ms: u64,
        /// With --group: commit what was printed this often (0: only when
        /// leaving or handing partitions over).
        #[arg(long, default_value_t = 1_000, requires = "group")]
        auto_commit_ms: u64,
        /// With --group: the name shown by `group describe`.
        #[arg(long, requires = "group")]
        client_id: Option<String>,
    },
    /// Consumer groups: list, describe, reset offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Cluster-wide views.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Args, Debug)]
struct BrokerArgs {
    #[arg(long)]
    id: Option<u64>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Peer-listen addresses of every voter: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    peers: Option<String>,
    #[arg(long)]
    shards: Option<usize>,
    /// Secret shared by the brokers of a cluster (peers authenticate with
    /// it); better given in the environment than on the command line.
    #[arg(long, env = "DRMQ_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Client connections each shard's listener accepts (default 4096);
    /// the excess is answered with an error and closed.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Request bytes one client connection may have in flight (default
    /// 64 MiB); past it the broker reads no more from that connection
    /// until answers go out.
    #[arg(long)]
    max_inflight_bytes: Option<u64>,
    /// How often each shard looks for a compacted partition to compact
    /// (default 10000).
    #[arg(long)]
    compact_interval_ms: Option<u64>,
    /// Dirty share of a compacted partition's sealed bytes, in percent, at
    /// which it is compacted (default 50).
    #[arg(long)]
    compact_dirty_percent_min: Option<u8>,
    /// Compaction's I/O budget per broker in MB/s read plus written
    /// (default 32; 0: no limit).
    #[arg(long)]
    compact_io_mb_per_sec: Option<u64>,
    /// Snapshot send budget of this broker in MB/s, all transfers together
    /// (default 100).
    #[arg(long)]
    snapshot_rate_mb: Option<u64>,
    /// A follower more than this many MiB behind catches up by snapshot
    /// instead of replaying entries (default 256; 0: only one below the
    /// leader's log start does).
    #[arg(long)]
    snapshot_catch_up_mib: Option<u64>,
    /// How often the shards even out partition leaders over the brokers,
    /// moving leaderships to caught-up followers on brokers that lead fewer
    /// (default 3000; 0: never; at least 500 otherwise).
    #[arg(long)]
    leader_balance_interval_ms: Option<u64>,
    /// Pin shard s to CPU s mod cores (default true: a broker with the
    /// machine to itself); false lets the kernel place the shards, as
    /// `drmq dev` and the load test do for several brokers on one machine.
    #[arg(long)]
    pin_shards: Option<bool>,
    /// A TOML file with the same settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration, print it as JSON and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Args, Debug)]
struct ConnArgs {
    /// Brokers to bootstrap from: HOST:PORT[,HOST:PORT...]
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Deadline for each request.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// How a command that shows data prints it: a table on a terminal, JSON
/// when stdout is not one (piped, redirected) or with `--json`.
#[derive(Args, Debug, Clone, Copy)]
struct OutputArgs {
    /// Print JSON (the default when stdout is not a terminal).
    #[arg(long, conflicts_with = "table")]
    json: bool,
    /// Print a table even when stdout is not a terminal.
    #[arg(long)]
    table: bool,
}

impl OutputArgs {
    fn table(self) -> bool {
        use std::io::IsTerminal;
        !self.json && (self.table || std::io::stdout().is_terminal())
    }
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 3)]
        replication: u16,
        #[arg(long)]
        retention_bytes: Option<u64>,
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Segment size in bytes (default 128 MiB, preallocated).
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Sync by interval (ms) instead of before every acknowledgement.
        #[arg(long)]
        sync_interval_ms: Option<u32>,
        /// delete or compact
        #[arg(long, default_value = "delete")]
        cleanup: String,
    },
    Delete {
        #[command(flatten)]
        conn: ConnArgs,
        name: String,
    },
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    Describe {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        output: OutputArgs,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Every group, with its generation and member count.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// A group's members (partitions, lease left) and, per partition, its
    /// owner, committed offset, high watermark and lag.
    Describe {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        output: OutputArgs,
        group: String,
    },
    /// Sets the group's committed offsets of a topic (only while the group
    /// has no members).
    ResetOffsets {
        #[command(flatten)]
        conn: ConnArgs,
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset, or @MS (the first offset at or
        /// after a time, in ms since the Unix epoch)
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    Status {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Dev { .. }) {
        // Taken by `dev`'s signal thread: blocked before any thread starts.
        block_stop_signals();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drmq: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Broker(args) => broker(args),
        Command::Dev {
            nodes,
            data_dir,
            port,
        } => dev(nodes, &data_dir, port),
        Command::Topic(cmd) => topic(cmd),
        Command::Produce {
            conn,
            topic,
            key_separator,
            idempotent,
            batch_bytes,
        } => {
            validate_topic_name(&topic)?;
            cli::produce(
                &conn.brokers,
                conn.timeout_ms,
                &topic,
                key_separator,
                idempotent,
                batch_bytes,
            )
        }
        Command::Consume {
            conn,
            topic,
            group,
            from,
            max_messages,
            idle_timeout_ms,
            lease_ms,
            auto_commit_ms,
            client_id,
        } => {
            validate_topic_name(&topic)?;
            if let Some(group) = group {
                validate_group_name(&group)?;
                let from = match cli::parse_from(&from)? {
                    cli::From::Earliest => client::Reset::Earliest,
                    cli::From::Latest => client::Reset::Latest,
                    cli::From::Offset(_) => {
                        bail!("--from with --group: earliest or latest (a group resumes at its committed offsets; see group reset-offsets)")
                    }
                };
                if !(500..=300_000).contains(&lease_ms) {
                    bail!("--lease-ms must be in 500..=300000");
                }
                // SIGINT/SIGTERM: commit and leave, so the partitions move at once.
                block_stop_signals();
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let flag = stop.clone();
                std::thread::spawn(move || {
                    wait_for_stop_signal();
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                });
                let args = group::MemberArgs {
                    group,
                    topic,
                    from,
                    lease_ms,
                    auto_commit_ms,
                    client_id,
                    max_messages,
                    idle_timeout_ms,
                };
                return group::consume(client_config(&conn)?, args, stop);
            }
            let from = cli::parse_from(&from)?;
            cli::consume(
                &conn.brokers,
                conn.timeout_ms,
                &topic,
                from,
                max_messages,
                idle_timeout_ms,
            )
        }
        Command::Group(cmd) => group_command(cmd),
        Command::Cluster(ClusterCommand::Status { conn, output }) => {
            let s = admin(&conn)?
                .cluster_status()
                .context("ClusterStatusRequest")?;
            if output.table() {
                print_text(&table::cluster_status(&s));
            } else {
                print_json(&cluster_status_json(&s));
            }
            Ok(())
        }
    }
}

fn broker(args: BrokerArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let peers = match &args.peers {
        Some(spec) => Some(
            parse_peers(spec)?
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ),
        None => None,
    };
    let flags = FileConfig {
        id: args.id,
        data_dir: args.data_dir,
        listen: args.listen,
        peer_listen: args.peer_listen,
        http: args.http,
        peers,
        shards: args.shards,
        cluster_secret: args.cluster_secret,
        max_connections: args.max_connections,
        max_inflight_bytes: args.max_inflight_bytes,
        compact_interval_ms: args.compact_interval_ms,
        compact_dirty_percent_min: args.compact_dirty_percent_min,
        compact_io_mb_per_sec: args.compact_io_mb_per_sec,
        snapshot_rate_mb: args.snapshot_rate_mb,
        snapshot_catch_up_mib: args.snapshot_catch_up_mib,
        leader_balance_interval_ms: args.leader_balance_interval_ms,
        pin_shards: args.pin_shards,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let config = BrokerConfig::resolve(file, flags, cores)?;
    if args.check_config {
        print_json(&serde_json::to_value(&config)?);
        return Ok(());
    }
    broker::logging::init();
    Ok(broker::runtime::run(config)?)
}

/// How long `drmq dev` gives its brokers to stop after SIGTERM before
/// killing them (a graceful stop syncs every partition; seconds at most).
const DEV_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `drmq dev` tries to create the demo topic (a controller is
/// elected within a few election timeouts).
const DEV_DEMO_TIMEOUT: Duration = Duration::from_secs(10);

/// `drmq dev`: brokers as child processes on 127.0.0.1, a demo topic, and
/// the addresses printed. Ends (and stops the others) when any broker exits;
/// Ctrl-C reaches the whole process group.
fn dev(nodes: u32, data_dir: &std::path::Path, port: u16) -> Result<()> {
    if nodes == 0 || nodes > 8 {
        bail!("--nodes must be in 1..=8");
    }
    if !(1100..=65_000).contains(&port) {
        bail!("--port must be in 1100..=65000");
    }
    let shards = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4) as u16;
    let exe = std::env::current_exe().context("locating the drmq binary")?;
    let mut opts = LaunchOptions::new(exe, data_dir.to_owned(), nodes as u16, shards);
    opts.ports = PortPlan::Dev { port };
    // A fresh secret per `drmq dev` run, passed in the environment.
    opts.secret = Some(client::local::random_secret());
    opts.log = BrokerLog::Inherit;
    // If `drmq dev` dies, whatever the cause, its brokers get SIGTERM.
    opts.parent_death_signal = true;
    opts.start_attempts = 1;
    let mut cluster = LocalCluster::start(opts)?;
    let brokers: Vec<String> = cluster.listens.iter().map(|a| a.to_string()).collect();
    let brokers = brokers.join(",");
    let demo = CreateTopicRequest {
        name: "demo".into(),
        partitions: 3,
        replication: nodes.min(3) as u16,
        config: TopicConfig {
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: Some(16 << 20),
            segment_ms: None,
            cleanup: CleanupPolicy::Delete,
            durability: Durability::EveryBatch,
            tombstone_retention_ms: None,
        },
        timeout_ms: 5_000,
    };
    // Exists already after a restart, or reported below by status.
    let _ = Admin::new(cluster.listens.clone(), DEV_DEMO_TIMEOUT).create_topic(demo);
    eprintln!("drmq dev: {nodes} broker(s) up; brokers {brokers}");
    eprintln!("drmq dev: try  echo hello | drmq produce --topic demo --brokers {brokers}");
    let http = &cluster.https[0];
    if broker::dashboard::built() {
        eprintln!("drmq dev: dashboard on http://{http}/  (every broker's --http serves it)");
    } else {
        eprintln!(
            "drmq dev: this drmq was built without the dashboard (make build adds it); \
             http://{http}/ says how"
        );
    }
    eprintln!("drmq dev: counters on http://{http}/metrics (Prometheus) and /api/status");
    // Run until a broker exits or we are asked to stop (Ctrl-C, SIGTERM);
    // then stop every broker gracefully (SIGTERM) and wait for them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        wait_for_stop_signal();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let exited = loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break None;
        }
        if let Some(e) = cluster.exited() {
            break Some(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stopped = cluster.terminate_all(DEV_STOP_TIMEOUT);
    match exited {
        None => {
            stopped?;
            eprintln!("drmq dev: stopped");
            Ok(())
        }
        Some((i, status)) => bail!("broker {} exited ({status}); stopped the others", i + 1),
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in this thread and the threads it starts.
fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: changes only this thread's signal mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits for SIGINT or SIGTERM (blocked by [`block_stop_signals`]).
fn wait_for_stop_signal() {
    let set = stop_signals();
    let mut sig = 0;
    // SAFETY: an initialised set; sigwait writes the signal number.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
}

/// The admin client for `--brokers` and `--timeout-ms`: each call retries
/// (following NotController hints) within the timeout.
fn admin(conn: &ConnArgs) -> Result<Admin> {
    Ok(Admin::new(
        parse_brokers(&conn.brokers)?,
        Duration::from_millis(conn.timeout_ms),
    ))
}

/// Client settings for `--brokers` and `--timeout-ms` (connect, each request).
fn client_config(conn: &ConnArgs) -> Result<client::ClientConfig> {
    let mut cfg = client::ClientConfig::new(parse_brokers(&conn.brokers)?);
    let timeout = Duration::from_millis(conn.timeout_ms.max(1));
    cfg.connect_timeout = timeout;
    cfg.request_timeout = timeout;
    Ok(cfg)
}

fn group_command(cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::List { conn, output } => {
            let groups = group::list(&client_config(&conn)?)?;
            if output.table() {
                print_text(&table::group_list(&groups));
            } else {
                print_json(&Value::Array(groups));
            }
        }
        GroupCommand::Describe {
            conn,
            output,
            group,
        } => {
            validate_group_name(&group)?;
            let d = group::describe(&client_config(&conn)?, &group)?;
            if output.table() {
                print_text(&table::group_describe(&d));
            } else {
                print_json(&d);
            }
        }
        GroupCommand::ResetOffsets {
            conn,
            group,
            topic,
            to,
        } => {
            validate_group_name(&group)?;
            validate_topic_name(&topic)?;
            let to = group::parse_reset_to(&to)?;
            print_json(&group::reset(&client_config(&conn)?, &group, &topic, to)?);
        }
    }
    Ok(())
}

fn print_json(v: &Value) {
    use std::io::Write;
    // A reader that went away (`| head`) ends the output, not the process.
    let _ = writeln!(std::io::stdout(), "{v}");
}

fn print_text(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(s.as_bytes());
}

fn topic(cmd: TopicCommand) -> Result<()> {
    match cmd {
        TopicCommand::Create {
            conn,
            name,
            partitions,
            replication,
            retention_bytes,
            retention_ms,
            segment_bytes,
            sync_interval_ms,
            cleanup,
        } => {
            validate_topic_name(&name)?;
            let cleanup = match cleanup.as_str() {
                "delete" => CleanupPolicy::Delete,
                "compact" => CleanupPolicy::Compact,
                other => bail!("--cleanup must be delete or compact, not `{other}`"),
            };
            if partitions == 0 || replication == 0 {
                bail!("--partitions and --replication must be at least 1");
            }
            let req = CreateTopicRequest {
                name,
                partitions,
                replication,
                config: TopicConfig {
                    retention_bytes,
                    retention_ms,
                    segment_bytes,
                    segment_ms: None,
                    cleanup,
                    durability: match sync_interval_ms {
                        None => Durability::EveryBatch,
                        Some(ms) => Durability::IntervalMs(ms),
                    },
                    tombstone_retention_ms: None,
                },
                timeout_ms: conn.timeout_ms.min(u64::from(u32::MAX)) as u32,
            };
            let topic = admin(&conn)?
                .create_topic(req)
                .context("CreateTopicRequest")?;
            print_json(&topic_json(&topic));
        }
        TopicCommand::Delete { conn, name } => {
            validate_topic_name(&name)?;
            let deleted = admin(&conn)?
                .delete_topic(&name)
                .context("DeleteTopicRequest")?;
            print_json(&json!({ "deleted": deleted }));
        }
        TopicCommand::List { conn, output } => {
            let r = admin(&conn)?.metadata(None).context("MetadataRequest")?;
            if output.table() {
                print_text(&table::topic_list(&r.topics));
            } else {
                print_json(&Value::Array(r.topics.iter().map(topic_json).collect()));
            }
        }
        TopicCommand::Describe { conn, output, name } => {
            validate_topic_name(&name)?;
            let admin = admin(&conn)?;
            let r = admin
                .describe_topic(&name)
                .context("DescribeTopicRequest")?;
            if output.table() {
                // Lag comes from the leaders' status; without it (an old or
                // unreachable broker) the table shows none.
                let status = admin.cluster_status().ok();
                print_text(&table::describe_topic(&r, status.as_ref()));
                return Ok(());
            }
            let mut v = topic_json(&r.topic);
            v["replication"] = json!(r.replication);
            v["retention_bytes"] = json!(r.config.retention_bytes);
            v["retention_ms"] = json!(r.config.retention_ms);
            v["cleanup"] = json!(format!("{:?}", r.config.cleanup).to_lowercase());
            print_json(&v);
        }
    }
    Ok(())
}

fn topic_json(t: &TopicMetadata) -> Value {
    json!({
        "name": t.name,
        "error": (t.error != 0).then(|| ErrorCode::from_u16(t.error).name()),
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "leader": p.leader,
            "leader_term": p.leader_term,
            "shard": p.shard,
            "replicas": p.replicas,
        })).collect::<Vec<_>>(),
    })
}

fn cluster_status_json(s: &ClusterStatusResponse) -> Value {
    json!({
        "controller": s.controller,
        "brokers": s.brokers.iter().map(|b| json!({
            "id": b.id,
            "alive": b.alive,
            "last_seen_ms_ago": b.last_seen_ms_ago,
            "endpoints": b.endpoints.iter().map(|e| format!("{}:{}", e.host, e.port)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "partitions": s.partitions.iter().map(|p| json!({
            "topic": p.topic,
            "partition": p.partition,
            "leader": p.leader,
            "term": p.term,
            "commit_index": p.commit_index,
            "log_start_offset": p.log_start_offset,
            "replicas": p.replicas.iter().map(|r| json!({
                "broker": r.broker, "match_index": r.match_index, "lag": r.lag,
                "snapshot": r.snapshot.as_ref().map(|t| json!({
                    "bytes_sent": t.bytes_sent,
                    "bytes_total": t.bytes_total,
                    "bytes_per_sec": t.bytes_per_sec,
                })),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
