//! Shared by the integration tests: a real `drmq broker` child process on
//! loopback ports of its own, started by the client's local-cluster
//! launcher (`client::local`).
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use client::local::{BrokerLog, LaunchOptions, LocalCluster, NodePorts, NodeSpec};

pub const SHARDS: u16 = 2;
/// Start attempts: a port found free can be taken by a parallel test before
/// the broker binds it; the broker then exits at once and we try new ports.
const START_ATTEMPTS_MAX: u32 = 5;

/// A broker child process, killed (SIGKILL) when the test ends, even on
/// failure. `std::process::Child::kill` never signals a reaped pid.
pub struct Broker {
    pub child: Child,
    pub listen_port: u16,
    pub data_dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn drmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_drmq"))
}

/// A run of `n` consecutive loopback ports that were free a moment ago,
/// below the kernel's ephemeral range (so no outgoing connection takes one
/// while a test has a broker down), from a random start so parallel tests
/// rarely collide.
pub fn free_port_run(n: u16) -> u16 {
    client::local::free_port_run(n).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a `drmq` client command with `--brokers brokers`, feeding `stdin`.
pub fn cli_at(brokers: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = drmq();
    cmd.args(args).args(["--brokers", brokers]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Like [`cli_at`], but kills the client (SIGKILL) if it runs past `limit`:
/// a test against a broker that may hang stays bounded. `None` if killed.
pub fn cli_at_bounded(brokers: &str, args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = drmq()
        .args(args)
        .args(["--brokers", brokers])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Pipes are read on threads so a chatty child never blocks on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = wait_exit(&mut child, limit);
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// Waits (bounded) for `child` to exit; on timeout kills it (SIGKILL) and
/// returns `None`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Broker {
    /// Starts a single broker with [`SHARDS`] shards on `data_dir`; client
    /// ports `base..base+SHARDS`, peer ports `base+SHARDS..base+2*SHARDS`,
    /// HTTP `base+2*SHARDS`.
    pub fn start(data_dir: &Path) -> Broker {
        Broker::start_with(data_dir, &[])
    }

    /// [`Broker::start`] with more `drmq broker` flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Broker {
        let drmq = Path::new(env!("CARGO_BIN_EXE_drmq"));
        for _ in 0..START_ATTEMPTS_MAX {
            let base = free_port_run(NodePorts::per_node(SHARDS));
            let spec = NodeSpec {
                id: 1,
                data_dir: data_dir.to_owned(),
                ports: NodePorts::packed(base, SHARDS),
                shards: SHARDS,
                peers: None,
                secret: None,
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
                log: BrokerLog::Discard,
                parent_death_signal: false,
            };
            let child = client::local::spawn(drmq, &spec).unwrap_or_else(|e| panic!("{e}"));
            let mut b = Broker {
                child,
                listen_port: base,
                data_dir: data_dir.to_owned(),
            };
            let up = client::local::wait_up(
                &mut b.child,
                1,
                spec.ports,
                SHARDS,
                Duration::from_secs(20),
            );
            match up {
                Ok(()) => return b,
                // Most likely a port was taken: new ports.
                Err(client::local::LaunchError::Exited { .. }) => continue,
                Err(e) => panic!("broker did not start: {e}"),
            }
        }
        panic!("broker did not start in {START_ATTEMPTS_MAX} attempts");
    }

    pub fn listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listen_port))
    }

    pub fn http_port(&self) -> u16 {
        self.listen_port + 2 * SHARDS
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.listen_port)
    }

    /// Creates an RF=1 topic with small (64 KiB) segments through the CLI.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Output {
        let partitions = partitions.to_string();
        let args = [
            "topic",
            "create",
            name,
            "--partitions",
            &partitions,
            "--replication",
            "1",
        ];
        let o = self.cli(&[&args[..], &["--segment-bytes", "65536"]].concat(), None);
        assert!(
            o.status.success(),
            "create {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// Sends one raw record batch to partition 0 of `topic`, straight to the
    /// shard that owns it (found through `topic describe`).
    pub fn produce_raw(
        &self,
        topic: &str,
        batch: Vec<u8>,
    ) -> Result<wire::Message, client::ClientError> {
        let o = self.cli(&["topic", "describe", topic], None);
        assert!(
            o.status.success(),
            "describe {topic}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let shard = meta["partitions"][0]["shard"].as_u64().unwrap() as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.listen_port + shard));
        let mut c = client::Connection::connect(addr, Duration::from_secs(10)).unwrap();
        let req = wire::ProduceRequest {
            topic: topic.into(),
            partition: 0,
            acks: wire::Acks::Quorum,
            timeout_ms: 5000,
            batch,
        };
        c.request(&req.into())
    }

    /// Runs a `drmq` client command against this broker.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        cli_at(&self.brokers(), args, stdin)
    }
}

