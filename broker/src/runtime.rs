//! Process start: one glommio executor per shard, pinned, each running a
//! `Shard` that owns its Raft groups (partitions),
//! their logs, its client listener and its peer connections; the signal
//! thread that stops them; the janitor thread that removes files off the
//! shards; the compactor thread that rewrites compacted topics' segments
//! ([`crate::compaction`]).
//!
//! Shard `s` serves clients on `listen.port + s` and peers on
//! `peer_listen.port + s`. Shard 0 also runs the controller group
//! ([`crate::controller`]).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use storage::Retired;

use crate::cluster::{broker_ids, Cluster, ClusterView};
use crate::compaction::Compactor;
use crate::config::BrokerConfig;
use crate::error::{chain, Error, Result};
use crate::peer::{self, Outbox};
use crate::shard::{Shard, ShardMsg, ShardStart};
use crate::telemetry;

/// Cross-shard control messages queued per shard.
const SHARD_INBOX_MAX: usize = 1024;
/// How soon the Raft task queue wants the CPU back when it has work.
const RAFT_TQ_LATENCY: Duration = Duration::from_millis(2);

/// Runs a broker until SIGTERM/SIGINT.
pub fn run(mut config: BrokerConfig) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
        what: "creating data dir",
        path: config.data_dir.clone(),
        source,
    })?;
    // Absolute: glommio's io_uring directory open does not resolve relative paths.
    config.data_dir = std::fs::canonicalize(&config.data_dir).map_err(|source| Error::DataDir {
        what: "resolving",
        path: config.data_dir.clone(),
        source,
    })?;
    let shards = config.shards;
    // glommio binds with SO_REUSEPORT, which would let two brokers share a
    // port silently; a plain bind first refuses a port that is in use.
    for s in 0..shards {
        for (what, base) in [("client", config.listen), ("peer", config.peer_listen)] {
            let addr = SocketAddr::new(base.ip(), base.port() + s as u16);
            check_port_free(addr).map_err(|source| Error::Port {
                what,
                addr,
                shard: s,
                source,
            })?;
        }
    }
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| flume::bounded::<ShardMsg>(SHARD_INBOX_MAX))
        .unzip();
    // SIGTERM and SIGINT are blocked in every thread (the shards inherit the
    // mask) and taken by one waiting thread, which asks the shards to stop.
    let signals = block_stop_signals()?;
    let (telemetry, http) = start_telemetry(&config).map_err(|source| Error::Http {
        addr: config.http,
        source,
    })?;
    // `--http HOST:0` picks a port: peers and the cluster view are told the
    // one bound.
    config.http = http;
    let janitor = start_janitor().map_err(|source| Error::Thread {
        name: "janitor",
        source,
    })?;
    let compactor =
        Compactor::start(config.compact_io_mb_per_sec).map_err(|source| Error::Thread {
            name: "compactor",
            source,
        })?;
    // Partition directories of deleted topics that a stop interrupted, and
    // snapshot archives (a restart takes new ones when needed).
    if let Ok(dir) = std::fs::read_dir(config.data_dir.join("partitions")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // A staged transfer is kept for its partition to resume, unless
            // the partition is gone.
            // (a replaced partition left there by a stop right after an
            // install holds no transfer header: removed too).
            let orphan = name.strip_suffix(".staging").is_some_and(|p| {
                !e.path().with_file_name(p).exists() || !e.path().join("transfer.header").exists()
            });
            if name.ends_with(DELETED_SUFFIX) || orphan {
                let _ = janitor.send(Chore::RemoveDir(e.path()));
            }
        }
    }
    // Snapshot archives: a restart takes new ones when needed. Renamed
    // first (at once), so the janitor never races a new archive.
    let archives = config.data_dir.join(crate::snapshot::ARCHIVES_DIR);
    let old = config.data_dir.join(format!(
        "{}.{}{DELETED_SUFFIX}",
        crate::snapshot::ARCHIVES_DIR,
        crate::replica::now_ms()
    ));
    let _ = std::fs::rename(&archives, &old);
    // This one, and any an earlier start renamed but did not remove.
    if let Ok(dir) = std::fs::read_dir(&config.data_dir) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(crate::snapshot::ARCHIVES_DIR) && name.ends_with(DELETED_SUFFIX) {
                let _ = janitor.send(Chore::RemoveDir(e.path()));
            }
        }
    }
    let snapshot_limiter = Arc::new(crate::snapshot::RateLimiter::new(config.snapshot_rate_mb));
    let view = Arc::new(RwLock::new(ClusterView::new(config.id, config.listen)));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let secret = config
        .cluster_secret
        .clone()
        .unwrap_or_default()
        .into_bytes();
    let voters = broker_ids(&config);
    let mut handles = Vec::with_capacity(shards);
    for (id, inbox) in receivers.into_iter().enumerate() {
        let config = config.clone();
        let senders = senders.clone();
        let telemetry = telemetry.clone();
        let janitor = janitor.clone();
        let compactor = compactor.clone();
        let ready = ready_tx.clone();
        let view = view.clone();
        let secret = secret.clone();
        let voters = voters.clone();
        let snapshot_limiter = snapshot_limiter.clone();
        // Pinned, each shard owns a core; brokers sharing a machine (a
        // local cluster) would all pin their shard s to the same core, so
        // they leave placement to the kernel.
        let placement = if config.pin_shards {
            Placement::Fixed(id % cpus)
        } else {
            Placement::Unbound
        };
        let builder = LocalExecutorBuilder::new(placement).name(&format!("shard-{id}"));
        let handle = builder
            .spawn(move || async move {
                let identity = Rc::new(peer::Identity::new(
                    config.id,
                    id as u32,
                    secret,
                    config.listen.to_string(),
                    // Advertised as configured: an unspecified host
                    // (0.0.0.0) stays so; the dashboard substitutes its own.
                    config.http.to_string(),
                    &voters,
                ));
                // Raft's own work (ticks, group drivers, peer links) runs in
                // a task queue of its own that asks for low latency, so a
                // flood of client requests cannot starve heartbeats.
                let raft_tq = glommio::executor().create_task_queue(
                    glommio::Shares::Static(1000),
                    glommio::Latency::Matters(RAFT_TQ_LATENCY),
                    "raft",
                );
                let outbox = Rc::new(Outbox::start(identity.clone(), &config.peers, raft_tq));
                let shard = Rc::new(Shard::new(ShardStart {
                    id,
                    cluster: Cluster::new(&config, view),
                    config,
                    raft_tq,
                    outbox,
                    inboxes: senders,
                    telemetry,
                    janitor,
                    compactor,
                    snapshot_limiter,
                }));
                if let Err(e) = shard.clone().serve(identity, inbox, ready.clone()).await {
                    let _ = ready.send(Err(format!("shard {id}: {}", chain(&e))));
                }
            })
            .map_err(|e| Error::StartShard {
                shard: id,
                error: e.to_string(),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut endpoints = Vec::with_capacity(shards);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(addr)) => endpoints.push(addr),
            Ok(Err(e)) => return Err(Error::ShardFailed(e)),
            Err(_) => return Err(Error::ShardStopped),
        }
    }
    endpoints.sort();
    tracing::info!(
        broker = config.id,
        shards,
        clients = %endpoints
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        peers = %config.peer_listen,
        cluster_brokers = broker_ids(&config).len(),
        data_dir = %config.data_dir.display(),
        "broker up"
    );
    let stop_senders = senders;
    let id = config.id;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let signal = wait_for_signal(&signals);
            tracing::info!(broker = id, signal, "stopping: syncing partitions");
            for s in &stop_senders {
                let _ = s.send(ShardMsg::Shutdown);
            }
        })
        .map_err(|source| Error::Thread {
            name: "signal",
            source,
        })?;
    for h in handles {
        h.join()
            .map_err(|e| Error::ShardPanicked(format!("{e:?}")))?;
    }
    tracing::info!(broker = config.id, "stopped");
    Ok(())
}

