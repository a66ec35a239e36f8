//! Catch-up by snapshot with real brokers: a follower stopped (or killed)
//! while the leader writes several times its retention comes back below
//! the leader's log start, is sent an archive of the leader's segments on
//! a connection of its own, installs it in place and replicates again; it
//! then leads and serves every acknowledged message. Transfers interrupted
//! by a kill -9 of either side resume or start over cleanly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{http_json, Cluster};
use serde_json::Value;

/// A topic with 256 KiB segments and 1 MiB retention.
fn create(c: &Cluster, topic: &str) {
    create_with(c, topic, &["--retention-bytes", "1048576"]);
}

/// A topic with 256 KiB segments and more flags.
fn create_with(c: &Cluster, topic: &str, more: &[&str]) {
    c.create_topic(
        topic,
        1,
        3,
        &[&["--segment-bytes", "262144"][..], more].concat(),
    );
}

/// Produces `n` values of about 1 KiB; returns the acknowledged values.
fn produce(c: &Cluster, topic: &str, tag: &str, n: usize) -> Vec<String> {
    let pad = "x".repeat(1000);
    let values: Vec<String> = (0..n).map(|i| format!("{tag}-{i:06}-{pad}")).collect();
    let o = c.cli(
        &[
            "produce",
            "--topic",
            topic,
            "--idempotent",
            "--batch-bytes",
            "65536",
        ],
        Some(&(values.join("\n") + "\n")),
    );
    assert!(
        o.status.success(),
        "produce: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let acked = String::from_utf8(o.stdout).unwrap().lines().count();
    assert_eq!(acked, n, "every line is acknowledged");
    values
}

/// The partition's entry in `cluster status` as its leader reports it
/// (`Null` while it has none: a broker without a leader reports its own
/// view, which knows no follower's progress).
fn status(c: &Cluster, topic: &str) -> Value {
    let o = c.cli(&["cluster", "status", "--json"], None);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    s["partitions"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["topic"] == topic && p["leader"].is_u64())
                .cloned()
        })
        .unwrap_or(Value::Null)
}

fn replica(p: &Value, broker: u64) -> &Value {
    p["replicas"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["broker"] == broker))
        .unwrap_or(&Value::Null)
}

