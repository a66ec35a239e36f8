//! The telemetry thread: not a shard. Shards send it a sample of their
//! counters once a second over a bounded flume channel (`try_send`: a slow
//! telemetry thread drops samples, it never slows a shard), and it serves them
//! over HTTP on `--http`:
//!
//! - `GET /metrics`: Prometheus text format;
//! - `GET /api/status`: the latest sample of every shard, as JSON;
//! - `GET /`: a short index (the dashboard comes later).
//!
//! One request per connection, read with a deadline and a size cap, answered
//! and closed: a browser or scraper cannot hold the thread for long.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde::Serialize;

/// Samples queued for the telemetry thread: a few seconds of every shard.
pub const SAMPLES_QUEUED_MAX: usize = 1024;
/// Largest HTTP request head accepted (no bodies are read).
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One partition in a shard sample.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionSample {
    pub topic: String,
    pub partition: u32,
    pub leader: Option<u64>,
    pub term: u64,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub next_offset: u64,
}

/// What a shard reports once a second.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShardSample {
    pub shard: usize,
    pub produce_requests: u64,
    pub produce_bytes: u64,
    pub fetch_requests: u64,
    pub fetch_bytes: u64,
    pub errors: u64,
    pub segments_deleted: u64,
    /// Leadership changes seen by this shard's groups (elections).
    pub leader_changes: u64,
    /// Elections won by this shard's groups.
    pub elections: u64,
    pub peer_frames_sent: u64,
    pub peer_frames_dropped: u64,
    pub partitions: Vec<PartitionSample>,
}

/// Starts the telemetry thread on `addr`; returns the channel shards send to.
pub fn start(broker_id: u64, addr: SocketAddr) -> std::io::Result<flume::Sender<ShardSample>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = flume::bounded::<ShardSample>(SAMPLES_QUEUED_MAX);
    std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(move || {
            let mut latest: BTreeMap<usize, ShardSample> = BTreeMap::new();
            loop {
                // Drain samples, then serve whoever is waiting; poll at 20 Hz.
                loop {
                    match rx.try_recv() {
                        Ok(s) => {
                            latest.insert(s.shard, s);
                        }
                        Err(flume::TryRecvError::Empty) => break,
                        Err(flume::TryRecvError::Disconnected) => return,
                    }
                }
                match listener.accept() {
                    Ok((stream, _)) => serve(broker_id, stream, &latest),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(tx)
}

fn serve(broker_id: u64, mut stream: TcpStream, latest: &BTreeMap<usize, ShardSample>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.lines().next().and_then(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("GET"))
            .then(|| parts.next())
            .flatten()
    });
    let (status, content_type, body) = match path {
        Some("/metrics") => ("200 OK", "text/plain; version=0.0.4", prometheus(broker_id, latest)),
        Some("/api/status") => (
            "200 OK",
            "application/json",
            serde_json::json!({ "broker": broker_id, "shards": latest.values().collect::<Vec<_>>() })
                .to_string(),
        ),
        Some("/") => (
            "200 OK",
            "text/plain",
            format!("drmq broker {broker_id}: see /metrics and /api/status (the dashboard is not built yet)\n"),
        ),
        Some(_) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        None => ("400 Bad Request", "text/plain", "only GET is served\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A counter's name, help text and how to read it from a sample.
type Counter = (&'static str, &'static str, fn(&ShardSample) -> u64);

fn prometheus(broker_id: u64, latest: &BTreeMap<usize, ShardSample>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let counters: [Counter; 9] = [
        (
            "drmq_produce_requests_total",
            "Produce requests answered",
            |s| s.produce_requests,
        ),
        (
            "drmq_produce_bytes_total",
            "Record batch bytes appended",
            |s| s.produce_bytes,
        ),
        (
            "drmq_fetch_requests_total",
            "Fetch requests answered",
            |s| s.fetch_requests,
        ),
        (
            "drmq_fetch_bytes_total",
            "Record batch bytes returned by fetch",
            |s| s.fetch_bytes,
        ),
        (
            "drmq_errors_total",
            "Requests answered with an error, and closed connections",
            |s| s.errors,
        ),
        (
            "drmq_segments_deleted_total",
            "Segments deleted by retention",
            |s| s.segments_deleted,
        ),
        (
            "drmq_leader_changes_total",
            "Leadership changes (elections) seen by this shard's Raft groups",
            |s| s.leader_changes,
        ),
        (
            "drmq_elections_total",
            "Elections won by this shard's Raft groups",
            |s| s.elections,
        ),
        (
            "drmq_peer_frames_dropped_total",
            "Peer frames dropped because a peer's queue was full or it was unreachable",
            |s| s.peer_frames_dropped,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in latest.values() {
            let _ = writeln!(
                out,
                "{name}{{broker=\"{broker_id}\",shard=\"{}\"}} {}",
                s.shard,
                get(s)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP drmq_partition_high_watermark Next offset a consumer can read up to\n# TYPE drmq_partition_high_watermark gauge"
    );
    for s in latest.values() {
        for p in &s.partitions {
            let _ = writeln!(
                out,
                "drmq_partition_high_watermark{{broker=\"{broker_id}\",topic=\"{}\",partition=\"{}\"}} {}",
                p.topic, p.partition, p.high_watermark
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_one_line_per_shard_and_partition() {
        let mut latest = BTreeMap::new();
        latest.insert(
            1,
            ShardSample {
                shard: 1,
                produce_requests: 7,
                produce_bytes: 700,
                fetch_requests: 0,
                fetch_bytes: 0,
                errors: 2,
                segments_deleted: 0,
                leader_changes: 1,
                elections: 1,
                peer_frames_sent: 0,
                peer_frames_dropped: 0,
                partitions: vec![PartitionSample {
                    topic: "t".into(),
                    partition: 3,
                    leader: Some(9),
                    term: 1,
                    log_start_offset: 0,
                    high_watermark: 42,
                    next_offset: 42,
                }],
            },
        );
        let text = prometheus(9, &latest);
        assert!(
            text.contains("drmq_produce_requests_total{broker=\"9\",shard=\"1\"} 7"),
            "{text}"
        );
        assert!(text.contains("drmq_errors_total{broker=\"9\",shard=\"1\"} 2"));
        assert!(text.contains(
            "drmq_partition_high_watermark{broker=\"9\",topic=\"t\",partition=\"3\"} 42"
        ));
    }
}
