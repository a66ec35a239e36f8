//! Watching the cluster: status observations, counters, topic setup and the bulk write.

use super::*;

/// What one cluster status says about the returning follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Observation {
    pub(super) leader: u64,
    pub(super) commit_index: u64,
    pub(super) match_index: u64,
    pub(super) lag: u64,
    /// `(bytes sent, bytes total, bytes/s)` while the leader streams a
    /// snapshot to it.
    pub(super) snapshot: Option<(u64, u64, u64)>,
}

/// The partition as its leader reports it, and the follower's replica
/// entry there (None: no leader reports the partition, or it does not list
/// the follower).
pub(super) fn observe(
    s: &ClusterStatusResponse,
    topic: &str,
    partition: u32,
    follower: u64,
) -> Option<Observation> {
    let p = s
        .partitions
        .iter()
        .find(|p| p.topic == topic && p.partition == partition && p.leader.is_some())?;
    let r = p.replicas.iter().find(|r| r.broker == follower)?;
    Some(Observation {
        leader: p.leader?,
        commit_index: p.commit_index,
        match_index: r.match_index,
        lag: r.lag,
        snapshot: r
            .snapshot
            .as_ref()
            .map(|s| (s.bytes_sent, s.bytes_total, s.bytes_per_sec)),
    })
}

impl Observation {
    /// Caught up: it holds everything the leader has committed.
    pub(super) fn caught_up(&self) -> bool {
        self.match_index >= self.commit_index
    }
}

/// The transfer as seen in the polls: when a snapshot stream to the
/// follower was first and last reported, its size and the rates the leader
/// reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(super) struct TransferSeen {
    pub(super) first_us: Option<u64>,
    /// The first poll without the stream after it was seen (or the last
    /// poll with it, if it never ended in the polls).
    pub(super) end_us: Option<u64>,
    pub(super) bytes_sent_max: u64,
    pub(super) bytes_total: u64,
    pub(super) reported_bytes_per_sec_max: u64,
    /// Times a stream appeared after one had ended (restarts).
    pub(super) streams: u32,
    pub(super) last_seen_us: Option<u64>,
}

impl TransferSeen {
    pub(super) fn add(&mut self, at_us: u64, snapshot: Option<(u64, u64, u64)>) {
        match snapshot {
            Some((sent, total, rate)) => {
                if self.first_us.is_none() || self.end_us.is_some() {
                    self.streams += 1;
                }
                self.first_us.get_or_insert(at_us);
                self.end_us = None;
                self.bytes_sent_max = self.bytes_sent_max.max(sent);
                self.bytes_total = self.bytes_total.max(total);
                self.reported_bytes_per_sec_max = self.reported_bytes_per_sec_max.max(rate);
                self.last_seen_us = Some(at_us);
            }
            None => {
                if self.first_us.is_some() && self.end_us.is_none() {
                    self.end_us = Some(at_us);
                }
            }
        }
    }

    /// The window `[first seen, end)`, closed at the last sighting if it
    /// never ended in the polls.
    pub(super) fn window_us(&self) -> Option<(u64, u64)> {
        let first = self.first_us?;
        let end = self.end_us.or(self.last_seen_us)?;
        Some((first, end.max(first)))
    }
}

pub(super) const SNAPSHOT_COUNTERS: [&str; 9] = [
    "snapshot_transfers_started",
    "snapshot_transfers_finished",
    "snapshot_transfers_resumed",
    "snapshot_transfers_failed",
    "snapshot_bytes_sent",
    "snapshot_bytes_received",
    "snapshot_installs",
    "snapshot_archives",
    "elections",
];

pub(super) fn counters(http: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let v = crate::spawn::api_status(http)?;
    let mut out = BTreeMap::new();
    for shard in v["shards"].as_array()? {
        for name in SNAPSHOT_COUNTERS {
            *out.entry(name.to_owned()).or_insert(0) += shard[name].as_u64().unwrap_or(0);
        }
    }
    Some(out)
}

/// The partition's `size_bytes` in the broker's telemetry.
pub(super) fn partition_size(http: SocketAddr, topic: &str, partition: u32) -> Option<u64> {
    let v = crate::spawn::api_status(http)?;
    v["shards"].as_array()?.iter().find_map(|s| {
        s["partitions"].as_array()?.iter().find_map(|p| {
            (p["topic"] == topic && p["partition"] == partition)
                .then(|| p["size_bytes"].as_u64())
                .flatten()
        })
    })
}

pub(super) fn create_topic(
    brokers: &[SocketAddr],
    name: &str,
    partitions: u32,
    segment: u64,
) -> Result<()> {
    let req = CreateTopicRequest {
        name: name.to_owned(),
        partitions,
        replication: 3,
        config: TopicConfig {
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: Some(segment),
            segment_ms: None,
            cleanup: CleanupPolicy::Delete,
            durability: Durability::EveryBatch,
            tombstone_retention_ms: None,
        },
        timeout_ms: 10_000,
    };
    Admin::new(brokers.to_vec(), Duration::from_secs(20))
        .ensure_topic(req)
        .with_context(|| format!("creating topic {name}"))
}

