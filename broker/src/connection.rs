//! Client connections on a shard's listener: accepting (and refusing past
//! `max_connections`), and per connection a reader that decodes request
//! frames and hands each to the shard as a task of its own, and a writer
//! that sends the answers back in order of completion.
//!
//! Limits: each connection has at most `CONNECTION_INFLIGHT_MAX` (1024) requests
//! and `max_inflight_bytes` of request frames (plus room for their answers)
//! in flight; past either the reader stops reading that socket until
//! answers go out, so a client that never reads holds at most that much
//! broker memory. A client that takes no answer bytes for
//! `CLIENT_WRITE_TIMEOUT` (30 s) is closed.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Semaphore, StaticPermit};
use storage::notify::Notify;
use wire::{
    ErrorCode, FetchRequest, Frame, FrameBuf, FrameDecoder, FrameLimits, Kind, Message,
    FRAME_HEADER_BYTES,
};

use crate::error::Error;
use crate::partition::FETCH_BYTES_MAX;
use crate::shard::{bump, Shard};

/// Requests one connection may have in flight: enough to keep a pipelining
/// producer's window full (1024 × 64 KiB = 64 MiB worst case per connection
/// is bounded further by the frame limit and by the client's own window).
const CONNECTION_INFLIGHT_MAX: u64 = 1024;
/// Connections being refused at once (each answered with an error within
/// [`REFUSE_TIMEOUT`]); past this an excess connection is closed unanswered.
const REFUSING_MAX: usize = 64;
/// How long a refused connection gets to send its first request header,
/// whose correlation id the refusal answers.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// A client that takes no [`WRITE_PIECE_BYTES`] of its answers in this long
/// is closed (about 8 KB/s: slower is a client that stopped reading).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_PIECE_BYTES: usize = 256 << 10;
/// Responses queued for one connection's writer.
const CONNECTION_OUTBOX_MAX: usize = 1024;
/// Read size per socket read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// See [`answer_bytes_max`].
const ANSWER_BYTES_SMALL: u64 = 64 << 10;

/// The connections of one shard's listener.
#[derive(Default)]
pub(crate) struct Connections {
    /// Open client connections.
    open: Rc<Cell<usize>>,
    /// Connections being refused (over `max_connections`).
    refusing: Rc<Cell<usize>>,
}

impl Connections {
    /// Client connections open now (refused ones not counted).
    pub(crate) fn open(&self) -> usize {
        self.open.get()
    }
}

/// Accepts client connections until `stopping` is notified.
pub(crate) async fn accept(shard: &Rc<Shard>, listener: &TcpListener, stopping: &Notify) {
    let limits = &shard.connections;
    let mut accept_backoff = Duration::ZERO;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopping.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                accept_backoff = Duration::ZERO;
                // Counted here, at accept, so a burst cannot overshoot.
                if limits.open.get() >= shard.config.max_connections {
                    shard.counters.error(ErrorCode::TooManyConnections);
                    if limits.refusing.get() < REFUSING_MAX {
                        let why = Error::TooManyConnections {
                            broker: shard.config.id,
                            shard: shard.id,
                            max: shard.config.max_connections,
                        };
                        let refusing = Counted::new(&limits.refusing);
                        glommio::spawn_local(refuse(stream, why, refusing)).detach();
                    }
                    continue;
                }
                let open = Counted::new(&limits.open);
                glommio::spawn_local(connection(shard.clone(), stream, open)).detach();
            }
            Some(Err(e)) => {
                // Out of descriptors, most likely: back off (up to 1 s)
                // and say so once per streak.
                if accept_backoff.is_zero() {
                    tracing::warn!(broker = shard.config.id, shard = shard.id, error = %e, "accept failed; backing off");
                }
                accept_backoff =
                    (accept_backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                glommio::timer::sleep(accept_backoff).await;
            }
        }
    }
}

