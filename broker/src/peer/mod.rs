//! The peer transport: Raft messages between the same shard of two brokers.
//!
//! Shard `s` of every broker listens for peers on `peer_listen.port + s` and
//! keeps, towards every other broker, two outbound connections with a task
//! each: the *control* lane (votes, heartbeats, every response) and the
//! *bulk* lane (appends that carry entries). Heartbeats therefore never queue
//! behind bulk data. Each lane has a bounded queue; when it is full (the peer
//! is slow or dead) the message is dropped and Raft's own retransmission
//! (probe, heartbeat, election timers) recovers. A dead peer costs a
//! reconnect with back-off, never a stalled shard. Messages flow one way per
//! connection: a broker answers over its own outbound connection.
//!
//! Authentication: a caller and the listener prove to each other that they
//! hold the cluster secret with HMAC-SHA256 over fresh nonces of both sides
//! before the listener reads any Raft frame (a replayed hello fails: the
//! listener's nonce is new on every connection). Until then frames are
//! limited to [`HELLO_FRAME_BYTES_MAX`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use raft::{MessageBody, NodeId};
use wire::{
    FrameBuf, FrameDecoder, FrameLimits, GroupHeartbeat, GroupHeartbeatAck, HeartbeatBatchRequest,
    HeartbeatBatchResponse, Message,
};

use crate::connection::Counted;
use crate::error::Error;
use crate::telemetry::LaneSample;

mod convert;
mod handshake;

pub use convert::{from_wire, to_wire};
use handshake::connect;
pub(crate) use handshake::read_frame;
pub use handshake::{Identity, PeerAddresses, HELLO_FRAME_BYTES_MAX};

/// Largest peer frame: an append carries at most the Raft message budget
/// (1 MiB) or one batch (16 MiB at most) plus headers.
pub const PEER_FRAME_BYTES_MAX: u32 = 20 << 20;
/// A write that takes longer means the peer stopped reading: reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Control frames queued per peer: heartbeats are coalesced per tick, votes
/// and responses are small.
const CONTROL_QUEUE_MAX: usize = 4096;
/// Bulk frames queued per peer (each at most ~1 MiB of entries).
const BULK_QUEUE_MAX: usize = 64;
/// Frames gathered into one socket write.
const WRITE_GATHER_BYTES: usize = 1 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Peer connections that may be in their handshake at once per listener:
/// a real peer needs two (its lanes) and reconnects rarely; anything past
/// this is closed unread, so unauthenticated callers cannot hold more than
/// 64 × a hello-sized buffer.
const HANDSHAKES_MAX: usize = 64;

/// Counters of one shard's transport.
#[derive(Default)]
pub struct PeerCounters {
    pub frames_sent: Cell<u64>,
    pub frames_dropped: Cell<u64>,
    pub frames_received: Cell<u64>,
    pub rejected_connections: Cell<u64>,
}

/// The state of one lane (one outbound connection to one peer), for
/// telemetry: set by its link task and by [`Outbox::push`].
#[derive(Default)]
pub struct LaneCounters {
    /// Connected and authenticated now (set when the handshake succeeds,
    /// cleared when a write fails: an idle lane to a peer that died stays
    /// up until it next sends).
    pub up: Cell<bool>,
    /// Successful connections so far (reconnects are all but the first).
    pub connects: Cell<u64>,
    /// Frames dropped: the lane's queue was full, or they were queued when
    /// the connection failed (stale: Raft resends).
    pub frames_dropped: Cell<u64>,
}

impl LaneCounters {
    fn connected(&self) {
        self.up.set(true);
        bump(&self.connects);
    }

    /// Reconnects after the first connection.
    pub fn reconnects(&self) -> u64 {
        self.connects.get().saturating_sub(1)
    }
}

/// A lane's queue and its counters.
struct Lane {
    queue: LocalSender<FrameBuf>,
    counters: Rc<LaneCounters>,
}

impl Lane {
    fn sample(&self, peer: NodeId, name: &'static str) -> LaneSample {
        let c = &self.counters;
        LaneSample {
            peer,
            lane: name,
            up: c.up.get(),
            frames_queued: self.queue.len() as u64,
            frames_dropped_total: c.frames_dropped.get(),
            reconnects_total: c.reconnects(),
        }
    }
}

