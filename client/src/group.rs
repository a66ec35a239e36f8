//! The consumer-group member: joins a group through its coordinator, reads
//! the partitions the coordinator grants it with a [`Consumer`], renews its
//! lease by heartbeat, commits offsets (explicitly and every
//! `auto_commit_interval`), and follows rebalances.
//!
//! # Leases on the client side
//! The member's lease is counted from the moment it *sent* the heartbeat
//! (or join) that the coordinator answered, so it ends here no later than
//! the coordinator's does. Once it has ended the member hands no record to
//! the application and fetches nothing until a heartbeat is answered again
//! (or it has joined again, if the coordinator had given its partitions
//! away): a member stopped past its lease (SIGSTOP, a long GC pause) never
//! reads a partition that was handed to another member.
//!
//! # Rebalances
//! A heartbeat answered with `rebalance` (the group's generation moved)
//! makes the member commit what it has delivered, stop reading, and join
//! again with its member id (reading resumes only from the join's answer,
//! so a lost answer cannot leave it reading what was given away); the
//! coordinator takes back the partitions meant for others
//! only then, and grants them to their new owner, who learns it at its next
//! heartbeat. So no partition is read by two members at once, and a
//! handover re-delivers nothing (the commit came first). A member that
//! crashes hands its partitions over when its lease ends; the new owner
//! starts at the last commit, so what it re-delivers is what the crashed
//! member read after its last commit.
//!
//! `UnknownMember` (the lease ended, or the member left) and
//! `IllegalGeneration` (fenced) are not retried: the member drops its
//! partitions and joins again (as a new member after `UnknownMember`).
//! Everything retriable (no coordinator yet, `NotLeader`, a broken
//! connection) goes through the client's one [`crate::RetryPolicy`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{
    CommittedOffset, CreateTopicRequest, ErrorCode, GroupHeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, Message, OffsetCommitRequest, OffsetFetchRequest, OffsetSpec, Record,
    TopicPartition,
};

use crate::connection::Connection;
use crate::consumer::list_offset;
use crate::retry::call;
use crate::routes::{routes, routes_partial};
use crate::{Admin, ClientConfig, ClientError, Consumer, ConsumerConfig, PipelineError, StartAt};

pub use wire::rules::{coordinator_partition, OFFSETS_PARTITIONS, OFFSETS_TOPIC};

/// Where a partition with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    Earliest,
    Latest,
}

/// Group member settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub client: ClientConfig,
    pub group: String,
    pub topic: String,
    /// Shown by `drmq group describe`; the start of the member id.
    pub client_id: String,
    /// The lease asked for (the coordinator clamps it to 0.5 s..300 s).
    pub lease: Duration,
    /// Heartbeats this often (None: a quarter of the lease).
    pub heartbeat_interval: Option<Duration>,
    /// Commits what was delivered this often (None: only [`GroupConsumer::commit`]).
    pub auto_commit_interval: Option<Duration>,
    pub reset: Reset,
    pub fetch_bytes_max: u32,
    pub fetch_wait: Duration,
}

impl GroupConfig {
    pub fn new(client: ClientConfig, group: impl Into<String>, topic: impl Into<String>) -> Self {
        GroupConfig {
            client,
            group: group.into(),
            topic: topic.into(),
            client_id: format!("drmq-{}", std::process::id()),
            lease: Duration::from_secs(3),
            heartbeat_interval: None,
            auto_commit_interval: Some(Duration::from_secs(1)),
            reset: Reset::Earliest,
            fetch_bytes_max: 2 * 1024 * 1024,
            fetch_wait: Duration::from_millis(200),
        }
    }

    fn heartbeat_every(&self, lease: Duration) -> Duration {
        self.heartbeat_interval
            .unwrap_or(lease / 4)
            .max(Duration::from_millis(10))
    }
}

/// What happened to the membership, for reports (load test, CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// The member holds these partitions from now on.
    Assigned {
        generation: u64,
        partitions: Vec<u32>,
        at: Instant,
    },
    /// A commit was refused (the member was fenced or had expired).
    CommitRefused {
        code: ErrorCode,
        partitions: Vec<u32>,
    },
    /// The lease ended before a heartbeat renewed it: reading stopped.
    LeaseLost { at: Instant },
}

/// The coordinator of one group, found through the offsets topic's
/// metadata and followed by the retry policy.
struct CoordinatorLink {
    cfg: ClientConfig,
    group: String,
    conn: Option<Connection>,
    lookups: usize,
}

impl CoordinatorLink {
    fn new(cfg: ClientConfig, group: String) -> Self {
        CoordinatorLink {
            cfg,
            group,
            conn: None,
            lookups: 0,
        }
    }

