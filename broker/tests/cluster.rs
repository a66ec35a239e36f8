//! Three real brokers on loopback, replication factor 3: replication, a
//! leader killed while a producer runs, idle groups that keep their leaders
//! and elect new ones when a broker dies, a follower stopped for 30 s, and
//! a restart of every broker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use common::{CliProducer, Cluster};
use serde_json::Value;

fn create(c: &Cluster, topic: &str, partitions: u32) {
    c.create_topic(topic, partitions, 3, &["--segment-bytes", "1048576"]);
}

/// Every message of `topic` (value -> count), read from the cluster.
fn consume_all(c: &Cluster, topic: &str) -> BTreeMap<String, usize> {
    c.consume_counts(topic, 2000)
}

fn produce_lines(c: &Cluster, topic: &str, values: &[String]) -> Vec<Value> {
    let input = values.join("\n") + "\n";
    let o = c.cli(&["produce", "--topic", topic, "--idempotent"], Some(&input));
    assert!(
        o.status.success(),
        "produce: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn three_brokers_replicate_and_a_restart_of_all_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3);
    create(&c, "rf3", 3);
    // Leaders are spread: the controller names a different first replica
    // per partition and that replica campaigns first.
    // (A broker learns a leader from its first message, so the broker that
    // answers may need a moment: wait, bounded, for it to know all three.)
    let leaders: BTreeSet<u64> = (0..3).map(|p| c.leader("rf3", p).0).collect();
    let d = c.describe("rf3");
    assert_eq!(leaders.len(), 3, "one leader per broker: {d}");
    for p in 0..3 {
        let replicas = d["partitions"][p]["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 3, "{d}");
    }
    let values: Vec<String> = (0..300).map(|i| format!("m-{i}")).collect();
    let acks = produce_lines(&c, "rf3", &values);
    assert_eq!(acks.len(), values.len());
    // Every replica has every entry (the leader's view of its followers).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = c.cli(&["cluster", "status"], None);
        let s: Value = serde_json::from_slice(&o.stdout).unwrap();
        let parts = s["partitions"].as_array().unwrap();
        let rf3: Vec<&Value> = parts.iter().filter(|p| p["topic"] == "rf3").collect();
        let caught_up = rf3.len() == 3
            && rf3.iter().all(|p| {
                p["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["lag"] == 0 && r["match_index"] == p["commit_index"])
            });
        if caught_up {
            assert!(s["brokers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["alive"] == true));
            break;
        }
        assert!(Instant::now() < deadline, "replicas did not catch up: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM of partition 0's leader: it hands leadership over, exits 0,
    // and comes back as a follower.
    let (leader, term) = c.leader("rf3", 0);
    c.terminate(leader as usize - 1);
    let (new_leader, new_term) = c.leader("rf3", 0);
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    c.restart(leader as usize - 1);
    // kill -9 every broker, then start them all again.
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    let seen = consume_all(&c, "rf3");
    for v in &values {
        assert_eq!(seen.get(v), Some(&1), "{v} after restarting every broker");
    }
    assert_eq!(seen.len(), values.len());
}

#[test]
fn killing_the_leader_while_producing_loses_no_acknowledged_message_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3);
    create(&c, "failover", 1);
    let (leader, term) = c.leader("failover", 0);
    let (producer, mut stdin) = CliProducer::start(&c.brokers(), "failover", "20000");
    // 3,000 lines over ~6 s; the leader dies after ~2 s.
    let total = 3_000;
    for i in 0..total {
        writeln!(stdin, "v-{i}").unwrap();
        if i % 50 == 49 {
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        if i == 1_000 {
            c.kill(leader as usize - 1);
        }
    }
    drop(stdin);
    let (acks, err) = producer.finish();
    assert_eq!(acks.len(), total, "every line acknowledged: {err}");
    let (new_leader, new_term) = c.leader("failover", 0);
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    // Bring the old leader back: it rejoins as a follower.
    c.restart(leader as usize - 1);
    let seen = consume_all(&c, "failover");
    for a in &acks {
        let line = a["line"].as_u64().unwrap();
        let v = format!("v-{}", line - 1);
        assert_eq!(
            seen.get(&v),
            Some(&1),
            "acknowledged {v} must be there once"
        );
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "no duplicates with the idempotent producer"
    );
    // Offsets the producer was given are the ones consumers see.
    let offsets: BTreeSet<u64> = acks.iter().map(|a| a["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets.len(), total, "distinct offsets");
}

#[test]
fn idle_groups_keep_their_leaders_and_elect_new_ones_when_a_leader_broker_dies() {
    let dir = tempfile::tempdir().unwrap();
    // Leader rebalancing off: it would move leaders (a new term) if the
    // first elections left them uneven, which is not what this test is about.
    let mut c = Cluster::start_with(dir.path(), 3, &["--leader-balance-interval-ms", "0"]);
    let partitions = 12;
    create(&c, "idle", partitions as u32);
    let placement =
        |c: &Cluster| -> Vec<(u64, u64)> { (0..partitions).map(|p| c.leader("idle", p)).collect() };
    let before = placement(&c);
    // No traffic for two election timeouts: the heartbeats alone (sent
    // without the drivers, held and coalesced per peer) keep every leader.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(placement(&c), before, "an idle group held an election");
    // The broker leading partition 0 dies: the followers of every group it
    // led, idle all along, elect new leaders among themselves.
    let dead = before[0].0;
    let led: Vec<usize> = (0..partitions).filter(|&p| before[p].0 == dead).collect();
    c.kill(dead as usize - 1);
    let started = Instant::now();
    let after = placement(&c);
    for &p in &led {
        assert_ne!(after[p].0, dead, "partition {p}");
        assert!(after[p].1 > before[p].1, "partition {p}: a new term");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "new leaders took {:?}",
        started.elapsed()
    );
    let acks = produce_lines(&c, "idle", &["after".to_owned()]);
    assert_eq!(acks.len(), 1);
}

#[test]
fn a_follower_stopped_for_30_s_neither_causes_an_election_nor_stalls_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    create(&c, "slow", 1);
    let (leader, term) = c.leader("slow", 0);
    let follower = (1..=3u64).find(|&b| b != leader).unwrap();
    c.pause(follower as usize - 1);
    let started = Instant::now();
    let mut acked = 0;
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let values: Vec<String> = (0..50).map(|i| format!("r{round}-{i}")).collect();
        let t = Instant::now();
        acked += produce_lines(&c, "slow", &values).len();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the leader stalled behind the stopped follower"
        );
        round += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(round >= 10, "only {round} rounds in 30 s");
    let (leader_after, term_after) = c.leader("slow", 0);
    assert_eq!(
        (leader_after, term_after),
        (leader, term),
        "no election among the healthy brokers"
    );
    c.resume(follower as usize - 1);
    // The follower catches up once it runs again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = c.cli(&["cluster", "status"], None);
        let s: Value = serde_json::from_slice(&o.stdout).unwrap();
        let p = s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["topic"] == "slow")
            .cloned()
            .unwrap();
        let lagging = p["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["lag"] != 0);
        if !lagging {
            break;
        }
        assert!(Instant::now() < deadline, "follower did not catch up: {p}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = consume_all(&c, "slow");
    assert_eq!(seen.len(), acked);
}

/// Reads until the broker closes the connection (or 10 s pass).
fn closed_by_peer(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // the listener's challenge
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            }
        }
    }
}

#[test]
fn garbage_and_forged_hellos_on_the_peer_port_are_refused_before_raft() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    create(&c, "guarded", 1);
    let peer_port = c.bases[0] + common::SHARDS;
    // Garbage: not even a frame.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", peer_port)).unwrap();
    s.write_all(&[0xAB; 512]).unwrap();
    assert!(closed_by_peer(&mut s), "garbage must close the connection");
    // A well-formed hello from a listed node, with a forged MAC.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", peer_port)).unwrap();
    let hello: wire::Message = wire::PeerHello {
        cluster_id: 0,
        node_id: 2,
        shard: 0,
        nonce: 1,
        auth_tag: vec![0; 32],
        endpoint: "127.0.0.1:1".into(),
        http: "127.0.0.1:2".into(),
    }
    .into();
    s.write_all(&hello.encode(1, wire::FrameLimits::default()).unwrap())
        .unwrap();
    assert!(closed_by_peer(&mut s), "a forged hello must be refused");
    // A Raft message without any hello.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", peer_port)).unwrap();
    let vote: wire::Message = wire::VoteRequest {
        group: 0,
        term: 1_000_000,
        candidate: 2,
        last_log_index: 1 << 40,
        last_log_term: 1 << 40,
        pre_vote: false,
        leadership_transfer: false,
    }
    .into();
    s.write_all(&vote.encode(1, wire::FrameLimits::default()).unwrap())
        .unwrap();
    assert!(
        closed_by_peer(&mut s),
        "an unauthenticated vote must be refused"
    );
    // Nothing reached Raft: the controller and the partition keep their
    // leaders and terms, and the cluster still takes writes.
    let (leader, term) = c.leader("guarded", 0);
    let acks = produce_lines(&c, "guarded", &["still".to_string()]);
    assert_eq!(acks.len(), 1);
    assert_eq!(c.leader("guarded", 0), (leader, term));
    let o = c.cli(&["cluster", "status"], None);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["controller"].as_u64().is_some(), "{s}");
}

/// The client endpoint of the leader of `topic`-0, waiting (bounded) for one.
fn leader_endpoint(c: &Cluster, topic: &str) -> std::net::SocketAddr {
    let mut cfg = client::ClientConfig::new(client::parse_brokers(&c.brokers()).unwrap());
    cfg.connect_timeout = Duration::from_secs(10);
    client::routes(&cfg, topic).unwrap()[0]
}

fn one_record_batch(value: &str, producer: Option<i64>) -> Vec<u8> {
    let mut b = match producer {
        Some(id) => wire::RecordBatchBuilder::new().producer(id, 0, 0),
        None => wire::RecordBatchBuilder::new(),
    };
    b.push(wire::NewRecord {
        timestamp_ms: 1,
        key: None,
        value: Some(value.as_bytes()),
        headers: &[],
    });
    b.finish()
}

fn produce_req(topic: &str, acks: wire::Acks, timeout_ms: u32, batch: Vec<u8>) -> wire::Message {
    wire::ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks,
        timeout_ms,
        batch,
    }
    .into()
}

