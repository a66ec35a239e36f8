//! The pipelined consumer: one long-poll fetch in flight per assigned
//! partition, all pipelined over the same shard connections, retried by the
//! client's [`crate::RetryPolicy`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{FetchRequest, Message, OffsetSpec, Record};

use crate::connection::Connection;
use crate::links::{Event, Links};
use crate::retry::{classify, Decision, Failure, RetryCause, Route};
use crate::routes::{routes, routes_partial, Refresher, REFRESH_TIMEOUT};
use crate::{ClientConfig, ClientError, ClientStats, PipelineError};

/// Where a consumer starts in each partition.
#[derive(Debug, Clone)]
pub enum StartAt {
    Earliest,
    Latest,
    /// Offsets by partition (a partition not named starts at 0).
    Offsets(BTreeMap<u32, u64>),
    /// The same offset in every partition.
    Offset(u64),
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
    /// A partition whose fetches keep failing (retryably) this long ends
    /// [`Consumer::poll`] with [`PipelineError::GaveUp`]; None: retry for
    /// as long as the consumer runs.
    pub give_up_after: Option<Duration>,
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
            give_up_after: None,
        }
    }
}

struct PartitionState {
    partition: u32,
    position: u64,
    /// Correlation id of the fetch in flight, with its link and send time.
    in_flight: Option<(u64, u64, Instant)>,
    not_before: Instant,
    /// Failed fetches in a row, and since when they fail.
    failures: u32,
    failing_since: Option<Instant>,
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
        let mut routes = routes(&cfg.client, &cfg.topic)?;
        let wanted: Vec<u32> = match &cfg.partitions {
            Some(p) => p.clone(),
            None => (0..routes.len() as u32).collect(),
        };
        let now = Instant::now();
        let mut parts = Vec::with_capacity(wanted.len());
        for partition in wanted {
            if partition as usize >= routes.len() {
                return Err(PipelineError::Partition {
                    topic: cfg.topic.clone(),
                    partition,
                    reason: format!("the topic has {} partitions", routes.len()),
                });
            }
            let position = match &cfg.start {
                StartAt::Offsets(m) => m.get(&partition).copied().unwrap_or(0),
                StartAt::Offset(o) => *o,
                StartAt::Earliest => list_offset(
                    &cfg.client,
                    &cfg.topic,
                    &mut routes,
                    partition,
                    OffsetSpec::Earliest,
                )?,
                StartAt::Latest => list_offset(
                    &cfg.client,
                    &cfg.topic,
                    &mut routes,
                    partition,
                    OffsetSpec::Latest,
                )?,
            };
            parts.push(PartitionState {
                partition,
                position,
                in_flight: None,
                not_before: now,
                failures: 0,
                failing_since: None,
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
        self.issue_fetches()?;
        let mut delivered = 0;
        let mut next = self.links.recv(wait);
        // Bounded: at most one answer per partition is outstanding.
        while let Some(ev) = next {
            delivered += self.on_event(ev, &mut on_record)?;
            next = self.links.recv(Duration::ZERO);
        }
        self.expire()?;
        self.issue_fetches()?;
        Ok(delivered)
    }

    fn issue_fetches(&mut self) -> Result<(), PipelineError> {
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
                Err(reason) => self.back_off(i, RetryCause::Connection, reason)?,
            }
        }
        Ok(())
    }

    /// A failed fetch of partition `self.parts[i]`: when (and where) to
    /// fetch again, by the retry policy.
    fn back_off(
        &mut self,
        i: usize,
        cause: RetryCause,
        reason: String,
    ) -> Result<(), PipelineError> {
        *self.stats.retries_by_kind.entry(cause.name()).or_default() += 1;
        let now = Instant::now();
        let p = &mut self.parts[i];
        p.in_flight = None;
        p.failures += 1;
        let (partition, failures) = (p.partition, p.failures);
        let deadline = self
            .cfg
            .give_up_after
            .map(|d| *p.failing_since.get_or_insert(now) + d);
        let current = Some(self.routes[partition as usize]);
        let policy = self.cfg.client.retry_policy();
        match policy.decide(&cause, failures, now, deadline, current) {
            Decision::GiveUp => Err(PipelineError::GaveUp {
                topic: self.cfg.topic.clone(),
                partition,
                attempts: failures,
                last: reason,
            }),
            Decision::Retry { after, route } => {
                match route {
                    Route::Reroute(addr) => {
                        self.routes[partition as usize] = addr;
                        self.stats.reroutes += 1;
                    }
                    Route::Refresh => {
                        if self.refresher.refresh(
                            &self.cfg.client,
                            &self.cfg.topic,
                            &mut self.routes,
                        ) {
                            self.stats.metadata_refreshes += 1;
                        }
                    }
                    Route::Same => {}
                }
                self.parts[i].not_before = now + after;
                Ok(())
            }
        }
    }