    /// The client endpoint of the coordinator (the leader of the group's
    /// offsets partition); creates the offsets topic if there is none.
    fn locate(&mut self) -> Result<SocketAddr, ClientError> {
        self.lookups += 1;
        let timeout = self.cfg.connect_timeout;
        let r = match routes_partial(&self.cfg.brokers, self.lookups, timeout, OFFSETS_TOPIC) {
            Err(
                PipelineError::NoTopic(_)
                | PipelineError::Topic {
                    code: ErrorCode::UnknownTopicOrPartition,
                    ..
                },
            ) => {
                ensure_offsets_topic(&self.cfg)?;
                routes_partial(&self.cfg.brokers, self.lookups, timeout, OFFSETS_TOPIC)
            }
            other => other,
        };
        let unavailable = |message: String| ClientError::Broker {
            code: ErrorCode::LeaderNotAvailable,
            message,
            hint: None,
        };
        let r = r.map_err(|e| match e {
            PipelineError::Client(c) => c,
            other => unavailable(other.to_string()),
        })?;
        let index = coordinator_partition(&self.group, r.len() as u32) as usize;
        r.get(index).copied().flatten().ok_or_else(|| {
            unavailable(format!(
                "{OFFSETS_TOPIC}-{index} (the coordinator) has no leader"
            ))
        })
    }

    /// One request to the coordinator, retried until `deadline`.
    fn request(&mut self, msg: &Message, deadline: Instant) -> Result<Message, ClientError> {
        let policy = self.cfg.retry_policy();
        let start = self.conn.as_ref().map(|c| c.addr());
        let this = std::cell::RefCell::new(self);
        call(
            &policy,
            deadline,
            start,
            || None,
            |target| {
                let mut me = this.borrow_mut();
                let addr = match target {
                    Some(a) => a,
                    None => {
                        me.conn = None;
                        me.locate()?
                    }
                };
                if me.conn.as_ref().map(|c| c.addr()) != Some(addr) {
                    me.conn = Some(Connection::connect(addr, me.cfg.connect_timeout)?);
                }
                let conn = me.conn.as_mut().expect("just connected");
                let r = conn.request(msg);
                if matches!(r, Err(ClientError::Io { .. } | ClientError::Closed { .. })) {
                    me.conn = None;
                }
                r
            },
        )
    }
}

/// Creates the offsets topic unless it exists. The controller owns its
/// configuration ([`wire::rules::offsets_topic_config`],
/// [`OFFSETS_PARTITIONS`] partitions, replicated on min(3, brokers
/// configured)): the replication asked for here is ignored, so a client that
/// sees only some brokers does not decide it.
pub fn ensure_offsets_topic(cfg: &ClientConfig) -> Result<(), ClientError> {
    let admin = Admin::new(cfg.brokers.clone(), cfg.request_timeout);
    let req = CreateTopicRequest {
        name: OFFSETS_TOPIC.to_owned(),
        partitions: OFFSETS_PARTITIONS,
        replication: 1,
        config: wire::rules::offsets_topic_config(),
        timeout_ms: admin.timeout_ms(),
    };
    admin.ensure_topic(req).map_err(|e| match e {
        PipelineError::Client(c) => c,
        other => ClientError::Broker {
            code: ErrorCode::InvalidRequest,
            message: other.to_string(),
            hint: None,
        },
    })
}

/// One request to the coordinator of `group` (for admin commands: list,
/// describe, reset), retried within the client's request timeout.
pub fn coordinator_request(
    cfg: &ClientConfig,
    group: &str,
    msg: &Message,
) -> Result<Message, ClientError> {
    let mut link = CoordinatorLink::new(cfg.clone(), group.to_owned());
    link.request(msg, Instant::now() + cfg.request_timeout)
}

/// A retriable failure (no coordinator reachable now) is not the caller's:
/// the member tries again at its next heartbeat.
fn soft(r: Result<(), PipelineError>) -> Result<(), PipelineError> {
    match r {
        Err(e) if e.retry_cause().is_some() => Ok(()),
        other => other,
    }
}

