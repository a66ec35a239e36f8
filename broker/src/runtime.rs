//! The broker process: one glommio executor per shard, pinned, each owning
//! its Raft groups (partitions), their logs, its client listener and its
//! peer connections.
//!
//! Shard `s` serves clients on `listen.port + s` and peers on
//! `peer_listen.port + s`; partition `p` of topic `t` lives on shard
//! `topics::shard_for(t, p, shards)` of every broker that holds a replica, so
//! shard `s` only ever talks to shard `s` of the other brokers.
//!
//! Shard 0 also runs the controller group (Raft group 0, every broker a
//! voter): topic creations and deletions are proposed there, and every
//! broker applies the committed commands in order, opening or removing its
//! replicas on the owning shards (flume messages between shards).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Semaphore, StaticPermit};
use glommio::{LocalExecutorBuilder, Placement};
use raft::{Entry, EntryPayload, Role};
use serde::{Deserialize, Serialize};
use storage::notify::Notify;
use storage::{Cleanup, LogConfig, Retired, StorageError, SyncPolicy};
use wire::*;

use crate::config::BrokerConfig;
use crate::peer::{self, Inbound, Outbox};
use crate::producers::{BatchId, Verdict};
use crate::raft_group::{self, LeaderChange, RaftGroup, RaftGroupHooks, RaftGroupKind, WaitResult};
use crate::replica;
use crate::telemetry::{self, PartitionSample, ShardSample};
use crate::topics::{self, shard_for, TopicRecord, PARTITIONS_PER_TOPIC_MAX, TOPICS_MAX};

/// Requests one connection may have in flight: enough to keep a pipelining
/// producer's window full (1024 × 64 KiB = 64 MiB worst case per connection
/// is bounded further by the frame limit and by the client's own window).
const CONNECTION_INFLIGHT_MAX: u64 = 1024;
/// Connections being refused at once (each answered with an error within
/// [`REFUSE_TIMEOUT`]); past this an excess connection is closed unanswered.
const REFUSING_MAX: usize = 64;
/// How long a refused connection gets to send its first request header,
/// whose correlation id the refusal answers.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// A client that takes no [`WRITE_PIECE_BYTES`] of its answers in this long
/// is closed (about 8 KB/s: slower is a client that stopped reading).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_PIECE_BYTES: usize = 256 << 10;
/// Responses queued for one connection's writer.
const CONNECTION_OUTBOX_MAX: usize = 1024;
/// Cross-shard control messages queued per shard.
const SHARD_INBOX_MAX: usize = 1024;
/// Read size per socket read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest long poll a fetch may ask for.
const FETCH_WAIT_MS_MAX: u32 = 30_000;
/// Largest fetch response payload (leaves room for the message fields within
/// the default 4 MiB frame limit).
const FETCH_BYTES_MAX: usize = 3 * 1024 * 1024;
/// How often retention runs: deleting a segment is rare and cheap, and a
/// few seconds of extra disk use are well inside any free-space floor.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);
/// How often each shard sends its counters to the telemetry thread.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Produce requests that give no timeout wait this long for a commit.
const PRODUCE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// The longest a produce request may wait for its commit.
const PRODUCE_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// How long topic administration waits for the controller and for the new
/// partitions' first leaders.
const ADMIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);
/// A peer not heard from for this long is reported as down.
const PEER_ALIVE_WINDOW: Duration = Duration::from_secs(3);
/// The controller's Raft group.
pub const CONTROLLER_GROUP: u64 = 0;
/// The controller log's segment size, which bounds one command: the
/// largest, a topic of 1,024 partitions with its replica lists, is about
/// 10 KB at RF=3 and 200 KB at RF=64 (1 MiB keeps a wide margin; the
/// controller log holds topic changes only, so the preallocation is cheap).
const CONTROLLER_SEGMENT_BYTES: u32 = 1 << 20;
/// How long a stopping broker waits for its groups' leadership to move.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon the Raft task queue wants the CPU back when it has work.
const RAFT_TQ_LATENCY: Duration = Duration::from_millis(2);

/// Messages between shards.
enum ShardMsg {
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
        done: flume::Sender<Result<(), String>>,
    },
    /// To every shard: report the partitions it holds.
    Status {
        reply: flume::Sender<Vec<PartitionStatus>>,
    },
    /// To every shard: stop accepting, make everything durable, stop.
    Shutdown,
}

/// A controller command, the payload of a controller entry (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Command {
    /// Creates the topic unless one of that name exists; its id becomes the
    /// entry's index.
    CreateTopic(TopicRecord),
    DeleteTopic {
        name: String,
    },
}

/// What all shards of this broker know about the cluster (metadata, hints,
/// status). Written on leadership changes and peer handshakes, read by
/// metadata requests: never on the produce/fetch path.
#[derive(Default)]
pub struct ClusterView {
    /// Client address (shard 0) of each broker.
    endpoints: BTreeMap<u64, SocketAddr>,
    /// When a peer was last heard from (any shard).
    last_seen: BTreeMap<u64, Instant>,
    /// RaftGroup id -> (leader, term).
    leaders: HashMap<u64, (Option<u64>, u64)>,
    /// Leader changes seen by this broker's groups (the election counter).
    leader_changes: u64,
    /// Recent leadership events (bounded), the seam for the event feed.
    events: std::collections::VecDeque<LeaderChange>,
}

const EVENTS_KEPT: usize = 256;
/// Apply failures remembered for admin answers.
const APPLY_ERRORS_KEPT: usize = 1024;

