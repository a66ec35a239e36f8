//! The peer handshake: both sides prove they hold the cluster secret with
//! HMAC-SHA256 over fresh nonces of both sides before the listener reads
//! any Raft frame (a replayed hello fails: the listener's nonce is new on
//! every connection). Until then frames are limited to
//! [`HELLO_FRAME_BYTES_MAX`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use hmac::{Hmac, Mac};
use raft::NodeId;
use sha2::Sha256;
use wire::{Frame, FrameDecoder, FrameLimits, Message, PeerHello, PeerHelloResponse};

use crate::error::{Error, Result};

/// A peer's addresses as its authenticated hello gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddresses {
    /// Client address of its shard 0 (`HOST:PORT`).
    pub client: String,
    /// Telemetry address (`--http`); empty for none.
    pub http: String,
}

/// Frames before authentication are small.
pub const HELLO_FRAME_BYTES_MAX: u32 = 4096;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Who this shard is, for the handshake.
pub struct Identity {
    /// Sent in clear in the first hello, so it is derived from public
    /// facts only (the voter ids): it catches a peer from another cluster
    /// early, while the secret is proved only by the HMAC exchange. (A
    /// value derived from the secret would let anyone a broker connects to
    /// test guesses of the secret offline.)
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub shard: u32,
    pub secret: Vec<u8>,
    /// This broker's client address (shard 0), told to peers.
    pub endpoint: String,
    /// This broker's telemetry address (`--http`), told to peers; empty
    /// for none.
    pub http: String,
}

impl Identity {
    pub fn new(
        node_id: NodeId,
        shard: u32,
        secret: Vec<u8>,
        endpoint: String,
        http: String,
        voters: &[NodeId],
    ) -> Identity {
        let mut ids = voters.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let cluster_id = crate::topics::fnv1a(ids.iter().flat_map(|id| id.to_le_bytes()));
        Identity {
            cluster_id,
            node_id,
            shard,
            secret,
            endpoint,
            http,
        }
    }

    /// The hello a caller sends: unauthenticated with an empty tag, then
    /// with its proof.
    pub(super) fn hello(&self, nonce: u64, auth_tag: Vec<u8>) -> PeerHello {
        PeerHello {
            cluster_id: self.cluster_id,
            node_id: self.node_id,
            shard: self.shard,
            nonce,
            auth_tag,
            endpoint: self.endpoint.clone(),
            http: self.http.clone(),
        }
    }
}

/// HMAC-SHA256 over `parts`, each prefixed by its length (so the split
/// between parts is part of what is signed).
fn keyed(secret: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    for p in parts {
        m.update(&(p.len() as u32).to_le_bytes());
        m.update(p);
    }
    m
}

pub(super) fn mac(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    keyed(secret, parts).finalize().into_bytes().to_vec()
}

/// Checks a tag in constant time.
pub(super) fn mac_ok(secret: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    keyed(secret, parts).verify_slice(tag).is_ok()
}

/// `f`, or an error once `d` has passed.
async fn deadline<T>(d: Duration, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(d).await;
        Err(Error::PeerTimeout(d))
    })
    .await
}

pub(crate) async fn read_frame(
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
    chunk: &mut [u8],
) -> Result<Frame> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(f);
        }
        let n = stream.read(chunk).await?;
        if n == 0 {
            return Err(Error::PeerClosed);
        }
        decoder.extend(&chunk[..n]);
    }
}

async fn write_msg(stream: &mut TcpStream, msg: Message) -> Result<()> {
    let frame = msg.encode(0, FrameLimits::default())?;
    stream.write_all(&frame).await?;
    Ok(())
}

