//! DRMQ storage: the segmented partition log, which is also the Raft log
//! (one copy of the bytes). Knows nothing of Raft or the network.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `compact` | key compaction of sealed segments (compacted topics), atomic per-segment swap; planned and swapped in on the log's thread, the rewriting (`CompactJob`) on one that may block |
//! | [`config`] | per-partition settings and their limits |
//! | [`error`] | the one error type; `DiskFull` is retriable, the rest fatal |
//! | [`fault`] | named fault-injection points (append, roll, fsync, truncate, index write, compact, install) |
//! | `index` | sparse offset and time index files, memory-mapped |
//! | `segment` | one preallocated, memory-mapped segment file |
//! | [`log`] | the partition log: appends and reads (`log/mod.rs`), split by job into recovery (`open`), the Raft-entry view, the log start (retention, `StartPlan`) and sync rounds |
//! | [`shard`] | the only glommio code: io_uring fdatasync with group commit |
//! | [`notify`] | a general async signal for one thread (`Notify`) |
//! | [`snapshot`] | snapshot archives: take (hard links + manifest), read in CRC'd chunks, install by directory exchange |
//! | [`syncer`] | the seam every sync round's fdatasync goes through (the OS's, or a test's model of the page cache) |
//!
//! The core (`log`, `segment`, `index`) is synchronous and runtime-free: a
//! [`Log`] is owned by one thread (a glommio shard) and takes no locks.
//! Durability is driven from outside through sync rounds
//! ([`Log::begin_sync`] / [`Log::finish_sync`]); the shard performs them with
//! io_uring so nothing blocks the executor. See `storage/README.md` for the
//! on-disk format and the durability contract.

mod compact;
pub mod config;
pub mod error;
pub mod fault;
mod index;
pub mod log;
pub mod notify;
mod segment;
pub mod shard;
pub mod snapshot;
pub mod syncer;

pub use compact::{
    CompactDone, CompactJob, CompactReport, COMPACT_KEY_BYTES_MAX, COMPACT_KEY_COUNT_MAX,
};
pub use config::{
    Cleanup, Clock, DiskBudget, LogConfig, SyncPolicy, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};
pub use error::{Result, StorageError};
pub use fault::{Fault, FaultInjector, FaultPoint};
pub use log::{
    AppendInfo, LastBatch, Log, ReadOut, RecoveryReport, Removed, StartPlan, SyncJob, Truncation,
};
pub use segment::Retired;
pub use snapshot::{
    Chunk, SnapshotInstaller, SnapshotMeta, SnapshotPlan, SnapshotReader, SNAPSHOT_CHUNK_BYTES_MAX,
};
pub use syncer::{OsSyncer, Syncer};