/// Per-shard counters, the seam for telemetry.
#[derive(Default)]
pub struct ShardCounters {
    pub produce_requests: Cell<u64>,
    pub produce_bytes: Cell<u64>,
    pub fetch_requests: Cell<u64>,
    pub fetch_bytes: Cell<u64>,
    pub errors: Cell<u64>,
    pub segments_deleted: Cell<u64>,
    pub leader_changes: Cell<u64>,
    /// Elections won by this shard's groups (each election counts once in
    /// the cluster: only the winner counts it).
    pub elections: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

struct Shard {
    id: usize,
    shards: usize,
    config: BrokerConfig,
    topics: RefCell<BTreeMap<String, TopicRecord>>,
    partitions: RefCell<HashMap<(String, u32), Rc<RaftGroup>>>,
    groups: RefCell<HashMap<u64, Rc<RaftGroup>>>,
    outbox: Rc<Outbox>,
    /// Task queue of ticks, group drivers and peer traffic.
    raft_tq: glommio::TaskQueueHandle,
    view: Arc<RwLock<ClusterView>>,
    inboxes: Vec<flume::Sender<ShardMsg>>,
    /// Serialises topic administration on shard 0.
    admin_lock: Semaphore,
    /// Shard 0: the controller's commands wait here to be applied in order.
    commands: RefCell<Option<local_channel::LocalSender<(u64, Command)>>>,
    /// Shard 0: index of the last controller entry applied on every shard.
    applied: Cell<u64>,
    applied_notify: Notify,
    /// Shard 0: controller entries this broker could not fully apply (its
    /// replicas could not be opened: a full disk, say), for the admin answer.
    apply_errors: RefCell<HashMap<u64, String>>,
    /// Set by [`ShardMsg::Shutdown`]; ends the accept loop.
    stopping: Notify,
    /// To the telemetry thread (never blocks: `try_send`).
    samples: flume::Sender<ShardSample>,
    /// To the janitor thread: files and directories to remove off the shard.
    janitor: flume::Sender<Chore>,
    counters: ShardCounters,
    /// Last time this shard marked each peer as seen in the view.
    seen_marks: RefCell<HashMap<u64, Instant>>,
    /// Client connections open on this shard's listener, and those being
    /// refused (over `max_connections`).
    connections: Rc<Cell<usize>>,
    refusing: Rc<Cell<usize>>,
}

/// Everything a broker needs to know about its peers, from its config.
fn broker_ids(config: &BrokerConfig) -> Vec<u64> {
    if config.peers.is_empty() {
        vec![config.id]
    } else {
        config.peers.keys().copied().collect()
    }
}

/// Runs a broker until SIGTERM/SIGINT.
pub fn run(mut config: BrokerConfig) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Absolute: glommio's io_uring directory open does not resolve relative paths.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("resolving {}", config.data_dir.display()))?;
    let shards = config.shards;
    // glommio binds with SO_REUSEPORT, which would let two brokers share a
    // port silently; a plain bind first refuses a port that is in use.
    for s in 0..shards {
        for (what, base) in [("client", config.listen), ("peer", config.peer_listen)] {
            let addr = SocketAddr::new(base.ip(), base.port() + s as u16);
            check_port_free(addr).with_context(|| format!("{what} port {addr} (shard {s})"))?;
        }
    }
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| flume::bounded::<ShardMsg>(SHARD_INBOX_MAX))
        .unzip();
    // SIGTERM and SIGINT are blocked in every thread (the shards inherit the
    // mask) and taken by one waiting thread, which asks the shards to stop.
    let signals = block_stop_signals()?;
    let samples = telemetry::start(config.id, config.http)
        .with_context(|| format!("HTTP port {}", config.http))?;
    let janitor = start_janitor().context("starting the janitor thread")?;
    // Partition directories of deleted topics that a stop interrupted.
    if let Ok(dir) = std::fs::read_dir(config.data_dir.join("partitions")) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().ends_with(DELETED_SUFFIX) {
                let _ = janitor.send(Chore::RemoveDir(e.path()));
            }
        }
    }
    let view = Arc::new(RwLock::new(ClusterView::default()));
    view.write()
        .map_err(|_| anyhow::anyhow!("cluster view poisoned"))?
        .endpoints
        .insert(config.id, config.listen);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let secret = config
        .cluster_secret
        .clone()
        .unwrap_or_default()
        .into_bytes();
    let voters = broker_ids(&config);
    let mut handles = Vec::with_capacity(shards);
    for (id, inbox) in receivers.into_iter().enumerate() {
        let config = config.clone();
        let senders = senders.clone();
        let samples = samples.clone();
        let janitor = janitor.clone();
        let ready = ready_tx.clone();
        let view = view.clone();
        let secret = secret.clone();
        let voters = voters.clone();
        let builder =
            LocalExecutorBuilder::new(Placement::Fixed(id % cpus)).name(&format!("shard-{id}"));
        let handle = builder
            .spawn(move || async move {
                let identity = Rc::new(peer::Identity::new(
                    config.id,
                    id as u32,
                    secret,
                    config.listen.to_string(),
                    &voters,
                ));
                // Raft's own work (ticks, group drivers, peer links) runs in
                // a task queue of its own that asks for low latency, so a
                // flood of client requests cannot starve heartbeats.
                let raft_tq = glommio::executor().create_task_queue(
                    glommio::Shares::Static(1000),
                    glommio::Latency::Matters(RAFT_TQ_LATENCY),
                    "raft",
                );
                let outbox = Rc::new(Outbox::start(identity.clone(), &config.peers, raft_tq));
                let shard = Rc::new(Shard {
                    id,
                    shards,
                    config,
                    topics: RefCell::new(BTreeMap::new()),
                    partitions: RefCell::new(HashMap::new()),
                    groups: RefCell::new(HashMap::new()),
                    outbox,
                    raft_tq,
                    view,
                    inboxes: senders,
                    admin_lock: Semaphore::new(1),
                    commands: RefCell::new(None),
                    applied: Cell::new(0),
                    applied_notify: Notify::default(),
                    apply_errors: RefCell::new(HashMap::new()),
                    stopping: Notify::default(),
                    samples,
                    janitor,
                    counters: ShardCounters::default(),
                    seen_marks: RefCell::new(HashMap::new()),
                    connections: Rc::new(Cell::new(0)),
                    refusing: Rc::new(Cell::new(0)),
                });
                if let Err(e) = shard.clone().serve(identity, inbox, ready.clone()).await {
                    let _ = ready.send(Err(format!("shard {id}: {e:#}")));
                }
            })
            .map_err(|e| anyhow::anyhow!("starting shard {id}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut endpoints = Vec::with_capacity(shards);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(addr)) => endpoints.push(addr),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("a shard stopped during start-up"),
        }
    }
    endpoints.sort();
    tracing::info!(
        broker = config.id,
        shards,
        clients = %endpoints
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        peers = %config.peer_listen,
        cluster_brokers = broker_ids(&config).len(),
        data_dir = %config.data_dir.display(),
        "broker up"
    );
    let stop_senders = senders;
    let id = config.id;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let signal = wait_for_signal(&signals);
            tracing::info!(broker = id, signal, "stopping: syncing partitions");
            for s in &stop_senders {
                let _ = s.send(ShardMsg::Shutdown);
            }
        })
        .context("starting the signal thread")?;
    for h in handles {
        h.join()
            .map_err(|e| anyhow::anyhow!("shard panicked: {e:?}"))?;
    }
    tracing::info!(broker = config.id, "stopped");
    Ok(())
}

