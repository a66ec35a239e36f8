//! A pipelined, batching producer and consumer over blocking std threads.
//!
//! # Layout
//! | item         | what it does                                                        |
//! |--------------|---------------------------------------------------------------------|
//! | [`routes`]   | metadata: the client endpoint of the shard that owns each partition |
//! | `Links`      | one TCP connection per shard endpoint, each with a writer and a     |
//! |              | reader thread; responses come back to the owner on one channel      |
//! | [`Producer`] | batches per partition (linger, maximum bytes), a bounded in-flight  |
//! |              | window, retries with back-off, NotLeader hints followed             |
//! | [`Consumer`] | one long-poll fetch in flight per partition, all pipelined over the |
//! |              | same shard connections                                              |
//!
//! The producer and consumer are driven by their owner's thread: `send`,
//! `poll` and `flush` do the routing, batching, retries and deadline checks,
//! and the connection threads only move bytes. Time comes in through those
//! calls, so nothing runs behind the owner's back, and a caller that wants a
//! linger to fire calls [`Producer::poll`] at least that often
//! ([`Producer::next_due`] says when).
//!
//! Delivery is at least once: a batch whose connection broke after it was
//! sent may have been appended, and is sent again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use wire::{
    Acks, ErrorCode, FetchRequest, FrameBuf, FrameDecoder, FrameLimits, LeaderHint, Message,
    MetadataRequest, NewRecord, OffsetSpec, ProduceRequest, Record, RecordBatchBuilder,
};

use crate::client::{ClientError, Connection};

/// Frames queued for one connection's writer thread. The owner never has more
/// than its in-flight window outstanding, so this only bounds a burst; 4096
/// covers the largest window we allow ([`IN_FLIGHT_MAX_LIMIT`]) with room.
const LINK_QUEUE_FRAMES_MAX: usize = 4096;
/// Socket read size: 256 KiB, a few fetch responses or many produce acks.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Writer buffer: 256 KiB, so many small produce frames go in one syscall.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Largest in-flight window (requests) a producer accepts: the broker allows
/// 1024 requests in flight per connection.
pub const IN_FLIGHT_MAX_LIMIT: usize = 1024;
/// Room in a produce frame for everything but the batch (header, topic, rkyv
/// framing): 4 KiB is far more than a 255-byte topic name needs.
const PRODUCE_FRAME_OVERHEAD_BYTES: usize = 4096;

/// Records added between looks at answers and lingers inside `send` (the
/// caller's own `poll` calls look too); 32 records of 100 B are ~4 µs of work.
const SENDS_PER_PUMP: u32 = 32;

/// Errors of the pipelined client.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("invalid client setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{topic}-{partition}: {reason}")]
    Partition {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("flush did not finish before its deadline ({left} batch(es) left)")]
    FlushDeadline { left: usize },
}

/// Why a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// The broker refused it with a code that sending again will not change.
    Fatal { code: ErrorCode, message: String },
    /// Retries did not succeed before the delivery deadline; `last` is the
    /// last failure seen.
    Deadline { attempts: u32, last: String },
}

impl DeliveryError {
    /// A short stable name, for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DeliveryError::Fatal { code, .. } => code.name(),
            DeliveryError::Deadline { .. } => "DeliveryDeadline",
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Fatal { code, message } => write!(f, "{code}: {message}"),
            DeliveryError::Deadline { attempts, last } => {
                write!(f, "not delivered after {attempts} attempt(s): {last}")
            }
        }
    }
}

/// Settings shared by producers and consumers.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bootstrap brokers (any one answers metadata).
    pub brokers: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    /// A request with no answer after this is treated as failed.
    pub request_timeout: Duration,
    /// First retry back-off; doubled per attempt up to `retry_backoff_max`.
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub limits: FrameLimits,
}

