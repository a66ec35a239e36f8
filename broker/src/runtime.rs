//! The broker process: one glommio executor per shard, pinned, each owning
//! its partitions and its client listener.
//!
//! Today this runs a single broker (replication factor 1): the shard runtime,
//! the client protocol, partitions on storage, topic administration and
//! cross-shard messages are real; Raft replication between brokers, the
//! controller group and consumer groups come next (docs/ARCHITECTURE.md).
//!
//! Shard `s` serves clients on port `listen.port + s`; partition `p` of topic
//! `t` lives on shard `topics::shard_for(t, p, shards)`. Shard 0 also owns the
//! topic registry: creations and deletions are forwarded to it over flume and
//! it broadcasts the result to every shard.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use storage::shard::{Notify, Partition};
use storage::{Cleanup, Log, LogConfig, Retired, StorageError, SyncPolicy};
use wire::*;

use crate::config::BrokerConfig;
use crate::producers::{BatchId, ProducerTable, Verdict};
use crate::telemetry::{self, PartitionSample, ShardSample};
use crate::topics::{self, shard_for, TopicRecord, PARTITIONS_PER_TOPIC_MAX, TOPICS_MAX};

/// Requests one connection may have in flight: enough to keep a pipelining
/// producer's window full (1024 × 64 KiB = 64 MiB worst case per connection
/// is bounded further by the frame limit and by the client's own window).
const CONNECTION_INFLIGHT_MAX: u64 = 1024;
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
/// Term stamped into batches while there is no Raft (single broker).
const SINGLE_BROKER_TERM: u64 = 1;

/// Messages between shards.
enum ShardMsg {
    /// To shard 0: create or delete a topic; the answer is the response.
    Admin {
        request: Message,
        reply: flume::Sender<Message>,
    },
    /// To every shard: open (or, with `None`, close and delete) the partitions
    /// of a topic that this shard owns, and update the local registry copy.
    ApplyTopic {
        name: String,
        record: Option<TopicRecord>,
        done: flume::Sender<Result<(), String>>,
    },
    /// To every shard: report the partitions it owns.
    Status {
        reply: flume::Sender<Vec<PartitionStatus>>,
    },
    /// To every shard: stop accepting, make everything durable, stop.
    Shutdown,
}

/// One partition owned by a shard.
struct OwnedPartition {
    part: Rc<Partition>,
    /// Idempotent producers' sequence state (rebuilt from the active segment
    /// on open).
    producers: RefCell<ProducerTable>,
    /// Signalled after every append, for long-polling fetches.
    appended: Notify,
}

