//! The client's errors: [`ClientError`] for one request and its connection,
//! [`PipelineError`] for the producer, consumer and routing built on them.

use std::net::SocketAddr;

use thiserror::Error;
use wire::ErrorCode;

/// Why one request (or the connection for it) failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no broker reachable (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: protocol error: {source}")]
    Protocol {
        addr: SocketAddr,
        source: wire::WireError,
    },
    #[error("{addr}: connection closed before the response")]
    Closed { addr: SocketAddr },
    #[error("broker answered {code}: {message}")]
    Broker {
        code: ErrorCode,
        message: String,
        /// Where to go instead (NotLeader, NotController).
        hint: Option<wire::LeaderHint>,
    },
    #[error("bad --brokers value `{0}`: expected HOST:PORT[,HOST:PORT...]")]
    BadBrokers(String),
    #[error("unexpected response {0}")]
    Unexpected(&'static str),
}

/// Errors of the pipelined client and of routing.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("metadata: {0}")]
    Metadata(String),
    /// The cluster does not list the topic at all.
    #[error("metadata: no topic {0}")]
    NoTopic(String),
    /// The cluster lists the topic with an error code (retryable ones, such
    /// as a topic still being created, are retried first).
    #[error("metadata: topic {topic}: {code}")]
    Topic { topic: String, code: ErrorCode },
    /// A partition has no leader (an election is under way).
    #[error("metadata: {topic}-{partition}: no leader")]
    NoLeader { topic: String, partition: u32 },
    #[error("invalid client setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{topic}-{partition}: {reason}")]
    Partition {
        topic: String,
        partition: u32,
        reason: String,
    },
    /// A partition's requests kept failing past the caller's deadline.
    #[error("{topic}-{partition}: gave up after {attempts} attempt(s): {last}")]
    GaveUp {
        topic: String,
        partition: u32,
        attempts: u32,
        last: String,
    },
    /// The topic exists with another partition count than asked for.
    #[error("topic {topic} exists with {have} partitions, not {want}")]
    TopicMismatch { topic: String, have: u32, want: u32 },
    #[error("flush did not finish before its deadline ({left} batch(es) left)")]
    FlushDeadline { left: usize },
}

impl PipelineError {
    /// Why sending again may help (None: it will not).
    pub fn retry_cause(&self) -> Option<crate::RetryCause> {
        use crate::RetryCause;
        match self {
            PipelineError::Client(e) => RetryCause::of_error(e),
            PipelineError::Topic { code, .. } => RetryCause::from_code(*code, None),
            PipelineError::NoLeader { .. } => Some(RetryCause::Unavailable {
                code: ErrorCode::LeaderNotAvailable,
            }),
            // A broker that names a shard or host the client cannot use:
            // its metadata may be mid-change.
            PipelineError::Metadata(_) => Some(RetryCause::Unavailable {
                code: ErrorCode::LeaderNotAvailable,
            }),
            PipelineError::NoTopic(_)
            | PipelineError::Config { .. }
            | PipelineError::Partition { .. }
            | PipelineError::GaveUp { .. }
            | PipelineError::TopicMismatch { .. }
            | PipelineError::FlushDeadline { .. } => None,
        }
    }
}