/// A request to the leader of offsets partition `index` (ListGroups).
pub fn offsets_partition_request(
    cfg: &ClientConfig,
    index: u32,
    msg: &Message,
) -> Result<Message, ClientError> {
    let mut routes = match routes(cfg, OFFSETS_TOPIC) {
        Ok(r) => r,
        Err(PipelineError::Client(c)) => return Err(c),
        Err(e) => {
            return Err(ClientError::Broker {
                code: ErrorCode::LeaderNotAvailable,
                message: e.to_string(),
                hint: None,
            })
        }
    };
    let start = routes.get(index as usize).copied();
    let latest = std::cell::Cell::new(start);
    call(
        &cfg.retry_policy(),
        Instant::now() + cfg.request_timeout,
        start,
        || {
            let r = routes_partial(&cfg.brokers, 1, cfg.connect_timeout, OFFSETS_TOPIC).ok()?;
            r.get(index as usize).copied().flatten()
        },
        |target| {
            let addr = target.or(latest.get()).ok_or(ClientError::Broker {
                code: ErrorCode::LeaderNotAvailable,
                message: format!("{OFFSETS_TOPIC}-{index} has no leader"),
                hint: None,
            })?;
            latest.set(Some(addr));
            Connection::connect(addr, cfg.connect_timeout)?.request(msg)
        },
    )
    .inspect(|_| {
        if let Some(a) = latest.get() {
            if let Some(slot) = routes.get_mut(index as usize) {
                *slot = a;
            }
        }
    })
}

/// Where this member stands with its coordinator.
struct Membership {
    member_id: String,
    generation: u64,
    lease: Duration,
}

/// A member of a consumer group reading one topic. See the module docs.
pub struct GroupConsumer {
    cfg: GroupConfig,
    link: CoordinatorLink,
    membership: Option<Membership>,
    consumer: Option<Consumer>,
    partitions: Vec<u32>,
    /// The next offset after what was handed to the application.
    delivered: BTreeMap<u32, u64>,
    /// What this member last committed.
    committed: BTreeMap<u32, u64>,
    lease_until: Instant,
    next_heartbeat: Instant,
    next_commit: Instant,
    lease_lost_reported: bool,
    /// Heartbeats and commits go on, records are not fetched.
    paused: bool,
    /// The application refused a record: the consumer was dropped and the
    /// next poll reads again from `delivered`.
    reread: bool,
    events: Vec<GroupEvent>,
}

impl GroupConsumer {
    /// Joins the group (creating the offsets topic if needed) and takes the
    /// partitions the coordinator grants.
    pub fn new(cfg: GroupConfig) -> Result<GroupConsumer, PipelineError> {
        wire::validate_group_name(&cfg.group).map_err(|e| PipelineError::Config {
            field: "group",
            reason: e.to_string(),
        })?;
        // A topic that does not exist is an error at once (the join would
        // retry it as "not created yet" until the timeout).
        routes(&cfg.client, &cfg.topic)?;
        let now = Instant::now();
        let mut g = GroupConsumer {
            link: CoordinatorLink::new(cfg.client.clone(), cfg.group.clone()),
            cfg,
            membership: None,
            consumer: None,
            partitions: Vec::new(),
            delivered: BTreeMap::new(),
            committed: BTreeMap::new(),
            lease_until: now,
            next_heartbeat: now,
            next_commit: now,
            lease_lost_reported: false,
            paused: false,
            reread: false,
            events: Vec::new(),
        };
        g.join()?;
        Ok(g)
    }

    pub fn member_id(&self) -> Option<&str> {
        self.membership.as_ref().map(|m| m.member_id.as_str())
    }

    pub fn generation(&self) -> u64 {
        self.membership.as_ref().map_or(0, |m| m.generation)
    }

