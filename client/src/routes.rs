//! Routing by metadata: the client endpoint of the shard that leads each
//! partition of a topic, and rate-limited refreshes after failures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{ErrorCode, Message, MetadataRequest};

use crate::connection::{resolve, Connection};
use crate::retry::Decision;
use crate::{ClientConfig, PipelineError};

/// Asks the bootstrap brokers for `topic`'s partitions and returns, indexed
/// by partition number, the client endpoint of the shard that leads each.
/// While a partition has no leader (an election is under way) or the topic
/// is still being created it asks again, each bootstrap broker in turn, for
/// up to `connect_timeout` (the client's [`crate::RetryPolicy`] spaces the
/// attempts). A topic the cluster does not list is an error at once.
pub fn routes(cfg: &ClientConfig, topic: &str) -> Result<Vec<SocketAddr>, PipelineError> {
    let policy = cfg.retry_policy();
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut attempt = 0usize;
    loop {
        let result = routes_partial(&cfg.brokers, attempt, cfg.connect_timeout, topic);
        let result = result.and_then(|r| {
            r.iter()
                .enumerate()
                .map(|(i, a)| {
                    a.ok_or_else(|| PipelineError::NoLeader {
                        topic: topic.to_owned(),
                        partition: i as u32,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let err = match result {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let Some(cause) = err.retry_cause() else {
            return Err(err);
        };
        attempt += 1;
        // Each attempt asks the next bootstrap broker: the route is always
        // "ask again", whatever the cause says.
        match policy.decide(&cause, attempt as u32, Instant::now(), Some(deadline), None) {
            Decision::GiveUp => return Err(err),
            Decision::Retry { after, .. } => std::thread::sleep(after),
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
pub(crate) struct Refresher {
    last: Option<Instant>,
    count: usize,
}

/// Shortest time between two metadata refreshes of one client.
const REFRESH_GAP: Duration = Duration::from_millis(50);
/// A refresh is a quick look: a broker that does not answer in this time is
/// skipped until the next one.
pub(crate) const REFRESH_TIMEOUT: Duration = Duration::from_millis(500);

impl Refresher {
    /// Updates `routes` with the leaders the cluster knows now (a partition
    /// still electing keeps its old route); true if a refresh ran.
    pub(crate) fn refresh(
        &mut self,
        cfg: &ClientConfig,
        topic: &str,
        routes: &mut [SocketAddr],
    ) -> bool {
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
        .ok_or_else(|| PipelineError::NoTopic(topic.to_owned()))?;
    if t.error != 0 {
        return Err(PipelineError::Topic {
            topic: topic.to_owned(),
            code: ErrorCode::from_u16(t.error),
        });
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
