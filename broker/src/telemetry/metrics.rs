//! The Prometheus text of `/metrics`: counters end in `_total`, sizes in
//! `_bytes`, times in `_seconds`; labels `broker`, `shard`, `topic`,
//! `partition` (and `code`, `peer`, `lane`, `replica`, `le` where they apply).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::core::Disk;
use super::{ShardSample, LATENCY_BUCKETS_US};

/// A per-shard counter: name, help, how to read it.
type Counter = (&'static str, &'static str, fn(&ShardSample) -> u64);

const SHARD_COUNTERS: [Counter; 23] = [
    (
        "drmq_produce_requests_total",
        "Produce requests answered",
        |s| s.produce_requests,
    ),
    (
        "drmq_produce_bytes_total",
        "Record batch bytes appended by produce requests as leader",
        |s| s.produce_bytes,
    ),
    (
        "drmq_records_in_total",
        "Records appended by produce requests as leader",
        |s| s.records_in,
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
    ("drmq_records_out_total", "Records returned by fetch", |s| {
        s.records_out
    }),
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
        "drmq_compactions_total",
        "Compaction rounds completed on this shard's partitions",
        |s| s.compactions,
    ),
    (
        "drmq_compaction_segments_rewritten_total",
        "Segments rewritten by compaction",
        |s| s.compaction_segments_rewritten,
    ),
    (
        "drmq_compaction_bytes_before_total",
        "Data bytes of the segments compaction rewrote, before",
        |s| s.compaction_bytes_before,
    ),
    (
        "drmq_compaction_bytes_after_total",
        "Data bytes of the segments compaction rewrote, after",
        |s| s.compaction_bytes_after,
    ),
    (
        "drmq_snapshot_transfers_started_total",
        "Snapshot transfers this broker began sending (a resumed one counts again)",
        |s| s.snapshot_transfers_started,
    ),
    (
        "drmq_snapshot_transfers_finished_total",
        "Snapshot transfers that sent their last chunk",
        |s| s.snapshot_transfers_finished,
    ),
    (
        "drmq_snapshot_transfers_resumed_total",
        "Snapshot transfers that continued from bytes the follower had staged",
        |s| s.snapshot_transfers_resumed,
    ),
    (
        "drmq_snapshot_transfers_failed_total",
        "Snapshot transfers that ended early (either side)",
        |s| s.snapshot_transfers_failed,
    ),
    (
        "drmq_snapshot_bytes_sent_total",
        "Snapshot archive bytes sent",
        |s| s.snapshot_bytes_sent,
    ),
    (
        "drmq_snapshot_bytes_received_total",
        "Snapshot archive bytes received and staged",
        |s| s.snapshot_bytes_received,
    ),
    (
        "drmq_snapshot_installs_total",
        "Snapshots installed in place of a partition",
        |s| s.snapshot_installs,
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
    ("drmq_peer_frames_sent_total", "Frames sent to peers", |s| {
        s.peer_frames_sent
    }),
    (
        "drmq_peer_frames_dropped_total",
        "Peer frames dropped because a peer's queue was full or it was unreachable",
        |s| s.peer_frames_dropped,
    ),
];

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole text.
pub fn prometheus(broker: u64, latest: &BTreeMap<usize, ShardSample>, disk: Disk) -> String {
    let mut out = String::with_capacity(4096);
    let b = broker;
    for (name, help, get) in SHARD_COUNTERS {
        head(&mut out, name, "counter", help);
        for s in latest.values() {
            let _ = writeln!(
                out,
                "{name}{{broker=\"{b}\",shard=\"{}\"}} {}",
                s.shard,
                get(s)
            );
        }
    }
    head(
        &mut out,
        "drmq_error_responses_total",
        "counter",
        "Error responses to clients by wire error code",
    );
    for s in latest.values() {
        for (code, n) in &s.errors_by_code {
            let _ = writeln!(
                out,
                "drmq_error_responses_total{{broker=\"{b}\",shard=\"{}\",code=\"{code}\"}} {n}",
                s.shard
            );
        }
    }
    head(
        &mut out,
        "drmq_connections",
        "gauge",
        "Client connections open",
    );
    head(
        &mut out,
        "drmq_shard_busy_ratio",
        "gauge",
        "Fraction of the last second the shard's core ran tasks",
    );
    head(
        &mut out,
        "drmq_task_queue_latency_seconds_max",
        "gauge",
        "Longest wait of a runnable task in the last second",
    );
    for s in latest.values() {
        let l = format!("broker=\"{b}\",shard=\"{}\"", s.shard);
        let _ = writeln!(out, "drmq_connections{{{l}}} {}", s.connections);
        let _ = writeln!(out, "drmq_shard_busy_ratio{{{l}}} {:.4}", s.busy_fraction);
        let _ = writeln!(
            out,
            "drmq_task_queue_latency_seconds_max{{{l}}} {:.6}",
            s.task_queue_latency_us_max as f64 / 1e6
        );
    }
    head(
        &mut out,
        "drmq_produce_latency_seconds",
        "histogram",
        "Produce request latency, received to answered",
    );
    for s in latest.values() {
        if s.produce_latency_buckets.len() != LATENCY_BUCKETS_US.len() + 1 {
            continue;
        }
        let l = format!("broker=\"{b}\",shard=\"{}\"", s.shard);
        for (bound, n) in LATENCY_BUCKETS_US.iter().zip(&s.produce_latency_buckets) {
            let _ = writeln!(
                out,
                "drmq_produce_latency_seconds_bucket{{{l},le=\"{}\"}} {n}",
                *bound as f64 / 1e6
            );
        }
        let count = s.produce_latency_buckets.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "drmq_produce_latency_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "drmq_produce_latency_seconds_sum{{{l}}} {:.6}",
            s.produce_latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "drmq_produce_latency_seconds_count{{{l}}} {count}");
    }
    head(
        &mut out,
        "drmq_peer_lane_up",
        "gauge",
        "Whether a peer lane is connected",
    );
    head(
        &mut out,
        "drmq_peer_lane_frames_queued",
        "gauge",
        "Frames queued on a peer lane",
    );
    head(
        &mut out,
        "drmq_peer_lane_frames_dropped_total",
        "counter",
        "Frames a peer lane dropped",
    );
    head(
        &mut out,
        "drmq_peer_lane_reconnects_total",
        "counter",
        "Reconnections of a peer lane",
    );
    for s in latest.values() {
        for p in &s.peer_lanes {
            let l = format!(
                "broker=\"{b}\",shard=\"{}\",peer=\"{}\",lane=\"{}\"",
                s.shard, p.peer, p.lane
            );
            let _ = writeln!(out, "drmq_peer_lane_up{{{l}}} {}", u8::from(p.up));
            let _ = writeln!(
                out,
                "drmq_peer_lane_frames_queued{{{l}}} {}",
                p.frames_queued
            );
            let _ = writeln!(
                out,
                "drmq_peer_lane_frames_dropped_total{{{l}}} {}",
                p.frames_dropped_total
            );
            let _ = writeln!(
                out,
                "drmq_peer_lane_reconnects_total{{{l}}} {}",
                p.reconnects_total
            );
        }
    }
    type Gauge = (
        &'static str,
        &'static str,
        fn(&super::PartitionSample) -> u64,
    );
    let gauges: [Gauge; 7] = [
        (
            "drmq_partition_high_watermark",
            "Next offset a consumer can read up to",
            |p| p.high_watermark,
        ),
        (
            "drmq_partition_log_start_offset",
            "First offset still in the log",
            |p| p.log_start_offset,
        ),
        (
            "drmq_partition_log_end_offset",
            "Offset the next appended record gets",
            |p| p.log_end_offset,
        ),
        (
            "drmq_partition_size_bytes",
            "Bytes of the replica's segments",
            |p| p.size_bytes,
        ),
        ("drmq_partition_term", "Raft term of the replica", |p| {
            p.term
        }),
        (
            "drmq_partition_commit_index",
            "Raft commit index of the replica",
            |p| p.commit_index,
        ),
        (
            "drmq_partition_leader",
            "1 if this broker leads the partition",
            |p| u64::from(p.role == "leader"),
        ),
    ];
    for (name, help, get) in gauges {
        head(&mut out, name, "gauge", help);
        for s in latest.values() {
            for p in &s.partitions {
                let _ = writeln!(
                    out,
                    "{name}{{broker=\"{b}\",topic=\"{}\",partition=\"{}\"}} {}",
                    p.topic,
                    p.partition,
                    get(p)
                );
            }
        }
    }
    head(
        &mut out,
        "drmq_partition_clean_offset",
        "gauge",
        "Compacted topics: offset up to which the replica's log was compacted since the broker started",
    );
    for s in latest.values() {
        for p in &s.partitions {
            if let Some(o) = p.clean_offset {
                let _ = writeln!(
                    out,
                    "drmq_partition_clean_offset{{broker=\"{b}\",topic=\"{}\",partition=\"{}\"}} {o}",
                    p.topic, p.partition
                );
            }
        }
    }
    head(
        &mut out,
        "drmq_partition_replica_lag_entries",
        "gauge",
        "Raft entries a replica is behind the leader (reported by the leader)",
    );
    for s in latest.values() {
        for p in &s.partitions {
            for r in &p.replicas {
                if let Some(lag) = r.lag_entries {
                    let _ = writeln!(
                        out,
                        "drmq_partition_replica_lag_entries{{broker=\"{b}\",topic=\"{}\",partition=\"{}\",replica=\"{}\"}} {lag}",
                        p.topic, p.partition, r.broker
                    );
                }
            }
        }
    }
    // Consumer groups this broker coordinates: members, committed offsets
    // (lag = drmq_partition_high_watermark of the partition's leader minus
    // this).
    head(
        &mut out,
        "drmq_group_members",
        "gauge",
        "Members of a consumer group this broker coordinates",
    );
    head(
        &mut out,
        "drmq_group_committed_offset",
        "gauge",
        "A consumer group's committed offset (the next offset it reads)",
    );
    for s in latest.values() {
        for g in &s.group_offsets {
            let _ = writeln!(
                out,
                "drmq_group_members{{broker=\"{b}\",group=\"{}\"}} {}",
                g.group, g.members
            );
            for (t, p, o) in &g.offsets {
                let _ = writeln!(
                    out,
                    "drmq_group_committed_offset{{broker=\"{b}\",group=\"{}\",topic=\"{t}\",partition=\"{p}\"}} {o}",
                    g.group
                );
            }
        }
    }
    for (name, help, v) in [
        (
            "drmq_disk_used_bytes",
            "Bytes of the partitions' segments",
            disk.used_bytes,
        ),
        (
            "drmq_disk_free_bytes",
            "Free bytes of the data directory's file system",
            disk.free_bytes,
        ),
        (
            "drmq_disk_floor_bytes",
            "Free space below which appends are refused",
            disk.floor_bytes,
        ),
        (
            "drmq_disk_full",
            "1 while appends are refused for want of space",
            u64::from(disk.full),
        ),
    ] {
        head(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{broker=\"{b}\"}} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{LaneSample, PartitionSample, ReplicaSample};
    use super::*;

    #[test]
    fn every_family_has_its_lines_with_labels() {
        let mut s = ShardSample {
            shard: 1,
            produce_requests: 7,
            errors: 2,
            compaction_bytes_after: 5,
            ..ShardSample::default()
        };
        s.errors_by_code.insert("NotLeader", 2);
        let mut buckets = vec![0u64; LATENCY_BUCKETS_US.len() + 1];
        buckets[3..].iter_mut().for_each(|b| *b = 5);
        s.produce_latency_buckets = buckets;
        s.produce_latency_sum_us = 2_500;
        s.peer_lanes.push(LaneSample {
            peer: 2,
            lane: "bulk",
            up: true,
            frames_queued: 3,
            frames_dropped_total: 1,
            reconnects_total: 0,
        });
        s.partitions.push(PartitionSample {
            topic: "t".into(),
            partition: 3,
            shard: 1,
            role: "leader",
            leader: Some(9),
            term: 1,
            replicas: vec![ReplicaSample {
                broker: 2,
                match_index: Some(40),
                lag_entries: Some(2),
            }],
            commit_index: 41,
            high_watermark: 42,
            log_start_offset: 0,
            log_end_offset: 42,
            size_bytes: 100,
            snapshot_transfer: None,
            clean_offset: Some(17),
        });
        s.group_offsets.push(super::super::GroupOffsetsSample {
            group: "g".into(),
            generation: 2,
            members: 3,
            offsets: vec![("t".into(), 3, 40)],
        });
        let mut latest = BTreeMap::new();
        latest.insert(1, s);
        let text = prometheus(9, &latest, Disk::default());
        for line in [
            "drmq_produce_requests_total{broker=\"9\",shard=\"1\"} 7",
            "drmq_errors_total{broker=\"9\",shard=\"1\"} 2",
            "drmq_error_responses_total{broker=\"9\",shard=\"1\",code=\"NotLeader\"} 2",
            "drmq_produce_latency_seconds_bucket{broker=\"9\",shard=\"1\",le=\"0.0005\"} 0",
            "drmq_produce_latency_seconds_bucket{broker=\"9\",shard=\"1\",le=\"0.001\"} 5",
            "drmq_produce_latency_seconds_bucket{broker=\"9\",shard=\"1\",le=\"+Inf\"} 5",
            "drmq_produce_latency_seconds_count{broker=\"9\",shard=\"1\"} 5",
            "drmq_peer_lane_frames_queued{broker=\"9\",shard=\"1\",peer=\"2\",lane=\"bulk\"} 3",
            "drmq_partition_high_watermark{broker=\"9\",topic=\"t\",partition=\"3\"} 42",
            "drmq_partition_leader{broker=\"9\",topic=\"t\",partition=\"3\"} 1",
            "drmq_partition_replica_lag_entries{broker=\"9\",topic=\"t\",partition=\"3\",replica=\"2\"} 2",
            "drmq_disk_full{broker=\"9\"} 0",
            "drmq_group_members{broker=\"9\",group=\"g\"} 3",
            "drmq_group_committed_offset{broker=\"9\",group=\"g\",topic=\"t\",partition=\"3\"} 40",
            "drmq_compaction_bytes_after_total{broker=\"9\",shard=\"1\"} 5",
            "drmq_partition_clean_offset{broker=\"9\",topic=\"t\",partition=\"3\"} 17",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        // Every sample line belongs to a family declared with TYPE.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                families.contains(&name) || families.contains(&family),
                "{l} has no TYPE line"
            );
        }
    }
}
