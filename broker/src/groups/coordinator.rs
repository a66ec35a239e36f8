//! The coordinator of one offsets partition, on the shard that owns the
//! partition, active while this broker leads it. Sharded type: one
//! [`Coordinators`] per shard, touched only by that shard's tasks.
//!
//! Every change goes through the partition's Raft log: decided against the
//! in-memory state, proposed as one record, applied when committed. One
//! change at a time per partition (a one-permit semaphore), so the state a
//! change was decided on is exactly the state at its place in the log. A
//! new leader reads the whole log before it answers (`Loading` meanwhile).
//! A proposal that may have reached the log but whose outcome is unknown
//! (timed out, leadership moved) marks the state stale, so the next request
//! reads the log again rather than trust a guess. A change refused before
//! the log (too large, malformed, disk full) leaves the state as it is:
//! commits are bounded and measured against the segment before proposing.
//!
//! Leases are not replicated (a heartbeat is not a write): a coordinator
//! that loads the log in a new term gives every member a full lease from
//! that moment, plus [`FAILOVER_GRACE`] for renewals a deposed coordinator
//! may still have given, so a failover can only lengthen a lease, never cut
//! it short. A reload within the same term keeps the leases it had (this
//! leader gave every renewal of the term): failed requests cannot keep a
//! crashed member alive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft::Role;
use wire::{
    Acks, DescribeGroupResponse, ErrorCode, FetchRequest, FetchedOffset, GroupHeartbeatResponse,
    GroupMember, GroupSummary, JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse, Message,
    OffsetCommitResponse, OffsetFetchResponse, PartitionResult, TopicPartition,
};

use super::state::{Change, Command, Group, Groups, Member};
use super::{GroupError, LEASE_MS_DEFAULT, LEASE_MS_MAX, LEASE_MS_MIN, OFFSETS_TOPIC};
use crate::error::{Error, Result};
use crate::partition::{Partition, FETCH_BYTES_MAX};
use crate::shard::Shard;
use crate::telemetry::{Event, GroupLeaseSample, GroupOffsetsSample, Telemetry};

/// How often each shard looks for expired leases: the delay it adds to a
/// crashed member's lease before its partitions move.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// What a new coordinator adds to every member's lease when it loads the
/// log. The coordinator it replaces may not know yet that it was deposed
/// and may go on renewing leases until check-quorum steps it down: within
/// two election timeouts (2 s) of losing its quorum, while the new leader
/// cannot be elected before the voters have not heard from it for one
/// election timeout. Granting this much more means no member is expired
/// while an old coordinator's renewal may still be valid on the member.
const FAILOVER_GRACE: Duration = Duration::from_millis(
    crate::raft_group::TICK.as_millis() as u64 * 2 * crate::raft_group::ELECTION_TICKS as u64,
);
/// How long a new leader waits for its first entry to commit before it
/// answers `Loading` (an election settles well within this).
const LOAD_WAIT: Duration = Duration::from_secs(5);
/// How long a change may wait for its commit (a majority of the offsets
/// partition's replicas must be up).
const PROPOSE_TIMEOUT_MS: u32 = 10_000;
/// Most members one group may have: a member list of 1,000 is a record
/// of about 100 KiB, far inside a segment.
const MEMBERS_MAX: usize = 1_000;
/// Longest client id kept (it is replicated with every generation).
const CLIENT_ID_BYTES_MAX: usize = 255;
/// Most topics one member may subscribe to.
const TOPICS_PER_MEMBER_MAX: usize = 100;
/// Longest metadata string of a committed offset (replicated with it).
const COMMIT_METADATA_BYTES_MAX: usize = 1024;
/// Most offsets one commit may carry (a topic's partitions at most: a
/// member commits one topic). Its records must also fit one segment of the
/// offsets topic, which [`Coordinator::commit`] checks before proposing.
const OFFSETS_PER_COMMIT_MAX: usize = crate::topics::PARTITIONS_PER_TOPIC_MAX as usize;