/// Per-shard counters, the seam for telemetry.
#[derive(Default)]
pub struct ShardCounters {
    pub produce_requests: Cell<u64>,
    pub produce_bytes: Cell<u64>,
    pub fetch_requests: Cell<u64>,
    pub fetch_bytes: Cell<u64>,
    pub errors: Cell<u64>,
    pub segments_deleted: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

struct Shard {
    id: usize,
    shards: usize,
    config: BrokerConfig,
    topics: RefCell<BTreeMap<String, TopicRecord>>,
    partitions: RefCell<HashMap<(String, u32), Rc<OwnedPartition>>>,
    inboxes: Vec<flume::Sender<ShardMsg>>,
    /// Serialises topic administration on shard 0.
    admin_lock: Semaphore,
    /// Set by [`ShardMsg::Shutdown`]; ends the accept loop.
    stopping: Notify,
    /// To the telemetry thread (never blocks: `try_send`).
    samples: flume::Sender<ShardSample>,
    /// To the janitor thread: retired segment files to unlink off the shard.
    janitor: flume::Sender<Retired>,
    counters: ShardCounters,
}

/// Runs a broker until the process is killed.
pub fn run(mut config: BrokerConfig) -> Result<()> {
    if config.peers.len() > 1 {
        bail!(
            "a cluster of {} brokers needs Raft replication between brokers, which is not wired \
             into the runtime yet; run a single broker (no --peers, or only this one)",
            config.peers.len()
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Absolute: glommio's io_uring directory open does not resolve relative paths.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("resolving {}", config.data_dir.display()))?;
    let registry = topics::load(&config.data_dir).context("reading the topic registry")?;
    let shards = config.shards;
    // glommio binds with SO_REUSEPORT, which would let two brokers share a
    // port silently; a plain bind first refuses a port that is in use.
    for s in 0..shards {
        let addr = SocketAddr::new(config.listen.ip(), config.listen.port() + s as u16);
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("client port {addr} (shard {s})"))?;
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
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut handles = Vec::with_capacity(shards);
    for (id, inbox) in receivers.into_iter().enumerate() {
        let config = config.clone();
        let registry = registry.clone();
        let senders = senders.clone();
        let samples = samples.clone();
        let janitor = janitor.clone();
        let ready = ready_tx.clone();
        let builder =
            LocalExecutorBuilder::new(Placement::Fixed(id % cpus)).name(&format!("shard-{id}"));
        let handle = builder
            .spawn(move || async move {
                let shard = Rc::new(Shard {
                    id,
                    shards,
                    config,
                    topics: RefCell::new(BTreeMap::new()),
                    partitions: RefCell::new(HashMap::new()),
                    inboxes: senders,
                    admin_lock: Semaphore::new(1),
                    stopping: Notify::default(),
                    samples,
                    janitor,
                    counters: ShardCounters::default(),
                });
                if let Err(e) = shard.clone().serve(registry, inbox, ready.clone()).await {
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
    eprintln!(
        "drmq broker {} up: {} shard(s), clients on {}, data in {}",
        config.id,
        shards,
        endpoints
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        config.data_dir.display()
    );
    let stop_senders = senders;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let signal = wait_for_signal(&signals);
            eprintln!("drmq broker: signal {signal}, stopping (syncing partitions)");
            for s in &stop_senders {
                let _ = s.send(ShardMsg::Shutdown);
            }
        })
        .context("starting the signal thread")?;
    for h in handles {
        h.join()
            .map_err(|e| anyhow::anyhow!("shard panicked: {e:?}"))?;
    }
    eprintln!("drmq broker {}: stopped", config.id);
    Ok(())
}

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

impl Shard {
    fn endpoint(&self, shard: usize) -> Endpoint {
        Endpoint {
            host: self.config.listen.ip().to_string(),
            port: self.config.listen.port() + shard as u16,
        }
    }

    async fn serve(
        self: Rc<Self>,
        registry: Vec<TopicRecord>,
        inbox: flume::Receiver<ShardMsg>,
        ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    ) -> Result<()> {
        for record in registry {
            self.apply_topic(&record.name.clone(), Some(record))?;
        }
        // Recovered bytes count as durable only after a sync (they may have
        // been in the page cache only): sync every partition before serving,
        // so the high watermark covers everything that survived.
        let opened: Vec<Rc<OwnedPartition>> = self.partitions.borrow().values().cloned().collect();
        for owned in opened {
            let end = owned.part.log().next_offset();
            owned
                .part
                .wait_durable(end)
                .await
                .map_err(|e| anyhow::anyhow!("syncing a recovered partition: {e}"))?;
        }
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
                retention.apply_retention();
            }
        })
        .detach();
        let control = self.clone();
        glommio::spawn_local(async move {
            while let Ok(msg) = inbox.recv_async().await {
                control.clone().control(msg).await;
            }
        })
        .detach();
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
                    glommio::spawn_local(self.clone().connection(stream)).detach();
                }
                Some(Err(e)) => {
                    eprintln!("shard {}: accept failed: {e}", self.id);
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        // Graceful stop: no new connections; make every partition durable.
        drop(listener);
        let owned: Vec<Rc<OwnedPartition>> = self.partitions.borrow().values().cloned().collect();
        for p in owned {
            let end = p.part.log().next_offset();
            if let Err(e) = p.part.wait_durable(end).await {
                eprintln!("shard {}: final sync failed: {e}", self.id);
            }
        }
        Ok(())
    }

    async fn control(self: Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Admin { request, reply } => {
                let resp = self.admin(request).await;
                let _ = reply.send_async(resp).await;
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

    /// Opens or removes this shard's partitions of a topic.
    fn apply_topic(&self, name: &str, record: Option<TopicRecord>) -> Result<()> {
        match record {
            Some(record) => {
                for p in 0..record.partitions {
                    if shard_for(name, p, self.shards) != self.id {
                        continue;
                    }
                    let dir = TopicRecord::partition_dir(&self.config.data_dir, name, p);
                    let (log, report) = Log::open(&dir, log_config(&record))
                        .with_context(|| format!("opening {}", dir.display()))?;
                    if !report.truncations.is_empty() {
                        eprintln!(
                            "shard {}: recovered {}: {:?}",
                            self.id,
                            dir.display(),
                            report.truncations
                        );
                    }
                    let producers = rebuild_producers(&log);
                    let part = Partition::new(log);
                    if record.sync_interval_ms.is_some() {
                        let flusher = part.clone();
                        glommio::spawn_local(async move {
                            let e = flusher.flush_loop().await;
                            eprintln!("partition flush loop stopped: {e}");
                        })
                        .detach();
                    }
                    self.partitions.borrow_mut().insert(
                        (name.to_owned(), p),
                        Rc::new(OwnedPartition {
                            part,
                            producers: RefCell::new(producers),
                            appended: Notify::default(),
                        }),
                    );
                }
                self.topics.borrow_mut().insert(name.to_owned(), record);
            }
            None => {
                self.topics.borrow_mut().remove(name);
                let removed: Vec<u32> = self
                    .partitions
                    .borrow()
                    .keys()
                    .filter(|(t, _)| t == name)
                    .map(|(_, p)| *p)
                    .collect();
                for p in removed {
                    if let Some(owned) = self.partitions.borrow_mut().remove(&(name.to_owned(), p))
                    {
                        owned.appended.notify_all();
                    }
                    let dir = TopicRecord::partition_dir(&self.config.data_dir, name, p);
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
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

    /// Topic creation and deletion, on shard 0.
    async fn admin(&self, request: Message) -> Message {
        let Ok(_permit) = self.admin_lock.acquire_permit(1).await else {
            return error(ErrorCode::ShuttingDown, "shutting down");
        };
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
                if req.partitions > PARTITIONS_PER_TOPIC_MAX {
                    return error(
                        ErrorCode::InvalidReplication,
                        format!(
                            "{} partitions, at most {PARTITIONS_PER_TOPIC_MAX}",
                            req.partitions
                        ),
                    );
                }
                let brokers = self.config.peers.len().max(1);
                if usize::from(req.replication) > brokers {
                    return error(
                        ErrorCode::InvalidReplication,
                        format!(
                            "replication {} but the cluster has {brokers} broker(s)",
                            req.replication
                        ),
                    );
                }
                let record = TopicRecord::from_config(
                    req.name.clone(),
                    req.partitions,
                    req.replication,
                    &req.config,
                );
                let mut all: Vec<TopicRecord> = self.topics.borrow().values().cloned().collect();
                all.push(record.clone());
                if let Err(e) = topics::save(&self.config.data_dir, &all) {
                    return error(
                        ErrorCode::StorageError,
                        format!("saving the topic registry: {e}"),
                    );
                }
                if let Err(e) = self.broadcast_topic(&req.name, Some(record)).await {
                    return error(ErrorCode::StorageError, e);
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
                let all: Vec<TopicRecord> = self
                    .topics
                    .borrow()
                    .values()
                    .filter(|t| t.name != req.name)
                    .cloned()
                    .collect();
                if let Err(e) = topics::save(&self.config.data_dir, &all) {
                    return error(
                        ErrorCode::StorageError,
                        format!("saving the topic registry: {e}"),
                    );
                }
                if let Err(e) = self.broadcast_topic(&req.name, None).await {
                    return error(ErrorCode::StorageError, e);
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
        match self.topics.borrow().get(name) {
            None => TopicMetadata {
                name: name.to_owned(),
                error: ErrorCode::UnknownTopicOrPartition as u16,
                partitions: vec![],
            },
            Some(t) => TopicMetadata {
                name: name.to_owned(),
                error: 0,
                partitions: (0..t.partitions)
                    .map(|p| PartitionMetadata {
                        partition: p,
                        leader: Some(self.config.id),
                        leader_term: SINGLE_BROKER_TERM,
                        shard: shard_for(name, p, self.shards) as u32,
                        replicas: vec![self.config.id],
                    })
                    .collect(),
            },
        }
    }

    /// Deletes whole sealed segments past each topic's retention (bytes,
    /// age), never beyond what is committed (durable, with one replica).
    /// Compaction of compacted topics is not scheduled yet: it rewrites
    /// segments with blocking I/O and needs a task of its own.
    fn apply_retention(&self) {
        let owned: Vec<(String, u32, Rc<OwnedPartition>)> = self
            .partitions
            .borrow()
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, o.clone()))
            .collect();
        for (topic, p, o) in owned {
            let mut log = o.part.log_mut();
            let bound = log.durable_offset();
            match log.apply_retention(bound) {
                Ok(removed) if removed.segments > 0 => {
                    bump(&self.counters.segments_deleted, removed.segments as u64);
                }
                Ok(_) => {}
                Err(e) => eprintln!("shard {}: retention on {topic}-{p}: {e}", self.id),
            }
            // Unlinking a large segment can take tens of milliseconds: the
            // janitor thread does it (inline only if its queue is full).
            let retired = log.take_retired();
            if !retired.is_empty() {
                if let Err(e) = self.janitor.try_send(retired) {
                    report_failed(e.into_inner().dispose());
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
            partitions: self
                .partitions
                .borrow()
                .iter()
                .map(|((topic, p), owned)| {
                    let log = owned.part.log();
                    PartitionSample {
                        topic: topic.clone(),
                        partition: *p,
                        log_start_offset: log.log_start_offset(),
                        high_watermark: log.durable_offset(),
                        next_offset: log.next_offset(),
                    }
                })
                .collect(),
        }
    }

    fn local_status(&self) -> Vec<PartitionStatus> {
        self.partitions
            .borrow()
            .iter()
            .map(|((topic, p), owned)| {
                let log = owned.part.log();
                PartitionStatus {
                    topic: topic.clone(),
                    partition: *p,
                    leader: Some(self.config.id),
                    term: SINGLE_BROKER_TERM,
                    commit_index: log.durable_offset(),
                    log_start_offset: log.log_start_offset(),
                    replicas: vec![ReplicaStatus {
                        broker: self.config.id,
                        match_index: log.durable_offset(),
                        lag: 0,
                    }],
                }
            })
            .collect()
    }

    /// Looks up a partition this shard owns, or the error to answer with.
    fn owned(&self, topic: &str, partition: u32) -> Result<Rc<OwnedPartition>, Box<Message>> {
        if let Some(p) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            return Ok(p.clone());
        }
        let exists = self
            .topics
            .borrow()
            .get(topic)
            .is_some_and(|t| partition < t.partitions);
        if !exists {
            return Err(Box::new(error(
                ErrorCode::UnknownTopicOrPartition,
                format!("no partition {topic}-{partition}"),
            )));
        }
        let shard = shard_for(topic, partition, self.shards);
        Err(Box::new(
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
        ))
    }

    async fn connection(self: Rc<Self>, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let (out_tx, out_rx) = local_channel::new_bounded::<FrameBuf>(CONNECTION_OUTBOX_MAX);
        let writer_task = glommio::spawn_local(async move {
            while let Some(frame) = out_rx.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let out_tx = Rc::new(out_tx);
        let inflight = Rc::new(Semaphore::new(CONNECTION_INFLIGHT_MAX));
        let limits = FrameLimits::default();
        let mut decoder = FrameDecoder::new(limits);
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        'read: loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            decoder.extend(&chunk[..n]);
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("shard {}: closing client {peer}: {e}", self.id);
                        bump(&self.counters.errors, 1);
                        break 'read;
                    }
                };
                let Ok(permit) = inflight.clone().acquire_static_permit(1).await else {
                    break 'read;
                };
                let shard = self.clone();
                let out = out_tx.clone();
                glommio::spawn_local(async move {
                    let corr = frame.header.correlation_id;
                    let response = if frame.header.kind == Kind::ProduceRequest {
                        // The hot path reads the archived body in place: the
                        // batch is not copied out of the frame.
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
                    let _ = out.send(bytes).await;
                    drop(permit);
                })
                .detach();
            }
        }
        // Let in-flight requests finish writing, then close.
        let _ = inflight.acquire(CONNECTION_INFLIGHT_MAX).await;
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
                MetadataResponse {
                    brokers: vec![BrokerInfo {
                        id: self.config.id,
                        endpoints: (0..self.shards).map(|s| self.endpoint(s)).collect(),
                    }],
                    controller: Some(self.config.id),
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
            Message::DescribeTopicRequest(req) => match self.topics.borrow().get(&req.name) {
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
            },
            Message::ProduceRequest(req) => {
                self.produce(&req.topic, req.partition, req.acks, &req.batch)
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
        self.produce(topic, req.partition.to_native(), acks, req.batch.as_slice())
            .await
    }

    async fn produce(&self, topic: &str, partition: u32, acks: Acks, batch: &[u8]) -> Message {
        let owned = match self.owned(topic, partition) {
            Ok(p) => p,
            Err(e) => return *e,
        };
        // The CRC is checked once, by storage on append (a mismatch comes
        // back as CorruptBatch); here the structure and every record.
        let check = RecordBatch::parse_without_crc(batch).and_then(|b| {
            b.validate_records()?;
            if b.batch_bytes() != batch.len() {
                return Err(WireError::InvalidBatch("bytes after the batch".into()));
            }
            if b.record_count() == 0 {
                return Err(WireError::InvalidBatch("no records".into()));
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
        // Check and record the producer's sequence in the same synchronous
        // step as the append, so pipelined batches of one producer are
        // judged in the order they are appended.
        let verdict = owned.producers.borrow().check(id);
        let info = match verdict {
            Verdict::Reject { code, reason } => return error(code, reason),
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => {
                if let Err(e) = owned.part.wait_durable(last_offset + 1).await {
                    return storage_error(&e);
                }
                return ProduceResponse {
                    topic: topic.to_owned(),
                    partition,
                    base_offset,
                    last_offset,
                    log_append_time_ms: now_ms(),
                    duplicate: true,
                }
                .into();
            }
            Verdict::Append => {
                let appended = owned.part.log_mut().append(batch, SINGLE_BROKER_TERM);
                match appended {
                    Ok(info) => {
                        owned
                            .producers
                            .borrow_mut()
                            .record(id, info.base_offset, info.last_offset);
                        info
                    }
                    Err(e) => return storage_error(&e),
                }
            }
        };
        // Acknowledge once durable: always for acks=quorum (the only commit
        // there is with one replica), and under the every-batch policy.
        let every_batch = owned.part.log().config().sync_policy == SyncPolicy::EveryBatch;
        if acks == Acks::Quorum || every_batch {
            if let Err(e) = owned.part.wait_durable(info.last_offset + 1).await {
                return storage_error(&e);
            }
        }
        bump(&self.counters.produce_requests, 1);
        bump(&self.counters.produce_bytes, batch.len() as u64);
        owned.appended.notify_all();
        ProduceResponse {
            topic: topic.to_owned(),
            partition,
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms: now_ms(),
            duplicate: false,
        }
        .into()
    }

    async fn fetch(&self, req: FetchRequest) -> Message {
        let owned = match self.owned(&req.topic, req.partition) {
            Ok(p) => p,
            Err(e) => return *e,
        };
        let max_bytes = (req.max_bytes as usize).clamp(1, FETCH_BYTES_MAX);
        let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
        let deadline = Instant::now() + wait;
        loop {
            let mut out = Vec::new();
            let (high_watermark, log_start_offset) = {
                let log = owned.part.log();
                let hw = log.durable_offset();
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
                if req.offset > log.next_offset() || req.offset < log.log_start_offset() {
                    return error(
                        ErrorCode::OffsetOutOfRange,
                        format!(
                            "offset {} outside [{}, {}]",
                            req.offset,
                            log.log_start_offset(),
                            log.next_offset()
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
            // Long poll: wait for an append (its data is durable when the
            // append returns under the default policy) or the deadline.
            let _ = glommio::timer::timeout(deadline - now, async {
                owned.appended.wait().await;
                Ok(())
            })
            .await;
        }
    }

    fn list_offsets(&self, req: ListOffsetsRequest) -> Message {
        let owned = match self.owned(&req.topic, req.partition) {
            Ok(p) => p,
            Err(e) => return *e,
        };
        let log = owned.part.log();
        let (offset, timestamp_ms) = match req.spec {
            OffsetSpec::Earliest => (Some(log.log_start_offset()), None),
            OffsetSpec::Latest => (Some(log.durable_offset()), None),
            OffsetSpec::Timestamp(ts) => match log.offset_for_timestamp(ts) {
                Ok(o) => (o.filter(|&o| o < log.durable_offset()), Some(ts)),
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
        ClusterStatusResponse {
            controller: Some(self.config.id),
            brokers: vec![BrokerStatus {
                id: self.config.id,
                endpoints: (0..self.shards).map(|s| self.endpoint(s)).collect(),
                alive: true,
                last_seen_ms_ago: Some(0),
            }],
            partitions,
        }
        .into()
    }
}

/// Rebuilds idempotent-producer state from the active segment's batches:
/// retries target recent batches, and the active segment holds them. (A
/// producer whose last batch is in an older segment is accepted as new.)
fn rebuild_producers(log: &Log) -> ProducerTable {
    let mut table = ProducerTable::default();
    let end = log.next_offset();
    let mut at = log
        .segment_bases()
        .last()
        .copied()
        .unwrap_or(end)
        .max(log.log_start_offset());
    // Bounded: each read advances `at` (whole batches) or ends the loop.
    while at < end {
        let Ok(out) = log.read(at, FETCH_BYTES_MAX, end) else {
            break;
        };
        if out.bytes.is_empty() || out.next_offset <= at {
            break;
        }
        for batch in wire::batches(out.bytes).flatten() {
            let id = BatchId {
                producer_id: batch.producer_id(),
                epoch: batch.producer_epoch(),
                base_sequence: batch.base_sequence(),
                record_count: batch.record_count(),
            };
            table.record(id, batch.base_offset(), batch.last_offset());
        }
        at = out.next_offset;
    }
    table
}

/// Retired files queued for the janitor: deletions are rare (a segment every
/// few seconds at most per partition), so 1024 batches is a deep margin.
const JANITOR_QUEUE_MAX: usize = 1024;

/// The janitor thread: unmaps and unlinks retired segments off the shards.
fn start_janitor() -> std::io::Result<flume::Sender<Retired>> {
    let (tx, rx) = flume::bounded::<Retired>(JANITOR_QUEUE_MAX);
    std::thread::Builder::new()
        .name("janitor".into())
        .spawn(move || {
            while let Ok(retired) = rx.recv() {
                report_failed(retired.dispose());
            }
        })?;
    Ok(tx)
}

fn report_failed(failed: Vec<(std::path::PathBuf, std::io::Error)>) {
    for (p, e) in failed {
        eprintln!("janitor: removing {}: {e}", p.display());
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
