//! The HTTP and WebSocket server of the telemetry core (`--http`): plain
//! threads, never a shard's.
//!
//! - One accept thread; each connection gets a thread of its own, at most
//!   [`CONNECTIONS_MAX`] at once (more are closed unanswered).
//! - A request head is parsed by `httparse`, read with a deadline and a
//!   size cap; only `GET` (and `HEAD`) are served, no bodies are read: the
//!   server is read-only.
//! - `GET /ws` upgrades to a WebSocket (`tungstenite`): the client is
//!   registered with the [`Hub`], which hands it every frame published. Each
//!   client has a bounded queue; a slow or stuck browser loses its oldest
//!   frames (never memory) and is closed when one write stalls for
//!   [`WS_WRITE_TIMEOUT`]. At most [`WS_CLIENTS_MAX`] clients; more are
//!   closed at once with status 1013 ("try again later"). Anything a client sends is read and dropped (pings are
//!   answered).
//! - Every other path is the [`Routes`]' business: the static files of the
//!   dashboard and the JSON and Prometheus endpoints.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// Connections served at once (each holds a thread).
pub const CONNECTIONS_MAX: usize = 64;
/// WebSocket clients at once (dashboards open on this broker).
pub const WS_CLIENTS_MAX: usize = 16;
/// Frames queued per WebSocket client; past this the oldest is dropped.
pub const WS_QUEUE_FRAMES_MAX: usize = 32;
/// A WebSocket write that makes no progress for this long closes the client.
pub const WS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writing one answer may take in all: a client that reads it a
/// few bytes at a time (each write making some progress, so no single
/// write times out) gives its connection slot back after this.
const RESPONSE_WRITE_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_secs(3)
} else {
    Duration::from_secs(30)
};
/// Headers parsed at most.
const HEADERS_MAX: usize = 32;
/// How often a WebSocket client's thread looks at its socket for input
/// (pings, close) while it waits for frames.
const WS_POLL: Duration = Duration::from_millis(200);
/// Largest message a browser may send us (we ignore them anyway).
const WS_INBOUND_BYTES_MAX: usize = 64 * 1024;

/// An answer to a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `Cache-Control` value, if any.
    pub cache: Option<&'static str>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            body: body.into(),
            cache: Some("no-store"),
        }
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            cache: Some("no-store"),
        }
    }
}

/// What the server answers for paths other than `/ws`.
pub trait Routes: Send + Sync + 'static {
    /// The answer for `path` (query string removed); `None` is a 404.
    fn get(&self, path: &str) -> Option<Response>;
}

/// One WebSocket client's queue.
struct Queue {
    frames: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    /// Frames and whether each must be kept in preference (an event).
    frames: VecDeque<(Arc<str>, bool)>,
    closed: bool,
    dropped: u64,
}

impl Queue {
    /// Queues `frame`; when full, drops the oldest frame that is not
    /// `keep` (a sample, of which a newer one follows), else the oldest.
    fn push(&self, frame: Arc<str>, keep: bool) {
        let mut q = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if q.frames.len() >= WS_QUEUE_FRAMES_MAX {
            let at = q.frames.iter().position(|(_, k)| !k).unwrap_or(0);
            q.frames.remove(at);
            q.dropped += 1;
        }
        q.frames.push_back((frame, keep));
        drop(q);
        self.ready.notify_one();
    }

    /// Waits up to `wait` for frames; takes them all.
    fn take(&self, wait: Duration) -> Option<Vec<Arc<str>>> {
        let q = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let (mut q, _) = self
            .ready
            .wait_timeout_while(q, wait, |q| q.frames.is_empty() && !q.closed)
            .unwrap_or_else(|p| p.into_inner());
        if q.closed {
            return None;
        }
        Some(q.frames.drain(..).map(|(f, _)| f).collect())
    }

    fn close(&self) {
        self.frames.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

/// Hands published frames to every WebSocket client.
pub struct Hub {
    clients: Mutex<Vec<Arc<Queue>>>,
    /// The last frame of each kind a new client should get at once (the
    /// latest sample), so a page draws without waiting a second.
    greeting: Mutex<Option<Arc<str>>>,
    /// Frames dropped from slow clients' queues, all clients together.
    dropped: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            clients: Mutex::new(Vec::new()),
            greeting: Mutex::new(None),
            dropped: AtomicUsize::new(0),
        }
    }
}

impl Hub {
    /// Sends `frame` to every client. Never blocks on a client. A slow
    /// client's queue sheds frames not marked `keep` first (samples: a newer
    /// one follows), then the oldest.
    pub fn publish(&self, frame: Arc<str>, keep: bool) {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        for c in clients.iter() {
            c.push(frame.clone(), keep);
        }
    }

