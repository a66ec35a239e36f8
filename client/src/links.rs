//! Connections of the pipelined producer and consumer: one TCP connection
//! per shard endpoint, each with a writer thread (fed by a bounded queue,
//! coalescing frames into few syscalls) and a reader thread (decodes and
//! timestamps answers); everything comes back to the owner on one channel.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wire::{FrameBuf, FrameDecoder, FrameLimits, Message};

use crate::ClientConfig;

/// Frames queued for one connection's writer thread. The owner never has more
/// than its in-flight window outstanding, so this only bounds a burst; 4096
/// covers the largest window we allow ([`crate::IN_FLIGHT_MAX_LIMIT`]) with room.
const LINK_QUEUE_FRAMES_MAX: usize = 4096;
/// Socket read size: 256 KiB, a few fetch responses or many produce acks.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Writer buffer: 256 KiB, so many small produce frames go in one syscall.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// What the connection threads tell their owner.
pub(crate) enum Event {
    Response {
        corr: u64,
        msg: Message,
        received_at: Instant,
    },
    Broken {
        link: u64,
        reason: String,
    },
}

/// One connection: a writer thread fed by a bounded queue and a reader thread
/// that decodes responses and forwards them.
struct Link {
    id: u64,
    tx: Option<SyncSender<FrameBuf>>,
    stream: TcpStream,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    fn open(
        id: u64,
        addr: SocketAddr,
        cfg: &ClientConfig,
        events: Sender<Event>,
    ) -> Result<Link, String> {
        let stream = crate::connection::connect_tcp(addr, cfg.connect_timeout)
            .map_err(|e| format!("{addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let read_half = stream.try_clone().map_err(|e| e.to_string())?;
        let write_half = stream.try_clone().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::sync_channel::<FrameBuf>(LINK_QUEUE_FRAMES_MAX);
        let limits = cfg.limits;
        let reader_events = events.clone();
        let reader = std::thread::Builder::new()
            .name(format!("drmq-read-{addr}"))
            .spawn(move || read_loop(id, read_half, limits, reader_events))
            .map_err(|e| e.to_string())?;
        let writer = std::thread::Builder::new()
            .name(format!("drmq-write-{addr}"))
            .spawn(move || write_loop(id, write_half, rx, events))
            .map_err(|e| e.to_string())?;
        Ok(Link {
            id,
            tx: Some(tx),
            stream,
            threads: vec![reader, writer],
        })
    }

    fn send(&self, frame: FrameBuf) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("connection closed")?;
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(frame)) => {
                tx.send(frame).map_err(|_| "connection closed".into())
            }
            Err(TrySendError::Disconnected(_)) => Err("connection closed".into()),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.tx = None; // the writer ends when its queue is gone
        let _ = self.stream.shutdown(Shutdown::Both); // the reader ends on EOF
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_loop(link: u64, mut stream: TcpStream, limits: FrameLimits, events: Sender<Event>) {
    let mut decoder = FrameDecoder::new(limits);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let reason = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break "connection closed by the broker".to_owned(),
            Ok(n) => decoder.extend(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        }
        let received_at = Instant::now();
        // Bounded: each iteration consumes one whole frame of what was read.
        let failed = loop {
            match decoder.next_frame() {
                Ok(None) => break None,
                Ok(Some(frame)) => match frame.message() {
                    Ok(msg) => {
                        let ev = Event::Response {
                            corr: frame.header.correlation_id,
                            msg,
                            received_at,
                        };
                        if events.send(ev).is_err() {
                            return; // the owner is gone
                        }
                    }
                    Err(e) => break Some(format!("protocol error: {e}")),
                },
                Err(e) => break Some(format!("protocol error: {e}")),
            }
        };
        if let Some(reason) = failed {
            break reason;
        }
    };
    let _ = events.send(Event::Broken { link, reason });
}

fn write_loop(link: u64, stream: TcpStream, rx: Receiver<FrameBuf>, events: Sender<Event>) {
    let shutdown = stream.try_clone();
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream);
    while let Ok(frame) = rx.recv() {
        let mut result = out.write_all(&frame);
        // Coalesce whatever else is queued into the same syscalls.
        while result.is_ok() {
            match rx.try_recv() {
                Ok(frame) => result = out.write_all(&frame),
                Err(_) => break,
            }
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            let _ = events.send(Event::Broken {
                link,
                reason: format!("write: {e}"),
            });
            if let Ok(s) = &shutdown {
                let _ = s.shutdown(Shutdown::Both);
            }
            return;
        }
    }
}

/// The connections of one producer or consumer, by endpoint.
pub(crate) struct Links {
    cfg: ClientConfig,
    by_addr: HashMap<SocketAddr, Link>,
    next_link_id: u64,
    next_corr: u64,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
}

impl Links {
    pub(crate) fn new(cfg: ClientConfig) -> Links {
        let (events_tx, events_rx) = mpsc::channel();
        Links {
            cfg,
            by_addr: HashMap::new(),
            next_link_id: 1,
            next_corr: 1,
            events_tx,
            events_rx,
        }
    }

    pub(crate) fn corr(&mut self) -> u64 {
        let c = self.next_corr;
        self.next_corr += 1;
        c
    }

    /// Sends a frame to `addr`, connecting first if needed; returns the id of
    /// the connection that carries it.
    pub(crate) fn send(&mut self, addr: SocketAddr, frame: FrameBuf) -> Result<u64, String> {
        if !self.by_addr.contains_key(&addr) {
            let id = self.next_link_id;
            self.next_link_id += 1;
            let link = Link::open(id, addr, &self.cfg, self.events_tx.clone())?;
            self.by_addr.insert(addr, link);
        }
        let link = self.by_addr.get(&addr).expect("inserted above");
        let id = link.id;
        if let Err(e) = link.send(frame) {
            self.by_addr.remove(&addr);
            return Err(e);
        }
        Ok(id)
    }

    /// Forgets a broken connection (its threads are joined).
    pub(crate) fn drop_link(&mut self, link: u64) {
        self.by_addr.retain(|_, l| l.id != link);
    }

    pub(crate) fn recv(&self, wait: Duration) -> Option<Event> {
        if wait.is_zero() {
            return self.events_rx.try_recv().ok();
        }
        self.events_rx.recv_timeout(wait).ok()
    }
}
