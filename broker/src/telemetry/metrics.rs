//! The Prometheus text of `/metrics`.

use std::collections::BTreeMap;

use super::ShardSample;

/// A counter's name, help text and how to read it from a sample.
type Counter = (&'static str, &'static str, fn(&ShardSample) -> u64);

pub fn prometheus(broker_id: u64, latest: &BTreeMap<usize, ShardSample>) -> String {
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