/// Issue 10: `acks=quorum` must not be acknowledged while only the leader
/// has the entry; `acks=leader` is.
#[test]
fn acks_quorum_waits_for_a_follower_and_acks_leader_does_not() {
    use client::Connection;
    use wire::{Acks, FetchRequest, Message};
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    create(&c, "q", 1);
    let (leader, _) = c.leader("q", 0);
    let addr = leader_endpoint(&c, "q");
    let mut conn = Connection::connect(addr, Duration::from_secs(10)).unwrap();
    // With every replica up, quorum acks come back.
    let r = conn.request(&produce_req(
        "q",
        Acks::Quorum,
        5000,
        one_record_batch("before", None),
    ));
    assert!(matches!(r, Ok(Message::ProduceResponse(_))), "{r:?}");
    let fetch = |conn: &mut Connection, offset: u64| {
        conn.request(
            &FetchRequest {
                topic: "q".into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
                min_bytes: 1,
                max_wait_ms: 0,
            }
            .into(),
        )
    };
    let Ok(Message::FetchResponse(f)) = fetch(&mut conn, 0) else {
        panic!("fetch from the leader failed")
    };
    let hw = f.high_watermark;

    // Both followers stopped: only the leader can have new entries. (The
    // leader steps down once it has not heard from a quorum for an
    // election timeout, 1-2 s from now; acks=leader goes first.)
    let followers: Vec<usize> = (0..3).filter(|&i| i as u64 + 1 != leader).collect();
    let stopped = c.stop(&followers);
    let r = conn.request(&produce_req(
        "q",
        Acks::Leader,
        2000,
        one_record_batch("leader-ack", None),
    ));
    assert!(
        matches!(r, Ok(Message::ProduceResponse(_))),
        "acks=leader with the followers stopped: {r:?}"
    );
    let producer_id = client::random_producer_id();
    let quorum_batch = one_record_batch("quorum-ack", Some(producer_id));
    let started = Instant::now();
    let r = conn.request(&produce_req("q", Acks::Quorum, 1500, quorum_batch.clone()));
    match &r {
        Err(client::ClientError::Broker { code, .. }) => {
            eprintln!("acks=quorum refused after {:?}: {code}", started.elapsed())
        }
        other => panic!(
            "acks=quorum answered while only the leader had the entry: {other:?} (after {:?})",
            started.elapsed()
        ),
    }
    // A consumer sees nothing new: the high watermark has not moved (the
    // old leader may have stepped down already; then it serves nothing).
    match fetch(&mut conn, hw) {
        Ok(Message::FetchResponse(f)) => {
            assert_eq!(f.high_watermark, hw, "committed with the followers stopped");
            assert!(
                wire::batches(&f.batches).all(|b| b.unwrap().is_control()),
                "records visible with the followers stopped"
            );
        }
        Ok(other) => panic!("unexpected {other:?}"),
        Err(client::ClientError::Broker { .. }) => {}
        Err(e) => panic!("fetch: {e}"),
    }
    // The followers come back: the message commits. A retry of the same
    // idempotent batch succeeds (as a duplicate if the first one committed).
    stopped.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let addr = leader_endpoint(&c, "q");
        let r = Connection::connect(addr, Duration::from_secs(10)).and_then(|mut conn| {
            conn.request(&produce_req("q", Acks::Quorum, 5000, quorum_batch.clone()))
        });
        match r {
            Ok(Message::ProduceResponse(_)) => break,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => assert!(
                Instant::now() < deadline,
                "the retry never succeeded after SIGCONT: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = consume_all(&c, "q");
    assert_eq!(seen.get("before"), Some(&1), "{seen:?}");
    assert_eq!(seen.get("quorum-ack"), Some(&1), "{seen:?}");
    // acks=leader may be lost on a leader change, but never duplicated.
    assert!(seen.get("leader-ack").is_none_or(|&n| n == 1), "{seen:?}");
}

/// Issue 10: creating a topic with ~470+ partitions stopped the controller
/// ("batch of N bytes exceeds the segment size of 4096 bytes"): it must keep
/// working, and the big topic must be there in full.
#[test]
fn a_topic_with_1024_partitions_leaves_the_controller_working() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    let create_small_segments = |topic: &str, partitions: &str| {
        let started = Instant::now();
        let o = common::cli_at_bounded(
            &c.brokers(),
            &[
                "topic",
                "create",
                topic,
                "--partitions",
                partitions,
                "--replication",
                "3",
                // Segments are preallocated: 64 KiB x 1024 x 3 replicas.
                "--segment-bytes",
                "65536",
                "--timeout-ms",
                "30000",
            ],
            Duration::from_secs(90),
        )
        .unwrap_or_else(|| panic!("create {topic} hung"));
        eprintln!("create {topic}: {:?}", started.elapsed());
        assert!(
            o.status.success(),
            "create {topic}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    create_small_segments("big", "1024");
    // The controller still takes requests.
    create_small_segments("after-big", "1");
    let d = c.describe("big");
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1024);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partition"], i as u64);
        assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{p}");
    }
    let o = c.cli(&["topic", "list"], None);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.contains("\"after-big\""), "{listed}");
    // Every partition gets a leader (bounded wait: the answering broker
    // learns leaders as their first messages arrive).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = c.describe("big");
        let leaderless: Vec<u64> = d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["leader"].is_null())
            .map(|p| p["partition"].as_u64().unwrap())
            .collect();
        if leaderless.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} partitions without a leader: {leaderless:?}",
            leaderless.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Issue 10, the cause of the DuplicateSequence failures after a leader
