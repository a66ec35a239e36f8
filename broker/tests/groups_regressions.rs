//! Regressions from the review of issue 14 (consumer groups). Each test
//! failed before its fix:
//! - `max_messages_commits_only_what_was_printed`: a group member commits
//!   only the records its application accepted (`drmq consume --group
//!   --max-messages N` loses no record to the group).
//! - `failed_proposals_do_not_keep_a_crashed_members_lease_alive`: a
//!   coordinator's failed proposal (here an oversized commit, refused
//!   before the log) does not renew the leases it holds; a crashed member
//!   still expires.
//! - `the_offsets_topic_cannot_be_created_with_retention_by_a_user`: the
//!   internal offsets topic is created only with its own configuration.

mod common;

use std::time::{Duration, Instant};

use client::group::{coordinator_request, OFFSETS_PARTITIONS};
use client::ClientConfig;
use common::Cluster;
use serde_json::Value;
use wire::{CommittedOffset, JoinGroupRequest, Message, OffsetCommitRequest};

fn client_cfg(c: &Cluster) -> ClientConfig {
    let mut cfg = ClientConfig::new(client::parse_brokers(&c.brokers()).unwrap());
    cfg.request_timeout = Duration::from_secs(10);
    cfg
}

fn create(c: &Cluster, topic: &str, partitions: u32) {
    c.create_topic(topic, partitions, 1, &[]);
}

fn describe(c: &Cluster, group: &str) -> Value {
    let o = c.cli(
        &["group", "describe", group, "--json", "--timeout-ms", "5000"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Finding: `drmq consume --group --max-messages N` commits records it never
/// printed. The CLI's callback skips the records after the N-th, but
/// `GroupConsumer::poll` counted every record the callback returned from as
/// delivered, and `close()` committed that. The group's committed offset
/// must be the one after the N-th printed record (the next to read), not
/// the end of the fetched batch.
#[test]
fn max_messages_commits_only_what_was_printed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 1);
    create(&c, "one", 1);
    let input: String = (0..200).map(|i| format!("v{i}\n")).collect();
    let o = c.cli(&["produce", "--topic", "one"], Some(&input));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = c.cli(
        &[
            "consume",
            "--topic",
            "one",
            "--group",
            "mm",
            "--max-messages",
            "5",
            "--timeout-ms",
            "10000",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let printed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 5);
    // The log's first offset holds the leader's first (control) entry: the
    // next record to read is the one after the last printed.
    let next = printed[4]["offset"].as_u64().unwrap() + 1;
    let d = describe(&c, "mm");
    let committed = d["partitions"][0]["committed"].as_u64();
    assert_eq!(
        committed,
        Some(next),
        "5 records printed, but the group committed {committed:?}: the rest are lost to the group"
    );
}

/// A group name of `len` bytes coordinated by the same offsets partition as
/// `group`.
fn same_coordinator(group: &str, len: usize) -> String {
    let want = wire::rules::coordinator_partition(group, OFFSETS_PARTITIONS);
    (0..10_000)
        .map(|i| {
            let s = format!("z{i}-");
            format!("{s}{}", "x".repeat(len - s.len()))
        })
        .find(|n| wire::rules::coordinator_partition(n, OFFSETS_PARTITIONS) == want)
        .unwrap()
}

/// Finding: a proposal that fails (here deterministically: a commit whose
/// records exceed the offsets topic's 4 MiB segment, `BatchTooLarge`)
/// drops the coordinator's state; the next request reloads it and gives
/// every member a fresh lease + 2 s. Anyone who repeats such a request
/// (an administrative commit on any empty group: no membership needed)
/// keeps a crashed member's lease alive forever: its partitions are never
/// reassigned. The crashed member here (lease 500 ms, never heartbeats)
/// must be gone within a few seconds regardless.
#[test]
fn failed_proposals_do_not_keep_a_crashed_members_lease_alive() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 1);
    create(&c, "t", 1);
    let cfg = client_cfg(&c);
    client::group::ensure_offsets_topic(&cfg).unwrap();
    // The crashed member: joins, never heartbeats.
    let join = JoinGroupRequest {
        group: "victim".into(),
        member_id: None,
        client_id: "crashed".into(),
        topics: vec!["t".into()],
        lease_ms: 500,
    };
    match coordinator_request(&cfg, "victim", &join.into()) {
        Ok(Message::JoinGroupResponse(r)) => assert_eq!(r.assignment.len(), 1),
        other => panic!("{other:?}"),
    }
    // An empty group on the same coordinator; a long name so each
    // per-partition record (key and value both repeat it) is ~600 bytes:
    // 10,000 of them exceed the 4 MiB segment; the request is ~250 KB.
    let other = same_coordinator("victim", 240);
    let big = OffsetCommitRequest {
        group: other.clone(),
        member_id: String::new(),
        generation: 0,
        offsets: (0..10_000)
            .map(|_| CommittedOffset {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                metadata: String::new(),
            })
            .collect(),
    };
    let msg: Message = big.into();
    let start = Instant::now();
    let mut refused = 0;
    while start.elapsed() < Duration::from_secs(6) {
        if coordinator_request(&cfg, &other, &msg).is_err() {
            refused += 1;
        }
        // Any request reloads the state (and resets every lease).
        let _ = describe(&c, "victim");
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(refused > 0, "the oversized commit was accepted");
    let d = describe(&c, "victim");
    let members = d["members"].as_array().unwrap().len();
    assert_eq!(
        members, 0,
        "a member with a 500 ms lease and no heartbeat for 6 s still holds its partitions: {d}"
    );
}

/// Finding: the internal offsets topic can be created by anyone, with any
/// configuration, before the first group client creates it (or after a
/// fresh cluster start by a client that saw only some brokers: RF is
/// min(3, brokers in *its* metadata)). With retention the coordinators'
/// replay loses committed offsets and memberships; with RF 1 there is no
/// coordinator failover. The broker must refuse (or own) the internal
/// topic's creation.
#[test]
fn the_offsets_topic_cannot_be_created_with_retention_by_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 1);
    let o = c.cli(
        &[
            "topic",
            "create",
            "__consumer_offsets",
            "--partitions",
            "8",
            "--replication",
            "1",
            "--retention-ms",
            "1000",
        ],
        None,
    );
    assert!(
        !o.status.success(),
        "a user created the internal offsets topic with 1 s retention: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("internal"),
        "refused for another reason: {err}"
    );
    // A group client still creates it, with the controller's settings.
    client::group::ensure_offsets_topic(&client_cfg(&c)).unwrap();
    let o = c.cli(&["topic", "describe", "__consumer_offsets", "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