impl ClientConfig {
    pub fn new(brokers: Vec<SocketAddr>) -> Self {
        ClientConfig {
            brokers,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry_backoff_min: Duration::from_millis(10),
            retry_backoff_max: Duration::from_secs(1),
            limits: FrameLimits::default(),
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.retry_backoff_min
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

/// Asks the bootstrap brokers for `topic`'s partitions and returns, indexed
/// by partition number, the client endpoint of the shard that leads each.
/// While a partition has no leader (an election is under way) it asks
/// again, each bootstrap broker in turn, for up to `connect_timeout`.
pub fn routes(cfg: &ClientConfig, topic: &str) -> Result<Vec<SocketAddr>, PipelineError> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut attempt = 0usize;
    loop {
        let result = routes_partial(&cfg.brokers, attempt, cfg.connect_timeout, topic);
        let result = result.and_then(|r| {
            r.iter()
                .enumerate()
                .map(|(i, a)| {
                    a.ok_or_else(|| PipelineError::Metadata(format!("{topic}-{i}: no leader")))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match result {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(PipelineError::Metadata(m)) if m.contains("no topic") => {
                return Err(PipelineError::Metadata(m))
            }
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One metadata request to the first broker that answers, starting at
/// `brokers[start % len]`: each partition's leader endpoint, `None` while it
/// has no leader.
pub fn routes_partial(
    brokers: &[SocketAddr],
    start: usize,
    timeout: Duration,
    topic: &str,
) -> Result<Vec<Option<SocketAddr>>, PipelineError> {
    let mut order = brokers.to_vec();
    if !order.is_empty() {
        let n = order.len();
        order.rotate_left(start % n);
    }
    let mut conn = Connection::connect_any(&order, timeout)?;
    routes_once(&mut conn, topic)
}

/// Metadata refreshes after failures, at most one per [`REFRESH_GAP`], each
/// starting at the next bootstrap broker (one that is down or stopped is
/// not asked first every time).
#[derive(Debug, Default)]
struct Refresher {
    last: Option<Instant>,
    count: usize,
}

/// Shortest time between two metadata refreshes of one client.
const REFRESH_GAP: Duration = Duration::from_millis(50);
/// A refresh is a quick look: a broker that does not answer in this time is
/// skipped until the next one.
const REFRESH_TIMEOUT: Duration = Duration::from_millis(500);

impl Refresher {
    /// Updates `routes` with the leaders the cluster knows now; true if a
    /// refresh ran.
    fn refresh(&mut self, cfg: &ClientConfig, topic: &str, routes: &mut [SocketAddr]) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < REFRESH_GAP) {
            return false;
        }
        self.last = Some(Instant::now());
        self.count += 1;
        let timeout = REFRESH_TIMEOUT.min(cfg.connect_timeout);
        if let Ok(r) = routes_partial(&cfg.brokers, self.count, timeout, topic) {
            if r.len() == routes.len() {
                for (slot, new) in routes.iter_mut().zip(r) {
                    if let Some(a) = new {
                        *slot = a;
                    }
                }
            }
        }
        true
    }
}

fn routes_once(
    conn: &mut Connection,
    topic: &str,
) -> Result<Vec<Option<SocketAddr>>, PipelineError> {
    let resp = conn.request(
        &MetadataRequest {
            topics: Some(vec![topic.to_owned()]),
        }
        .into(),
    )?;
    let Message::MetadataResponse(meta) = resp else {
        return Err(PipelineError::Metadata(format!(
            "unexpected response {}",
            resp.kind().name()
        )));
    };
    let t = meta
        .topics
        .iter()
        .find(|t| t.name == topic)
        .ok_or_else(|| PipelineError::Metadata(format!("no topic {topic}")))?;
    if t.error != 0 {
        return Err(PipelineError::Metadata(format!(
            "topic {topic}: {}",
            ErrorCode::from_u16(t.error)
        )));
    }
    let mut out = vec![None; t.partitions.len()];
    for p in &t.partitions {
        let missing =
            |what: String| PipelineError::Metadata(format!("{topic}-{}: {what}", p.partition));
        let Some(leader) = p.leader else {
            continue; // an election is under way
        };
        let Some(broker) = meta.brokers.iter().find(|b| b.id == leader) else {
            continue; // its endpoint is not known yet
        };
        let ep = broker
            .endpoints
            .get(p.shard as usize)
            .ok_or_else(|| missing(format!("broker {leader} has no shard {}", p.shard)))?;
        let addr = resolve(&ep.host, ep.port)
            .ok_or_else(|| missing(format!("cannot resolve {}:{}", ep.host, ep.port)))?;
        let slot = out
            .get_mut(p.partition as usize)
            .ok_or_else(|| missing("partition number beyond the partition count".into()))?;
        *slot = Some(addr);
    }
    Ok(out)
}

// ---- connections ------------------------------------------------------------

/// What the connection threads tell their owner.
enum Event {
    Response {
        corr: u64,
        msg: Message,
        received_at: Instant,
    },
    Broken {
        link: u64,
        reason: String,
    },
}

/// One connection: a writer thread fed by a bounded queue and a reader thread
/// that decodes responses and forwards them.
struct Link {
    id: u64,
    tx: Option<SyncSender<FrameBuf>>,
    stream: TcpStream,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    fn open(
        id: u64,
        addr: SocketAddr,
        cfg: &ClientConfig,
        events: Sender<Event>,
    ) -> Result<Link, String> {
        let stream = crate::client::connect_tcp(addr, cfg.connect_timeout)
            .map_err(|e| format!("{addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let read_half = stream.try_clone().map_err(|e| e.to_string())?;
        let write_half = stream.try_clone().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::sync_channel::<FrameBuf>(LINK_QUEUE_FRAMES_MAX);
        let limits = cfg.limits;
        let reader_events = events.clone();
        let reader = std::thread::Builder::new()
            .name(format!("drmq-read-{addr}"))
            .spawn(move || read_loop(id, read_half, limits, reader_events))
            .map_err(|e| e.to_string())?;
        let writer = std::thread::Builder::new()
            .name(format!("drmq-write-{addr}"))
            .spawn(move || write_loop(id, write_half, rx, events))
            .map_err(|e| e.to_string())?;
        Ok(Link {
            id,
            tx: Some(tx),
            stream,
            threads: vec![reader, writer],
        })
    }

    fn send(&self, frame: FrameBuf) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("connection closed")?;
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(frame)) => {
                tx.send(frame).map_err(|_| "connection closed".into())
            }
            Err(TrySendError::Disconnected(_)) => Err("connection closed".into()),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.tx = None; // the writer ends when its queue is gone
        let _ = self.stream.shutdown(Shutdown::Both); // the reader ends on EOF
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_loop(link: u64, mut stream: TcpStream, limits: FrameLimits, events: Sender<Event>) {
    let mut decoder = FrameDecoder::new(limits);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let reason = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break "connection closed by the broker".to_owned(),
            Ok(n) => decoder.extend(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        }
        let received_at = Instant::now();
        // Bounded: each iteration consumes one whole frame of what was read.
        let failed = loop {
            match decoder.next_frame() {
                Ok(None) => break None,
                Ok(Some(frame)) => match frame.message() {
                    Ok(msg) => {
                        let ev = Event::Response {
                            corr: frame.header.correlation_id,
                            msg,
                            received_at,
                        };
                        if events.send(ev).is_err() {
                            return; // the owner is gone
                        }
                    }
                    Err(e) => break Some(format!("protocol error: {e}")),
                },
                Err(e) => break Some(format!("protocol error: {e}")),
            }
        };
        if let Some(reason) = failed {
            break reason;
        }
    };
    let _ = events.send(Event::Broken { link, reason });
}

fn write_loop(link: u64, stream: TcpStream, rx: Receiver<FrameBuf>, events: Sender<Event>) {
    let shutdown = stream.try_clone();
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream);
    while let Ok(frame) = rx.recv() {
        let mut result = out.write_all(&frame);
        // Coalesce whatever else is queued into the same syscalls.
        while result.is_ok() {
            match rx.try_recv() {
                Ok(frame) => result = out.write_all(&frame),
                Err(_) => break,
            }
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            let _ = events.send(Event::Broken {
                link,
                reason: format!("write: {e}"),
            });
            if let Ok(s) = &shutdown {
                let _ = s.shutdown(Shutdown::Both);
            }
            return;
        }
    }
}

/// The connections of one producer or consumer, by endpoint.
struct Links {
    cfg: ClientConfig,
    by_addr: HashMap<SocketAddr, Link>,
    next_link_id: u64,
    next_corr: u64,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
}

impl Links {
    fn new(cfg: ClientConfig) -> Links {
        let (events_tx, events_rx) = mpsc::channel();
        Links {
            cfg,
            by_addr: HashMap::new(),
            next_link_id: 1,
            next_corr: 1,
            events_tx,
            events_rx,
        }
    }

    fn corr(&mut self) -> u64 {
        let c = self.next_corr;
        self.next_corr += 1;
        c
    }

    /// Sends a frame to `addr`, connecting first if needed; returns the id of
    /// the connection that carries it.
    fn send(&mut self, addr: SocketAddr, frame: FrameBuf) -> Result<u64, String> {
        if !self.by_addr.contains_key(&addr) {
            let id = self.next_link_id;
            self.next_link_id += 1;
            let link = Link::open(id, addr, &self.cfg, self.events_tx.clone())?;
            self.by_addr.insert(addr, link);
        }
        let link = self.by_addr.get(&addr).expect("inserted above");
        let id = link.id;
        if let Err(e) = link.send(frame) {
            self.by_addr.remove(&addr);
            return Err(e);
        }
        Ok(id)
    }

    /// Forgets a broken connection (its threads are joined).
    fn drop_link(&mut self, link: u64) {
        self.by_addr.retain(|_, l| l.id != link);
    }

    fn recv(&self, wait: Duration) -> Option<Event> {
        if wait.is_zero() {
            return self.events_rx.try_recv().ok();
        }
        self.events_rx.recv_timeout(wait).ok()
    }
}

/// What a failed request should do next.
enum Failure {
    /// Send again after a back-off, to `reroute` if the broker named a leader.
    Retry {
        kind: &'static str,
        reason: String,
        reroute: Option<SocketAddr>,
    },
    Fatal {
        code: ErrorCode,
        message: String,
    },
}

fn classify(msg: Message) -> Result<Message, Failure> {
    match msg {
        Message::ErrorResponse(e) => {
            let code = e.error_code();
            if code.is_retryable() {
                let reroute = e
                    .leader_hint
                    .as_ref()
                    .and_then(|LeaderHint { endpoint, .. }| resolve(&endpoint.host, endpoint.port));
                Err(Failure::Retry {
                    kind: code.name(),
                    reason: format!("{code}: {}", e.message),
                    reroute,
                })
            } else {
                Err(Failure::Fatal {
                    code,
                    message: e.message,
                })
            }
        }
        other => Ok(other),
    }
}

/// Counters a producer or consumer keeps: retries and failures by kind.
#[derive(Debug, Default, Clone)]
pub struct ClientStats {
    pub requests_sent: u64,
    pub retries_by_kind: BTreeMap<&'static str, u64>,
    pub reroutes: u64,
    pub metadata_refreshes: u64,
}

// ---- producer ---------------------------------------------------------------

/// A random 63-bit producer id (the controller does not hand them out yet;
/// a collision needs about 3 billion producers for even odds).
pub fn random_producer_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() & (i64::MAX as u64)) as i64
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub client: ClientConfig,
    pub topic: String,
    pub acks: Acks,
    /// A partition's batch is sent once it holds this many bytes.
    pub batch_bytes_max: usize,
    /// ... or once its first record has waited this long.
    pub linger: Duration,
    /// Produce requests in flight at once, across all partitions.
    pub in_flight_max: usize,
    /// A batch not acknowledged this long after it was first sent fails.
    pub delivery_timeout: Duration,
    /// Stamp a producer id and per-partition sequence numbers into every
    /// batch, so a batch retried after a leader change is appended once.
    pub idempotent: bool,
}

impl ProducerConfig {
    pub fn new(client: ClientConfig, topic: impl Into<String>) -> Self {
        ProducerConfig {
            client,
            topic: topic.into(),
            acks: Acks::Quorum,
            batch_bytes_max: 64 * 1024,
            linger: Duration::from_millis(1),
            in_flight_max: 64,
            delivery_timeout: Duration::from_secs(30),
            idempotent: true,
        }
    }

    fn validate(&self) -> Result<(), PipelineError> {
        let bad = |field, reason: String| Err(PipelineError::Config { field, reason });
        let frame_max = self.client.limits.frame_bytes_max as usize;
        if self.batch_bytes_max == 0
            || self.batch_bytes_max + PRODUCE_FRAME_OVERHEAD_BYTES > frame_max
        {
            return bad(
                "batch_bytes_max",
                format!(
                    "{} must be in 1..={}",
                    self.batch_bytes_max,
                    frame_max - PRODUCE_FRAME_OVERHEAD_BYTES
                ),
            );
        }
        if self.idempotent && self.in_flight_max > crate::producers::RECENT_BATCHES_MAX {
            return bad(
                "in_flight_max",
                format!(
                    "{} with idempotence: brokers remember the last {} batches per producer, so at most that many may be in flight",
                    self.in_flight_max,
                    crate::producers::RECENT_BATCHES_MAX
                ),
            );
        }
        if !(1..=IN_FLIGHT_MAX_LIMIT).contains(&self.in_flight_max) {
            return bad(
                "in_flight_max",
                format!(
                    "{} must be in 1..={IN_FLIGHT_MAX_LIMIT}",
                    self.in_flight_max
                ),
            );
        }
        Ok(())
    }
}

/// The outcome of one batch: every record in it shares it.
#[derive(Debug)]
pub struct Delivery {
    pub partition: u32,
    /// The caller's tag of each record, in order.
    pub tags: Vec<u64>,
    /// The offset of the first record, or why the batch failed.
    pub result: Result<u64, DeliveryError>,
    pub attempts: u32,
    /// When the answer was read off the socket (or the failure decided).
    pub done_at: Instant,
}

struct OpenBatch {
    builder: RecordBatchBuilder,
    tags: Vec<u64>,
    opened_at: Instant,
}

struct Sealed {
    req: ProduceRequest,
    /// The batch's base sequence (idempotent producers; 0 otherwise).
    seq: i32,
    tags: Vec<u64>,
    first_sent_at: Option<Instant>,
    attempts: u32,
    last_error: String,
}

struct InFlight {
    batch: Sealed,
    link: u64,
    sent_at: Instant,
}

/// A batching, pipelined producer for one topic. See the module docs.
pub struct Producer {
    cfg: ProducerConfig,
    routes: Vec<SocketAddr>,
    links: Links,
    open: Vec<Option<OpenBatch>>,
    in_flight: HashMap<u64, InFlight>,
    /// Batches waiting to be (re)sent, with the earliest time to send each.
    ready: VecDeque<(Instant, Sealed)>,
    deliveries: Vec<Delivery>,
    sticky_partition: usize,
    sends_since_pump: u32,
    stats: ClientStats,
    refresher: Refresher,
    /// Idempotence: this producer's id and each partition's next sequence.
    producer_id: i64,
    sequences: Vec<i32>,
}

impl Producer {
    /// Looks the topic up and prepares (connections open on first use).
    pub fn new(cfg: ProducerConfig) -> Result<Producer, PipelineError> {
        let routes = routes(&cfg.client, &cfg.topic)?;
        Producer::with_routes(cfg, routes)
    }

    /// A producer with known routes (the endpoint of each partition, by
    /// number), for callers that hold metadata already. Wrong routes are
    /// corrected by the brokers' NotLeader hints.
    pub fn with_routes(
        cfg: ProducerConfig,
        routes: Vec<SocketAddr>,
    ) -> Result<Producer, PipelineError> {
        cfg.validate()?;
        if routes.is_empty() {
            return Err(PipelineError::Metadata(format!(
                "topic {} has no partitions",
                cfg.topic
            )));
        }
        let links = Links::new(cfg.client.clone());
        let routes_len = routes.len();
        Ok(Producer {
            open: (0..routes.len()).map(|_| None).collect(),
            routes,
            links,
            in_flight: HashMap::new(),
            ready: VecDeque::new(),
            deliveries: Vec::new(),
            sticky_partition: 0,
            sends_since_pump: 0,
            stats: ClientStats::default(),
            refresher: Refresher::default(),
            producer_id: if cfg.idempotent {
                random_producer_id()
            } else {
                wire::batch::NO_PRODUCER_ID
            },
            sequences: vec![0; routes_len],
            cfg,
        })
    }

    pub fn partition_count(&self) -> u32 {
        self.routes.len() as u32
    }

    /// The partition a record goes to: by key hash (the same hash the CLI
    /// uses), or for unkeyed records the partition whose batch is filling
    /// (sticky: it moves on when that batch is sealed, so batches stay full).
    pub fn partition_for(&self, key: Option<&[u8]>) -> u32 {
        match key {
            Some(k) => crate::topics::partition_for_key(k, self.routes.len()) as u32,
            None => self.sticky_partition as u32,
        }
    }

    /// Adds a record; may send batches and, while the in-flight window is
    /// full, block processing answers. `tag` comes back in the [`Delivery`].
    pub fn send(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        tag: u64,
    ) -> Result<(), PipelineError> {
        let partition = self.partition_for(key);
        self.send_to(partition, key, value, timestamp_ms, tag)
    }

    /// As [`Producer::send`], to a chosen partition.
    pub fn send_to(
        &mut self,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        tag: u64,
    ) -> Result<(), PipelineError> {
        let p = partition as usize;
        if p >= self.routes.len() {
            return Err(PipelineError::Partition {
                topic: self.cfg.topic.clone(),
                partition,
                reason: format!("the topic has {} partitions", self.routes.len()),
            });
        }
        let record_bytes = key.map_or(0, <[u8]>::len) + value.len() + 32;
        if let Some(open) = &self.open[p] {
            // Seal first if this record would push the batch past the maximum.
            if open.builder.encoded_bytes() + record_bytes > self.cfg.batch_bytes_max {
                self.seal(p);
                self.wait_for_window();
            }
        }
        let cap = self.cfg.batch_bytes_max;
        let open = self.open[p].get_or_insert_with(|| OpenBatch {
            builder: RecordBatchBuilder::with_capacity(cap),
            tags: Vec::new(),
            opened_at: Instant::now(),
        });
        open.builder.push(NewRecord {
            timestamp_ms,
            key,
            value: Some(value),
            headers: &[],
        });
        open.tags.push(tag);
        if open.builder.encoded_bytes() >= self.cfg.batch_bytes_max {
            self.seal(p);
            self.wait_for_window();
            self.pump(Duration::ZERO);
        } else {
            // Answers and lingers are looked at every few records, not on
            // every one: a record is ~100 ns of work, a poll several times it.
            self.sends_since_pump += 1;
            if self.sends_since_pump >= SENDS_PER_PUMP {
                self.pump(Duration::ZERO);
            }
        }
        Ok(())
    }

    fn seal(&mut self, p: usize) {
        let Some(open) = self.open[p].take() else {
            return;
        };
        if p == self.sticky_partition {
            self.sticky_partition = (self.sticky_partition + 1) % self.routes.len();
        }
        let mut builder = open.builder;
        let mut base_seq = 0;
        if self.producer_id >= 0 {
            let seq = self.sequences[p];
            base_seq = seq;
            builder = builder.producer(self.producer_id, 0, seq);
            self.sequences[p] = seq.wrapping_add(builder.record_count() as i32);
        }
        let req = ProduceRequest {
            topic: self.cfg.topic.clone(),
            partition: p as u32,
            acks: self.cfg.acks,
            timeout_ms: self
                .cfg
                .client
                .request_timeout
                .as_millis()
                .min(u128::from(u32::MAX)) as u32,
            batch: builder.finish(),
        };
        self.ready.push_back((
            Instant::now(),
            Sealed {
                req,
                seq: base_seq,
                tags: open.tags,
                first_sent_at: None,
                attempts: 0,
                last_error: String::new(),
            },
        ));
    }

    /// Back-pressure: blocks (processing answers) while more batches are
    /// queued or in flight than the window allows.
    fn wait_for_window(&mut self) {
        // Bounded: every request in flight is answered, fails or times out.
        while self.ready.len() + self.in_flight.len() > self.cfg.in_flight_max {
            self.pump(self.cfg.client.retry_backoff_min);
        }
    }

    /// Sends what is due, processes answers (waiting up to `wait` for the
    /// first), and checks deadlines. Returns how many batches completed.
    pub fn poll(&mut self, wait: Duration) -> usize {
        let before = self.deliveries.len();
        self.pump(wait);
        self.deliveries.len() - before
    }

    /// When the next linger or retry falls due (None: nothing pending).
    pub fn next_due(&self) -> Option<Instant> {
        let linger = self
            .open
            .iter()
            .flatten()
            .map(|o| o.opened_at + self.cfg.linger)
            .min();
        let retry = self.ready.iter().map(|(t, _)| *t).min();
        match (linger, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn pump(&mut self, wait: Duration) {
        self.sends_since_pump = 0;
        let now = Instant::now();
        for p in 0..self.open.len() {
            if self.open[p]
                .as_ref()
                .is_some_and(|o| now >= o.opened_at + self.cfg.linger)
            {
                self.seal(p);
            }
        }
        self.dispatch_due(now);
        self.expire(now);
        // Wait for the first event no longer than the next thing due.
        let wait = match self.next_due() {
            Some(t) => wait.min(t.saturating_duration_since(now)),
            None => wait,
        };
        let mut next = self.links.recv(wait);
        // Bounded: each event answers one request of the bounded window.
        while let Some(ev) = next {
            self.on_event(ev);
            next = self.links.recv(Duration::ZERO);
        }
        self.dispatch_due(Instant::now());
    }

    fn dispatch_due(&mut self, now: Instant) {
        // Bounded by the ready queue, which is bounded by the window.
        let mut held = VecDeque::new();
        // An idempotent producer sends each partition's batches in sequence
        // order: once one is held, the later ones of its partition wait too
        // (the broker would refuse them as out of order).
        let mut blocked: Vec<u32> = Vec::new();
        while let Some((due, batch)) = self.ready.pop_front() {
            let p = batch.req.partition;
            if due > now
                || self.in_flight.len() >= self.cfg.in_flight_max
                || (self.producer_id >= 0 && blocked.contains(&p))
            {
                if self.producer_id >= 0 && !blocked.contains(&p) {
                    blocked.push(p);
                }
                held.push_back((due, batch));
                continue;
            }
            self.transmit(batch);
        }
        self.ready = held;
    }

    fn transmit(&mut self, mut batch: Sealed) {
        let now = Instant::now();
        batch.attempts += 1;
        batch.first_sent_at.get_or_insert(now);
        let addr = self.routes[batch.req.partition as usize];
        let corr = self.links.corr();
        let frame = match wire::encode(&batch.req, corr, self.cfg.client.limits) {
            Ok(f) => f,
            Err(e) => {
                self.finish(
                    batch,
                    Err(DeliveryError::Fatal {
                        code: ErrorCode::RequestTooLarge,
                        message: e.to_string(),
                    }),
                    now,
                );
                return;
            }
        };
        self.stats.requests_sent += 1;
        match self.links.send(addr, frame) {
            Ok(link) => {
                self.in_flight.insert(
                    corr,
                    InFlight {
                        batch,
                        link,
                        sent_at: now,
                    },
                );
            }
            Err(reason) => self.retry(batch, "Connection", reason, None),
        }
    }

    fn retry(
        &mut self,
        mut batch: Sealed,
        kind: &'static str,
        reason: String,
        reroute: Option<SocketAddr>,
    ) {
        *self.stats.retries_by_kind.entry(kind).or_default() += 1;
        batch.last_error = reason;
        let p = batch.req.partition as usize;
        if let Some(addr) = reroute {
            if self.routes[p] != addr {
                self.routes[p] = addr;
                self.stats.reroutes += 1;
            }
        } else if kind == ErrorCode::NotLeader.name()
            || kind == ErrorCode::UnknownTopicOrPartition.name()
            || kind == ErrorCode::LeaderNotAvailable.name()
            || kind == "Connection"
        {
            // The leader may have moved (or died): ask where it is now.
            self.refresh_routes();
        }
        let now = Instant::now();
        let first = batch.first_sent_at.unwrap_or(now);
        if now.duration_since(first) >= self.cfg.delivery_timeout {
            let err = DeliveryError::Deadline {
                attempts: batch.attempts,
                last: std::mem::take(&mut batch.last_error),
            };
            self.finish(batch, Err(err), now);
            return;
        }
        // Out of order is an ordering artefact of retries, not overload:
        // try again soon (the earlier batch goes first, see dispatch_due).
        let due = if kind == ErrorCode::OutOfOrderSequence.name() {
            now + self.cfg.client.retry_backoff_min
        } else {
            now + self.cfg.client.backoff(batch.attempts)
        };
        if self.producer_id >= 0 {
            // Back in sequence order within its partition.
            let p = batch.req.partition;
            let at = self
                .ready
                .iter()
                .position(|(_, b)| b.req.partition == p && b.seq.wrapping_sub(batch.seq) > 0)
                .unwrap_or(self.ready.len());
            self.ready.insert(at, (due, batch));
        } else {
            self.ready.push_back((due, batch));
        }
    }

    fn refresh_routes(&mut self) {
        if self
            .refresher
            .refresh(&self.cfg.client, &self.cfg.topic, &mut self.routes)
        {
            self.stats.metadata_refreshes += 1;
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Response {
                corr,
                msg,
                received_at,
                ..
            } => {
                let Some(f) = self.in_flight.remove(&corr) else {
                    return; // answer to a request already timed out
                };
                match classify(msg) {
                    Ok(Message::ProduceResponse(r)) => {
                        self.finish(f.batch, Ok(r.base_offset), received_at)
                    }
                    Ok(other) => {
                        let err = DeliveryError::Fatal {
                            code: ErrorCode::Unknown,
                            message: format!("unexpected response {}", other.kind().name()),
                        };
                        self.finish(f.batch, Err(err), received_at);
                    }
                    Err(Failure::Retry {
                        kind,
                        reason,
                        reroute,
                    }) => self.retry(f.batch, kind, reason, reroute),
                    // After a leader change an idempotent producer's retried
                    // batches and its newer ones may reach the new leader out
                    // of order; the earlier one lands on its own retry, then
                    // this one does (bounded by the delivery timeout).
                    Err(Failure::Fatal {
                        code: ErrorCode::OutOfOrderSequence,
                        message,
                    }) if self.producer_id >= 0 => {
                        self.retry(f.batch, ErrorCode::OutOfOrderSequence.name(), message, None)
                    }
                    Err(Failure::Fatal { code, message }) => self.finish(
                        f.batch,
                        Err(DeliveryError::Fatal { code, message }),
                        received_at,
                    ),
                }
            }
            Event::Broken { link, reason } => {
                self.links.drop_link(link);
                let lost: Vec<u64> = self
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.link == link)
                    .map(|(&c, _)| c)
                    .collect();
                for corr in lost {
                    let f = self.in_flight.remove(&corr).expect("listed above");
                    self.retry(f.batch, "Connection", reason.clone(), None);
                }
            }
        }
    }

    /// Requests unanswered past the request timeout are retried (their link
    /// is presumed dead and closed).
    fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.client.request_timeout;
        let late: Vec<(u64, u64)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now.duration_since(f.sent_at) >= timeout)
            .map(|(&c, f)| (c, f.link))
            .collect();
        for (corr, link) in late {
            self.links.drop_link(link);
            if let Some(f) = self.in_flight.remove(&corr) {
                self.retry(
                    f.batch,
                    "RequestTimeout",
                    format!("no answer within {timeout:?}"),
                    None,
                );
            }
        }
    }

    fn finish(&mut self, batch: Sealed, result: Result<u64, DeliveryError>, done_at: Instant) {
        self.deliveries.push(Delivery {
            partition: batch.req.partition,
            tags: batch.tags,
            result,
            attempts: batch.attempts,
            done_at,
        });
    }

    /// Takes the completed batches so far.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.deliveries)
    }

    /// Batches open, waiting or in flight.
    pub fn pending_batches(&self) -> usize {
        self.open.iter().flatten().count() + self.ready.len() + self.in_flight.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Sends every open batch and waits until all are answered (or failed),
    /// or `deadline`.
    pub fn flush(&mut self, deadline: Instant) -> Result<(), PipelineError> {
        for p in 0..self.open.len() {
            self.seal(p);
        }
        // Bounded by the deadline.
        while self.pending_batches() > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Err(PipelineError::FlushDeadline {
                    left: self.pending_batches(),
                });
            }
            self.pump((deadline - now).min(Duration::from_millis(50)));
        }
        Ok(())
    }
}

// ---- consumer ---------------------------------------------------------------

/// Where a consumer starts in each partition.
#[derive(Debug, Clone)]
pub enum StartAt {
    Earliest,
    Latest,
    /// Offsets by partition.
    Offsets(BTreeMap<u32, u64>),
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub client: ClientConfig,
    pub topic: String,
    /// The partitions to read (None: all).
    pub partitions: Option<Vec<u32>>,
    pub start: StartAt,
    /// Per fetch; the broker caps it at 3 MiB.
    pub fetch_bytes_max: u32,
    /// Long-poll wait per fetch.
    pub fetch_wait: Duration,
}

impl ConsumerConfig {
    pub fn new(client: ClientConfig, topic: impl Into<String>) -> Self {
        ConsumerConfig {
            client,
            topic: topic.into(),
            partitions: None,
            start: StartAt::Earliest,
            fetch_bytes_max: 2 * 1024 * 1024,
            fetch_wait: Duration::from_millis(200),
        }
    }
}

struct PartitionState {
    partition: u32,
    position: u64,
    /// Correlation id of the fetch in flight, with its link and send time.
    in_flight: Option<(u64, u64, Instant)>,
    not_before: Instant,
    failures: u32,
    high_watermark: u64,
}

/// A consumer of some partitions of one topic, one fetch in flight per
/// partition. See the module docs.
pub struct Consumer {
    cfg: ConsumerConfig,
    routes: Vec<SocketAddr>,
    links: Links,
    parts: Vec<PartitionState>,
    by_corr: HashMap<u64, usize>,
    stats: ClientStats,
    refresher: Refresher,
}

impl Consumer {
    pub fn new(cfg: ConsumerConfig) -> Result<Consumer, PipelineError> {
        let routes = routes(&cfg.client, &cfg.topic)?;
        let wanted: Vec<u32> = match &cfg.partitions {
            Some(p) => p.clone(),
            None => (0..routes.len() as u32).collect(),
        };
        let now = Instant::now();
        let mut parts = Vec::with_capacity(wanted.len());
        for partition in wanted {
            let addr = *routes
                .get(partition as usize)
                .ok_or_else(|| PipelineError::Partition {
                    topic: cfg.topic.clone(),
                    partition,
                    reason: format!("the topic has {} partitions", routes.len()),
                })?;
            let position = match &cfg.start {
                StartAt::Offsets(m) => m.get(&partition).copied().unwrap_or(0),
                StartAt::Earliest => list_offset(&cfg, addr, partition, OffsetSpec::Earliest)?,
                StartAt::Latest => list_offset(&cfg, addr, partition, OffsetSpec::Latest)?,
            };
            parts.push(PartitionState {
                partition,
                position,
                in_flight: None,
                not_before: now,
                failures: 0,
                high_watermark: position,
            });
        }
        let links = Links::new(cfg.client.clone());
        Ok(Consumer {
            cfg,
            routes,
            links,
            parts,
            by_corr: HashMap::new(),
            stats: ClientStats::default(),
            refresher: Refresher::default(),
        })
    }

    /// The next offset to read, by partition.
    pub fn positions(&self) -> BTreeMap<u32, u64> {
        self.parts
            .iter()
            .map(|p| (p.partition, p.position))
            .collect()
    }

    /// The high watermark each partition's last fetch reported.
    pub fn high_watermarks(&self) -> BTreeMap<u32, u64> {
        self.parts
            .iter()
            .map(|p| (p.partition, p.high_watermark))
            .collect()
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Issues fetches for idle partitions, waits up to `wait` for answers and
    /// hands each new record to `on_record(partition, record, received_at)`.
    /// Returns the number of records delivered. A fatal error (offset out of
    /// range, a corrupt batch) ends the consumer.
    pub fn poll(
        &mut self,
        wait: Duration,
        mut on_record: impl FnMut(u32, &Record<'_>, Instant),
    ) -> Result<usize, PipelineError> {
        self.issue_fetches();
        let mut delivered = 0;
        let mut next = self.links.recv(wait);
        // Bounded: at most one answer per partition is outstanding.
        while let Some(ev) = next {
            delivered += self.on_event(ev, &mut on_record)?;
            next = self.links.recv(Duration::ZERO);
        }
        self.expire();
        self.issue_fetches();
        Ok(delivered)
    }

    fn issue_fetches(&mut self) {
        let now = Instant::now();
        for i in 0..self.parts.len() {
            let p = &self.parts[i];
            if p.in_flight.is_some() || now < p.not_before {
                continue;
            }
            let req = FetchRequest {
                topic: self.cfg.topic.clone(),
                partition: p.partition,
                offset: p.position,
                max_bytes: self.cfg.fetch_bytes_max,
                min_bytes: 1,
                max_wait_ms: self.cfg.fetch_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            };
            let addr = self.routes[p.partition as usize];
            let corr = self.links.corr();
            let sent = wire::encode(&req, corr, self.cfg.client.limits)
                .map_err(|e| e.to_string())
                .and_then(|frame| self.links.send(addr, frame));
            self.stats.requests_sent += 1;
            match sent {
                Ok(link) => {
                    self.parts[i].in_flight = Some((corr, link, now));
                    self.by_corr.insert(corr, i);
                }
                Err(_) => self.back_off(i, "Connection", None),
            }
        }
    }

    fn back_off(&mut self, i: usize, kind: &'static str, reroute: Option<SocketAddr>) {
        *self.stats.retries_by_kind.entry(kind).or_default() += 1;
        let partition = self.parts[i].partition as usize;
        if let Some(addr) = reroute {
            self.routes[partition] = addr;
            self.stats.reroutes += 1;
        }
        if reroute.is_none()
            && self
                .refresher
                .refresh(&self.cfg.client, &self.cfg.topic, &mut self.routes)
        {
            self.stats.metadata_refreshes += 1;
        }
        let p = &mut self.parts[i];
        p.in_flight = None;
        p.failures += 1;
        p.not_before = Instant::now() + self.cfg.client.backoff(p.failures);
    }

    fn on_event(
        &mut self,
        ev: Event,
        on_record: &mut impl FnMut(u32, &Record<'_>, Instant),
    ) -> Result<usize, PipelineError> {
        match ev {
            Event::Broken { link, .. } => {
                self.links.drop_link(link);
                for i in 0..self.parts.len() {
                    if self.parts[i].in_flight.is_some_and(|(_, l, _)| l == link) {
                        let (corr, _, _) = self.parts[i].in_flight.expect("checked");
                        self.by_corr.remove(&corr);
                        self.back_off(i, "Connection", None);
                    }
                }
                Ok(0)
            }
            Event::Response {
                corr,
                msg,
                received_at,
                ..
            } => {
                let Some(i) = self.by_corr.remove(&corr) else {
                    return Ok(0);
                };
                let topic = self.cfg.topic.clone();
                let partition = self.parts[i].partition;
                let fatal = |reason: String| PipelineError::Partition {
                    topic: topic.clone(),
                    partition,
                    reason,
                };
                match classify(msg) {
                    Ok(Message::FetchResponse(r)) => {
                        let p = &mut self.parts[i];
                        p.in_flight = None;
                        p.failures = 0;
                        p.high_watermark = r.high_watermark;
                        let mut n = 0;
                        for batch in wire::batches(&r.batches) {
                            let batch = batch.map_err(|e| fatal(format!("corrupt batch: {e}")))?;
                            // Raft's no-op and membership entries: not messages.
                            if batch.is_control() {
                                p.position = p.position.max(batch.last_offset() + 1);
                                continue;
                            }
                            for rec in batch.records() {
                                let rec = rec.map_err(|e| fatal(format!("corrupt record: {e}")))?;
                                // A batch may start before the position asked for.
                                if rec.offset < p.position {
                                    continue;
                                }
                                on_record(partition, &rec, received_at);
                                p.position = rec.offset + 1;
                                n += 1;
                            }
                        }
                        Ok(n)
                    }
                    Ok(other) => Err(fatal(format!(
                        "unexpected response {}",
                        other.kind().name()
                    ))),
                    Err(Failure::Retry { kind, reroute, .. }) => {
                        self.back_off(i, kind, reroute);
                        Ok(0)
                    }
                    Err(Failure::Fatal { code, message }) => {
                        Err(fatal(format!("{code}: {message}")))
                    }
                }
            }
        }
    }

    fn expire(&mut self) {
        // A long poll answers within its wait; allow the request timeout on top.
        let limit = self.cfg.fetch_wait + self.cfg.client.request_timeout;
        for i in 0..self.parts.len() {
            if let Some((corr, link, sent)) = self.parts[i].in_flight {
                if sent.elapsed() >= limit {
                    self.by_corr.remove(&corr);
                    self.links.drop_link(link);
                    self.back_off(i, "RequestTimeout", None);
                }
            }
        }
    }
}

fn list_offset(
    cfg: &ConsumerConfig,
    addr: SocketAddr,
    partition: u32,
    spec: OffsetSpec,
) -> Result<u64, PipelineError> {
    let mut conn = Connection::connect(addr, cfg.client.connect_timeout)?;
    let resp = conn.request(
        &wire::ListOffsetsRequest {
            topic: cfg.topic.clone(),
            partition,
            spec,
        }
        .into(),
    )?;
    match resp {
        Message::ListOffsetsResponse(r) => Ok(r.offset.unwrap_or(0)),
        other => Err(PipelineError::Metadata(format!(
            "unexpected response {}",
            other.kind().name()
        ))),
    }
}