/// Partition counts of topics, as this broker knows them.
pub type TopicPartitions<'a> = dyn Fn(&str) -> Option<u32> + 'a;

/// The coordinators of this shard, by offsets partition.
#[derive(Default)]
pub(crate) struct Coordinators {
    by_partition: RefCell<HashMap<u32, Rc<Coordinator>>>,
}

impl Coordinators {
    /// The coordinator of `index` over `partition` (a new one if the
    /// partition replica is not the one it had: the topic was recreated).
    pub(crate) fn get(
        &self,
        index: u32,
        partition: Rc<Partition>,
        telemetry: &Telemetry,
    ) -> Rc<Coordinator> {
        let mut map = self.by_partition.borrow_mut();
        match map.get(&index) {
            Some(c) if Rc::ptr_eq(&c.partition, &partition) => c.clone(),
            _ => {
                let c = Rc::new(Coordinator::new(index, partition, telemetry.clone()));
                map.insert(index, c.clone());
                c
            }
        }
    }

    pub(crate) fn all(&self) -> Vec<Rc<Coordinator>> {
        self.by_partition.borrow().values().cloned().collect()
    }
}

/// Looks for expired leases every [`LEASE_CHECK_INTERVAL`], forever (a
/// shard task). Each coordinator's expiry runs as a task of its own, so one
/// whose change waits on a slow quorum holds up no other.
pub(crate) async fn lease_loop(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(LEASE_CHECK_INTERVAL).await;
        for c in shard.consumer_groups.all() {
            if c.expiring.get() || !c.expiry_due() {
                continue;
            }
            c.expiring.set(true);
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let topics = |t: &str| shard.topics.borrow().get(t).map(|r| r.partitions);
                c.expire_leases(&topics).await;
                c.expiring.set(false);
            })
            .detach();
        }
    }
}

struct Loaded {
    term: u64,
    /// A proposal of this term may or may not have committed: the log is
    /// read again before the next answer (the leases stay).
    stale: bool,
    groups: Groups,
    /// (group, member) → when its lease ends.
    leases: HashMap<(String, String), Instant>,
}

pub(crate) struct Coordinator {
    index: u32,
    partition: Rc<Partition>,
    /// One change (or load) at a time.
    lock: glommio::sync::Semaphore,
    loaded: RefCell<Option<Loaded>>,
    ids: std::cell::Cell<u64>,
    /// An expiry task runs.
    expiring: std::cell::Cell<bool>,
    /// Membership changes go to the event feed.
    telemetry: Telemetry,
}

impl Coordinator {
    fn new(index: u32, partition: Rc<Partition>, telemetry: Telemetry) -> Coordinator {
        Coordinator {
            index,
            partition,
            lock: glommio::sync::Semaphore::new(1),
            loaded: RefCell::new(None),
            ids: std::cell::Cell::new(0),
            expiring: std::cell::Cell::new(false),
            telemetry,
        }
    }

    fn is_leading(&self) -> bool {
        self.partition.role() == Role::Leader && self.partition.stopped_reason().is_none()
    }

    /// Makes sure the state is loaded for the current term (lock held).
    async fn ready(&self) -> Result<()> {
        let term = self.partition.group.term();
        if !self.is_leading() {
            *self.loaded.borrow_mut() = None;
            return Err(Error::NotLeaderHere {
                leader: self.partition.leader(),
            });
        }
        let same_term = match self.loaded.borrow().as_ref() {
            Some(l) if l.term == term && !l.stale => return Ok(()),
            Some(l) => l.term == term,
            None => false,
        };
        if !same_term {
            *self.loaded.borrow_mut() = None;
        }
        // A stale state of this term stays while the log is read (its
        // leases keep running out, and the lease loop retries the load).
        let groups = self.load(term).await?;
        let now = Instant::now();
        let mut before = if same_term {
            self.loaded
                .borrow_mut()
                .take()
                .map(|l| l.leases)
                .unwrap_or_default()
        } else {
            HashMap::new()
        };
        let mut leases = HashMap::new();
        for (name, g) in &groups.groups {
            for m in g.members.values() {
                let key = (name.clone(), m.id.clone());
                let lease = Duration::from_millis(u64::from(m.lease_ms));
                let until = match before.remove(&key) {
                    // This leader's own lease of this term.
                    Some(until) => until,
                    // A join of this term whose answer was lost.
                    None if same_term => now + lease,
                    // A new term: renewals by a deposed leader may be out.
                    None => now + lease + FAILOVER_GRACE,
                };
                leases.insert(key, until);
            }
        }
        *self.loaded.borrow_mut() = Some(Loaded {
            term,
            stale: false,
            groups,
            leases,
        });
        Ok(())
    }