    /// Sets the frame a new client receives first.
    pub fn set_greeting(&self, frame: Arc<str>) {
        *self.greeting.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame);
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Frames dropped so far because a client fell behind.
    pub fn dropped_frames(&self) -> usize {
        self.dropped.load(Ordering::Relaxed)
    }

    fn join(&self) -> Option<Arc<Queue>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= WS_CLIENTS_MAX {
            return None;
        }
        let q = Arc::new(Queue {
            frames: Mutex::new(QueueState {
                frames: VecDeque::new(),
                closed: false,
                dropped: 0,
            }),
            ready: Condvar::new(),
        });
        if let Some(g) = self
            .greeting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            q.push(g, false);
        }
        clients.push(q.clone());
        Some(q)
    }

    fn leave(&self, q: &Arc<Queue>) {
        q.close();
        let dropped = q.frames.lock().unwrap_or_else(|p| p.into_inner()).dropped;
        self.dropped.fetch_add(dropped as usize, Ordering::Relaxed);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| !Arc::ptr_eq(c, q));
    }
}

/// A connection's place under [`CONNECTIONS_MAX`], given back when dropped:
/// when its thread ends, even by a panic, or when no thread could be made.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A WebSocket client's membership of the [`Hub`], left when dropped (so
/// a panic in its thread does not keep its place and queue for good).
struct Member<'a> {
    hub: &'a Hub,
    queue: Arc<Queue>,
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        self.hub.leave(&self.queue);
    }
}

#[cfg(test)]
impl Hub {
    /// Joins as a WebSocket client would (tests of what is published):
    /// each call returns the frames queued since the last.
    pub(crate) fn listen_for_tests(&self) -> impl Fn() -> Vec<Arc<str>> {
        let q = self.join().expect("under the cap");
        move || q.take(Duration::ZERO).unwrap_or_default()
    }
}

/// Starts the server on `listener` (already bound): returns at once.
pub fn serve(listener: TcpListener, routes: Arc<dyn Routes>, hub: Arc<Hub>) -> std::io::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("telemetry-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    // EMFILE and the like: back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if open.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
                    open.fetch_sub(1, Ordering::SeqCst);
                    continue; // dropped: closes the socket unanswered
                }
                let slot = Slot(open.clone());
                let (routes, hub) = (routes.clone(), hub.clone());
                let spawned = std::thread::Builder::new()
                    .name("telemetry-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        connection(stream, &*routes, &hub);
                    });
                if spawned.is_err() {
                    // No thread: the stream and the slot went with the
                    // closure (closed, given back).
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })?;
    Ok(())
}

/// A parsed request head: what the server looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `Sec-WebSocket-Key` of an upgrade request.
    pub ws_key: Option<String>,
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// More bytes are needed.
    Partial,
    TooLarge,
    Malformed(String),
}

/// Parses a request head from `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Request, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() >= REQUEST_HEAD_BYTES_MAX => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Err(HeadError::Partial),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/").to_owned();
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let ws_key = upgrade
        .then(|| {
            header("sec-websocket-key")
                .map(str::trim)
                .map(str::to_owned)
        })
        .flatten();
    Ok(Request {
        method,
        path,
        ws_key,
    })
}

fn read_head(stream: &mut TcpStream) -> Result<Request, HeadError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Malformed("request head not sent in time".into()));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Malformed("closed before the head".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
        match parse_head(&buf) {
            Err(HeadError::Partial) => continue,
            other => return other,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes all of `bytes` unless `deadline` passes first.
fn write_all_by(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_response(stream: &mut TcpStream, r: &Response, head_only: bool) {
    let deadline = Instant::now() + RESPONSE_WRITE_TIMEOUT;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if let Some(c) = r.cache {
        head.push_str(&format!("Cache-Control: {c}\r\n"));
    }
    head.push_str("\r\n");
    if write_all_by(stream, head.as_bytes(), deadline).is_ok() && !head_only {
        let _ = write_all_by(stream, &r.body, deadline);
    }
}

fn connection(mut stream: TcpStream, routes: &dyn Routes, hub: &Hub) {
    let _ = stream.set_nodelay(true);
    let req = match read_head(&mut stream) {
        Ok(r) => r,
        Err(HeadError::TooLarge) => {
            return write_response(&mut stream, &Response::text(431, "head too large\n"), false)
        }
        Err(HeadError::Malformed(why)) => {
            return write_response(
                &mut stream,
                &Response::text(400, &format!("{why}\n")),
                false,
            )
        }
        Err(HeadError::Partial) => return,
    };
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return write_response(
            &mut stream,
            &Response::text(405, "read-only: only GET is served\n"),
            false,
        );
    }
    // RFC 6455: the opening handshake is a GET; a HEAD is answered as any
    // other path (no upgrade, no thread held).
    if req.path == "/ws" && !head_only {
        return websocket(stream, req.ws_key, hub);
    }
    let r = routes
        .get(&req.path)
        .unwrap_or_else(|| Response::text(404, "not found\n"));
    write_response(&mut stream, &r, head_only);
}

fn websocket(mut stream: TcpStream, key: Option<String>, hub: &Hub) {
    let Some(key) = key else {
        return write_response(
            &mut stream,
            &Response::text(400, "expected a WebSocket upgrade\n"),
            false,
        );
    };
    let queue = hub.join().map(|queue| Member { hub, queue });
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    let _ = stream.set_write_timeout(Some(WS_WRITE_TIMEOUT));
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
    let config = WebSocketConfig {
        max_message_size: Some(WS_INBOUND_BYTES_MAX),
        max_frame_size: Some(WS_INBOUND_BYTES_MAX),
        ..WebSocketConfig::default()
    };
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    let Some(member) = queue else {
        // Over the cap: closed with 1013 ("try again later"), as the
        // protocol says; the page retries with back-off.
        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Again,
            reason: "too many dashboards on this broker".into(),
        }));
        let _ = ws.flush();
        return;
    };
    pump(&mut ws, &member.queue);
    drop(member);
    let _ = ws.close(None);
    let _ = ws.flush();
}

