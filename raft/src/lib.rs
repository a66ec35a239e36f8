//! DRMQ Raft: the Raft consensus algorithm as a pure, deterministic state
//! machine. No I/O, no clock, no threads, no global randomness: messages,
//! ticks and proposals go in; a [`Ready`] (what to persist, send and apply)
//! comes out, and the driver hands it back with [`Raft::advance`].
//!
//! # Layout
//! | module | what it holds |
//! |---|---|
//! | [`raft`] | [`Raft`]: elections (pre-vote, check-quorum), replication, commit, transfer, snapshots, membership; [`Ready`] and its persistence contract |
//! | [`log`] | [`RaftLog`]: durable log (through [`Storage`]) plus the unstable tail |
//! | [`progress`] | per-follower [`Progress`]: probe / replicate / snapshot, the in-flight window |
//! | [`storage`] | the read-only [`Storage`] trait and [`MemStorage`] |
//! | [`balance`] | planning leadership transfers that spread leaders over nodes |
//! | [`heartbeat`] | coalescing the heartbeats of many groups into one batch per peer |
//! | [`types`] | entries, hard state, membership, snapshot metadata, messages |
//! | [`config`] | [`Config`] and its limits, [`Config::validate`] |
//! | [`error`] | [`Error`] (retryable vs fatal) and [`StorageError`] |
//! | [`rng`] | the seeded SplitMix64 used for election timeouts |
//!
//! # Persistence contract
//! Everything in a [`Ready`] must be made durable (snapshot, then entries, then
//! hard state) *before* its messages are sent; see [`Ready`] for the numbered
//! steps. Raft counts an entry as its own (the leader's self-vote in the commit
//! quorum) and hands out committed entries only once they are durable, i.e.
//! after the `advance` of the Ready that carried them.
//!
//! # Driving a node
//! ```
//! use raft::{Config, Membership, MemStorage, Raft, Role};
//!
//! let storage = MemStorage::new(Membership::with_voters([1]));
//! let mut node = Raft::new(Config::new(1, 7), storage)?;
//! node.campaign(); // a single voter wins at once
//! assert_eq!(node.role(), Role::Leader);
//! let index = node.propose(b"one record batch".to_vec())?;
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let ready = node.ready()?;
//!     // 1-4: make the snapshot, entries and hard state durable...
//!     node.storage_mut().append(&ready.entries);
//!     if let Some(hard_state) = ready.hard_state {
//!         node.storage_mut().set_hard_state(hard_state);
//!     }
//!     // 5: ...then send `ready.messages` (none here: a single node)...
//!     // 6: ...and apply what is committed.
//!     applied.extend(ready.committed_entries);
//!     node.advance()?;
//! }
//! assert_eq!(applied.last().map(|e| e.index), Some(index));
//! # Ok::<(), raft::Error>(())
//! ```
//! Time goes in through [`Raft::tick`], messages through [`Raft::step`].

pub mod balance;
pub mod config;
pub mod error;
pub mod heartbeat;
pub mod log;
pub mod progress;
pub mod raft;
pub mod rng;
pub mod storage;
pub mod types;

pub use balance::{plan_leader_moves, transfer_targets, GroupLeadership, LeaderMove};
pub use config::{Config, ConfigError};
pub use error::{Error, StorageError};
pub use heartbeat::{coalesce, Beat, HeartbeatBatch};
pub use log::RaftLog;
pub use progress::{Progress, ProgressState};
pub use raft::{Raft, Ready};
pub use rng::Rng;
pub use storage::{InitialState, MemStorage, Storage};
pub use types::{
    ConfChange, Entry, EntryPayload, GroupId, HardState, Membership, Message, MessageBody, NodeId,
    Payload, Role, SnapshotChunk, SnapshotMeta, SoftState,
};
