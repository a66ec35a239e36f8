//! The core thread: keeps the latest sample of every shard, and once a
//! second puts together the `"sample"` frame of docs/TELEMETRY.md (built once,
//! shared by every dashboard as an `Arc<str>`), turns events into `"event"`
//! frames as they come, and derives the events no shard sees alone: a peer
//! up or down (its first lane up, its last lane down, over all shards) and
//! the disk-full state entered or left. It also answers the HTTP routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{BrokerSample, ClusterSample, Event, ShardSample, Telemetry};
use crate::http::{Hub, Response, Routes};

/// The protocol version of every frame and answer.
pub const PROTOCOL_VERSION: u64 = 1;
/// How often a sample frame goes out.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What the core needs to know of its broker.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: u64,
    /// Every configured broker id (this one included).
    pub brokers: Vec<u64>,
    /// This broker's advertised client and telemetry addresses.
    pub client: String,
    pub http: String,
    pub data_dir: PathBuf,
    /// Free space below which appends are refused.
    pub floor_bytes: u64,
}

/// The data directory's file system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disk {
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub floor_bytes: u64,
    pub full: bool,
}

/// What the routes read: the latest of everything.
struct View {
    settings: Settings,
    started: Instant,
    latest: BTreeMap<usize, ShardSample>,
    disk: Disk,
}

impl View {
    fn cluster(&self) -> ClusterSample {
        match self.latest.get(&0).and_then(|s| s.cluster.clone()) {
            Some(c) => c,
            // Before shard 0's first sample: this broker alone is known.
            None => ClusterSample {
                controller: None,
                controller_term: 0,
                brokers: self
                    .settings
                    .brokers
                    .iter()
                    .map(|&id| {
                        let me = id == self.settings.broker;
                        BrokerSample {
                            id,
                            client: me.then(|| self.settings.client.clone()),
                            http: me.then(|| self.settings.http.clone()),
                            alive: me,
                        }
                    })
                    .collect(),
            },
        }
    }
}

/// Starts the core thread and its HTTP server on `listener`.
pub fn start(settings: Settings, listener: TcpListener) -> std::io::Result<Telemetry> {
    let (telemetry, samples, events) = Telemetry::channels();
    let events_dropped = telemetry.events_dropped();
    let hub = Arc::new(Hub::default());
    let view = Arc::new(Mutex::new(View {
        settings,
        started: Instant::now(),
        latest: BTreeMap::new(),
        disk: Disk::default(),
    }));
    crate::http::serve(
        listener,
        Arc::new(TelemetryRoutes { view: view.clone() }),
        hub.clone(),
    )?;
    std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(move || run(&view, &hub, &samples, &events, &events_dropped))?;
    Ok(telemetry)
}

fn lock(view: &Mutex<View>) -> std::sync::MutexGuard<'_, View> {
    view.lock().unwrap_or_else(|p| p.into_inner())
}