/// Refuses a port another process listens on. A plain bind also fails when
/// only TIME_WAIT connections of an earlier run hold the port (they inherit
/// glommio's SO_REUSEPORT, not SO_REUSEADDR), which must not stop a quick
/// restart: then a connection attempt tells whether anyone listens.
/// The listener of a process that just exited can linger for a moment
/// (io_uring tears its files down asynchronously), so a listener found
/// there is looked at again for up to [`PORT_SETTLE`] before giving up.
fn check_port_free(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + PORT_SETTLE;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let mut probe = addr;
                if probe.ip().is_unspecified() {
                    probe.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                match std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(500)) {
                    Err(_) => return Ok(()),
                    Ok(_) if Instant::now() >= deadline => {
                        bail!("{e}: another process listens there")
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

const PORT_SETTLE: Duration = Duration::from_secs(3);

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread
/// it starts afterwards) and returns the set, for [`wait_for_signal`].
fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigemptyset/sigaddset initialise the set we own;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Waits for one of the blocked signals and returns its number.
fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut signal = 0;
        // SAFETY: `set` is an initialised sigset; sigwait writes `signal`.
        let rc = unsafe { libc::sigwait(set, &mut signal) };
        if rc == 0 {
            return signal;
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    ErrorResponse::new(code, message).into()
}

fn storage_error(e: &StorageError) -> Message {
    let code = match e {
        StorageError::DiskFull { .. } => ErrorCode::DiskFull,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::InvalidBatch(_) => ErrorCode::CorruptBatch,
        StorageError::BatchTooLarge { .. } => ErrorCode::RequestTooLarge,
        _ => ErrorCode::StorageError,
    };
    error(code, e.to_string())
}

fn log_config(record: &TopicRecord) -> LogConfig {
    let mut c = LogConfig {
        defer_deletes: true,
        ..LogConfig::default()
    };
    if let Some(b) = record.segment_bytes {
        c.segment_bytes_max = b.clamp(
            u64::from(storage::SEGMENT_BYTES_MIN),
            u64::from(storage::SEGMENT_BYTES_MAX),
        ) as u32;
    }
    if let Some(ms) = record.segment_ms {
        c.segment_age_ms_max = ms;
    }
    c.retention_bytes_max = record.retention_bytes;
    c.retention_age_ms_max = record.retention_ms;
    if let Some(ms) = record.sync_interval_ms {
        c.sync_policy = SyncPolicy::IntervalMs(u64::from(ms.max(1)));
    }
    if record.compact {
        c.cleanup = Cleanup::Compact {
            tombstone_grace_ms: record.tombstone_retention_ms.unwrap_or(86_400_000),
        };
    }
    c
}

/// Peer messages reach the shard's groups through this.
struct ShardInbound(Rc<Shard>);

impl Inbound for ShardInbound {
    fn peer_up(&self, node: u64, endpoint: &str) {
        if let Ok(addr) = endpoint.parse::<SocketAddr>() {
            if let Ok(mut v) = self.0.view.write() {
                v.endpoints.insert(node, addr);
                v.last_seen.insert(node, Instant::now());
            }
        }
    }

    fn deliver(&self, msgs: Vec<raft::Message>) {
        let Some(from) = msgs.first().map(|m| m.from) else {
            return;
        };
        self.0.mark_seen(from);
        let groups = self.0.groups.borrow();
        for m in msgs {
            // A group not created here yet (its topic's command is still on
            // its way) or already deleted: Raft resends.
            if let Some(g) = groups.get(&m.group_id) {
                g.step(m);
            }
        }
    }
}

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
        let view = shard.view.clone();
        if let Ok(mut v) = view.write() {
            v.leaders.insert(change.group, (change.leader, change.term));
            v.leader_changes += 1;
            if v.events.len() == EVENTS_KEPT {
                v.events.pop_front();
            }
            v.events.push_back(change);
        };
    }

    fn apply_commands(&self, entries: &[Entry]) {
        let Some(shard) = self.0.upgrade() else {
            return;
        };
        let commands = shard.commands.borrow();
        let Some(tx) = commands.as_ref() else {
            return;
        };
        for e in entries {
            let EntryPayload::Data(batch) = &e.payload else {
                continue;
            };
            let parsed = replica::command_body(batch)
                .ok_or_else(|| "not a command batch".to_string())
                .and_then(|b| serde_json::from_slice::<Command>(b).map_err(|e| e.to_string()));
            match parsed {
                // Unbounded queue: commands are applied in order, and the
                // controller log is small (topic changes only).
                Ok(c) => {
                    let _ = tx.try_send((e.index, c));
                }
                Err(why) => {
                    tracing::error!(entry = e.index, error = %why, "controller entry skipped")
                }
            }
        }
    }
}

impl Shard {
    fn endpoint(&self, shard: usize) -> Endpoint {
        Endpoint {
            host: self.config.listen.ip().to_string(),
            port: self.config.listen.port() + shard as u16,
        }
    }

    /// Client endpoint of `shard` on broker `broker`, if known.
    fn broker_endpoint(&self, broker: u64, shard: usize) -> Option<Endpoint> {
        if broker == self.config.id {
            return Some(self.endpoint(shard));
        }
        let v = self.view.read().ok()?;
        let addr = v.endpoints.get(&broker)?;
        Some(Endpoint {
            host: addr.ip().to_string(),
            port: addr.port() + shard as u16,
        })
    }

    fn mark_seen(&self, node: u64) {
        let now = Instant::now();
        let mut marks = self.seen_marks.borrow_mut();
        let due = marks
            .get(&node)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_millis(200));
        if due {
            marks.insert(node, now);
            if let Ok(mut v) = self.view.write() {
                v.last_seen.insert(node, now);
            }
        }
    }

    /// Spawns Raft work into the shard's Raft task queue.
    fn spawn_raft(&self, task: impl std::future::Future<Output = ()> + 'static) {
        match glommio::spawn_local_into(task, self.raft_tq) {
            Ok(t) => {
                t.detach();
            }
            Err(e) => {
                tracing::error!(broker = self.config.id, shard = self.id, error = %e, "spawning Raft work")
            }
        }
    }

    fn hooks(self: &Rc<Self>) -> Rc<dyn RaftGroupHooks> {
        Rc::new(Hooks(Rc::downgrade(self)))
    }

    async fn serve(
        self: Rc<Self>,
        identity: Rc<peer::Identity>,
        inbox: flume::Receiver<ShardMsg>,
        ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    ) -> Result<()> {
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
        let peer_listener = TcpListener::bind(peer_addr)
            .map_err(|e| anyhow::anyhow!("binding peer port {peer_addr}: {e}"))?;
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
        let ticker = self.clone();
        self.spawn_raft(async move {
            loop {
                glommio::timer::sleep(raft_group::TICK).await;
                let groups: Vec<Rc<RaftGroup>> = ticker.groups.borrow().values().cloned().collect();
                for g in groups {
                    g.tick();
                }
            }
        });
        let addr = SocketAddr::new(
            self.config.listen.ip(),
            self.config.listen.port() + self.id as u16,
        );
        let listener =
            TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| anyhow::anyhow!("{e}"))?;
        let _ = ready.send(Ok(local));
        let sampler = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(SAMPLE_INTERVAL).await;
                // Dropped when the telemetry thread is behind: never wait.
                let _ = sampler.samples.try_send(sampler.sample());
            }
        })
        .detach();
        let retention = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(RETENTION_INTERVAL).await;
                retention.apply_retention().await;
            }
        })
        .detach();
        let mut accept_backoff = Duration::ZERO;
        loop {
            let accepted =
                futures_lite::future::or(async { Some(listener.accept().await) }, async {
                    self.stopping.wait().await;
                    None
                })
                .await;
            match accepted {
                None => break,
                Some(Ok(stream)) => {
                    accept_backoff = Duration::ZERO;
                    // Counted here, at accept, so a burst cannot overshoot.
                    if self.connections.get() >= self.config.max_connections {
                        bump(&self.counters.errors, 1);
                        if self.refusing.get() < REFUSING_MAX {
                            let why = format!(
                                "broker {} shard {} serves at most {} client connections; retry later or elsewhere",
                                self.config.id, self.id, self.config.max_connections
                            );
                            let refusing = Counted::new(&self.refusing);
                            glommio::spawn_local(refuse(stream, why, refusing)).detach();
                        }
                        continue;
                    }
                    let open = Counted::new(&self.connections);
                    glommio::spawn_local(self.clone().connection(stream, open)).detach();
                }
                Some(Err(e)) => {
                    // Out of descriptors, most likely: back off (up to 1 s)
                    // and say so once per streak.
                    if accept_backoff.is_zero() {
                        tracing::warn!(broker = self.config.id, shard = self.id, error = %e, "accept failed; backing off");
                    }
                    accept_backoff = (accept_backoff * 2)
                        .clamp(Duration::from_millis(10), Duration::from_secs(1));
                    glommio::timer::sleep(accept_backoff).await;
                }
            }
        }
        // Graceful stop: no new connections; hand leadership over (bounded
        // wait), then make every group durable and stop it.
        drop(listener);
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
            let end = g.part.log().next_offset();
            if let Err(e) = g.part.wait_durable(end).await {
                tracing::error!(broker = self.config.id, shard = self.id, group = g.id, error = %e, "final sync failed");
            }
            g.stop();
        }
        Ok(())
    }

    /// Shard 0: opens the controller group and the task that applies its
    /// committed commands on every shard, in order.
    fn start_controller(self: Rc<Self>) -> Result<()> {
        let voters = broker_ids(&self.config);
        let dir = self.config.data_dir.join("controller");
        let config = LogConfig {
            segment_bytes_max: CONTROLLER_SEGMENT_BYTES,
            ..LogConfig::default()
        };
        let controller = RaftGroup::open(
            CONTROLLER_GROUP,
            RaftGroupKind::Controller,
            dir,
            config,
            self.config.id,
            voters.clone(),
            true,
        )?;
        let (tx, rx) = local_channel::new_unbounded::<(u64, Command)>();
        *self.commands.borrow_mut() = Some(tx);
        let applier = self.clone();
        glommio::spawn_local(async move {
            while let Some((index, command)) = rx.recv().await {
                applier.apply_command(index, command).await;
                applier.applied.set(index);
                applier.applied_notify.notify_all();
            }
        })
        .detach();
        if voters.len() == 1 {
            controller.campaign(); // a lone broker need not wait for a timeout
        }
        self.groups
            .borrow_mut()
            .insert(CONTROLLER_GROUP, controller.clone());
        self.spawn_raft(controller.run(self.outbox.clone(), self.hooks()));
        Ok(())
    }

    fn controller(&self) -> Option<Rc<RaftGroup>> {
        self.groups.borrow().get(&CONTROLLER_GROUP).cloned()
    }

    /// Applies one committed controller command on this broker.
    async fn apply_command(&self, index: u64, command: Command) {
        let (name, record) = match command {
            Command::CreateTopic(mut record) => {
                if self.topics.borrow().contains_key(&record.name) {
                    return; // a concurrent creation of the same name won
                }
                record.id = index;
                (record.name.clone(), Some(record))
            }
            Command::DeleteTopic { name } => {
                if !self.topics.borrow().contains_key(&name) {
                    return;
                }
                (name, None)
            }
        };
        if let Err(e) = self.broadcast_topic(&name, record).await {
            tracing::error!(broker = self.config.id, entry = index, topic = %name, error = %e, "applying a controller entry");
            let mut errors = self.apply_errors.borrow_mut();
            // Only the answer to a recent admin request needs it.
            if errors.len() >= APPLY_ERRORS_KEPT {
                errors.clear();
            }
            errors.insert(index, e);
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
                let r = self
                    .apply_topic(&name, record)
                    .map_err(|e| format!("{e:#}"));
                let _ = done.send_async(r).await;
            }
            ShardMsg::Status { reply } => {
                let _ = reply.send_async(self.local_status()).await;
            }
            ShardMsg::Shutdown => self.stopping.notify_all(),
        }
    }

    /// Opens or removes this shard's replicas of a topic.
    fn apply_topic(self: &Rc<Self>, name: &str, record: Option<TopicRecord>) -> Result<()> {
        // A previous topic of the same name (deleted, created again) goes first.
        if let Some(old) = self.topics.borrow_mut().remove(name) {
            if record.as_ref().is_none_or(|r| r.id != old.id) {
                self.remove_replicas(&old)?;
            } else {
                self.topics.borrow_mut().insert(name.to_owned(), old);
                return Ok(());
            }
        }
        let Some(record) = record else {
            return Ok(());
        };
        let mut failures = Vec::new();
        for p in 0..record.partitions {
            if shard_for(name, p, self.shards) != self.id {
                continue;
            }
            let replicas = record
                .replicas
                .get(p as usize)
                .cloned()
                .unwrap_or_else(|| vec![self.config.id]);
            if !replicas.contains(&self.config.id) {
                continue;
            }
            let opened = RaftGroup::open(
                record.group_id(p),
                RaftGroupKind::Partition {
                    topic: name.to_owned(),
                    partition: p,
                },
                record.partition_dir(&self.config.data_dir, p),
                log_config(&record),
                self.config.id,
                replicas.clone(),
                false,
            );
            // One partition that cannot open (a full disk) must not hide
            // the topic or the others: keep going, report at the end.
            let group = match opened {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("partition {p}: {e:#}"));
                    continue;
                }
            };
            if record.sync_interval_ms.is_some() {
                let flusher = group.part.clone();
                glommio::spawn_local(async move {
                    let e = flusher.flush_loop().await;
                    tracing::error!(error = %e, "partition flush loop stopped");
                })
                .detach();
            }
            // The preferred leader (first replica) of a brand-new group
            // campaigns at once, so leaders land where the controller
            // spread them instead of wherever a timer fires first.
            if (replicas[0] == self.config.id && group.term() == 0) || replicas.len() == 1 {
                group.campaign();
            }
            self.spawn_raft(group.clone().run(self.outbox.clone(), self.hooks()));
            self.groups.borrow_mut().insert(group.id, group.clone());
            self.partitions
                .borrow_mut()
                .insert((name.to_owned(), p), group);
        }
        self.topics.borrow_mut().insert(name.to_owned(), record);
        match failures.is_empty() {
            true => Ok(()),
            false => bail!("{}", failures.join("; ")),
        }
    }

    /// Closes a deleted topic's replicas on this shard. Their directories
    /// are renamed to `*.deleted` (one metadata update, so a restart never
    /// mistakes them for live data) and removed by the janitor thread: a
    /// large partition takes long to unlink, never on the shard.
    fn remove_replicas(&self, record: &TopicRecord) -> Result<()> {
        for p in 0..record.partitions {
            let removed = self
                .partitions
                .borrow_mut()
                .remove(&(record.name.clone(), p));
            if let Some(g) = removed {
                self.groups.borrow_mut().remove(&g.id);
                g.stop();
                // Unique: a restart replays the controller log and deletes
                // the same topic again while an older copy may still be
                // being removed.
                let mut gone = g.dir.clone().into_os_string();
                gone.push(format!(".{}{DELETED_SUFFIX}", replica::now_ms()));
                let gone = std::path::PathBuf::from(gone);
                std::fs::rename(&g.dir, &gone)
                    .with_context(|| format!("removing {}", g.dir.display()))?;
                if let Err(e) = self.janitor.try_send(Chore::RemoveDir(gone)) {
                    e.into_inner().run();
                }
            }
        }
        Ok(())
    }

    /// Tells every shard (this one included) to apply a topic change.
    async fn broadcast_topic(&self, name: &str, record: Option<TopicRecord>) -> Result<(), String> {
        let mut waits = Vec::with_capacity(self.shards);
        for inbox in &self.inboxes {
            let (done, wait) = flume::bounded(1);
            inbox
                .send_async(ShardMsg::ApplyTopic {
                    name: name.to_owned(),
                    record: record.clone(),
                    done,
                })
                .await
                .map_err(|_| "a shard is gone".to_string())?;
            waits.push(wait);
        }
        for w in waits {
            w.recv_async()
                .await
                .map_err(|_| "a shard is gone".to_string())??;
        }
        Ok(())
    }

    /// The error telling a client the controller is elsewhere.
    fn not_controller(&self, leader: Option<u64>) -> Message {
        let hint = leader.and_then(|l| {
            self.broker_endpoint(l, 0).map(|endpoint| LeaderHint {
                broker: l,
                shard: 0,
                endpoint,
            })
        });
        ErrorResponse {
            code: ErrorCode::NotController as u16,
            message: match leader {
                Some(l) => format!("the controller is broker {l}"),
                None => "no controller elected yet; retry".into(),
            },
            leader_hint: hint,
        }
        .into()
    }

    /// Proposes a controller command and waits until every shard of this
    /// broker applied it.
    async fn propose_command(&self, command: &Command, timeout: Duration) -> Result<u64, Message> {
        let deadline = Instant::now() + timeout;
        let Some(controller) = self.controller() else {
            return Err(error(
                ErrorCode::NotController,
                "no controller on this shard",
            ));
        };
        let body = serde_json::to_vec(command)
            .map_err(|e| error(ErrorCode::InvalidRequest, e.to_string()))?;
        let batch = replica::command_batch(&body);
        // Refused here, never in the log: a command the controller log
        // cannot hold would stop the controller on every broker.
        if batch.len() > CONTROLLER_SEGMENT_BYTES as usize {
            return Err(error(
                ErrorCode::RequestTooLarge,
                format!(
                    "the command is {} bytes, more than the controller log's {CONTROLLER_SEGMENT_BYTES}-byte segments",
                    batch.len()
                ),
            ));
        }
        let (index, term) = controller.propose(batch).map_err(|(code, why)| {
            if code == ErrorCode::NotLeader {
                self.not_controller(controller.leader())
            } else {
                error(code, why)
            }
        })?;
        let waited = glommio::timer::timeout(timeout, async {
            Ok(controller.wait_committed(index, Some(term)).await)
        })
        .await;
        match waited {
            Ok(Ok(_)) => {}
            Ok(Err((code, why))) => return Err(error(code, why)),
            Err(_) => {
                return Err(error(
                    ErrorCode::Timeout,
                    "the controller did not commit in time",
                ))
            }
        }
        while self.applied.get() < index {
            let left = deadline.saturating_duration_since(Instant::now());
            let woke = glommio::timer::timeout(left, async {
                self.applied_notify.wait().await;
                Ok(())
            })
            .await;
            if woke.is_err() {
                return Err(error(
                    ErrorCode::Timeout,
                    format!(
                        "committed by the controller (entry {index}), but not yet applied on every shard of broker {}",
                        self.config.id
                    ),
                ));
            }
        }
        if let Some(e) = self.apply_errors.borrow_mut().remove(&index) {
            let code = if e.contains("disk full") || e.contains("No space") {
                ErrorCode::DiskFull
            } else {
                ErrorCode::StorageError
            };
            return Err(error(
                code,
                format!(
                    "committed by the controller, but broker {} could not open its replicas: {e}",
                    self.config.id
                ),
            ));
        }
        Ok(index)
    }

    /// Topic creation and deletion, on shard 0, through the controller.
    async fn admin(&self, request: Message) -> Message {
        let Ok(_permit) = self.admin_lock.acquire_permit(1).await else {
            return error(ErrorCode::ShuttingDown, "shutting down");
        };
        if let Some(c) = self.controller() {
            if c.role() != Role::Leader {
                return self.not_controller(c.leader());
            }
        }
        match request {
            Message::CreateTopicRequest(req) => {
                if self.topics.borrow().contains_key(&req.name) {
                    return error(
                        ErrorCode::TopicAlreadyExists,
                        format!("topic {} exists", req.name),
                    );
                }
                if self.topics.borrow().len() >= TOPICS_MAX {
                    return error(
                        ErrorCode::InvalidRequest,
                        format!("at most {TOPICS_MAX} topics"),
                    );
                }
                if req.partitions == 0 || req.partitions > PARTITIONS_PER_TOPIC_MAX {
                    return error(
                        ErrorCode::InvalidReplication,
                        format!(
                            "{} partitions, must be 1..={PARTITIONS_PER_TOPIC_MAX}",
                            req.partitions
                        ),
                    );
                }
                let brokers = broker_ids(&self.config);
                if req.replication == 0 || usize::from(req.replication) > brokers.len() {
                    return error(
                        ErrorCode::InvalidReplication,
                        format!(
                            "replication {} but the cluster has {} broker(s)",
                            req.replication,
                            brokers.len()
                        ),
                    );
                }
                let mut record = TopicRecord::from_config(
                    req.name.clone(),
                    req.partitions,
                    req.replication,
                    &req.config,
                );
                let seed = topics::fnv1a(req.name.bytes());
                record.replicas =
                    TopicRecord::assign(&brokers, req.partitions, req.replication, seed);
                let timeout = admin_timeout(req.timeout_ms);
                let deadline = Instant::now() + timeout;
                let index = match self
                    .propose_command(&Command::CreateTopic(record), timeout)
                    .await
                {
                    Ok(i) => i,
                    Err(e) => return e,
                };
                if self.topics.borrow().get(&req.name).map(|t| t.id) != Some(index) {
                    return error(
                        ErrorCode::TopicAlreadyExists,
                        format!("topic {} exists", req.name),
                    );
                }
                // Wait (bounded) for every partition's first leader, so the
                // topic is usable when the answer arrives.
                while Instant::now() < deadline {
                    let meta = self.topic_metadata(&req.name);
                    if meta.partitions.iter().all(|p| p.leader.is_some()) {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                CreateTopicResponse {
                    topic: self.topic_metadata(&req.name),
                }
                .into()
            }
            Message::DeleteTopicRequest(req) => {
                if !self.topics.borrow().contains_key(&req.name) {
                    return error(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("no topic {}", req.name),
                    );
                }
                let command = Command::DeleteTopic {
                    name: req.name.clone(),
                };
                if let Err(e) = self
                    .propose_command(&command, admin_timeout(req.timeout_ms))
                    .await
                {
                    return e;
                }
                DeleteTopicResponse { name: req.name }.into()
            }
            other => error(
                ErrorCode::InvalidRequest,
                format!("{} is not an admin request", other.kind().name()),
            ),
        }
    }

    fn topic_metadata(&self, name: &str) -> TopicMetadata {
        let topics = self.topics.borrow();
        let Some(t) = topics.get(name) else {
            return TopicMetadata {
                name: name.to_owned(),
                error: ErrorCode::UnknownTopicOrPartition as u16,
                partitions: vec![],
            };
        };
        let view = self.view.read().ok();
        TopicMetadata {
            name: name.to_owned(),
            error: 0,
            partitions: (0..t.partitions)
                .map(|p| {
                    let (leader, leader_term) = view
                        .as_ref()
                        .and_then(|v| v.leaders.get(&t.group_id(p)).copied())
                        .unwrap_or((None, 0));
                    PartitionMetadata {
                        partition: p,
                        leader,
                        leader_term,
                        shard: shard_for(name, p, self.shards) as u32,
                        replicas: t.replicas.get(p as usize).cloned().unwrap_or_default(),
                    }
                })
                .collect(),
        }
    }

    /// Saves each partition's producer table, then deletes whole sealed
    /// segments past each topic's retention (bytes, age), never beyond the
    /// committed prefix. The entry before the new
    /// log start and its term are saved first, so Raft can still match a
    /// follower's log at the start point.
    /// Compaction of compacted topics is not scheduled yet: it rewrites
    /// segments with blocking I/O and needs a task of its own.
    async fn apply_retention(&self) {
        let owned: Vec<Rc<RaftGroup>> = self.partitions.borrow().values().cloned().collect();
        for g in owned {
            // The producer table is saved first (when it changed), so a
            // restart reads only the entries since, and none that retention
            // removes is ever needed to rebuild it.
            if let Err(e) = g.save_producers().await {
                tracing::warn!(broker = self.config.id, shard = self.id, group = g.id, error = %e, "saving the producer state");
                continue;
            }
            let bound = g.high_watermark.get();
            // Where retention would cut, and the entry just before the cut
            // with its term: saved before anything is removed.
            let plan = {
                let log = g.part.log();
                log.retention_cut(bound).and_then(|cut| {
                    let entry = log.entry_for_offset(cut.checked_sub(1)?)?;
                    Some((cut, entry, log.entry_term(entry).ok()?))
                })
            };
            let Some((cut, entry, term)) = plan else {
                continue;
            };
            if let Err(e) = g.save_start_prev(entry, term).await {
                tracing::warn!(broker = self.config.id, shard = self.id, group = g.id, error = %e, "retention: saving the log-start point");
                continue;
            }
            // `entry-start` (two fsyncs) is written off the shard.
            let plan = g.part.log().plan_move_start(cut);
            if let Some(plan) = plan {
                let (plan, persisted) = glommio::executor()
                    .spawn_blocking(move || {
                        let r = plan.persist();
                        (plan, r)
                    })
                    .await;
                if let Err(e) = g.part.log_mut().start_plan_persisted(plan, persisted) {
                    tracing::warn!(broker = self.config.id, shard = self.id, group = g.id, error = %e, "retention: writing entry-start");
                    continue;
                }
            }
            let mut log = g.part.log_mut();
            match log.move_start(cut) {
                Ok(removed) if removed.segments > 0 => {
                    bump(&self.counters.segments_deleted, removed.segments as u64);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(broker = self.config.id, shard = self.id, group = g.id, error = %e, "retention")
                }
            }
            if log.log_start_offset() == cut {
                g.use_start_prev(entry, term);
            }
            let retired = log.take_retired();
            drop(log);
            // Unlinking a large segment can take tens of milliseconds: the
            // janitor thread does it (inline only if its queue is full).
            if !retired.is_empty() {
                if let Err(e) = self.janitor.try_send(Chore::Retired(retired)) {
                    e.into_inner().run();
                }
            }
        }
    }

    fn sample(&self) -> ShardSample {
        let c = &self.counters;
        ShardSample {
            shard: self.id,
            produce_requests: c.produce_requests.get(),
            produce_bytes: c.produce_bytes.get(),
            fetch_requests: c.fetch_requests.get(),
            fetch_bytes: c.fetch_bytes.get(),
            errors: c.errors.get(),
            segments_deleted: c.segments_deleted.get(),
            leader_changes: c.leader_changes.get(),
            elections: c.elections.get(),
            peer_frames_sent: self.outbox.counters.frames_sent.get(),
            peer_frames_dropped: self.outbox.counters.frames_dropped.get(),
            partitions: self
                .partitions
                .borrow()
                .iter()
                .map(|((topic, p), g)| {
                    let log = g.part.log();
                    PartitionSample {
                        topic: topic.clone(),
                        partition: *p,
                        leader: g.leader(),
                        term: g.term(),
                        log_start_offset: log.log_start_offset(),
                        high_watermark: g.high_watermark.get(),
                        next_offset: log.next_offset(),
                    }
                })
                .collect(),
        }
    }

    /// The partitions this shard holds that it leads or whose leader is
    /// unknown (the CLI merges the answers of all brokers).
    fn local_status(&self) -> Vec<PartitionStatus> {
        self.partitions
            .borrow()
            .iter()
            .filter(|(_, g)| g.leader().is_none_or(|l| l == self.config.id))
            .map(|((topic, p), g)| {
                let commit = g.commit_index();
                PartitionStatus {
                    topic: topic.clone(),
                    partition: *p,
                    leader: g.leader(),
                    term: g.term(),
                    commit_index: commit,
                    log_start_offset: g.part.log().log_start_offset(),
                    replicas: g
                        .replica_progress()
                        .into_iter()
                        .map(|(broker, match_index)| ReplicaStatus {
                            broker,
                            match_index,
                            lag: commit.saturating_sub(match_index),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// A partition group this shard holds, or the error to answer with.
    fn group(&self, topic: &str, partition: u32) -> Result<Rc<RaftGroup>, Box<Message>> {
        if let Some(g) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            return Ok(g.clone());
        }
        let topics = self.topics.borrow();
        let Some(record) = topics.get(topic).filter(|t| partition < t.partitions) else {
            return Err(Box::new(error(
                ErrorCode::UnknownTopicOrPartition,
                format!("no partition {topic}-{partition}"),
            )));
        };
        let shard = shard_for(topic, partition, self.shards);
        if shard != self.id {
            return Err(Box::new(
                ErrorResponse {
                    code: ErrorCode::NotLeader as u16,
                    message: format!("{topic}-{partition} is on shard {shard}"),
                    leader_hint: Some(LeaderHint {
                        broker: self.config.id,
                        shard: shard as u32,
                        endpoint: self.endpoint(shard),
                    }),
                }
                .into(),
            ));
        }
        // Not a replica here: point at the leader if known.
        let leader = self
            .view
            .read()
            .ok()
            .and_then(|v| v.leaders.get(&record.group_id(partition)).and_then(|l| l.0));
        Err(Box::new(self.not_leader(topic, partition, leader)))
    }

    fn not_leader(&self, topic: &str, partition: u32, leader: Option<u64>) -> Message {
        let shard = shard_for(topic, partition, self.shards);
        let hint = leader.and_then(|l| {
            self.broker_endpoint(l, shard).map(|endpoint| LeaderHint {
                broker: l,
                shard: shard as u32,
                endpoint,
            })
        });
        match hint {
            Some(h) => ErrorResponse {
                code: ErrorCode::NotLeader as u16,
                message: format!("{topic}-{partition} is led by broker {}", h.broker),
                leader_hint: Some(h),
            }
            .into(),
            None => error(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}-{partition} has no leader yet; retry"),
            ),
        }
    }

    /// The group if this broker leads it.
    fn leader_group(&self, topic: &str, partition: u32) -> Result<Rc<RaftGroup>, Box<Message>> {
        let g = self.group(topic, partition)?;
        if let Some(e) = g.failed.borrow().as_ref() {
            // Retriable and without a hint: clients ask another broker
            // where the partition's leader is now.
            return Err(Box::new(error(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}-{partition}: this replica stopped ({e}); ask another broker"),
            )));
        }
        if g.role() != Role::Leader {
            return Err(Box::new(self.not_leader(topic, partition, g.leader())));
        }
        Ok(g)
    }

    /// Serves one client connection; `_open` counts it for
    /// `max_connections` until it ends.
    async fn connection(self: Rc<Self>, stream: TcpStream, _open: Counted) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        // Each queued response carries the permit for its bytes, released
        // once written.
        let (out_tx, out_rx) =
            local_channel::new_bounded::<(FrameBuf, StaticPermit)>(CONNECTION_OUTBOX_MAX);
        // Set when the writer gives up (the client is gone or takes no bytes
        // of its answers for CLIENT_WRITE_TIMEOUT): the reader stops too.
        let writer_gone = Rc::new(Flag::default());
        let gone = writer_gone.clone();
        let writer_task = glommio::spawn_local(async move {
            let mut failed = false;
            while let Some((frame, _bytes)) = out_rx.recv().await {
                if failed {
                    continue; // drained, so no sender waits on a full queue
                }
                // Progress, not the whole answer, is what is timed: a slow
                // link still gets a large fetch answer.
                for piece in frame.chunks(WRITE_PIECE_BYTES) {
                    let wrote = glommio::timer::timeout(CLIENT_WRITE_TIMEOUT, async {
                        writer.write_all(piece).await.map_err(Into::into)
                    })
                    .await;
                    if wrote.is_err() {
                        failed = true;
                        gone.set();
                        let _ = writer.close().await;
                        break;
                    }
                }
            }
        });
        let out_tx = Rc::new(out_tx);
        let inflight = Rc::new(Semaphore::new(CONNECTION_INFLIGHT_MAX));
        // Bytes in flight: each request takes its own size plus the most its
        // answer may need ([`answer_bytes_max`]) before it is handled, and
        // gives them back once the answer is written. A client that sends
        // faster than it reads its answers stops being read once the budget
        // is taken (backpressure), so one connection holds about this much,
        // not 1024 × the frame limit.
        let inflight_bytes = Rc::new(Semaphore::new(self.config.max_inflight_bytes));
        let limits = FrameLimits::default();
        let mut decoder = FrameDecoder::new(limits);
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        // The reader waits on the socket or the permits, and stops either
        // way once the writer is gone.
        let stop = writer_gone.clone();
        let closing = inflight_bytes.clone();
        let closing_count = inflight.clone();
        glommio::spawn_local(async move {
            stop.wait().await;
            closing.close();
            closing_count.close();
        })
        .detach();
        'read: loop {
            let read =
                futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
                    writer_gone.wait().await;
                    None
                })
                .await;
            let n = match read {
                None | Some(Ok(0)) | Some(Err(_)) => break,
                Some(Ok(n)) => n,
            };
            decoder.extend(&chunk[..n]);
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(broker = self.config.id, shard = self.id, client = %peer, error = %e, "closing a client connection");
                        bump(&self.counters.errors, 1);
                        break 'read;
                    }
                };
                let Ok(permit) = inflight.clone().acquire_static_permit(1).await else {
                    break 'read;
                };
                // The request and room for its answer, held until the
                // answer is written.
                let reserve = (u64::from(frame.header.frame_bytes) + answer_bytes_max(&frame))
                    .min(self.config.max_inflight_bytes);
                let Ok(bytes_permit) = inflight_bytes.clone().acquire_static_permit(reserve).await
                else {
                    break 'read;
                };
                let shard = self.clone();
                let out = out_tx.clone();
                glommio::spawn_local(async move {
                    let corr = frame.header.correlation_id;
                    let response = if frame.header.kind == Kind::ProduceRequest {
                        // The hot path reads the archived body in place.
                        shard.produce_frame(&frame).await
                    } else {
                        match frame.message() {
                            Ok(msg) => shard.handle(msg).await,
                            Err(e) => error(ErrorCode::InvalidRequest, e.to_string()),
                        }
                    };
                    if let Message::ErrorResponse(_) = response {
                        bump(&shard.counters.errors, 1);
                    }
                    let bytes = response.encode(corr, limits).unwrap_or_else(|e| {
                        error(ErrorCode::RequestTooLarge, e.to_string())
                            .encode(corr, limits)
                            .expect("a short error response always encodes")
                    });
                    drop((frame, response));
                    let _ = out.send((bytes, bytes_permit)).await;
                    drop(permit);
                })
                .detach();
            }
        }
        // Let in-flight requests finish writing, then close (at once if the
        // writer is gone: the semaphore is closed then).
        let _ = inflight.acquire(CONNECTION_INFLIGHT_MAX).await;
        writer_gone.set(); // ends the watcher task
        drop(out_tx);
        writer_task.await;
    }

    async fn handle(self: &Rc<Self>, msg: Message) -> Message {
        match msg {
            Message::MetadataRequest(req) => {
                let names: Vec<String> = match req.topics {
                    Some(names) => names,
                    None => self.topics.borrow().keys().cloned().collect(),
                };
                let brokers = broker_ids(&self.config)
                    .into_iter()
                    .filter_map(|b| {
                        let e0 = self.broker_endpoint(b, 0)?;
                        Some(BrokerInfo {
                            id: b,
                            endpoints: (0..self.shards)
                                .map(|s| Endpoint {
                                    host: e0.host.clone(),
                                    port: e0.port + s as u16,
                                })
                                .collect(),
                        })
                    })
                    .collect();
                let controller = self.controller_leader();
                MetadataResponse {
                    brokers,
                    controller,
                    topics: names.iter().map(|n| self.topic_metadata(n)).collect(),
                }
                .into()
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
                    return error(ErrorCode::ShuttingDown, "shard 0 is gone");
                }
                wait.recv_async()
                    .await
                    .unwrap_or_else(|_| error(ErrorCode::ShuttingDown, "shard 0 is gone"))
            }
            Message::DescribeTopicRequest(req) => {
                let record = self.topics.borrow().get(&req.name).cloned();
                match record {
                    None => error(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("no topic {}", req.name),
                    ),
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
            other => error(
                ErrorCode::InvalidRequest,
                format!(
                    "{} is not served on the client port (consumer groups are not built yet)",
                    other.kind().name()
                ),
            ),
        }
    }

    fn controller_leader(&self) -> Option<u64> {
        let v = self.view.read().ok()?;
        v.leaders.get(&CONTROLLER_GROUP).and_then(|l| l.0)
    }

    /// Produce from the archived (validated, zero-copy) body of a frame.
    async fn produce_frame(&self, frame: &Frame) -> Message {
        let req = match frame.access::<ProduceRequest>() {
            Ok(r) => r,
            Err(e) => return error(ErrorCode::InvalidRequest, e.to_string()),
        };
        let topic = req.topic.as_str();
        if let Err(e) = validate_topic_name(topic) {
            return error(ErrorCode::InvalidRequest, e.to_string());
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
        let g = match self.leader_group(topic, partition) {
            Ok(g) => g,
            Err(e) => return *e,
        };
        // The CRC is checked here once (followers check it again when the
        // entry arrives); the structure and every record too.
        let check = RecordBatch::parse(batch).and_then(|b| {
            b.validate_records()?;
            if b.batch_bytes() != batch.len() {
                return Err(WireError::InvalidBatch("bytes after the batch".into()));
            }
            if b.record_count() == 0 {
                return Err(WireError::InvalidBatch("no records".into()));
            }
            if b.is_control() {
                return Err(WireError::InvalidBatch(
                    "control batches are written by brokers only".into(),
                ));
            }
            Ok(BatchId {
                producer_id: b.producer_id(),
                epoch: b.producer_epoch(),
                base_sequence: b.base_sequence(),
                record_count: b.record_count(),
            })
        });
        let id = match check {
            Ok(id) => id,
            Err(e) => return error(ErrorCode::CorruptBatch, e.to_string()),
        };
        // Refused before Raft sees it: every replica would fail the same way.
        {
            let log = g.part.log();
            let segment = log.config().segment_bytes_max as usize;
            if batch.len() > segment.min(storage::batch::BATCH_BYTES_MAX) {
                return error(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "batch of {} bytes exceeds the topic's segment size ({segment} bytes)",
                        batch.len()
                    ),
                );
            }
            if log.space_full() {
                return error(
                    ErrorCode::DiskFull,
                    "the partition's disk is below its free-space floor; retry later",
                );
            }
        }
        // Capped: a request holds its connection's slot and budget while
        // it waits.
        let timeout = match timeout_ms {
            0 => PRODUCE_TIMEOUT_DEFAULT,
            ms => Duration::from_millis(u64::from(ms)).min(PRODUCE_TIMEOUT_MAX),
        };
        // Check and record the producer's sequence in the same synchronous
        // step as the proposal, so pipelined batches of one producer are
        // judged in the order they enter the log.
        let verdict = g.producers.borrow().check(id);
        let (wait, duplicate) = match verdict {
            Verdict::Reject { code, reason } => return error(code, reason),
            Verdict::Duplicate { entry } => (self.wait(&g, entry, None, acks, timeout), true),
            Verdict::Append => match g.propose(batch.to_vec()) {
                Ok((index, term)) => {
                    g.record_producer(id, index);
                    (self.wait(&g, index, Some(term), acks, timeout), false)
                }
                Err((code, why)) => return error(code, why),
            },
        };
        match wait.await {
            Ok(c) => {
                bump(&self.counters.produce_requests, 1);
                bump(&self.counters.produce_bytes, batch.len() as u64);
                ProduceResponse {
                    topic: topic.to_owned(),
                    partition,
                    base_offset: c.base_offset,
                    last_offset: c.last_offset,
                    log_append_time_ms: replica::now_ms(),
                    duplicate,
                }
                .into()
            }
            Err((code, why)) => error(code, why),
        }
    }

    /// Waits for entry `index` per `acks`, at most `timeout`.
    async fn wait(
        &self,
        g: &Rc<RaftGroup>,
        index: u64,
        term: Option<u64>,
        acks: Acks,
        timeout: Duration,
    ) -> WaitResult {
        let g = g.clone();
        let waited = glommio::timer::timeout(timeout, async move {
            Ok(match acks {
                Acks::Quorum => g.wait_committed(index, term).await,
                Acks::Leader => g.wait_persisted(index, term).await,
            })
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err((
                ErrorCode::Timeout,
                format!("not acknowledged within {timeout:?} (no quorum?)"),
            ))
        })
    }

    async fn fetch(&self, req: FetchRequest) -> Message {
        let g = match self.leader_group(&req.topic, req.partition) {
            Ok(g) => g,
            Err(e) => return *e,
        };
        let max_bytes = (req.max_bytes as usize).clamp(1, FETCH_BYTES_MAX);
        let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
        let deadline = Instant::now() + wait;
        loop {
            let mut out = Vec::new();
            let (high_watermark, log_start_offset) = {
                let log = g.part.log();
                let hw = g.high_watermark.get();
                let mut at = req.offset;
                // Bounded: each read advances `at` or returns nothing.
                while out.len() < max_bytes && at < hw {
                    match log.read(at, max_bytes - out.len(), hw) {
                        Ok(r) if r.bytes.is_empty() => break,
                        Ok(r) => {
                            out.extend_from_slice(r.bytes);
                            at = r.next_offset;
                        }
                        Err(e) => return storage_error(&e),
                    }
                }
                // An offset past the high watermark but within the log is
                // data not committed yet (a new leader's commit can lag the
                // old one's until its first entry commits): an empty answer
                // that waits, not an error.
                if req.offset > hw.max(log.next_offset()) || req.offset < log.log_start_offset() {
                    return error(
                        ErrorCode::OffsetOutOfRange,
                        format!(
                            "offset {} outside [{}, {}]",
                            req.offset,
                            log.log_start_offset(),
                            hw
                        ),
                    );
                }
                (hw, log.log_start_offset())
            };
            let now = Instant::now();
            if out.len() >= (req.min_bytes as usize).max(1) || now >= deadline {
                bump(&self.counters.fetch_requests, 1);
                bump(&self.counters.fetch_bytes, out.len() as u64);
                return FetchResponse {
                    topic: req.topic,
                    partition: req.partition,
                    high_watermark,
                    log_start_offset,
                    batches: out,
                }
                .into();
            }
            // Long poll: wait for the high watermark to move or the deadline.
            let _ = glommio::timer::timeout(deadline - now, async {
                g.committed.wait().await;
                Ok(())
            })
            .await;
            if g.role() != Role::Leader {
                return self.not_leader(&req.topic, req.partition, g.leader());
            }
        }
    }

    fn list_offsets(&self, req: ListOffsetsRequest) -> Message {
        let g = match self.leader_group(&req.topic, req.partition) {
            Ok(g) => g,
            Err(e) => return *e,
        };
        let log = g.part.log();
        let hw = g.high_watermark.get();
        let (offset, timestamp_ms) = match req.spec {
            OffsetSpec::Earliest => (Some(log.log_start_offset()), None),
            OffsetSpec::Latest => (Some(hw), None),
            OffsetSpec::Timestamp(ts) => match log.offset_for_timestamp(ts) {
                Ok(o) => (o.filter(|&o| o < hw), Some(ts)),
                Err(e) => return storage_error(&e),
            },
        };
        ListOffsetsResponse {
            topic: req.topic,
            partition: req.partition,
            offset,
            timestamp_ms,
        }
        .into()
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
        let now = Instant::now();
        let brokers = broker_ids(&self.config)
            .into_iter()
            .map(|b| {
                let seen = if b == self.config.id {
                    Some(Duration::ZERO)
                } else {
                    self.view
                        .read()
                        .ok()
                        .and_then(|v| v.last_seen.get(&b).map(|t| now.duration_since(*t)))
                };
                BrokerStatus {
                    id: b,
                    endpoints: self.broker_endpoint(b, 0).into_iter().collect(),
                    alive: seen.is_some_and(|d| d < PEER_ALIVE_WINDOW),
                    last_seen_ms_ago: seen.map(|d| d.as_millis() as u64),
                }
            })
            .collect();
        ClusterStatusResponse {
            controller: self.controller_leader(),
            brokers,
            partitions,
        }
        .into()
    }
}