    fn on_event(
        &mut self,
        ev: Event,
        on_record: &mut impl FnMut(u32, &Record<'_>, Instant),
    ) -> Result<usize, PipelineError> {
        match ev {
            Event::Broken { link, reason } => {
                self.links.drop_link(link);
                for i in 0..self.parts.len() {
                    if let Some((corr, l, _)) = self.parts[i].in_flight {
                        if l == link {
                            self.by_corr.remove(&corr);
                            self.back_off(i, RetryCause::Connection, reason.clone())?;
                        }
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
                        p.failing_since = None;
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
                    Err(Failure::Retry { cause, reason }) => {
                        self.back_off(i, cause, reason)?;
                        Ok(0)
                    }
                    Err(Failure::Fatal { code, message }) => {
                        Err(fatal(format!("{code}: {message}")))
                    }
                }
            }
        }
    }

    fn expire(&mut self) -> Result<(), PipelineError> {
        // A long poll answers within its wait; allow the request timeout on top.
        let limit = self.cfg.fetch_wait + self.cfg.client.request_timeout;
        for i in 0..self.parts.len() {
            if let Some((corr, link, sent)) = self.parts[i].in_flight {
                if sent.elapsed() >= limit {
                    self.by_corr.remove(&corr);
                    self.links.drop_link(link);
                    let reason = format!("no answer within {limit:?}");
                    self.back_off(i, RetryCause::RequestTimeout, reason)?;
                }
            }
        }
        Ok(())
    }
}

/// The offset `spec` names in one partition, asked of its leader (found in
/// `routes`, which a refresh updates), retried by the retry policy for up
/// to the request timeout.
pub fn list_offset(
    cfg: &ClientConfig,
    topic: &str,
    routes: &mut [SocketAddr],
    partition: u32,
    spec: OffsetSpec,
) -> Result<u64, PipelineError> {
    Ok(list_offset_opt(cfg, topic, routes, partition, spec)?.unwrap_or(0))
}

/// [`list_offset`], but None when no offset matches (a timestamp after the
/// last batch).
pub fn list_offset_opt(
    cfg: &ClientConfig,
    topic: &str,
    routes: &mut [SocketAddr],
    partition: u32,
    spec: OffsetSpec,
) -> Result<Option<u64>, PipelineError> {
    let p = partition as usize;
    let Some(start) = routes.get(p).copied() else {
        return Err(PipelineError::Partition {
            topic: topic.to_owned(),
            partition,
            reason: format!("the topic has {} partitions", routes.len()),
        });
    };
    // Where the last attempt went: a refresh that finds no leader keeps it.
    let latest = std::cell::Cell::new(start);
    let mut refreshes = 0usize;
    let result = crate::retry::call(
        &cfg.retry_policy(),
        Instant::now() + cfg.request_timeout,
        Some(start),
        || {
            refreshes += 1;
            let timeout = REFRESH_TIMEOUT.min(cfg.connect_timeout);
            let found = routes_partial(&cfg.brokers, refreshes, timeout, topic)
                .ok()
                .and_then(|r| r.get(p).copied().flatten());
            Some(found.unwrap_or(latest.get()))
        },
        |target| {
            let addr = target.unwrap_or(latest.get());
            latest.set(addr);
            let mut conn = Connection::connect(addr, cfg.connect_timeout)?;
            let resp = conn.request(
                &wire::ListOffsetsRequest {
                    topic: topic.to_owned(),
                    partition,
                    spec,
                }
                .into(),
            )?;
            match resp {
                Message::ListOffsetsResponse(r) => Ok(r.offset),
                other => Err(ClientError::Unexpected(other.kind().name())),
            }
        },
    );
    routes[p] = latest.get();
    Ok(result?)
}