/// Writes queued frames and reads (and drops) whatever the browser sends,
/// until either side closes or a write stalls.
fn pump(ws: &mut WebSocket<TcpStream>, queue: &Queue) {
    loop {
        let Some(frames) = queue.take(WS_POLL) else {
            return;
        };
        for f in frames {
            if ws
                .write(tungstenite::Message::Text(f.as_ref().to_owned()))
                .is_err()
            {
                return;
            }
        }
        if ws.flush().is_err() {
            return; // a write timed out (stuck browser) or the socket closed
        }
        // Input: pings (answered by tungstenite on the next flush), close,
        // or anything else (ignored). The socket's read timeout is short.
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(_)) => return,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_bad_ones_are_named() {
        let r = parse_head(b"GET /api/status?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.ws_key),
            ("GET", "/api/status", None)
        );
        let r = parse_head(
            b"GET /ws HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc==\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.ws_key.as_deref(), Some("abc=="));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost:"),
            Err(HeadError::Partial)
        );
        assert!(matches!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(REQUEST_HEAD_BYTES_MAX + 10, b'a');
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
    }

    #[test]
    fn a_slow_client_loses_its_oldest_frames_not_memory() {
        let hub = Hub::default();
        let q = hub.join().unwrap();
        for i in 0..(WS_QUEUE_FRAMES_MAX + 10) {
            hub.publish(Arc::from(format!("{i}")), false);
        }
        let got = q.take(Duration::from_millis(1)).unwrap();
        assert_eq!(got.len(), WS_QUEUE_FRAMES_MAX);
        assert_eq!(got[0].as_ref(), "10");
        hub.leave(&q);
        assert_eq!(hub.dropped_frames(), 10);
        assert_eq!(hub.clients(), 0);
    }

    #[test]
    fn a_dashboard_over_the_cap_is_closed_with_1013() {
        let (addr, hub) = start();
        let held: Vec<_> = (0..WS_CLIENTS_MAX)
            .map(|_| tungstenite::connect(format!("ws://{addr}/ws")).unwrap().0)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.clients() < WS_CLIENTS_MAX {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let (mut extra, _) = tungstenite::connect(format!("ws://{addr}/ws")).unwrap();
        match extra.read() {
            Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1013),
            other => panic!("expected a close with 1013, got {other:?}"),
        }
        assert_eq!(hub.clients(), WS_CLIENTS_MAX);
        drop(held);
    }

    #[test]
    fn a_full_queue_sheds_samples_before_events() {
        let hub = Hub::default();
        let q = hub.join().unwrap();
        hub.publish(Arc::from("event"), true);
        for i in 0..WS_QUEUE_FRAMES_MAX {
            hub.publish(Arc::from(format!("s{i}")), false);
        }
        let got = q.take(Duration::from_millis(1)).unwrap();
        assert_eq!(got.len(), WS_QUEUE_FRAMES_MAX);
        assert_eq!(got[0].as_ref(), "event", "the event outlives older samples");
        assert_eq!(got[1].as_ref(), "s1");
        hub.leave(&q);
    }

    #[test]
    fn clients_are_capped_and_new_ones_get_the_greeting_first() {
        let hub = Hub::default();
        hub.set_greeting(Arc::from("hello"));
        let qs: Vec<_> = (0..WS_CLIENTS_MAX).map(|_| hub.join().unwrap()).collect();
        assert!(hub.join().is_none());
        assert_eq!(
            qs[0].take(Duration::from_millis(1)).unwrap()[0].as_ref(),
            "hello"
        );
        hub.leave(&qs[0]);
        assert!(hub.join().is_some());
    }
    struct TestRoutes;
    impl Routes for TestRoutes {
        fn get(&self, path: &str) -> Option<Response> {
            (path == "/api/x").then(|| Response::ok("application/json", "{\"x\":1}"))
        }
    }

    fn start() -> (std::net::SocketAddr, Arc<Hub>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Arc::new(Hub::default());
        serve(listener, Arc::new(TestRoutes), hub.clone()).unwrap();
        (addr, hub)
    }

    fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_head_request_is_never_upgraded() {
        let (addr, hub) = start();
        let head = exchange(
            addr,
            b"HEAD /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc==\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert_eq!(hub.clients(), 0);
    }

    /// Routes with a bug: `/boom` panics.
    struct PanickyRoutes;
    impl Routes for PanickyRoutes {
        fn get(&self, path: &str) -> Option<Response> {
            assert_ne!(path, "/boom", "a route with a bug");
            TestRoutes.get(path)
        }
    }

    /// An exchange that tolerates the server closing first.
    fn try_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_connection_whose_thread_panics_gives_its_slot_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, Arc::new(PanickyRoutes), Arc::new(Hub::default())).unwrap();
        for _ in 0..=CONNECTIONS_MAX {
            try_exchange(addr, b"GET /boom HTTP/1.1\r\n\r\n");
        }
        // The last slot comes back as its thread unwinds, just after its
        // socket closed: allow a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = try_exchange(addr, b"GET /api/x HTTP/1.1\r\n\r\n");
            if ok.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "every slot is lost: {ok:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Routes with one large answer.
    struct BigRoutes;
    const BIG_BYTES: usize = 64 << 20;
    impl Routes for BigRoutes {
        fn get(&self, _path: &str) -> Option<Response> {
            Some(Response::ok(
                "application/octet-stream",
                vec![b'x'; BIG_BYTES],
            ))
        }
    }

    #[test]
    fn a_client_reading_an_answer_a_trickle_at_a_time_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, Arc::new(BigRoutes), Arc::new(Hub::default())).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        // A bounded receive buffer: the server's writes progress only as fast
        // as this client reads, a little at a time (no write stalls).
        let size: libc::c_int = 256 << 10;
        // SAFETY: a connected socket of ours, and an int option of its size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        s.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 8192];
        let mut got = 0usize;
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "still sending after {got} bytes"
            );
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break, // reset
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(got < BIG_BYTES, "the whole answer went out: {got} bytes");
    }

    #[test]
    fn routes_answer_and_everything_else_gets_a_clear_status() {
        let (addr, _hub) = start();
        let ok = exchange(addr, b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Access-Control-Allow-Origin: *"), "{ok}");
        assert!(ok.ends_with("{\"x\":1}"), "{ok}");
        let head = exchange(addr, b"HEAD /api/x HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let missing = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = exchange(addr, b"POST /api/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let junk = exchange(addr, b"\x16\x03\x01 not http at all\r\n\r\n");
        assert!(junk.starts_with("HTTP/1.1 400"), "{junk}");
        let plain_ws = exchange(addr, b"GET /ws HTTP/1.1\r\n\r\n");
        assert!(plain_ws.starts_with("HTTP/1.1 400"), "{plain_ws}");
    }

    #[test]
    fn websocket_clients_get_the_greeting_then_every_frame_and_a_stuck_one_blocks_nobody() {
        let (addr, hub) = start();
        hub.set_greeting(Arc::from("hello"));
        // A client that never reads: its queue is bounded, publishing goes on.
        let (mut stuck, _) = tungstenite::connect(format!("ws://{addr}/ws")).unwrap();
        let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws")).unwrap();
        let text = |m: tungstenite::Message| m.into_text().unwrap();
        assert_eq!(text(ws.read().unwrap()), "hello");
        let big: Arc<str> = Arc::from("x".repeat(64 << 10));
        for _ in 0..200 {
            hub.publish(big.clone(), false);
        }
        hub.publish(Arc::from("last"), false);
        let mut got = 0;
        loop {
            let m = text(ws.read().unwrap());
            if m == "last" {
                break;
            }
            got += 1;
        }
        assert!(got > 0);
        assert_eq!(hub.clients(), 2);
        // The stuck client's first frame is still the greeting: it was queued,
        // not lost, and everything past its queue was dropped, not buffered.
        assert_eq!(text(stuck.read().unwrap()), "hello");
        ws.close(None).unwrap();
        let _ = ws.flush();
        drop(stuck);
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.clients() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(hub.clients(), 0, "closed clients leave the hub");
    }
}
