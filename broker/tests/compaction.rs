//! Background key compaction with real brokers: three brokers, replication
//! factor 3, a compacted topic and a delete topic fed the same keyed
//! updates. Every replica's log of the compacted topic shrinks on disk (the
//! followers compact their own logs), a consumer reads every key's newest
//! value from it, the telemetry counts the rounds, Raft's saved start point
//! is past the compacted range, and a follower restarted on its compacted
//! log replicates new updates. A follower stopped while the leader
//! compacts past everything it holds comes back by snapshot, leads, and
//! serves every key's newest value.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use broker::replica::RaftState;
use common::{http_json, shard_sum, Cluster};
use serde_json::Value;

const KEYS: usize = 40;
const UPDATES_PER_KEY: usize = 50;
/// Small segments, so the updates fill several sealed segments.
const SEGMENT_BYTES: &str = "262144";
/// Update rounds per `drmq produce` run: the CLI sends a run's lines of a
/// partition as one batch, which must fit a segment (5 x 40 x ~420 bytes).
const ROUNDS_PER_RUN: usize = 5;

fn create(c: &Cluster, topic: &str, cleanup: &str) {
    let o = c.cli(
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            "1",
            "--replication",
            "3",
            "--segment-bytes",
            SEGMENT_BYTES,
            "--cleanup",
            cleanup,
        ],
        None,
    );
    assert!(
        o.status.success(),
        "create {topic}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The directory of partition 0 of `topic` under a broker's data dir.
fn partition_dir(data_dir: &Path, topic: &str) -> PathBuf {
    let prefix = format!("{topic}-0.");
    std::fs::read_dir(data_dir.join("partitions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .unwrap_or_else(|| panic!("no directory for {topic} in {}", data_dir.display()))
}

/// Bytes of the files in a directory (sealed segments are cut to their
/// data; the active one is preallocated to the segment size).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_compacted_topic_shrinks_on_every_replica_and_serves_each_keys_newest_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_with(
        dir.path(),
        3,
        &[
            "--compact-interval-ms",
            "200",
            "--compact-io-mb-per-sec",
            "64",
        ],
    );
    create(&c, "kv", "compact");
    create(&c, "plain", "delete");
    // Update u of key k, padded so the updates fill several segments.
    let value = |k: usize, u: usize| format!("k{k:02}-u{u:03}-{}", "x".repeat(400));
    let mut lines = Vec::with_capacity(KEYS * UPDATES_PER_KEY);
    for u in 0..UPDATES_PER_KEY {
        for k in 0..KEYS {
            lines.push(format!("k{k:02}={}", value(k, u)));
        }
    }
    for run in lines.chunks(ROUNDS_PER_RUN * KEYS) {
        let input = run.join("\n") + "\n";
        for topic in ["kv", "plain"] {
            let o = c.cli(
                &["produce", "--topic", topic, "--key-separator", "="],
                Some(&input),
            );
            assert!(
                o.status.success(),
                "produce {topic}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).lines().count(),
                run.len()
            );
        }
    }

    // Every replica compacts its own log: the compacted topic's directory
    // ends well under the delete topic's, which holds the same updates.
    let deadline = Instant::now() + Duration::from_secs(90);
    let sizes = loop {
        let sizes: Vec<(u64, u64)> = c
            .dirs
            .iter()
            .map(|d| {
                (
                    dir_bytes(&partition_dir(d, "kv")),
                    dir_bytes(&partition_dir(d, "plain")),
                )
            })
            .collect();
        if sizes.iter().all(|&(kv, plain)| kv * 2 < plain) {
            break sizes;
        }
        assert!(
            Instant::now() < deadline,
            "the compacted topic did not shrink on every replica (kv, plain bytes): {sizes:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("partition directory bytes per broker (kv, plain): {sizes:?}");

    // A consumer reads every key's newest value, and fewer records than
    // were written (the superseded ones are gone).
    let (newest, records) = consume_newest(&c);
    assert_eq!(newest.len(), KEYS, "every key is still there");
    for k in 0..KEYS {
        assert_eq!(
            newest[&format!("k{k:02}")],
            value(k, UPDATES_PER_KEY - 1),
            "key {k}: not its newest value"
        );
    }
    assert!(
        records < lines.len() / 2,
        "{records} of {} records read: compaction left too many",
        lines.len()
    );

    // Each broker counted its rounds, and reports how far its replica is
    // clean; the delete topic has no clean offset.
    for i in 0..3 {
        let status = http_json(c.http_port(i), "/api/status").unwrap();
        let shards = status["shards"].as_array().unwrap();
        assert!(
            shard_sum(shards, "compactions") >= 1,
            "broker {}: {status}",
            i + 1
        );
        let before = shard_sum(shards, "compaction_bytes_before");
        let after = shard_sum(shards, "compaction_bytes_after");
        assert!(after < before, "broker {}: {after} >= {before}", i + 1);
        let parts: Vec<&Value> = shards
            .iter()
            .flat_map(|s| s["partitions"].as_array().unwrap())
            .collect();
        let kv = parts.iter().find(|p| p["topic"] == "kv").unwrap();
        assert!(kv["clean_offset"].as_u64().unwrap() > 0, "{kv}");
        let plain = parts.iter().find(|p| p["topic"] == "plain").unwrap();
        assert!(plain["clean_offset"].is_null(), "{plain}");
        // Raft's start point moved past the compacted range (durably), so
        // no follower is replicated from below it; never past the commit.
        let d = &c.dirs[i];
        let state = RaftState::load(&partition_dir(d, "kv")).unwrap();
        let commit = kv["commit_index"].as_u64().unwrap();
        assert!(
            state.start_prev_index > 0 && state.start_prev_index <= commit,
            "broker {}: {state:?}, commit {commit}",
            i + 1
        );
        assert!(state.start_prev_term > 0, "broker {}: {state:?}", i + 1);
        let state = RaftState::load(&partition_dir(d, "plain")).unwrap();
        assert_eq!(state.start_prev_index, 0, "nothing removed from 'plain'");
    }

    // A follower restarts on its compacted log (gaps in entry indexes, the
    // raised Raft start point) and takes new updates: every replica
    // reaches the leader's commit index, and the consumer sees them.
    let (leader, _) = c.leader("kv", 0);
    let f = (0..3).find(|&i| i as u64 + 1 != leader).unwrap();
    c.terminate(f);
    c.restart(f);
    let round: Vec<String> = (0..KEYS)
        .map(|k| format!("k{k:02}={}", value(k, UPDATES_PER_KEY)))
        .collect();
    let o = c.cli(
        &["produce", "--topic", "kv", "--key-separator", "="],
        Some(&(round.join("\n") + "\n")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = c.cli(&["cluster", "status"], None);
        let s: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let kv: Vec<&Value> = s["partitions"]
            .as_array()
            .map(|a| a.iter().filter(|p| p["topic"] == "kv").collect())
            .unwrap_or_default();
        let caught_up = kv.len() == 1
            && kv[0]["replicas"].as_array().is_some_and(|r| {
                r.len() == 3
                    && r.iter()
                        .all(|r| r["lag"] == 0 && r["match_index"] == kv[0]["commit_index"])
            });
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "replicas did not catch up: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (newest, _) = consume_newest(&c);
    for k in 0..KEYS {
        assert_eq!(newest[&format!("k{k:02}")], value(k, UPDATES_PER_KEY));
    }
}

/// Consumes `kv` from the start: each key's last value, and the records
/// read (offsets checked to increase).
fn consume_newest(c: &Cluster) -> (BTreeMap<String, String>, usize) {
    let o = c.cli(
        &["consume", "--topic", "kv", "--idle-timeout-ms", "2000"],
        None,
    );
    assert!(
        o.status.success(),
        "consume: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut newest = BTreeMap::new();
    let mut records = 0usize;
    let mut last_offset = None;
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let offset = v["offset"].as_u64().unwrap();
        assert!(
            last_offset.is_none_or(|l| offset > l),
            "offsets must increase: {line}"
        );
        last_offset = Some(offset);
        records += 1;
        newest.insert(
            v["key"].as_str().unwrap().to_owned(),
            v["value"].as_str().unwrap().to_owned(),
        );
    }
    (newest, records)
}

/// A broker's total of a shard counter, from its telemetry (0 if it does
/// not answer).
fn counter(c: &Cluster, i: usize, field: &str) -> u64 {
    http_json(c.http_port(i), "/api/status")
        .and_then(|s| s["shards"].as_array().cloned())
        .map(|shards| shard_sum(&shards, field))
        .unwrap_or(0)
}

/// The `kv` partition in `cluster status`, waiting (bounded) until
/// `broker`'s match index reaches the commit index.
fn wait_caught_up(c: &Cluster, broker: u64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let o = c.cli(&["cluster", "status"], None);
        let s: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let p = s["partitions"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["topic"] == "kv").cloned())
            .unwrap_or(Value::Null);
        let caught_up = p["replicas"].as_array().is_some_and(|rs| {
            rs.iter().any(|r| {
                r["broker"] == broker && r["lag"] == 0 && r["match_index"] == p["commit_index"]
            })
        });
        if caught_up {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "broker {broker} did not catch up: {s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_follower_behind_the_compacted_range_catches_up_by_snapshot_and_serves_the_newest_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_with(dir.path(), 3, &["--compact-interval-ms", "200"]);
    create(&c, "kv", "compact");
    // Update rounds `us` of every key, ~1 KB values, in 64 KiB batches.
    let value = |k: usize, u: usize| format!("k{k:02}-u{u:04}-{}", "y".repeat(1000));
    let produce_rounds = |c: &Cluster, us: std::ops::Range<usize>| {
        let lines: Vec<String> = us
            .flat_map(|u| (0..KEYS).map(move |k| (k, u)))
            .map(|(k, u)| format!("k{k:02}={}", value(k, u)))
            .collect();
        let o = c.cli(
            &[
                "produce",
                "--topic",
                "kv",
                "--key-separator",
                "=",
                "--idempotent",
                "--batch-bytes",
                "65536",
            ],
            Some(&(lines.join("\n") + "\n")),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    produce_rounds(&c, 0..5);
    let (first_leader, _) = c.leader("kv", 0);
    let follower = (1..=3u64).find(|&b| b != first_leader).unwrap();
    let fi = follower as usize - 1;
    wait_caught_up(&c, follower, Duration::from_secs(20));
    c.pause(fi);
    // Far more than Raft keeps in flight to the stopped follower and its
    // sockets buffer (~32 MB in 256 KiB segments), compacted by the leader
    // meanwhile: Raft's start point passes everything the follower holds.
    const ROUNDS: usize = 805;
    for first in (5..ROUNDS).step_by(20) {
        produce_rounds(&c, first..(first + 20).min(ROUNDS));
    }
    let li = first_leader as usize - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(&c, li, "compactions") == 0 {
        assert!(Instant::now() < deadline, "the leader never compacted");
        std::thread::sleep(Duration::from_millis(250));
    }
    c.resume(fi);
    wait_caught_up(&c, follower, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&c, fi, "snapshot_installs") == 0 {
        assert!(
            Instant::now() < deadline,
            "the follower did not come back by snapshot"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Leadership moves to it (the other follower down, the leader stopped
    // gracefully), and a consumer reads every key's newest value from it.
    let (leader, _) = c.leader("kv", 0);
    let other = (1..=3u64).find(|&b| b != leader && b != follower).unwrap();
    let (oi, li) = (other as usize - 1, leader as usize - 1);
    c.kill(oi);
    c.terminate(li);
    c.restart(oi);
    let (new_leader, _) = c.leader("kv", 0);
    assert_eq!(
        new_leader, follower,
        "leadership moved to the caught-up follower"
    );
    let (newest, _) = consume_newest(&c);
    assert_eq!(newest.len(), KEYS);
    for k in 0..KEYS {
        assert_eq!(
            newest[&format!("k{k:02}")],
            value(k, ROUNDS - 1),
            "key {k}: not its newest value"
        );
    }
    c.restart(li);
}
