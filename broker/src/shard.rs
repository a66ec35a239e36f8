//! One shard: the router between its parts. It owns the partitions and Raft
//! groups placed on it, starts its listeners and periodic tasks, routes each
//! client request to the part that answers it (a [`Partition`], the
//! controller on shard 0, the cluster view) and peer messages to the groups,
//! and handles the messages other shards send it (`ShardMsg`).
//!
//! Partition `p` of topic `t` lives on shard `topics::shard_for(t, p,
//! shards)` of every broker that holds a replica, so shard `s` only ever
//! talks to shard `s` of the other brokers.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use raft::{Entry, Role};
use storage::notify::Notify;
use wire::{
    Acks, ArchivedAcks, ClusterStatusRequest, ClusterStatusResponse, DescribeTopicResponse,
    FetchRequest, Frame, ListOffsetsRequest, Message, MetadataResponse, PartitionStatus,
    ProduceRequest, TopicMetadata,
};

use crate::cluster::Cluster;
use crate::compaction::{dirty_enough, Compactor};
use crate::config::BrokerConfig;
use crate::connection::{self, Connections};
use crate::controller::{Controller, CONTROLLER_GROUP};
pub(crate) use crate::counters::bump;
pub use crate::counters::ShardCounters;
use crate::counters::{CoreLoad, PROBE_INTERVAL};
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::peer::{self, Inbound, Outbox};
use crate::raft_group::{self, LeaderChange, RaftGroup, RaftGroupHooks};
use crate::runtime::Chore;
use crate::snapshot::SnapshotEnv;
use crate::telemetry::{ClusterSample, Event, ShardSample, Telemetry};
use crate::topics::{shard_for, TopicRecord};

/// How often retention runs: deleting a segment is rare and cheap, and a
/// few seconds of extra disk use are well inside any free-space floor.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);
/// How often each shard sends its counters to the telemetry thread.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a leader looks for followers that need a snapshot.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long a stopping broker waits for its groups' leadership to move.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Messages between shards.
pub(crate) enum ShardMsg {
    /// To shard 0: create or delete a topic; the answer is the response.
    Admin {
        request: Message,
        reply: flume::Sender<Message>,
    },
    /// To every shard: open (or, with `None`, close and delete) this
    /// broker's replicas of a topic's partitions that the shard owns.
    ApplyTopic {
        name: String,
        record: Option<TopicRecord>,
        done: flume::Sender<Result<()>>,
    },
    /// To every shard: report the partitions it holds.
    Status {
        reply: flume::Sender<Vec<PartitionStatus>>,
    },
    /// To every shard: stop accepting, make everything durable, stop.
    Shutdown,
}

/// What one shard's parts share.
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) shards: usize,
    pub(crate) config: BrokerConfig,
    pub(crate) topics: RefCell<BTreeMap<String, TopicRecord>>,
    pub(crate) partitions: RefCell<HashMap<(String, u32), Rc<Partition>>>,
    /// Every Raft group on this shard (partitions and, on shard 0, the
    /// controller), by group id: ticked and stepped from here.
    pub(crate) groups: RefCell<HashMap<u64, Rc<RaftGroup>>>,
    pub(crate) outbox: Rc<Outbox>,
    /// Task queue of ticks, group drivers and peer traffic.
    raft_tq: glommio::TaskQueueHandle,
    pub(crate) cluster: Cluster,
    pub(crate) inboxes: Vec<flume::Sender<ShardMsg>>,
    /// Shard 0: the controller's apply queue and admin state.
    pub(crate) controller: Controller,
    /// Set by [`ShardMsg::Shutdown`]; ends the accept loop.
    stopping: Notify,
    /// To the telemetry core (never blocks: `try_send`).
    pub(crate) telemetry: Telemetry,
    /// To the janitor thread: files and directories to remove off the shard.
    pub(crate) janitor: flume::Sender<Chore>,
    /// The broker's compactor thread (shared by all shards).
    compactor: Compactor,
    pub(crate) counters: ShardCounters,
    /// How busy this shard's core was over the sample interval.
    load: CoreLoad,
    pub(crate) connections: Connections,
    /// The consumer-group coordinators of the offsets partitions here.
    pub(crate) consumer_groups: Rc<crate::groups::Coordinators>,
    /// Set when the shard starts serving (it needs the peer identity).
    pub(crate) snapshot_env: RefCell<Option<Rc<SnapshotEnv>>>,
    snapshot_limiter: std::sync::Arc<crate::snapshot::RateLimiter>,
    pub(crate) snapshot_counters: Rc<crate::snapshot::SnapshotCounters>,
}

