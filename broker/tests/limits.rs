//! Limits a broker enforces on its client listeners, against a real
//! `drmq broker` process: connections per listener and request bytes in
//! flight per connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;
use common::Broker;
use wire::{ErrorCode, FrameDecoder, FrameLimits, Message, MetadataRequest};

fn metadata_frame(corr: u64) -> Vec<u8> {
    Message::from(MetadataRequest { topics: None })
        .encode(corr, FrameLimits::default())
        .unwrap()
        .to_vec()
}

/// Sends a metadata request and reads one answer (or EOF: `None`).
fn ask(s: &mut TcpStream, corr: u64) -> Option<Message> {
    s.write_all(&metadata_frame(corr)).ok()?;
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = decoder.next_frame().unwrap() {
            assert_eq!(f.header.correlation_id, corr);
            return Some(f.message().unwrap());
        }
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) => panic!("no answer: {e}"),
        }
    }
}

fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(b.listen()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn connections_past_the_limit_get_a_clear_error_and_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_with(&dir.path().join("data"), &["--max-connections", "3"]);
    // Three served connections (each answered, so each is accepted; the
    // start-up probes may still count for a moment, so retry, bounded).
    let mut held: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 3 {
        let mut s = connect(&b);
        match ask(&mut s, 1) {
            Some(Message::MetadataResponse(_)) => held.push(s),
            other => {
                assert!(Instant::now() < deadline, "not served: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // The fourth is answered with the reason, then closed.
    let mut extra = connect(&b);
    match ask(&mut extra, 77) {
        Some(Message::ErrorResponse(e)) => {
            assert_eq!(e.error_code(), ErrorCode::TooManyConnections);
            assert!(e.message.contains("at most 3"), "{}", e.message);
        }
        other => panic!("expected TooManyConnections, got {other:?}"),
    }
    let mut rest = Vec::new();
    assert_eq!(extra.read_to_end(&mut rest).unwrap(), 0, "then closed");
    // The served connections still work; once one closes, a new one is served.
    assert!(matches!(
        ask(&mut held[0], 9),
        Some(Message::MetadataResponse(_))
    ));
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(&b);
        match ask(&mut s, 10) {
            Some(Message::MetadataResponse(_)) => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("a freed slot is never served again: {other:?}"),
        }
    }
    // The same limit is a config error when zero.
    let o = common::drmq()
        .args([
            "broker",
            "--id",
            "1",
            "--data-dir",
            "x",
            "--listen",
            "127.0.0.1:1",
        ])
        .args(["--peer-listen", "127.0.0.1:2", "--http", "127.0.0.1:3"])
        .args(["--max-connections", "0", "--check-config"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("max-connections"));
}

/// The broker's resident anonymous memory in bytes (Linux `/proc`; the
/// mapped segments are file pages, not counted).
fn rss_anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_client_that_never_reads_its_answers_holds_at_most_the_in_flight_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_with(
        &dir.path().join("data"),
        &["--max-inflight-bytes", &(8u64 << 20).to_string()],
    );
    let o = b.cli(
        &[
            "topic",
            "create",
            "big",
            "--partitions",
            "1",
            "--replication",
            "1",
            "--segment-bytes",
            "16777216",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let value = vec![7u8; 256 << 10];
    for _ in 0..12 {
        let mut batch = wire::RecordBatchBuilder::new();
        batch.push(wire::NewRecord {
            value: Some(&value),
            ..Default::default()
        });
        b.produce_raw("big", batch.finish()).unwrap();
    }
    let shard = {
        let o = b.cli(&["topic", "describe", "big"], None);
        let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        meta["partitions"][0]["shard"].as_u64().unwrap() as u16
    };
    let pid = b.child.id();
    let before = rss_anon_bytes(pid);
    // 100 fetches of the same 3 MiB, sent at once, never reading an
    // answer: a broker that queued every answer would hold 300 MiB.
    let mut s = TcpStream::connect(("127.0.0.1", b.listen_port + shard)).unwrap();
    let mut burst = Vec::new();
    for corr in 0..100u64 {
        let fetch = Message::from(wire::FetchRequest {
            topic: "big".into(),
            partition: 0,
            offset: 0,
            max_bytes: 3 << 20,
            min_bytes: 1,
            max_wait_ms: 0,
        });
        burst.extend_from_slice(&fetch.encode(corr, FrameLimits::default()).unwrap());
    }
    s.write_all(&burst).unwrap();
    // Bounded: watch the broker's anonymous memory for 3 s.
    let mut peak = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss_anon_bytes(pid).saturating_sub(before));
    }
    assert!(
        peak < 128 << 20,
        "the broker grew by {} MiB queueing answers nobody reads",
        peak >> 20
    );
    // It still serves: reading now drains every answer.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut buf = vec![0u8; 1 << 20];
    let mut answers = 0;
    while answers < 100 {
        while let Some(f) = decoder.next_frame().unwrap() {
            assert!(matches!(f.message().unwrap(), Message::FetchResponse(_)));
            answers += 1;
        }
        if answers == 100 {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {answers} answers");
        decoder.extend(&buf[..n]);
    }
}
