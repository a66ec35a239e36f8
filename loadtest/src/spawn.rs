//! Local brokers for `--spawn-broker` and `bench`: `drmq broker` child
//! processes started by the client's local-cluster launcher
//! ([`client::local`]), killed by PID and their data directory removed
//! when dropped; faults (kill -9, SIGSTOP) are applied to them by PID too.
//! Also the topic set-up and the brokers' telemetry counters.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
pub use client::local::LocalCluster;
use client::local::{find_drmq, random_secret, BrokerLog, LaunchOptions};
use client::Admin;
use wire::{CleanupPolicy, CreateTopicRequest, Durability, TopicConfig};

/// Most brokers `--nodes` starts.
const NODES_MAX: u16 = 7;
/// How long creating a topic may take, retries included: the controller
/// may not be elected yet on a cluster that just started.
const ENSURE_TOPIC_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `nodes` brokers with `shards` shards each, spawning the `drmq`
/// binary (`drmq`, else `$DRMQ_BIN`, else the one next to this executable).
/// Without `data_dir` the data goes to a temporary directory, removed when
/// the cluster is dropped.
pub fn start_local(
    drmq: Option<&Path>,
    data_dir: Option<&Path>,
    shards: u16,
    nodes: u16,
    log: Option<&Path>,
) -> Result<LocalCluster> {
    if nodes == 0 || nodes > NODES_MAX {
        bail!("--nodes must be in 1..={NODES_MAX}");
    }
    let drmq = find_drmq(drmq).context(
        "--spawn-broker needs the drmq binary: give --drmq PATH or $DRMQ_BIN, or build it next to drmq-loadtest (cargo build -p broker --bin drmq)",
    )?;
    let (data_dir, remove_data_dir) = match data_dir {
        Some(d) => (d.to_owned(), false),
        None => (
            std::env::temp_dir().join(format!(
                "drmq-loadtest-{}-{}",
                std::process::id(),
                random_secret()
            )),
            true,
        ),
    };
    let mut opts = LaunchOptions::new(drmq, data_dir, nodes, shards);
    opts.remove_data_dir = remove_data_dir;
    if nodes > 1 {
        opts.secret = Some(format!("loadtest-{}", random_secret()));
    }
    if let Some(p) = log {
        opts.log = BrokerLog::Append(p.to_owned());
    }
    Ok(LocalCluster::start(opts)?)
}

/// Creates the topic, or checks that an existing one has `partitions`.
pub fn ensure_topic(
    brokers: &[SocketAddr],
    name: &str,
    partitions: u32,
    replication: u16,
    segment_bytes: Option<u64>,
) -> Result<()> {
    let req = CreateTopicRequest {
        name: name.to_owned(),
        partitions,
        replication,
        config: TopicConfig {
            retention_bytes: None,
            retention_ms: None,
            segment_bytes,
            segment_ms: None,
            cleanup: CleanupPolicy::Delete,
            durability: Durability::EveryBatch,
            tombstone_retention_ms: None,
        },
        timeout_ms: 10_000,
    };
    Admin::new(brokers.to_vec(), ENSURE_TOPIC_TIMEOUT)
        .ensure_topic(req)
        .with_context(|| format!("creating topic {name}"))
}

/// Counters the telemetry thread serves at `GET /api/status`, summed over
/// shards. Samples are taken once a second, so they lag by up to a second.
pub const BROKER_COUNTERS: [&str; 7] = [
    "produce_requests",
    "produce_bytes",
    "fetch_requests",
    "fetch_bytes",
    "errors",
    "leader_changes",
    "elections",
];

/// Each broker's counters ([`broker_counters`]; None for one that does not
/// answer).
pub type ClusterCounters = Vec<Option<std::collections::BTreeMap<String, u64>>>;

pub fn cluster_counters(https: &[SocketAddr]) -> ClusterCounters {
    https.iter().map(|h| broker_counters(*h)).collect()
}

/// What the brokers counted between two readings, summed. A counter that
/// went down belongs to a broker that restarted: its new value is the delta.
pub fn counter_deltas(
    before: &ClusterCounters,
    after: &ClusterCounters,
) -> Option<std::collections::BTreeMap<String, u64>> {
    let mut out: Option<std::collections::BTreeMap<String, u64>> = None;
    for (b, a) in before.iter().zip(after) {
        let Some(a) = a else { continue };
        let sum = out.get_or_insert_with(Default::default);
        for (k, v) in a {
            let old = b.as_ref().and_then(|b| b.get(k)).copied().unwrap_or(0);
            let d = if *v >= old { v - old } else { *v };
            *sum.entry(k.clone()).or_insert(0) += d;
        }
    }
    out
}

/// Reads the broker's counters over HTTP (None if it does not answer).
pub fn broker_counters(http: SocketAddr) -> Option<std::collections::BTreeMap<String, u64>> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /api/status HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    // Bounded: the server closes after one answer; the read has a timeout.
    s.take(16 << 20).read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut out = std::collections::BTreeMap::new();
    for shard in v["shards"].as_array()? {
        for name in BROKER_COUNTERS {
            *out.entry(name.to_owned()).or_insert(0) += shard[name].as_u64().unwrap_or(0);
        }
    }
    Some(out)
}