/// Refuses a port another process listens on. A plain bind also fails when
/// only TIME_WAIT connections of an earlier run hold the port (they inherit
/// glommio's SO_REUSEPORT, not SO_REUSEADDR), which must not stop a quick
/// restart: then a connection attempt tells whether anyone listens.
/// The listener of a process that just exited can linger for a moment
/// (io_uring tears its files down asynchronously), so a listener found
/// there is looked at again for up to [`PORT_SETTLE`] before giving up.
fn check_port_free(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = Instant::now() + PORT_SETTLE;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let mut probe = addr;
                if probe.ip().is_unspecified() {
                    probe.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                match std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(500)) {
                    Err(_) => return Ok(()),
                    Ok(_) if Instant::now() >= deadline => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("{e}: another process listens there"),
                        ));
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

const PORT_SETTLE: Duration = Duration::from_secs(3);

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread
/// it starts afterwards) and returns the set, for [`wait_for_signal`].
fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigemptyset/sigaddset initialise the set we own;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(Error::Signals(std::io::Error::from_raw_os_error(rc)));
        }
        Ok(set)
    }
}

/// Waits for one of the blocked signals and returns its number.
fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut signal = 0;
        // SAFETY: `set` is an initialised sigset; sigwait writes `signal`.
        let rc = unsafe { libc::sigwait(set, &mut signal) };
        if rc == 0 {
            return signal;
        }
    }
}

