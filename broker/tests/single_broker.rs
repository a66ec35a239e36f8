//! A real `drmq broker` process on loopback, driven by the `drmq` CLI and by
//! raw sockets: produce, consume, restart after kill -9, bad input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::Broker;

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn consume_all(b: &Broker, topic: &str) -> Vec<serde_json::Value> {
    json_lines(&b.cli(
        &[
            "consume",
            "--topic",
            topic,
            "--from",
            "earliest",
            "--idle-timeout-ms",
            "1500",
        ],
        None,
    ))
}

#[test]
fn produce_consume_and_every_acknowledged_message_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let created = json_lines(&broker.cli(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replication",
            "1",
            "--segment-bytes",
            "65536",
        ],
        None,
    ));
    assert_eq!(created[0]["partitions"].as_array().unwrap().len(), 3);

    let input: String = (1..=300)
        .map(|i| format!("k{}:value-{i}\n", i % 7))
        .collect();
    let acks = json_lines(&broker.cli(
        &["produce", "--topic", "orders", "--key-separator", ":"],
        Some(&input),
    ));
    assert_eq!(acks.len(), 300, "one acknowledgement per line");
    let mut lines: Vec<u64> = acks.iter().map(|a| a["line"].as_u64().unwrap()).collect();
    lines.sort_unstable();
    assert_eq!(lines, (1..=300).collect::<Vec<_>>());

    let before = consume_all(&broker, "orders");
    assert_eq!(before.len(), 300);
    // Same key, same partition; offsets per partition are dense from 0.
    for rec in &before {
        let key = rec["key"].as_str().unwrap();
        let same_key_partitions: std::collections::BTreeSet<u64> = before
            .iter()
            .filter(|r| r["key"].as_str() == Some(key))
            .map(|r| r["partition"].as_u64().unwrap())
            .collect();
        assert_eq!(
            same_key_partitions.len(),
            1,
            "key {key} spread over partitions"
        );
    }

    // kill -9 and restart (on fresh ports: tests run in parallel and another
    // one may have taken the old ones): everything acknowledged is there.
    drop(broker); // kill -9 and wait
    let broker = Broker::start(&data);
    let after = consume_all(&broker, "orders");
    let values = |v: &[serde_json::Value]| {
        let mut x: Vec<String> = v
            .iter()
            .map(|r| r["value"].as_str().unwrap().to_owned())
            .collect();
        x.sort();
        x
    };
    assert_eq!(values(&after), values(&before));
    let listed = json_lines(&broker.cli(&["topic", "list"], None));
    assert_eq!(listed[0].as_array().unwrap()[0]["name"], "orders");
    let _ = &broker.data_dir;
}

#[test]
fn topic_admin_errors_are_one_line_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    broker.create_topic("t1", 1);
    for (args, needle) in [
        (
            &[
                "topic",
                "create",
                "t1",
                "--partitions",
                "1",
                "--replication",
                "1",
            ][..],
            "TopicAlreadyExists",
        ),
        (
            &[
                "topic",
                "create",
                "t2",
                "--partitions",
                "1",
                "--replication",
                "3",
            ][..],
            "InvalidReplication",
        ),
        (
            &["topic", "describe", "nope"][..],
            "UnknownTopicOrPartition",
        ),
        (
            &["consume", "--topic", "nope", "--max-messages", "1"][..],
            "UnknownTopicOrPartition",
        ),
    ] {
        let o = broker.cli(args, None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let deleted = json_lines(&broker.cli(&["topic", "delete", "t1"], None));
    assert_eq!(deleted[0]["deleted"], "t1");
    let left = || -> Vec<String> {
        std::fs::read_dir(broker.data_dir.join("partitions"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("t1-"))
            .collect()
    };
    // Before the answer the broker renames each partition directory to
    // `*.deleted` (so no live one remains at once); the janitor thread
    // removes the renamed copies asynchronously, so those are waited for,
    // with a deadline.
    let live: Vec<String> = left()
        .into_iter()
        .filter(|n| !n.ends_with(".deleted"))
        .collect();
    assert!(
        live.is_empty(),
        "deleted topic's partitions remain: {live:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut remaining = left();
    while !remaining.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        remaining = left();
    }
    assert!(
        remaining.is_empty(),
        "deleted topic's partitions remain: {remaining:?}"
    );
}

/// Asserts that the broker closed `s`: a read returns 0 (EOF) or the
/// connection is reset. Anything else fails, a read timeout above all (the
/// broker hung on the connection instead of closing it), and so does data.
fn assert_closed_by_broker(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) => {}
        Ok(n) => panic!("{what}: the broker answered {n} bytes instead of closing"),
        Err(e) => panic!(
            "{what}: the connection was not closed ({:?}: {e})",
            e.kind()
        ),
    }
}

