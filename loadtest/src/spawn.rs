//! A local single broker for `--spawn-broker` and `bench`: started as a child
//! process, killed by PID and its data directory removed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use broker::client::{ClientError, Connection};
use wire::{
    CleanupPolicy, CreateTopicRequest, DescribeTopicRequest, Durability, ErrorCode, Message,
    TopicConfig,
};

/// How long a broker may take to open its shard ports (recovery included).
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Candidate port runs tried before giving up (each is one bind + probes).
const PORT_RUN_ATTEMPTS_MAX: usize = 500;
/// Broker starts tried, each on fresh ports, before giving up.
const START_ATTEMPTS_MAX: u32 = 3;

/// A broker child process.
pub struct LocalBroker {
    child: Child,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    remove_data_dir: bool,
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.remove_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A run of `n` consecutive free loopback ports (the OS picks the first, so
/// concurrent tests do not race for the same range).
fn free_port_run(n: u16) -> Result<u16> {
    for _ in 0..PORT_RUN_ATTEMPTS_MAX {
        let base = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if base > 60_000 {
            continue;
        }
        if (1..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no run of {n} free loopback ports")
}

/// The `drmq` binary: `explicit`, else `$DRMQ_BIN`, else next to this
/// executable (or one level up, where test binaries live in `deps/`).
pub fn find_drmq(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    if let Some(p) = std::env::var_os("DRMQ_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("drmq"), dir.parent()?.join("drmq")]
        .into_iter()
        .find(|p| p.is_file())
}

impl LocalBroker {
    /// Starts `drmq broker` with `shards` shards. Without a `drmq` binary the
    /// broker runs in a child of this executable (`serve-broker`), the same
    /// runtime from the broker crate.
    pub fn start(
        drmq: Option<&Path>,
        data_dir: Option<&Path>,
        shards: u16,
        log: Option<&Path>,
    ) -> Result<LocalBroker> {
        let (data_dir, remove_data_dir) = match data_dir {
            Some(d) => (d.to_owned(), false),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "drmq-loadtest-{}-{}",
                    std::process::id(),
                    Instant::now().elapsed().as_nanos() ^ u128::from(rand_seed())
                ));
                (d, true)
            }
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        // A port run found free can be taken by another process before the
        // broker binds it; the broker then exits at once: try new ports.
        let mut last_exit = None;
        for _ in 0..START_ATTEMPTS_MAX {
            let base = free_port_run(shards + 2)?;
            let mut cmd = match find_drmq(drmq) {
                Some(bin) => {
                    let mut c = Command::new(bin);
                    c.arg("broker");
                    c
                }
                None => {
                    let mut c = Command::new(std::env::current_exe()?);
                    c.arg("serve-broker");
                    c
                }
            };
            let stderr = match log {
                Some(p) => Stdio::from(std::fs::File::create(p)?),
                None => Stdio::null(),
            };
            cmd.args(["--id", "1", "--shards", &shards.to_string()])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen", &format!("127.0.0.1:{base}")])
                .args(["--peer-listen", &format!("127.0.0.1:{}", base + shards)])
                .args(["--http", &format!("127.0.0.1:{}", base + shards + 1)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr);
            let child = cmd.spawn().context("starting the broker")?;
            let mut b = LocalBroker {
                child,
                listen: SocketAddr::from(([127, 0, 0, 1], base)),
                http: SocketAddr::from(([127, 0, 0, 1], base + shards + 1)),
                data_dir: data_dir.clone(),
                // Only the last owner removes the directory (see below).
                remove_data_dir: false,
            };
            let deadline = Instant::now() + BROKER_START_TIMEOUT;
            // Bounded by the deadline.
            let exited = loop {
                if (0..shards).all(|s| TcpStream::connect(("127.0.0.1", base + s)).is_ok()) {
                    break None;
                }
                if let Some(status) = b.child.try_wait()? {
                    break Some(status);
                }
                if Instant::now() >= deadline {
                    bail!("the broker did not open its ports within {BROKER_START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match exited {
                None => {
                    b.remove_data_dir = remove_data_dir;
                    return Ok(b);
                }
                Some(status) => last_exit = Some(status),
            }
        }
        if remove_data_dir {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        bail!(
            "the broker exited at start {START_ATTEMPTS_MAX} times (last: {})",
            last_exit.map(|s| s.to_string()).unwrap_or_default()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// Creates the topic, or checks that an existing one has `partitions`.
pub fn ensure_topic(
    brokers: &[SocketAddr],
    name: &str,
    partitions: u32,
    replication: u16,
    segment_bytes: Option<u64>,
) -> Result<()> {
    let mut conn = Connection::connect_any(brokers, Duration::from_secs(5))?;
    let req = CreateTopicRequest {
        name: name.to_owned(),
        partitions,
        replication,
        config: TopicConfig {
            retention_bytes: None,
            retention_ms: None,
            segment_bytes,
            segment_ms: None,
            cleanup: CleanupPolicy::Delete,
            durability: Durability::EveryBatch,
            tombstone_retention_ms: None,
        },
        timeout_ms: 10_000,
    };
    match conn.request(&req.into()) {
        Ok(_) => Ok(()),
        Err(ClientError::Broker {
            code: ErrorCode::TopicAlreadyExists,
            ..
        }) => {
            let resp = conn.request(
                &DescribeTopicRequest {
                    name: name.to_owned(),
                }
                .into(),
            )?;
            let Message::DescribeTopicResponse(d) = resp else {
                bail!("unexpected response {}", resp.kind().name())
            };
            let have = d.topic.partitions.len() as u32;
            if have != partitions {
                bail!("topic {name} exists with {have} partitions, not {partitions}");
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating topic {name}")),
    }
}

/// Counters the telemetry thread serves at `GET /api/status`, summed over
/// shards. Samples are taken once a second, so they lag by up to a second.
pub const BROKER_COUNTERS: [&str; 5] = [
    "produce_requests",
    "produce_bytes",
    "fetch_requests",
    "fetch_bytes",
    "errors",
];

/// Reads the broker's counters over HTTP (None if it does not answer).
pub fn broker_counters(http: SocketAddr) -> Option<std::collections::BTreeMap<String, u64>> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /api/status HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    // Bounded: the server closes after one answer; the read has a timeout.
    s.take(16 << 20).read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut out = std::collections::BTreeMap::new();
    for shard in v["shards"].as_array()? {
        for name in BROKER_COUNTERS {
            *out.entry(name.to_owned()).or_insert(0) += shard[name].as_u64().unwrap_or(0);
        }
    }
    Some(out)
}
