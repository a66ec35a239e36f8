//! Configuration of one Raft node in one group. Time is counted in ticks; the
//! driver decides how long a tick is (the broker uses 10 ms).

use crate::types::{GroupId, NodeId};

/// Election timeouts above this are surely a unit mistake (ms given as ticks):
/// at a 10 ms tick it is 100 s without a leader.
pub const ELECTION_TIMEOUT_TICKS_MAX: u32 = 10_000;
/// The in-flight window may not exceed this many append messages per follower:
/// each one is tracked in a ring, and 1024 x 1 MiB already exceeds any sane
/// per-peer buffer.
pub const INFLIGHT_MSGS_MAX: usize = 1024;
/// One append message carries at most this many bytes of entries (64 MiB: four
/// times the largest record batch a producer may send, 16 MiB).
pub const MSG_BYTES_MAX: u64 = 64 << 20;
/// The default snapshot chunk: 2 MiB, large enough to amortise a round trip on
/// a LAN, small enough not to delay a heartbeat on the same link by more than
/// ~2 ms at 10 Gbit/s.
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: u64 = 2 << 20;
/// At most this many uncommitted proposals per leader (each is tracked until
/// it commits); at 16 MiB per batch the byte budget is hit long before.
pub const UNCOMMITTED_ENTRIES_MAX: usize = 65_536;

/// Why a [`Config`] was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("node id 0 is reserved for \"none\"")]
    ZeroNodeId,
    #[error("heartbeat_interval_ticks must be at least 1")]
    ZeroHeartbeat,
    #[error(
        "election_timeout_ticks ({election}) must exceed heartbeat_interval_ticks ({heartbeat})"
    )]
    ElectionNotAboveHeartbeat { election: u32, heartbeat: u32 },
    #[error("election_timeout_ticks {0} exceeds ELECTION_TIMEOUT_TICKS_MAX")]
    ElectionTooLong(u32),
    #[error("inflight_msgs_max must be in 1..=INFLIGHT_MSGS_MAX, got {0}")]
    InflightMsgs(usize),
    #[error("msg_bytes_max must be in 1..=MSG_BYTES_MAX, got {0}")]
    MsgBytes(u64),
    #[error("inflight_bytes_max ({inflight}) must be at least msg_bytes_max ({msg})")]
    InflightBytes { inflight: u64, msg: u64 },
    #[error("uncommitted_bytes_max ({uncommitted}) must be at least msg_bytes_max ({msg})")]
    UncommittedBytes { uncommitted: u64, msg: u64 },
    #[error("snapshot_chunk_bytes must be in 1..=MSG_BYTES_MAX, got {0}")]
    SnapshotChunk(u64),
    #[error("committed_bytes_per_ready_max must be at least 1")]
    CommittedBytes,
    #[error(
        "idle_heartbeat_interval_ticks ({idle}) must be at least heartbeat_interval_ticks ({heartbeat}) and below election_timeout_ticks ({election})"
    )]
    IdleHeartbeat {
        idle: u32,
        heartbeat: u32,
        election: u32,
    },
}

/// Settings of one node in one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The group; stamped on every message.
    pub group_id: GroupId,
    /// A follower campaigns after a random timeout in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` without a leader;
    /// a leader with check-quorum steps down after this many ticks without
    /// hearing from a quorum.
    pub election_timeout_ticks: u32,
    /// A leader sends heartbeats this often.
    pub heartbeat_interval_ticks: u32,
    /// A leader with nothing to replicate or tell (every follower in
    /// replicate state holds every entry, all of it committed, and the last
    /// heartbeat carried that commit index) sends heartbeats this often
    /// instead: they then only feed the followers' election timers and its
    /// own check-quorum. In `[heartbeat_interval_ticks,
    /// election_timeout_ticks)`; equal to the heartbeat interval, it changes
    /// nothing.
    pub idle_heartbeat_interval_ticks: u32,
    /// Pre-vote (thesis 9.6): a partitioned node does not inflate terms.
    pub pre_vote: bool,
    /// Check-quorum (thesis 6.2): a leader that has not heard from a quorum for
    /// an election timeout steps down, and followers that hear from a leader
    /// ignore vote requests for an election timeout (leader lease).
    pub check_quorum: bool,
    /// Append messages in flight per follower in replicate state.
    pub inflight_msgs_max: usize,
    /// Entry bytes in flight per follower.
    pub inflight_bytes_max: u64,
    /// Entry bytes per append message (one entry larger than this is still sent alone).
    pub msg_bytes_max: u64,
    /// Bytes of uncommitted proposals a leader accepts before refusing more.
    pub uncommitted_bytes_max: u64,
    /// Committed entry bytes handed out in one `Ready` (at least one entry).
    pub committed_bytes_per_ready_max: u64,
    /// Snapshot payload bytes per InstallSnapshot message.
    pub snapshot_chunk_bytes: u64,
    /// A follower being probed (it came back, or rejected an append) that
    /// lacks more than this many bytes of committed log
    /// ([`crate::Storage::bytes_from`]), and at least half of the log, is
    /// sent the snapshot instead of the entries. 0: only below the log
    /// start.
    pub snapshot_catch_up_bytes: u64,
    /// The index the driver's state machine has applied (on restart).
    pub applied_index: u64,
    /// Whether `Ready::committed_entries` carries the committed entries.
    /// A driver whose log is its state machine (a partition: consumers read
    /// the log itself) turns this off: the applied index then follows the
    /// commit index without reading a single entry back from storage.
    pub deliver_committed_entries: bool,
    /// Seed for the election-timeout randomness.
    pub seed: u64,
}