/// Polls (bounded) until `f` gives a value.
pub(super) fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(super) fn status(brokers: &[SocketAddr]) -> Option<ClusterStatusResponse> {
    Admin::new(brokers.to_vec(), Duration::from_secs(2))
        .cluster_status()
        .ok()
}

/// Writes `count` 1 KiB messages to partition 0 of `topic` at maximum rate
/// (acks = quorum); returns the failed ones. Bounded by `limit`.
pub(super) fn bulk_write(
    brokers: &[SocketAddr],
    topic: &str,
    count: u64,
    limit: Duration,
) -> Result<u64> {
    let mut cfg = ProducerConfig::new(ClientConfig::new(brokers.to_vec()), topic);
    cfg.acks = Acks::Quorum;
    cfg.batch_bytes_max = 256 * 1024;
    cfg.in_flight_max = 16;
    let mut p = Producer::new(cfg)?;
    let value = vec![0xa5u8; MESSAGE_BYTES];
    let deadline = Instant::now() + limit;
    let mut failed = 0;
    for i in 0..count {
        p.send_to(0, None, &value, 0, i)?;
        if i % 4096 == 0 {
            for d in p.take_deliveries() {
                if d.result.is_err() {
                    failed += d.tags.len() as u64;
                }
            }
            if Instant::now() >= deadline {
                bail!("the bulk write did not finish within {limit:?} ({i} of {count} sent)");
            }
        }
    }
    p.flush(deadline)?;
    for d in p.take_deliveries() {
        if d.result.is_err() {
            failed += d.tags.len() as u64;
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{PartitionStatus, ReplicaStatus, SnapshotProgress};

    fn status_with(
        leader: Option<u64>,
        commit: u64,
        matched: u64,
        snap: bool,
    ) -> ClusterStatusResponse {
        ClusterStatusResponse {
            controller: Some(1),
            brokers: Vec::new(),
            partitions: vec![
                PartitionStatus {
                    topic: "other".into(),
                    partition: 0,
                    leader: Some(3),
                    term: 1,
                    commit_index: 999,
                    log_start_offset: 0,
                    replicas: vec![ReplicaStatus {
                        broker: 2,
                        match_index: 0,
                        lag: 999,
                        snapshot: None,
                    }],
                },
                PartitionStatus {
                    topic: "t".into(),
                    partition: 0,
                    leader,
                    term: 4,
                    commit_index: commit,
                    log_start_offset: 0,
                    replicas: vec![
                        ReplicaStatus {
                            broker: 1,
                            match_index: commit,
                            lag: 0,
                            snapshot: None,
                        },
                        ReplicaStatus {
                            broker: 2,
                            match_index: matched,
                            lag: commit - matched,
                            snapshot: snap.then_some(SnapshotProgress {
                                bytes_sent: 10,
                                bytes_total: 100,
                                bytes_per_sec: 5,
                            }),
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn the_follower_is_observed_in_its_leaders_entry_only() {
        let o = observe(&status_with(Some(1), 50, 20, true), "t", 0, 2).unwrap();
        assert_eq!(
            o,
            Observation {
                leader: 1,
                commit_index: 50,
                match_index: 20,
                lag: 30,
                snapshot: Some((10, 100, 5)),
            }
        );
        assert!(!o.caught_up());
        assert!(observe(&status_with(Some(1), 50, 50, false), "t", 0, 2)
            .unwrap()
            .caught_up());
        // No leader reports it, or it does not list the follower.
        assert!(observe(&status_with(None, 50, 50, false), "t", 0, 2).is_none());
        assert!(observe(&status_with(Some(1), 50, 50, false), "t", 0, 3).is_none());
        assert!(observe(&status_with(Some(1), 50, 50, false), "t", 1, 2).is_none());
    }

    #[test]
    fn a_transfer_window_runs_from_first_sighting_to_the_first_poll_without_it() {
        let mut t = TransferSeen::default();
        t.add(100, None);
        assert_eq!(t.window_us(), None);
        t.add(200, Some((0, 1000, 0)));
        t.add(300, Some((500, 1000, 50)));
        assert_eq!(
            t.window_us(),
            Some((200, 300)),
            "closed at the last sighting"
        );
        t.add(400, None);
        t.add(500, None);
        assert_eq!(t.window_us(), Some((200, 400)));
        assert_eq!((t.bytes_sent_max, t.bytes_total, t.streams), (500, 1000, 1));
        assert_eq!(t.reported_bytes_per_sec_max, 50);
        // A second stream (a restarted transfer) extends the window.
        t.add(600, Some((100, 1000, 10)));
        t.add(700, None);
        assert_eq!(t.window_us(), Some((200, 700)));
        assert_eq!(t.streams, 2);
    }
}