/// Retired files queued for the janitor: deletions are rare (a segment every
/// few seconds at most per partition), so 1024 batches is a deep margin.
const JANITOR_QUEUE_MAX: usize = 1024;

/// What a deleted partition's directory is renamed to before the janitor
/// removes it.
pub(crate) const DELETED_SUFFIX: &str = ".deleted";

/// Slow file-system work the shards hand to the janitor thread.
pub enum Chore {
    /// Segments retention removed: unmap and unlink them.
    Retired(Retired),
    /// A deleted partition's directory.
    RemoveDir(std::path::PathBuf),
}

impl Chore {
    /// Does the work (on the janitor thread; inline only if its queue is full).
    pub(crate) fn run(self) {
        match self {
            Chore::Retired(r) => report_failed(r.dispose()),
            Chore::RemoveDir(dir) => {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    report_failed(vec![(dir, e)]);
                }
            }
        }
    }
}

/// The janitor thread: unmaps and unlinks retired segments and removes
/// deleted partitions off the shards.
fn start_janitor() -> std::io::Result<flume::Sender<Chore>> {
    let (tx, rx) = flume::bounded::<Chore>(JANITOR_QUEUE_MAX);
    std::thread::Builder::new()
        .name("janitor".into())
        .spawn(move || {
            while let Ok(chore) = rx.recv() {
                chore.run();
            }
        })?;
    Ok(tx)
}

fn report_failed(failed: Vec<(std::path::PathBuf, std::io::Error)>) {
    for (p, e) in failed {
        tracing::warn!(path = %p.display(), error = %e, "janitor: removing");
    }
}

/// The telemetry core and its HTTP server on `--http`.
fn start_telemetry(
    config: &BrokerConfig,
) -> std::io::Result<(telemetry::Telemetry, std::net::SocketAddr)> {
    let listener = std::net::TcpListener::bind(config.http)?;
    let bound = listener.local_addr()?;
    let mut brokers: Vec<u64> = config.peers.keys().copied().collect();
    if !brokers.contains(&config.id) {
        brokers.push(config.id);
    }
    brokers.sort_unstable();
    let settings = telemetry::core::Settings {
        broker: config.id,
        brokers,
        client: telemetry::core::advertised(config.listen),
        http: telemetry::core::advertised(bound),
        data_dir: config.data_dir.clone(),
        floor_bytes: storage::LogConfig::default().free_bytes_floor,
    };
    Ok((telemetry::core::start(settings, listener)?, bound))
}
