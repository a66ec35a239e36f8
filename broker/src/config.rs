//! Broker configuration: command-line flags over an optional TOML file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most brokers a static peer list may name. A Raft group of more than a
/// handful of voters only slows commits; 64 leaves room for learners.
pub const PEERS_MAX: usize = 64;
/// Most shards per broker: one per core, and no machine we target has more
/// than 256 cores.
pub const SHARDS_MAX: usize = 256;
/// Default client connections per listener (shard): far above what a
/// shard serves well, yet a cap on sockets and buffers (each connection
/// holds at most [`INFLIGHT_BYTES_DEFAULT`] of requests).
pub const CONNECTIONS_DEFAULT: usize = 4096;
/// Default request bytes one client connection may have in flight: a
/// pipelining producer's window of 64 × 64 KiB batches with room to spare;
/// beyond it the broker stops reading that socket until answers go out.
pub const INFLIGHT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default interval between checks for a compacted partition to compact.
/// A check is a sum over each compacted partition's segments in memory, so
/// its cost is no concern; dirt grows only when a segment seals, and one
/// round over a default 128 MiB segment at the default budget takes
/// ~12 s (read twice, written once: 384 MiB at 32 MB/s): checking more
/// often would mostly find the broker's one compaction slot taken.
pub const COMPACT_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Checks no more often than this: 100 ms is ten sums a second.
pub const COMPACT_INTERVAL_MS_MIN: u64 = 100;
/// Default dirty share (bytes of sealed segments above the last clean
/// offset, in percent of all sealed bytes) at which a partition is
/// compacted: at 50 % a round at most doubles the bytes it reads per byte
/// it can free, and the log stays within about twice its compacted size.
pub const COMPACT_DIRTY_PERCENT_MIN_DEFAULT: u8 = 50;
/// Default I/O budget of compaction, per broker, in MB (10^6 bytes) a
/// second read plus written: ~6 % of a SATA SSD's 500 MB/s and less of an
/// NVMe drive's, so produce fdatasyncs keep their bandwidth (the effect is
/// measured in docs/BENCHMARKS.md). 0: no limit.
pub const COMPACT_IO_MB_PER_SEC_DEFAULT: u64 = 32;
/// Default snapshot send budget per broker, in MB/s (all transfers of all
/// shards together). See docs/BENCHMARKS.md ("Snapshot catch-up") for its
/// effect on the leader's produce latency.
pub const SNAPSHOT_RATE_MB_DEFAULT: u64 = 100;
/// Default catch-up threshold, in MiB: a follower further behind than this
/// (in sealed bytes the leader would replay) gets a snapshot even though the
/// leader still holds every entry it needs. See docs/BENCHMARKS.md.
pub const SNAPSHOT_CATCH_UP_MIB_DEFAULT: u64 = 256;
/// Default interval of the leader-balance rounds: a few seconds, so a
/// restarted broker leads its share again soon after it has caught up,
/// while a round (a few map insertions per group) costs nothing measurable.
/// 0 turns balancing off.
pub const LEADER_BALANCE_INTERVAL_MS_DEFAULT: u64 = 3_000;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--peers: {0}")]
    Peers(String),
    #[error("missing setting `{0}` (give --{0} or set it in the config file)")]
    Missing(&'static str),
    #[error("invalid setting `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Settings a TOML config file may hold; every field optional so that flags
/// can fill or override them.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub peer_listen: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// Node id to peer-listen address, as strings in TOML (`1 = "host:port"`).
    pub peers: Option<BTreeMap<String, SocketAddr>>,
    pub shards: Option<usize>,
    /// Shared by every broker of a cluster; peers prove they hold it
    /// (HMAC) before any Raft message is read. Required with peers.
    pub cluster_secret: Option<String>,
    /// Client connections each listener (shard) accepts; the excess is
    /// answered with an error and closed.
    pub max_connections: Option<usize>,
    /// Request bytes one client connection may have in flight.
    pub max_inflight_bytes: Option<u64>,
    /// How often each shard looks for a compacted partition to compact.
    pub compact_interval_ms: Option<u64>,
    /// Dirty share, in percent, at which a compacted partition is compacted.
    pub compact_dirty_percent_min: Option<u8>,
    /// Compaction's I/O budget per broker, MB/s read plus written (0: none).
    pub compact_io_mb_per_sec: Option<u64>,
    /// Snapshot send budget of the whole broker, MB/s.
    pub snapshot_rate_mb: Option<u64>,
    /// A follower this many MiB behind catches up by snapshot (0: only a
    /// follower below the leader's log start does).
    pub snapshot_catch_up_mib: Option<u64>,
    /// How often the shards even out partition leaders over the brokers
    /// (0: never).
    pub leader_balance_interval_ms: Option<u64>,
    /// Pin shard `s` to CPU `s mod cores` (the default: a broker that has
    /// the machine to itself); false lets the kernel place the shards,
    /// for several brokers on one machine.
    pub pin_shards: Option<bool>,
}

