//! Local brokers for `--spawn-broker` and `bench`: child processes, killed by
//! PID and their data directory removed when dropped; faults (kill -9,
//! SIGSTOP) are applied to them by PID too.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use broker::client::{ClientError, Connection};
use wire::{
    CleanupPolicy, ClusterStatusRequest, CreateTopicRequest, DescribeTopicRequest, Durability,
    ErrorCode, Message, MetadataRequest, TopicConfig,
};

/// How long a broker may take to open its shard ports (recovery included).
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Candidate port runs tried before giving up (each is one bind + probes).
const PORT_RUN_ATTEMPTS_MAX: usize = 500;
/// Broker starts tried, each on fresh ports, before giving up.
const START_ATTEMPTS_MAX: u32 = 3;

/// Where a partition is: its leader (and the leader's term) and replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub leader: Option<u64>,
    pub term: u64,
    pub replicas: Vec<u64>,
}

/// One member of a [`LocalCluster`].
struct Node {
    child: Option<Child>,
    base: u16,
}

/// Local brokers started as child processes (ids 1..=n, RF up to n), killed
/// by PID (after SIGCONT, in case a fault stopped one) and their data
/// directory removed when dropped. Ports per broker: clients
/// `base..base+shards`, peers `base+shards..base+2*shards`, HTTP
/// `base+2*shards`.
pub struct LocalCluster {
    nodes: Vec<Node>,
    drmq: Option<PathBuf>,
    shards: u16,
    secret: String,
    log: Option<PathBuf>,
    /// Client address (shard 0) of each broker.
    pub listens: Vec<SocketAddr>,
    /// Telemetry address of each broker.
    pub https: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    remove_data_dir: bool,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.remove_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A run of `n` consecutive free loopback ports below the kernel's
/// ephemeral range (so no outgoing connection takes one of them while a
/// broker is down), starting at a random point so concurrent runs rarely
/// collide.
fn free_port_run(n: u16) -> Result<u16> {
    let (lo, hi) = (20_000u32, 32_000u32);
    let mut x = rand_seed() ^ u64::from(std::process::id()).rotate_left(17);
    for _ in 0..PORT_RUN_ATTEMPTS_MAX {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = (lo + ((x >> 33) as u32) % (hi - lo - u32::from(n))) as u16;
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
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

impl LocalCluster {
    /// Starts `nodes` brokers with `shards` shards each. Without a `drmq`
    /// binary a single broker runs in a child of this executable
    /// (`serve-broker`, the same runtime from the broker crate); a cluster
    /// needs the binary.
    pub fn start(
        drmq: Option<&Path>,
        data_dir: Option<&Path>,
        shards: u16,
        nodes: u16,
        log: Option<&Path>,
    ) -> Result<LocalCluster> {
        if nodes == 0 || nodes > 7 {
            bail!("--nodes must be in 1..=7");
        }
        let drmq = find_drmq(drmq);
        if nodes > 1 && drmq.is_none() {
            bail!("a cluster of {nodes} brokers needs the drmq binary (--drmq or $DRMQ_BIN)");
        }
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
        // brokers bind it; a broker then exits at once: try new ports.
        let per = 2 * shards + 1;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS_MAX {
            let run = free_port_run(per * nodes)?;
            let mut c = LocalCluster {
                nodes: (0..nodes)
                    .map(|i| Node {
                        child: None,
                        base: run + per * i,
                    })
                    .collect(),
                drmq: drmq.clone(),
                shards,
                secret: format!(
                    "loadtest-{:016x}",
                    rand_seed() ^ u64::from(std::process::id())
                ),
                log: log.map(Path::to_owned),
                listens: (0..nodes)
                    .map(|i| SocketAddr::from(([127, 0, 0, 1], run + per * i)))
                    .collect(),
                https: (0..nodes)
                    .map(|i| SocketAddr::from(([127, 0, 0, 1], run + per * i + 2 * shards)))
                    .collect(),
                data_dir: data_dir.clone(),
                // Only the last owner removes the directory (see below).
                remove_data_dir: false,
            };
            let started = (0..nodes as usize)
                .try_for_each(|i| c.spawn(i))
                .and_then(|_| (0..nodes as usize).try_for_each(|i| c.wait_up(i)));
            match started {
                Ok(()) => {
                    c.remove_data_dir = remove_data_dir;
                    return Ok(c);
                }
                Err(e) => last_err = Some(e),
            }
        }
        if remove_data_dir {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        bail!(
            "the brokers did not start in {START_ATTEMPTS_MAX} attempts (last: {:#})",
            last_err.unwrap_or_else(|| anyhow::anyhow!("?"))
        )
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let shards = self.shards;
        let peers: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(k, n)| format!("{}=127.0.0.1:{}", k + 1, n.base + shards))
            .collect();
        let base = self.nodes[i].base;
        let mut cmd = match &self.drmq {
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
        let stderr = match &self.log {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Stdio::null(),
        };
        cmd.args([
            "--id",
            &(i + 1).to_string(),
            "--shards",
            &shards.to_string(),
        ])
        .arg("--data-dir")
        .arg(self.data_dir.join(format!("broker-{}", i + 1)))
        .args(["--listen", &format!("127.0.0.1:{base}")])
        .args(["--peer-listen", &format!("127.0.0.1:{}", base + shards)])
        .args(["--http", &format!("127.0.0.1:{}", base + 2 * shards)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        if self.nodes.len() > 1 {
            cmd.args(["--peers", &peers.join(",")])
                .env("DRMQ_CLUSTER_SECRET", &self.secret);
        }
        self.nodes[i].child = Some(cmd.spawn().context("starting a broker")?);
        Ok(())
    }

    fn wait_up(&mut self, i: usize) -> Result<()> {
        let (base, shards) = (self.nodes[i].base, self.shards);
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        // Bounded by the deadline.
        loop {
            if (0..shards).all(|s| TcpStream::connect(("127.0.0.1", base + s)).is_ok()) {
                return Ok(());
            }
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.nodes[i].child = None;
                    bail!("broker {} exited at start ({status})", i + 1);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "broker {} did not open its ports within {BROKER_START_TIMEOUT:?}",
                    i + 1
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// kill -9 of broker `i` (0-based).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts broker `i` again on its data and ports.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].child.is_some() {
            bail!("broker {} is running", i + 1);
        }
        self.spawn(i)?;
        self.wait_up(i)
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let c = self.nodes[i]
            .child
            .as_ref()
            .with_context(|| format!("broker {} is not running", i + 1))?;
        // SAFETY: kill(2) on our own child, not yet reaped.
        if unsafe { libc::kill(c.id() as libc::pid_t, sig) } != 0 {
            bail!(
                "signalling broker {}: {}",
                i + 1,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGSTOP of broker `i`.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGSTOP)
    }

    /// SIGCONT of broker `i`.
    pub fn resume(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)
    }

    /// Waits (up to `timeout`) until every running broker reports every
    /// partition it leads with all replicas caught up (lag 0), so a case
    /// does not pay for the previous one's fault (a follower catching up
    /// competes for the same cores). Returns whether they caught up.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline.
        loop {
            let lagging =
                self.listens
                    .iter()
                    .zip(&self.nodes)
                    .filter(|(_, n)| n.child.is_some())
                    .any(|(addr, _)| {
                        let status =
                            Connection::connect(*addr, Duration::from_secs(2)).and_then(|mut c| {
                                c.request(
                                    &ClusterStatusRequest {
                                        include_partitions: true,
                                    }
                                    .into(),
                                )
                            });
                        match status {
                            Ok(Message::ClusterStatusResponse(s)) => s.partitions.iter().any(|p| {
                                p.leader.is_none() || p.replicas.iter().any(|r| r.lag > 0)
                            }),
                            _ => true,
                        }
                    });
            if !lagging {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The leader and the replicas (broker ids) of a partition, as the
    /// running brokers see them.
    pub fn placement(&self, topic: &str, partition: u32) -> Result<Placement> {
        self.placement_without(topic, partition, 0)
    }

    /// [`Self::placement`] asking every running broker but `skip` (a stopped
    /// broker accepts connections but never answers).
    pub fn placement_without(&self, topic: &str, partition: u32, skip: u64) -> Result<Placement> {
        let live: Vec<SocketAddr> = self
            .listens
            .iter()
            .zip(&self.nodes)
            .enumerate()
            .filter(|(i, (_, n))| n.child.is_some() && *i as u64 + 1 != skip)
            .map(|(_, (a, _))| *a)
            .collect();
        let mut conn = Connection::connect_any(&live, Duration::from_secs(2))?;
        let resp = conn.request(
            &MetadataRequest {
                topics: Some(vec![topic.to_owned()]),
            }
            .into(),
        )?;
        let Message::MetadataResponse(m) = resp else {
            bail!("unexpected response {}", resp.kind().name())
        };
        let p = m
            .topics
            .first()
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            .with_context(|| format!("no partition {topic}-{partition}"))?;
        Ok(Placement {
            leader: p.leader,
            term: p.leader_term,
            replicas: p.replicas.clone(),
        })
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
    // The controller may not be elected yet, or be another broker: follow
    // its hint, retry retryable answers, until the deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let req: Message = req.into();
    let mut conn = Connection::connect_any(brokers, Duration::from_secs(5))?;
    let result = loop {
        let r = conn.request(&req);
        match &r {
            Err(ClientError::Broker { code, hint, .. })
                if code.is_retryable() && Instant::now() < deadline =>
            {
                let target = hint.as_ref().and_then(|h| {
                    broker::client::parse_brokers(&format!(
                        "{}:{}",
                        h.endpoint.host, h.endpoint.port
                    ))
                    .ok()
                    .and_then(|v| v.first().copied())
                });
                std::thread::sleep(Duration::from_millis(100));
                conn = match target {
                    Some(a) => Connection::connect(a, Duration::from_secs(5))?,
                    None => Connection::connect_any(brokers, Duration::from_secs(5))?,
                };
            }
            _ => break r,
        }
    };
    match result {
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
pub const BROKER_COUNTERS: [&str; 7] = [
    "produce_requests",
    "produce_bytes",
    "fetch_requests",
    "fetch_bytes",
    "errors",
    "leader_changes",
    "elections",
];

/// Each broker's counters ([`broker_counters`]; None for one that does not
/// answer).
pub type ClusterCounters = Vec<Option<std::collections::BTreeMap<String, u64>>>;

pub fn cluster_counters(https: &[SocketAddr]) -> ClusterCounters {
    https.iter().map(|h| broker_counters(*h)).collect()
}

/// What the brokers counted between two readings, summed. A counter that
/// went down belongs to a broker that restarted: its new value is the delta.
pub fn counter_deltas(
    before: &ClusterCounters,
    after: &ClusterCounters,
) -> Option<std::collections::BTreeMap<String, u64>> {
    let mut out: Option<std::collections::BTreeMap<String, u64>> = None;
    for (b, a) in before.iter().zip(after) {
        let Some(a) = a else { continue };
        let sum = out.get_or_insert_with(Default::default);
        for (k, v) in a {
            let old = b.as_ref().and_then(|b| b.get(k)).copied().unwrap_or(0);
            let d = if *v >= old { v - old } else { *v };
            *sum.entry(k.clone()).or_insert(0) += d;
        }
    }
    out
}

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
