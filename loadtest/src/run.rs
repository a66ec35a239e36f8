//! One load-test run: producer and consumer threads, the progress line, and
//! the figures they collect.
//!
//! Every message value starts with 16 bytes: the message id (producer index
//! << 40 | sequence) and the intended send time in µs since the run's start
//! instant (shared by every thread of this process). The consumer checks ids
//! (each seen exactly once) and measures end-to-end latency from that time.
//! In open-loop mode the intended time is the scheduled one, so a stalled
//! producer cannot hide latency (coordinated omission is corrected); the
//! delay between intended and actual send is reported separately.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use client::{
    ClientConfig, ClientStats, Consumer, ConsumerConfig, GroupConsumer, PipelineError, Producer,
    ProducerConfig, StartAt,
};
use hdrhistogram::Histogram;
use wire::{Acks, OffsetSpec};

/// Bytes at the front of every value: id and intended send time.
pub const VALUE_HEADER_BYTES: usize = 16;
/// Sequence bits in a message id and in a delivery tag (2^28 = 268 M
/// messages per producer, 4.5 minutes at 1 M msgs/s per producer).
const SEQ_BITS: u32 = 28;
pub const MESSAGES_PER_PRODUCER_MAX: u64 = (1 << SEQ_BITS) - 1;
/// Histograms: 1 µs to 1 hour at 3 significant digits (~200 KiB each).
const HIST_US_MAX: u64 = 3_600_000_000;
/// How long consumers may take to catch up once producers are done.
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// How long a producer's final flush may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Message value sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    Fixed(usize),
    /// Uniform in `[min, max]`.
    Uniform(usize, usize),
}