/// Serves one client connection; `_open` counts it for `max_connections`
/// until it ends.
async fn connection(shard: Rc<Shard>, stream: TcpStream, _open: Counted) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    // Each queued response carries the permit for its bytes, released
    // once written, and for a produce when its request was read (its
    // latency is recorded once the answer is written).
    let (out_tx, out_rx) = local_channel::new_bounded::<(FrameBuf, StaticPermit, Option<Instant>)>(
        CONNECTION_OUTBOX_MAX,
    );
    // Set when the writer gives up (the client is gone or takes no bytes
    // of its answers for CLIENT_WRITE_TIMEOUT): the reader stops too.
    let writer_gone = Rc::new(Flag::default());
    let gone = writer_gone.clone();
    let writer_shard = shard.clone();
    let writer_task = glommio::spawn_local(async move {
        let mut failed = false;
        while let Some((frame, _bytes, received)) = out_rx.recv().await {
            if failed {
                continue; // drained, so no sender waits on a full queue
            }
            // Progress, not the whole answer, is what is timed: a slow
            // link still gets a large fetch answer.
            for piece in frame.chunks(WRITE_PIECE_BYTES) {
                let wrote = glommio::timer::timeout(CLIENT_WRITE_TIMEOUT, async {
                    writer.write_all(piece).await.map_err(Into::into)
                })
                .await;
                if wrote.is_err() {
                    failed = true;
                    gone.set();
                    let _ = writer.close().await;
                    break;
                }
            }
            // Written to the socket (the kernel's send buffer took it all).
            if let (false, Some(t)) = (failed, received) {
                writer_shard.counters.produce_latency.record(t.elapsed());
            }
        }
    });
    let out_tx = Rc::new(out_tx);
    let inflight = Rc::new(Semaphore::new(CONNECTION_INFLIGHT_MAX));
    // Bytes in flight: each request takes its own size plus the most its
    // answer may need ([`answer_bytes_max`]) before it is handled, and
    // gives them back once the answer is written. A client that sends
    // faster than it reads its answers stops being read once the budget
    // is taken (backpressure), so one connection holds about this much,
    // not 1024 × the frame limit.
    let inflight_bytes = Rc::new(Semaphore::new(shard.config.max_inflight_bytes));
    let limits = FrameLimits::default();
    let mut decoder = FrameDecoder::new(limits);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    // The reader waits on the socket or the permits, and stops either
    // way once the writer is gone.
    let stop = writer_gone.clone();
    let closing = inflight_bytes.clone();
    let closing_count = inflight.clone();
    glommio::spawn_local(async move {
        stop.wait().await;
        closing.close();
        closing_count.close();
    })
    .detach();
    'read: loop {
        let read = futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
            writer_gone.wait().await;
            None
        })
        .await;
        let n = match read {
            None | Some(Ok(0)) | Some(Err(_)) => break,
            Some(Ok(n)) => n,
        };
        decoder.extend(&chunk[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(broker = shard.config.id, shard = shard.id, client = %peer, error = %e, "closing a client connection");
                    // No answer goes out, but it is the client's error.
                    shard.counters.error(Error::Wire(e).code());
                    break 'read;
                }
            };
            // Produce latency runs from here: the whole request was read.
            let received = (frame.header.kind == Kind::ProduceRequest).then(Instant::now);
            let Ok(permit) = inflight.clone().acquire_static_permit(1).await else {
                break 'read;
            };
            // The request and room for its answer, held until the
            // answer is written.
            let reserve = (u64::from(frame.header.frame_bytes) + answer_bytes_max(&frame))
                .min(shard.config.max_inflight_bytes);
            let Ok(bytes_permit) = inflight_bytes.clone().acquire_static_permit(reserve).await
            else {
                break 'read;
            };
            let shard = shard.clone();
            let out = out_tx.clone();
            glommio::spawn_local(async move {
                let corr = frame.header.correlation_id;
                let response = if frame.header.kind == Kind::ProduceRequest {
                    // The hot path reads the archived body in place.
                    shard.produce_frame(&frame).await
                } else {
                    match frame.message() {
                        Ok(msg) => shard.handle(msg).await,
                        Err(e) => Error::Wire(e).into(),
                    }
                };
                match frame.header.kind {
                    Kind::ProduceRequest => bump(&shard.counters.produce_requests, 1),
                    Kind::FetchRequest => bump(&shard.counters.fetch_requests, 1),
                    _ => {}
                }
                if let Message::ErrorResponse(r) = &response {
                    shard.counters.error(ErrorCode::from_u16(r.code));
                }
                let bytes = response.encode(corr, limits).unwrap_or_else(|e| {
                    let e = Error::ResponseTooLarge(e);
                    shard.counters.error(e.code());
                    Message::from(e)
                        .encode(corr, limits)
                        .expect("a short error response always encodes")
                });
                drop((frame, response));
                let _ = out.send((bytes, bytes_permit, received)).await;
                drop(permit);
            })
            .detach();
        }
    }
    // Let in-flight requests finish writing, then close (at once if the
    // writer is gone: the semaphore is closed then).
    let _ = inflight.acquire(CONNECTION_INFLIGHT_MAX).await;
    writer_gone.set(); // ends the watcher task
    drop(out_tx);
    writer_task.await;
}

/// Room for a request's answer: a fetch's answer holds up to the bytes it
/// asked for; other answers are small (errors, acknowledgements, metadata
/// of a few hundred topics), [`ANSWER_BYTES_SMALL`].
fn answer_bytes_max(frame: &Frame) -> u64 {
    let fetch = match frame.header.kind {
        Kind::FetchRequest => frame.access::<FetchRequest>().map_or(0, |r| {
            u64::from(r.max_bytes.to_native()).min(FETCH_BYTES_MAX as u64)
        }),
        _ => 0,
    };
    fetch + ANSWER_BYTES_SMALL
}

/// Answers a connection over the listener's limit with
/// `TooManyConnections` (to its first request's correlation id, if the
/// header arrives in time) and closes it.
async fn refuse(mut stream: TcpStream, why: Error, _refusing: Counted) {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    let _ = glommio::timer::timeout(REFUSE_TIMEOUT, async {
        while got < header.len() {
            match stream.read(&mut header[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        Ok(())
    })
    .await;
    let corr = if got == header.len() {
        u64::from_le_bytes(header[16..24].try_into().unwrap_or_default())
    } else {
        0
    };
    if let Ok(frame) = Message::from(why).encode(corr, FrameLimits::default()) {
        let _ = stream.write_all(&frame).await;
    }
    let _ = stream.close().await;
}

/// A one-way flag tasks can wait for.
#[derive(Default)]
struct Flag {
    set: Cell<bool>,
    notify: Notify,
}

impl Flag {
    fn set(&self) {
        self.set.set(true);
        self.notify.notify_all();
    }

    /// Resolves once the flag is set (at once if it is).
    async fn wait(&self) {
        // No await between the check and taking the notification's
        // generation: a set in between cannot be missed.
        if self.set.get() {
            return;
        }
        self.notify.wait().await;
    }
}

/// Counts a live thing in a shared counter for as long as it exists
/// (connections, refusals, peer handshakes).
pub(crate) struct Counted(Rc<Cell<usize>>);

impl Counted {
    pub(crate) fn new(c: &Rc<Cell<usize>>) -> Counted {
        c.set(c.get() + 1);
        Counted(c.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}