/// Room for a request's answer: a fetch's answer holds up to the bytes it
/// asked for; other answers are small (errors, acknowledgements, metadata
/// of a few hundred topics), [`ANSWER_BYTES_SMALL`].
fn answer_bytes_max(frame: &Frame) -> u64 {
    let fetch = match frame.header.kind {
        Kind::FetchRequest => frame.access::<FetchRequest>().map_or(0, |r| {
            u64::from(r.max_bytes.to_native()).min(FETCH_BYTES_MAX as u64)
        }),
        _ => 0,
    };
    fetch + ANSWER_BYTES_SMALL
}

/// See [`answer_bytes_max`].
const ANSWER_BYTES_SMALL: u64 = 64 << 10;

/// A one-way flag tasks can wait for.
#[derive(Default)]
struct Flag {
    set: Cell<bool>,
    notify: Notify,
}

impl Flag {
    fn set(&self) {
        self.set.set(true);
        self.notify.notify_all();
    }

    /// Resolves once the flag is set (at once if it is).
    async fn wait(&self) {
        // No await between the check and taking the notification's
        // generation: a set in between cannot be missed.
        if self.set.get() {
            return;
        }
        self.notify.wait().await;
    }
}

/// Counts a live thing in a shared counter for as long as it exists
/// (connections, refusals, peer handshakes).
pub(crate) struct Counted(Rc<Cell<usize>>);

