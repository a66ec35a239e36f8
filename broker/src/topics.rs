//! Topic records (the controller's state: committed commands, applied on
//! every broker), replica assignment and partition placement on shards.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wire::{CleanupPolicy, Durability, TopicConfig};

/// Most topics one broker keeps: each partition holds at least one
/// preallocated segment and a few open files; 10,000 stays far below the
/// default 1M open-file limit of a tuned host.
pub const TOPICS_MAX: usize = 10_000;
/// Most partitions per topic.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 1_024;

/// Which shard owns partition `partition` of `topic` on every replica:
/// FNV-1a over the name and the partition number, modulo the shard count.
/// Stable across processes and builds (no random hasher seed).
pub fn shard_for(topic: &str, partition: u32, shards: usize) -> usize {
    let h = fnv1a(topic.bytes().chain(partition.to_le_bytes()));
    (h % shards.max(1) as u64) as usize
}

/// 64-bit FNV-1a (the key partitioner's hash, in `wire::rules`): stable
/// across processes and builds, so shard placement and seeds agree everywhere.
pub use wire::rules::fnv1a;

/// One topic as stored in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// The controller entry that created the topic: unique for the life of
    /// the cluster, so a topic deleted and created again never mixes with
    /// the old one (its Raft groups and directories carry the id).
    #[serde(default)]
    pub id: u64,
    /// Brokers holding each partition; the first is the preferred leader.
    #[serde(default)]
    pub replicas: Vec<Vec<u64>>,
    pub name: String,
    pub partitions: u32,
    pub replication: u16,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<u64>,
    pub compact: bool,
    pub sync_interval_ms: Option<u32>,
    pub tombstone_retention_ms: Option<u64>,
}

impl TopicRecord {
    pub fn from_config(name: String, partitions: u32, replication: u16, c: &TopicConfig) -> Self {
        TopicRecord {
            id: 0,
            replicas: Vec::new(),
            name,
            partitions,
            replication,
            retention_bytes: c.retention_bytes,
            retention_ms: c.retention_ms,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
            compact: c.cleanup == CleanupPolicy::Compact,
            sync_interval_ms: match c.durability {
                Durability::EveryBatch => None,
                Durability::IntervalMs(ms) => Some(ms),
            },
            tombstone_retention_ms: c.tombstone_retention_ms,
        }
    }

    pub fn config(&self) -> TopicConfig {
        TopicConfig {
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            cleanup: if self.compact {
                CleanupPolicy::Compact
            } else {
                CleanupPolicy::Delete
            },
            durability: match self.sync_interval_ms {
                None => Durability::EveryBatch,
                Some(ms) => Durability::IntervalMs(ms),
            },
            tombstone_retention_ms: self.tombstone_retention_ms,
        }
    }

    /// The directory of one partition's log.
    pub fn partition_dir(&self, data_dir: &Path, partition: u32) -> PathBuf {
        data_dir
            .join("partitions")
            .join(format!("{}-{}.{}", self.name, partition, self.id))
    }

    /// The Raft group of one partition: the topic id in the high bits
    /// (group 0 is the controller).
    pub fn group_id(&self, partition: u32) -> u64 {
        (self.id << 20) | u64::from(partition)
    }

    /// Spreads `partitions` × `replication` replicas over `brokers` (sorted):
    /// partition `p` starts at broker `(p + seed) % n`, so preferred leaders
    /// rotate across brokers.
    pub fn assign(brokers: &[u64], partitions: u32, replication: u16, seed: u64) -> Vec<Vec<u64>> {
        let n = brokers.len().max(1);
        (0..partitions)
            .map(|p| {
                (0..usize::from(replication).min(n))
                    .map(|i| brokers[(p as usize + seed as usize + i) % n])
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spreads_partitions() {
        assert_eq!(shard_for("orders", 0, 4), shard_for("orders", 0, 4));
        let mut per_shard = [0u32; 4];
        for p in 0..400 {
            per_shard[shard_for("orders", p, 4)] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 50), "{per_shard:?}");
        assert_eq!(shard_for("x", 3, 1), 0);
    }

    #[test]
    fn assignment_spreads_replicas_and_first_replicas() {
        let brokers = [1, 2, 3];
        let a = TopicRecord::assign(&brokers, 3, 3, 0);
        assert_eq!(a, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
        let rf1 = TopicRecord::assign(&brokers, 4, 1, 7);
        assert!(rf1.iter().all(|r| r.len() == 1));
        // Replication above the broker count is capped (the controller
        // refuses it before assigning).
        assert_eq!(TopicRecord::assign(&[5], 1, 3, 0), vec![vec![5]]);
    }

    #[test]
    fn partition_groups_and_directories_carry_the_topic_id() {
        let mut t = TopicRecord::from_config(
            "orders".into(),
            2,
            1,
            &TopicConfig {
                retention_bytes: None,
                retention_ms: None,
                segment_bytes: None,
                segment_ms: None,
                cleanup: CleanupPolicy::Delete,
                durability: Durability::EveryBatch,
                tombstone_retention_ms: None,
            },
        );
        t.id = 7;
        assert_eq!(t.group_id(1), (7 << 20) | 1);
        assert!(t
            .partition_dir(Path::new("/d"), 1)
            .ends_with("partitions/orders-1.7"));
    }
}