/// A complete, validated broker configuration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BrokerConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub http: SocketAddr,
    pub peers: BTreeMap<u64, SocketAddr>,
    pub shards: usize,
    #[serde(skip_serializing)]
    pub cluster_secret: Option<String>,
    pub max_connections: usize,
    pub max_inflight_bytes: u64,
    pub compact_interval_ms: u64,
    pub compact_dirty_percent_min: u8,
    pub compact_io_mb_per_sec: u64,
    pub snapshot_rate_mb: u64,
    pub snapshot_catch_up_mib: u64,
    pub leader_balance_interval_ms: u64,
    pub pin_shards: bool,
}

/// Parses `1=HOST:PORT,2=HOST:PORT,...`.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<u64, SocketAddr>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::Peers(format!("`{item}` is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Peers(format!("`{id}` is not a node id")))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|_| ConfigError::Peers(format!("`{addr}` is not a HOST:PORT address")))?;
        if peers.insert(id, addr).is_some() {
            return Err(ConfigError::Peers(format!("node {id} is listed twice")));
        }
    }
    Ok(peers)
}

/// Reads a TOML config file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

impl BrokerConfig {
    /// Merges flags (`overrides`, taking precedence) over a file's settings and
    /// validates the result. `cores` is the default shard count.
    pub fn resolve(
        file: FileConfig,
        overrides: FileConfig,
        cores: usize,
    ) -> Result<BrokerConfig, ConfigError> {
        let peers = match overrides.peers.or(file.peers) {
            None => BTreeMap::new(),
            Some(map) => map
                .into_iter()
                .map(|(k, v)| {
                    k.parse::<u64>()
                        .map(|id| (id, v))
                        .map_err(|_| ConfigError::Peers(format!("`{k}` is not a node id")))
                })
                .collect::<Result<_, _>>()?,
        };
        let config = BrokerConfig {
            id: overrides.id.or(file.id).ok_or(ConfigError::Missing("id"))?,
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .ok_or(ConfigError::Missing("data-dir"))?,
            listen: overrides
                .listen
                .or(file.listen)
                .ok_or(ConfigError::Missing("listen"))?,
            peer_listen: overrides
                .peer_listen
                .or(file.peer_listen)
                .ok_or(ConfigError::Missing("peer-listen"))?,
            http: overrides
                .http
                .or(file.http)
                .ok_or(ConfigError::Missing("http"))?,
            peers,
            shards: overrides.shards.or(file.shards).unwrap_or(cores),
            cluster_secret: overrides.cluster_secret.or(file.cluster_secret),
            max_connections: overrides
                .max_connections
                .or(file.max_connections)
                .unwrap_or(CONNECTIONS_DEFAULT),
            max_inflight_bytes: overrides
                .max_inflight_bytes
                .or(file.max_inflight_bytes)
                .unwrap_or(INFLIGHT_BYTES_DEFAULT),
            compact_interval_ms: overrides
                .compact_interval_ms
                .or(file.compact_interval_ms)
                .unwrap_or(COMPACT_INTERVAL_MS_DEFAULT),
            compact_dirty_percent_min: overrides
                .compact_dirty_percent_min
                .or(file.compact_dirty_percent_min)
                .unwrap_or(COMPACT_DIRTY_PERCENT_MIN_DEFAULT),
            compact_io_mb_per_sec: overrides
                .compact_io_mb_per_sec
                .or(file.compact_io_mb_per_sec)
                .unwrap_or(COMPACT_IO_MB_PER_SEC_DEFAULT),
            snapshot_rate_mb: overrides
                .snapshot_rate_mb
                .or(file.snapshot_rate_mb)
                .unwrap_or(SNAPSHOT_RATE_MB_DEFAULT),
            snapshot_catch_up_mib: overrides
                .snapshot_catch_up_mib
                .or(file.snapshot_catch_up_mib)
                .unwrap_or(SNAPSHOT_CATCH_UP_MIB_DEFAULT),
            leader_balance_interval_ms: overrides
                .leader_balance_interval_ms
                .or(file.leader_balance_interval_ms)
                .unwrap_or(LEADER_BALANCE_INTERVAL_MS_DEFAULT),
            pin_shards: overrides.pin_shards.or(file.pin_shards).unwrap_or(true),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return invalid(
                "shards",
                format!("{} is outside 1..={SHARDS_MAX}", self.shards),
            );
        }
        if self.peers.len() > PEERS_MAX {
            return invalid(
                "peers",
                format!("{} peers, at most {PEERS_MAX}", self.peers.len()),
            );
        }
        if !self.peers.is_empty() {
            match self.peers.get(&self.id) {
                None => {
                    return invalid(
                        "peers",
                        format!("this broker's id {} is not listed", self.id),
                    )
                }
                Some(addr) if addr.port() != self.peer_listen.port() => {
                    return invalid(
                        "peers",
                        format!(
                            "lists {addr} for this broker but --peer-listen is {}",
                            self.peer_listen
                        ),
                    )
                }
                Some(_) => {}
            }
        }
        let others = self.peers.keys().filter(|&&id| id != self.id).count();
        if others > 0 && self.cluster_secret.as_deref().is_none_or(|s| s.len() < 8) {
            return invalid(
                "cluster-secret",
                "a cluster of several brokers needs a shared secret of at least 8 characters \
                 (--cluster-secret, DRMQ_CLUSTER_SECRET or cluster_secret in the config file)"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return invalid("max-connections", "must be at least 1".into());
        }
        // One request of the largest frame must fit.
        let frame_max = u64::from(wire::FrameLimits::default().frame_bytes_max);
        if self.max_inflight_bytes < frame_max {
            return invalid(
                "max-inflight-bytes",
                format!(
                    "{} is below one maximum frame ({frame_max} bytes)",
                    self.max_inflight_bytes
                ),
            );
        }
        if self.compact_interval_ms < COMPACT_INTERVAL_MS_MIN {
            return invalid(
                "compact-interval-ms",
                format!(
                    "{} is below {COMPACT_INTERVAL_MS_MIN}",
                    self.compact_interval_ms
                ),
            );
        }
        if !(1..=100).contains(&self.compact_dirty_percent_min) {
            return invalid(
                "compact-dirty-percent-min",
                format!("{} is outside 1..=100", self.compact_dirty_percent_min),
            );
        }
        // 1 TB/s: past any disk, and the byte rate cannot overflow.
        if self.compact_io_mb_per_sec > 1_000_000 {
            return invalid(
                "compact-io-mb-per-sec",
                format!(
                    "{} is above 1000000 (0 is no limit)",
                    self.compact_io_mb_per_sec
                ),
            );
        }
        if self.snapshot_rate_mb == 0 || self.snapshot_rate_mb > 100_000 {
            return invalid(
                "snapshot-rate-mb",
                format!("{} is outside 1..=100000 MB/s", self.snapshot_rate_mb),
            );
        }
        if self.snapshot_catch_up_mib > 1 << 30 {
            return invalid(
                "snapshot-catch-up-mib",
                format!("{} MiB is more than any log", self.snapshot_catch_up_mib),
            );
        }
        let balance_min = crate::balance::INTERVAL_MS_MIN;
        if self.leader_balance_interval_ms != 0 && self.leader_balance_interval_ms < balance_min {
            return invalid(
                "leader-balance-interval-ms",
                format!(
                    "{} is below {balance_min} (0 turns balancing off)",
                    self.leader_balance_interval_ms
                ),
            );
        }
        let ports = [self.listen, self.peer_listen, self.http];
        if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
            return invalid("listen", "listen, peer-listen and http must differ".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> FileConfig {
        FileConfig {
            id: Some(1),
            data_dir: Some("d".into()),
            listen: Some("127.0.0.1:9092".parse().unwrap()),
            peer_listen: Some("127.0.0.1:9192".parse().unwrap()),
            http: Some("127.0.0.1:8080".parse().unwrap()),
            peers: None,
            shards: Some(2),
            cluster_secret: None,
            max_connections: None,
            max_inflight_bytes: None,
            ..FileConfig::default()
        }
    }

    #[test]
    fn compaction_settings_default_and_bad_ones_are_refused() {
        let c = BrokerConfig::resolve(FileConfig::default(), flags(), 1).unwrap();
        assert_eq!(c.compact_interval_ms, COMPACT_INTERVAL_MS_DEFAULT);
        assert_eq!(c.compact_dirty_percent_min, 50);
        assert_eq!(c.compact_io_mb_per_sec, COMPACT_IO_MB_PER_SEC_DEFAULT);
        for (f, field) in [
            (
                FileConfig {
                    compact_interval_ms: Some(0),
                    ..flags()
                },
                "compact-interval-ms",
            ),
            (
                FileConfig {
                    compact_dirty_percent_min: Some(0),
                    ..flags()
                },
                "compact-dirty-percent-min",
            ),
            (
                FileConfig {
                    compact_dirty_percent_min: Some(101),
                    ..flags()
                },
                "compact-dirty-percent-min",
            ),
            (
                FileConfig {
                    compact_io_mb_per_sec: Some(u64::MAX),
                    ..flags()
                },
                "compact-io-mb-per-sec",
            ),
        ] {
            let e = BrokerConfig::resolve(FileConfig::default(), f, 1).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn snapshot_settings_have_defaults_and_bounds() {
        let c = BrokerConfig::resolve(FileConfig::default(), flags(), 2).unwrap();
        assert_eq!(c.snapshot_rate_mb, SNAPSHOT_RATE_MB_DEFAULT);
        assert_eq!(c.snapshot_catch_up_mib, SNAPSHOT_CATCH_UP_MIB_DEFAULT);
        let zero = FileConfig {
            snapshot_rate_mb: Some(0),
            ..flags()
        };
        let e = BrokerConfig::resolve(FileConfig::default(), zero, 2).unwrap_err();
        assert!(e.to_string().contains("snapshot-rate-mb"), "{e}");
        let off = FileConfig {
            snapshot_catch_up_mib: Some(0),
            ..flags()
        };
        let c = BrokerConfig::resolve(FileConfig::default(), off, 2).unwrap();
        assert_eq!(c.snapshot_catch_up_mib, 0, "0 turns the threshold off");
    }

    #[test]
    fn leader_balance_defaults_on_and_zero_turns_it_off_but_a_tiny_interval_is_refused() {
        let c = BrokerConfig::resolve(FileConfig::default(), flags(), 2).unwrap();
        assert_eq!(
            c.leader_balance_interval_ms,
            LEADER_BALANCE_INTERVAL_MS_DEFAULT
        );
        let off = FileConfig {
            leader_balance_interval_ms: Some(0),
            ..flags()
        };
        let c = BrokerConfig::resolve(FileConfig::default(), off, 2).unwrap();
        assert_eq!(c.leader_balance_interval_ms, 0);
        let tiny = FileConfig {
            leader_balance_interval_ms: Some(10),
            ..flags()
        };
        let e = BrokerConfig::resolve(FileConfig::default(), tiny, 2).unwrap_err();
        assert!(e.to_string().contains("leader-balance-interval-ms"), "{e}");
    }

    #[test]
    fn shards_are_pinned_unless_a_flag_or_the_file_says_not() {
        let c = BrokerConfig::resolve(FileConfig::default(), flags(), 2).unwrap();
        assert!(c.pin_shards);
        let file = FileConfig {
            pin_shards: Some(false),
            ..FileConfig::default()
        };
        let c = BrokerConfig::resolve(file.clone(), flags(), 2).unwrap();
        assert!(!c.pin_shards, "the file turns pinning off");
        let on = FileConfig {
            pin_shards: Some(true),
            ..flags()
        };
        let c = BrokerConfig::resolve(file, on, 2).unwrap();
        assert!(c.pin_shards, "a flag overrides the file");
    }

    #[test]
    fn peers_parse_and_bad_entries_are_named() {
        let p = parse_peers("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(p.len(), 2);
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse_peers("x=127.0.0.1:1")
            .unwrap_err()
            .to_string()
            .contains("`x`"));
        assert!(parse_peers("1=nohost")
            .unwrap_err()
            .to_string()
            .contains("nohost"));
        assert!(parse_peers("127.0.0.1:1")
            .unwrap_err()
            .to_string()
            .contains("ID=HOST:PORT"));
    }

    #[test]
    fn flags_override_the_file_and_missing_settings_are_named() {
        let file = FileConfig {
            id: Some(9),
            shards: Some(4),
            ..FileConfig::default()
        };
        let c = BrokerConfig::resolve(file, flags(), 8).unwrap();
        assert_eq!((c.id, c.shards), (1, 2));
        let err =
            BrokerConfig::resolve(FileConfig::default(), FileConfig::default(), 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing setting `id` (give --id or set it in the config file)"
        );
    }

    #[test]
    fn a_peer_list_without_this_broker_or_zero_shards_is_refused() {
        let mut f = flags();
        f.peers = Some([("2".to_string(), "127.0.0.1:9193".parse().unwrap())].into());
        assert!(BrokerConfig::resolve(FileConfig::default(), f, 2).is_err());
        let mut f = flags();
        f.shards = Some(0);
        assert!(BrokerConfig::resolve(FileConfig::default(), f, 2).is_err());
    }

    #[test]
    fn a_toml_file_loads_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            "id = 2\ndata_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:1\"\npeer_listen = \"127.0.0.1:2\"\n\
             http = \"127.0.0.1:3\"\n[peers]\n2 = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        let c = BrokerConfig::resolve(load_file(&path).unwrap(), FileConfig::default(), 1).unwrap();
        assert_eq!(c.peers[&2], "127.0.0.1:2".parse::<SocketAddr>().unwrap());
        std::fs::write(&path, "id = 2\nbogus = 1\n").unwrap();
        assert!(load_file(&path).unwrap_err().to_string().contains("bogus"));
        assert!(load_file(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
