//! Local clusters of `drmq broker` child processes on loopback: the one
//! launcher behind `drmq dev`, `drmq-loadtest --spawn-broker` and the
//! integration tests. It picks ports (free runs or fixed ones), spawns the
//! brokers, waits until every shard listens, and applies faults by PID
//! (kill -9, SIGSTOP/SIGCONT, SIGTERM, restart on the same data and ports).
//! Every child is killed (after SIGCONT) when its [`LocalCluster`] is dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;
use wire::{ClusterStatusRequest, Message, MetadataRequest};

use crate::connection::Connection;
use crate::ClientError;

/// Candidate port runs tried before giving up (each is one bind per port).
const PORT_RUN_ATTEMPTS_MAX: usize = 500;
/// Free port runs lie below the kernel's ephemeral range (32768 and up on
/// Linux), so no outgoing connection takes one while a broker is down.
const PORT_RUN_LOW: u32 = 20_000;
const PORT_RUN_HIGH: u32 = 32_000;
/// Largest cluster the launcher starts (ports and processes on one host).
pub const NODES_MAX: u16 = 8;
/// How often a starting broker's ports are probed.
const WAIT_UP_POLL: Duration = Duration::from_millis(20);

/// Why a local cluster (or one of its brokers) could not be started,
/// stopped or signalled.
#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("no run of {0} free loopback ports")]
    NoFreePorts(u16),
    #[error("a local cluster has 1..={NODES_MAX} brokers and 1..=64 shards each, not {nodes} × {shards}")]
    BadSize { nodes: u16, shards: u16 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting broker {id} ({drmq}): {source}")]
    Spawn {
        id: usize,
        drmq: PathBuf,
        source: std::io::Error,
    },
    #[error("broker {id} exited at start ({status})")]
    Exited { id: usize, status: ExitStatus },
    #[error("broker {id} did not open its ports within {timeout:?}")]
    NotUp { id: usize, timeout: Duration },
    #[error("broker {id} is not running")]
    NotRunning { id: usize },
    #[error("broker {id} is running")]
    Running { id: usize },
    #[error("signalling broker {id}: {source}")]
    Signal { id: usize, source: std::io::Error },
    #[error("broker {id} did not stop within {timeout:?} of SIGTERM (killed)")]
    NotStopped { id: usize, timeout: Duration },
    #[error("the brokers did not start in {attempts} attempts (last: {last})")]
    Attempts {
        attempts: u32,
        last: Box<LaunchError>,
    },
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

/// A seed that differs between processes and calls (no `rand` here).
pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A fresh cluster secret (hex), for clusters that need one.
pub fn random_secret() -> String {
    format!("{:016x}{:016x}", seed(), seed().rotate_left(29))
}

/// A run of `n` consecutive loopback ports that were free a moment ago,
/// below the kernel's ephemeral range, from a random start so concurrent
/// runs rarely collide.
pub fn free_port_run(n: u16) -> Result<u16, LaunchError> {
    let span = PORT_RUN_HIGH - PORT_RUN_LOW;
    if u32::from(n) == 0 || u32::from(n) >= span {
        return Err(LaunchError::NoFreePorts(n));
    }
    let mut x = seed();
    for _ in 0..PORT_RUN_ATTEMPTS_MAX {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = (PORT_RUN_LOW + ((x >> 33) as u32) % (span - u32::from(n))) as u16;
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    Err(LaunchError::NoFreePorts(n))
}

/// The ports of one broker: shard `s` serves clients on `client + s` and
/// peers on `peer + s`; telemetry on `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub client: u16,
    pub peer: u16,
    pub http: u16,
}

impl NodePorts {
    /// Ports per broker in a packed run: clients, peers, HTTP.
    pub fn per_node(shards: u16) -> u16 {
        2 * shards + 1
    }

    /// A packed run from `base`: clients `base..base+shards`, peers
    /// `base+shards..base+2*shards`, HTTP `base+2*shards`.
    pub fn packed(base: u16, shards: u16) -> NodePorts {
        NodePorts {
            client: base,
            peer: base + shards,
            http: base + 2 * shards,
        }
    }

    /// `drmq dev`'s fixed ports for broker `id` (1-based): clients from
    /// `port + 16(id-1)`, peers from `port + 200 + 16(id-1)`, HTTP on
    /// `port - 1012 + id` (callers check `port` is in 1100..=65000 and
    /// `id` in 1..=8, so none overflows).
    pub fn dev(port: u16, id: u16) -> NodePorts {
        NodePorts {
            client: port + (id - 1) * 16,
            peer: port + 200 + (id - 1) * 16,
            http: port - 1012 + id,
        }
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }
}

/// Where a broker child's stderr goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerLog {
    Discard,
    Inherit,
    /// Appended to this file (shared by every broker of the cluster).
    Append(PathBuf),
}

