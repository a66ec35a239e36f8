//! The crate's error type. Programmer errors (calling `ready` twice without
//! `advance`, a message for another group) are assertions; everything here is an
//! operating error that the driver handles.

use crate::types::NodeId;

/// Errors returned by [`crate::Raft`] and by [`crate::Storage`] implementations.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// This node is not the leader; retry at `leader` if known. Retryable.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// A leadership transfer is under way; proposals resume after it. Retryable.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// The leader holds too many uncommitted bytes or entries. Retryable.
    #[error("too many uncommitted entries ({entry_count} entries, {entry_bytes} bytes)")]
    UncommittedFull {
        entry_count: usize,
        entry_bytes: u64,
    },
    /// A membership change is still uncommitted, or this leader has not yet
    /// committed an entry of its own term. Retryable.
    #[error("a membership change is pending")]
    ConfChangePending,
    /// A learner must catch up before it may be promoted to voter. Retryable.
    #[error("learner {id} has not caught up (match {match_index}, commit {commit_index})")]
    LearnerBehind {
        id: NodeId,
        match_index: u64,
        commit_index: u64,
    },
    /// The proposal is larger than one append message may carry. Fatal for it.
    #[error("proposal of {entry_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    ProposalTooLarge { entry_bytes: u64, limit_bytes: u64 },
    /// The membership change makes no sense (unknown node, too many members...).
    #[error("invalid membership change: {0}")]
    InvalidConfChange(&'static str),
    /// Leadership can only go to a voter other than self.
    #[error("invalid leadership transfer target {0}")]
    InvalidTransferTarget(NodeId),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The storage could not serve a read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Persisted state contradicts itself (e.g. commit beyond the last entry).
    #[error("corrupt persisted state: {0}")]
    Corrupt(String),
    /// The leader says entry `commit` is committed here, but this replica's
    /// log ends before it: entries it acknowledged were lost (a wiped or
    /// damaged disk). The replica must stop rather than vote or ack again.
    #[error("the leader counts entry {commit} as held here, but this log ends at {last_index}: acknowledged entries were lost")]
    LogLost { commit: u64, last_index: u64 },
}

impl Error {
    /// True when the same call may succeed later without any change by the caller.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::TransferInProgress
                | Error::UncommittedFull { .. }
                | Error::ConfChangePending
                | Error::LearnerBehind { .. }
        )
    }
}

/// Errors a [`crate::Storage`] returns.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The index is below the log start (dropped by a snapshot).
    #[error("index {0} is compacted")]
    Compacted(u64),
    /// The index is beyond the last entry.
    #[error("index {0} is not available")]
    Unavailable(u64),
    /// The snapshot asked for was replaced by a newer one.
    #[error("snapshot at index {0} is no longer available")]
    SnapshotOutOfDate(u64),
    /// The storage cannot produce a snapshot (yet): the follower that needs
    /// one waits in snapshot state, and the leader asks again on the next
    /// heartbeat response.
    #[error("no snapshot can be sent yet")]
    SnapshotUnavailable,
    /// The storage failed (disk error); the driver should fail the group.
    #[error("storage I/O error: {0}")]
    Io(String),
}
