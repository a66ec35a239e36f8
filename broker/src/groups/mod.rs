//! Consumer groups: members share a topic's partitions under leases,
//! fenced by generation, with committed offsets replicated like data.
//!
//! # Layout
//! | module          | what it holds                                                  |
//! |-----------------|----------------------------------------------------------------|
//! | [`assign`]      | the sticky assignment (pure)                                   |
//! | [`state`]       | the replicated group state, its commands and transitions (pure) |
//! | [`coordinator`] | the coordinator of one offsets partition on its leader: loading the log, proposing, leases (glommio) |
//!
//! Each group's coordinator is partition `fnv1a(group) % P` of the internal
//! topic [`OFFSETS_TOPIC`] (created by the first client that uses a group,
//! [`OFFSETS_PARTITIONS`] partitions): its leader's shard answers the group's
//! requests, and its Raft log holds the group's membership and offsets, so
//! coordinators spread over brokers and shards and fail over with their
//! partition. Clients find the coordinator exactly as they find a
//! partition's leader (metadata, `NotLeader` hints).

pub mod assign;
pub mod coordinator;
pub mod state;

use std::rc::Rc;

use wire::{ErrorCode, Message};

use crate::error::Error;
use crate::shard::Shard;
pub(crate) use coordinator::Coordinators;

/// The internal topic whose partitions are the coordinators.
pub const OFFSETS_TOPIC: &str = wire::rules::OFFSETS_TOPIC;
/// Its partition count when a client creates it (a partition is a Raft
/// group: 8 spread coordinators over 8 shards or brokers at little cost).
pub const OFFSETS_PARTITIONS: u32 = wire::rules::OFFSETS_PARTITIONS;
/// [`wire::rules::OFFSETS_SEGMENT_BYTES`] in MiB, for messages.
const OFFSETS_SEGMENT_MIB: u64 = wire::rules::OFFSETS_SEGMENT_BYTES >> 20;

/// Requested leases are clamped to this range: below 500 ms a heartbeat
/// every lease/4 is more traffic than it is worth and a GC pause of the
/// client loses its partitions; above 5 minutes a crashed consumer's
/// partitions wait too long.
pub const LEASE_MS_MIN: u32 = 500;
pub const LEASE_MS_MAX: u32 = 300_000;
/// The lease of a request that asks for none.
pub const LEASE_MS_DEFAULT: u32 = 3_000;

/// Which partition of the offsets topic coordinates `group`.
pub fn coordinator_partition(group: &str, partitions: u32) -> u32 {
    wire::rules::coordinator_partition(group, partitions)
}

/// Why a group request was refused.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The member's lease expired (or it left): it must join again as a new
    /// member. Not retriable as is.
    #[error("group {group}: member {member} is not a member (its lease expired, or it left); join again")]
    UnknownMember { group: String, member: String },
    /// A request under a generation the member may not use. Not retriable.
    #[error("group {group}: member {member} is fenced: generation {generation}, the group is at {current}")]
    IllegalGeneration {
        group: String,
        member: String,
        generation: u64,
        current: u64,
    },
    #[error("group {group} has {members} member(s): offsets can be reset only while it has none")]
    NotEmpty { group: String, members: usize },
    /// The coordinator is still reading its log (a new leader). Retriable.
    #[error("the coordinator of {OFFSETS_TOPIC}-{partition} is loading; retry")]
    Loading { partition: u32 },
    /// No offsets topic yet: the client creates it. Retriable.
    #[error("no {OFFSETS_TOPIC} topic yet (the first group client creates it); retry")]
    NoOffsetsTopic,
    #[error("{OFFSETS_TOPIC} is internal: written by group coordinators only, and never deleted (it holds every group's offsets)")]
    InternalTopic,
    #[error("{OFFSETS_TOPIC} is internal: it is created (by the first group client) only with its own settings: {OFFSETS_PARTITIONS} partitions, no retention, {OFFSETS_SEGMENT_MIB} MiB segments, replication chosen by the controller")]
    InternalTopicConfig,
    #[error("a join names no topic")]
    NoTopics,
    #[error("group {group} has {limit} members, the most a group may have")]
    TooManyMembers { group: String, limit: usize },
    #[error("{what} is too large: {limit}")]
    TooLarge { what: &'static str, limit: String },
    #[error("group {group}: {topic}-{partition} does not exist")]
    UnknownPartition {
        group: String,
        topic: String,
        partition: u32,
    },
}

impl GroupError {
    pub fn code(&self) -> ErrorCode {
        match self {
            GroupError::UnknownMember { .. } => ErrorCode::UnknownMember,
            GroupError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
            GroupError::NotEmpty { .. }
            | GroupError::InternalTopic
            | GroupError::InternalTopicConfig
            | GroupError::TooManyMembers { .. }
            | GroupError::NoTopics => ErrorCode::InvalidRequest,
            GroupError::TooLarge { .. } => ErrorCode::RequestTooLarge,
            GroupError::Loading { .. } => ErrorCode::LeaderNotAvailable,
            GroupError::NoOffsetsTopic | GroupError::UnknownPartition { .. } => {
                ErrorCode::UnknownTopicOrPartition
            }
        }
    }
}

/// The group a request names, if it is a group request.
fn group_of(msg: &Message) -> Option<&str> {
    Some(match msg {
        Message::JoinGroupRequest(r) => &r.group,
        Message::GroupHeartbeatRequest(r) => &r.group,
        Message::LeaveGroupRequest(r) => &r.group,
        Message::OffsetCommitRequest(r) => &r.group,
        Message::OffsetFetchRequest(r) => &r.group,
        Message::DescribeGroupRequest(r) => &r.group,
        _ => return None,
    })
}

/// Answers a group request (the shard routes every group kind here).
pub(crate) async fn handle(shard: &Rc<Shard>, msg: Message) -> Message {
    let partitions = shard
        .topics
        .borrow()
        .get(OFFSETS_TOPIC)
        .map(|t| t.partitions);
    let Some(partitions) = partitions else {
        return Error::Group(GroupError::NoOffsetsTopic).into();
    };
    let index = match (&msg, group_of(&msg)) {
        (Message::ListGroupsRequest(r), _) => r.partition,
        (_, Some(g)) => coordinator_partition(g, partitions),
        _ => {
            return Error::NotServed {
                kind: msg.kind().name(),
            }
            .into()
        }
    };
    let p = match shard.leader_partition(OFFSETS_TOPIC, index) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    let c = shard.consumer_groups.get(index, p, &shard.telemetry);
    let topics = |t: &str| shard.topics.borrow().get(t).map(|r| r.partitions);
    match c.handle(msg, &topics).await {
        Ok(m) => m,
        Err(Error::NotLeaderHere { leader }) => shard
            .cluster
            .not_leader(OFFSETS_TOPIC, index, leader)
            .into(),
        Err(e) => e.into(),
    }
}