/// Caller side of the handshake.
pub(super) async fn connect(
    identity: &Identity,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
        .await
        .map_err(glommio_error)?;
    stream.set_nodelay(true).map_err(glommio_error)?;
    // A loopback connect to a port nobody listens on can connect to itself
    // (simultaneous open) and would hold the port the peer restarts on.
    if stream.local_addr().ok() == stream.peer_addr().ok() {
        return Err(Error::SelfConnect);
    }
    deadline(HANDSHAKE_TIMEOUT, async {
        let nonce: u64 = rand::random();
        write_msg(&mut stream, identity.hello(nonce, Vec::new()).into()).await?;
        let mut decoder = FrameDecoder::new(FrameLimits::new(HELLO_FRAME_BYTES_MAX)?);
        let mut chunk = vec![0u8; 4096];
        let frame = read_frame(&mut stream, &mut decoder, &mut chunk).await?;
        let Message::PeerHelloResponse(r) = frame.message()? else {
            return Err(Error::HandshakeFrame("expected PeerHelloResponse"));
        };
        if r.node_id != peer || r.shard != identity.shard || r.auth_tag.len() != 32 + 8 {
            return Err(Error::PeerAnsweredAs {
                node: r.node_id,
                shard: r.shard,
            });
        }
        let (tag, their_nonce) = r.auth_tag.split_at(32);
        let proof = [
            &b"drmq-peer-listener"[..],
            &nonce.to_le_bytes(),
            &peer.to_le_bytes(),
            &identity.shard.to_le_bytes(),
            their_nonce,
        ];
        if !mac_ok(&identity.secret, &proof, tag) {
            return Err(Error::PeerAuth { peer });
        }
        let ours = mac(
            &identity.secret,
            &[
                b"drmq-peer-caller",
                their_nonce,
                &identity.node_id.to_le_bytes(),
                &identity.shard.to_le_bytes(),
                identity.endpoint.as_bytes(),
                identity.http.as_bytes(),
            ],
        );
        write_msg(&mut stream, identity.hello(nonce, ours).into()).await?;
        Ok(())
    })
    .await?;
    Ok(stream)
}

/// Listener side of the handshake: reads the caller's hello, proves this
/// shard holds the secret over the caller's nonce and a fresh one, and
/// checks the caller's proof. Returns the caller's node id and its
/// addresses, as the proof signed them.
pub(super) async fn accept(
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
    chunk: &mut [u8],
    identity: &Identity,
    peers: &BTreeMap<NodeId, SocketAddr>,
) -> Result<(NodeId, PeerAddresses)> {
    deadline(HANDSHAKE_TIMEOUT, async {
        let frame = read_frame(stream, decoder, chunk).await?;
        let Message::PeerHello(h) = frame.message()? else {
            return Err(Error::HandshakeFrame("first frame is not PeerHello"));
        };
        if h.cluster_id != identity.cluster_id
            || h.shard != identity.shard
            || !peers.contains_key(&h.node_id)
            || h.node_id == identity.node_id
        {
            return Err(Error::NotAPeer {
                node: h.node_id,
                shard: h.shard,
                cluster: h.cluster_id,
            });
        }
        let nonce: u64 = rand::random();
        let mut tag = mac(
            &identity.secret,
            &[
                b"drmq-peer-listener",
                &h.nonce.to_le_bytes(),
                &identity.node_id.to_le_bytes(),
                &identity.shard.to_le_bytes(),
                &nonce.to_le_bytes(),
            ],
        );
        tag.extend_from_slice(&nonce.to_le_bytes());
        write_msg(
            stream,
            PeerHelloResponse {
                node_id: identity.node_id,
                shard: identity.shard,
                auth_tag: tag,
            }
            .into(),
        )
        .await?;
        let frame = read_frame(stream, decoder, chunk).await?;
        let Message::PeerHello(proof) = frame.message()? else {
            return Err(Error::HandshakeFrame("second frame is not PeerHello"));
        };
        let ok = proof.node_id == h.node_id
            && mac_ok(
                &identity.secret,
                &[
                    b"drmq-peer-caller",
                    &nonce.to_le_bytes(),
                    &proof.node_id.to_le_bytes(),
                    &identity.shard.to_le_bytes(),
                    proof.endpoint.as_bytes(),
                    proof.http.as_bytes(),
                ],
                &proof.auth_tag,
            );
        if !ok {
            return Err(Error::CallerAuth { node: h.node_id });
        }
        Ok((
            proof.node_id,
            PeerAddresses {
                client: proof.endpoint.clone(),
                http: proof.http.clone(),
            },
        ))
    })
    .await
}

/// glommio's error as an I/O error (same text).
fn glommio_error<T>(e: glommio::GlommioError<T>) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}