/// What a shard needs from the process at start.
pub(crate) struct ShardStart {
    pub(crate) id: usize,
    pub(crate) config: BrokerConfig,
    pub(crate) raft_tq: glommio::TaskQueueHandle,
    pub(crate) outbox: Rc<Outbox>,
    pub(crate) cluster: Cluster,
    pub(crate) inboxes: Vec<flume::Sender<ShardMsg>>,
    pub(crate) telemetry: Telemetry,
    pub(crate) janitor: flume::Sender<Chore>,
    pub(crate) compactor: Compactor,
    /// The broker's snapshot send budget, shared by its shards.
    pub(crate) snapshot_limiter: std::sync::Arc<crate::snapshot::RateLimiter>,
}

/// Peer messages reach the shard's groups through this.
struct ShardInbound(Rc<Shard>);

impl Inbound for ShardInbound {
    fn peer_up(&self, node: u64, addresses: &peer::PeerAddresses) {
        self.0.cluster.peer_up(node, addresses);
    }

    fn deliver(&self, msgs: Vec<raft::Message>) {
        let Some(from) = msgs.first().map(|m| m.from) else {
            return;
        };
        self.0.cluster.mark_seen(from);
        {
            let groups = self.0.groups.borrow();
            for m in msgs {
                // A group not created here yet (its topic's command is still
                // on its way) or already deleted: Raft resends.
                if let Some(g) = groups.get(&m.group_id) {
                    g.step(m);
                }
            }
        }
        // The answers to a frame of heartbeats leave as one frame.
        self.0.outbox.flush();
    }

    fn serve_snapshot(
        &self,
        from: u64,
        request: wire::SnapshotFetchRequest,
        stream: glommio::net::TcpStream,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        let group = self.0.groups.borrow().get(&request.group).cloned();
        let env = self.0.snapshot_env.borrow().clone();
        Box::pin(async move {
            match (group, env) {
                (Some(g), Some(env)) => {
                    crate::snapshot::source::serve(stream, request, from, g, env).await
                }
                _ => {
                    let e = wire::ErrorResponse::new(
                        wire::ErrorCode::UnknownTopicOrPartition,
                        format!("no group {} here", request.group),
                    );
                    let mut stream = stream;
                    let _ = crate::snapshot::source::write(&mut stream, e.into()).await;
                }
            }
        })
    }
}

/// The group drivers' hooks into the shard.
struct Hooks(std::rc::Weak<Shard>);

impl RaftGroupHooks for Hooks {
    fn leader_changed(&self, change: LeaderChange) {
        let Some(shard) = self.0.upgrade() else {
            return;
        };
        bump(&shard.counters.leader_changes, 1);
        if change.role == Role::Leader {
            bump(&shard.counters.elections, 1);
        }
        shard.cluster.leader_changed(change);
    }

    fn apply_commands(&self, entries: &[Entry]) {
        if let Some(shard) = self.0.upgrade() {
            shard.controller.enqueue(entries);
        }
    }

    fn event(&self, event: Event) {
        if let Some(shard) = self.0.upgrade() {
            shard.telemetry.event(event);
        }
    }

    fn snapshot_env(&self) -> Option<Rc<SnapshotEnv>> {
        self.0.upgrade()?.snapshot_env.borrow().clone()
    }
}

impl Shard {
    pub(crate) fn new(start: ShardStart) -> Shard {
        Shard {
            id: start.id,
            shards: start.config.shards,
            config: start.config,
            topics: RefCell::new(BTreeMap::new()),
            partitions: RefCell::new(HashMap::new()),
            groups: RefCell::new(HashMap::new()),
            outbox: start.outbox,
            raft_tq: start.raft_tq,
            cluster: start.cluster,
            inboxes: start.inboxes,
            controller: Controller::new(),
            stopping: Notify::default(),
            telemetry: start.telemetry,
            janitor: start.janitor,
            compactor: start.compactor,
            counters: ShardCounters::default(),
            load: CoreLoad::new(Instant::now()),
            connections: Connections::default(),
            consumer_groups: Rc::default(),
            snapshot_env: RefCell::new(None),
            snapshot_limiter: start.snapshot_limiter,
            snapshot_counters: Rc::default(),
        }
    }

