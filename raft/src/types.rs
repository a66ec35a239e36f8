//! Raft's own data types: entries, hard state, membership, snapshot metadata and
//! messages. The `wire` crate defines their network encoding; nothing here knows
//! about bytes on the wire.

use std::collections::BTreeSet;

use crate::error::Error;

/// A node (broker) id. 0 is reserved for "none".
pub type NodeId = u64;
/// A Raft group id (one per partition, plus the controller group).
pub type GroupId = u64;

/// At most this many members (voters plus learners) in a group. Quorum and
/// progress bookkeeping are linear scans over members; a replication factor
/// above 7 buys nothing for a message queue, 16 leaves room for learners
/// catching up while old voters are still in place.
pub const MEMBERS_MAX: usize = 16;

/// Fixed per-entry bookkeeping counted against byte budgets (index, term, kind),
/// so that many empty entries still consume budget.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// An entry's application bytes, shared by reference count.
pub type Payload = std::sync::Arc<Vec<u8>>;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// The no-op a new leader appends to commit entries of earlier terms
    /// (Raft paper, section 8).
    Empty,
    /// Opaque application bytes (in DRMQ: one encoded record batch),
    /// shared: the unstable log, every follower's append and the driver's
    /// Ready hold the same bytes, never copies.
    Data(Payload),
    /// A membership change; in effect as soon as it is in the log (thesis 4.1).
    Membership(Membership),
}

impl EntryPayload {
    /// Application bytes as a payload (moves them, no copy).
    pub fn data(bytes: Vec<u8>) -> EntryPayload {
        EntryPayload::Data(Payload::new(bytes))
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes counted against budgets (payload plus [`ENTRY_OVERHEAD_BYTES`]).
    pub fn size_bytes(&self) -> u64 {
        let payload_bytes = match &self.payload {
            EntryPayload::Empty => 0,
            EntryPayload::Data(data) => data.len() as u64,
            EntryPayload::Membership(m) => 8 * (m.voters.len() + m.learners.len()) as u64,
        };
        ENTRY_OVERHEAD_BYTES + payload_bytes
    }
}

/// The state that must be durable before any message that depends on it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<NodeId>,
    pub commit: u64,
}

/// The members of a group: voters count for elections and commit; learners
/// only receive the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// A single-server membership change (thesis section 4.1): one at a time, each
/// committed before the next is proposed, so any two majorities overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a node that receives the log but does not vote.
    AddLearner(NodeId),
    /// Make a caught-up learner a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or learner (not the leader itself: transfer first).
    RemoveNode(NodeId),
}

impl Membership {
    /// A membership of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Voters needed for a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// All members, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The membership after `change`, or why it is invalid.
    pub fn apply(&self, change: ConfChange) -> Result<Membership, Error> {
        let mut next = self.clone();
        match change {
            ConfChange::AddLearner(id) => {
                if id == 0 {
                    return Err(Error::InvalidConfChange("node id 0 is reserved"));
                }
                if self.contains(id) {
                    return Err(Error::InvalidConfChange("node is already a member"));
                }
                if self.voters.len() + self.learners.len() >= MEMBERS_MAX {
                    return Err(Error::InvalidConfChange("group has MEMBERS_MAX members"));
                }
                next.learners.insert(id);
            }
            ConfChange::PromoteLearner(id) => {
                if !next.learners.remove(&id) {
                    return Err(Error::InvalidConfChange("node is not a learner"));
                }
                next.voters.insert(id);
            }
            ConfChange::RemoveNode(id) => {
                if !next.voters.remove(&id) && !next.learners.remove(&id) {
                    return Err(Error::InvalidConfChange("node is not a member"));
                }
                if next.voters.is_empty() {
                    return Err(Error::InvalidConfChange("cannot remove the last voter"));
                }
            }
        }
        Ok(next)
    }
}

/// What a snapshot covers: the state after applying entries up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index the snapshot includes.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership in effect at `index`.
    pub membership: Membership,
    /// Size of the payload the driver produces (for chunking and progress).
    pub size_bytes: u64,
}

/// A message between two members of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub group_id: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term (for pre-vote: the term it would campaign in).
    pub term: u64,
    pub body: MessageBody,
}

/// The kinds of message. Responses carry the responder's term in [`Message::term`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me in `term`?" (thesis 9.6). Changes nobody's term.
    PreVote {
        last_index: u64,
        last_term: u64,
    },
    PreVoteResponse {
        reject: bool,
    },
    /// RequestVote. `transfer` is set when campaigning after a TimeoutNow, so
    /// voters skip the leader lease check (thesis 3.10).
    Vote {
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        reject: bool,
    },
    /// AppendEntries.
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// On success `index` is the last index now known to match; on reject it is
    /// the rejected `prev_index` and `hint_index`/`hint_term` point at the
    /// largest index whose term is <= the rejected `prev_term` (fast back-off).
    AppendResponse {
        reject: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    },
    /// Leader liveness, independent of data flow. `commit` is at most the
    /// follower's match index, so it is always safe to apply.
    Heartbeat {
        commit: u64,
    },
    HeartbeatResponse,
    /// One chunk of a snapshot (chunks are resumable by `offset`).
    InstallSnapshot {
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    },
    /// `next_offset`: the next byte the follower wants; `done`: installed (or
    /// the follower already had everything up to `snapshot_index`).
    SnapshotResponse {
        snapshot_index: u64,
        next_offset: u64,
        done: bool,
    },
    /// "Campaign now": the last step of a leadership transfer.
    TimeoutNow,
}

impl MessageBody {
    /// A short name for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::SnapshotResponse { .. } => "SnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}

/// One chunk of an incoming snapshot the driver must write to its staging area
/// (at `offset`; `offset == 0` starts a new staging area).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data: Vec<u8>,
    pub done: bool,
}

/// The role of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the driver may want to observe (not persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: Option<NodeId>,
    pub role: Role,
}