/// Waits (bounded) until `broker`'s match index reaches the leader's commit
/// index, the leader still leading; returns the last status seen.
fn wait_caught_up(c: &Cluster, topic: &str, broker: u64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let p = status(c, topic);
        let r = replica(&p, broker);
        if r["lag"] == 0 && r["match_index"].as_u64() == p["commit_index"].as_u64() {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "broker {broker} did not catch up: {p}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A broker's total of a shard counter, from its telemetry.
fn counter(c: &Cluster, i: usize, field: &str) -> u64 {
    http_json(c.http_port(i), "/api/status")
        .and_then(|s| s["shards"].as_array().cloned())
        .map(|shards| shards.iter().filter_map(|s| s[field].as_u64()).sum())
        .unwrap_or(0)
}

/// Whether a broker's counter reaches `min` (bounded wait: telemetry
/// samples come once a second).
fn counter_reaches(c: &Cluster, i: usize, field: &str, min: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if counter(c, i, field) >= min {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every value of `topic` with its count, read from the cluster.
fn consume_all(c: &Cluster, topic: &str) -> BTreeMap<String, usize> {
    c.consume_counts(topic, 3000)
}

/// Waits (bounded) until the leader's log start passes `offset`.
fn wait_log_start_past(c: &Cluster, topic: &str, offset: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = status(c, topic);
        if let Some(s) = p["log_start_offset"].as_u64().filter(|&s| s > offset) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "retention never moved the log start past {offset}: {p}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// These tests each run a cluster under load: one at a time, so a loaded
/// 2-core machine does not turn them into election tests.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Absence {
    Stopped,
    Killed,
}

/// The follower is away while the leader writes several retention sizes;
/// back, it catches up by snapshot, then leads, and every acknowledged
/// message is read from it exactly once.
fn follower_away_comes_back_by_snapshot_and_leads(absence: Absence) {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3);
    create(&c, "snap");
    let mut acked = produce(&c, "snap", "before", 200);
    let (first_leader, _) = c.leader("snap", 0);
    let follower = (1..=3u64).find(|&b| b != first_leader).unwrap();
    wait_caught_up(&c, "snap", follower, Duration::from_secs(20));
    let fi = follower as usize - 1;
    match absence {
        Absence::Stopped => c.pause(fi),
        Absence::Killed => c.kill(fi),
    }
    // Many times the 1 MiB retention, in 256 KiB segments, and more than
    // the sockets to the away follower can buffer (else a stopped follower
    // would find it all in its socket when it resumes).
    for round in 0..8 {
        acked.extend(produce(&c, "snap", &format!("away{round}"), 4000));
    }
    // The follower holds the first 200 records (offsets, plus a few
    // control records): the log start must pass them.
    let start = wait_log_start_past(&c, "snap", 260);
    // Counted from zero: a stopped broker does not answer before, a
    // restarted one starts again.
    let installs_before = 0;
    match absence {
        Absence::Stopped => c.resume(fi),
        Absence::Killed => c.restart(fi),
    }
    let p = wait_caught_up(&c, "snap", follower, Duration::from_secs(60));
    assert!(
        p["log_start_offset"].as_u64().unwrap() >= start,
        "retention stays bounded by the leader's policy"
    );
    assert!(
        counter_reaches(&c, fi, "snapshot_installs", installs_before + 1),
        "the follower came back by snapshot: {p} (log start was {start})"
    );
    // The leader now (an election under load may have moved it).
    let (leader, _) = c.leader("snap", 0);
    let other = (1..=3u64).find(|&b| b != leader && b != follower).unwrap();
    let (oi, li) = (other as usize - 1, leader as usize - 1);
    assert!(counter_reaches(&c, li, "snapshot_transfers_finished", 1));
    // It replicates again after the install.
    acked.extend(produce(&c, "snap", "after", 100));
    wait_caught_up(&c, "snap", follower, Duration::from_secs(20));
    // Leadership moves to it: the other follower is down (so it is the
    // only replica as far along), then the leader stops gracefully.
    c.kill(oi);
    acked.extend(produce(&c, "snap", "last", 20));
    c.terminate(li);
    c.restart(oi);
    let (new_leader, _) = c.leader("snap", 0);
    assert_eq!(
        new_leader, follower,
        "leadership moved to the caught-up follower"
    );
    let seen = consume_all(&c, "snap");
    let retained: Vec<&String> = acked.iter().filter(|v| seen.contains_key(*v)).collect();
    // Everything above the log start is there once; what retention removed
    // is the oldest prefix only.
    assert!(seen.values().all(|&n| n == 1), "duplicates: {absence:?}");
    let first_kept = acked.iter().position(|v| seen.contains_key(v)).unwrap();
    assert_eq!(
        retained.len(),
        acked.len() - first_kept,
        "{absence:?}: a hole among the retained messages"
    );
    assert!(seen.contains_key(acked.last().unwrap()));
    c.restart(li);
}

#[test]
fn a_stopped_follower_below_the_log_start_catches_up_by_snapshot_and_then_leads() {
    follower_away_comes_back_by_snapshot_and_leads(Absence::Stopped);
}

#[test]
fn a_killed_follower_below_the_log_start_catches_up_by_snapshot_and_then_leads() {
    follower_away_comes_back_by_snapshot_and_leads(Absence::Killed);
}

/// Waits (bounded) until the leader reports a snapshot transfer to `broker`
/// with more than `beyond` bytes sent; returns them.
fn wait_transfer_under_way(c: &Cluster, topic: &str, broker: u64, beyond: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = status(c, topic);
        let sent = replica(&p, broker)["snapshot"]["bytes_sent"].as_u64();
        if let Some(sent) = sent.filter(|&s| s > beyond) {
            return sent;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot transfer to broker {broker}: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_transfer_interrupted_by_kill_9_of_either_side_resumes_or_restarts_cleanly() {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    // 1 MB/s: an archive of a few MiB takes seconds, time to kill.
    let mut c = Cluster::start_with(dir.path(), 3, &["--snapshot-rate-mb", "1"]);
    create_with(&c, "cut", &["--retention-bytes", "6291456"]);
    let mut acked = produce(&c, "cut", "before", 200);
    let (first_leader, _) = c.leader("cut", 0);
    let follower = (1..=3u64).find(|&b| b != first_leader).unwrap();
    let fi = follower as usize - 1;
    wait_caught_up(&c, "cut", follower, Duration::from_secs(20));
    c.kill(fi);
    for round in 0..8 {
        acked.extend(produce(&c, "cut", &format!("away{round}"), 4000));
    }
    wait_log_start_past(&c, "cut", 260);

    // The follower is killed mid-transfer, and resumes from what it staged.
    c.restart(fi);
    let sent = wait_transfer_under_way(&c, "cut", follower, 0);
    c.kill(fi);
    c.restart(fi);
    // The resumed transfer runs; now the leader is killed mid-transfer: a
    // new one (never this follower, its log is too short) sends its own
    // archive, and the follower starts over.
    let (leader, _) = c.leader("cut", 0);
    assert_ne!(leader, follower);
    // Past what the first run sent: this is the resumed transfer.
    wait_transfer_under_way(&c, "cut", follower, sent);
    c.kill(leader as usize - 1);
    assert!(
        counter_reaches(&c, fi, "snapshot_transfers_resumed", 1),
        "the restarted follower resumed its staged bytes (the first run had sent {sent})"
    );
    let p = wait_caught_up(&c, "cut", follower, Duration::from_secs(90));
    assert_ne!(p["leader"].as_u64(), Some(leader), "{p}");
    assert!(counter_reaches(&c, fi, "snapshot_installs", 1));
    c.restart(leader as usize - 1);
    acked.extend(produce(&c, "cut", "after", 100));
    wait_caught_up(&c, "cut", follower, Duration::from_secs(30));

    let seen = consume_all(&c, "cut");
    assert!(seen.values().all(|&n| n == 1), "duplicates");
    let first_kept = acked.iter().position(|v| seen.contains_key(v)).unwrap();
    assert_eq!(
        seen.len(),
        acked.len() - first_kept,
        "a hole among the retained messages"
    );
    assert!(seen.contains_key(acked.last().unwrap()));
    // The follower's partition is whole: no staging directory was left in
    // place of it, and it serves what it holds when it leads.
    let staged: Vec<_> = std::fs::read_dir(c.dirs[fi].join("partitions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".staging"))
        .collect();
    assert!(staged.is_empty(), "left behind: {staged:?}");
}

#[test]
fn a_follower_far_behind_gets_a_snapshot_although_the_leader_still_holds_its_entries() {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    // Replaying more than 1 MiB of sealed log costs more than copying it.
    let mut c = Cluster::start_with(dir.path(), 3, &["--snapshot-catch-up-mib", "1"]);
    create_with(&c, "far", &[]); // no retention: every entry stays
    let mut acked = produce(&c, "far", "before", 200);
    let (first_leader, _) = c.leader("far", 0);
    let follower = (1..=3u64).find(|&b| b != first_leader).unwrap();
    let fi = follower as usize - 1;
    wait_caught_up(&c, "far", follower, Duration::from_secs(20));
    c.kill(fi);
    for round in 0..8 {
        acked.extend(produce(&c, "far", &format!("away{round}"), 4000));
    }
    let p = status(&c, "far");
    assert_eq!(p["log_start_offset"], 0, "nothing was removed: {p}");
    c.restart(fi);
    wait_caught_up(&c, "far", follower, Duration::from_secs(60));
    assert!(
        counter_reaches(&c, fi, "snapshot_installs", 1),
        "caught up by snapshot, not by replaying 32 MB"
    );
    // Then it leads, and serves everything.
    let (leader, _) = c.leader("far", 0);
    let other = (1..=3u64).find(|&b| b != leader && b != follower).unwrap();
    c.kill(other as usize - 1);
    acked.extend(produce(&c, "far", "last", 20));
    c.terminate(leader as usize - 1);
    c.restart(other as usize - 1);
    assert_eq!(c.leader("far", 0).0, follower);
    let seen = consume_all(&c, "far");
    assert_eq!(seen.len(), acked.len(), "every message, once");
    assert!(seen.values().all(|&n| n == 1));
    c.restart(leader as usize - 1);
}
