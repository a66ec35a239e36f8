//! The core thread (to be replaced: see the module docs of `telemetry`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::{ShardSample, SAMPLES_QUEUED_MAX};

/// Largest HTTP request head accepted (no bodies are read).
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the telemetry thread on `addr`; returns the channel shards send to.
pub fn start(broker_id: u64, addr: SocketAddr) -> std::io::Result<super::Telemetry> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = flume::bounded::<ShardSample>(SAMPLES_QUEUED_MAX);
    let (events, _dropped) = flume::bounded(super::EVENTS_QUEUED_MAX);
    std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(move || {
            let mut latest: BTreeMap<usize, ShardSample> = BTreeMap::new();
            loop {
                // Drain samples, then serve whoever is waiting; poll at 20 Hz.
                loop {
                    match rx.try_recv() {
                        Ok(s) => {
                            latest.insert(s.shard, s);
                        }
                        Err(flume::TryRecvError::Empty) => break,
                        Err(flume::TryRecvError::Disconnected) => return,
                    }
                }
                match listener.accept() {
                    Ok((stream, _)) => serve(broker_id, stream, &latest),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(super::Telemetry {
        samples: tx,
        events,
    })
}

fn serve(broker_id: u64, mut stream: TcpStream, latest: &BTreeMap<usize, ShardSample>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.lines().next().and_then(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("GET"))
            .then(|| parts.next())
            .flatten()
    });
    let (status, content_type, body) = match path {
        Some("/metrics") => ("200 OK", "text/plain; version=0.0.4", super::metrics::prometheus(broker_id, latest)),
        Some("/api/status") => (
            "200 OK",
            "application/json",
            serde_json::json!({ "broker": broker_id, "shards": latest.values().collect::<Vec<_>>() })
                .to_string(),
        ),
        Some("/") => (
            "200 OK",
            "text/plain",
            format!("drmq broker {broker_id}: see /metrics and /api/status (the dashboard is not built yet)\n"),
        ),
        Some(_) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        None => ("400 Bad Request", "text/plain", "only GET is served\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