struct Link {
    control: Lane,
    bulk: Lane,
}

/// Lane names as telemetry reports them.
pub const LANE_CONTROL: &str = "control";
pub const LANE_BULK: &str = "bulk";

/// Heartbeats (and answers) [`Outbox::hold`] keeps before it sends them
/// without waiting for a flush: one full batch (`raft::heartbeat::BEATS_PER_BATCH_MAX`,
/// ~100 KiB encoded). A shard's groups make up to half their count per
/// tick (one heartbeat per peer every 2 ticks of 50 ms; every 5 for an
/// idle leader), so a shard of up to ~4,000 busy groups towards two peers
/// flushes once per tick.
const HELD_BEATS_MAX: usize = raft::heartbeat::BEATS_PER_BATCH_MAX;

/// The outbound side of one shard: a link per peer broker.
pub struct Outbox {
    me: NodeId,
    links: BTreeMap<NodeId, Link>,
    pub counters: Rc<PeerCounters>,
    /// Heartbeats and their answers from [`Outbox::hold`], until
    /// [`Outbox::flush`].
    held: RefCell<Vec<raft::Message>>,
}

/// Where a group driver sends its Raft messages: the [`Outbox`], or a test
/// double that records (and checks) what leaves.
pub trait Transport {
    fn send(&self, msgs: Vec<raft::Message>);
    /// Like [`Transport::send`], but heartbeats and their answers may wait
    /// for the shard's next flush (the end of the tick or of the peer frame
    /// that made them), so those of many groups to one peer leave as one
    /// frame.
    fn hold(&self, msgs: Vec<raft::Message>) {
        self.send(msgs);
    }
}

impl Transport for Outbox {
    fn send(&self, msgs: Vec<raft::Message>) {
        Outbox::send(self, msgs);
    }
    fn hold(&self, msgs: Vec<raft::Message>) {
        Outbox::hold(self, msgs);
    }
}

impl Outbox {
    /// Starts two link tasks per peer (every broker in `peers` but us).
    pub fn start(
        identity: Rc<Identity>,
        peers: &BTreeMap<NodeId, SocketAddr>,
        tq: glommio::TaskQueueHandle,
    ) -> Outbox {
        let counters = Rc::new(PeerCounters::default());
        let mut links = BTreeMap::new();
        for (&id, addr) in peers {
            if id == identity.node_id {
                continue;
            }
            let addr = SocketAddr::new(addr.ip(), addr.port() + identity.shard as u16);
            let (control, control_rx) = local_channel::new_bounded(CONTROL_QUEUE_MAX);
            let (bulk, bulk_rx) = local_channel::new_bounded(BULK_QUEUE_MAX);
            let control = Lane {
                queue: control,
                counters: Rc::new(LaneCounters::default()),
            };
            let bulk = Lane {
                queue: bulk,
                counters: Rc::new(LaneCounters::default()),
            };
            let lanes = [
                (control_rx, control.counters.clone()),
                (bulk_rx, bulk.counters.clone()),
            ];
            for (rx, lane) in lanes {
                let task = link_task(identity.clone(), id, addr, rx, counters.clone(), lane);
                match glommio::spawn_local_into(task, tq) {
                    Ok(t) => {
                        t.detach();
                    }
                    Err(e) => {
                        tracing::error!(broker = identity.node_id, shard = identity.shard, peer = id, error = %e, "starting a peer link")
                    }
                }
            }
            links.insert(id, Link { control, bulk });
        }
        Outbox {
            me: identity.node_id,
            links,
            counters,
            held: RefCell::default(),
        }
    }

    /// Sends `msgs` but keeps their heartbeats and heartbeat answers until
    /// [`Outbox::flush`] (or until [`HELD_BEATS_MAX`] are kept), so that the
    /// beats of every group a tick or a peer frame touched go to each peer
    /// in one frame. The shard flushes after every tick and every peer
    /// frame it delivered, so nothing waits longer than one tick.
    pub fn hold(&self, mut msgs: Vec<raft::Message>) {
        let full = {
            let mut held = self.held.borrow_mut();
            msgs.retain(|m| {
                let beat = matches!(
                    m.body,
                    MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse
                );
                if beat {
                    held.push(m.clone());
                }
                !beat
            });
            held.len() >= HELD_BEATS_MAX
        };
        if !msgs.is_empty() {
            self.send(msgs);
        }
        if full {
            self.flush();
        }
    }

