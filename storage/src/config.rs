//! Per-partition settings, with their limits.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::fault::FaultInjector;
use crate::syncer::Syncer;

/// Default segment size: 128 MiB, so a 1 TiB partition is ~8k files and a
/// sealed segment's sparse index (one 8-byte entry per 4 KiB) is 256 KiB.
pub const SEGMENT_BYTES_DEFAULT: u32 = 128 << 20;
/// Smallest segment: one page. Tests use small segments to roll often.
pub const SEGMENT_BYTES_MIN: u32 = 4 << 10;
/// Largest segment: 1 GiB, so positions fit in u32 with room to spare and a
/// whole segment can be mapped on 64-bit hosts without concern.
pub const SEGMENT_BYTES_MAX: u32 = 1 << 30;
/// One sparse index entry per 4 KiB of log: a lookup scans at most ~4 KiB
/// (plus one batch) after the binary search.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4 << 10;
/// Default free-space floor: 256 MiB, two default segments, so a roll
/// always has room for its preallocation with one to spare.
pub const FREE_BYTES_FLOOR_DEFAULT: u64 = 256 << 20;
/// Default age after which the active segment rolls: 7 days.
pub const SEGMENT_AGE_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// When appended bytes become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// An append is acknowledged after the fdatasync that covers it (group
    /// commit: concurrent appends share one). The default.
    EveryBatch,
    /// A background flush every `interval_ms`; appends do not wait for it.
    IntervalMs(u64),
}

/// How old data is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Whole sealed segments are deleted by retention (bytes, age).
    Delete,
    /// Sealed segments are rewritten keeping the newest record per key;
    /// tombstones are dropped once their batch is older than the grace.
    Compact { tombstone_grace_ms: u64 },
}

/// Time source: the system clock, or a manual one for deterministic tests.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Rc<Cell<i64>>),
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Manual(c) => c.get(),
        }
    }
}

/// A byte budget shared by all partitions of a broker (all shards): the
/// preallocated bytes of every segment count against it.
#[derive(Debug)]
pub struct DiskBudget {
    bytes_max: u64,
    bytes_used: AtomicU64,
}

impl DiskBudget {
    pub fn new(bytes_max: u64) -> Arc<Self> {
        Arc::new(DiskBudget {
            bytes_max,
            bytes_used: AtomicU64::new(0),
        })
    }

    pub fn bytes_used(&self) -> u64 {
        self.bytes_used.load(Ordering::Relaxed)
    }

    pub(crate) fn try_take(&self, bytes: u64) -> bool {
        self.bytes_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(bytes)?;
                (next <= self.bytes_max).then_some(next)
            })
            .is_ok()
    }

    pub(crate) fn take(&self, bytes: u64) {
        self.bytes_used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn give(&self, bytes: u64) {
        let _ = self
            .bytes_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub segment_bytes_max: u32,
    /// Roll the active segment once its first append is this old (0: never).
    pub segment_age_ms_max: u64,
    pub index_interval_bytes: u32,
    pub sync_policy: SyncPolicy,
    /// Delete whole sealed segments while the log stays above this size.
    pub retention_bytes_max: Option<u64>,
    /// Delete sealed segments whose newest timestamp is older than this.
    pub retention_age_ms_max: Option<u64>,
    pub cleanup: Cleanup,
    /// Appends fail with `DiskFull` while the file system has less free.
    pub free_bytes_floor: u64,
    pub disk_budget: Option<Arc<DiskBudget>>,
    pub clock: Clock,
    pub faults: FaultInjector,
    /// Retire removed segments by renaming them (`Log::take_retired`) and
    /// let the caller unlink them off the shard, instead of unlinking inline.
    pub defer_deletes: bool,
    /// Issues the fdatasync and directory fsync calls of sync rounds. `None`
    /// (the default): the operating system's, blocking in `Log::sync_now`
    /// and through io_uring on a shard. Tests put a model of the page cache
    /// here ([`crate::syncer`]).
    pub syncer: Option<Rc<dyn Syncer>>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            segment_age_ms_max: SEGMENT_AGE_MS_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            sync_policy: SyncPolicy::EveryBatch,
            retention_bytes_max: None,
            retention_age_ms_max: None,
            cleanup: Cleanup::Delete,
            free_bytes_floor: FREE_BYTES_FLOOR_DEFAULT,
            disk_budget: None,
            clock: Clock::System,
            faults: FaultInjector::default(),
            defer_deletes: false,
            syncer: None,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(StorageError::Config(s));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes_max) {
            return bad(format!(
                "segment_bytes_max {} outside [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}]",
                self.segment_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes > self.segment_bytes_max {
            return bad(format!(
                "index_interval_bytes {} must be in [1, segment_bytes_max]",
                self.index_interval_bytes
            ));
        }
        if let SyncPolicy::IntervalMs(0) = self.sync_policy {
            return bad("sync interval must be > 0 ms".into());
        }
        Ok(())
    }
}