/// A cluster of `drmq broker` child processes on loopback (the client's
/// [`LocalCluster`]), RF up to its size. Every child is killed (after
/// SIGCONT, in case a test stopped it) when the cluster is dropped, even
/// when the test fails.
pub struct Cluster {
    pub bases: Vec<u16>,
    pub dirs: Vec<PathBuf>,
    local: LocalCluster,
    /// A stopped broker is left out of `--brokers` (a client would time
    /// out on it before trying the next one).
    paused: std::cell::Cell<Option<usize>>,
}

impl Cluster {
    /// Starts `n` brokers (ids 1..=n) with data under `root`.
    pub fn start(root: &Path, n: usize) -> Cluster {
        Cluster::start_with(root, n, &[])
    }

    /// [`Cluster::start`] with more `drmq broker` flags for every broker.
    pub fn start_with(root: &Path, n: usize, extra: &[&str]) -> Cluster {
        let drmq = PathBuf::from(env!("CARGO_BIN_EXE_drmq"));
        let mut opts = LaunchOptions::new(drmq, root.to_owned(), n as u16, SHARDS);
        opts.secret = Some("test-cluster-secret".into());
        opts.peers_always = true;
        opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
        opts.log = if std::env::var_os("DRMQ_TEST_LOGS").is_some() {
            BrokerLog::Inherit
        } else {
            BrokerLog::Discard
        };
        opts.start_attempts = START_ATTEMPTS_MAX;
        let local = LocalCluster::start(opts).unwrap_or_else(|e| panic!("{e}"));
        Cluster {
            bases: (0..n).map(|i| local.ports(i).client).collect(),
            dirs: (0..n).map(|i| local.node_dir(i).to_owned()).collect(),
            local,
            paused: std::cell::Cell::new(None),
        }
    }

    /// Starts broker `i` (0-based) again on its data and ports.
    pub fn restart(&mut self, i: usize) {
        self.local.restart(i).unwrap_or_else(|e| panic!("{e}"));
    }

    /// kill -9 of broker `i`.
    pub fn kill(&mut self, i: usize) {
        self.local.kill(i);
    }

    /// SIGTERM of broker `i`; asserts that it stops cleanly (exit 0).
    pub fn terminate(&mut self, i: usize) {
        let status = self
            .local
            .terminate(i, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "broker {} exited with {status}", i + 1);
    }

    pub fn pause(&self, i: usize) {
        self.local.pause(i).unwrap_or_else(|e| panic!("{e}"));
        self.paused.set(Some(i));
    }

    pub fn resume(&self, i: usize) {
        self.local.resume(i).unwrap_or_else(|e| panic!("{e}"));
        self.paused.set(None);
    }

    /// Broker `i`'s telemetry (`--http`) port.
    pub fn http_port(&self, i: usize) -> u16 {
        self.local.ports(i).http
    }