impl Config {
    /// Defaults for a node: 10-tick elections, 2-tick heartbeats, pre-vote and
    /// check-quorum on, 256 x 1 MiB in flight, 2 MiB snapshot chunks.
    pub fn new(id: NodeId, group_id: GroupId) -> Self {
        Config {
            id,
            group_id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            idle_heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            inflight_msgs_max: 256,
            inflight_bytes_max: 256 << 20,
            msg_bytes_max: 1 << 20,
            uncommitted_bytes_max: 256 << 20,
            committed_bytes_per_ready_max: 16 << 20,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES_DEFAULT,
            snapshot_catch_up_bytes: 0,
            applied_index: 0,
            deliver_committed_entries: true,
            seed: id,
        }
    }

    /// Checks every setting against its limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err(ConfigError::ElectionNotAboveHeartbeat {
                election: self.election_timeout_ticks,
                heartbeat: self.heartbeat_interval_ticks,
            });
        }
        if self.idle_heartbeat_interval_ticks < self.heartbeat_interval_ticks
            || self.idle_heartbeat_interval_ticks >= self.election_timeout_ticks
        {
            return Err(ConfigError::IdleHeartbeat {
                idle: self.idle_heartbeat_interval_ticks,
                heartbeat: self.heartbeat_interval_ticks,
                election: self.election_timeout_ticks,
            });
        }
        if self.election_timeout_ticks > ELECTION_TIMEOUT_TICKS_MAX {
            return Err(ConfigError::ElectionTooLong(self.election_timeout_ticks));
        }
        if self.inflight_msgs_max == 0 || self.inflight_msgs_max > INFLIGHT_MSGS_MAX {
            return Err(ConfigError::InflightMsgs(self.inflight_msgs_max));
        }
        if self.msg_bytes_max == 0 || self.msg_bytes_max > MSG_BYTES_MAX {
            return Err(ConfigError::MsgBytes(self.msg_bytes_max));
        }
        if self.inflight_bytes_max < self.msg_bytes_max {
            return Err(ConfigError::InflightBytes {
                inflight: self.inflight_bytes_max,
                msg: self.msg_bytes_max,
            });
        }
        if self.uncommitted_bytes_max < self.msg_bytes_max {
            return Err(ConfigError::UncommittedBytes {
                uncommitted: self.uncommitted_bytes_max,
                msg: self.msg_bytes_max,
            });
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > MSG_BYTES_MAX {
            return Err(ConfigError::SnapshotChunk(self.snapshot_chunk_bytes));
        }
        if self.committed_bytes_per_ready_max == 0 {
            return Err(ConfigError::CommittedBytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(Config::new(1, 1).validate(), Ok(()));
        let mut c = Config::new(1, 1);
        c.id = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroNodeId));
        let mut c = Config::new(1, 1);
        c.election_timeout_ticks = 2;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ElectionNotAboveHeartbeat { .. })
        ));
        let mut c = Config::new(1, 1);
        c.inflight_msgs_max = INFLIGHT_MSGS_MAX + 1;
        assert_eq!(
            c.validate(),
            Err(ConfigError::InflightMsgs(INFLIGHT_MSGS_MAX + 1))
        );
        let mut c = Config::new(1, 1);
        c.inflight_bytes_max = 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InflightBytes { .. })
        ));
        let mut c = Config::new(1, 1);
        c.snapshot_chunk_bytes = 0;
        assert_eq!(c.validate(), Err(ConfigError::SnapshotChunk(0)));
        // Idle heartbeats: never faster than the heartbeat, and often
        // enough that a follower hears one within its election timeout.
        let mut c = Config::new(1, 1);
        c.idle_heartbeat_interval_ticks = c.election_timeout_ticks - 1;
        assert_eq!(c.validate(), Ok(()));
        for idle in [c.heartbeat_interval_ticks - 1, c.election_timeout_ticks] {
            c.idle_heartbeat_interval_ticks = idle;
            assert!(matches!(
                c.validate(),
                Err(ConfigError::IdleHeartbeat { .. })
            ));
        }
    }
}
