//! The crate's one error type. Retriable conditions (`DiskFull`) are kept
//! apart from fatal ones; every I/O error keeps the operation and the path.

use std::io;
use std::path::PathBuf;

use wire::batch::BatchError;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Retriable: free space is under the floor, the broker byte budget is
    /// spent, or the file system said ENOSPC. Reads still work; appends
    /// succeed again once space returns. Nothing was written.
    #[error("disk full: {op} on {path}: {detail} (retriable)")]
    DiskFull {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// The process ran out of file descriptors or memory maps (EMFILE,
    /// ENFILE, ENOMEM) while creating or opening a file: a state like a
    /// full disk, not damage. Nothing was written; retry once other
    /// partitions released some (retention, fewer segments).
    #[error("out of resources: {op} on {path}: {detail} (retriable)")]
    OutOfResources {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// Fatal for this partition: an I/O error other than ENOSPC.
    #[error("{op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A write or fdatasync failed earlier; the partition refuses writes
    /// until it is reopened (an fsync error cannot be retried safely).
    #[error("partition {path} refuses writes until reopened: {reason}")]
    Poisoned { path: PathBuf, reason: String },
    /// Bytes on disk fail their CRC or framing; they are never served.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    /// The caller handed in a bad batch.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A replicated batch does not continue the log.
    #[error("batch does not continue the log: {reason}")]
    NotContiguous { reason: String },
    #[error("offset {offset} outside the log [{start}, {end})")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    /// A Raft entry index outside the log's entries `[first, next)`.
    #[error("entry index {index} outside the log's entries [{first}, {next})")]
    EntryOutOfRange { index: u64, first: u64, next: u64 },
    /// An entry index inside the log's range whose batch is gone (key
    /// compaction dropped it): entry lookups are only guaranteed above the
    /// compacted range.
    #[error("entry {index} not found: {reason}")]
    EntryNotFound { index: u64, reason: String },
    #[error("offset {offset} is not a batch boundary")]
    NotBatchBoundary { offset: u64 },
    /// A batch larger than a whole segment can never be appended to this
    /// log (the producer must send smaller batches).
    #[error("batch of {batch_bytes} bytes exceeds the segment size of {segment_bytes_max} bytes")]
    BatchTooLarge {
        batch_bytes: u32,
        segment_bytes_max: u32,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A fault-injection point simulated a power cut; reopen the log.
    #[error("simulated power cut at {point}")]
    Crashed { point: &'static str },
    /// A snapshot archive failed verification or is malformed.
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
}

impl StorageError {
    /// True where retrying the same operation later can succeed without
    /// reopening the partition.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            StorageError::DiskFull { .. } | StorageError::OutOfResources { .. }
        )
    }

    /// Wraps an I/O error, turning ENOSPC/EDQUOT into the retriable `DiskFull`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::DiskFull {
                op,
                path,
                detail: source.to_string(),
            },
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) => {
                StorageError::OutOfResources {
                    op,
                    path,
                    detail: source.to_string(),
                }
            }
            _ => StorageError::Io { op, path, source },
        }
    }
}