/// change with small segments: a new leader must still recognise a retry of
/// any of an idempotent producer's recent batches (the last 64), also those
/// in segments older than its active one, and answer it as a duplicate with
/// the original offsets.
#[test]
fn a_new_leader_answers_a_retry_of_a_batch_in_an_older_segment_as_a_duplicate() {
    use client::{ClientError, Connection};
    use wire::{Acks, Message};
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3);
    let o = c.cli(
        &[
            "topic",
            "create",
            "idem",
            "--partitions",
            "1",
            "--replication",
            "3",
            "--segment-bytes",
            "16384",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (leader, _) = c.leader("idem", 0);
    let producer_id = client::random_producer_id();
    // 12 batches of 4 records of ~1 KB: ~48 KB, three or more 16 KiB
    // segments, far fewer batches than the 64 remembered.
    let batches: Vec<(Vec<u8>, Vec<String>)> = (0..12)
        .map(|i| {
            let values: Vec<String> = (0..4)
                .map(|j| format!("b{i}-r{j}-{}", "x".repeat(1000)))
                .collect();
            let mut b = wire::RecordBatchBuilder::new().producer(producer_id, 0, i * 4);
            for v in &values {
                b.push(wire::NewRecord {
                    timestamp_ms: 1,
                    key: None,
                    value: Some(v.as_bytes()),
                    headers: &[],
                });
            }
            (b.finish(), values)
        })
        .collect();
    let mut conn =
        Connection::connect(leader_endpoint(&c, "idem"), Duration::from_secs(10)).unwrap();
    let mut offsets = Vec::new();
    for (batch, _) in &batches {
        match conn.request(&produce_req("idem", Acks::Quorum, 5000, batch.clone())) {
            Ok(Message::ProduceResponse(r)) => {
                assert!(!r.duplicate, "{r:?}");
                offsets.push((r.base_offset, r.last_offset));
            }
            other => panic!("produce: {other:?}"),
        }
    }
    drop(conn);
    // kill -9 of the leader: a follower takes over in a new term.
    c.kill(leader as usize - 1);
    let (new_leader, _) = c.leader("idem", 0);
    assert_ne!(new_leader, leader);
    // The producer retries every batch (as if no acknowledgement had come
    // back): each is a duplicate with its original offsets.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, (batch, _)) in batches.iter().enumerate() {
        loop {
            let r = Connection::connect(leader_endpoint(&c, "idem"), Duration::from_secs(10))
                .and_then(|mut conn| {
                    conn.request(&produce_req("idem", Acks::Quorum, 5000, batch.clone()))
                });
            match r {
                Ok(Message::ProduceResponse(r)) => {
                    assert!(r.duplicate, "retry of batch {i} appended again: {r:?}");
                    assert_eq!((r.base_offset, r.last_offset), offsets[i], "batch {i}");
                    break;
                }
                Err(ClientError::Broker { code, .. })
                    if code.is_retryable() && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => panic!("retry of batch {i} (offsets {:?}): {other:?}", offsets[i]),
            }
        }
    }
    let seen = consume_all(&c, "idem");
    for (_, values) in &batches {
        for v in values {
            assert_eq!(seen.get(v), Some(&1), "{}", &v[..8]);
        }
    }
    assert_eq!(seen.len(), 48);
}