    /// Reads the partition's log into the group state, once this leader's
    /// first entry has committed (so the log holds every committed change).
    async fn load(&self, term: u64) -> Result<Groups> {
        let g = &self.partition.group;
        let deadline = Instant::now() + LOAD_WAIT;
        loop {
            let covered = g.high_watermark.get() >= g.part.log().next_offset();
            if covered && g.term() == term && self.is_leading() {
                break;
            }
            if Instant::now() >= deadline || g.term() != term || !self.is_leading() {
                return Err(GroupError::Loading {
                    partition: self.index,
                }
                .into());
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let end = g.high_watermark.get();
        let mut at = g.part.log().log_start_offset();
        let mut groups = Groups::default();
        // Bounded: every read advances `at` or ends the loop.
        while at < end {
            let r = self
                .partition
                .fetch(FetchRequest {
                    topic: OFFSETS_TOPIC.to_owned(),
                    partition: self.index,
                    offset: at,
                    max_bytes: FETCH_BYTES_MAX as u32,
                    min_bytes: 1,
                    max_wait_ms: 0,
                })
                .await?;
            let before = at;
            for batch in wire::batches(&r.batches) {
                // A state read past a bad batch would be a guess (offsets
                // or memberships missing): keep answering `Loading`.
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(partition = self.index, offset = at, error = %e, "offsets log: bad batch; the coordinator stays loading");
                        return Err(GroupError::Loading {
                            partition: self.index,
                        }
                        .into());
                    }
                };
                at = at.max(batch.last_offset() + 1);
                if batch.is_control() {
                    continue;
                }
                for rec in batch.records().flatten() {
                    match rec.value.map(serde_json::from_slice::<Command>) {
                        Some(Ok(c)) => groups.apply(c),
                        _ => tracing::warn!(
                            partition = self.index,
                            offset = rec.offset,
                            "offsets log: a record that is not a group command, skipped"
                        ),
                    }
                }
            }
            if at == before {
                break;
            }
            glommio::yield_if_needed().await;
        }
        Ok(groups)
    }