    /// The partitions this member reads now.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// Stops (or resumes) fetching: while paused, [`GroupConsumer::poll`]
    /// keeps the membership alive (heartbeats, commits, rebalances) and
    /// delivers nothing.
    pub fn pause(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Membership events since the last call.
    pub fn take_events(&mut self) -> Vec<GroupEvent> {
        std::mem::take(&mut self.events)
    }

    /// The next offset to deliver, by owned partition.
    pub fn positions(&self) -> BTreeMap<u32, u64> {
        self.delivered.clone()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.client.request_timeout
    }

    fn fatal(&self, e: ClientError) -> PipelineError {
        PipelineError::Client(e)
    }

    /// Joins (again, with the member id if there is one) and rebuilds the
    /// consumer for the partitions granted.
    fn join(&mut self) -> Result<(), PipelineError> {
        let sent = Instant::now();
        let first = self.membership.is_none();
        let req = JoinGroupRequest {
            group: self.cfg.group.clone(),
            member_id: self.membership.as_ref().map(|m| m.member_id.clone()),
            client_id: self.cfg.client_id.clone(),
            topics: vec![self.cfg.topic.clone()],
            lease_ms: self.cfg.lease.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let r = match self.link.request(&req.into(), self.deadline()) {
            Ok(Message::JoinGroupResponse(r)) => r,
            Ok(other) => return Err(self.fatal(ClientError::Unexpected(other.kind().name()))),
            Err(ClientError::Broker {
                code: ErrorCode::UnknownMember,
                ..
            }) if self.membership.is_some() => {
                // Expired meanwhile: join as a new member.
                self.drop_partitions();
                self.membership = None;
                return self.join();
            }
            Err(e) => return Err(self.fatal(e)),
        };
        let lease = Duration::from_millis(u64::from(r.lease_ms));
        self.lease_until = sent + lease;
        self.lease_lost_reported = false;
        self.next_heartbeat = Instant::now() + self.cfg.heartbeat_every(lease);
        self.membership = Some(Membership {
            member_id: r.member_id,
            generation: r.generation,
            lease,
        });
        let mut mine: Vec<u32> = r
            .assignment
            .iter()
            .filter(|tp| tp.topic == self.cfg.topic)
            .map(|tp| tp.partition)
            .collect();
        mine.sort_unstable();
        if first || mine != self.partitions || (self.consumer.is_none() && !mine.is_empty()) {
            self.assign(mine, r.generation)?;
        }
        Ok(())
    }

    /// Starts reading `partitions`: where this member already was for the
    /// ones it kept, else the committed offset, else the reset policy.
    /// The partitions are this member's from the start of the call: if a
    /// step fails (no coordinator for the offsets, no leader for a reset),
    /// the next heartbeat starts reading them again, never older ones.
    fn assign(&mut self, partitions: Vec<u32>, generation: u64) -> Result<(), PipelineError> {
        self.consumer = None;
        self.partitions = partitions.clone();
        // Nothing of a partition given up is committed again.
        self.delivered.retain(|p, _| partitions.contains(p));
        self.committed.retain(|p, _| partitions.contains(p));
        let kept = self.delivered.clone();
        let missing: Vec<TopicPartition> = partitions
            .iter()
            .filter(|p| !kept.contains_key(p))
            .map(|&partition| TopicPartition {
                topic: self.cfg.topic.clone(),
                partition,
            })
            .collect();
        let mut start = kept;
        if !missing.is_empty() {
            let req = OffsetFetchRequest {
                group: self.cfg.group.clone(),
                partitions: missing.clone(),
            };
            let fetched = match self.link.request(&req.into(), self.deadline()) {
                Ok(Message::OffsetFetchResponse(r)) => r.offsets,
                Ok(other) => return Err(self.fatal(ClientError::Unexpected(other.kind().name()))),
                Err(e) => return Err(self.fatal(e)),
            };
            let mut routes_cache = None;
            for tp in missing {
                let committed = fetched
                    .iter()
                    .find(|f| f.topic == tp.topic && f.partition == tp.partition)
                    .and_then(|f| f.offset);
                let offset = match committed {
                    Some(o) => o,
                    None => {
                        if routes_cache.is_none() {
                            routes_cache = Some(routes(&self.cfg.client, &self.cfg.topic)?);
                        }
                        let spec = match self.cfg.reset {
                            Reset::Earliest => OffsetSpec::Earliest,
                            Reset::Latest => OffsetSpec::Latest,
                        };
                        let r = routes_cache.as_mut().expect("set above");
                        list_offset(&self.cfg.client, &self.cfg.topic, r, tp.partition, spec)?
                    }
                };
                if committed.is_some() {
                    self.committed.insert(tp.partition, offset);
                }
                start.insert(tp.partition, offset);
            }
        }
        self.delivered = start.clone();
        self.reread = false;
        if !partitions.is_empty() {
            self.consumer = Some(self.open_consumer(start)?);
        }
        self.events.push(GroupEvent::Assigned {
            generation,
            partitions,
            at: Instant::now(),
        });
        Ok(())
    }

    /// Stops reading, keeping the partitions and what was delivered: the
    /// next join answer (see `join`) reads them again from there.
    fn suspend(&mut self) {
        self.consumer = None;
        self.reread = false;
    }

    /// Stops reading everything (nothing is committed).
    fn drop_partitions(&mut self) {
        self.consumer = None;
        self.partitions.clear();
        self.delivered.clear();
        self.committed.clear();
    }

    /// Commits what was delivered and not yet committed. A refusal
    /// (fenced, expired) is not an error of the caller's: it is reported as
    /// an event and the member joins again; `Ok(false)` then.
    pub fn commit(&mut self) -> Result<bool, PipelineError> {
        let Some(m) = self.membership.as_ref() else {
            return Ok(false);
        };
        let offsets: Vec<CommittedOffset> = self
            .delivered
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(&partition, &offset)| CommittedOffset {
                topic: self.cfg.topic.clone(),
                partition,
                offset,
                metadata: String::new(),
            })
            .collect();
        if offsets.is_empty() {
            return Ok(true);
        }
        let req = OffsetCommitRequest {
            group: self.cfg.group.clone(),
            member_id: m.member_id.clone(),
            generation: m.generation,
            offsets: offsets.clone(),
        };
        let results = match self.link.request(&req.into(), self.deadline()) {
            Ok(Message::OffsetCommitResponse(r)) => r.results,
            Ok(other) => return Err(self.fatal(ClientError::Unexpected(other.kind().name()))),
            Err(ClientError::Broker { code, .. })
                if matches!(
                    code,
                    ErrorCode::UnknownMember | ErrorCode::IllegalGeneration
                ) =>
            {
                self.refused(code, offsets.iter().map(|o| o.partition).collect());
                return Ok(false);
            }
            // No coordinator within the deadline: the next commit carries
            // the same offsets.
            Err(e) if crate::RetryCause::of_error(&e).is_some() => return Ok(false),
            Err(e) => return Err(self.fatal(e)),
        };
        let mut refused = Vec::new();
        let mut code = ErrorCode::None;
        for (o, r) in offsets.iter().zip(&results) {
            if r.error == 0 {
                self.committed.insert(o.partition, o.offset);
            } else {
                code = ErrorCode::from_u16(r.error);
                refused.push(o.partition);
            }
        }
        if refused.is_empty() {
            Ok(true)
        } else {
            self.refused(code, refused);
            Ok(false)
        }
    }

    fn refused(&mut self, code: ErrorCode, partitions: Vec<u32>) {
        self.events
            .push(GroupEvent::CommitRefused { code, partitions });
        // Fenced: what it holds may be someone else's now. Start over.
        self.drop_partitions();
        if code == ErrorCode::UnknownMember {
            self.membership = None;
        }
        self.next_heartbeat = Instant::now();
    }

    /// Renews the lease; follows a rebalance.
    fn heartbeat(&mut self) -> Result<(), PipelineError> {
        let Some(m) = self.membership.as_ref() else {
            self.next_heartbeat = Instant::now() + self.cfg.heartbeat_every(self.cfg.lease);
            return soft(self.join());
        };
        let every = self.cfg.heartbeat_every(m.lease);
        let sent = Instant::now();
        let req = GroupHeartbeatRequest {
            group: self.cfg.group.clone(),
            member_id: m.member_id.clone(),
            generation: m.generation,
        };
        // A heartbeat that cannot get through is tried again at the next
        // one; meanwhile the lease runs down and reading stops with it.
        let deadline = sent + every;
        self.next_heartbeat = sent + every;
        match self.link.request(&req.into(), deadline) {
            Ok(Message::GroupHeartbeatResponse(r)) => {
                self.lease_until = sent + Duration::from_millis(u64::from(r.lease_ms));
                self.lease_lost_reported = false;
                if r.rebalance {
                    self.commit()?;
                    // Reading stops before the rejoin is sent: once the
                    // coordinator has it, the partitions it takes from this
                    // member may go to another at once, even if the answer
                    // never arrives (timeout, coordinator crash after the
                    // commit). Only a join answer starts reading again
                    // (from what was delivered); until then heartbeats
                    // still answer `rebalance` and the join is tried again.
                    self.suspend();
                    soft(self.join())?;
                } else if self.consumer.is_none() && !self.partitions.is_empty() {
                    // Reading stopped when the lease ran out; it is back.
                    let p = self.partitions.clone();
                    self.assign(p, r.generation)?;
                }
                Ok(())
            }
            Ok(other) => Err(self.fatal(ClientError::Unexpected(other.kind().name()))),
            Err(ClientError::Broker { code, .. })
                if matches!(
                    code,
                    ErrorCode::UnknownMember | ErrorCode::IllegalGeneration
                ) =>
            {
                self.drop_partitions();
                if code == ErrorCode::UnknownMember {
                    self.membership = None;
                }
                soft(self.join())
            }
            Err(e) if crate::RetryCause::of_error(&e).is_some() => Ok(()),
            Err(e) => Err(self.fatal(e)),
        }
    }

    /// Heartbeats and commits when due, then fetches from the partitions
    /// held (while the lease lasts) for up to `wait`, handing each record
    /// to `on_record(partition, record, received_at)`. Returns how many
    /// were accepted.
    ///
    /// `on_record` returns whether it took the record: `true` counts it as
    /// delivered (what [`GroupConsumer::commit`] saves), `false` refuses it
    /// (the application stopped, or could not write it out). A refused
    /// record and every later one of its partition are not delivered: the
    /// partition is read again from the refused record at the next poll,
    /// and nothing past it is committed.
    pub fn poll(
        &mut self,
        wait: Duration,
        mut on_record: impl FnMut(u32, &Record<'_>, Instant) -> bool,
    ) -> Result<usize, PipelineError> {
        let now = Instant::now();
        // A commit first when one is due, or when the lease has run out
        // here (the member may have lost its partitions: what it read is
        // saved if it still may, and a member that wakes up late learns
        // from the refusal that its partitions are gone).
        let lapsed = self.membership.is_some() && now >= self.lease_until;
        let due = self
            .cfg
            .auto_commit_interval
            .is_some_and(|_| now >= self.next_commit);
        if due || lapsed {
            self.commit()?;
            let every = self.cfg.auto_commit_interval.unwrap_or_default();
            self.next_commit = Instant::now() + every;
        }
        if self.membership.is_none() || Instant::now() >= self.next_heartbeat {
            self.heartbeat()?;
        }
        let now = Instant::now();
        if now >= self.lease_until {
            if !self.lease_lost_reported {
                self.lease_lost_reported = true;
                self.events.push(GroupEvent::LeaseLost { at: now });
            }
            // Positions are kept (delivered); reading resumes when a
            // heartbeat renews the lease, from what was delivered.
            self.consumer = None;
            std::thread::sleep(wait.min(self.next_heartbeat.saturating_duration_since(now)));
            return Ok(0);
        }
        if self.consumer.is_none() && self.reread && !self.paused && !self.partitions.is_empty() {
            // A record was refused: read again from what was delivered.
            self.reopen()?;
        }
        let Some(consumer) = self.consumer.as_mut().filter(|_| !self.paused) else {
            std::thread::sleep(wait.min(self.next_heartbeat.saturating_duration_since(now)));
            return Ok(0);
        };
        let wait = wait
            .min(self.lease_until.saturating_duration_since(now))
            .min(self.next_heartbeat.saturating_duration_since(now));
        let lease_until = self.lease_until;
        let mut dropped = false;
        let mut refused: Vec<u32> = Vec::new();
        let mut n = 0;
        let delivered = &mut self.delivered;
        consumer.poll(wait, |p, rec, at| {
            if dropped || refused.contains(&p) {
                return;
            }
            if Instant::now() >= lease_until {
                dropped = true;
                return;
            }
            if on_record(p, rec, at) {
                delivered.insert(p, rec.offset + 1);
                n += 1;
            } else {
                refused.push(p);
            }
        })?;
        if dropped {
            // The lease ended during the poll: read again from what was
            // delivered once it is renewed.
            self.consumer = None;
        } else {
            // Control batches skipped count as read, except on a partition
            // where a record was refused: its position is past the refusal.
            for (p, pos) in consumer.positions() {
                if refused.contains(&p) {
                    continue;
                }
                let d = self.delivered.entry(p).or_insert(pos);
                *d = (*d).max(pos);
            }
            if !refused.is_empty() {
                // The consumer has read past the refused records: the next
                // poll reads them again from `delivered`.
                self.consumer = None;
                self.reread = true;
            }
        }
        Ok(n)
    }

    /// Reads the partitions held again from what was delivered (after a
    /// refused record), with no new assignment.
    fn reopen(&mut self) -> Result<(), PipelineError> {
        self.reread = false;
        if !self
            .partitions
            .iter()
            .all(|p| self.delivered.contains_key(p))
        {
            let p = self.partitions.clone();
            let generation = self.generation();
            return self.assign(p, generation);
        }
        self.consumer = Some(self.open_consumer(self.delivered.clone())?);
        Ok(())
    }

    fn open_consumer(&self, start: BTreeMap<u32, u64>) -> Result<Consumer, PipelineError> {
        let mut c = ConsumerConfig::new(self.cfg.client.clone(), self.cfg.topic.clone());
        c.partitions = Some(start.keys().copied().collect());
        c.start = StartAt::Offsets(start);
        c.fetch_bytes_max = self.cfg.fetch_bytes_max;
        c.fetch_wait = self.cfg.fetch_wait;
        Consumer::new(c)
    }

    /// Commits what was delivered and leaves the group: its partitions go
    /// to the other members at once.
    pub fn close(mut self) -> Result<(), PipelineError> {
        let committed = self.commit();
        if let Some(m) = self.membership.take() {
            let req = LeaveGroupRequest {
                group: self.cfg.group.clone(),
                member_id: m.member_id,
            };
            let deadline = self.deadline();
            self.link
                .request(&req.into(), deadline)
                .map_err(PipelineError::Client)?;
        }
        committed.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use wire::{
        BrokerInfo, Endpoint, ErrorResponse, FetchResponse, FetchedOffset, FrameDecoder,
        FrameLimits, GroupHeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
        MetadataResponse, OffsetCommitResponse, OffsetFetchResponse, PartitionMetadata,
        PartitionResult, TopicMetadata,
    };

    /// What the fake broker is told to do with rejoins.
    struct Script {
        joins: AtomicUsize,
        /// Rejoins are refused (retriably) while set: the member never
        /// gets their answer.
        refuse_rejoins: AtomicBool,
    }

    fn partitions(n: u32) -> Vec<PartitionMetadata> {
        (0..n)
            .map(|partition| PartitionMetadata {
                partition,
                leader: Some(1),
                leader_term: 1,
                shard: 0,
                replicas: vec![1],
            })
            .collect()
    }

    fn answer(port: u16, script: &Script, msg: Message, corr: u64) -> Vec<u8> {
        let limits = FrameLimits::default();
        let frame = match msg {
            Message::MetadataRequest(r) => {
                let all = [("t", 1), (OFFSETS_TOPIC, OFFSETS_PARTITIONS)];
                let topics = all
                    .iter()
                    .filter(|(n, _)| r.topics.as_ref().is_none_or(|t| t.iter().any(|x| x == n)))
                    .map(|&(name, n)| TopicMetadata {
                        name: name.to_owned(),
                        error: 0,
                        partitions: partitions(n),
                    })
                    .collect();
                let resp = MetadataResponse {
                    brokers: vec![BrokerInfo {
                        id: 1,
                        endpoints: vec![Endpoint {
                            host: "127.0.0.1".into(),
                            port,
                        }],
                    }],
                    controller: Some(1),
                    topics,
                };
                wire::encode(&resp, corr, limits)
            }
            Message::JoinGroupRequest(r) => {
                let n = script.joins.fetch_add(1, Ordering::SeqCst);
                if n > 0 && script.refuse_rejoins.load(Ordering::SeqCst) {
                    let e = ErrorResponse::new(ErrorCode::LeaderNotAvailable, "fake: loading");
                    wire::encode(&e, corr, limits)
                } else {
                    let resp = JoinGroupResponse {
                        group: r.group,
                        member_id: "m".into(),
                        generation: n as u64 + 1,
                        lease_ms: 60_000,
                        assignment: vec![TopicPartition {
                            topic: "t".into(),
                            partition: 0,
                        }],
                    };
                    wire::encode(&resp, corr, limits)
                }
            }
            Message::GroupHeartbeatRequest(r) => {
                let resp = GroupHeartbeatResponse {
                    generation: r.generation + 1,
                    lease_ms: 60_000,
                    rebalance: true,
                };
                wire::encode(&resp, corr, limits)
            }
            Message::OffsetFetchRequest(r) => {
                let resp = OffsetFetchResponse {
                    offsets: r
                        .partitions
                        .into_iter()
                        .map(|tp| FetchedOffset {
                            topic: tp.topic,
                            partition: tp.partition,
                            offset: Some(0),
                            metadata: String::new(),
                        })
                        .collect(),
                };
                wire::encode(&resp, corr, limits)
            }
            Message::OffsetCommitRequest(r) => {
                let resp = OffsetCommitResponse {
                    results: r
                        .offsets
                        .into_iter()
                        .map(|o| PartitionResult {
                            topic: o.topic,
                            partition: o.partition,
                            error: 0,
                        })
                        .collect(),
                };
                wire::encode(&resp, corr, limits)
            }
            Message::LeaveGroupRequest(r) => {
                wire::encode(&LeaveGroupResponse { group: r.group }, corr, limits)
            }
            Message::FetchRequest(r) => {
                // An endless log: five records from wherever it is asked.
                let mut b = wire::RecordBatchBuilder::new();
                for _ in 0..5 {
                    b.push(wire::NewRecord {
                        timestamp_ms: 0,
                        key: None,
                        value: Some(b"x"),
                        headers: &[],
                    });
                }
                let mut batch = b.finish();
                wire::batch::set_base_offset(&mut batch, r.offset);
                let resp = FetchResponse {
                    topic: r.topic,
                    partition: r.partition,
                    high_watermark: r.offset + 5,
                    log_start_offset: 0,
                    batches: batch,
                };
                wire::encode(&resp, corr, limits)
            }
            other => {
                let e = ErrorResponse::new(ErrorCode::InvalidRequest, other.kind().name());
                wire::encode(&e, corr, limits)
            }
        };
        frame.unwrap().to_vec()
    }

    fn serve(mut s: TcpStream, port: u16, script: Arc<Script>) {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let Ok(Some(frame)) = decoder.next_frame() else {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => decoder.extend(&chunk[..k]),
                }
                continue;
            };
            let corr = frame.header.correlation_id;
            let Ok(msg) = frame.message() else {
                return;
            };
            if s.write_all(&answer(port, &script, msg, corr)).is_err() {
                return;
            }
        }
    }

    /// A one-broker fake cluster: topic `t` (one partition) and the
    /// offsets topic, a coordinator that always asks for a rebalance.
    fn fake_cluster(script: Arc<Script>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let script = script.clone();
                std::thread::spawn(move || serve(s, addr.port(), script));
            }
        });
        addr
    }

    /// A member told to rebalance stops reading before it sends its
    /// rejoin: while the rejoin gets no answer (here refused retriably
    /// until the request deadline; in life a timeout, or a coordinator
    /// that crashed after committing it) it delivers nothing of the
    /// partitions it held, which the coordinator may have given away.
    /// Reading starts again from the join's answer, where it stopped.
    #[test]
    fn a_member_whose_rejoin_goes_unanswered_reads_nothing_until_it_is_answered() {
        let script = Arc::new(Script {
            joins: AtomicUsize::new(0),
            refuse_rejoins: AtomicBool::new(true),
        });
        let addr = fake_cluster(script.clone());
        let mut client = ClientConfig::new(vec![addr]);
        // Short: the rejoin gives up (retriably) soon.
        client.request_timeout = Duration::from_millis(300);
        let mut cfg = GroupConfig::new(client, "g", "t");
        cfg.lease = Duration::from_secs(60);
        cfg.auto_commit_interval = None;
        cfg.fetch_wait = Duration::from_millis(10);
        let mut g = GroupConsumer::new(cfg).unwrap();
        assert_eq!(g.partitions(), &[0]);

        // Reading: the heartbeat is not due for a quarter of the lease.
        let mut seen = 0;
        for _ in 0..50 {
            seen += g.poll(Duration::from_millis(20), |_, _, _| true).unwrap();
            if seen > 0 {
                break;
            }
        }
        assert!(seen > 0, "the member read nothing");
        let before = g.positions()[&0];

        // The heartbeat answers `rebalance`; the rejoin goes unanswered.
        g.next_heartbeat = Instant::now();
        let mut during = 0;
        for _ in 0..5 {
            during += g.poll(Duration::from_millis(20), |_, _, _| true).unwrap();
        }
        // The first join, then the rejoin (tried again until its deadline).
        assert!(
            script.joins.load(Ordering::SeqCst) >= 2,
            "no rejoin was sent"
        );
        assert_eq!(
            during, 0,
            "records delivered while the rejoin was unanswered"
        );
        assert_eq!(g.positions()[&0], before);

        // The next rejoin is answered: reading goes on from `before`.
        script.refuse_rejoins.store(false, Ordering::SeqCst);
        g.next_heartbeat = Instant::now();
        let mut first = None;
        for _ in 0..50 {
            g.poll(Duration::from_millis(20), |_, rec, _| {
                first.get_or_insert(rec.offset);
                true
            })
            .unwrap();
            if first.is_some() {
                break;
            }
        }
        assert_eq!(first, Some(before));
        assert!(g.generation() > 1, "the rejoin's answer was not taken");
    }

    /// A record the application refuses is not delivered (not counted, not
    /// committed), nor is anything after it on its partition; the next
    /// poll hands it over again.
    #[test]
    fn a_refused_record_is_not_delivered_and_comes_again() {
        let script = Arc::new(Script {
            joins: AtomicUsize::new(0),
            refuse_rejoins: AtomicBool::new(false),
        });
        let addr = fake_cluster(script);
        let mut cfg = GroupConfig::new(ClientConfig::new(vec![addr]), "g", "t");
        cfg.lease = Duration::from_secs(60);
        cfg.auto_commit_interval = None;
        cfg.fetch_wait = Duration::from_millis(10);
        let mut g = GroupConsumer::new(cfg).unwrap();
        // Take two records, refuse the third (the fake answers five at a
        // time).
        let mut taken = Vec::new();
        let mut refused = None;
        for _ in 0..50 {
            g.poll(Duration::from_millis(20), |_, rec, _| {
                if taken.len() < 2 {
                    taken.push(rec.offset);
                    true
                } else {
                    refused.get_or_insert(rec.offset);
                    false
                }
            })
            .unwrap();
            if refused.is_some() {
                break;
            }
        }
        let refused = refused.expect("no record was offered past the second");
        assert_eq!(taken, vec![0, 1]);
        assert_eq!(refused, 2);
        assert_eq!(g.positions()[&0], 2, "delivered past a refused record");
        let mut next = None;
        for _ in 0..50 {
            g.poll(Duration::from_millis(20), |_, rec, _| {
                next.get_or_insert(rec.offset);
                true
            })
            .unwrap();
            if next.is_some() {
                break;
            }
        }
        assert_eq!(next, Some(2), "the refused record did not come again");
    }
}
