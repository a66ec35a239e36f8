//! `--dashboards N`: N WebSocket clients per broker on `ws://<http>/ws`,
//! reading every frame and parsing its JSON as the web dashboard does
//! (docs/TELEMETRY.md), so a run can measure what open dashboards cost the
//! broker. Each client is a thread; a closed socket is reopened after a
//! backoff (as the page does), a socket silent for [`SILENCE_MAX`] too. A
//! broker whose `/ws` answers 404 (no telemetry server yet) is given up on
//! at once and reported, not an error. Every thread ends within
//! [`READ_POLL`] of [`Dashboards::stop`].

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::handshake::HandshakeError;
use tungstenite::{Message, WebSocket};

/// How long a TCP connect, and the upgrade after it, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read timeout of an open socket: how often a client checks the stop flag,
/// so [`Dashboards::stop`] waits at most this long (plus a close frame).
const READ_POLL: Duration = Duration::from_millis(100);
/// First and largest reconnect delay (doubling in between): a broker that
/// is down costs at most one attempt per [`BACKOFF_MAX`] per client.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A socket with no frame for this long is taken as dead and reopened: the
/// page marks a broker down after 3 s of silence (docs/TELEMETRY.md).
const SILENCE_MAX: Duration = Duration::from_secs(3);
/// Most clients in all: 64 per broker × 7 brokers (`--nodes` at most) would
/// be 448 threads; the cap keeps a typo from starting thousands.
pub const CLIENTS_PER_BROKER_MAX: usize = 64;
/// A frame larger than this closes the socket (tungstenite's check): ten
/// times the 390 KB sample of a broker with 1,000 partition replicas.
const FRAME_BYTES_MAX: usize = 4 << 20;

/// What the dashboard clients received, summed over clients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DashboardStats {
    /// Clients started (N per broker).
    pub clients: usize,
    /// Data frames received (text or binary), and their payload bytes.
    pub frames: u64,
    pub bytes: u64,
    /// Frames that parsed as JSON with `"type":"sample"` / `"event"`.
    pub samples: u64,
    pub events: u64,
    /// Frames that were not JSON objects (or not text).
    pub unparsed: u64,
    /// Successful upgrades, and those after a client's first.
    pub connects: u64,
    pub reconnects: u64,
    /// Connection or upgrade attempts that failed (a broker down, a full
    /// server closing with 1013 counts as a connect then a close).
    pub connect_failures: u64,
    /// Telemetry addresses whose `/ws` answered 404 (not served there).
    pub not_found: Vec<SocketAddr>,
    /// How long the clients ran.
    pub seconds: f64,
}

impl DashboardStats {
    fn add(&mut self, o: &DashboardStats) {
        self.clients += o.clients;
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.samples += o.samples;
        self.events += o.events;
        self.unparsed += o.unparsed;
        self.connects += o.connects;
        self.reconnects += o.reconnects;
        self.connect_failures += o.connect_failures;
        for a in &o.not_found {
            if !self.not_found.contains(a) {
                self.not_found.push(*a);
            }
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "clients": self.clients,
            "frames": self.frames,
            "bytes": self.bytes,
            "samples": self.samples,
            "events": self.events,
            "unparsed": self.unparsed,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "not_found": self.not_found.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "seconds": self.seconds,
            "frames_per_s": self.frames as f64 / self.seconds.max(1e-6),
            "bytes_per_s": self.bytes as f64 / self.seconds.max(1e-6),
        })
    }

    pub fn print(&self) {
        println!(
            "  dashboards: {} client(s), {} frames ({} samples, {} events, {} unparsed), {:.2} MB ({:.0} frames/s), {} reconnects, {} failed connects",
            self.clients,
            self.frames,
            self.samples,
            self.events,
            self.unparsed,
            self.bytes as f64 / 1e6,
            self.frames as f64 / self.seconds.max(1e-6),
            self.reconnects,
            self.connect_failures,
        );
        for a in &self.not_found {
            println!("  dashboards: WARNING: ws://{a}/ws answered 404 (no telemetry WebSocket there): 0 frames from it");
        }
    }
}

/// Running dashboard clients; [`Dashboards::stop`] ends them.
pub struct Dashboards {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<DashboardStats>>,
    started: Instant,
}

impl Dashboards {
    /// Starts `per_broker` clients on each telemetry address (capped at
    /// [`CLIENTS_PER_BROKER_MAX`]).
    pub fn start(https: &[SocketAddr], per_broker: usize) -> Dashboards {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &http in https {
            for _ in 0..per_broker.min(CLIENTS_PER_BROKER_MAX) {
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || client(http, &stop)));
            }
        }
        Dashboards {
            stop,
            threads,
            started: Instant::now(),
        }
    }

    /// Stops every client (each within [`READ_POLL`]) and sums what they got.
    pub fn stop(self) -> DashboardStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = DashboardStats::default();
        for t in self.threads {
            // A panicked client counts as one that received nothing.
            if let Ok(s) = t.join() {
                total.add(&s);
            }
        }
        total.seconds = self.started.elapsed().as_secs_f64();
        for a in &total.not_found {
            eprintln!(
                "drmq-loadtest: warning: ws://{a}/ws answered 404: no dashboard frames from that broker"
            );
        }
        total
    }
}

enum ConnectError {
    NotFound,
    Other,
}