/// Everything needed to start one broker.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: usize,
    pub data_dir: PathBuf,
    pub ports: NodePorts,
    pub shards: u16,
    /// `--peers`: every voter's peer address (None: a lone broker).
    pub peers: Option<String>,
    /// `DRMQ_CLUSTER_SECRET` in the child's environment.
    pub secret: Option<String>,
    /// More `drmq broker` flags.
    pub extra_args: Vec<String>,
    pub log: BrokerLog,
    /// The child gets SIGTERM when this process dies, whatever the cause
    /// (`drmq dev`).
    pub parent_death_signal: bool,
}

/// Starts `drmq broker` as `spec` says. Its stdin and stdout are closed.
pub fn spawn(drmq: &Path, spec: &NodeSpec) -> Result<Child, LaunchError> {
    let p = spec.ports;
    let mut cmd = Command::new(drmq);
    cmd.args(["broker", "--id", &spec.id.to_string()])
        .args(["--shards", &spec.shards.to_string()])
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .args(["--listen", &format!("127.0.0.1:{}", p.client)])
        .args(["--peer-listen", &format!("127.0.0.1:{}", p.peer)])
        .args(["--http", &format!("127.0.0.1:{}", p.http)]);
    if let Some(peers) = &spec.peers {
        cmd.args(["--peers", peers]);
        // Every broker of a local cluster is on this machine: pinned, they
        // would all put their shard s on the same core (unless asked to).
        if !spec
            .extra_args
            .iter()
            .any(|a| a.starts_with("--pin-shards"))
        {
            cmd.args(["--pin-shards", "false"]);
        }
    }
    cmd.args(&spec.extra_args);
    if let Some(s) = &spec.secret {
        cmd.env("DRMQ_CLUSTER_SECRET", s);
    }
    let stderr = match &spec.log {
        BrokerLog::Discard => Stdio::null(),
        BrokerLog::Inherit => Stdio::inherit(),
        BrokerLog::Append(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LaunchError::Io {
                    path: path.clone(),
                    source,
                })?,
        ),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if spec.parent_death_signal {
        // SAFETY: prctl is async-signal-safe and affects only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().map_err(|source| LaunchError::Spawn {
        id: spec.id,
        drmq: drmq.to_owned(),
        source,
    })
}

/// Waits (up to `timeout`) until every shard of the broker accepts client
/// connections; fails at once if the child exits.
pub fn wait_up(
    child: &mut Child,
    id: usize,
    ports: NodePorts,
    shards: u16,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let deadline = Instant::now() + timeout;
    // Bounded by the deadline.
    loop {
        if (0..shards).all(|s| TcpStream::connect(("127.0.0.1", ports.client + s)).is_ok()) {
            return Ok(());
        }
        let exited = child
            .try_wait()
            .map_err(|source| LaunchError::Signal { id, source })?;
        if let Some(status) = exited {
            return Err(LaunchError::Exited { id, status });
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::NotUp { id, timeout });
        }
        std::thread::sleep(WAIT_UP_POLL);
    }
}

