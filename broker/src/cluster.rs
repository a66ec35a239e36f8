//! What this broker knows about the cluster: leaders, peers' client
//! endpoints and when each peer was last heard from, shared by all shards
//! ([`ClusterView`], an `RwLock` written on leader changes and peer
//! handshakes and read by metadata and status: never on the produce/fetch
//! path), and the answers built from it (metadata, cluster status, the
//! hints that send a client elsewhere).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use wire::{
    BrokerInfo, BrokerStatus, Endpoint, ErrorCode, LeaderHint, PartitionMetadata, TopicMetadata,
};

use crate::config::BrokerConfig;
use crate::error::Error;
use crate::peer::PeerAddresses;
use crate::raft_group::LeaderChange;
use crate::telemetry::BrokerSample;
use crate::topics::{shard_for, TopicRecord};

/// A peer not heard from for this long is reported as down.
const PEER_ALIVE_WINDOW: Duration = Duration::from_secs(3);
/// Leadership events kept for the event feed.
const EVENTS_KEPT: usize = 256;
/// A shard marks a peer as seen in the shared view at most this often.
const SEEN_MARK_INTERVAL: Duration = Duration::from_millis(200);

/// What all shards of this broker know about the cluster (metadata, hints,
/// status). Written on leadership changes and peer handshakes, read by
/// metadata requests: never on the produce/fetch path.
#[derive(Default)]
pub struct ClusterView {
    /// Client address (shard 0) of each broker.
    endpoints: BTreeMap<u64, SocketAddr>,
    /// Telemetry address (`--http`) of each peer that told one.
    http: BTreeMap<u64, String>,
    /// When a peer was last heard from (any shard).
    last_seen: BTreeMap<u64, Instant>,
    /// Group id -> (leader, term).
    leaders: HashMap<u64, (Option<u64>, u64)>,
    /// Leader changes seen by this broker's groups (the election counter).
    leader_changes: u64,
    /// Recent leadership events (bounded), the seam for the event feed.
    events: VecDeque<LeaderChange>,
    /// The shards' leader-balance rounds (`crate::balance`).
    balance: crate::balance::Board,
}

impl ClusterView {
    /// A view that knows this broker's own client address.
    pub fn new(me: u64, listen: SocketAddr) -> ClusterView {
        let mut v = ClusterView::default();
        v.endpoints.insert(me, listen);
        v
    }
}

/// Every broker of the cluster, from the config.
pub fn broker_ids(config: &BrokerConfig) -> Vec<u64> {
    if config.peers.is_empty() {
        vec![config.id]
    } else {
        config.peers.keys().copied().collect()
    }
}

/// One shard's handle on the shared view.
pub(crate) struct Cluster {
    me: u64,
    shards: usize,
    listen: SocketAddr,
    /// This broker's telemetry address.
    http: SocketAddr,
    brokers: Vec<u64>,
    view: Arc<RwLock<ClusterView>>,
    /// Last time this shard marked each peer as seen in the view.
    seen_marks: RefCell<HashMap<u64, Instant>>,
}

impl Cluster {
    pub(crate) fn new(config: &BrokerConfig, view: Arc<RwLock<ClusterView>>) -> Cluster {
        Cluster {
            me: config.id,
            shards: config.shards,
            listen: config.listen,
            http: config.http,
            brokers: broker_ids(config),
            view,
            seen_marks: RefCell::new(HashMap::new()),
        }
    }

    /// This broker's client endpoint of `shard`.
    pub(crate) fn endpoint(&self, shard: usize) -> Endpoint {
        Endpoint {
            host: self.listen.ip().to_string(),
            port: self.listen.port() + shard as u16,
        }
    }

    /// Client endpoint of `shard` on broker `broker`, if known.
    fn broker_endpoint(&self, broker: u64, shard: usize) -> Option<Endpoint> {
        if broker == self.me {
            return Some(self.endpoint(shard));
        }
        let v = self.view.read().ok()?;
        let addr = v.endpoints.get(&broker)?;
        Some(Endpoint {
            host: addr.ip().to_string(),
            port: addr.port() + shard as u16,
        })
    }

    /// A peer proved itself, with its client and telemetry addresses.
    pub(crate) fn peer_up(&self, node: u64, addresses: &PeerAddresses) {
        let Ok(mut v) = self.view.write() else {
            return;
        };
        v.last_seen.insert(node, Instant::now());
        if let Ok(addr) = addresses.client.parse::<SocketAddr>() {
            v.endpoints.insert(node, addr);
        }
        // Only a well-formed address is kept (the page connects to it);
        // the hello of a peer without telemetry sends none.
        if addresses.http.parse::<SocketAddr>().is_ok() {
            v.http.insert(node, addresses.http.clone());
        } else {
            v.http.remove(&node);
        }
    }