#[test]
fn garbage_on_the_client_port_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let mut bad = TcpStream::connect(("127.0.0.1", broker.listen_port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(&[0xff; 64]).unwrap();
    // The broker closes the connection (read returns 0 or a reset), not hang.
    assert_closed_by_broker(&mut bad, "garbage");
    // An oversize length prefix is refused the same way.
    let mut big = TcpStream::connect(("127.0.0.1", broker.listen_port)).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    big.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert_closed_by_broker(&mut big, "an oversize length prefix");
    // Everyone else is still served.
    let status = json_lines(&broker.cli(&["cluster", "status"], None));
    assert_eq!(status[0]["brokers"][0]["id"], 1);
}

#[test]
fn a_corrupt_batch_is_refused_and_nothing_is_stored() {
    use wire::*;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    broker.create_topic("c", 1);
    let mut b = RecordBatchBuilder::new();
    b.push(NewRecord {
        timestamp_ms: 1,
        key: None,
        value: Some(b"x"),
        headers: &[],
    });
    let mut batch = b.finish();
    let last = batch.len() - 1;
    batch[last] ^= 0xff; // breaks the batch CRC, not the frame CRC
    let err = broker.produce_raw("c", batch).unwrap_err();
    assert!(err.to_string().contains("CorruptBatch"), "{err}");
    assert!(consume_all(&broker, "c").is_empty());
}

#[test]
fn sigterm_stops_the_broker_cleanly_and_a_restart_serves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data);
    broker.create_topic("s", 2);
    let input: String = (1..=50).map(|i| format!("m{i}\n")).collect();
    let acks = json_lines(&broker.cli(&["produce", "--topic", "s"], Some(&input)));
    assert_eq!(acks.len(), 50);
    let pid = broker.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = broker.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "broker did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    drop(broker);
    let broker = Broker::start(&data);
    assert_eq!(consume_all(&broker, "s").len(), 50);
}