impl Counted {
    pub(crate) fn new(c: &Rc<Cell<usize>>) -> Counted {
        c.set(c.get() + 1);
        Counted(c.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Answers a connection over the listener's limit with
/// `TooManyConnections` (to its first request's correlation id, if the
/// header arrives in time) and closes it.
async fn refuse(mut stream: TcpStream, why: String, _refusing: Counted) {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    let _ = glommio::timer::timeout(REFUSE_TIMEOUT, async {
        while got < header.len() {
            match stream.read(&mut header[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        Ok(())
    })
    .await;
    let corr = if got == header.len() {
        u64::from_le_bytes(header[16..24].try_into().unwrap_or_default())
    } else {
        0
    };
    if let Ok(frame) =
        error(ErrorCode::TooManyConnections, why).encode(corr, FrameLimits::default())
    {
        let _ = stream.write_all(&frame).await;
    }
    let _ = stream.close().await;
}

fn admin_timeout(timeout_ms: u32) -> Duration {
    match timeout_ms {
        0 => ADMIN_TIMEOUT_DEFAULT,
        ms => Duration::from_millis(u64::from(ms)),
    }
}

/// Retired files queued for the janitor: deletions are rare (a segment every
/// few seconds at most per partition), so 1024 batches is a deep margin.
const JANITOR_QUEUE_MAX: usize = 1024;

/// What a deleted partition's directory is renamed to before the janitor
/// removes it.
const DELETED_SUFFIX: &str = ".deleted";

/// Slow file-system work the shards hand to the janitor thread.
pub enum Chore {
    /// Segments retention removed: unmap and unlink them.
    Retired(Retired),
    /// A deleted partition's directory.
    RemoveDir(std::path::PathBuf),
}

impl Chore {
    /// Does the work (on the janitor thread; inline only if its queue is full).
    fn run(self) {
        match self {
            Chore::Retired(r) => report_failed(r.dispose()),
            Chore::RemoveDir(dir) => {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    report_failed(vec![(dir, e)]);
                }
            }
        }
    }
}

/// The janitor thread: unmaps and unlinks retired segments and removes
/// deleted partitions off the shards.
fn start_janitor() -> std::io::Result<flume::Sender<Chore>> {
    let (tx, rx) = flume::bounded::<Chore>(JANITOR_QUEUE_MAX);
    std::thread::Builder::new()
        .name("janitor".into())
        .spawn(move || {
            while let Ok(chore) = rx.recv() {
                chore.run();
            }
        })?;
    Ok(tx)
}

fn report_failed(failed: Vec<(std::path::PathBuf, std::io::Error)>) {
    for (p, e) in failed {
        tracing::warn!(path = %p.display(), error = %e, "janitor: removing");
    }
}
