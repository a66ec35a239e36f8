//! `drmq produce` and `drmq consume`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use broker::client::{parse_brokers, ClientError, Connection};
use broker::pipeline::{routes, ClientConfig};
use serde_json::json;
use wire::*;

/// Lines per produce request: bounded so one request stays far below the
/// frame limit for typical lines, and acknowledgements flow steadily.
const LINES_PER_BATCH_MAX: usize = 1_000;
/// Bytes per produce batch (1 MiB), well under the 4 MiB frame limit.
const BATCH_BYTES_MAX: usize = 1 << 20;
/// How long to wait for more stdin lines before sending a batch.
const LINGER: Duration = Duration::from_millis(5);

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

/// Connections to the leaders of one topic's partitions, following
/// leadership as it moves.
struct Router {
    cfg: ClientConfig,
    topic: String,
    timeout: Duration,
    /// Partition number and the client endpoint of its leader's shard.
    partitions: Vec<(u32, std::net::SocketAddr)>,
    conns: BTreeMap<std::net::SocketAddr, Connection>,
}

impl Router {
    fn new(brokers: &str, timeout_ms: u64, topic: &str) -> Result<Router> {
        let timeout = Duration::from_millis(timeout_ms.max(1));
        let mut cfg = ClientConfig::new(parse_brokers(brokers)?);
        cfg.connect_timeout = timeout;
        let partitions = routes(&cfg, topic)?
            .into_iter()
            .enumerate()
            .map(|(p, a)| (p as u32, a))
            .collect();
        Ok(Router {
            cfg,
            topic: topic.to_owned(),
            timeout,
            partitions,
            conns: BTreeMap::new(),
        })
    }

    fn request(
        &mut self,
        addr: std::net::SocketAddr,
        msg: &Message,
    ) -> Result<Message, ClientError> {
        if !self.conns.contains_key(&addr) {
            self.conns
                .insert(addr, Connection::connect(addr, self.timeout)?);
        }
        let r = self
            .conns
            .get_mut(&addr)
            .expect("inserted above")
            .request(msg);
        if matches!(
            r,
            Err(ClientError::Io { .. } | ClientError::Closed { .. } | ClientError::Protocol { .. })
        ) {
            self.conns.remove(&addr);
        }
        r
    }

    /// Sends `msg` to the leader of partition number `idx`; on a leader
    /// change (hint, refused connection, retriable error) it finds the new
    /// leader and sends again, with back-off, until `deadline`.
    fn send(
        &mut self,
        idx: usize,
        msg: &Message,
        deadline: Instant,
    ) -> Result<Message, ClientError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let addr = self.partitions[idx].1;
            let err = match self.request(addr, msg) {
                Ok(m) => return Ok(m),
                Err(e) => e,
            };
            let retry = match &err {
                ClientError::Broker { code, hint, .. } if code.is_retryable() => {
                    let hinted = hint.as_ref().and_then(|h| {
                        parse_brokers(&format!("{}:{}", h.endpoint.host, h.endpoint.port)).ok()
                    });
                    match hinted.and_then(|v| v.first().copied()) {
                        Some(a) if a != addr => self.partitions[idx].1 = a,
                        _ => self.refresh(),
                    }
                    true
                }
                ClientError::Io { .. }
                | ClientError::Closed { .. }
                | ClientError::Unreachable { .. } => {
                    self.refresh();
                    true
                }
                _ => false,
            };
            let pause = Duration::from_millis(20 << attempt.min(5));
            if !retry || Instant::now() + pause >= deadline {
                return Err(err);
            }
            std::thread::sleep(pause);
        }
    }

    /// Asks the cluster again where the leaders are (keeps the old routes
    /// if nobody answers).
    fn refresh(&mut self) {
        let mut cfg = self.cfg.clone();
        cfg.connect_timeout = Duration::from_millis(500);
        if let Ok(r) = routes(&cfg, &self.topic) {
            for (p, a) in r.into_iter().enumerate() {
                if let Some(slot) = self.partitions.get_mut(p) {
                    slot.1 = a;
                }
            }
        }
    }
}