/// The loop: samples in, events in, a frame out every second. Ends when
/// every shard has dropped its sender (the process is stopping). Events
/// the shards dropped (`events_dropped`) take `seq` numbers of their own,
/// so a page sees a gap where events were lost.
fn run(
    view: &Mutex<View>,
    hub: &Hub,
    samples: &flume::Receiver<ShardSample>,
    events: &flume::Receiver<Event>,
    events_dropped: &AtomicU64,
) {
    let mut derived = Derived::default();
    let mut seq = 0u64;
    let broker = lock(view).settings.broker;
    let mut next = Instant::now() + SAMPLE_INTERVAL;
    loop {
        let got = flume::Selector::new()
            .recv(samples, |s| s.map(|s| Got::Sample(Box::new(s))))
            .recv(events, |e| e.map(Got::Event))
            .wait_deadline(next);
        match got {
            Ok(Ok(Got::Sample(s))) => {
                lock(view).latest.insert(s.shard, *s);
            }
            Ok(Ok(Got::Event(e))) => {
                seq += events_dropped.swap(0, Ordering::Relaxed);
                let frame = event_frame(broker, seq, now_ms(), &e);
                seq += 1;
                hub.publish(frame, true);
            }
            Ok(Err(_)) => {
                if samples.is_disconnected() && events.is_disconnected() {
                    return;
                }
                // One side closed: wait for the other without spinning.
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {} // the deadline
        }
        if Instant::now() < next {
            continue;
        }
        next += SAMPLE_INTERVAL;
        if next < Instant::now() {
            next = Instant::now() + SAMPLE_INTERVAL;
        }
        let (frame, found) = {
            let mut v = lock(view);
            v.disk = disk(&v.settings, &v.latest);
            let frame = sample_frame(&v, now_ms());
            (frame, derived.update(&v.latest, v.disk))
        };
        for e in found {
            let frame = derived_frame(broker, seq, now_ms(), &e);
            seq += 1;
            hub.publish(frame, true);
        }
        let frame: Arc<str> = Arc::from(frame.to_string());
        hub.set_greeting(frame.clone());
        hub.publish(frame, false);
    }
}

enum Got {
    Sample(Box<ShardSample>),
    Event(Event),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Free space from `statvfs`, used bytes from the partitions' sizes.
fn disk(settings: &Settings, latest: &BTreeMap<usize, ShardSample>) -> Disk {
    let used_bytes = latest
        .values()
        .flat_map(|s| &s.partitions)
        .map(|p| p.size_bytes)
        .sum();
    // Unknown (statvfs failed): reported as 0, and not by itself "full".
    let free = free_bytes(&settings.data_dir);
    Disk {
        used_bytes,
        free_bytes: free.unwrap_or(0),
        floor_bytes: settings.floor_bytes,
        full: latest.values().any(|s| s.disk_full)
            || free.is_some_and(|f| f < settings.floor_bytes),
    }
}

/// `f_bavail × f_frsize` of the file system holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` writes into a zeroed struct we own; `path` is a
    // NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Events the core finds by comparing samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivedEvent {
    BrokerUp { peer: u64 },
    BrokerDown { peer: u64 },
    DiskFull { free_bytes: u64, floor_bytes: u64 },
    DiskOk { free_bytes: u64, floor_bytes: u64 },
}

/// The state those comparisons need.
#[derive(Debug, Default)]
pub struct Derived {
    peers_up: BTreeSet<u64>,
    disk_full: bool,
}

impl Derived {
    /// The events since the last call: a peer is up while any lane of any
    /// shard to it is up.
    pub fn update(
        &mut self,
        latest: &BTreeMap<usize, ShardSample>,
        disk: Disk,
    ) -> Vec<DerivedEvent> {
        let mut out = Vec::new();
        let up: BTreeSet<u64> = latest
            .values()
            .flat_map(|s| &s.peer_lanes)
            .filter(|l| l.up)
            .map(|l| l.peer)
            .collect();
        for &peer in up.difference(&self.peers_up) {
            out.push(DerivedEvent::BrokerUp { peer });
        }
        for &peer in self.peers_up.difference(&up) {
            out.push(DerivedEvent::BrokerDown { peer });
        }
        self.peers_up = up;
        if disk.full != self.disk_full {
            let (free_bytes, floor_bytes) = (disk.free_bytes, disk.floor_bytes);
            out.push(if disk.full {
                DerivedEvent::DiskFull {
                    free_bytes,
                    floor_bytes,
                }
            } else {
                DerivedEvent::DiskOk {
                    free_bytes,
                    floor_bytes,
                }
            });
            self.disk_full = disk.full;
        }
        out
    }
}

fn event_base(broker: u64, seq: u64, ts_ms: u64, kind: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("v".into(), json!(PROTOCOL_VERSION));
    m.insert("type".into(), json!("event"));
    m.insert("broker".into(), json!(broker));
    m.insert("ts_ms".into(), json!(ts_ms));
    m.insert("seq".into(), json!(seq));
    m.insert("kind".into(), json!(kind));
    m
}

fn finish(mut m: serde_json::Map<String, Value>, fields: Value) -> Arc<str> {
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Arc::from(Value::Object(m).to_string())
}

/// An event frame (docs/TELEMETRY.md, "event").
pub fn event_frame(broker: u64, seq: u64, ts_ms: u64, e: &Event) -> Arc<str> {
    let (kind, fields) = match e {
        Event::LeaderChanged {
            topic,
            partition,
            term,
            leader,
            previous_leader,
        } => (
            "leader_changed",
            json!({ "topic": topic, "partition": partition, "term": term,
                    "leader": leader, "previous_leader": previous_leader }),
        ),
        Event::ElectionStarted {
            topic,
            partition,
            term,
            candidate,
        } => (
            "election_started",
            json!({ "topic": topic, "partition": partition, "term": term, "candidate": candidate }),
        ),
        Event::TopicCreated {
            topic,
            partitions,
            replication_factor,
        } => (
            "topic_created",
            json!({ "topic": topic, "partitions": partitions,
                    "replication_factor": replication_factor }),
        ),
        Event::TopicDeleted { topic } => ("topic_deleted", json!({ "topic": topic })),
        Event::SnapshotStarted {
            topic,
            partition,
            to,
            bytes_total,
        } => (
            "snapshot_started",
            json!({ "topic": topic, "partition": partition, "to": to, "bytes_total": bytes_total }),
        ),
        Event::SnapshotFinished {
            topic,
            partition,
            to,
            bytes_total,
            ok,
            duration_ms,
        } => (
            "snapshot_finished",
            json!({ "topic": topic, "partition": partition, "to": to, "bytes_total": bytes_total,
                    "ok": ok, "duration_ms": duration_ms }),
        ),
        Event::GroupRebalanced {
            group,
            generation,
            members,
            member,
            why,
        } => (
            "group_rebalanced",
            json!({ "group": group, "generation": generation, "members": members,
                    "member": member, "why": why }),
        ),
    };
    finish(event_base(broker, seq, ts_ms, kind), fields)
}

fn derived_frame(broker: u64, seq: u64, ts_ms: u64, e: &DerivedEvent) -> Arc<str> {
    let (kind, fields) = match e {
        DerivedEvent::BrokerUp { peer } => ("broker_up", json!({ "peer": peer })),
        DerivedEvent::BrokerDown { peer } => ("broker_down", json!({ "peer": peer })),
        DerivedEvent::DiskFull {
            free_bytes,
            floor_bytes,
        } => (
            "disk_full",
            json!({ "free_bytes": free_bytes, "floor_bytes": floor_bytes }),
        ),
        DerivedEvent::DiskOk {
            free_bytes,
            floor_bytes,
        } => (
            "disk_ok",
            json!({ "free_bytes": free_bytes, "floor_bytes": floor_bytes }),
        ),
    };
    finish(event_base(broker, seq, ts_ms, kind), fields)
}

/// The sample frame (docs/TELEMETRY.md, "sample").
fn sample_frame(v: &View, ts_ms: u64) -> Value {
    let cluster = v.cluster();
    let shards: Vec<Value> = v
        .latest
        .values()
        .map(|s| {
            let p = s.produce_latency_us;
            json!({
                "shard": s.shard,
                "produce_requests_total": s.produce_requests,
                "fetch_requests_total": s.fetch_requests,
                "records_in_total": s.records_in,
                "records_out_total": s.records_out,
                "bytes_in_total": s.produce_bytes,
                "bytes_out_total": s.fetch_bytes,
                "errors_total": s.errors_by_code,
                "connections": s.connections,
                "busy_fraction": s.busy_fraction.clamp(0.0, 1.0),
                "task_queue_latency_us_max": s.task_queue_latency_us_max,
                "produce_latency_us_p50": p.map(|p| p.p50),
                "produce_latency_us_p90": p.map(|p| p.p90),
                "produce_latency_us_p99": p.map(|p| p.p99),
                "produce_latency_us_p999": p.map(|p| p.p999),
                "peer_lanes": s.peer_lanes,
                "compactions_total": s.compactions,
                "compaction_segments_rewritten_total": s.compaction_segments_rewritten,
                "compaction_bytes_before_total": s.compaction_bytes_before,
                "compaction_bytes_after_total": s.compaction_bytes_after,
                "snapshot_transfers_started_total": s.snapshot_transfers_started,
                "snapshot_transfers_finished_total": s.snapshot_transfers_finished,
                "snapshot_transfers_resumed_total": s.snapshot_transfers_resumed,
                "snapshot_transfers_failed_total": s.snapshot_transfers_failed,
                "snapshot_bytes_sent_total": s.snapshot_bytes_sent,
                "snapshot_bytes_received_total": s.snapshot_bytes_received,
                "snapshot_installs_total": s.snapshot_installs,
            })
        })
        .collect();
    let mut partitions: Vec<&super::PartitionSample> =
        v.latest.values().flat_map(|s| &s.partitions).collect();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    json!({
        "v": PROTOCOL_VERSION,
        "type": "sample",
        "broker": v.settings.broker,
        "ts_ms": ts_ms,
        "uptime_ms": v.started.elapsed().as_millis() as u64,
        "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
        "controller": cluster.controller,
        "controller_term": cluster.controller_term,
        "shards": shards,
        "partitions": partitions,
        "disk": {
            "used_bytes": v.disk.used_bytes,
            "free_bytes": v.disk.free_bytes,
            "floor_bytes": v.disk.floor_bytes,
            "budget_bytes": null,
            "full": v.disk.full,
        },
        "groups": group_leases(v, ts_ms),
        "group_lag": group_lag(v),
    })
}

/// Every member lease this broker coordinates (docs/TELEMETRY.md, `groups`).
fn group_leases(v: &View, ts_ms: u64) -> Vec<Value> {
    let mut out: Vec<&super::GroupLeaseSample> =
        v.latest.values().flat_map(|s| &s.group_leases).collect();
    out.sort_by(|a, b| (&a.group, &a.member).cmp(&(&b.group, &b.member)));
    out.into_iter()
        .map(|l| {
            json!({
                "group": l.group,
                "member": l.member,
                "generation": l.generation,
                "partitions": l.partitions.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
                "lease_expires_ms": ts_ms + l.lease_left_ms,
            })
        })
        .collect()
}

/// Each group this broker coordinates with its committed offsets and lag:
/// the high watermark of a partition is the highest this broker's replicas
/// know (its leader's when it leads it), `null` if it holds no replica.
fn group_lag(v: &View) -> Vec<Value> {
    let mut hw: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for p in v.latest.values().flat_map(|s| &s.partitions) {
        let e = hw.entry((p.topic.as_str(), p.partition)).or_default();
        *e = (*e).max(p.high_watermark);
    }
    let mut groups: Vec<&super::GroupOffsetsSample> =
        v.latest.values().flat_map(|s| &s.group_offsets).collect();
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    groups
        .into_iter()
        .map(|g| {
            let mut total = Some(0u64);
            let partitions: Vec<Value> = g
                .offsets
                .iter()
                .map(|(t, p, committed)| {
                    let high = hw.get(&(t.as_str(), *p)).copied();
                    let lag = high.map(|h| h.saturating_sub(*committed));
                    total = total.zip(lag).map(|(a, b)| a + b);
                    json!({"topic": t, "partition": p, "committed": committed,
                           "high_watermark": high, "lag": lag})
                })
                .collect();
            json!({
                "group": g.group,
                "generation": g.generation,
                "members": g.members,
                "partitions": partitions,
                "lag": total,
            })
        })
        .collect()
}

/// `GET /api/cluster`.
fn cluster_answer(v: &View) -> Value {
    let c = v.cluster();
    json!({
        "v": PROTOCOL_VERSION,
        "broker": v.settings.broker,
        "controller": c.controller,
        "brokers": c.brokers.iter().map(|b| json!({
            "id": b.id,
            "client": b.client,
            "http": b.http,
            "alive": b.alive,
        })).collect::<Vec<_>>(),
    })
}

struct TelemetryRoutes {
    view: Arc<Mutex<View>>,
}

impl Routes for TelemetryRoutes {
    fn get(&self, path: &str) -> Option<Response> {
        let json = |v: Value| Response::ok("application/json", v.to_string());
        match path {
            "/metrics" => {
                let v = lock(&self.view);
                Some(Response::ok(
                    "text/plain; version=0.0.4",
                    super::metrics::prometheus(v.settings.broker, &v.latest, v.disk),
                ))
            }
            "/api/status" => {
                let v = lock(&self.view);
                Some(json(json!({
                    "broker": v.settings.broker,
                    "shards": v.latest.values().collect::<Vec<_>>(),
                })))
            }
            "/api/cluster" => Some(json(cluster_answer(&lock(&self.view)))),
            _ => {
                let (content_type, body) = crate::dashboard::file(path)?;
                let mut r = Response::ok(content_type, body);
                // Vite names assets by content hash: cache them.
                if path.starts_with("/assets/") {
                    r.cache = Some("public, max-age=31536000, immutable");
                }
                Some(r)
            }
        }
    }
}

/// The address to advertise for a listen address (kept as is: the page
/// copes with an unspecified host by using its own).
pub fn advertised(addr: SocketAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
mod tests {
    use super::super::{LaneSample, PartitionSample};
    use super::*;

    fn lane(peer: u64, up: bool) -> LaneSample {
        LaneSample {
            peer,
            lane: "control",
            up,
            frames_queued: 0,
            frames_dropped_total: 0,
            reconnects_total: 0,
        }
    }

    fn shard(id: usize, lanes: Vec<LaneSample>) -> ShardSample {
        ShardSample {
            shard: id,
            peer_lanes: lanes,
            ..ShardSample::default()
        }
    }

    #[test]
    fn a_peer_is_up_while_any_lane_of_any_shard_is_and_disk_changes_are_events() {
        let mut d = Derived::default();
        let disk = Disk {
            free_bytes: 10,
            floor_bytes: 5,
            ..Disk::default()
        };
        let mut latest = BTreeMap::new();
        latest.insert(0, shard(0, vec![lane(2, true), lane(3, false)]));
        latest.insert(1, shard(1, vec![lane(2, false), lane(3, false)]));
        assert_eq!(
            d.update(&latest, disk),
            vec![DerivedEvent::BrokerUp { peer: 2 }]
        );
        assert_eq!(d.update(&latest, disk), vec![]);
        // Peer 2 keeps one lane up on shard 1: still up. Peer 3 comes up.
        latest.insert(0, shard(0, vec![lane(2, false), lane(3, true)]));
        latest.insert(1, shard(1, vec![lane(2, true), lane(3, false)]));
        assert_eq!(
            d.update(&latest, disk),
            vec![DerivedEvent::BrokerUp { peer: 3 }]
        );
        latest.insert(1, shard(1, vec![lane(2, false), lane(3, false)]));
        let full = Disk { full: true, ..disk };
        assert_eq!(
            d.update(&latest, full),
            vec![
                DerivedEvent::BrokerDown { peer: 2 },
                DerivedEvent::DiskFull {
                    free_bytes: 10,
                    floor_bytes: 5
                }
            ]
        );
        assert!(matches!(
            d.update(&latest, disk)[..],
            [DerivedEvent::DiskOk { .. }]
        ));
    }

    fn view() -> View {
        View {
            settings: Settings {
                broker: 1,
                brokers: vec![1, 2, 3],
                client: "127.0.0.1:9092".into(),
                http: "127.0.0.1:8080".into(),
                data_dir: std::env::temp_dir(),
                floor_bytes: 100,
            },
            started: Instant::now(),
            latest: BTreeMap::new(),
            disk: Disk::default(),
        }
    }

    #[test]
    fn frames_follow_the_protocol_document() {
        let mut v = view();
        let mut s = shard(0, vec![lane(2, true)]);
        s.records_in = 7;
        s.errors_by_code.insert("NotLeader", 2);
        s.busy_fraction = 1.5; // clamped
        s.partitions.push(PartitionSample {
            topic: "b".into(),
            partition: 1,
            shard: 0,
            role: "leader",
            leader: Some(1),
            term: 3,
            replicas: vec![],
            commit_index: 9,
            high_watermark: 8,
            log_start_offset: 0,
            log_end_offset: 8,
            size_bytes: 4096,
            snapshot_transfer: None,
            clean_offset: None,
        });
        let mut a = s.partitions[0].clone();
        a.topic = "a".into();
        let mut s1 = shard(1, vec![]);
        s1.partitions.push(a);
        v.latest.insert(0, s);
        v.latest.insert(1, s1);
        v.disk = disk(&v.settings, &v.latest);
        let f = sample_frame(&v, 42);
        assert_eq!(
            (f["v"].as_u64(), f["type"].as_str()),
            (Some(1), Some("sample"))
        );
        assert_eq!(f["ts_ms"], 42);
        assert_eq!(f["shards"][0]["records_in_total"], 7);
        assert_eq!(f["shards"][0]["errors_total"]["NotLeader"], 2);
        assert_eq!(f["shards"][0]["busy_fraction"], 1.0);
        assert!(f["shards"][0]["produce_latency_us_p99"].is_null());
        assert_eq!(f["shards"][0]["peer_lanes"][0]["frames_dropped_total"], 0);
        // Partitions of all shards, sorted by topic then partition.
        assert_eq!(f["partitions"][0]["topic"], "a");
        assert_eq!(f["partitions"][1]["snapshot_transfer"], Value::Null);
        assert_eq!(f["partitions"][1]["clean_offset"], Value::Null);
        assert_eq!(f["shards"][0]["compactions_total"], 0);
        assert_eq!(f["disk"]["used_bytes"], 8192);
        assert_eq!(f["groups"], json!([]));
        assert_eq!(f["group_lag"], json!([]));
        // A coordinating shard's leases and offsets: expiry in epoch ms,
        // lag against the high watermark this broker knows (8 for b-1),
        // null for a partition it holds no replica of.
        let mut s2 = shard(2, vec![]);
        s2.group_leases.push(super::super::GroupLeaseSample {
            group: "g".into(),
            member: "m-1".into(),
            generation: 4,
            partitions: vec![("b".into(), 1)],
            lease_left_ms: 2500,
        });
        s2.group_offsets.push(super::super::GroupOffsetsSample {
            group: "g".into(),
            generation: 4,
            members: 1,
            offsets: vec![("b".into(), 1, 5), ("zz".into(), 0, 3)],
        });
        v.latest.insert(2, s2);
        let f = sample_frame(&v, 1000);
        assert_eq!(
            f["groups"],
            json!([{"group": "g", "member": "m-1", "generation": 4,
                    "partitions": [{"topic": "b", "partition": 1}], "lease_expires_ms": 3500}])
        );
        let lag = &f["group_lag"][0];
        assert_eq!(lag["partitions"][0]["lag"], 3);
        assert_eq!(lag["partitions"][0]["high_watermark"], 8);
        assert!(lag["partitions"][1]["lag"].is_null());
        assert!(lag["lag"].is_null(), "unknown when a partition's is: {lag}");
        // Before shard 0 has a cluster view, the broker knows only itself.
        let c = cluster_answer(&v);
        assert_eq!(c["brokers"].as_array().unwrap().len(), 3);
        assert_eq!(c["brokers"][0]["http"], "127.0.0.1:8080");
        assert_eq!(c["brokers"][1]["alive"], false);
        let e: Value = serde_json::from_str(&event_frame(
            1,
            5,
            42,
            &Event::LeaderChanged {
                topic: None,
                partition: None,
                term: 4,
                leader: 1,
                previous_leader: Some(2),
            },
        ))
        .unwrap();
        assert_eq!(
            (e["type"].as_str(), e["kind"].as_str(), e["seq"].as_u64()),
            (Some("event"), Some("leader_changed"), Some(5))
        );
        assert!(e["topic"].is_null());
        assert_eq!(e["previous_leader"], 2);
        let e: Value = serde_json::from_str(&event_frame(
            1,
            6,
            43,
            &Event::GroupRebalanced {
                group: "g".into(),
                generation: 7,
                members: 2,
                member: "m-1".into(),
                why: "expired",
            },
        ))
        .unwrap();
        assert_eq!(e["kind"], "group_rebalanced");
        assert_eq!(
            (
                &e["group"],
                &e["generation"],
                &e["members"],
                &e["member"],
                &e["why"]
            ),
            (
                &json!("g"),
                &json!(7),
                &json!(2),
                &json!("m-1"),
                &json!("expired")
            )
        );
    }

    #[test]
    fn events_a_shard_dropped_leave_a_gap_in_seq() {
        let queued = super::super::EVENTS_QUEUED_MAX;
        let extra = 3;
        let (t, samples, events) = Telemetry::channels();
        for i in 0..queued + extra {
            t.event(Event::TopicDeleted {
                topic: format!("t{i}"),
            });
        }
        let hub = Arc::new(Hub::default());
        let frames = hub.listen_for_tests();
        let (core_hub, dropped) = (hub.clone(), t.events_dropped());
        std::thread::spawn(move || {
            run(&Mutex::new(view()), &core_hub, &samples, &events, &dropped)
        });
        let want = (queued + extra - 1) as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        while last != Some(want) {
            assert!(
                Instant::now() < deadline,
                "last event's seq {last:?}: the {extra} dropped ones left no gap"
            );
            for f in frames() {
                let f: Value = serde_json::from_str(&f).unwrap();
                if f["type"] == "event" {
                    last = f["seq"].as_u64();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(t);
    }

    #[test]
    fn the_core_pushes_samples_and_events_to_websocket_clients() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut settings = view().settings;
        settings.http = addr.to_string();
        let t = start(settings, listener).unwrap();
        let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws")).unwrap();
        t.sample(shard(0, vec![]));
        t.event(Event::TopicDeleted {
            topic: "gone".into(),
        });
        let mut kinds = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(kinds.contains(&"sample".to_string())
            && kinds.contains(&"topic_deleted".to_string()))
        {
            assert!(Instant::now() < deadline, "{kinds:?}");
            let m = ws.read().unwrap().into_text().unwrap();
            let f: Value = serde_json::from_str(&m).unwrap();
            kinds.push(
                f["kind"]
                    .as_str()
                    .or(f["type"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        drop(t);
    }
}
