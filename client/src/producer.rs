//! The pipelined producer: batches per partition (linger, maximum bytes), a
//! bounded in-flight window, retries by the client's [`crate::RetryPolicy`]
//! (NotLeader hints followed, metadata refreshed), idempotent by default.
//!
//! It is driven by its owner's thread: `send`, `poll` and `flush` do the
//! routing, batching, retries and deadline checks, and the connection
//! threads only move bytes. Time comes in through those calls, so nothing
//! runs behind the owner's back, and a caller that wants a linger to fire
//! calls [`Producer::poll`] at least that often ([`Producer::next_due`] says
//! when).
//!
//! Delivery is at least once without idempotence: a batch whose connection
//! broke after it was sent may have been appended, and is sent again.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{Acks, ErrorCode, Message, NewRecord, ProduceRequest, RecordBatchBuilder};

use crate::links::{Event, Links};
use crate::retry::{classify, Decision, Failure, RetryCause, Route};
use crate::routes::{routes, Refresher};
use crate::{ClientConfig, ClientStats, PipelineError};

/// Largest in-flight window (requests) a producer accepts: the broker allows
/// 1024 requests in flight per connection.
pub const IN_FLIGHT_MAX_LIMIT: usize = 1024;
/// Default batch bytes in flight per producer (see
/// [`ProducerConfig::in_flight_bytes_max`]).
pub const IN_FLIGHT_BYTES_DEFAULT: usize = 768 * 1024;
/// Room in a produce frame for everything but the batch (header, topic, rkyv
/// framing): 4 KiB is far more than a 255-byte topic name needs.
const PRODUCE_FRAME_OVERHEAD_BYTES: usize = 4096;

/// Records added between looks at answers and lingers inside `send` (the
/// caller's own `poll` calls look too); 32 records of 100 B are ~4 µs of work.
const SENDS_PER_PUMP: u32 = 32;

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

