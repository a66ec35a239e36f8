//! Protocol rules that clients and brokers must agree on beyond the bytes of
//! a message: which partition a keyed record goes to, and how many batches
//! of one producer a broker remembers for idempotence, and which partition of
//! the offsets topic coordinates a consumer group.

/// Recent batches a broker remembers per producer and partition (the
/// broker's idempotence state keeps 64 × 16 bytes per producer). A client
/// retries only what is in flight, so an idempotent producer may keep at
/// most this many batches in flight: an older batch retried after a leader
/// change could no longer be recognised as a duplicate.
pub const IDEMPOTENCE_WINDOW_BATCHES: usize = 64;

/// The partition of a keyed record: FNV-1a of the key modulo the partition
/// count (a count of 0 is taken as 1). Every client uses this one, so a key
/// lands on the same partition whoever sends it; it is stable across
/// processes, builds and platforms (no random hasher seed).
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    (fnv1a(key.iter().copied()) % partitions.max(1) as u64) as usize
}

/// The internal topic whose partitions coordinate consumer groups (each
/// partition's leader is the coordinator of the groups that hash to it).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Partitions of [`OFFSETS_TOPIC`] when a client creates it.
pub const OFFSETS_PARTITIONS: u32 = 8;
/// Segment size of [`OFFSETS_TOPIC`]: its records are small (a commit is
/// about 100 bytes), and each partition preallocates one segment.
pub const OFFSETS_SEGMENT_BYTES: u64 = 4 << 20;
/// Most replicas of each [`OFFSETS_TOPIC`] partition: the controller
/// creates it with min(this, brokers configured), whatever a request says.
pub const OFFSETS_REPLICATION_MAX: u16 = 3;

/// The only configuration [`OFFSETS_TOPIC`] is created with: no retention
/// (the coordinators replay the whole log), fixed segments, every batch
/// durable.
pub fn offsets_topic_config() -> crate::TopicConfig {
    crate::TopicConfig {
        retention_bytes: None,
        retention_ms: None,
        segment_bytes: Some(OFFSETS_SEGMENT_BYTES),
        segment_ms: None,
        cleanup: crate::CleanupPolicy::Delete,
        durability: crate::Durability::EveryBatch,
        tombstone_retention_ms: None,
    }
}

/// The partition of [`OFFSETS_TOPIC`] that coordinates `group`: FNV-1a of
/// the name modulo the topic's partition count (0 is taken as 1).
pub fn coordinator_partition(group: &str, partitions: u32) -> u32 {
    (fnv1a(group.bytes()) % u64::from(partitions.max(1))) as u32
}

/// 64-bit FNV-1a: small, stable across processes and builds (no seed).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_has_one_coordinator_partition_stable_across_builds() {
        // FNV-1a of "orders" is fixed: a change here moves every group's
        // coordinator, and its committed offsets with it.
        assert_eq!(fnv1a("orders".bytes()), 0x0012_5d92_50be_8b4c);
        assert_eq!(coordinator_partition("orders", 8), 4);
        for g in ["a", "b", "group-1", "g"] {
            assert!(coordinator_partition(g, OFFSETS_PARTITIONS) < OFFSETS_PARTITIONS);
        }
        assert_eq!(coordinator_partition("x", 0), 0);
    }

    #[test]
    fn keys_map_to_the_partitions_they_always_did() {
        // FNV-1a test vectors (offset basis for "", the published value for "a").
        assert_eq!(fnv1a([]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        // Pinned: changing these moves every keyed record of every cluster.
        assert_eq!(
            partition_for_key(b"a", 7),
            (0xaf63_dc4c_8601_ec8c_u64 % 7) as usize
        );
        assert_eq!(partition_for_key(b"k1", 1), 0);
        assert_eq!(
            partition_for_key(b"anything", 0),
            0,
            "no partitions: 0, not a panic"
        );
        for p in 1..50 {
            assert!(partition_for_key(b"some key", p) < p);
        }
    }
}