    /// Writes `c` to the log and applies it once committed (lock held). A
    /// commit of several partitions is one record per partition (each keyed
    /// by its group, topic and partition: the log stays ready for key
    /// compaction), all in one batch, so they commit together.
    async fn commit(&self, c: Command) -> Result<()> {
        let parts = c.split();
        let values = parts
            .iter()
            .map(|c| serde_json::to_vec(c).map(|v| (c.key(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::Command)?;
        let mut b = wire::RecordBatchBuilder::new();
        let now = crate::replica::now_ms();
        for (key, value) in &values {
            b.push(wire::NewRecord {
                timestamp_ms: now,
                key: Some(key.as_bytes()),
                value: Some(value),
                headers: &[],
            });
        }
        let batch = b.finish();
        let segment = self.partition.group.part.log().config().segment_bytes_max as usize;
        let limit = segment.min(wire::batch::BATCH_BYTES_MAX);
        if batch.len() > limit {
            return Err(GroupError::TooLarge {
                what: "a change",
                limit: format!(
                    "{} bytes of records, more than the {limit}-byte segment of {OFFSETS_TOPIC}",
                    batch.len()
                ),
            }
            .into());
        }
        match self
            .partition
            .produce(Acks::Quorum, PROPOSE_TIMEOUT_MS, &batch)
            .await
        {
            Ok(_) => {
                if let Some(l) = self.loaded.borrow_mut().as_mut() {
                    for c in parts {
                        l.groups.apply(c);
                    }
                }
                Ok(())
            }
            // Refused before the log: nothing changed.
            Err(
                e @ (Error::BatchTooLarge { .. }
                | Error::CorruptBatch(_)
                | Error::DiskFull
                | Error::Raft(raft::Error::ProposalTooLarge { .. })),
            ) => Err(e),
            Err(e) => {
                // It may still commit later: read the log again next time.
                if let Some(l) = self.loaded.borrow_mut().as_mut() {
                    l.stale = true;
                }
                Err(e)
            }
        }
    }

    /// Reports a committed membership change to the event feed.
    fn rebalanced(&self, group: &str, member: &str, why: &'static str) {
        let g = self.group(group);
        self.telemetry.event(Event::GroupRebalanced {
            group: group.to_owned(),
            generation: g.generation,
            members: g.members.len(),
            member: member.to_owned(),
            why,
        });
    }

    fn group(&self, name: &str) -> Group {
        self.loaded
            .borrow()
            .as_ref()
            .and_then(|l| l.groups.groups.get(name).cloned())
            .unwrap_or_default()
    }

    /// Renews a lease from `from` (when the request arrived).
    fn renew(&self, group: &str, member: &str, lease_ms: u32, from: Instant) {
        if let Some(l) = self.loaded.borrow_mut().as_mut() {
            let until = from + Duration::from_millis(u64::from(lease_ms));
            l.leases
                .insert((group.to_owned(), member.to_owned()), until);
        }
    }

    fn forget(&self, group: &str, member: &str) {
        if let Some(l) = self.loaded.borrow_mut().as_mut() {
            l.leases.remove(&(group.to_owned(), member.to_owned()));
        }
    }

    /// Answers one group request.
    pub(crate) async fn handle(
        &self,
        msg: Message,
        topics: &TopicPartitions<'_>,
    ) -> Result<Message> {
        // A lease renewed by this request counts from its arrival, not from
        // when it got the lock (the member counts from when it sent it).
        let arrived = Instant::now();
        // Heartbeats take the lock too, though they change nothing
        // replicated: a heartbeat answered while an expiry of the same
        // member is being committed would promise a lease over partitions
        // that are being handed to someone else.
        let Ok(_permit) = self.lock.acquire_permit(1).await else {
            return Err(Error::ShuttingDown);
        };
        self.ready().await?;
        match msg {
            Message::JoinGroupRequest(r) => {
                if r.topics.is_empty() {
                    return Err(GroupError::NoTopics.into());
                }
                if r.topics.len() > TOPICS_PER_MEMBER_MAX || r.client_id.len() > CLIENT_ID_BYTES_MAX
                {
                    return Err(GroupError::TooLarge {
                        what: "a join",
                        limit: format!(
                            "at most {TOPICS_PER_MEMBER_MAX} topics and a {CLIENT_ID_BYTES_MAX}-byte client id"
                        ),
                    }
                    .into());
                }
                for t in &r.topics {
                    if topics(t).is_none() {
                        return Err(Error::UnknownTopic { name: t.clone() });
                    }
                }
                let lease_ms = match r.lease_ms {
                    0 => LEASE_MS_DEFAULT,
                    ms => ms.clamp(LEASE_MS_MIN, LEASE_MS_MAX),
                };
                let g = self.group(&r.group);
                let mut topics_sorted = r.topics.clone();
                topics_sorted.sort();
                topics_sorted.dedup();
                let (member, change) = match r.member_id {
                    Some(id) => {
                        if !g.members.contains_key(&id) {
                            return Err(GroupError::UnknownMember {
                                group: r.group,
                                member: id,
                            }
                            .into());
                        }
                        // A rejoin keeps the lease length of the first join.
                        let change = Change::Rejoin {
                            member: id.clone(),
                            topics: topics_sorted,
                        };
                        (id, change)
                    }
                    None => {
                        if g.members.len() >= MEMBERS_MAX {
                            return Err(GroupError::TooManyMembers {
                                group: r.group,
                                limit: MEMBERS_MAX,
                            }
                            .into());
                        }
                        let id = self.new_member_id(&r.client_id);
                        let m = Member {
                            id: id.clone(),
                            client_id: r.client_id.clone(),
                            topics: topics_sorted,
                            lease_ms,
                        };
                        (id, Change::Join(m))
                    }
                };
                let joined = matches!(change, Change::Join(_));
                if let Some(c) = g.decide(&r.group, change, topics) {
                    self.commit(c).await?;
                    if joined {
                        self.rebalanced(&r.group, &member, "joined");
                    }
                }
                let g = self.group(&r.group);
                let lease_ms = g.members.get(&member).map_or(lease_ms, |m| m.lease_ms);
                self.renew(&r.group, &member, lease_ms, arrived);
                Ok(JoinGroupResponse {
                    group: r.group,
                    assignment: tps(g.assignment(&member)),
                    member_id: member,
                    generation: g.generation,
                    lease_ms,
                }
                .into())
            }
            Message::GroupHeartbeatRequest(r) => {
                // Read in place: a heartbeat is the most frequent request
                // and needs the generation and one member, not a copy of
                // the group.
                let seen = self.loaded.borrow().as_ref().and_then(|l| {
                    let g = l.groups.groups.get(&r.group)?;
                    let m = g.members.get(&r.member_id)?;
                    Some((g.generation, m.lease_ms))
                });
                let Some((generation, lease_ms)) = seen else {
                    return Err(GroupError::UnknownMember {
                        group: r.group,
                        member: r.member_id,
                    }
                    .into());
                };
                if r.generation > generation {
                    return Err(GroupError::IllegalGeneration {
                        group: r.group,
                        member: r.member_id,
                        generation: r.generation,
                        current: generation,
                    }
                    .into());
                }
                self.renew(&r.group, &r.member_id, lease_ms, arrived);
                Ok(GroupHeartbeatResponse {
                    generation,
                    lease_ms,
                    rebalance: r.generation != generation,
                }
                .into())
            }
            Message::LeaveGroupRequest(r) => {
                let g = self.group(&r.group);
                if g.members.contains_key(&r.member_id) {
                    let change = Change::Remove {
                        member: r.member_id.clone(),
                    };
                    if let Some(c) = g.decide(&r.group, change, topics) {
                        self.commit(c).await?;
                        self.rebalanced(&r.group, &r.member_id, "left");
                    }
                }
                self.forget(&r.group, &r.member_id);
                Ok(LeaveGroupResponse { group: r.group }.into())
            }
            Message::OffsetCommitRequest(r) => {
                if r.offsets.len() > OFFSETS_PER_COMMIT_MAX
                    || r.offsets
                        .iter()
                        .any(|o| o.metadata.len() > COMMIT_METADATA_BYTES_MAX)
                {
                    return Err(GroupError::TooLarge {
                        what: "a commit",
                        limit: format!(
                            "at most {OFFSETS_PER_COMMIT_MAX} offsets, with metadata of at most {COMMIT_METADATA_BYTES_MAX} bytes"
                        ),
                    }
                    .into());
                }
                let g = self.group(&r.group);
                let mut results = Vec::with_capacity(r.offsets.len());
                let mut accepted = Vec::new();
                if r.member_id.is_empty() {
                    // An administrative commit: a reset, only with no members.
                    if !g.members.is_empty() {
                        return Err(GroupError::NotEmpty {
                            group: r.group,
                            members: g.members.len(),
                        }
                        .into());
                    }
                    for o in &r.offsets {
                        if topics(&o.topic).is_none_or(|n| o.partition >= n) {
                            return Err(GroupError::UnknownPartition {
                                group: r.group,
                                topic: o.topic.clone(),
                                partition: o.partition,
                            }
                            .into());
                        }
                    }
                }
                for o in r.offsets {
                    let tp = (o.topic.clone(), o.partition);
                    let verdict = if r.member_id.is_empty() {
                        Ok(())
                    } else {
                        g.check_commit(&r.member_id, r.generation, &tp)
                    };
                    let error = match verdict {
                        Ok(()) => {
                            accepted.push((o.topic.clone(), o.partition, o.offset, o.metadata));
                            ErrorCode::None
                        }
                        Err(code) => code,
                    };
                    results.push(PartitionResult {
                        topic: o.topic,
                        partition: o.partition,
                        error: error as u16,
                    });
                }
                if !accepted.is_empty() {
                    self.commit(Command::Commit {
                        group: r.group,
                        offsets: accepted,
                    })
                    .await?;
                }
                Ok(OffsetCommitResponse { results }.into())
            }
            Message::OffsetFetchRequest(r) => {
                let g = self.group(&r.group);
                let offsets = if r.partitions.is_empty() {
                    g.offsets
                        .iter()
                        .map(|((t, p), c)| FetchedOffset {
                            topic: t.clone(),
                            partition: *p,
                            offset: Some(c.offset),
                            metadata: c.metadata.clone(),
                        })
                        .collect()
                } else {
                    r.partitions
                        .into_iter()
                        .map(|tp| {
                            let c = g.offsets.get(&(tp.topic.clone(), tp.partition));
                            FetchedOffset {
                                topic: tp.topic,
                                partition: tp.partition,
                                offset: c.map(|c| c.offset),
                                metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                            }
                        })
                        .collect()
                };
                Ok(OffsetFetchResponse { offsets }.into())
            }
            Message::DescribeGroupRequest(r) => {
                let g = self.group(&r.group);
                let leases = self.leases_of(&r.group);
                let members = g
                    .members
                    .values()
                    .map(|m| GroupMember {
                        member_id: m.id.clone(),
                        client_id: m.client_id.clone(),
                        topics: m.topics.clone(),
                        lease_ms: m.lease_ms,
                        lease_left_ms: leases
                            .get(&m.id)
                            .map_or(0, |&ms| ms.min(u64::from(u32::MAX)) as u32),
                        partitions: tps(g.assignment(&m.id)),
                    })
                    .collect();
                Ok(DescribeGroupResponse {
                    group: r.group,
                    generation: g.generation,
                    members,
                    offsets: g
                        .offsets
                        .iter()
                        .map(|((t, p), c)| FetchedOffset {
                            topic: t.clone(),
                            partition: *p,
                            offset: Some(c.offset),
                            metadata: c.metadata.clone(),
                        })
                        .collect(),
                    pending: tps(g.pending()),
                }
                .into())
            }
            Message::ListGroupsRequest(_) => {
                let loaded = self.loaded.borrow();
                let groups = loaded
                    .as_ref()
                    .map(|l| {
                        l.groups
                            .groups
                            .iter()
                            .map(|(name, g)| GroupSummary {
                                group: name.clone(),
                                generation: g.generation,
                                members: g.members.len() as u32,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(ListGroupsResponse { groups }.into())
            }
            other => Err(Error::NotServed {
                kind: other.kind().name(),
            }),
        }
    }

    /// Lease time left per member of `group`, in ms.
    fn leases_of(&self, group: &str) -> HashMap<String, u64> {
        let now = Instant::now();
        self.loaded
            .borrow()
            .as_ref()
            .map(|l| {
                l.leases
                    .iter()
                    .filter(|((g, _), _)| g == group)
                    .map(|((_, m), until)| {
                        (
                            m.clone(),
                            until.saturating_duration_since(now).as_millis() as u64,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A member id: the client id (up to 64 bytes) and a number unique to
    /// this coordinator's term and moment.
    fn new_member_id(&self, client_id: &str) -> String {
        let n = self.ids.get() + 1;
        self.ids.set(n);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let term = self.partition.group.term();
        let h = wire::rules::fnv1a(
            nanos
                .to_le_bytes()
                .into_iter()
                .chain(n.to_le_bytes())
                .chain(term.to_le_bytes())
                .chain(u64::from(self.index).to_le_bytes()),
        );
        let prefix: String = client_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .take(64)
            .collect();
        let prefix = if prefix.is_empty() { "member" } else { &prefix };
        format!("{prefix}-{h:016x}")
    }

    /// Whether a lease has run out, or the state must be (re)loaded (a
    /// load that failed is retried here, not only on the next request);
    /// drops the state of a partition this broker no longer leads (so
    /// nobody reports its leases).
    fn expiry_due(&self) -> bool {
        if !self.is_leading() {
            if self.lock.available() > 0 {
                *self.loaded.borrow_mut() = None;
            }
            return false;
        }
        let now = Instant::now();
        self.loaded
            .borrow()
            .as_ref()
            .is_none_or(|l| l.stale || l.leases.values().any(|&until| until <= now))
    }

    /// Removes the members whose lease ran out, one change each.
    async fn expire_leases(&self, topics: &TopicPartitions<'_>) {
        if self.loaded.borrow().as_ref().is_none_or(|l| l.stale) {
            let Ok(_permit) = self.lock.acquire_permit(1).await else {
                return;
            };
            if self.ready().await.is_err() {
                return;
            }
        }
        let now = Instant::now();
        let expired: Vec<(String, String)> = match self.loaded.borrow().as_ref() {
            Some(l) => l
                .leases
                .iter()
                .filter(|(_, &until)| until <= now)
                .map(|(k, _)| k.clone())
                .collect(),
            None => return,
        };
        for (group, member) in expired {
            let Ok(_permit) = self.lock.acquire_permit(1).await else {
                return;
            };
            if self.ready().await.is_err() {
                return;
            }
            // Renewed while we waited for the lock?
            let still = self
                .loaded
                .borrow()
                .as_ref()
                .and_then(|l| l.leases.get(&(group.clone(), member.clone())).copied())
                .is_some_and(|until| until <= Instant::now());
            if !still {
                continue;
            }
            let g = self.group(&group);
            let change = Change::Remove {
                member: member.clone(),
            };
            tracing::info!(partition = self.index, group = %group, member = %member, "lease expired");
            if let Some(c) = g.decide(&group, change, topics) {
                if let Err(e) = self.commit(c).await {
                    tracing::warn!(partition = self.index, group = %group, error = %e, "expiring a lease");
                    return;
                }
                self.rebalanced(&group, &member, "expired");
            }
            self.forget(&group, &member);
        }
    }
}

/// The active leases of this shard's coordinators, for telemetry.
pub(crate) fn lease_samples(cs: &Coordinators) -> Vec<GroupLeaseSample> {
    let now = Instant::now();
    let mut out = Vec::new();
    for c in cs.all() {
        let loaded = c.loaded.borrow();
        let Some(l) = loaded.as_ref() else {
            continue;
        };
        for ((group, member), until) in &l.leases {
            let g = l.groups.groups.get(group);
            out.push(GroupLeaseSample {
                group: group.clone(),
                member: member.clone(),
                generation: g.map_or(0, |g| g.generation),
                partitions: g.map(|g| g.assignment(member)).unwrap_or_default(),
                lease_left_ms: until.saturating_duration_since(now).as_millis() as u64,
            });
        }
    }
    out
}

/// Each group's committed offsets, for telemetry.
pub(crate) fn offsets_samples(cs: &Coordinators) -> Vec<GroupOffsetsSample> {
    let mut out = Vec::new();
    for c in cs.all() {
        let loaded = c.loaded.borrow();
        let Some(l) = loaded.as_ref() else {
            continue;
        };
        for (name, g) in &l.groups.groups {
            out.push(GroupOffsetsSample {
                group: name.clone(),
                generation: g.generation,
                members: g.members.len(),
                offsets: g
                    .offsets
                    .iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.offset))
                    .collect(),
            });
        }
    }
    out
}

fn tps(v: Vec<(String, u32)>) -> Vec<TopicPartition> {
    v.into_iter()
        .map(|(topic, partition)| TopicPartition { topic, partition })
        .collect()
}