/// Telemetry of a cluster (docs/TELEMETRY.md): every broker's shard 0
/// lists the three brokers with their client and telemetry addresses (the
/// peers' learnt through the authenticated peer hello) as alive, and every
/// shard's lanes to both peers are up.
#[test]
fn each_broker_reports_every_broker_with_its_addresses_and_lanes_up() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    create(&c, "watched", 2);
    for i in 0..3 {
        let shards = common::status_until(c.http_port(i), "the cluster", |shards| {
            let zero = shards.iter().find(|s| s["shard"] == 0);
            let brokers = zero.and_then(|z| z["cluster"]["brokers"].as_array().cloned());
            let lanes_up = shards.iter().all(|s| {
                s["peer_lanes"]
                    .as_array()
                    .is_some_and(|l| l.len() == 4 && l.iter().all(|l| l["up"] == true))
            });
            shards.len() == common::SHARDS as usize
                && lanes_up
                && brokers.is_some_and(|b| {
                    b.len() == 3
                        && b.iter()
                            .all(|b| b["alive"] == true && b["http"].is_string())
                })
        });
        let zero = shards.iter().find(|s| s["shard"] == 0).unwrap();
        let brokers = zero["cluster"]["brokers"].as_array().unwrap();
        for (j, b) in brokers.iter().enumerate() {
            assert_eq!(b["id"], j as u64 + 1, "sorted by id: {zero}");
            assert_eq!(
                b["client"],
                format!("127.0.0.1:{}", c.bases[j]),
                "broker {}'s view of {}: {zero}",
                i + 1,
                j + 1
            );
            assert_eq!(
                b["http"],
                format!("127.0.0.1:{}", c.http_port(j)),
                "broker {}'s view of {}: {zero}",
                i + 1,
                j + 1
            );
        }
        assert!(zero["cluster"]["controller"].as_u64().is_some(), "{zero}");
        for s in &shards {
            let lanes: Vec<(u64, &str)> = s["peer_lanes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| (l["peer"].as_u64().unwrap(), l["lane"].as_str().unwrap()))
                .collect();
            let peers: Vec<u64> = (1..=3).filter(|&p| p != i as u64 + 1).collect();
            let want: Vec<(u64, &str)> = peers
                .iter()
                .flat_map(|&p| [(p, "bulk"), (p, "control")])
                .collect();
            assert_eq!(lanes, want, "sorted by peer, then lane: {s}");
        }
    }
}
