//! Catch-up by snapshot: a follower that needs entries the leader no longer
//! holds (retention, compaction), or that is so far behind that copying the
//! leader's sealed segments beats replaying them, gets an archive of them.
//!
//! Raft only coordinates: its snapshot payload is a 20-byte [`Ticket`]
//! naming the leader's archive, sent on the control lane like any Raft
//! message. The archive streams on a connection of its own per transfer
//! ([`source`] on the leader, [`sink`] on the follower), authenticated like
//! the peer lanes, in CRC'd chunks of at most 2 MiB, rate-limited per broker
//! ([`RateLimiter`]), with every file read and write on glommio's blocking
//! pool. The follower steps the ticket into Raft only once the archive is
//! completely staged and durable; then its driver installs it (directory
//! exchange, reopen in place) as the Ready asks, and Raft acknowledges.
//!
//! | step | where | what survives a crash |
//! |---|---|---|
//! | take archive | leader, `source::take` | hard links + `snapshot.meta`; a restart removes archives |
//! | stream | leader → follower, own TCP connection | staged chunks are fdatasync'ed: the follower resumes from them |
//! | install | follower driver, `RaftGroup::install_snapshot` | `renameat2(RENAME_EXCHANGE)`: the old or the new partition, never a mix |

pub mod sink;
pub mod source;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storage::SnapshotReader;

/// Bytes of an encoded [`Ticket`].
pub const TICKET_BYTES: usize = 20;
const TICKET_MAGIC: u32 = u32::from_le_bytes(*b"DRTK");
/// Chunk size on the transfer connection: the 2 MiB maximum.
pub const CHUNK_BYTES: usize = storage::SNAPSHOT_CHUNK_BYTES_MAX;
/// A transfer socket that moves nothing for this long is given up (the
/// other side stopped or died); the follower tries again, resuming.
pub const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// An archive no transfer used for this long is removed (it pins the
/// disk space of segments retention has since deleted).
pub const ARCHIVE_IDLE: Duration = Duration::from_secs(30);
/// After a failed attempt to take an archive (a full disk, a segment
/// removed by retention meanwhile), the leader waits this long.
pub const ARCHIVE_RETRY: Duration = Duration::from_secs(5);
/// After a failed fetch, the follower waits this long before the next.
pub const FETCH_RETRY: Duration = Duration::from_secs(1);

/// Raft's snapshot payload: which archive to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// [`SnapshotReader::archive_id`]: its manifest CRC.
    pub archive_id: u32,
    pub total_bytes: u64,
}

impl Ticket {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(TICKET_BYTES);
        b.extend_from_slice(&TICKET_MAGIC.to_le_bytes());
        b.extend_from_slice(&self.archive_id.to_le_bytes());
        b.extend_from_slice(&self.total_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for anything that is not a ticket this build wrote.
    pub fn decode(b: &[u8]) -> Option<Ticket> {
        if b.len() != TICKET_BYTES {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
        if u32_at(0) != TICKET_MAGIC || u32_at(16) != crc32c::crc32c(&b[..16]) {
            return None;
        }
        Some(Ticket {
            archive_id: u32_at(4),
            total_bytes: u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
        })
    }
}

/// A leader's archive of one partition: sealed segments up to entry
/// `index` (term `term`), hard-linked into `dir`.
pub struct Archive {
    pub index: u64,
    pub term: u64,
    pub dir: PathBuf,
    pub reader: Arc<SnapshotReader>,
    pub ticket: Ticket,
    /// Transfers reading it now.
    pub sends: Cell<u32>,
    pub last_used: Cell<Instant>,
}

/// What the group's Raft storage and the snapshot tasks share about
/// archives. Only the shard's thread touches it.
#[derive(Default)]
pub struct Archives {
    /// The archive Raft offers (see `replica::LogStore::snapshot_meta`).
    pub current: RefCell<Option<Rc<Archive>>>,
    /// Replaced archives still being read by a transfer: removed when the
    /// last one ends.
    pub retired: RefCell<Vec<Rc<Archive>>>,
    /// An archive is being taken.
    pub taking: Cell<bool>,
    /// When taking one last failed (the next try waits [`ARCHIVE_RETRY`]).
    pub failed_at: Cell<Option<Instant>>,
    /// Transfers being sent, by follower: for telemetry and status.
    pub sending: RefCell<std::collections::BTreeMap<u64, Rc<SendProgress>>>,
}

impl Archives {
    /// The current archive if it still reaches the log start point
    /// `start_prev` (retention may have moved past an older one).
    pub fn usable(&self, start_prev: u64) -> Option<Rc<Archive>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|a| a.index >= start_prev)
            .cloned()
    }
}

/// One transfer as its sender sees it.
pub struct SendProgress {
    pub to: u64,
    pub bytes_total: u64,
    /// Archive offset sent up to.
    pub bytes_sent: Cell<u64>,
    pub started: Instant,
    /// `(at, bytes_sent)` of the last rate sample.
    pub rate_mark: Cell<(Instant, u64)>,
    pub bytes_per_sec: Cell<u64>,
}

impl SendProgress {
    /// The send rate since the last call (at most once per sample interval).
    pub fn sample_rate(&self) -> u64 {
        let (at, sent) = self.rate_mark.get();
        let now = Instant::now();
        let secs = now.saturating_duration_since(at).as_secs_f64();
        if secs >= 0.5 {
            let bytes = self.bytes_sent.get().saturating_sub(sent);
            self.bytes_per_sec.set((bytes as f64 / secs) as u64);
            self.rate_mark.set((now, self.bytes_sent.get()));
        }
        self.bytes_per_sec.get()
    }
}

