//! `drmq produce` and `drmq consume`, on the client library's pipelined
//! [`Producer`] and [`Consumer`].

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::{
    parse_brokers, ClientConfig, Consumer, ConsumerConfig, Delivery, Producer, ProducerConfig,
    StartAt,
};
use serde_json::json;
use wire::Acks;

/// Lines read ahead of the producer: bounded so a fast stdin cannot fill
/// memory while the cluster is slow (back-pressure reaches the reader).
const LINES_QUEUED_MAX: usize = 4_000;
/// Lines taken from stdin between looks at the producer's answers.
const LINES_PER_ROUND_MAX: usize = 1_000;
/// How long a batch waits for more stdin lines before it is sent.
const LINGER: Duration = Duration::from_millis(5);
/// How long the producer waits for answers while stdin has nothing new.
const PRODUCE_POLL_WAIT: Duration = Duration::from_millis(1);
/// Long-poll wait of each fetch, and how long a consumer round waits.
const FETCH_WAIT: Duration = Duration::from_millis(500);
const CONSUME_POLL_WAIT: Duration = Duration::from_millis(100);
/// Bytes per fetch (1 MiB).
const FETCH_BYTES_MAX: u32 = 1 << 20;

pub enum From {
    Earliest,
    Latest,
    Offset(u64),
}

pub fn parse_from(s: &str) -> Result<From> {
    Ok(match s {
        "earliest" => From::Earliest,
        "latest" => From::Latest,
        n => From::Offset(
            n.parse()
                .with_context(|| format!("--from `{n}`: expected earliest, latest or an offset"))?,
        ),
    })
}

/// Client settings from `--brokers` and `--timeout-ms`: the timeout bounds
/// connecting, each request, and the retries of each message.
fn client_config(brokers: &str, timeout: Duration) -> Result<ClientConfig> {
    let mut cfg = ClientConfig::new(parse_brokers(brokers)?);
    cfg.connect_timeout = timeout;
    cfg.request_timeout = timeout;
    Ok(cfg)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn produce(
    brokers: &str,
    timeout_ms: u64,
    topic: &str,
    key_separator: Option<char>,
    idempotent: bool,
    batch_bytes: usize,
) -> Result<()> {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let mut cfg = ProducerConfig::new(client_config(brokers, timeout)?, topic);
    cfg.acks = Acks::Quorum;
    cfg.batch_bytes_max = batch_bytes;
    cfg.linger = LINGER;
    cfg.delivery_timeout = timeout;
    // A random 63-bit producer id and a record sequence per partition; a
    // retried batch carries the same ones.
    cfg.idempotent = idempotent;
    // Lines keep their order within a partition: without idempotence a
    // retried batch could land behind a later one, so only one batch is in
    // flight (as before the client crate); with it, sequences keep the order
    // and the window stays open.
    if !idempotent {
        cfg.in_flight_max = 1;
    }
    let mut producer = Producer::new(cfg)?;
    let partitions = producer.partition_count();

    // Lines are bytes: a value need not be UTF-8. A read error ends the
    // input and fails the run (nothing after it is silently dropped).
    let (tx, rx) = mpsc::sync_channel::<(u64, std::io::Result<Vec<u8>>)>(LINES_QUEUED_MAX);
    std::thread::spawn(move || {
        for (i, line) in std::io::stdin().lock().split(b'\n').enumerate() {
            let failed = line.is_err();
            let line = line.map(|mut l| {
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                l
            });
            if tx.send((i as u64 + 1, line)).is_err() || failed {
                break;
            }
        }
    });
    let mut report = Report {
        topic,
        out: std::io::stdout(),
        unanswered: BTreeSet::new(),
        failed: 0,
    };
    let mut round_robin = 0u32;
    let mut stdin_open = true;
    // Bounded by stdin: each round takes lines or waits for answers.
    while stdin_open {
        let mut taken = 0;
        while taken < LINES_PER_ROUND_MAX {
            // Nothing pending: block on stdin, there is nothing else to do.
            let next = if taken == 0 && producer.pending_batches() == 0 {
                rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                rx.try_recv()
            };
            let (line_no, line) = match next {
                Ok(l) => l,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    stdin_open = false;
                    break;
                }
            };
            taken += 1;
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("drmq: reading line {line_no} of stdin: {e}");
                    report.failed += 1;
                    stdin_open = false;
                    break;
                }
            };
            let (key, value) = match key_separator.and_then(|c| split_once(&line, c)) {
                Some((k, v)) => (Some(k), v),
                None => (None, &line[..]),
            };
            // By key hash when keyed, else round robin line by line.
            let partition = match key {
                Some(k) => producer.partition_for(Some(k)),
                None => {
                    round_robin = (round_robin + 1) % partitions;
                    round_robin
                }
            };
            producer.send_to(partition, key, value, now_ms(), line_no)?;
            report.unanswered.insert(line_no);
            report.deliveries(producer.take_deliveries())?;
        }
        let wait = if taken == 0 {
            PRODUCE_POLL_WAIT
        } else {
            Duration::ZERO
        };
        producer.poll(wait);
        report.deliveries(producer.take_deliveries())?;
    }
    // Every batch ends by its delivery timeout once sent; a full window may
    // hold the last ones back for as long again.
    let flushed = producer.flush(Instant::now() + 2 * timeout + Duration::from_secs(1));
    report.deliveries(producer.take_deliveries())?;
    if let Err(e) = flushed {
        for line_no in &report.unanswered {
            eprintln!("drmq: line {line_no} not delivered: {e}");
        }
        report.failed += report.unanswered.len() as u64;
    }
    if report.failed > 0 {
        bail!("{} message(s) not delivered", report.failed);
    }
    Ok(())
}