    /// Sends what [`Outbox::hold`] kept: per peer, one heartbeat frame and
    /// one answer frame (more past `raft::BEATS_PER_BATCH_MAX` beats).
    pub fn flush(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if !held.is_empty() {
            self.send(held);
        }
    }

    /// Sends Raft messages: heartbeats to one peer coalesced into one frame,
    /// appends with entries on the bulk lane, the rest on the control lane.
    /// Never waits: a full lane drops the frame.
    pub fn send(&self, mut msgs: Vec<raft::Message>) {
        for batch in raft::coalesce(&mut msgs) {
            let (beats, acks): (Vec<&raft::Beat>, Vec<&raft::Beat>) =
                batch.beats.iter().partition(|b| !b.response);
            if !beats.is_empty() {
                let m = HeartbeatBatchRequest {
                    from: batch.from,
                    heartbeats: beats
                        .iter()
                        .map(|b| GroupHeartbeat {
                            group: b.group_id,
                            term: b.term,
                            commit_index: b.commit,
                        })
                        .collect(),
                };
                self.push(batch.to, false, m.into());
            }
            if !acks.is_empty() {
                let m = HeartbeatBatchResponse {
                    from: batch.from,
                    acks: acks
                        .iter()
                        .map(|b| GroupHeartbeatAck {
                            group: b.group_id,
                            term: b.term,
                            last_index: 0,
                        })
                        .collect(),
                };
                self.push(batch.to, false, m.into());
            }
        }
        for m in msgs {
            let to = m.to;
            let bulk = on_bulk_lane(&m.body);
            match to_wire(m) {
                Some(w) => self.push(to, bulk, w),
                None => bump(&self.counters.frames_dropped),
            }
        }
    }

    fn push(&self, to: NodeId, bulk: bool, msg: Message) {
        let Some(link) = self.links.get(&to) else {
            if to != self.me {
                bump(&self.counters.frames_dropped);
            }
            return;
        };
        let limits = FrameLimits::new(PEER_FRAME_BYTES_MAX).unwrap_or_default();
        let Ok(frame) = msg.encode(0, limits) else {
            bump(&self.counters.frames_dropped);
            return;
        };
        let lane = if bulk { &link.bulk } else { &link.control };
        if lane.queue.try_send(frame).is_err() {
            bump(&self.counters.frames_dropped);
            bump(&lane.counters.frames_dropped);
        }
    }

    /// Every lane of this shard, sorted by peer, then lane name (`"bulk"`
    /// before `"control"`).
    pub fn lane_samples(&self) -> Vec<LaneSample> {
        let mut out = Vec::with_capacity(2 * self.links.len());
        for (&peer, link) in &self.links {
            out.push(link.bulk.sample(peer, LANE_BULK));
            out.push(link.control.sample(peer, LANE_CONTROL));
        }
        out
    }
}

