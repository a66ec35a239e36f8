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

/// Starts `nodes` brokers with `shards` shards each (and `broker_args`
/// more flags), spawning the `drmq`
/// binary (`drmq`, else `$DRMQ_BIN`, else the one next to this executable).
/// Without `data_dir` the data goes to a temporary directory, removed when
/// the cluster is dropped.
pub fn start_local(
    drmq: Option<&Path>,
    data_dir: Option<&Path>,
    shards: u16,
    nodes: u16,
    log: Option<&Path>,
    broker_args: &[String],
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
    opts.extra_args = broker_args.to_vec();
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

/// The broker's `GET /api/status` (None if it does not answer).
pub(crate) fn api_status(http: SocketAddr) -> Option<serde_json::Value> {
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
    serde_json::from_str(body).ok()
}

/// One line per broker with a partition log in the disk-full state (below
/// its free-space floor the broker refuses appends: followers stop catching
/// up, leaders step down, new partitions cannot open), from the shards'
/// `disk_full` in its `/api/status`.
pub fn disks_full(https: &[SocketAddr]) -> Vec<String> {
    https
        .iter()
        .filter_map(|h| {
            let v = api_status(*h)?;
            let full = v["shards"]
                .as_array()?
                .iter()
                .any(|s| s["disk_full"].as_bool() == Some(true));
            full.then(|| {
                format!(
                    "broker {} ({h}): disk full (appends refused below its free-space floor)",
                    v["broker"]
                )
            })
        })
        .collect()
}

/// Whether `name` (an entry of a broker's `partitions` directory) belongs
/// to `topic`: `TOPIC-PARTITION.GROUP`, with a suffix once deleted.
fn is_partition_dir_of(name: &str, topic: &str) -> bool {
    name.strip_prefix(topic)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(p, _)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The partition directories of `topic` under a local cluster's data
/// directory (`broker-N/partitions/TOPIC-P.G`, deleted ones included).
pub fn topic_dirs(data_dir: &Path, topic: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(brokers) = std::fs::read_dir(data_dir) else {
        return out;
    };
    for b in brokers.flatten() {
        let Ok(parts) = std::fs::read_dir(b.path().join("partitions")) else {
            continue;
        };
        for p in parts.flatten() {
            if is_partition_dir_of(&p.file_name().to_string_lossy(), topic) {
                out.push(p.path());
            }
        }
    }
    out
}

/// How long deleting a bench topic may take, its files' removal included.
const DELETE_TOPIC_TIMEOUT: Duration = Duration::from_secs(60);

/// Deletes a topic and, on a local cluster (`data_dir`), waits until the
/// brokers have removed its files: the bench deletes each case's topic
/// after the case, so the suite needs the disk of one case at a time and
/// not of all of them (the RF=3 part wrote over 16 GB in all and stopped
/// at the brokers' free-space floor).
pub fn delete_topic(brokers: &[SocketAddr], data_dir: Option<&Path>, topic: &str) -> Result<()> {
    Admin::new(brokers.to_vec(), DELETE_TOPIC_TIMEOUT)
        .delete_topic(topic)
        .with_context(|| format!("deleting topic {topic}"))?;
    let Some(dir) = data_dir else { return Ok(()) };
    let deadline = std::time::Instant::now() + DELETE_TOPIC_TIMEOUT;
    // Bounded by the deadline.
    loop {
        let left = topic_dirs(dir, topic);
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "topic {topic} deleted, but its files are still there after {DELETE_TOPIC_TIMEOUT:?}: {}",
                left[0].display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads the broker's counters over HTTP (None if it does not answer).
pub fn broker_counters(http: SocketAddr) -> Option<std::collections::BTreeMap<String, u64>> {
    let v = api_status(http)?;
    let mut out = std::collections::BTreeMap::new();
    for shard in v["shards"].as_array()? {
        for name in BROKER_COUNTERS {
            *out.entry(name.to_owned()).or_insert(0) += shard[name].as_u64().unwrap_or(0);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::is_partition_dir_of;

    #[test]
    fn partition_dirs_are_matched_by_their_whole_topic_name() {
        assert!(is_partition_dir_of("t-0.5", "t"));
        assert!(is_partition_dir_of("t-12.5.1700000000000.deleted", "t"));
        assert!(is_partition_dir_of(
            "bench-rf3-100b-1p-max-0.9",
            "bench-rf3-100b-1p-max"
        ));
        assert!(!is_partition_dir_of("t-x-0.5", "t"));
        assert!(!is_partition_dir_of("t2-0.5", "t"));
        assert!(!is_partition_dir_of("t-.5", "t"));
        assert!(!is_partition_dir_of("t-0", "t"));
        assert!(!is_partition_dir_of(
            "bench-rf3-100b-16p-max-0.9",
            "bench-rf3-100b-1p-max"
        ));
    }
}