/// Per-shard snapshot counters (totals since start).
#[derive(Default)]
pub struct SnapshotCounters {
    /// Transfers this shard began sending (a resumed one counts again).
    pub started: Cell<u64>,
    /// Transfers that sent their last chunk.
    pub finished: Cell<u64>,
    /// Transfers that continued a follower's staged bytes (sender side)
    /// or fetches that resumed staged bytes (receiver side).
    pub resumed: Cell<u64>,
    /// Transfers that ended early, either side.
    pub failed: Cell<u64>,
    pub bytes_sent: Cell<u64>,
    pub bytes_received: Cell<u64>,
    /// Archives installed in place of a partition.
    pub installs: Cell<u64>,
    /// Archives taken.
    pub archives: Cell<u64>,
}

/// The broker-wide send budget, shared by every shard: a virtual clock
/// that each reservation advances by `bytes / rate`.
pub struct RateLimiter {
    bytes_per_sec: f64,
    /// When the budget is free again (`None`: never used).
    next_free: Mutex<Option<Instant>>,
}

/// Up to this much sending may be saved up while idle.
const RATE_BURST: Duration = Duration::from_millis(50);

impl RateLimiter {
    pub fn new(mb_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec: (mb_per_sec.max(1) * 1_000_000) as f64,
            next_free: Mutex::new(None),
        }
    }

    /// Reserves `bytes`; returns how long to wait before sending them.
    /// Never blocks beyond the lock's few instructions.
    pub fn reserve(&self, bytes: usize) -> Duration {
        self.reserve_at(bytes, Instant::now())
    }

    fn reserve_at(&self, bytes: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        let mut next = match self.next_free.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let floor = now.checked_sub(RATE_BURST).unwrap_or(now);
        let start = next.map_or(now, |n| n.max(floor));
        *next = Some(start + cost);
        start.saturating_duration_since(now)
    }
}

/// What a group's snapshot tasks need from the shard.
pub struct SnapshotEnv {
    pub broker: u64,
    pub shard: usize,
    pub identity: Rc<crate::peer::Identity>,
    /// Peer-listen address of shard 0 of every broker.
    pub peers: std::collections::BTreeMap<u64, std::net::SocketAddr>,
    pub limiter: Arc<RateLimiter>,
    pub counters: Rc<SnapshotCounters>,
    pub janitor: flume::Sender<crate::runtime::Chore>,
    pub telemetry: crate::telemetry::Telemetry,
}

impl SnapshotEnv {
    /// Where broker `node`'s shard (the same as ours) listens for peers.
    pub fn peer_addr(&self, node: u64) -> Option<std::net::SocketAddr> {
        let a = self.peers.get(&node)?;
        Some(std::net::SocketAddr::new(
            a.ip(),
            a.port() + self.shard as u16,
        ))
    }

    /// Removes a directory off the shard.
    pub fn remove_dir(&self, dir: PathBuf) {
        if let Err(e) = self.janitor.try_send(crate::runtime::Chore::RemoveDir(dir)) {
            if let crate::runtime::Chore::RemoveDir(d) = e.into_inner() {
                glommio::spawn_local(async move {
                    let _ = glommio::executor()
                        .spawn_blocking(move || std::fs::remove_dir_all(d))
                        .await;
                })
                .detach();
            }
        }
    }
}

/// Archives live in a directory of their own beside `partitions/` (the same
/// file system, for hard links; no topic name can collide with them); a
/// restart removes it whole (a resuming follower then starts over).
pub const ARCHIVES_DIR: &str = "snapshots";

/// A fresh archive directory for entry `index` of the partition in `dir`
/// (`<data>/partitions/<name>`): `<data>/snapshots/<name>-<index>-<n>`, `n`
/// unique in this process, so a new archive never reuses the directory of
/// one still being read or removed.
pub fn archive_dir(dir: &std::path::Path, index: u64) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let data = dir.parent().and_then(|p| p.parent()).unwrap_or(dir);
    data.join(ARCHIVES_DIR).join(format!("{name}-{index}-{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_anything_else_is_refused() {
        let t = Ticket {
            archive_id: 0xDEAD_BEEF,
            total_bytes: 3 << 30,
        };
        let b = t.encode();
        assert_eq!(b.len(), TICKET_BYTES);
        assert_eq!(Ticket::decode(&b), Some(t));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert_eq!(Ticket::decode(&bad), None, "flipped byte {i}");
        }
        assert_eq!(Ticket::decode(&b[..19]), None);
        assert_eq!(Ticket::decode(&[]), None);
    }

    #[test]
    fn the_rate_limiter_spaces_reservations_by_the_budget() {
        let l = RateLimiter::new(10); // 10 MB/s: 1 MB costs 100 ms
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Back to back: the first goes at once, each next one 100 ms later.
        let waits: Vec<_> = (0..4).map(|_| l.reserve_at(1_000_000, t0)).collect();
        assert_eq!(waits, vec![ms(0), ms(100), ms(200), ms(300)]);
        // Idle time is saved up only as far as the burst allows.
        let later = t0 + ms(10_000);
        assert_eq!(l.reserve_at(500_000, later), ms(0));
        assert_eq!(l.reserve_at(1_000_000, later), ms(0), "50 ms of burst");
        assert_eq!(l.reserve_at(1_000_000, later), ms(100));
    }
}