/// A random 63-bit producer id (the controller does not hand them out yet;
/// a collision needs about 3 billion producers for even odds).
pub fn random_producer_id() -> i64 {
    (crate::local::seed() & (i64::MAX as u64)) as i64
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
    /// Batch bytes in flight at once, across all partitions (one batch
    /// always may be, whatever its size). With the broker's group commit,
    /// more bytes in flight buy throughput until the disk is busy and then
    /// only latency (Little's law): the default sits near that knee on the
    /// machines we measured (docs/BENCHMARKS.md).
    pub in_flight_bytes_max: usize,
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
            in_flight_bytes_max: IN_FLIGHT_BYTES_DEFAULT,
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
        if self.idempotent && self.in_flight_max > wire::IDEMPOTENCE_WINDOW_BATCHES {
            return bad(
                "in_flight_max",
                format!(
                    "{} with idempotence: brokers remember the last {} batches per producer, so at most that many may be in flight",
                    self.in_flight_max,
                    wire::IDEMPOTENCE_WINDOW_BATCHES
                ),
            );
        }
        if self.in_flight_bytes_max == 0 {
            return bad("in_flight_bytes_max", "must be at least 1".into());
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
    /// The batch's base sequence in its partition (stamped into the batch
    /// by an idempotent producer; orders retries either way).
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
    /// Idempotence: this producer's id (negative: none); each partition's
    /// next sequence (kept without idempotence too, to order retries).
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
            Some(k) => wire::partition_for_key(k, self.routes.len()) as u32,
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
        // A batch no frame can carry never reaches a broker: it fails here,
        // before it takes a sequence number (a gap would have the broker
        // refuse every later batch of the partition as out of order).
        let frame_max = self.cfg.client.limits.frame_bytes_max as usize;
        if builder.encoded_bytes() + PRODUCE_FRAME_OVERHEAD_BYTES > frame_max {
            let err = DeliveryError::Fatal {
                code: ErrorCode::RequestTooLarge,
                message: format!(
                    "a batch of {} bytes does not fit in a {frame_max}-byte frame",
                    builder.encoded_bytes()
                ),
            };
            self.deliveries.push(Delivery {
                partition: p as u32,
                tags: open.tags,
                result: Err(err),
                attempts: 0,
                done_at: Instant::now(),
            });
            return;
        }
        // Every batch gets its partition's next sequence number: it orders
        // retries within the partition, and an idempotent producer also
        // stamps it into the batch.
        let base_seq = self.sequences[p];
        self.sequences[p] = base_seq.wrapping_add(builder.record_count() as i32);
        if self.producer_id >= 0 {
            builder = builder.producer(self.producer_id, 0, base_seq);
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
        while self.ready.len() + self.in_flight.len() > self.cfg.in_flight_max
            || (self.ready.len() + self.in_flight.len() > 1
                && self.queued_bytes() > self.cfg.in_flight_bytes_max)
        {
            self.pump(self.cfg.client.retry_backoff_min);
        }
    }

    /// Batch bytes sent and not answered yet.
    fn in_flight_bytes(&self) -> usize {
        self.in_flight
            .values()
            .map(|f| f.batch.req.batch.len())
            .sum()
    }

    /// Batch bytes sealed and not answered yet (in flight or waiting).
    fn queued_bytes(&self) -> usize {
        self.in_flight_bytes()
            + self
                .ready
                .iter()
                .map(|(_, b)| b.req.batch.len())
                .sum::<usize>()
    }

    /// Whether a batch of `bytes` may be sent now: the window has room for
    /// it (an empty window takes any one batch).
    fn has_room(&self, bytes: usize, in_flight_bytes: usize) -> bool {
        self.in_flight.is_empty()
            || (self.in_flight.len() < self.cfg.in_flight_max
                && in_flight_bytes + bytes <= self.cfg.in_flight_bytes_max)
    }

    /// Sends what is due, processes answers (waiting up to `wait` for the
    /// first), and checks deadlines. Returns how many batches completed.
    pub fn poll(&mut self, wait: Duration) -> usize {
        let before = self.deliveries.len();
        self.pump(wait);
        self.deliveries.len() - before
    }

    /// When the next linger or retry falls due (None: nothing pending).
    /// By `dispatch_due`'s rules: only each partition's first ready batch
    /// can go (the later ones wait behind it, a retry's back-off included),
    /// and only if the window has room for it; a batch waiting for room is
    /// not due, since only an answer (or a request timing out) makes room.
    pub fn next_due(&self) -> Option<Instant> {
        let linger = self
            .open
            .iter()
            .flatten()
            .map(|o| o.opened_at + self.cfg.linger)
            .min();
        let in_flight_bytes = self.in_flight_bytes();
        let mut seen: Vec<u32> = Vec::new();
        let mut retry: Option<Instant> = None;
        for (due, b) in &self.ready {
            let p = b.req.partition;
            if seen.contains(&p) {
                continue;
            }
            seen.push(p);
            if self.has_room(b.req.batch.len(), in_flight_bytes) {
                retry = Some(retry.map_or(*due, |r| r.min(*due)));
            }
        }
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
        // Each partition's batches go in sequence order: once one is held
        // (a retry waiting out its back-off), the later ones of its
        // partition wait too, so a retry does not land behind them (an
        // idempotent producer's would be refused as out of order).
        let mut blocked: Vec<u32> = Vec::new();
        let mut in_flight_bytes = self.in_flight_bytes();
        while let Some((due, batch)) = self.ready.pop_front() {
            let p = batch.req.partition;
            let bytes = batch.req.batch.len();
            if due > now || !self.has_room(bytes, in_flight_bytes) || blocked.contains(&p) {
                if !blocked.contains(&p) {
                    blocked.push(p);
                }
                held.push_back((due, batch));
                continue;
            }
            in_flight_bytes += bytes;
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
            Err(reason) => self.retry(batch, RetryCause::Connection, reason),
        }
    }

    fn retry(&mut self, mut batch: Sealed, cause: RetryCause, reason: String) {
        *self.stats.retries_by_kind.entry(cause.name()).or_default() += 1;
        batch.last_error = reason;
        let p = batch.req.partition as usize;
        let now = Instant::now();
        let deadline = batch.first_sent_at.unwrap_or(now) + self.cfg.delivery_timeout;
        let policy = self.cfg.client.retry_policy();
        let current = Some(self.routes[p]);
        let after = match policy.decide(&cause, batch.attempts, now, Some(deadline), current) {
            Decision::GiveUp => {
                let err = DeliveryError::Deadline {
                    attempts: batch.attempts,
                    last: std::mem::take(&mut batch.last_error),
                };
                self.finish(batch, Err(err), now);
                return;
            }
            Decision::Retry { after, route } => {
                match route {
                    Route::Reroute(addr) => {
                        self.routes[p] = addr;
                        self.stats.reroutes += 1;
                    }
                    Route::Refresh => self.refresh_routes(),
                    Route::Same => {}
                }
                after
            }
        };
        let due = now + after;
        // Back in sequence order within its partition.
        let p = batch.req.partition;
        let at = self
            .ready
            .iter()
            .position(|(_, b)| b.req.partition == p && b.seq.wrapping_sub(batch.seq) > 0)
            .unwrap_or(self.ready.len());
        self.ready.insert(at, (due, batch));
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
                    Err(Failure::Retry { cause, reason }) => self.retry(f.batch, cause, reason),
                    // After a leader change an idempotent producer's retried
                    // batches and its newer ones may reach the new leader out
                    // of order; the earlier one lands on its own retry, then
                    // this one does (bounded by the delivery timeout).
                    Err(Failure::Fatal {
                        code: ErrorCode::OutOfOrderSequence,
                        message,
                    }) if self.producer_id >= 0 => {
                        self.retry(f.batch, RetryCause::OutOfOrder, message)
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
                    self.retry(f.batch, RetryCause::Connection, reason.clone());
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
                    RetryCause::RequestTimeout,
                    format!("no answer within {timeout:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use wire::{ErrorResponse, FrameDecoder, FrameLimits, ProduceResponse};

    /// What the fake broker saw of one produce request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        partition: u32,
        base_sequence: i32,
        values: Vec<Vec<u8>>,
    }

    /// A fake broker on one connection: `answer(n, seen)` decides the
    /// answer to the n-th (0-based) produce request (None: append it).
    /// Returns its address and what it appended, in order.
    fn fake_broker(
        answer: impl Fn(usize, &Seen) -> Option<ErrorCode> + Send + 'static,
    ) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let appended = Arc::new(Mutex::new(Vec::new()));
        let log = appended.clone();
        std::thread::spawn(move || {
            let limits = FrameLimits::default();
            let (mut s, _) = listener.accept().unwrap();
            let mut decoder = FrameDecoder::new(limits);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut n = 0;
            let mut next_offset = 1u64;
            loop {
                let Ok(Some(frame)) = decoder.next_frame() else {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => decoder.extend(&chunk[..k]),
                    }
                    continue;
                };
                let corr = frame.header.correlation_id;
                let Ok(Message::ProduceRequest(req)) = frame.message() else {
                    return;
                };
                let batch = wire::batches(&req.batch).next().unwrap().unwrap();
                let seen = Seen {
                    partition: req.partition,
                    base_sequence: batch.base_sequence(),
                    values: batch
                        .records()
                        .map(|r| r.unwrap().value.unwrap().to_vec())
                        .collect(),
                };
                let reply = match answer(n, &seen) {
                    Some(code) => wire::encode(&ErrorResponse::new(code, "fake"), corr, limits),
                    None => {
                        let count = seen.values.len() as u64;
                        let resp = ProduceResponse {
                            topic: req.topic.clone(),
                            partition: req.partition,
                            base_offset: next_offset,
                            last_offset: next_offset + count - 1,
                            log_append_time_ms: 0,
                            duplicate: false,
                        };
                        next_offset += count;
                        log.lock().unwrap().push(seen);
                        wire::encode(&resp, corr, limits)
                    }
                };
                n += 1;
                if s.write_all(&reply.unwrap()).is_err() {
                    return;
                }
            }
        });
        (addr, appended)
    }

    fn config(addr: SocketAddr, idempotent: bool) -> ProducerConfig {
        let mut cfg = ProducerConfig::new(ClientConfig::new(vec![addr]), "t");
        cfg.idempotent = idempotent;
        cfg.linger = Duration::ZERO;
        cfg.delivery_timeout = Duration::from_secs(10);
        cfg
    }

    fn values(seen: &[Seen]) -> Vec<Vec<u8>> {
        seen.iter().flat_map(|s| s.values.clone()).collect()
    }

    /// A batch sealed while the window is full waits for an answer, not
    /// for a time: `next_due` must not call it due, or every wait for room
    /// becomes a busy loop (a whole core at full load).
    #[test]
    fn a_batch_waiting_for_room_in_a_full_window_is_not_due() {
        // A broker that takes the connection and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = config(addr, false);
        cfg.in_flight_max = 1;
        let mut p = Producer::with_routes(cfg, vec![addr]).unwrap();
        p.send_to(0, None, b"a", 0, 1).unwrap();
        p.poll(Duration::ZERO);
        assert_eq!(p.in_flight(), 1, "\"a\" sealed and sent");
        p.send_to(0, None, b"b", 0, 2).unwrap();
        p.poll(Duration::ZERO);
        assert_eq!(p.pending_batches(), 2, "\"b\" sealed, waiting for room");
        assert_eq!(p.next_due(), None);
        drop(listener);
    }

    /// A refused batch waits out its back-off before its partition's later
    /// batches, which were due long ago: none of them is due before the
    /// back-off ends, or the wait is a busy loop (a leader failover).
    #[test]
    fn the_batches_behind_a_retry_are_not_due_before_its_back_off_ends() {
        let (addr, appended) = fake_broker(|n, _| (n == 0).then_some(ErrorCode::NotEnoughReplicas));
        let mut cfg = config(addr, false);
        cfg.in_flight_max = 1;
        cfg.client.retry_backoff_min = Duration::from_secs(2);
        cfg.client.retry_backoff_max = Duration::from_secs(2);
        let mut p = Producer::with_routes(cfg, vec![addr]).unwrap();
        p.send_to(0, None, b"a", 0, 1).unwrap();
        p.poll(Duration::ZERO);
        p.send_to(0, None, b"b", 0, 2).unwrap();
        p.poll(Duration::ZERO);
        // Until "a" is refused: then nothing is in flight and both wait.
        let give_up = Instant::now() + Duration::from_secs(5);
        while p.in_flight() > 0 && Instant::now() < give_up {
            p.poll(Duration::from_millis(10));
        }
        assert_eq!((p.in_flight(), p.pending_batches()), (0, 2));
        let due = p.next_due().expect("the retry is due at some time");
        assert!(
            due > Instant::now() + Duration::from_millis(500),
            "due in {:?}: before the 2 s back-off ends",
            due.saturating_duration_since(Instant::now())
        );
        p.flush(Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(
            values(&appended.lock().unwrap()),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    /// The byte window: batches go while their bytes fit (any one batch
    /// always may); the rest wait for answers, not for a time.
    #[test]
    fn batches_in_flight_are_bounded_by_bytes_as_well_as_by_count() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let value = vec![7u8; 1000];
        for (window_batches, expect_in_flight) in [(1, 1), (2, 2), (3, 3)] {
            let mut cfg = config(addr, false);
            cfg.in_flight_max = 64;
            // Each batch of one 1000-byte record is a little over 1000 bytes.
            cfg.in_flight_bytes_max = window_batches * 1100;
            let mut p = Producer::with_routes(cfg, vec![addr]).unwrap();
            for tag in 0..4 {
                p.send_to(0, None, &value, 0, tag).unwrap();
                p.poll(Duration::ZERO);
            }
            assert_eq!(
                p.in_flight(),
                expect_in_flight,
                "window of {window_batches} batches"
            );
            assert_eq!(p.pending_batches(), 4);
            assert_eq!(p.next_due(), None);
        }
        // A batch larger than the whole window still goes, alone.
        let mut cfg = config(addr, false);
        cfg.in_flight_bytes_max = 10;
        let mut p = Producer::with_routes(cfg, vec![addr]).unwrap();
        p.send_to(0, None, &value, 0, 0).unwrap();
        p.poll(Duration::ZERO);
        assert_eq!(p.in_flight(), 1);
        drop(listener);
    }

    /// Without idempotence and with one batch in flight (`drmq produce`
    /// without `--idempotent`), a batch refused retryably is appended before
    /// the partition's later batches, not after them.
    #[test]
    fn a_retried_batch_keeps_its_place_in_its_partition_without_idempotence() {
        let (addr, appended) = fake_broker(|n, _| (n == 0).then_some(ErrorCode::NotEnoughReplicas));
        let mut cfg = config(addr, false);
        cfg.in_flight_max = 1;
        let mut p = Producer::with_routes(cfg, vec![addr]).unwrap();
        p.send_to(0, None, b"a", 0, 1).unwrap();
        p.poll(Duration::ZERO); // "a" sealed and sent
        p.send_to(0, None, b"b", 0, 2).unwrap();
        // "b" sealed while "a" is in flight (or already refused).
        p.poll(Duration::from_millis(1));
        p.flush(Instant::now() + Duration::from_secs(10)).unwrap();
        let done = p.take_deliveries();
        assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
        assert_eq!(
            values(&appended.lock().unwrap()),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    /// An idempotent batch that cannot be sent at all (larger than a frame)
    /// fails on its own: it takes no sequence number, so the partition's
    /// next batch is not refused as out of order.
    #[test]
    fn a_batch_too_large_to_send_takes_no_sequence_number() {
        let (addr, appended) = fake_broker(|_, _| None);
        let mut p = Producer::with_routes(config(addr, true), vec![addr]).unwrap();
        let huge = vec![b'x'; FrameLimits::default().frame_bytes_max as usize + 1];
        p.send_to(0, None, &huge, 0, 1).unwrap();
        p.send_to(0, None, b"small", 0, 2).unwrap();
        p.flush(Instant::now() + Duration::from_secs(10)).unwrap();
        let done = p.take_deliveries();
        let huge_done = done.iter().find(|d| d.tags == [1]).unwrap();
        assert!(
            matches!(
                huge_done.result,
                Err(DeliveryError::Fatal {
                    code: ErrorCode::RequestTooLarge,
                    ..
                })
            ),
            "{huge_done:?}"
        );
        let appended = appended.lock().unwrap();
        assert_eq!(appended.len(), 1, "{appended:?}");
        assert_eq!(appended[0].values, vec![b"small".to_vec()]);
        assert_eq!(appended[0].base_sequence, 0, "no gap in the sequences");
    }
}