    /// Spawns Raft work into the shard's Raft task queue.
    pub(crate) fn spawn_raft(&self, task: impl std::future::Future<Output = ()> + 'static) {
        match glommio::spawn_local_into(task, self.raft_tq) {
            Ok(t) => {
                t.detach();
            }
            Err(e) => {
                tracing::error!(broker = self.config.id, shard = self.id, error = %e, "spawning Raft work")
            }
        }
    }

    pub(crate) fn hooks(self: &Rc<Self>) -> Rc<dyn RaftGroupHooks> {
        Rc::new(Hooks(Rc::downgrade(self)))
    }

    /// Runs the shard: listeners, ticks, telemetry, retention, compaction,
    /// the controller on shard 0; serves clients until told to stop, then
    /// hands leadership over and makes every group durable.
    pub(crate) async fn serve(
        self: Rc<Self>,
        identity: Rc<peer::Identity>,
        inbox: flume::Receiver<ShardMsg>,
        ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    ) -> Result<()> {
        *self.snapshot_env.borrow_mut() = Some(Rc::new(SnapshotEnv {
            broker: self.config.id,
            shard: self.id,
            identity: identity.clone(),
            peers: self.config.peers.clone(),
            limiter: self.snapshot_limiter.clone(),
            counters: self.snapshot_counters.clone(),
            janitor: self.janitor.clone(),
            telemetry: self.telemetry.clone(),
        }));
        let control = self.clone();
        glommio::spawn_local(async move {
            while let Ok(msg) = inbox.recv_async().await {
                control.clone().control(msg).await;
            }
        })
        .detach();
        let peer_addr = SocketAddr::new(
            self.config.peer_listen.ip(),
            self.config.peer_listen.port() + self.id as u16,
        );
        let peer_listener = TcpListener::bind(peer_addr).map_err(|e| Error::Bind {
            what: "peer port ",
            addr: peer_addr,
            error: e.to_string(),
        })?;
        self.spawn_raft(peer::listen(
            peer_listener,
            identity,
            Rc::new(self.config.peers.clone()),
            Rc::new(ShardInbound(self.clone())),
            self.outbox.counters.clone(),
        ));
        if self.id == 0 {
            self.clone().start_controller()?;
        }
        let snapshots = self.clone();
        self.spawn_raft(async move {
            loop {
                glommio::timer::sleep(SNAPSHOT_CHECK_INTERVAL).await;
                let Some(env) = snapshots.snapshot_env.borrow().clone() else {
                    continue;
                };
                let groups: Vec<Rc<RaftGroup>> =
                    snapshots.groups.borrow().values().cloned().collect();
                for g in groups {
                    g.manage_snapshots(&env);
                }
            }
        });
        self.spawn_raft(crate::balance::run(self.clone()));
        let ticker = self.clone();
        self.spawn_raft(async move {
            loop {
                glommio::timer::sleep(raft_group::TICK).await;
                // Ticking steps no group in or out (as stepping in
                // `deliver`, which holds the same borrow): no copy of the
                // thousands of `Rc`s every tick.
                for g in ticker.groups.borrow().values() {
                    g.tick();
                }
                // The heartbeats of every group this tick made: one frame
                // per peer.
                ticker.outbox.flush();
            }
        });
        let addr = SocketAddr::new(
            self.config.listen.ip(),
            self.config.listen.port() + self.id as u16,
        );
        let listener = TcpListener::bind(addr).map_err(|e| Error::Bind {
            what: "",
            addr,
            error: e.to_string(),
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        let _ = ready.send(Ok(local));
        // How late a timer of the client task queue runs: how long a
        // runnable task waits for this core (slower while the shard idles).
        let probe = self.clone();
        glommio::spawn_local(async move {
            let mut every = PROBE_INTERVAL;
            loop {
                let due = Instant::now() + every;
                glommio::timer::sleep(every).await;
                let late = Instant::now().saturating_duration_since(due);
                let c = &probe.counters;
                every = probe
                    .load
                    .probe(late, c.produce_requests.get() + c.fetch_requests.get());
            }
        })
        .detach();
        let sampler = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(SAMPLE_INTERVAL).await;
                // Dropped when the telemetry thread is behind: never wait.
                sampler.telemetry.sample(sampler.sample());
            }
        })
        .detach();
        glommio::spawn_local(crate::groups::coordinator::lease_loop(self.clone())).detach();
        let retention = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(RETENTION_INTERVAL).await;
                retention.apply_retention().await;
            }
        })
        .detach();
        let compaction = self.clone();
        glommio::spawn_local(async move {
            let every = Duration::from_millis(compaction.config.compact_interval_ms);
            loop {
                glommio::timer::sleep(every).await;
                compaction.compact_dirtiest().await;
            }
        })
        .detach();
        connection::accept(&self, &listener, &self.stopping).await;
        // Graceful stop: no new connections; hand leadership over (bounded
        // wait), then make every group durable and stop it.
        drop(listener);
        self.stop().await;
        Ok(())
    }

    async fn stop(&self) {
        let groups: Vec<Rc<RaftGroup>> = self.groups.borrow().values().cloned().collect();
        let handing: Vec<&Rc<RaftGroup>> = groups.iter().filter(|g| g.hand_over()).collect();
        let deadline = Instant::now() + HAND_OVER_TIMEOUT;
        while Instant::now() < deadline && handing.iter().any(|g| g.role() == Role::Leader) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        for g in groups {
            if let Err(e) = g.save_producers().await {
                tracing::warn!(broker = self.config.id, shard = self.id, group = g.id, error = %e, "saving the producer state");
            }
            if let Err(e) = g.sync().await {
                tracing::error!(broker = self.config.id, shard = self.id, group = g.id, error = %e, "final sync failed");
            }
            g.stop();
        }
    }

    /// Handles one cross-shard message. Only quick, ordered work runs in
    /// the shard's control loop; an admin request waits for the controller
    /// and for every shard to apply the change — including this shard's own
    /// `ApplyTopic`, which this loop must stay free to handle — so it runs
    /// as a task of its own.
    async fn control(self: Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Admin { request, reply } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let resp = shard.admin(request).await;
                    let _ = reply.send_async(resp).await;
                })
                .detach();
            }
            ShardMsg::ApplyTopic { name, record, done } => {
                let r = self.apply_topic(&name, record);
                let _ = done.send_async(r).await;
            }
            ShardMsg::Status { reply } => {
                let _ = reply.send_async(self.local_status()).await;
            }
            ShardMsg::Shutdown => self.stopping.notify_all(),
        }
    }

    /// Runs retention on every partition of this shard (see
    /// [`Partition::apply_retention`]); removed files go to the janitor.
    async fn apply_retention(&self) {
        let owned: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in owned {
            let Some((segments, retired)) = p.apply_retention(self.config.id, self.id).await else {
                continue;
            };
            if segments > 0 {
                bump(&self.counters.segments_deleted, segments);
            }
            // Unlinking a large segment can take tens of milliseconds: the
            // janitor thread does it (inline only if its queue is full).
            if !retired.is_empty() {
                if let Err(e) = self.janitor.try_send(Chore::Retired(retired)) {
                    e.into_inner().run();
                }
            }
        }
    }

    /// Runs one compaction round on the dirtiest compacted partition of
    /// this shard whose dirty share reaches `compact_dirty_percent_min`
    /// (the next dirtiest if that one has nothing new below its commit
    /// point, or its lock is taken); see [`Partition::compact`]. Nothing if
    /// another shard's round holds the broker's slot. Replaced segment maps
    /// go to the janitor.
    async fn compact_dirtiest(&self) {
        let min = self.config.compact_dirty_percent_min;
        let mut dirty: Vec<(u64, Rc<Partition>)> = self
            .partitions
            .borrow()
            .values()
            .filter_map(|p| {
                let (dirty, sealed) = p.compaction_dirt()?;
                Some((dirty_enough(dirty, sealed, min)?, p.clone()))
            })
            .collect();
        dirty.sort_by_key(|d| std::cmp::Reverse(d.0));
        // Bounded by the shard's partitions.
        for (_, p) in dirty {
            let Some(done) = p.compact(&self.compactor, self.config.id, self.id).await else {
                continue;
            };
            if let Some(r) = done.report {
                let c = &self.counters;
                bump(&c.compactions, 1);
                bump(
                    &c.compaction_segments_rewritten,
                    r.segments_rewritten as u64,
                );
                bump(&c.compaction_bytes_before, r.bytes_before);
                bump(&c.compaction_bytes_after, r.bytes_after);
            }
            if !done.retired.is_empty() {
                if let Err(e) = self.janitor.try_send(Chore::Retired(done.retired)) {
                    e.into_inner().run();
                }
            }
            return;
        }
    }

    /// This shard's telemetry sample; ends the interval of the interval
    /// figures (busy fraction, probe maximum, latency percentiles).
    fn sample(&self) -> ShardSample {
        let c = &self.counters;
        let (busy_fraction, task_queue_latency_us_max) = self.load.take();
        let (produce_latency_us, produce_latency_buckets, produce_latency_sum_us) =
            c.produce_latency.take();
        let groups = self.groups.borrow();
        ShardSample {
            shard: self.id,
            produce_requests: c.produce_requests.get(),
            produce_bytes: c.produce_bytes.get(),
            fetch_requests: c.fetch_requests.get(),
            fetch_bytes: c.fetch_bytes.get(),
            records_in: c.records_in.get(),
            records_out: c.records_out.get(),
            errors: c.errors.get(),
            errors_by_code: c.errors_by_code(),
            segments_deleted: c.segments_deleted.get(),
            snapshot_transfers_started: self.snapshot_counters.started.get(),
            snapshot_transfers_finished: self.snapshot_counters.finished.get(),
            snapshot_transfers_resumed: self.snapshot_counters.resumed.get(),
            snapshot_transfers_failed: self.snapshot_counters.failed.get(),
            snapshot_bytes_sent: self.snapshot_counters.bytes_sent.get(),
            snapshot_bytes_received: self.snapshot_counters.bytes_received.get(),
            snapshot_installs: self.snapshot_counters.installs.get(),
            snapshot_archives: self.snapshot_counters.archives.get(),
            leader_changes: c.leader_changes.get(),
            elections: c.elections.get(),
            compactions: c.compactions.get(),
            compaction_segments_rewritten: c.compaction_segments_rewritten.get(),
            compaction_bytes_before: c.compaction_bytes_before.get(),
            compaction_bytes_after: c.compaction_bytes_after.get(),
            peer_frames_sent: self.outbox.counters.frames_sent.get(),
            peer_frames_dropped: self.outbox.counters.frames_dropped.get(),
            connections: self.connections.open() as u64,
            busy_fraction,
            task_queue_latency_us_max,
            produce_latency_us,
            produce_latency_buckets,
            produce_latency_sum_us,
            peer_lanes: self.outbox.lane_samples(),
            partitions: self
                .partitions
                .borrow()
                .values()
                .map(|p| p.sample(self.id))
                .collect(),
            // Every log of this shard (the controller's too, on shard 0).
            disk_full: groups.values().any(|g| g.part.log().space_full()),
            cluster: groups
                .get(&CONTROLLER_GROUP)
                .filter(|_| self.id == 0)
                .map(|g| ClusterSample {
                    controller: g.leader(),
                    controller_term: g.term(),
                    brokers: self.cluster.broker_samples(),
                }),
            group_leases: crate::groups::coordinator::lease_samples(&self.consumer_groups),
            group_offsets: crate::groups::coordinator::offsets_samples(&self.consumer_groups),
        }
    }

    /// The partitions this shard holds that it leads or whose leader is
    /// unknown (the CLI merges the answers of all brokers).
    fn local_status(&self) -> Vec<PartitionStatus> {
        self.partitions
            .borrow()
            .values()
            .filter(|p| p.leader().is_none_or(|l| l == self.config.id))
            .map(|p| p.status())
            .collect()
    }

    /// A topic's metadata with the leaders this broker knows.
    pub(crate) fn topic_metadata(&self, name: &str) -> TopicMetadata {
        self.cluster
            .topic_metadata(name, self.topics.borrow().get(name))
    }

    /// A partition this shard holds, or the error to answer with.
    fn partition(&self, topic: &str, partition: u32) -> Result<Rc<Partition>> {
        if let Some(p) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            return Ok(p.clone());
        }
        let topics = self.topics.borrow();
        let Some(record) = topics.get(topic).filter(|t| partition < t.partitions) else {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            });
        };
        let shard = shard_for(topic, partition, self.shards);
        if shard != self.id {
            return Err(self.cluster.other_shard(topic, partition, shard));
        }
        // Not a replica here: point at the leader if known.
        let leader = self.cluster.leader_of(record.group_id(partition));
        Err(self.cluster.not_leader(topic, partition, leader))
    }

    /// The partition if this broker leads it.
    pub(crate) fn leader_partition(&self, topic: &str, partition: u32) -> Result<Rc<Partition>> {
        let p = self.partition(topic, partition)?;
        if let Some(why) = p.stopped_reason() {
            // Retriable and without a hint: clients ask another broker
            // where the partition's leader is now.
            return Err(Error::ReplicaStopped {
                topic: topic.to_owned(),
                partition,
                why,
            });
        }
        if p.role() != Role::Leader {
            return Err(self.cluster.not_leader(topic, partition, p.leader()));
        }
        Ok(p)
    }

    /// Answers one decoded client request.
    pub(crate) async fn handle(self: &Rc<Self>, msg: Message) -> Message {
        match msg {
            Message::MetadataRequest(req) => {
                let names: Vec<String> = match req.topics {
                    Some(names) => names,
                    None => self.topics.borrow().keys().cloned().collect(),
                };
                MetadataResponse {
                    brokers: self.cluster.brokers(),
                    controller: self.cluster.leader_of(CONTROLLER_GROUP),
                    topics: names.iter().map(|n| self.topic_metadata(n)).collect(),
                }
                .into()
            }
            Message::DeleteTopicRequest(r) if r.name == crate::groups::OFFSETS_TOPIC => {
                Error::Group(crate::groups::GroupError::InternalTopic).into()
            }
            req @ (Message::CreateTopicRequest(_) | Message::DeleteTopicRequest(_)) => {
                if self.id == 0 {
                    return self.admin(req).await;
                }
                let (reply, wait) = flume::bounded(1);
                if self.inboxes[0]
                    .send_async(ShardMsg::Admin {
                        request: req,
                        reply,
                    })
                    .await
                    .is_err()
                {
                    return Error::ShardZeroGone.into();
                }
                wait.recv_async()
                    .await
                    .unwrap_or_else(|_| Error::ShardZeroGone.into())
            }
            Message::DescribeTopicRequest(req) => {
                let record = self.topics.borrow().get(&req.name).cloned();
                match record {
                    None => Error::UnknownTopic { name: req.name }.into(),
                    Some(t) => DescribeTopicResponse {
                        topic: self.topic_metadata(&req.name),
                        replication: t.replication,
                        config: t.config(),
                    }
                    .into(),
                }
            }
            Message::ProduceRequest(req) => {
                self.produce(
                    &req.topic,
                    req.partition,
                    req.acks,
                    req.timeout_ms,
                    &req.batch,
                )
                .await
            }
            Message::FetchRequest(req) => self.fetch(req).await,
            Message::ListOffsetsRequest(req) => self.list_offsets(req),
            Message::ClusterStatusRequest(req) => self.cluster_status(req).await,
            req @ (Message::JoinGroupRequest(_)
            | Message::GroupHeartbeatRequest(_)
            | Message::LeaveGroupRequest(_)
            | Message::OffsetCommitRequest(_)
            | Message::OffsetFetchRequest(_)
            | Message::ListGroupsRequest(_)
            | Message::DescribeGroupRequest(_)) => crate::groups::handle(self, req).await,
            other => Error::NotServed {
                kind: other.kind().name(),
            }
            .into(),
        }
    }

    /// Produce from the archived (validated, zero-copy) body of a frame.
    pub(crate) async fn produce_frame(&self, frame: &Frame) -> Message {
        let req = match frame.access::<ProduceRequest>() {
            Ok(r) => r,
            Err(e) => return Error::Wire(e).into(),
        };
        let topic = req.topic.as_str();
        if let Err(e) = wire::validate_topic_name(topic) {
            return Error::Wire(e).into();
        }
        let acks = match req.acks {
            ArchivedAcks::Leader => Acks::Leader,
            ArchivedAcks::Quorum => Acks::Quorum,
        };
        self.produce(
            topic,
            req.partition.to_native(),
            acks,
            req.timeout_ms.to_native(),
            req.batch.as_slice(),
        )
        .await
    }

    async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        timeout_ms: u32,
        batch: &[u8],
    ) -> Message {
        if topic == crate::groups::OFFSETS_TOPIC {
            return Error::Group(crate::groups::GroupError::InternalTopic).into();
        }
        let p = match self.leader_partition(topic, partition) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match p.produce(acks, timeout_ms, batch).await {
            Ok(r) => {
                // Appended as leader (a duplicate was appended before).
                if !r.duplicate {
                    let records = wire::batch::header(batch).map_or(0, |h| h.record_count);
                    bump(&self.counters.records_in, u64::from(records));
                    bump(&self.counters.produce_bytes, batch.len() as u64);
                }
                r.into()
            }
            Err(e) => e.into(),
        }
    }

    async fn fetch(&self, req: FetchRequest) -> Message {
        let p = match self.leader_partition(&req.topic, req.partition) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match p.fetch(req).await {
            Ok(r) => {
                bump(&self.counters.fetch_bytes, r.batches.len() as u64);
                bump(&self.counters.records_out, data_records(&r.batches));
                r.into()
            }
            // Leadership moved during the long poll.
            Err(Error::NotLeaderHere { leader }) => self
                .cluster
                .not_leader(&p.topic, p.partition, leader)
                .into(),
            Err(e) => e.into(),
        }
    }

    fn list_offsets(&self, req: ListOffsetsRequest) -> Message {
        let p = match self.leader_partition(&req.topic, req.partition) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match p.list_offsets(req) {
            Ok(r) => r.into(),
            Err(e) => e.into(),
        }
    }

    async fn cluster_status(&self, req: ClusterStatusRequest) -> Message {
        let mut partitions = Vec::new();
        if req.include_partitions {
            let mut waits = Vec::with_capacity(self.shards);
            for inbox in &self.inboxes {
                let (reply, wait) = flume::bounded(1);
                if inbox.send_async(ShardMsg::Status { reply }).await.is_ok() {
                    waits.push(wait);
                }
            }
            for w in waits {
                if let Ok(mut p) = w.recv_async().await {
                    partitions.append(&mut p);
                }
            }
            partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        }
        ClusterStatusResponse {
            controller: self.cluster.leader_of(CONTROLLER_GROUP),
            brokers: self.cluster.broker_status(),
            partitions,
        }
        .into()
    }
}

