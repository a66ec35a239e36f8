//! Shared by the integration tests: a real `drmq broker` child process on
//! loopback ports of its own.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// A run of `n` consecutive loopback ports that were free a moment ago.
pub fn free_port_run(n: u16) -> u16 {
    // Bounded: a few hundred candidates.
    for _ in 0..500 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = l.local_addr().unwrap().port();
        drop(l);
        if base > 60_000 {
            continue;
        }
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

impl Broker {
    /// Starts a single broker with [`SHARDS`] shards on `data_dir`; client
    /// ports `base..base+SHARDS`, peer `base+SHARDS`, HTTP `base+SHARDS+1`.
    pub fn start(data_dir: &Path) -> Broker {
        for _ in 0..START_ATTEMPTS_MAX {
            let base = free_port_run(SHARDS + 2);
            let child = drmq()
                .args(["broker", "--id", "1", "--shards", &SHARDS.to_string()])
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--listen", &format!("127.0.0.1:{base}")])
                .args(["--peer-listen", &format!("127.0.0.1:{}", base + SHARDS)])
                .args(["--http", &format!("127.0.0.1:{}", base + SHARDS + 1)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut b = Broker {
                child,
                listen_port: base,
                data_dir: data_dir.to_owned(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if (0..SHARDS).all(|s| TcpStream::connect(("127.0.0.1", base + s)).is_ok()) {
                    return b;
                }
                if b.child.try_wait().unwrap().is_some() {
                    break; // exited: most likely a port was taken; new ports
                }
                assert!(Instant::now() < deadline, "broker did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("broker did not start in {START_ATTEMPTS_MAX} attempts");
    }

    pub fn listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listen_port))
    }

    pub fn http_port(&self) -> u16 {
        self.listen_port + SHARDS + 1
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
    ) -> Result<wire::Message, broker::client::ClientError> {
        let o = self.cli(&["topic", "describe", topic], None);
        assert!(
            o.status.success(),
            "describe {topic}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let shard = meta["partitions"][0]["shard"].as_u64().unwrap() as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.listen_port + shard));
        let mut c = broker::client::Connection::connect(addr, Duration::from_secs(10)).unwrap();
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
        let mut cmd = drmq();
        cmd.args(args).args(["--brokers", &self.brokers()]);
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
}