#[test]
fn an_idempotent_retry_is_appended_once_even_after_a_restart() {
    use wire::*;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    broker.create_topic("idem", 1);
    let batch = |seq: i32, values: &[&str]| {
        let mut b = RecordBatchBuilder::new().producer(4242, 0, seq);
        for v in values {
            b.push(NewRecord {
                timestamp_ms: 1,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            });
        }
        b.finish()
    };
    let send = |broker: &Broker, bytes: Vec<u8>| broker.produce_raw("idem", bytes);
    let first = send(&broker, batch(0, &["a", "b"])).unwrap();
    let again = send(&broker, batch(0, &["a", "b"])).unwrap();
    let (Message::ProduceResponse(first), Message::ProduceResponse(again)) = (first, again) else {
        panic!("not produce responses")
    };
    assert!(!first.duplicate);
    assert!(again.duplicate, "the retry was appended again");
    assert_eq!(
        (again.base_offset, again.last_offset),
        (first.base_offset, first.last_offset)
    );
    // A gap in the sequence is refused.
    let gap = send(&broker, batch(5, &["x"])).unwrap_err();
    assert!(gap.to_string().contains("OutOfOrderSequence"), "{gap}");
    // After kill -9 and restart the state is rebuilt from the log.
    drop(broker);
    let broker = Broker::start(&data);
    let Message::ProduceResponse(after) = send(&broker, batch(0, &["a", "b"])).unwrap() else {
        panic!()
    };
    assert!(after.duplicate);
    let Message::ProduceResponse(next) = send(&broker, batch(2, &["c"])).unwrap() else {
        panic!()
    };
    // The restarted leader's no-op (a control record) takes one offset
    // in its new term; consumers never see it.
    assert!(
        next.base_offset > after.last_offset,
        "{next:?} after {after:?}"
    );
    let values: Vec<String> = consume_all(&broker, "idem")
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values, ["a", "b", "c"]);

    // The CLI's --idempotent produces normally.
    let acks = json_lines(&broker.cli(
        &["produce", "--topic", "idem", "--idempotent"],
        Some("d\ne\n"),
    ));
    assert_eq!(acks.len(), 2);
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_http_port_serves_counters_that_follow_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let http = broker.http_port();
    broker.create_topic("m", 1);
    let acks = json_lines(&broker.cli(&["produce", "--topic", "m"], Some("a\nb\nc\n")));
    assert_eq!(acks.len(), 3);
    // Samples arrive once a second: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = http_get(http, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        if metrics
            // Three messages after the first leader's no-op at offset 0.
            .contains("drmq_partition_high_watermark{broker=\"1\",topic=\"m\",partition=\"0\"} 4")
        {
            let produced = metrics
                .lines()
                .filter(|l| l.starts_with("drmq_produce_requests_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>();
            assert!(produced >= 1, "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters never showed the produce: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = http_get(http, "/api/status");
    assert!(status.contains("\"shards\""), "{status}");
    assert!(http_get(http, "/nope").starts_with("HTTP/1.1 404"));
}

/// The shard side of the telemetry (docs/TELEMETRY.md, per shard): records
/// in and out follow what was produced and consumed, every produce is in
/// the latency histogram, a refused request is counted under its code's
/// name, connections are counted while open, and the core's load and the
/// cluster (of one) are reported.
#[test]
fn shard_samples_count_records_errors_latency_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let http = broker.http_port();
    broker.create_topic("m", 2);
    let acks = json_lines(&broker.cli(&["produce", "--topic", "m"], Some("a\nb\nc\nd\ne\n")));
    assert_eq!(acks.len(), 5);
    assert_eq!(consume_all(&broker, "m").len(), 5);
    // A produce to a topic that does not exist, on a connection kept open.
    let mut c = client::Connection::connect(broker.listen(), Duration::from_secs(10)).unwrap();
    let refused = c.request(
        &wire::ProduceRequest {
            topic: "nope".into(),
            partition: 0,
            acks: wire::Acks::Quorum,
            timeout_ms: 5000,
            batch: produce_batch(b"x"),
        }
        .into(),
    );
    assert!(refused.is_err(), "{refused:?}");
    let shards = common::status_until(http, "the traffic", |shards| {
        common::shard_sum(shards, "records_in") == 5
            && common::shard_sum(shards, "records_out") == 5
            && common::shard_sum(shards, "connections") >= 1
            && shards
                .iter()
                .filter_map(|s| s["errors_by_code"]["UnknownTopicOrPartition"].as_u64())
                .sum::<u64>()
                >= 1
    });
    assert_eq!(shards.len(), common::SHARDS as usize);
    let produces = common::shard_sum(&shards, "produce_requests");
    assert!(
        produces >= 2,
        "at least one batch and the refused one: {shards:?}"
    );
    // Every answered produce is in the histogram (cumulative: the last
    // bucket, +Inf, holds them all); its sum is at least 1 µs each.
    let in_histogram: u64 = shards
        .iter()
        .map(|s| {
            let b = s["produce_latency_buckets"].as_array().unwrap();
            assert_eq!(b.len(), 17, "16 bounds and +Inf: {s}");
            b.last().unwrap().as_u64().unwrap()
        })
        .sum();
    assert!(
        in_histogram >= produces,
        "{in_histogram} < {produces}: {shards:?}"
    );
    assert!(common::shard_sum(&shards, "produce_latency_sum_us") >= in_histogram);
    for s in &shards {
        let busy = s["busy_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&busy), "{s}");
        assert!(s["task_queue_latency_us_max"].as_u64().is_some(), "{s}");
        assert_eq!(s["disk_full"], false, "{s}");
        assert_eq!(s["peer_lanes"], serde_json::json!([]), "no peers: {s}");
        let errors: u64 = s["errors_by_code"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(errors, s["errors"].as_u64().unwrap(), "{s}");
    }
    let zero = shards.iter().find(|s| s["shard"] == 0).unwrap();
    assert_eq!(
        zero["cluster"]["brokers"],
        serde_json::json!([{
            "id": 1,
            "client": broker.listen().to_string(),
            "http": format!("127.0.0.1:{http}"),
            "alive": true,
        }]),
        "{zero}"
    );
    assert_eq!(zero["cluster"]["controller"], 1, "{zero}");
    assert!(shards
        .iter()
        .filter(|s| s["shard"] != 0)
        .all(|s| s["cluster"].is_null()));
    // The connection closes: no client connection is left open.
    drop(c);
    common::status_until(http, "the connections closed", |shards| {
        common::shard_sum(shards, "connections") == 0
    });
}

fn produce_batch(value: &[u8]) -> Vec<u8> {
    let mut b = wire::RecordBatchBuilder::new();
    b.push(wire::NewRecord {
        value: Some(value),
        ..Default::default()
    });
    b.finish()
}

#[test]
fn retention_deletes_old_segments_and_moves_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let o = broker.cli(
        &[
            "topic",
            "create",
            "small",
            "--partitions",
            "1",
            "--replication",
            "1",
            "--segment-bytes",
            "16384",
            "--retention-bytes",
            "32768",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A batch larger than a segment is refused as too large, not as corrupt.
    let line = "x".repeat(1000);
    let big: String = (0..20).map(|_| format!("{line}\n")).collect();
    let o = broker.cli(&["produce", "--topic", "small"], Some(&big));
    assert!(String::from_utf8_lossy(&o.stderr).contains("RequestTooLarge"));
    // About 200 KiB in 1 KiB messages, 10 per batch: a dozen 16 KiB segments.
    let chunk: String = (0..10).map(|_| format!("{line}\n")).collect();
    for _ in 0..20 {
        let acks = json_lines(&broker.cli(&["produce", "--topic", "small"], Some(&chunk)));
        assert_eq!(acks.len(), 10);
    }
    // Retention runs every 5 s: poll the earliest offset, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = json_lines(&broker.cli(&["cluster", "status"], None));
        let p = status[0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["topic"] == "small")
            .unwrap()
            .clone();
        let start = p["log_start_offset"].as_u64().unwrap();
        if start > 0 {
            // What is left is within the budget plus the active segment.
            let left = consume_all(&broker, "small").len() as u64;
            // 200 messages after the first leader's no-op at offset 0.
            assert_eq!(left, 201 - start);
            assert!(left * 1000 <= 32768 + 2 * 16384, "{left} messages left");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention never moved the log start"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The retired files are unlinked by the janitor thread, off the shard.
    // Partition directories carry the topic id: `small-0.<id>`.
    let part_dir = std::fs::read_dir(broker.data_dir.join("partitions"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("small-0.")
        })
        .expect("the partition directory");
    let count = |suffix: &str| {
        std::fs::read_dir(&part_dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(".deleted") > 0 {
        assert!(
            Instant::now() < deadline,
            "retired segment files were never removed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(count(".log") <= 4, "{} segment files left", count(".log"));
}

/// Issue 10: a topic admin request on any shard but 0 deadlocked the broker
/// (the request timed out, later creates on shard 0 failed too, and SIGTERM
/// no longer stopped the process).
#[test]
fn topic_admin_through_every_shard_port_succeeds_and_sigterm_still_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"));
    // Each CLI call has a deadline of its own and is killed if it runs far
    // past it, so a hung broker fails this test in seconds, not minutes.
    let limit = Duration::from_secs(15);
    let mut problems = Vec::new();
    let mut admin = |shard: u16, args: &[&str]| {
        // Two failures tell the story; more would only wait out deadlines.
        if problems.len() >= 2 {
            return None;
        }
        let at = format!("127.0.0.1:{}", broker.listen_port + shard);
        let args = [args, &["--timeout-ms", "5000"]].concat();
        match common::cli_at_bounded(&at, &args, limit) {
            None => problems.push(format!("shard {shard}: {args:?} hung")),
            Some(o) if !o.status.success() => problems.push(format!(
                "shard {shard}: {args:?}: {}",
                String::from_utf8_lossy(&o.stderr).trim_end()
            )),
            Some(o) => return Some(o),
        }
        None
    };
    let create = |name: &str| {
        vec![
            "topic".to_owned(),
            "create".into(),
            name.into(),
            "--partitions".into(),
            "2".into(),
            "--replication".into(),
            "1".into(),
            "--segment-bytes".into(),
            "65536".into(),
        ]
    };
    let mut created = Vec::new();
    // Shard 1 first (the one that deadlocked), then every shard in turn,
    // shard 0 included, then shard 1 again.
    for (i, shard) in (1..common::SHARDS)
        .chain([0])
        .chain(1..common::SHARDS)
        .enumerate()
    {
        let name = format!("t{i}-via-shard-{shard}");
        let args = create(&name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if admin(shard, &args).is_some() {
            created.push(name);
        }
    }
    // Delete and list through a shard other than 0 as well.
    let doomed = "doomed";
    let args = create(doomed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if admin(0, &args).is_some() {
        admin(common::SHARDS - 1, &["topic", "delete", doomed]);
    }
    if let Some(o) = admin(common::SHARDS - 1, &["topic", "list"]) {
        let listed = String::from_utf8_lossy(&o.stdout);
        for name in &created {
            if !listed.contains(&format!("\"{name}\"")) {
                problems.push(format!("{name} not listed: {listed}"));
            }
        }
        if listed.contains(&format!("\"{doomed}\"")) {
            problems.push(format!("{doomed} still listed after delete: {listed}"));
        }
    }
    // Whatever happened above, SIGTERM must stop the broker cleanly.
    let pid = broker.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own, not yet reaped, child.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    match common::wait_exit(&mut broker.child, Duration::from_secs(15)) {
        None => problems.push("the broker did not stop within 15 s of SIGTERM (killed)".into()),
        Some(s) if !s.success() => problems.push(format!("exit status {s} after SIGTERM")),
        Some(_) => {}
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn produce_takes_lines_that_are_not_utf8_and_drops_none_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    assert!(broker.create_topic("raw", 1).status.success());
    let mut child = common::drmq()
        .args(["produce", "--topic", "raw", "--brokers", &broker.brokers()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"first\n\xff\xfe not utf-8\r\nlast\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let acks = json_lines(&o);
    assert_eq!(acks.len(), 3, "every line acknowledged: {acks:?}");
    let got = consume_all(&broker, "raw");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2]["value"], "last");
}