    /// Every configured broker (this one included, sorted by id) with its
    /// client and telemetry addresses and whether it is alive as this
    /// broker sees it (itself always; a peer heard from within
    /// [`PEER_ALIVE_WINDOW`]), for the telemetry sample.
    pub(crate) fn broker_samples(&self) -> Vec<BrokerSample> {
        let now = Instant::now();
        let Ok(v) = self.view.read() else {
            return Vec::new();
        };
        let mut ids = self.brokers.clone();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|b| {
                if b == self.me {
                    return BrokerSample {
                        id: b,
                        client: Some(self.listen.to_string()),
                        http: Some(self.http.to_string()),
                        alive: true,
                    };
                }
                BrokerSample {
                    id: b,
                    client: v.endpoints.get(&b).map(|a| a.to_string()),
                    http: v.http.get(&b).cloned(),
                    alive: v
                        .last_seen
                        .get(&b)
                        .is_some_and(|t| now.duration_since(*t) < PEER_ALIVE_WINDOW),
                }
            })
            .collect()
    }

    /// A message came from `node` (the view is written at most every
    /// [`SEEN_MARK_INTERVAL`] per peer and shard).
    pub(crate) fn mark_seen(&self, node: u64) {
        let now = Instant::now();
        let mut marks = self.seen_marks.borrow_mut();
        let due = marks
            .get(&node)
            .is_none_or(|t| now.duration_since(*t) > SEEN_MARK_INTERVAL);
        if due {
            marks.insert(node, now);
            if let Ok(mut v) = self.view.write() {
                v.last_seen.insert(node, now);
            }
        }
    }

    pub(crate) fn leader_changed(&self, change: LeaderChange) {
        if let Ok(mut v) = self.view.write() {
            v.leaders.insert(change.group, (change.leader, change.term));
            v.leader_changes += 1;
            if v.events.len() == EVENTS_KEPT {
                v.events.pop_front();
            }
            v.events.push_back(change);
        };
    }

    /// Runs `f` on the broker's leader-balance board (under the view's
    /// lock), with whether a broker was heard from within `heard_within`
    /// (this one always is).
    pub(crate) fn with_balance<R>(
        &self,
        heard_within: Duration,
        f: impl FnOnce(&mut crate::balance::Board, &dyn Fn(u64) -> bool) -> R,
    ) -> Option<R> {
        let mut v = self.view.write().ok()?;
        let now = Instant::now();
        let ClusterView {
            balance, last_seen, ..
        } = &mut *v;
        let me = self.me;
        let alive = |b: u64| {
            b == me
                || last_seen
                    .get(&b)
                    .is_some_and(|t| now.saturating_duration_since(*t) < heard_within)
        };
        Some(f(balance, &alive))
    }

    /// The leader of Raft group `group`, as last seen.
    pub(crate) fn leader_of(&self, group: u64) -> Option<u64> {
        let v = self.view.read().ok()?;
        v.leaders.get(&group).and_then(|l| l.0)
    }

    /// The error telling a client the controller is elsewhere.
    pub(crate) fn not_controller(&self, leader: Option<u64>) -> Error {
        let hint = leader.and_then(|l| {
            self.broker_endpoint(l, 0).map(|endpoint| LeaderHint {
                broker: l,
                shard: 0,
                endpoint,
            })
        });
        Error::NotController { leader, hint }
    }

    /// The error telling a client that `leader` (if known) leads the
    /// partition.
    pub(crate) fn not_leader(&self, topic: &str, partition: u32, leader: Option<u64>) -> Error {
        let shard = shard_for(topic, partition, self.shards);
        let hint = leader.and_then(|l| {
            self.broker_endpoint(l, shard).map(|endpoint| LeaderHint {
                broker: l,
                shard: shard as u32,
                endpoint,
            })
        });
        match hint {
            Some(hint) => Error::NotLeader {
                topic: topic.to_owned(),
                partition,
                hint,
            },
            None => Error::NoLeader {
                topic: topic.to_owned(),
                partition,
            },
        }
    }

    /// The error for a partition that lives on `shard` of this broker.
    pub(crate) fn other_shard(&self, topic: &str, partition: u32, shard: usize) -> Error {
        Error::OtherShard {
            topic: topic.to_owned(),
            partition,
            hint: LeaderHint {
                broker: self.me,
                shard: shard as u32,
                endpoint: self.endpoint(shard),
            },
        }
    }

    /// Every broker with its client endpoints (metadata).
    pub(crate) fn brokers(&self) -> Vec<BrokerInfo> {
        self.brokers
            .iter()
            .filter_map(|&b| {
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
            .collect()
    }

    /// Every broker, alive or not (cluster status).
    pub(crate) fn broker_status(&self) -> Vec<BrokerStatus> {
        let now = Instant::now();
        self.brokers
            .iter()
            .map(|&b| {
                let seen = if b == self.me {
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
            .collect()
    }

    /// A topic's metadata with the leaders as last seen.
    pub(crate) fn topic_metadata(&self, name: &str, topic: Option<&TopicRecord>) -> TopicMetadata {
        let Some(t) = topic else {
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
}