/// Whether a message goes on the bulk lane. Every append does, with
/// entries or without: an empty append (a probe, a commit update) sent on
/// the control lane would overtake the appends queued on the bulk lane,
/// and the follower would reject the entries that arrive after it (their
/// predecessor still in flight), dropping the leader back to probing.
/// Heartbeats and every response stay on the control lane.
fn on_bulk_lane(body: &MessageBody) -> bool {
    matches!(body, MessageBody::Append { .. })
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// One lane to one peer: connect, authenticate, write queued frames; on any
/// failure drop what is queued (Raft resends) and reconnect with back-off.
async fn link_task(
    identity: Rc<Identity>,
    peer: NodeId,
    addr: SocketAddr,
    rx: LocalReceiver<FrameBuf>,
    counters: Rc<PeerCounters>,
    lane: Rc<LaneCounters>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut logged = false;
    loop {
        match connect(&identity, peer, addr).await {
            Ok(mut stream) => {
                backoff = BACKOFF_MIN;
                lane.connected();
                if logged {
                    tracing::info!(broker = identity.node_id, shard = identity.shard, peer, %addr, "connected to a peer");
                    logged = false;
                }
                let mut buf: Vec<u8> = Vec::with_capacity(WRITE_GATHER_BYTES);
                loop {
                    let Some(first) = rx.recv().await else {
                        return; // the shard is gone
                    };
                    buf.clear();
                    buf.extend_from_slice(&first);
                    let mut frames = 1;
                    while buf.len() < WRITE_GATHER_BYTES {
                        match futures_lite::future::poll_once(rx.recv()).await {
                            Some(Some(f)) => {
                                buf.extend_from_slice(&f);
                                frames += 1;
                            }
                            Some(None) => return,
                            None => break,
                        }
                    }
                    let wrote = glommio::timer::timeout(WRITE_TIMEOUT, async {
                        stream.write_all(&buf).await.map_err(Into::into)
                    })
                    .await;
                    if let Err(e) = wrote {
                        tracing::info!(broker = identity.node_id, shard = identity.shard, peer, error = %e, "peer write failed; reconnecting");
                        break;
                    }
                    counters
                        .frames_sent
                        .set(counters.frames_sent.get() + frames);
                }
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(broker = identity.node_id, shard = identity.shard, peer, %addr, error = %e, "peer unreachable; retrying");
                    logged = true;
                }
            }
        }
        lane.up.set(false);
        // Whatever queued while disconnected is stale: Raft resends.
        while let Some(Some(_)) = futures_lite::future::poll_once(rx.recv()).await {
            bump(&counters.frames_dropped);
            bump(&lane.frames_dropped);
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// What the listener hands to the shard.
pub trait Inbound {
    /// A peer proved itself; with the addresses its hello signed.
    fn peer_up(&self, node: NodeId, addresses: &PeerAddresses);
    /// Raft messages from an authenticated peer.
    fn deliver(&self, msgs: Vec<raft::Message>);
    /// An authenticated peer opened a snapshot transfer connection: serve
    /// it (the connection is the transfer's alone). The default closes it.
    fn serve_snapshot(
        &self,
        _from: NodeId,
        _request: wire::SnapshotFetchRequest,
        _stream: TcpStream,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async {})
    }
}

/// Opens a snapshot transfer connection to `peer`'s shard at `addr`:
/// authenticated like a lane, but carrying one transfer only (the caller
/// sends its `SnapshotFetchRequest` first).
pub async fn connect_transfer(
    identity: &Identity,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<TcpStream, Error> {
    connect(identity, peer, addr).await
}

/// Accepts peer connections on `addr` until `stop` resolves.
pub async fn listen<I: Inbound + 'static>(
    listener: TcpListener,
    identity: Rc<Identity>,
    peers: Rc<BTreeMap<NodeId, SocketAddr>>,
    inbound: Rc<I>,
    counters: Rc<PeerCounters>,
) {
    let handshakes = Rc::new(Cell::new(0usize));
    // Strangers cannot take the handshake slots that the hosts of
    // configured peers need to reconnect (every host counts as a peer host
    // if a peer is configured by a wildcard address).
    let hosts: Vec<std::net::IpAddr> = peers.values().map(|a| a.ip().to_canonical()).collect();
    let any_host = hosts.iter().any(|ip| ip.is_unspecified());
    let mut backoff = Duration::ZERO;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                backoff = Duration::ZERO;
                let from = stream.peer_addr().map(|a| a.ip().to_canonical()).ok();
                let known = any_host || from.is_some_and(|ip| hosts.contains(&ip));
                // Strangers (NAT, another address of a peer) may use half
                // the slots; configured peer hosts always find room.
                let cap = if known {
                    HANDSHAKES_MAX
                } else {
                    HANDSHAKES_MAX / 2
                };
                if handshakes.get() >= cap {
                    bump(&counters.rejected_connections);
                    drop(stream);
                    continue;
                }
                let slot = Counted::new(&handshakes);
                glommio::spawn_local(serve_peer(
                    stream,
                    identity.clone(),
                    peers.clone(),
                    inbound.clone(),
                    counters.clone(),
                    slot,
                ))
                .detach();
            }
            Err(e) => {
                // Out of descriptors, most likely: back off, say so once.
                if backoff.is_zero() {
                    tracing::warn!(broker = identity.node_id, shard = identity.shard, error = %e, "peer accept failed; backing off");
                }
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                glommio::timer::sleep(backoff).await;
            }
        }
    }
}