/// Sends `sig` to our own child (not yet reaped).
pub fn signal(child: &Child, id: usize, sig: libc::c_int) -> Result<(), LaunchError> {
    // SAFETY: kill(2) on our own child, not yet reaped (we own the Child).
    if unsafe { libc::kill(child.id() as libc::pid_t, sig) } != 0 {
        return Err(LaunchError::Signal {
            id,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// SIGTERM, then waits (up to `timeout`) for the child to exit; past it the
/// child is killed and that is an error.
pub fn terminate(
    child: &mut Child,
    id: usize,
    timeout: Duration,
) -> Result<ExitStatus, LaunchError> {
    signal(child, id, libc::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    // Bounded by the deadline.
    loop {
        let exited = child
            .try_wait()
            .map_err(|source| LaunchError::Signal { id, source })?;
        if let Some(s) = exited {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::NotStopped { id, timeout });
        }
        std::thread::sleep(WAIT_UP_POLL);
    }
}

/// How a cluster's ports are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPlan {
    /// A free run of loopback ports (new ones on each start attempt).
    Free,
    /// `drmq dev`'s fixed ports from this first client port.
    Dev { port: u16 },
}

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub drmq: PathBuf,
    pub nodes: u16,
    pub shards: u16,
    /// Broker `i` keeps its data in `data_dir/broker-i`.
    pub data_dir: PathBuf,
    /// Remove `data_dir` when the cluster is dropped (a temporary one).
    pub remove_data_dir: bool,
    pub ports: PortPlan,
    /// `DRMQ_CLUSTER_SECRET` for every broker (None: none given).
    pub secret: Option<String>,
    /// `--peers` even for a single broker (a one-voter cluster).
    pub peers_always: bool,
    pub extra_args: Vec<String>,
    pub log: BrokerLog,
    pub parent_death_signal: bool,
    /// Tries, each on fresh ports with [`PortPlan::Free`]: a run found free
    /// can be taken by another process before the brokers bind it.
    pub start_attempts: u32,
    /// How long a broker may take to open its shard ports (recovery included).
    pub start_timeout: Duration,
}

impl LaunchOptions {
    /// Defaults: free ports, 3 start attempts of 30 s, no secret, stderr
    /// discarded.
    pub fn new(drmq: PathBuf, data_dir: PathBuf, nodes: u16, shards: u16) -> LaunchOptions {
        LaunchOptions {
            drmq,
            nodes,
            shards,
            data_dir,
            remove_data_dir: false,
            ports: PortPlan::Free,
            secret: None,
            peers_always: false,
            extra_args: Vec::new(),
            log: BrokerLog::Discard,
            parent_death_signal: false,
            start_attempts: 3,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a partition is: its leader (and the leader's term) and replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub leader: Option<u64>,
    pub term: u64,
    pub replicas: Vec<u64>,
}

/// Local brokers started as child processes (ids 1..=n). See the module docs.
pub struct LocalCluster {
    opts: LaunchOptions,
    specs: Vec<NodeSpec>,
    children: Vec<Option<Child>>,
    /// Client address (shard 0) of each broker.
    pub listens: Vec<SocketAddr>,
    /// Telemetry address of each broker.
    pub https: Vec<SocketAddr>,
    pub data_dir: PathBuf,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(c) = c.as_mut() {
                // In case a fault stopped it; an error means it is gone.
                let _ = signal(c, i + 1, libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.opts.remove_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

impl LocalCluster {
    /// Starts the brokers and waits until each listens on every shard.
    pub fn start(opts: LaunchOptions) -> Result<LocalCluster, LaunchError> {
        let (nodes, shards) = (opts.nodes, opts.shards);
        if !(1..=NODES_MAX).contains(&nodes) || !(1..=64).contains(&shards) {
            return Err(LaunchError::BadSize { nodes, shards });
        }
        std::fs::create_dir_all(&opts.data_dir).map_err(|source| LaunchError::Io {
            path: opts.data_dir.clone(),
            source,
        })?;
        let attempts = opts.start_attempts.max(1);
        let mut last = None;
        for _ in 0..attempts {
            let ports = match opts.ports {
                PortPlan::Free => {
                    let per = NodePorts::per_node(shards);
                    let run = free_port_run(per * nodes)?;
                    (0..nodes)
                        .map(|i| NodePorts::packed(run + per * i, shards))
                        .collect()
                }
                PortPlan::Dev { port } => (1..=nodes).map(|id| NodePorts::dev(port, id)).collect(),
            };
            let mut c = LocalCluster::plan(&opts, ports);
            // Only the cluster that starts removes the directory.
            c.opts.remove_data_dir = false;
            match c.start_all() {
                Ok(()) => {
                    c.opts.remove_data_dir = opts.remove_data_dir;
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
            drop(c);
            if opts.ports != PortPlan::Free {
                break; // fixed ports: new attempts would find the same
            }
        }
        if opts.remove_data_dir {
            let _ = std::fs::remove_dir_all(&opts.data_dir);
        }
        let last = last.unwrap_or(LaunchError::NoFreePorts(0));
        if attempts == 1 || opts.ports != PortPlan::Free {
            return Err(last);
        }
        Err(LaunchError::Attempts {
            attempts,
            last: Box::new(last),
        })
    }

    fn plan(opts: &LaunchOptions, ports: Vec<NodePorts>) -> LocalCluster {
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{}", i + 1, p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let specs: Vec<NodeSpec> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| NodeSpec {
                id: i + 1,
                data_dir: opts.data_dir.join(format!("broker-{}", i + 1)),
                ports: *p,
                shards: opts.shards,
                peers: (opts.peers_always || ports.len() > 1).then(|| peers.clone()),
                secret: opts.secret.clone(),
                extra_args: opts.extra_args.clone(),
                log: opts.log.clone(),
                parent_death_signal: opts.parent_death_signal,
            })
            .collect();
        LocalCluster {
            children: specs.iter().map(|_| None).collect(),
            listens: ports.iter().map(NodePorts::client_addr).collect(),
            https: ports.iter().map(NodePorts::http_addr).collect(),
            data_dir: opts.data_dir.clone(),
            specs,
            opts: opts.clone(),
        }
    }

    fn start_all(&mut self) -> Result<(), LaunchError> {
        for i in 0..self.specs.len() {
            self.children[i] = Some(spawn(&self.opts.drmq, &self.specs[i])?);
        }
        (0..self.specs.len()).try_for_each(|i| self.wait_up(i))
    }

    fn wait_up(&mut self, i: usize) -> Result<(), LaunchError> {
        let spec = &self.specs[i];
        let child = self.children[i]
            .as_mut()
            .ok_or(LaunchError::NotRunning { id: i + 1 })?;
        let r = wait_up(
            child,
            i + 1,
            spec.ports,
            spec.shards,
            self.opts.start_timeout,
        );
        if matches!(r, Err(LaunchError::Exited { .. })) {
            self.children[i] = None; // reaped
        }
        r
    }

    pub fn nodes(&self) -> usize {
        self.specs.len()
    }

    /// The ports of broker `i` (0-based).
    pub fn ports(&self, i: usize) -> NodePorts {
        self.specs[i].ports
    }

    /// Broker `i`'s data directory.
    pub fn node_dir(&self, i: usize) -> &Path {
        &self.specs[i].data_dir
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// kill -9 of broker `i` (0-based); nothing if it is not running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts broker `i` again on its data and ports.
    pub fn restart(&mut self, i: usize) -> Result<(), LaunchError> {
        if self.children[i].is_some() {
            return Err(LaunchError::Running { id: i + 1 });
        }
        self.children[i] = Some(spawn(&self.opts.drmq, &self.specs[i])?);
        self.wait_up(i)
    }

    fn child(&self, i: usize) -> Result<&Child, LaunchError> {
        self.children[i]
            .as_ref()
            .ok_or(LaunchError::NotRunning { id: i + 1 })
    }

    /// Sends `sig` to broker `i`.
    pub fn signal(&self, i: usize, sig: libc::c_int) -> Result<(), LaunchError> {
        signal(self.child(i)?, i + 1, sig)
    }

    /// SIGSTOP of broker `i`.
    pub fn pause(&self, i: usize) -> Result<(), LaunchError> {
        self.signal(i, libc::SIGSTOP)
    }

    /// SIGCONT of broker `i`.
    pub fn resume(&self, i: usize) -> Result<(), LaunchError> {
        self.signal(i, libc::SIGCONT)
    }

    /// SIGTERM of broker `i`, waiting (up to `timeout`) for its exit status.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, LaunchError> {
        let mut c = self.children[i]
            .take()
            .ok_or(LaunchError::NotRunning { id: i + 1 })?;
        let r = terminate(&mut c, i + 1, timeout);
        if let Err(LaunchError::Signal { .. }) = r {
            let _ = c.kill();
            let _ = c.wait();
        }
        r
    }

    /// SIGTERM of every running broker at once, then waits (each up to
    /// `timeout`); the first failure is returned after all are stopped.
    pub fn terminate_all(&mut self, timeout: Duration) -> Result<(), LaunchError> {
        for (i, c) in self.children.iter().enumerate() {
            if let Some(c) = c {
                let _ = signal(c, i + 1, libc::SIGTERM);
            }
        }
        let mut first = Ok(());
        for i in 0..self.children.len() {
            if self.children[i].is_some() {
                if let Err(e) = self.terminate(i, timeout) {
                    first = first.and(Err(e));
                }
            }
        }
        first
    }

    /// The first broker found to have exited by itself (reaped), with its
    /// status.
    pub fn exited(&mut self) -> Option<(usize, ExitStatus)> {
        for i in 0..self.children.len() {
            let status = self.children[i]
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(s) = status {
                self.children[i] = None;
                return Some((i, s));
            }
        }
        None
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
                    .zip(&self.children)
                    .filter(|(_, c)| c.is_some())
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
    pub fn placement(&self, topic: &str, partition: u32) -> Result<Placement, ClientError> {
        self.placement_without(topic, partition, 0)
    }

    /// [`Self::placement`] asking every running broker but `skip` (a stopped
    /// broker accepts connections but never answers).
    pub fn placement_without(
        &self,
        topic: &str,
        partition: u32,
        skip: u64,
    ) -> Result<Placement, ClientError> {
        let live: Vec<SocketAddr> = self
            .listens
            .iter()
            .zip(&self.children)
            .enumerate()
            .filter(|(i, (_, c))| c.is_some() && *i as u64 + 1 != skip)
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
            return Err(ClientError::Unexpected(resp.kind().name()));
        };
        let p = m
            .topics
            .first()
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            .ok_or_else(|| ClientError::Broker {
                code: wire::ErrorCode::UnknownTopicOrPartition,
                message: format!("no partition {topic}-{partition}"),
                hint: None,
            })?;
        Ok(Placement {
            leader: p.leader,
            term: p.leader_term,
            replicas: p.replicas.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_run_is_free_and_below_the_ephemeral_range() {
        let base = free_port_run(5).unwrap();
        assert!((20_000..32_000 - 5).contains(&base));
        for p in base..base + 5 {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        assert!(free_port_run(0).is_err());
        assert!(free_port_run(u16::MAX).is_err());
    }

    #[test]
    fn dev_and_packed_ports_are_the_documented_ones() {
        assert_eq!(
            NodePorts::dev(9092, 1),
            NodePorts {
                client: 9092,
                peer: 9292,
                http: 8081
            }
        );
        assert_eq!(
            NodePorts::dev(9092, 3),
            NodePorts {
                client: 9124,
                peer: 9324,
                http: 8083
            }
        );
        assert_eq!(
            NodePorts::packed(20_000, 2),
            NodePorts {
                client: 20_000,
                peer: 20_002,
                http: 20_004
            }
        );
    }

    #[test]
    fn a_missing_binary_or_a_bad_size_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("drmq-local-test-{}", seed()));
        let mut opts = LaunchOptions::new(PathBuf::from("/nonexistent/drmq"), dir.clone(), 1, 1);
        opts.remove_data_dir = true;
        let err = LocalCluster::start(opts.clone()).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/drmq"), "{err}");
        assert!(!dir.exists(), "a temporary data dir is removed");
        opts.nodes = 0;
        assert!(matches!(
            LocalCluster::start(opts).err().unwrap(),
            LaunchError::BadSize { .. }
        ));
    }
}
