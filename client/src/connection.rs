//! One blocking request/response connection to one broker, and the
//! address helpers every part of the client shares.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use wire::{ErrorResponse, FrameDecoder, FrameLimits, Message};

use crate::ClientError;

/// Read buffer per connection: 64 KiB, one typical batch.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The first address `host:port` resolves to (None if it resolves to none).
pub fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

/// The address of a broker's hint (NotLeader, NotController), if it resolves.
pub fn hint_addr(hint: &wire::LeaderHint) -> Option<SocketAddr> {
    resolve(&hint.endpoint.host, hint.endpoint.port)
}

/// Parses `HOST:PORT,...` into addresses (host names resolved).
pub fn parse_brokers(spec: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addrs = item
            .to_socket_addrs()
            .map_err(|_| ClientError::BadBrokers(item.to_owned()))?;
        out.extend(addrs);
    }
    if out.is_empty() {
        return Err(ClientError::BadBrokers(spec.to_owned()));
    }
    Ok(out)
}

/// Connects to `addr`, refusing a TCP self-connection: with nothing
/// listening on a loopback port inside the ephemeral range, the kernel can
/// pick that very port as the source and connect the socket to itself (a
/// "simultaneous open"), which would echo every request back as its answer
/// and hold the port a restarting broker needs.
pub fn connect_tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    if stream.local_addr()? == stream.peer_addr()? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connected to itself: nothing listens there",
        ));
    }
    Ok(stream)
}

/// One connection to one broker.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    decoder: FrameDecoder,
    limits: FrameLimits,
    next_correlation_id: u64,
}

impl Connection {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io { addr, source };
        let stream = connect_tcp(addr, timeout).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let limits = FrameLimits::default();
        Ok(Connection {
            addr,
            stream,
            decoder: FrameDecoder::new(limits),
            limits,
            next_correlation_id: 1,
        })
    }

    /// Connects to the first reachable broker of the list.
    pub fn connect_any(brokers: &[SocketAddr], timeout: Duration) -> Result<Self, ClientError> {
        let mut last = String::from("empty broker list");
        for &addr in brokers {
            match Connection::connect(addr, timeout) {
                Ok(c) => return Ok(c),
                Err(e) => last = e.to_string(),
            }
        }
        let tried = brokers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Err(ClientError::Unreachable { tried, last })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and waits for its response. An [`ErrorResponse`]
    /// comes back as [`ClientError::Broker`].
    pub fn request(&mut self, msg: &Message) -> Result<Message, ClientError> {
        let addr = self.addr;
        let corr = self.next_correlation_id;
        self.next_correlation_id += 1;
        let frame = msg
            .encode(corr, self.limits)
            .map_err(|source| ClientError::Protocol { addr, source })?;
        self.stream
            .write_all(&frame)
            .map_err(|source| ClientError::Io { addr, source })?;
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            match self
                .decoder
                .next_frame()
                .map_err(|source| ClientError::Protocol { addr, source })?
            {
                Some(frame) if frame.header.correlation_id == corr => {
                    let msg = frame
                        .message()
                        .map_err(|source| ClientError::Protocol { addr, source })?;
                    return match msg {
                        Message::ErrorResponse(e) => Err(broker_error(&e)),
                        other => Ok(other),
                    };
                }
                Some(_) => continue, // a late answer to an earlier request
                None => {
                    let n = match self.stream.read(&mut chunk) {
                        Ok(n) => n,
                        // A signal, not a failure: read on.
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(source) => return Err(ClientError::Io { addr, source }),
                    };
                    if n == 0 {
                        return Err(ClientError::Closed { addr });
                    }
                    self.decoder.extend(&chunk[..n]);
                }
            }
        }
    }
}

fn broker_error(e: &ErrorResponse) -> ClientError {
    ClientError::Broker {
        code: e.error_code(),
        message: e.message.clone(),
        hint: e.leader_hint.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use wire::{parse_frame, ErrorCode, MetadataRequest, MetadataResponse, Parsed};

    #[test]
    fn broker_lists_parse_and_garbage_is_named() {
        assert_eq!(parse_brokers("127.0.0.1:1, 127.0.0.1:2").unwrap().len(), 2);
        assert!(parse_brokers("").is_err());
        assert!(parse_brokers("nope")
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    /// A one-shot server: answers the first frame with `answer(corr)`.
    fn serve_once(answer: impl FnOnce(u64) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let corr = loop {
                let n = s.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Parsed::Frame { frame, .. } =
                    parse_frame(&buf, FrameLimits::default()).unwrap()
                {
                    break frame.header.correlation_id;
                }
            };
            s.write_all(&answer(corr)).unwrap();
        });
        addr
    }

    extern "C" fn ignore_signal(_: libc::c_int) {}

    /// A signal delivered while the request waits for its answer (a
    /// handler installed without SA_RESTART: read(2) fails with EINTR) is
    /// not a failed request: the read goes on.
    #[test]
    fn a_signal_while_waiting_for_the_answer_does_not_fail_the_request() {
        // SAFETY: installs a handler that does nothing, for SIGUSR1 only
        // (no other test of this binary uses it), without SA_RESTART.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
        let limits = FrameLimits::default();
        let addr = serve_once(move |corr| {
            // Answer late, after the signal.
            std::thread::sleep(Duration::from_millis(300));
            let resp = MetadataResponse {
                brokers: vec![],
                controller: Some(7),
                topics: vec![],
            };
            wire::encode(&resp, corr, limits).unwrap().to_vec()
        });
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: the test thread outlives this one (it joins it).
            unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
        });
        let mut c = Connection::connect(addr, Duration::from_secs(5)).unwrap();
        let got = c.request(&MetadataRequest { topics: None }.into());
        kicker.join().unwrap();
        assert!(
            matches!(got, Ok(Message::MetadataResponse(ref m)) if m.controller == Some(7)),
            "{got:?}"
        );
    }

    #[test]
    fn a_request_gets_its_response_and_error_responses_become_errors() {
        let limits = FrameLimits::default();
        let addr = serve_once(move |corr| {
            let resp = MetadataResponse {
                brokers: vec![],
                controller: Some(3),
                topics: vec![],
            };
            wire::encode(&resp, corr, limits).unwrap().to_vec()
        });
        let mut c = Connection::connect(addr, Duration::from_secs(5)).unwrap();
        let got = c.request(&MetadataRequest { topics: None }.into()).unwrap();
        assert!(matches!(got, Message::MetadataResponse(m) if m.controller == Some(3)));

        let addr = serve_once(move |corr| {
            wire::encode(
                &ErrorResponse::new(ErrorCode::NotController, "ask 2"),
                corr,
                limits,
            )
            .unwrap()
            .to_vec()
        });
        let mut c = Connection::connect(addr, Duration::from_secs(5)).unwrap();
        let err = c
            .request(&MetadataRequest { topics: None }.into())
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Broker {
                    code: ErrorCode::NotController,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_from_the_server_is_a_protocol_error_not_a_hang() {
        let addr = serve_once(|_| vec![0xff; 64]);
        let mut c = Connection::connect(addr, Duration::from_secs(5)).unwrap();
        let err = c
            .request(&MetadataRequest { topics: None }.into())
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    }

    #[test]
    fn an_unreachable_broker_list_names_what_was_tried() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Connection::connect_any(&[addr], Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
