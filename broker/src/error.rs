//! The broker's one error type.
//!
//! Every refusal a client sees is a variant here, and [`Error::code`] is the
//! one place that says which wire [`ErrorCode`] it travels as (with the
//! variant's text as the message and, for the "ask elsewhere" variants, a
//! leader hint). Start-up, persistence and peer-link failures are variants
//! too; nothing in the library matches an error by its text.
//!
//! Display texts are part of what clients and operators read (some tests
//! assert them): a variant that wraps a cause shows only its own words and
//! keeps the cause as its `source`; [`chain`] writes the whole chain
//! (`what: cause: cause`) where one line must say everything (a stopped
//! replica's reason, an admin answer).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use storage::StorageError;
use wire::{ErrorCode, ErrorResponse, LeaderHint, Message, WireError};

use crate::topics::{PARTITIONS_PER_TOPIC_MAX, TOPICS_MAX};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- requests a client got wrong
    /// A request that does not decode or does not validate.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A produce batch that fails its CRC or structure checks.
    #[error("{0}")]
    CorruptBatch(WireError),
    /// An answer too large for the frame limit.
    #[error("{0}")]
    ResponseTooLarge(WireError),
    #[error("{kind} is not served on the client port")]
    NotServed { kind: &'static str },
    /// A controller command that does not serialise.
    #[error("{0}")]
    Command(serde_json::Error),
    #[error("{kind} is not an admin request")]
    NotAdmin { kind: &'static str },
    #[error("no topic {name}")]
    UnknownTopic { name: String },
    #[error("no partition {topic}-{partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("topic {name} exists")]
    TopicExists { name: String },
    #[error("at most {TOPICS_MAX} topics")]
    TooManyTopics,
    #[error("{partitions} partitions, must be 1..={PARTITIONS_PER_TOPIC_MAX}")]
    PartitionCount { partitions: u32 },
    #[error("replication {replication} but the cluster has {brokers} broker(s)")]
    Replication { replication: u16, brokers: usize },
    #[error(
        "the command is {bytes} bytes, more than the controller log's {segment_bytes}-byte segments"
    )]
    CommandTooLarge { bytes: usize, segment_bytes: u32 },
    #[error("batch of {bytes} bytes exceeds the topic's segment size ({segment_bytes} bytes): send smaller batches (drmq produce --batch-bytes)")]
    BatchTooLarge { bytes: usize, segment_bytes: usize },
    #[error("offset {offset} outside [{start}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: u64,
        start: u64,
        high_watermark: u64,
    },

    /// A consumer-group request refused by its coordinator.
    #[error(transparent)]
    Group(#[from] crate::groups::GroupError),
    /// An idempotent producer's batch the producer table refuses.
    #[error(transparent)]
    Producer(#[from] crate::producers::Rejection),

    // ---- ask elsewhere, or later
    /// The partition lives on another shard of this broker.
    #[error("{topic}-{partition} is on shard {}", hint.shard)]
    OtherShard {
        topic: String,
        partition: u32,
        hint: LeaderHint,
    },
    /// Another broker leads the partition.
    #[error("{topic}-{partition} is led by broker {}", hint.broker)]
    NotLeader {
        topic: String,
        partition: u32,
        hint: LeaderHint,
    },
    #[error("{topic}-{partition} has no leader yet; retry")]
    NoLeader { topic: String, partition: u32 },
    /// This replica stopped after a persistence failure (`why`).
    #[error("{topic}-{partition}: this replica stopped ({why}); ask another broker")]
    ReplicaStopped {
        topic: String,
        partition: u32,
        why: String,
    },
    #[error("{}", match leader {
        Some(l) => format!("the controller is broker {l}"),
        None => "no controller elected yet; retry".to_owned(),
    })]
    NotController {
        leader: Option<u64>,
        hint: Option<LeaderHint>,
    },
    #[error("no controller on this shard")]
    NoControllerHere,
    #[error("the controller did not commit in time")]
    ControllerTimeout,
    #[error(
        "committed by the controller (entry {index}), but not yet applied on every shard of broker {broker}"
    )]
    NotApplied { index: u64, broker: u64 },
    /// A committed topic change this broker could not apply.
    #[error(
        "committed by the controller, but broker {broker} could not open its replicas: {}",
        chain(cause)
    )]
    ReplicasNotOpened { broker: u64, cause: Box<Error> },
    #[error("the partition's disk is below its free-space floor; retry later")]
    DiskFull,
    #[error("not acknowledged within {timeout:?} (no quorum?)")]
    NotAcknowledged { timeout: Duration },
    #[error("broker {broker} shard {shard} serves at most {max} client connections; retry later or elsewhere")]
    TooManyConnections {
        broker: u64,
        shard: usize,
        max: usize,
    },
    #[error("shutting down")]
    ShuttingDown,
    #[error("shard 0 is gone")]
    ShardZeroGone,
    #[error("a shard is gone")]
    ShardGone,

    // ---- a Raft group
    /// Proposed on a replica that is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeaderHere { leader: Option<u64> },
    #[error("leadership changed before the batch committed; retry")]
    LeadershipChanged,
    #[error("leadership changed before the batch was written; retry")]
    LeadershipChangedUnwritten,
    #[error("the partition closed")]
    PartitionClosed,
    /// The group stopped after a persistence failure; the text says why.
    #[error("{0}")]
    ReplicaFailed(String),
    #[error(transparent)]
    Raft(#[from] raft::Error),
    #[error("{}: {error}", dir.display())]
    RaftStart { dir: PathBuf, error: raft::Error },
    /// An entry's offsets could not be read back.
    #[error("{0}")]
    EntryLookup(StorageError),
    #[error("Raft asked to install snapshot {index}, which is not staged here")]
    SnapshotMissing { index: u64 },
    #[error("the archive staged for snapshot {index} does not match it: {why}")]
    SnapshotMismatch { index: u64, why: String },
    #[error("stopped while the disk was full")]
    StoppedWhileDiskFull,
    #[error("saving raft.state")]
    SaveState(#[source] std::io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("opening {}", dir.display())]
    OpenLog {
        dir: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("syncing {}", dir.display())]
    SyncLog {
        dir: PathBuf,
        #[source]
        source: StorageError,
    },
    /// Partitions of a topic that did not open on this shard.
    #[error("{}", .0.iter().map(|(p, e)| format!("partition {p}: {}", chain(e))).collect::<Vec<_>>().join("; "))]
    PartitionsNotOpened(Vec<(u32, Error)>),
    #[error("removing {}", dir.display())]
    RemoveDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- the peer transport
    #[error("connection closed")]
    PeerClosed,
    #[error("timed out after {0:?}")]
    PeerTimeout(Duration),
    #[error("connected to itself: nothing listens there")]
    SelfConnect,
    /// A handshake frame of the wrong kind.
    #[error("{0}")]
    HandshakeFrame(&'static str),
    #[error("peer answered as node {node} shard {shard}")]
    PeerAnsweredAs { node: u64, shard: u32 },
    #[error("peer {peer} failed authentication (wrong cluster secret?)")]
    PeerAuth { peer: u64 },
    #[error("hello from node {node} shard {shard} cluster {cluster} is not a peer of this shard")]
    NotAPeer { node: u64, shard: u32, cluster: u64 },
    #[error("node {node} failed authentication")]
    CallerAuth { node: u64 },

    // ---- process start
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{what} {}", path.display())]
    DataDir {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} port {addr} (shard {shard})")]
    Port {
        what: &'static str,
        addr: SocketAddr,
        shard: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {what}{addr}: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: String,
    },
    #[error("pthread_sigmask: {0}")]
    Signals(std::io::Error),
    #[error("HTTP port {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the {name} thread")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("starting shard {shard}: {error}")]
    StartShard { shard: usize, error: String },
    /// A shard failed to start; the text says which and why.
    #[error("{0}")]
    ShardFailed(String),
    #[error("a shard stopped during start-up")]
    ShardStopped,
    #[error("shard panicked: {0}")]
    ShardPanicked(String),
}

impl Error {
    /// The wire code a client gets for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Wire(_)
            | Error::Command(_)
            | Error::NotServed { .. }
            | Error::NotAdmin { .. }
            | Error::TooManyTopics => ErrorCode::InvalidRequest,
            Error::CorruptBatch(_) => ErrorCode::CorruptBatch,
            Error::ResponseTooLarge(_)
            | Error::CommandTooLarge { .. }
            | Error::BatchTooLarge { .. } => ErrorCode::RequestTooLarge,
            Error::UnknownTopic { .. } | Error::UnknownPartition { .. } => {
                ErrorCode::UnknownTopicOrPartition
            }
            Error::TopicExists { .. } => ErrorCode::TopicAlreadyExists,
            Error::PartitionCount { .. } | Error::Replication { .. } => {
                ErrorCode::InvalidReplication
            }
            Error::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            Error::Producer(r) => r.code(),
            Error::Group(e) => e.code(),
            Error::OtherShard { .. }
            | Error::NotLeader { .. }
            | Error::NotLeaderHere { .. }
            | Error::LeadershipChanged
            | Error::LeadershipChangedUnwritten => ErrorCode::NotLeader,
            Error::NoLeader { .. } | Error::ReplicaStopped { .. } | Error::PartitionClosed => {
                ErrorCode::LeaderNotAvailable
            }
            Error::NotController { .. } | Error::NoControllerHere => ErrorCode::NotController,
            Error::ControllerTimeout | Error::NotApplied { .. } | Error::NotAcknowledged { .. } => {
                ErrorCode::Timeout
            }
            Error::ReplicasNotOpened { cause, .. } if cause.is_disk_full() => ErrorCode::DiskFull,
            Error::DiskFull => ErrorCode::DiskFull,
            Error::TooManyConnections { .. } => ErrorCode::TooManyConnections,
            Error::ShuttingDown | Error::ShardZeroGone => ErrorCode::ShuttingDown,
            Error::Raft(raft::Error::NotLeader { .. }) => ErrorCode::NotLeader,
            Error::Raft(e) if e.is_retryable() => ErrorCode::LeaderNotAvailable,
            Error::Raft(raft::Error::ProposalTooLarge { .. }) => ErrorCode::RequestTooLarge,
            Error::Storage(e) => match e {
                StorageError::DiskFull { .. } => ErrorCode::DiskFull,
                StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
                StorageError::InvalidBatch(_) => ErrorCode::CorruptBatch,
                StorageError::BatchTooLarge { .. } => ErrorCode::RequestTooLarge,
                _ => ErrorCode::StorageError,
            },
            _ => ErrorCode::StorageError,
        }
    }

    /// Where to ask instead, for the variants that know.
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        match self {
            Error::OtherShard { hint, .. } | Error::NotLeader { hint, .. } => Some(hint.clone()),
            Error::NotController { hint, .. } => hint.clone(),
            _ => None,
        }
    }

    /// The answer a client gets: code, this error's text, leader hint.
    pub fn to_response(&self) -> Message {
        ErrorResponse {
            code: self.code() as u16,
            message: self.to_string(),
            leader_hint: self.leader_hint(),
        }
        .into()
    }

    /// Whether the cause is a full disk (the store's own state, or ENOSPC
    /// from the file system), anywhere in this error or its causes.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::DiskFull => true,
            Error::Storage(e)
            | Error::EntryLookup(e)
            | Error::OpenLog { source: e, .. }
            | Error::SyncLog { source: e, .. } => storage_disk_full(e),
            Error::PartitionsNotOpened(failures) => failures.iter().any(|(_, e)| e.is_disk_full()),
            Error::ReplicasNotOpened { cause, .. } => cause.is_disk_full(),
            Error::Io(e) | Error::SaveState(e) | Error::RemoveDir { source: e, .. } => {
                io_disk_full(e)
            }
            _ => false,
        }
    }
}

impl From<Error> for Message {
    fn from(e: Error) -> Message {
        e.to_response()
    }
}

fn storage_disk_full(e: &StorageError) -> bool {
    match e {
        StorageError::DiskFull { .. } => true,
        StorageError::Io { source, .. } => io_disk_full(source),
        _ => false,
    }
}

fn io_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

/// An error and its causes on one line, `what: cause: cause` (the form
/// `anyhow` prints with `{:#}`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