impl SizeSpec {
    pub fn parse(s: &str) -> Result<SizeSpec, String> {
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}`: expected BYTES or MIN-MAX"))
        };
        let spec = match s.split_once('-') {
            Some((a, b)) => SizeSpec::Uniform(num(a)?, num(b)?),
            None => SizeSpec::Fixed(num(s)?),
        };
        let (min, max) = spec.bounds();
        if min < VALUE_HEADER_BYTES {
            return Err(format!(
                "`{s}`: messages must be at least {VALUE_HEADER_BYTES} bytes (id and timestamp)"
            ));
        }
        if min > max {
            return Err(format!("`{s}`: MIN is above MAX"));
        }
        if max > 1 << 20 {
            return Err(format!("`{s}`: messages above 1 MiB are not supported"));
        }
        Ok(spec)
    }

    pub fn bounds(self) -> (usize, usize) {
        match self {
            SizeSpec::Fixed(n) => (n, n),
            SizeSpec::Uniform(a, b) => (a, b),
        }
    }

    pub fn mean(self) -> f64 {
        let (a, b) = self.bounds();
        (a + b) as f64 / 2.0
    }

    fn pick(self, rng: &mut u64) -> usize {
        match self {
            SizeSpec::Fixed(n) => n,
            SizeSpec::Uniform(a, b) => a + (xorshift(rng) % (b - a + 1) as u64) as usize,
        }
    }
}

fn xorshift(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}

/// When producers stop.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After warm-up plus this long.
    Duration(Duration),
    /// After this many messages in all (warm-up included).
    Messages(u64),
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct Workload {
    pub brokers: Vec<SocketAddr>,
    pub topic: String,
    pub producers: usize,
    pub consumers: usize,
    pub size: SizeSpec,
    /// Keys drawn from this many distinct values (None: unkeyed).
    pub keys: Option<u64>,
    pub acks: Acks,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub in_flight: usize,
    pub in_flight_bytes: usize,
    /// Total target rate in msgs/s (open loop); None: maximum rate.
    pub rate: Option<f64>,
    pub stop: Stop,
    pub warmup: Duration,
    pub drain_timeout: Duration,
    pub progress: bool,
    /// The brokers' telemetry addresses, for their counters (empty: not read).
    pub https: Vec<SocketAddr>,
    /// WebSocket dashboard clients per broker on `https` during the run.
    pub dashboards: usize,
    /// Told the run's start time (a fault thread times itself from it).
    pub started: Option<std::sync::mpsc::Sender<Instant>>,
    /// Consumers as members of one consumer group (`--group`).
    pub group: Option<crate::group::GroupPlan>,
}

/// Acknowledgements per [`TIMELINE_BUCKET_US`] of the run, by the time they
/// arrived: how a fault shows (a gap, then a spike of late acks).
pub const TIMELINE_BUCKET_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub acks: u64,
    /// Largest publish-ack latency among them (µs).
    pub max_ack_us: u64,
}

fn timeline_add(t: &mut Vec<Bucket>, done_us: u64, latency_us: u64) {
    let i = (done_us / TIMELINE_BUCKET_US) as usize;
    // Bounded: runs are limited in time (10 buckets a second).
    if t.len() <= i {
        t.resize(i + 1, Bucket::default());
    }
    t[i].acks += 1;
    t[i].max_ack_us = t[i].max_ack_us.max(latency_us);
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_US_MAX, 3).expect("constant bounds are valid")
}

/// A growable bit set of sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; returns whether it was set already.
    fn set(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let m = 1u64 << (i % 64);
        let was = self.0[w] & m != 0;
        self.0[w] |= m;
        was
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    fn get(&self, w: usize) -> u64 {
        self.0.get(w).copied().unwrap_or(0)
    }
}

/// Counters the progress line reads while the run goes.
#[derive(Default)]
pub(crate) struct Live {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    pub(crate) consumed: AtomicU64,
    in_flight: AtomicU64,
    pub(crate) producers_done: AtomicBool,
    abort: AtomicBool,
}

#[derive(Debug)]
struct ProducerOut {
    sent: u64,
    acked: Bits,
    acked_in_window: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    ack_us: Histogram<u64>,
    send_delay_us: Histogram<u64>,
    stats: ClientStats,
    /// µs since start when this producer's last send happened.
    last_send_us: u64,
    timeline: Vec<Bucket>,
    fatal: Option<String>,
}

#[derive(Debug)]
pub(crate) struct ConsumerOut {
    pub(crate) consumed: u64,
    consumed_in_window: u64,
    seen: Vec<Bits>,
    duplicates: u64,
    malformed: u64,
    e2e_us: Histogram<u64>,
    /// (µs since start, count) of consumption after the producers finished.
    drained_after_end: u64,
    pub(crate) last_receipt_us: u64,
    stats: ClientStats,
    fatal: Option<String>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    pub window_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub acked_in_window: u64,
    pub failed: u64,
    pub consumed: u64,
    pub consumed_unique: u64,
    pub consumed_in_window: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub unacked_seen: u64,
    pub malformed: u64,
    pub errors: BTreeMap<String, u64>,
    pub retries: BTreeMap<String, u64>,
    pub ack_us: Histogram<u64>,
    pub e2e_us: Histogram<u64>,
    pub send_delay_us: Histogram<u64>,
    pub backlog_at_end: u64,
    pub drain_s: f64,
    pub drain_msgs_per_s: Option<f64>,
    /// Records appended by the broker during the run (log end offsets).
    pub broker_appended: u64,
    pub broker_end_offsets: BTreeMap<u32, u64>,
    pub partitions: u32,
    pub fatal: Vec<String>,
    /// Broker counter deltas over the run (telemetry, 1 s samples).
    pub broker_counters: Option<BTreeMap<String, u64>>,
    /// What the dashboard clients received (None without `--dashboards`).
    pub dashboards: Option<crate::dashboards::DashboardStats>,
    /// Rebalance times of a `--group` run.
    pub group: Option<crate::group::RebalanceReport>,
    /// When the run started (timeline times are µs since then).
    pub started_at: Instant,
    pub ack_timeline: Vec<Bucket>,
}

#[cfg(test)]
impl Outcome {
    /// An empty run with this acknowledgement timeline (fault analysis tests).
    pub(crate) fn for_tests(started_at: Instant, ack_timeline: Vec<Bucket>) -> Outcome {
        Outcome {
            window_s: 0.0,
            sent: 0,
            acked: 0,
            acked_in_window: 0,
            failed: 0,
            consumed: 0,
            consumed_unique: 0,
            consumed_in_window: 0,
            duplicates: 0,
            missing: 0,
            unacked_seen: 0,
            malformed: 0,
            errors: BTreeMap::new(),
            retries: BTreeMap::new(),
            ack_us: new_hist(),
            e2e_us: new_hist(),
            send_delay_us: new_hist(),
            backlog_at_end: 0,
            drain_s: 0.0,
            drain_msgs_per_s: None,
            broker_appended: 0,
            broker_end_offsets: BTreeMap::new(),
            partitions: 0,
            fatal: Vec::new(),
            broker_counters: None,
            dashboards: None,
            group: None,
            started_at,
            ack_timeline,
        }
    }
}

pub(crate) fn elapsed_us(t0: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(t0).as_micros() as u64
}

fn end_offsets(brokers: &[SocketAddr], topic: &str, partitions: u32) -> Result<BTreeMap<u32, u64>> {
    let cfg = ClientConfig::new(brokers.to_vec());
    let mut routes = client::routes(&cfg, topic)?;
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let end = client::consumer::list_offset(&cfg, topic, &mut routes, p, OffsetSpec::Latest)?;
        out.insert(p, end);
    }
    Ok(out)
}

/// Runs the workload against a broker that has the topic already.
pub fn run(w: &Workload) -> Result<Outcome> {
    let client = ClientConfig::new(w.brokers.clone());
    let partitions = client::routes(&client, &w.topic)?.len() as u32;
    let start_offsets = end_offsets(&w.brokers, &w.topic, partitions)?;
    // Telemetry samples are a second old at most: let one pass, so the
    // counters before the run include what happened just before it (a topic
    // created, its first elections).
    if !w.https.is_empty() {
        std::thread::sleep(Duration::from_millis(1100));
    }
    let counters_before = crate::spawn::cluster_counters(&w.https);
    // Open through warm-up and the measured window; closed when the
    // consumers are done.
    let dashboards = (w.dashboards > 0 && !w.https.is_empty())
        .then(|| crate::dashboards::Dashboards::start(&w.https, w.dashboards));
    let live = Arc::new(Live::default());
    let end_marks: Arc<Mutex<Option<BTreeMap<u32, u64>>>> = Arc::new(Mutex::new(None));
    let t0 = Instant::now();
    if let Some(tx) = &w.started {
        let _ = tx.send(t0);
    }
    let warmup_us = w.warmup.as_micros() as u64;
    let window_end_us = match w.stop {
        Stop::Duration(d) => Some(warmup_us + d.as_micros() as u64),
        Stop::Messages(_) => None,
    };

    // Consumers first, positioned at the log ends, so they see every message.
    let mut consumer_threads = Vec::new();
    let mut group_thread = None;
    if let Some(plan) = &w.group {
        crate::group::reset(w, &plan.group, &start_offsets)?;
        let ctx = crate::group::Ctx {
            w: w.clone(),
            plan: plan.clone(),
            partitions,
            t0,
            warmup_us,
            window_end_us,
            live: live.clone(),
            end_marks: end_marks.clone(),
            positions: Arc::default(),
            script_done: Arc::default(),
            paused: Arc::new(AtomicBool::new(plan.after_produce)),
        };
        let (go, ready) = std::sync::mpsc::channel();
        group_thread = Some(std::thread::spawn(move || {
            crate::group::orchestrate(ctx, go)
        }));
        // The members are in (their joins timed) before producers start;
        // bounded by the orchestrator's own settle timeouts.
        let _ = ready.recv_timeout(Duration::from_secs(300));
    }
    for c in (0..w.consumers).filter(|_| w.group.is_none()) {
        let assigned: Vec<u32> = (0..partitions)
            .filter(|p| *p as usize % w.consumers == c)
            .collect();
        if assigned.is_empty() {
            continue;
        }
        let mut cfg = ConsumerConfig::new(client.clone(), w.topic.clone());
        cfg.start = StartAt::Offsets(assigned.iter().map(|p| (*p, start_offsets[p])).collect());
        cfg.partitions = Some(assigned);
        let mut consumer = Consumer::new(cfg)?;
        let live = live.clone();
        let end_marks = end_marks.clone();
        let w = w.clone();
        consumer_threads.push(std::thread::spawn(move || {
            consume(
                &mut consumer,
                &w,
                t0,
                warmup_us,
                window_end_us,
                &live,
                &end_marks,
                None,
            )
        }));
    }

    let mut producer_threads = Vec::new();
    for i in 0..w.producers {
        let mut cfg = ProducerConfig::new(client.clone(), w.topic.clone());
        cfg.acks = w.acks;
        cfg.batch_bytes_max = w.batch_bytes;
        cfg.linger = w.linger;
        cfg.in_flight_max = w.in_flight;
        cfg.in_flight_bytes_max = w.in_flight_bytes;
        let producer = Producer::new(cfg)?;
        let live = live.clone();
        let w = w.clone();
        producer_threads.push(std::thread::spawn(move || {
            produce(producer, i, &w, t0, warmup_us, window_end_us, &live)
        }));
    }

    let progress = ProgressLine::new(w.progress);
    let mut progress = progress;
    // Bounded: producers stop by count or time; each check is 1 s apart.
    while producer_threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        progress.tick(&live, t0, warmup_us);
    }
    let mut pouts = Vec::new();
    for t in producer_threads {
        pouts.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("a producer thread panicked"))?,
        );
    }
    let producers_end = Instant::now();
    let final_offsets = end_offsets(&w.brokers, &w.topic, partitions)?;
    let acked_total: u64 = pouts.iter().map(|p| p.acked.count()).sum();
    let consumed_at_end = live.consumed.load(Ordering::Relaxed);
    *end_marks.lock().expect("not poisoned") = Some(final_offsets.clone());
    live.producers_done.store(true, Ordering::Relaxed);
    // Bounded: consumers stop at the end offsets or their drain timeout.
    while consumer_threads.iter().any(|t| !t.is_finished())
        || group_thread.as_ref().is_some_and(|t| !t.is_finished())
    {
        std::thread::sleep(Duration::from_millis(100));
        progress.tick(&live, t0, warmup_us);
    }
    progress.finish();
    let mut couts = Vec::new();
    let mut group = None;
    if let Some(t) = group_thread {
        let (outs, report) = t
            .join()
            .map_err(|_| anyhow::anyhow!("the group thread panicked"))?;
        couts.extend(outs);
        group = Some(report);
    }
    for t in consumer_threads {
        couts.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("a consumer thread panicked"))?,
        );
    }
    let dashboards = dashboards.map(crate::dashboards::Dashboards::stop);
    let broker_counters = if w.https.is_empty() {
        None
    } else {
        // The telemetry thread samples once a second: wait for a fresh one.
        std::thread::sleep(Duration::from_millis(1100));
        crate::spawn::counter_deltas(&counters_before, &crate::spawn::cluster_counters(&w.https))
    };
    let drain_end_us = couts.iter().map(|c| c.last_receipt_us).max().unwrap_or(0);
    let producers_end_us = elapsed_us(t0, producers_end);
    let last_send_us = pouts.iter().map(|p| p.last_send_us).max().unwrap_or(0);

    // Merge.
    let mut ack_us = new_hist();
    let mut send_delay_us = new_hist();
    let mut e2e_us = new_hist();
    let mut errors = BTreeMap::new();
    let mut retries: BTreeMap<String, u64> = BTreeMap::new();
    let mut fatal = Vec::new();
    for p in &pouts {
        ack_us.add(&p.ack_us)?;
        send_delay_us.add(&p.send_delay_us)?;
        for (k, v) in &p.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &p.stats.retries_by_kind {
            *retries.entry((*k).to_owned()).or_insert(0) += v;
        }
        fatal.extend(p.fatal.clone());
    }
    let mut seen: Vec<Bits> = vec![Bits::default(); w.producers];
    let mut duplicates = 0;
    let mut malformed = 0;
    for c in &couts {
        e2e_us.add(&c.e2e_us)?;
        duplicates += c.duplicates;
        malformed += c.malformed;
        for (k, v) in &c.stats.retries_by_kind {
            *retries.entry(format!("fetch:{k}")).or_insert(0) += v;
        }
        fatal.extend(c.fatal.clone());
        for (i, bits) in c.seen.iter().enumerate() {
            for (wi, word) in bits.0.iter().enumerate() {
                let target = &mut seen[i];
                if wi >= target.0.len() {
                    target.0.resize(wi + 1, 0);
                }
                duplicates += u64::from((target.0[wi] & word).count_ones());
                target.0[wi] |= word;
            }
        }
    }
    let mut missing = 0;
    let mut unacked_seen = 0;
    for (i, p) in pouts.iter().enumerate() {
        let words = p.acked.0.len().max(seen[i].0.len());
        for wi in 0..words {
            let a = p.acked.get(wi);
            let s = seen[i].get(wi);
            missing += u64::from((a & !s).count_ones());
            unacked_seen += u64::from((s & !a).count_ones());
        }
    }
    let consumed_unique: u64 = seen.iter().map(Bits::count).sum();
    let window_s = match w.stop {
        Stop::Duration(d) => d.as_secs_f64(),
        Stop::Messages(_) => (last_send_us.saturating_sub(warmup_us)) as f64 / 1e6,
    }
    .max(1e-6);
    let backlog_at_end = acked_total.saturating_sub(consumed_at_end);
    let drain_s = drain_end_us.saturating_sub(producers_end_us) as f64 / 1e6;
    let drained: u64 = couts.iter().map(|c| c.drained_after_end).sum();
    // A drain rate only means something when there was a backlog to drain.
    let drain_msgs_per_s =
        (backlog_at_end >= 1000 && drain_s > 0.0).then(|| drained as f64 / drain_s);
    let broker_appended = final_offsets
        .iter()
        .map(|(p, end)| end.saturating_sub(start_offsets.get(p).copied().unwrap_or(0)))
        .sum();
    Ok(Outcome {
        window_s,
        sent: pouts.iter().map(|p| p.sent).sum(),
        acked: acked_total,
        acked_in_window: pouts.iter().map(|p| p.acked_in_window).sum(),
        failed: pouts.iter().map(|p| p.failed).sum(),
        consumed: couts.iter().map(|c| c.consumed).sum(),
        consumed_unique,
        consumed_in_window: couts.iter().map(|c| c.consumed_in_window).sum(),
        duplicates,
        missing,
        unacked_seen,
        malformed,
        errors,
        retries,
        ack_us,
        e2e_us,
        send_delay_us,
        backlog_at_end,
        drain_s,
        drain_msgs_per_s,
        broker_appended,
        broker_end_offsets: final_offsets,
        partitions,
        fatal,
        broker_counters,
        dashboards,
        group,
        started_at: t0,
        ack_timeline: pouts.iter().fold(Vec::new(), |mut all, p| {
            if all.len() < p.timeline.len() {
                all.resize(p.timeline.len(), Bucket::default());
            }
            for (a, b) in all.iter_mut().zip(&p.timeline) {
                a.acks += b.acks;
                a.max_ack_us = a.max_ack_us.max(b.max_ack_us);
            }
            all
        }),
    })
}

fn produce(
    mut producer: Producer,
    index: usize,
    w: &Workload,
    t0: Instant,
    warmup_us: u64,
    window_end_us: Option<u64>,
    live: &Live,
) -> ProducerOut {
    let mut out = ProducerOut {
        sent: 0,
        acked: Bits::default(),
        acked_in_window: 0,
        failed: 0,
        errors: BTreeMap::new(),
        ack_us: new_hist(),
        send_delay_us: new_hist(),
        stats: ClientStats::default(),
        last_send_us: 0,
        timeline: Vec::new(),
        fatal: None,
    };
    let quota = match w.stop {
        Stop::Messages(n) => {
            // Spread the total over producers; the first ones take the rest.
            let base = n / w.producers as u64;
            base + u64::from((index as u64) < n % w.producers as u64)
        }
        Stop::Duration(_) => MESSAGES_PER_PRODUCER_MAX,
    }
    .min(MESSAGES_PER_PRODUCER_MAX);
    let interval_us = w.rate.map(|r| w.producers as f64 * 1e6 / r);
    let (_, size_max) = w.size.bounds();
    let mut value = vec![0u8; size_max];
    for (i, b) in value.iter_mut().enumerate().skip(VALUE_HEADER_BYTES) {
        *b = (i % 251) as u8;
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((index as u64 + 1) << 32);
    let window_end = window_end_us.unwrap_or(u64::MAX);
    let on_deliveries = |producer: &mut Producer, out: &mut ProducerOut| {
        for d in producer.take_deliveries() {
            let done_us = elapsed_us(t0, d.done_at);
            match &d.result {
                Ok(_) => {
                    live.acked.fetch_add(d.tags.len() as u64, Ordering::Relaxed);
                    for tag in &d.tags {
                        let seq = tag & MESSAGES_PER_PRODUCER_MAX;
                        let intended = tag >> SEQ_BITS;
                        out.acked.set(seq);
                        timeline_add(&mut out.timeline, done_us, done_us.saturating_sub(intended));
                        if intended >= warmup_us && intended < window_end {
                            out.acked_in_window += 1;
                            out.ack_us
                                .saturating_record(done_us.saturating_sub(intended).max(1));
                        }
                    }
                }
                Err(e) => {
                    live.failed
                        .fetch_add(d.tags.len() as u64, Ordering::Relaxed);
                    out.failed += d.tags.len() as u64;
                    *out.errors.entry(e.kind().to_owned()).or_insert(0) += d.tags.len() as u64;
                    if out.fatal.is_none() {
                        out.fatal = Some(format!("partition {}: {e}", d.partition));
                    }
                }
            }
        }
        live.in_flight
            .store(producer.in_flight() as u64, Ordering::Relaxed);
    };
    let mut seq = 0u64;
    // Bounded: by the quota and, in duration mode, by the window end.
    while seq < quota && !live.abort.load(Ordering::Relaxed) {
        let now_us = elapsed_us(t0, Instant::now());
        let intended_us = match interval_us {
            Some(iv) => (seq as f64 * iv) as u64,
            None => now_us,
        };
        if intended_us >= window_end {
            break;
        }
        if intended_us > now_us {
            // Ahead of schedule: wait for answers until the send is due.
            producer.poll(Duration::from_micros(intended_us - now_us));
            on_deliveries(&mut producer, &mut out);
            continue;
        }
        if interval_us.is_some() && intended_us >= warmup_us {
            out.send_delay_us
                .saturating_record((now_us - intended_us).max(1));
        }
        let id = ((index as u64) << 40) | seq;
        let size = w.size.pick(&mut rng);
        value[0..8].copy_from_slice(&id.to_le_bytes());
        value[8..16].copy_from_slice(&intended_us.to_le_bytes());
        let key_bytes;
        let key = match w.keys {
            Some(k) => {
                key_bytes = (xorshift(&mut rng) % k.max(1)).to_le_bytes();
                Some(&key_bytes[..])
            }
            None => None,
        };
        let tag = (intended_us << SEQ_BITS) | seq;
        if let Err(e) = producer.send(key, &value[..size], (intended_us / 1000) as i64, tag) {
            out.fatal = Some(e.to_string());
            live.abort.store(true, Ordering::Relaxed);
            break;
        }
        out.last_send_us = now_us;
        seq += 1;
        out.sent += 1;
        live.sent.fetch_add(1, Ordering::Relaxed);
        on_deliveries(&mut producer, &mut out);
    }
    if let Err(e) = producer.flush(Instant::now() + FLUSH_TIMEOUT) {
        out.fatal.get_or_insert(e.to_string());
    }
    on_deliveries(&mut producer, &mut out);
    out.stats = producer.stats().clone();
    out
}

/// What a consumer thread reads from: a plain consumer or a group member.
pub(crate) trait Reader {
    fn poll_records(
        &mut self,
        wait: Duration,
        on_record: &mut dyn FnMut(u32, &wire::Record<'_>, Instant),
    ) -> Result<usize, PipelineError>;
    /// The next offset to read, by partition it holds.
    fn read_positions(&self) -> BTreeMap<u32, u64>;
    fn read_stats(&self) -> ClientStats;
    /// Keep the membership alive without reading (a group member).
    fn pause(&mut self, _paused: bool) {}
}

impl Reader for Consumer {
    fn poll_records(
        &mut self,
        wait: Duration,
        on_record: &mut dyn FnMut(u32, &wire::Record<'_>, Instant),
    ) -> Result<usize, PipelineError> {
        self.poll(wait, on_record)
    }
    fn read_positions(&self) -> BTreeMap<u32, u64> {
        self.positions()
    }
    fn read_stats(&self) -> ClientStats {
        self.stats().clone()
    }
}

impl Reader for GroupConsumer {
    fn poll_records(
        &mut self,
        wait: Duration,
        on_record: &mut dyn FnMut(u32, &wire::Record<'_>, Instant),
    ) -> Result<usize, PipelineError> {
        self.poll(wait, |p, rec, at| {
            on_record(p, rec, at);
            true
        })
    }
    fn read_positions(&self) -> BTreeMap<u32, u64> {
        self.positions()
    }
    fn read_stats(&self) -> ClientStats {
        ClientStats::default()
    }
    fn pause(&mut self, paused: bool) {
        GroupConsumer::pause(self, paused);
    }
}

impl ConsumerOut {
    fn new(w: &Workload) -> ConsumerOut {
        ConsumerOut {
            consumed: 0,
            consumed_in_window: 0,
            seen: vec![Bits::default(); w.producers],
            duplicates: 0,
            malformed: 0,
            e2e_us: new_hist(),
            drained_after_end: 0,
            last_receipt_us: 0,
            stats: ClientStats::default(),
            fatal: None,
        }
    }

    /// A consumer that could not start.
    pub(crate) fn failed(w: &Workload, reason: String) -> ConsumerOut {
        ConsumerOut {
            fatal: Some(reason),
            ..ConsumerOut::new(w)
        }
    }
}

/// What a group member's thread shares with the run.
#[derive(Clone, Copy)]
pub(crate) struct MemberShared<'a> {
    /// Stop now (leave or crash).
    pub stop: &'a AtomicBool,
    /// The positions of all members (the highest each partition reached).
    pub positions: &'a Mutex<BTreeMap<u32, u64>>,
    /// The churn script is over: caught up means done.
    pub script_done: &'a AtomicBool,
    /// Hold off reading (members join before the backlog is read).
    pub paused: &'a AtomicBool,
}

/// Reads until the producers' end offsets (or the drain timeout). A group
/// member (`group`: its stop flag, the positions all members share, and
/// whether the churn script is over) also stops when told to, and is
/// caught up when the group is and the script is over.
#[allow(clippy::too_many_arguments)]
pub(crate) fn consume<R: Reader>(
    consumer: &mut R,
    w: &Workload,
    t0: Instant,
    warmup_us: u64,
    window_end_us: Option<u64>,
    live: &Live,
    end_marks: &Mutex<Option<BTreeMap<u32, u64>>>,
    group: Option<MemberShared<'_>>,
) -> ConsumerOut {
    let mut out = ConsumerOut::new(w);
    let window_end = window_end_us.unwrap_or(u64::MAX);
    let mut drain_deadline: Option<Instant> = None;
    // Bounded: ends at the producers' final offsets or the drain timeout.
    loop {
        let done = live.producers_done.load(Ordering::Relaxed);
        if let Some(g) = group {
            if g.stop.load(Ordering::SeqCst) {
                break;
            }
            consumer.pause(g.paused.load(Ordering::SeqCst));
        }
        let r = consumer.poll_records(Duration::from_millis(20), &mut |_, rec, received_at| {
            out.consumed += 1;
            let got_us = elapsed_us(t0, received_at);
            out.last_receipt_us = got_us;
            if done {
                out.drained_after_end += 1;
            }
            let Some(v) = rec.value.filter(|v| v.len() >= VALUE_HEADER_BYTES) else {
                out.malformed += 1;
                return;
            };
            let id = u64::from_le_bytes(v[0..8].try_into().expect("8 bytes"));
            let intended = u64::from_le_bytes(v[8..16].try_into().expect("8 bytes"));
            let (producer, seq) = ((id >> 40) as usize, id & ((1 << 40) - 1));
            let Some(bits) = out.seen.get_mut(producer) else {
                out.malformed += 1;
                return;
            };
            if seq > MESSAGES_PER_PRODUCER_MAX {
                out.malformed += 1;
                return;
            }
            if bits.set(seq) {
                out.duplicates += 1;
            }
            if intended >= warmup_us && intended < window_end {
                out.e2e_us
                    .saturating_record(got_us.saturating_sub(intended).max(1));
            }
            if got_us >= warmup_us && got_us < window_end {
                out.consumed_in_window += 1;
            }
        });
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                out.fatal = Some(e.to_string());
                break;
            }
        };
        live.consumed.fetch_add(n as u64, Ordering::Relaxed);
        let mut positions = consumer.read_positions();
        if let Some(g) = group {
            let mut all = g.positions.lock().expect("not poisoned");
            for (p, pos) in positions {
                let e = all.entry(p).or_insert(pos);
                *e = (*e).max(pos);
            }
            positions = all.clone();
        }
        if done {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + w.drain_timeout);
            let marks = end_marks.lock().expect("not poisoned").clone();
            if let Some(marks) = marks {
                let caught_up = if let Some(g) = group {
                    g.script_done.load(Ordering::SeqCst)
                        && marks
                            .iter()
                            .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end))
                } else {
                    positions
                        .iter()
                        .all(|(p, pos)| *pos >= marks.get(p).copied().unwrap_or(0))
                };
                if caught_up {
                    break;
                }
            }
            if Instant::now() >= deadline {
                out.fatal = Some(format!(
                    "consumer did not catch up within {:?}",
                    w.drain_timeout
                ));
                break;
            }
        }
    }
    out.stats = consumer.read_stats();
    out
}

/// The once-a-second line on stderr.
struct ProgressLine {
    on: bool,
    last: Instant,
    last_sent: u64,
    last_acked: u64,
    last_consumed: u64,
    printed: bool,
}

impl ProgressLine {
    fn new(on: bool) -> Self {
        ProgressLine {
            on,
            last: Instant::now(),
            last_sent: 0,
            last_acked: 0,
            last_consumed: 0,
            printed: false,
        }
    }

    fn tick(&mut self, live: &Live, t0: Instant, warmup_us: u64) {
        let dt = self.last.elapsed().as_secs_f64();
        if !self.on || dt < 1.0 {
            return;
        }
        let sent = live.sent.load(Ordering::Relaxed);
        let acked = live.acked.load(Ordering::Relaxed);
        let consumed = live.consumed.load(Ordering::Relaxed);
        let el = t0.elapsed();
        let phase = if live.producers_done.load(Ordering::Relaxed) {
            "drain"
        } else if (el.as_micros() as u64) < warmup_us {
            "warm-up"
        } else {
            "measure"
        };
        eprint!(
            "\r[{:>5.1}s {:<7}] sent {:>9.0}/s  acked {:>9.0}/s  consumed {:>9.0}/s  in-flight {:>4}  backlog {:>9}  failed {}   ",
            el.as_secs_f64(),
            phase,
            (sent - self.last_sent) as f64 / dt,
            (acked - self.last_acked) as f64 / dt,
            (consumed - self.last_consumed) as f64 / dt,
            live.in_flight.load(Ordering::Relaxed),
            acked.saturating_sub(consumed),
            live.failed.load(Ordering::Relaxed),
        );
        self.printed = true;
        self.last = Instant::now();
        self.last_sent = sent;
        self.last_acked = acked;
        self.last_consumed = consumed;
    }

    fn finish(&self) {
        if self.printed {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_specs_parse_and_refuse_what_cannot_carry_an_id() {
        assert_eq!(SizeSpec::parse("1024"), Ok(SizeSpec::Fixed(1024)));
        assert_eq!(SizeSpec::parse("100-200"), Ok(SizeSpec::Uniform(100, 200)));
        assert!(SizeSpec::parse("8").unwrap_err().contains("at least 16"));
        assert!(SizeSpec::parse("300-200").is_err());
        assert!(SizeSpec::parse("x").is_err());
        let mut rng = 7;
        for _ in 0..1000 {
            let n = SizeSpec::Uniform(100, 110).pick(&mut rng);
            assert!((100..=110).contains(&n));
        }
    }

    #[test]
    fn bits_report_repeats() {
        let mut b = Bits::default();
        assert!(!b.set(130));
        assert!(b.set(130));
        assert!(!b.set(0));
        assert_eq!(b.count(), 2);
    }
}