    /// Every broker's client address (shard 0), for `--brokers`.
    pub fn brokers(&self) -> String {
        self.bases
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.paused.get() && self.local.is_running(*i))
            .map(|(_, b)| format!("127.0.0.1:{b}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs a `drmq` client command against the whole cluster.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        cli_at(&self.brokers(), args, stdin)
    }

    /// Creates `topic` with `partitions` and replication `rf` (and more
    /// `drmq topic create` flags); asserts that it worked.
    pub fn create_topic(&self, topic: &str, partitions: u32, rf: u16, more: &[&str]) {
        let (p, rf) = (partitions.to_string(), rf.to_string());
        let args = [
            "topic",
            "create",
            topic,
            "--partitions",
            &p,
            "--replication",
            &rf,
        ];
        let o = self.cli(&[&args[..], more].concat(), None);
        assert!(
            o.status.success(),
            "create {topic}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Every value of `topic` with how often it was read (`drmq consume`
    /// until `idle_ms` pass without a message).
    pub fn consume_counts(
        &self,
        topic: &str,
        idle_ms: u64,
    ) -> std::collections::BTreeMap<String, usize> {
        let idle = idle_ms.to_string();
        let o = self.cli(
            &["consume", "--topic", topic, "--idle-timeout-ms", &idle],
            None,
        );
        assert!(
            o.status.success(),
            "consume: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut seen = std::collections::BTreeMap::new();
        for line in String::from_utf8(o.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            *seen
                .entry(v["value"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        seen
    }

    /// `topic describe` as JSON (any live broker answers).
    pub fn describe(&self, topic: &str) -> serde_json::Value {
        let o = self.cli(&["topic", "describe", topic], None);
        assert!(
            o.status.success(),
            "describe {topic}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// (leader id, leader term) of a partition, waiting (bounded) for one.
    pub fn leader(&self, topic: &str, partition: usize) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let d = self.describe(topic);
            let p = &d["partitions"][partition];
            if let Some(l) = p["leader"].as_u64() {
                let i = l as usize - 1;
                if self.local.is_running(i) {
                    return (l, p["leader_term"].as_u64().unwrap());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader for {topic}-{partition}: {d}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Brokers stopped with SIGSTOP; SIGCONT when dropped, so a failing test
/// leaves no stopped process behind (drop it before the [`Cluster`]).
pub struct Stopped {
    pids: Vec<libc::pid_t>,
}

impl Stopped {
    /// SIGCONT of every stopped broker now.
    pub fn resume(self) {}
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: kill(2) on a child of ours that the Cluster has not
            // reaped (it outlives this guard).
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

impl Cluster {
    /// SIGSTOP of brokers `idx` (0-based) until the guard is dropped.
    /// Unlike [`Cluster::pause`] they stay in [`Cluster::brokers`].
    pub fn stop(&self, idx: &[usize]) -> Stopped {
        let mut s = Stopped { pids: Vec::new() };
        for &i in idx {
            let pid = self.local.pid(i).expect("running") as libc::pid_t;
            s.pids.push(pid);
            // SAFETY: kill(2) on our own, not yet reaped, child.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        }
        s
    }
}

/// `GET path` of a broker's telemetry port; the JSON body of the answer
/// (`None` if it is not a 200 with JSON).
pub fn http_json(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    if !out.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = out.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Polls `/api/status` of a broker (samples come once a second) until
/// `done` holds for its shard samples, bounded; returns them.
pub fn status_until(
    port: u16,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(status) = http_json(port, "/api/status") {
            let shards = status["shards"].as_array().cloned().unwrap_or_default();
            if done(&shards) {
                return shards;
            }
            last = Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("/api/status never showed {what}: {last:?}");
}

/// The sum over shard samples of a numeric field.
pub fn shard_sum(shards: &[serde_json::Value], field: &str) -> u64 {
    shards.iter().filter_map(|s| s[field].as_u64()).sum()
}

/// `drmq produce --idempotent` on `topic` as a child process: lines written
/// to its stdin are produced, its acknowledgements (JSON lines) collected.
pub struct CliProducer {
    child: Child,
    acks: Option<std::thread::JoinHandle<Vec<serde_json::Value>>>,
    /// Read while it runs: a full stderr pipe would block the producer.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl CliProducer {
    /// The producer and its stdin (one line per record).
    pub fn start(
        brokers: &str,
        topic: &str,
        timeout_ms: &str,
    ) -> (CliProducer, std::process::ChildStdin) {
        let mut child = drmq()
            .args(["produce", "--topic", topic, "--idempotent"])
            .args(["--brokers", brokers, "--timeout-ms", timeout_ms])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
            err
        });
        let acks = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
                .collect()
        });
        let p = CliProducer {
            child,
            acks: Some(acks),
            stderr: Some(stderr),
        };
        (p, stdin)
    }

    /// Waits (90 s at most) for the producer to exit once its stdin is
    /// closed; asserts it succeeded and returns its acknowledgements and
    /// its stderr.
    pub fn finish(mut self) -> (Vec<serde_json::Value>, String) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "producer hung");
            std::thread::sleep(Duration::from_millis(50));
        };
        let acks = self.acks.take().unwrap().join().unwrap();
        let err = self.stderr.take().unwrap().join().unwrap();
        assert!(status.success(), "producer failed: {err}");
        (acks, err)
    }
}

impl Drop for CliProducer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