/// Records in a fetch answer's batches, control batches (a leader's no-op)
/// left out: what a consumer receives. Reads the headers only.
fn data_records(mut batches: &[u8]) -> u64 {
    let mut records = 0;
    while let Ok(h) = wire::batch::header(batches) {
        if h.attributes & wire::batch::attributes::CONTROL == 0 {
            records += u64::from(h.record_count);
        }
        match batches.get(h.batch_bytes as usize..) {
            Some(rest) => batches = rest,
            None => break,
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_records_are_counted_from_the_batch_headers_without_control_batches() {
        let batch = |n: usize| {
            let mut b = wire::RecordBatchBuilder::new();
            for _ in 0..n {
                b.push(wire::NewRecord {
                    value: Some(b"v"),
                    ..Default::default()
                });
            }
            b.finish()
        };
        let mut answer = wire::batch::encode_control_batch(b"noop", 0);
        answer.extend(batch(3));
        answer.extend(batch(2));
        assert_eq!(data_records(&answer), 5);
        assert_eq!(data_records(&[]), 0);
        // A cut-off last batch still counts (its header is whole); garbage
        // stops the walk instead of panicking.
        assert_eq!(data_records(&answer[..answer.len() - 3]), 5);
        assert_eq!(data_records(&[0xFF; 100]), 0);
    }
}