const NO_PRODUCER: i64 = wire::batch::NO_PRODUCER_ID;

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
) -> Result<()> {
    let mut router = Router::new(brokers, timeout_ms, topic)?;
    // An idempotent producer: a random 63-bit id (see broker::producers) and a
    // record sequence per partition; a retried batch carries the same ones.
    let producer_id = if idempotent {
        broker::pipeline::random_producer_id()
    } else {
        NO_PRODUCER
    };
    let mut sequences: BTreeMap<u32, i32> = BTreeMap::new();
    let (tx, rx) = mpsc::sync_channel::<(u64, String)>(LINES_PER_BATCH_MAX * 4);
    std::thread::spawn(move || {
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let Ok(line) = line else { break };
            if tx.send((i as u64 + 1, line)).is_err() {
                break;
            }
        }
    });
    let out = std::io::stdout();
    let mut failed = 0u64;
    let mut round_robin = 0usize;
    while let Ok(first) = rx.recv() {
        let mut lines = vec![first];
        let mut bytes = lines[0].1.len();
        let deadline = Instant::now() + LINGER;
        while lines.len() < LINES_PER_BATCH_MAX && bytes < BATCH_BYTES_MAX {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    bytes += l.1.len();
                    lines.push(l);
                }
                Err(_) => break,
            }
        }
        // Group by partition: by key hash when keyed, else round robin.
        let n = router.partitions.len();
        let mut groups: BTreeMap<usize, Vec<(u64, Option<String>, String)>> = BTreeMap::new();
        for (line_no, line) in lines {
            let (key, value) = match key_separator.and_then(|c| line.split_once(c)) {
                Some((k, v)) => (Some(k.to_owned()), v.to_owned()),
                None => (None, line),
            };
            let idx = match &key {
                Some(k) => broker::topics::partition_for_key(k.as_bytes(), n),
                None => {
                    round_robin = (round_robin + 1) % n;
                    round_robin
                }
            };
            groups.entry(idx).or_default().push((line_no, key, value));
        }
        for (idx, msgs) in groups {
            let partition = router.partitions[idx].0;
            let seq = sequences.entry(partition).or_insert(0);
            let mut b = if producer_id >= 0 {
                RecordBatchBuilder::new().producer(producer_id, 0, *seq)
            } else {
                RecordBatchBuilder::new()
            };
            *seq = seq.wrapping_add(msgs.len() as i32);
            let ts = now_ms();
            for (_, key, value) in &msgs {
                b.push(NewRecord {
                    timestamp_ms: ts,
                    key: key.as_deref().map(str::as_bytes),
                    value: Some(value.as_bytes()),
                    headers: &[],
                });
            }
            let req: Message = ProduceRequest {
                topic: topic.to_owned(),
                partition,
                acks: Acks::Quorum,
                timeout_ms: timeout_ms.min(u64::from(u32::MAX)) as u32,
                batch: b.finish(),
            }
            .into();
            let deadline = Instant::now() + router.timeout;
            let result = router.send(idx, &req, deadline);
            match result {
                Ok(Message::ProduceResponse(r)) => {
                    let mut o = out.lock();
                    for (i, (line_no, _, _)) in msgs.iter().enumerate() {
                        let line = json!({"topic": topic, "partition": partition, "offset": r.base_offset + i as u64, "line": line_no});
                        writeln!(o, "{line}")?;
                    }
                    o.flush()?;
                }
                Ok(other) => bail!("unexpected response {}", other.kind().name()),
                Err(e) => {
                    for (line_no, _, _) in &msgs {
                        eprintln!("drmq: line {line_no} not delivered: {e}");
                    }
                    failed += msgs.len() as u64;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} message(s) not delivered");
    }
    Ok(())
}

pub fn consume(
    brokers: &str,
    timeout_ms: u64,
    topic: &str,
    from: From,
    max_messages: Option<u64>,
    idle_timeout_ms: Option<u64>,
) -> Result<()> {
    let mut router = Router::new(brokers, timeout_ms, topic)?;
    let parts: Vec<u32> = router.partitions.iter().map(|p| p.0).collect();
    let mut positions = Vec::with_capacity(parts.len());
    for (idx, &partition) in parts.iter().enumerate() {
        let pos = match from {
            From::Offset(o) => o,
            From::Earliest | From::Latest => {
                let spec = if matches!(from, From::Earliest) {
                    OffsetSpec::Earliest
                } else {
                    OffsetSpec::Latest
                };
                let resp = router.send(
                    idx,
                    &ListOffsetsRequest {
                        topic: topic.to_owned(),
                        partition,
                        spec,
                    }
                    .into(),
                    Instant::now() + router.timeout,
                )?;
                let Message::ListOffsetsResponse(r) = resp else {
                    bail!("unexpected response {}", resp.kind().name())
                };
                r.offset.unwrap_or(0)
            }
        };
        positions.push(pos);
    }
    let out = std::io::stdout();
    let mut printed = 0u64;
    let mut last_data = Instant::now();
    // A short long-poll per partition keeps several partitions moving.
    let wait_ms = if parts.len() == 1 { 500 } else { 50 };
    loop {
        let mut got_any = false;
        for (i, &partition) in parts.iter().enumerate() {
            let req = FetchRequest {
                topic: topic.to_owned(),
                partition,
                offset: positions[i],
                max_bytes: 1 << 20,
                min_bytes: 1,
                max_wait_ms: wait_ms,
            };
            let resp = router.send(i, &req.into(), Instant::now() + router.timeout)?;
            let Message::FetchResponse(r) = resp else {
                bail!("unexpected response {}", resp.kind().name())
            };
            let mut o = out.lock();
            for batch in batches(&r.batches) {
                let batch = batch.context("corrupt batch from the broker")?;
                // Raft's no-op and membership entries take an offset each
                // but are not messages.
                if batch.is_control() {
                    positions[i] = positions[i].max(batch.last_offset() + 1);
                    continue;
                }
                for rec in batch.records() {
                    let rec = rec.context("corrupt record from the broker")?;
                    if rec.offset < positions[i] {
                        continue;
                    }
                    let line = json!({
                        "topic": topic,
                        "partition": partition,
                        "offset": rec.offset,
                        "key": rec.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                        "value": rec.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                        "timestamp_ms": rec.timestamp_ms,
                    });
                    // A reader that went away (`| head`) ends consuming.
                    if let Err(e) = writeln!(o, "{line}") {
                        return reader_gone(e);
                    }
                    positions[i] = rec.offset + 1;
                    printed += 1;
                    got_any = true;
                    if max_messages.is_some_and(|m| printed >= m) {
                        return o.flush().or_else(reader_gone);
                    }
                }
            }
            if let Err(e) = o.flush() {
                return reader_gone(e);
            }
        }
        if got_any {
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