fn connect(http: SocketAddr) -> Result<WebSocket<TcpStream>, ConnectError> {
    let stream =
        TcpStream::connect_timeout(&http, CONNECT_TIMEOUT).map_err(|_| ConnectError::Other)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|_| ConnectError::Other)?;
    let config = tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(FRAME_BYTES_MAX),
        max_frame_size: Some(FRAME_BYTES_MAX),
        ..Default::default()
    };
    match tungstenite::client::client_with_config(format!("ws://{http}/ws"), stream, Some(config)) {
        Ok((ws, _)) => {
            ws.get_ref()
                .set_read_timeout(Some(READ_POLL))
                .map_err(|_| ConnectError::Other)?;
            Ok(ws)
        }
        Err(HandshakeError::Failure(tungstenite::Error::Http(r))) if r.status().as_u16() == 404 => {
            Err(ConnectError::NotFound)
        }
        Err(_) => Err(ConnectError::Other),
    }
}

/// Sleeps `d`, in [`READ_POLL`] steps, unless asked to stop.
fn pause(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(READ_POLL));
    }
}

/// One dashboard: connect, read until the socket closes or goes silent,
/// back off, again, until `stop`.
fn client(http: SocketAddr, stop: &AtomicBool) -> DashboardStats {
    let mut st = DashboardStats {
        clients: 1,
        ..Default::default()
    };
    let mut backoff = BACKOFF_MIN;
    while !stop.load(Ordering::Relaxed) {
        match connect(http) {
            Ok(mut ws) => {
                if st.connects > 0 {
                    st.reconnects += 1;
                }
                st.connects += 1;
                if read_frames(&mut ws, stop, &mut st) > 0 {
                    backoff = BACKOFF_MIN;
                }
                // Polite close; the server may be gone already.
                let _ = ws.close(None);
                let _ = ws.flush();
            }
            Err(ConnectError::NotFound) => {
                st.not_found.push(http);
                break;
            }
            Err(ConnectError::Other) => st.connect_failures += 1,
        }
        pause(backoff, stop);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    st
}

/// Reads frames until the socket closes, is silent for [`SILENCE_MAX`], or
/// `stop`; returns how many data frames it read.
fn read_frames(ws: &mut WebSocket<TcpStream>, stop: &AtomicBool, st: &mut DashboardStats) -> u64 {
    let mut frames = 0;
    let mut last_frame = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match ws.read() {
            Ok(Message::Text(text)) => {
                frames += 1;
                last_frame = Instant::now();
                st.frames += 1;
                st.bytes += text.len() as u64;
                // Parsed in full, as the page does, to cost what it costs.
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) if v.is_object() => match v["type"].as_str() {
                        Some("sample") => st.samples += 1,
                        Some("event") => st.events += 1,
                        _ => {}
                    },
                    _ => st.unparsed += 1,
                }
            }
            Ok(Message::Binary(b)) => {
                frames += 1;
                last_frame = Instant::now();
                st.frames += 1;
                st.bytes += b.len() as u64;
                st.unparsed += 1;
            }
            // Pings are answered by tungstenite on the next read; a close
            // frame is answered too and the next read says closed.
            Ok(_) => last_frame = Instant::now(),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                if last_frame.elapsed() >= SILENCE_MAX {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    const SAMPLE: &str = r#"{"v":1,"type":"sample","broker":1,"ts_ms":1,"shards":[]}"#;
    const EVENT: &str = r#"{"v":1,"type":"event","broker":1,"seq":0,"kind":"broker_up","peer":2}"#;
    const NOT_JSON: &str = "not json";

    /// A tiny telemetry server: each connection gets a sample, an event and
    /// a frame that is not JSON, then a close, so clients must reconnect.
    fn closing_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(mut ws) = tungstenite::accept(s) else {
                        return;
                    };
                    for f in [SAMPLE, EVENT, NOT_JSON] {
                        if ws.send(Message::text(f)).is_err() {
                            return;
                        }
                    }
                    let _ = ws.close(None);
                    // Until the client's close answer (or it is gone).
                    while ws.read().is_ok() {}
                });
            }
        });
        addr
    }

    #[test]
    fn clients_read_and_parse_every_frame_and_reconnect_after_a_close() {
        let addr = closing_server();
        let d = Dashboards::start(&[addr], 2);
        std::thread::sleep(Duration::from_millis(1200));
        let t = Instant::now();
        let s = d.stop();
        assert!(t.elapsed() < Duration::from_secs(1), "stop is bounded");
        assert_eq!(s.clients, 2);
        assert!(s.reconnects >= 2, "{s:?}");
        assert_eq!(s.reconnects, s.connects - 2);
        assert!(s.samples >= 2 && s.events >= 2 && s.unparsed >= 2, "{s:?}");
        assert_eq!(s.frames, s.samples + s.events + s.unparsed);
        assert_eq!(
            s.bytes,
            s.samples * SAMPLE.len() as u64
                + s.events * EVENT.len() as u64
                + s.unparsed * NOT_JSON.len() as u64
        );
        assert!(s.not_found.is_empty());
    }

    #[test]
    fn a_broker_without_ws_is_reported_as_not_found_with_no_frames() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let d = Dashboards::start(&[addr], 3);
        std::thread::sleep(Duration::from_millis(300));
        let s = d.stop();
        assert_eq!(s.clients, 3);
        assert_eq!((s.frames, s.connects), (0, 0));
        assert_eq!(s.not_found, vec![addr]);
    }

    #[test]
    fn a_broker_that_is_down_is_retried_with_backoff_and_stop_still_ends_it() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let d = Dashboards::start(&[addr], 1);
        std::thread::sleep(Duration::from_millis(700));
        let s = d.stop();
        // 100 + 200 + 400 ms of backoff: 3 or 4 attempts, not hundreds.
        assert!((2..=5).contains(&s.connect_failures), "{s:?}");
        assert_eq!(s.connects, 0);
    }
}
