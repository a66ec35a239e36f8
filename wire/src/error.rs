//! Errors: [`WireError`] for bytes that cannot be decoded (or encoded), and
//! [`ErrorCode`], the codes a broker answers with and a client can act on.

use thiserror::Error;

/// Why a frame, a body or a record batch could not be decoded or encoded.
///
/// Every variant is a property of the bytes received (or of the value given to
/// encode); none is a programmer error. A server answers a decode error by
/// closing that one connection with the error's text as the logged reason.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The frame's length field is below the fixed header size.
    #[error("frame length {length} is below the {min}-byte header")]
    FrameTooShort { length: u32, min: u32 },
    /// The frame's length field exceeds the configured maximum. Reported as
    /// soon as the length field is read, before any body bytes are buffered.
    #[error("frame length {length} exceeds the maximum of {max} bytes")]
    FrameTooLarge { length: u64, max: u32 },
    /// The crc32c over the header and body does not match.
    #[error("frame crc32c mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    FrameCrcMismatch { expected: u32, actual: u32 },
    /// The header names a protocol version this build does not speak.
    #[error("unsupported protocol version {version} (this build speaks {supported})")]
    UnsupportedVersion { version: u8, supported: u8 },
    /// The header names a message kind this build does not know.
    #[error("unknown message kind {kind:#06x}")]
    UnknownKind { kind: u16 },
    /// Header bits that must be zero were not.
    #[error("reserved header field is {value:#x}, must be 0")]
    ReservedNonZero { value: u32 },
    /// The frame was decoded as a different kind than it carries.
    #[error("expected a {expected} frame, got {actual}")]
    KindMismatch {
        expected: &'static str,
        actual: &'static str,
    },
    /// The body failed rkyv validation (out-of-bounds pointers, invalid enum
    /// tags, invalid UTF-8, misaligned data, ...).
    #[error("invalid {kind} body: {reason}")]
    InvalidBody { kind: &'static str, reason: String },
    /// The body decoded but a field is out of its allowed range.
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// A record batch is malformed (bad length, crc, count or record).
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// A value could not be encoded (too large for the frame limit, ...).
    #[error("cannot encode {kind}: {reason}")]
    Encode { kind: &'static str, reason: String },
}

/// A protocol-level result.
pub type Result<T> = std::result::Result<T, WireError>;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, retryable = $retry:literal; )*) => {
        /// Error codes carried in [`crate::ErrorResponse`] and per-item results.
        ///
        /// Codes are stable on the wire: never renumber one, only add. A code this
        /// build does not know decodes as [`ErrorCode::Unknown`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $code, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code for a wire value; unknown values map to `Unknown`.
            pub fn from_u16(value: u16) -> ErrorCode {
                match value {
                    $( $code => ErrorCode::$name, )*
                    _ => ErrorCode::Unknown,
                }
            }

            /// Whether the same request may succeed if sent again later
            /// (possibly to another broker, after refreshing metadata).
            pub fn is_retryable(self) -> bool {
                match self { $( ErrorCode::$name => $retry, )* }
            }

            /// A stable snake_case name, for logs and JSON output.
            pub fn name(self) -> &'static str {
                match self { $( ErrorCode::$name => stringify!($name), )* }
            }
        }
    };
}

error_codes! {
    /// Not an error.
    None = 0, retryable = false;
    /// A code this build does not know, or an unexpected server error.
    Unknown = 1, retryable = false;
    /// This broker (or shard) is not the partition's leader; the response
    /// carries a leader hint when one is known.
    NotLeader = 2, retryable = true;
    /// No such topic or partition (it may still be being created).
    UnknownTopicOrPartition = 3, retryable = true;
    /// The broker is below its free-space floor; appends resume by themselves
    /// when space returns.
    DiskFull = 4, retryable = true;
    /// The request exceeds a size limit; sending it again will not help.
    RequestTooLarge = 5, retryable = false;
    /// The request is malformed or inconsistent.
    InvalidRequest = 6, retryable = false;
    /// The request did not complete before its deadline; its outcome may be
    /// unknown (an idempotent producer can retry safely).
    Timeout = 7, retryable = true;
    /// A topic of that name exists already.
    TopicAlreadyExists = 8, retryable = false;
    /// The topic or group name is not allowed.
    InvalidName = 9, retryable = false;
    /// Partition count or replication factor out of range, or more replicas
    /// than brokers.
    InvalidReplication = 10, retryable = false;
    /// Fewer live replicas than a quorum: the write cannot commit now.
    NotEnoughReplicas = 11, retryable = true;
    /// The fetch offset is outside the log's [start, end].
    OffsetOutOfRange = 12, retryable = false;
    /// A record batch failed its crc32c or structure check.
    CorruptBatch = 13, retryable = false;
    /// The consumer-group member is unknown (its lease expired).
    UnknownMember = 14, retryable = false;
    /// The consumer-group generation is stale (fenced).
    IllegalGeneration = 15, retryable = false;
    /// The group is rebalancing; rejoin.
    RebalanceInProgress = 16, retryable = true;
    /// This broker is not the controller.
    NotController = 17, retryable = true;
    /// The partition has no leader right now (election under way).
    LeaderNotAvailable = 18, retryable = true;
    /// An idempotent batch was already appended; the original offsets are returned.
    DuplicateSequence = 19, retryable = false;
    /// An idempotent batch's sequence is not the next one expected.
    OutOfOrderSequence = 20, retryable = false;
    /// The producer epoch is older than the current one.
    ProducerFenced = 21, retryable = false;
    /// A storage error other than a full disk (e.g. failed fsync): the
    /// partition refuses writes until it is reopened.
    StorageError = 22, retryable = true;
    /// The broker is shutting down.
    ShuttingDown = 23, retryable = true;
    /// A peer failed authentication.
    Unauthorized = 24, retryable = false;
    /// The listener already serves as many connections as it is configured
    /// for; the connection is closed. Retry later or at another broker.
    TooManyConnections = 25, retryable = true;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_u16_and_unknown_values_map_to_unknown() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code as u16), code);
        }
        assert_eq!(ErrorCode::from_u16(60_000), ErrorCode::Unknown);
    }

    #[test]
    fn client_actionable_codes_are_marked_retryable_or_not() {
        assert!(ErrorCode::NotLeader.is_retryable());
        assert!(ErrorCode::DiskFull.is_retryable());
        assert!(ErrorCode::Timeout.is_retryable());
        assert!(!ErrorCode::RequestTooLarge.is_retryable());
        assert!(!ErrorCode::InvalidRequest.is_retryable());
        assert!(!ErrorCode::CorruptBatch.is_retryable());
    }
}