/// Splits `line` at the first `sep` (its UTF-8 bytes).
fn split_once(line: &[u8], sep: char) -> Option<(&[u8], &[u8])> {
    let mut buf = [0u8; 4];
    let sep = sep.encode_utf8(&mut buf).as_bytes();
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some((&line[..at], &line[at + sep.len()..]))
}

/// The per-line acknowledgements of `drmq produce`.
struct Report<'a> {
    topic: &'a str,
    out: std::io::Stdout,
    /// Lines sent and not yet acknowledged or failed.
    unanswered: BTreeSet<u64>,
    failed: u64,
}

impl Report<'_> {
    /// One JSON line per acknowledged line on stdout; one line per failed
    /// line on stderr.
    fn deliveries(&mut self, done: Vec<Delivery>) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut o = self.out.lock();
        for d in done {
            for tag in &d.tags {
                self.unanswered.remove(tag);
            }
            match &d.result {
                Ok(base) => {
                    for (i, line_no) in d.tags.iter().enumerate() {
                        let line = json!({"topic": self.topic, "partition": d.partition, "offset": base + i as u64, "line": line_no});
                        writeln!(o, "{line}")?;
                    }
                }
                Err(e) => {
                    for line_no in &d.tags {
                        eprintln!("drmq: line {line_no} not delivered: {e}");
                    }
                    self.failed += d.tags.len() as u64;
                }
            }
        }
        o.flush()?;
        Ok(())
    }
}

pub fn consume(
    brokers: &str,
    timeout_ms: u64,
    topic: &str,
    from: From,
    max_messages: Option<u64>,
    idle_timeout_ms: Option<u64>,
) -> Result<()> {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let mut cfg = ConsumerConfig::new(client_config(brokers, timeout)?, topic);
    cfg.start = match from {
        From::Earliest => StartAt::Earliest,
        From::Latest => StartAt::Latest,
        From::Offset(o) => StartAt::Offset(o),
    };
    cfg.fetch_bytes_max = FETCH_BYTES_MAX;
    cfg.fetch_wait = FETCH_WAIT;
    // A partition that cannot be read for the whole timeout is an error.
    cfg.give_up_after = Some(timeout);
    let mut consumer = Consumer::new(cfg)?;
    let out = std::io::stdout();
    let mut printed = 0u64;
    let mut last_data = Instant::now();
    loop {
        let mut o = out.lock();
        let mut write_error = None;
        let mut done = false;
        let got = consumer.poll(CONSUME_POLL_WAIT, |partition, rec, _| {
            if done || write_error.is_some() {
                return;
            }
            let line = json!({
                "topic": topic,
                "partition": partition,
                "offset": rec.offset,
                "key": rec.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": rec.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                "timestamp_ms": rec.timestamp_ms,
            });
            if let Err(e) = writeln!(o, "{line}") {
                write_error = Some(e);
                return;
            }
            printed += 1;
            done = max_messages.is_some_and(|m| printed >= m);
        })?;
        // A reader that went away (`| head`) ends consuming.
        if let Some(e) = write_error {
            return reader_gone(e);
        }
        if let Err(e) = o.flush() {
            return reader_gone(e);
        }
        if done {
            return Ok(());
        }
        if got > 0 {
            last_data = Instant::now();
        } else if idle_timeout_ms.is_some_and(|ms| last_data.elapsed() >= Duration::from_millis(ms))
        {
            return Ok(());
        }
    }
}

/// A closed standard output ends a consumer quietly (`drmq consume | head`);
/// any other write error is one.
fn reader_gone(e: std::io::Error) -> Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e.into())
    }
}