async fn serve_peer<I: Inbound>(
    mut stream: TcpStream,
    identity: Rc<Identity>,
    peers: Rc<BTreeMap<NodeId, SocketAddr>>,
    inbound: Rc<I>,
    counters: Rc<PeerCounters>,
    slot: Counted,
) {
    let who = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let mut decoder = match FrameLimits::new(HELLO_FRAME_BYTES_MAX) {
        Ok(l) => FrameDecoder::new(l),
        Err(_) => return,
    };
    // Small until the peer proved itself.
    let mut chunk = vec![0u8; HELLO_FRAME_BYTES_MAX as usize];
    let handshake =
        handshake::accept(&mut stream, &mut decoder, &mut chunk, &identity, &peers).await;
    drop(slot);
    let (node, addresses) = match handshake {
        Ok(x) => x,
        Err(e) => {
            bump(&counters.rejected_connections);
            tracing::warn!(broker = identity.node_id, shard = identity.shard, from = %who, error = %e, "rejected a peer connection");
            return;
        }
    };
    inbound.peer_up(node, &addresses);
    chunk.resize(READ_CHUNK_BYTES, 0);
    let limits = FrameLimits::new(PEER_FRAME_BYTES_MAX).unwrap_or_default();
    decoder.set_limits(limits);
    loop {
        let frame = match read_frame(&mut stream, &mut decoder, &mut chunk).await {
            Ok(f) => f,
            Err(e) => {
                if !matches!(e, Error::PeerClosed) {
                    tracing::info!(broker = identity.node_id, shard = identity.shard, peer = node, error = %e, "closing a peer connection");
                }
                return;
            }
        };
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(broker = identity.node_id, shard = identity.shard, peer = node, error = %e, "bad frame from a peer; closing");
                return;
            }
        };
        bump(&counters.frames_received);
        if let Message::SnapshotFetchRequest(req) = msg {
            // A transfer connection: it carries this one transfer only.
            if req.from != node {
                tracing::warn!(
                    broker = identity.node_id,
                    shard = identity.shard,
                    peer = node,
                    "a snapshot request in another node's name; closing"
                );
                return;
            }
            return inbound.serve_snapshot(node, req, stream).await;
        }
        match from_wire(msg, node, identity.node_id) {
            Ok(msgs) => inbound.deliver(msgs),
            Err(e) => {
                tracing::warn!(broker = identity.node_id, shard = identity.shard, peer = node, error = %e, "bad message from a peer; closing");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::convert::*;
    use super::handshake::*;
    use super::*;
    use raft::{Entry, EntryPayload};
    use wire::AppendEntriesRequest;

    fn round_trip(m: raft::Message) -> raft::Message {
        let w = to_wire(m.clone()).expect("carried");
        let frame = w.encode(7, FrameLimits::default()).unwrap();
        let mut d = FrameDecoder::new(FrameLimits::default());
        d.extend(&frame);
        let back = d.next_frame().unwrap().unwrap().message().unwrap();
        let mut v = from_wire(back, m.from, m.to).unwrap();
        assert_eq!(v.len(), 1);
        v.pop().unwrap()
    }

    #[test]
    fn raft_messages_survive_the_wire() {
        let mut data = wire::RecordBatchBuilder::new();
        data.push(wire::NewRecord {
            value: Some(b"hello"),
            ..Default::default()
        });
        let data = data.finish();
        let bodies = vec![
            MessageBody::PreVote {
                last_index: 4,
                last_term: 2,
            },
            MessageBody::Vote {
                last_index: 4,
                last_term: 2,
                transfer: true,
            },
            MessageBody::VoteResponse { reject: true },
            MessageBody::PreVoteResponse { reject: false },
            MessageBody::AppendResponse {
                reject: true,
                index: 9,
                hint_index: 3,
                hint_term: 1,
            },
            MessageBody::TimeoutNow,
            MessageBody::InstallSnapshot {
                meta: raft::SnapshotMeta {
                    index: 90,
                    term: 4,
                    membership: raft::Membership::default(),
                    size_bytes: 28,
                },
                offset: 0,
                data: vec![7; 28],
                done: true,
            },
            MessageBody::SnapshotResponse {
                snapshot_index: 90,
                next_offset: 28,
                done: true,
            },
        ];
        for body in bodies {
            let m = raft::Message {
                group_id: 42,
                from: 1,
                to: 2,
                term: 5,
                body,
            };
            assert_eq!(round_trip(m.clone()), m);
        }
        // Entries come back with term and index stamped into their batches.
        let m = raft::Message {
            group_id: 42,
            from: 1,
            to: 2,
            term: 5,
            body: MessageBody::Append {
                prev_index: 10,
                prev_term: 4,
                entries: vec![
                    Entry {
                        index: 11,
                        term: 5,
                        payload: EntryPayload::Empty,
                    },
                    Entry {
                        index: 12,
                        term: 5,
                        payload: EntryPayload::data(data.clone()),
                    },
                ],
                commit: 10,
            },
        };
        let back = round_trip(m);
        let MessageBody::Append { entries, .. } = back.body else {
            panic!("not an append")
        };
        assert_eq!(entries[0].payload, EntryPayload::Empty);
        let EntryPayload::Data(bytes) = &entries[1].payload else {
            panic!("not data")
        };
        let b = wire::RecordBatch::parse(bytes).unwrap();
        assert_eq!((b.term(), b.entry_index()), (5, 12));
        assert_eq!(
            b.records().next().unwrap().unwrap().value,
            Some(&b"hello"[..])
        );
    }

    #[test]
    fn a_peer_cannot_speak_for_another_node() {
        let w = to_wire(raft::Message {
            group_id: 1,
            from: 3,
            to: 2,
            term: 1,
            body: MessageBody::VoteResponse { reject: false },
        })
        .unwrap();
        let err = from_wire(w, 1, 2).unwrap_err();
        assert!(err.contains("as node 3"), "{err}");
    }

    #[test]
    fn nothing_derived_from_the_secret_leaves_before_authentication() {
        let identity = |secret: &[u8]| {
            Identity::new(
                2,
                1,
                secret.to_vec(),
                "127.0.0.1:9092".into(),
                "127.0.0.1:8080".into(),
                &[1, 2, 3],
            )
        };
        let (a, b) = (identity(b"first secret"), identity(b"second secret"));
        let hello = |i: &Identity| {
            Message::from(i.hello(42, Vec::new()))
                .encode(0, FrameLimits::default())
                .unwrap()
        };
        assert_eq!(
            hello(&a)[..],
            hello(&b)[..],
            "the unauthenticated hello must not depend on the secret"
        );
        assert_eq!(a.cluster_id, identity(b"x").cluster_id);
        let other_cluster = Identity::new(
            2,
            1,
            b"s".to_vec(),
            String::new(),
            String::new(),
            &[1, 2, 4],
        );
        assert_ne!(a.cluster_id, other_cluster.cluster_id);
    }

    #[test]
    fn an_entry_count_beyond_the_bytes_sent_is_refused_without_allocating_it() {
        let m = AppendEntriesRequest {
            group: 1,
            term: 1,
            leader: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            leader_commit: 0,
            entry_count: u32::MAX,
            entries: Vec::new(),
        };
        let err = from_wire(m.into(), 1, 2).unwrap_err();
        assert!(err.contains("entries"), "{err}");
    }

    #[test]
    fn appends_with_and_without_entries_share_one_lane() {
        let append = |entries: Vec<Entry>| MessageBody::Append {
            prev_index: 10,
            prev_term: 1,
            entries,
            commit: 10,
        };
        let entry = Entry {
            index: 11,
            term: 1,
            payload: raft::EntryPayload::Empty,
        };
        assert_eq!(
            on_bulk_lane(&append(Vec::new())),
            on_bulk_lane(&append(vec![entry])),
            "an empty append must not overtake appends that carry entries"
        );
        assert!(!on_bulk_lane(&MessageBody::Heartbeat { commit: 1 }));
        assert!(!on_bulk_lane(&MessageBody::VoteResponse { reject: false }));
    }

    fn on_executor<F, Fut>(test: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(test)
            .unwrap()
            .join()
            .unwrap();
    }

    fn empty_append(to: NodeId) -> raft::Message {
        raft::Message {
            group_id: 1,
            from: 1,
            to,
            term: 1,
            body: MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: Vec::new(),
                commit: 0,
            },
        }
    }

    #[test]
    fn a_lane_to_a_dead_peer_is_down_and_counts_what_it_drops() {
        on_executor(|| async {
            // A port nobody listens on.
            let dead = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let peers = BTreeMap::from([(1, "127.0.0.1:1".parse().unwrap()), (2, dead)]);
            let me = Identity::new(1, 0, b"s".to_vec(), String::new(), String::new(), &[1, 2]);
            let tq = glommio::executor().current_task_queue();
            let outbox = Outbox::start(Rc::new(me), &peers, tq);
            // More appends than the bulk lane holds, before its task runs.
            let extra = 10;
            outbox.send(vec![empty_append(2); BULK_QUEUE_MAX + extra]);
            let lanes = outbox.lane_samples();
            let names: Vec<(u64, &str)> = lanes.iter().map(|l| (l.peer, l.lane)).collect();
            assert_eq!(names, [(2, "bulk"), (2, "control")], "sorted by peer, lane");
            assert_eq!(lanes[0].frames_queued, BULK_QUEUE_MAX as u64);
            assert_eq!(lanes[0].frames_dropped_total, extra as u64);
            assert_eq!(lanes[1].frames_queued, 0);
            assert_eq!(lanes[1].frames_dropped_total, 0);
            assert!(lanes.iter().all(|l| !l.up && l.reconnects_total == 0));
            // The connection fails: what was queued is stale and dropped.
            for _ in 0..200 {
                if outbox.lane_samples()[0].frames_queued == 0 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let bulk = &outbox.lane_samples()[0];
            assert_eq!(bulk.frames_queued, 0);
            assert_eq!(bulk.frames_dropped_total, (BULK_QUEUE_MAX + extra) as u64);
            assert!(!bulk.up);
            assert_eq!(
                outbox.counters.frames_dropped.get(),
                (BULK_QUEUE_MAX + extra) as u64,
                "the shard's total counts them too"
            );
        });
    }

    /// Records the peers that proved themselves.
    #[derive(Default)]
    struct Seen(std::cell::RefCell<Vec<(NodeId, PeerAddresses)>>);

    impl Inbound for Seen {
        fn peer_up(&self, node: NodeId, addresses: &PeerAddresses) {
            self.0.borrow_mut().push((node, addresses.clone()));
        }
        fn deliver(&self, _msgs: Vec<raft::Message>) {}
    }

    #[test]
    fn lanes_come_up_once_authenticated_and_the_hello_carries_both_addresses() {
        on_executor(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let peers = BTreeMap::from([(1, "127.0.0.1:1".parse().unwrap()), (2, addr)]);
            let identity = |node, client: &str, http: &str| {
                Rc::new(Identity::new(
                    node,
                    0,
                    b"secret".to_vec(),
                    client.into(),
                    http.into(),
                    &[1, 2],
                ))
            };
            let seen = Rc::new(Seen::default());
            let counters = Rc::new(PeerCounters::default());
            glommio::spawn_local(listen(
                listener,
                identity(2, "127.0.0.1:9200", "127.0.0.1:8200"),
                Rc::new(peers.clone()),
                seen.clone(),
                counters,
            ))
            .detach();
            let tq = glommio::executor().current_task_queue();
            let me = identity(1, "127.0.0.1:9100", "127.0.0.1:8100");
            let outbox = Outbox::start(me, &peers, tq);
            for _ in 0..500 {
                if outbox.lane_samples().iter().all(|l| l.up) {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let lanes = outbox.lane_samples();
            assert!(lanes.iter().all(|l| l.up), "{lanes:?}");
            assert!(lanes.iter().all(|l| l.reconnects_total == 0), "{lanes:?}");
            let seen = seen.0.borrow();
            assert_eq!(seen.len(), 2, "one hello per lane: {seen:?}");
            for (node, a) in seen.iter() {
                assert_eq!(*node, 1);
                assert_eq!(a.client, "127.0.0.1:9100");
                assert_eq!(a.http, "127.0.0.1:8100");
            }
        });
    }

    /// Records the size of every delivery.
    #[derive(Default)]
    struct Deliveries(std::cell::RefCell<Vec<Vec<raft::Message>>>);

    impl Inbound for Deliveries {
        fn peer_up(&self, _node: NodeId, _addresses: &PeerAddresses) {}
        fn deliver(&self, msgs: Vec<raft::Message>) {
            self.0.borrow_mut().push(msgs);
        }
    }

    #[test]
    fn held_heartbeats_of_many_groups_to_one_peer_leave_in_one_frame_at_the_flush() {
        on_executor(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let peers = BTreeMap::from([(1, "127.0.0.1:1".parse().unwrap()), (2, addr)]);
            let identity = |node| {
                Rc::new(Identity::new(
                    node,
                    0,
                    b"secret".to_vec(),
                    String::new(),
                    String::new(),
                    &[1, 2],
                ))
            };
            let seen = Rc::new(Deliveries::default());
            let received = Rc::new(PeerCounters::default());
            glommio::spawn_local(listen(
                listener,
                identity(2),
                Rc::new(peers.clone()),
                seen.clone(),
                received.clone(),
            ))
            .detach();
            let tq = glommio::executor().current_task_queue();
            let outbox = Outbox::start(identity(1), &peers, tq);
            let groups = 300u64;
            let beat = |group, body| raft::Message {
                group_id: group,
                from: 1,
                to: 2,
                term: 3,
                body,
            };
            // Each group's Ready holds its own beats, as the driver's fast
            // path does, one group at a time; a vote answer is not held.
            for g in 0..groups {
                outbox.hold(vec![
                    beat(g, MessageBody::Heartbeat { commit: g }),
                    beat(g + 1000, MessageBody::HeartbeatResponse),
                ]);
            }
            outbox.hold(vec![beat(7, MessageBody::VoteResponse { reject: true })]);
            let control = |o: &Outbox| o.lane_samples()[1].frames_queued;
            assert_eq!(control(&outbox), 1, "only the vote answer is queued");
            outbox.flush();
            assert_eq!(control(&outbox), 3, "one frame of beats, one of answers");
            outbox.flush();
            assert_eq!(control(&outbox), 3, "a second flush sends nothing");
            for _ in 0..500 {
                if seen.0.borrow().len() == 3 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let seen = seen.0.borrow();
            let sizes: Vec<usize> = seen.iter().map(|d| d.len()).collect();
            assert_eq!(sizes, [1, groups as usize, groups as usize]);
            assert_eq!(received.frames_received.get(), 3);
            let beats = &seen[1];
            assert!(beats.iter().enumerate().all(|(g, m)| m.group_id == g as u64
                && m.body == MessageBody::Heartbeat { commit: g as u64 }));
            assert!(seen[2]
                .iter()
                .all(|m| m.body == MessageBody::HeartbeatResponse && m.group_id >= 1000));
        });
    }

    #[test]
    fn reconnects_are_the_connections_after_the_first() {
        let lane = LaneCounters::default();
        assert_eq!(lane.reconnects(), 0);
        lane.connected();
        assert_eq!(lane.reconnects(), 0);
        lane.connected();
        lane.connected();
        assert_eq!(lane.reconnects(), 2);
        assert!(lane.up.get());
    }

    #[test]
    fn macs_bind_every_part() {
        let tag = mac(b"secret", &[b"a", b"bc"]);
        assert!(mac_ok(b"secret", &[b"a", b"bc"], &tag));
        assert!(!mac_ok(b"secret", &[b"ab", b"c"], &tag), "parts are framed");
        assert!(!mac_ok(b"other", &[b"a", b"bc"], &tag));
    }
}
