//! The DRMQ broker process and the `drmq` CLI (the client library is the
//! `client` crate).
//!
//! # Layout
//! | module         | what it holds                                                    |
//! |----------------|------------------------------------------------------------------|
//! | [`runtime`]    | process start: executors per shard, ports, signals, graceful stop, the janitor thread |
//! | [`shard`]      | one shard: the router between its parts, cross-shard messages, its telemetry sample |
//! | [`counters`]   | a shard's counters: requests, records, errors by code, produce latency, core load |
//! | [`connection`] | client connections: accept and refuse, reader/writer per connection, limits |
//! | [`partition`]  | a partition replica: produce, fetch, list offsets, status, retention, a compaction round |
//! | [`compaction`] | background key compaction: the broker's one compactor thread and its slot |
//! | [`groups`]     | consumer groups: coordinators on the offsets topic's leaders, leases, sticky assignment, offsets |
//! | [`controller`] | the controller group: topic commands, proposing, applying, admin requests |
//! | [`cluster`]    | the cluster view: leaders, peers seen, endpoints, metadata and status answers |
//! | [`balance`]    | leader rebalancing: rounds of reports, one plan, leadership transfers |
//! | [`raft_group`] | a Raft group over a log (a partition or the controller) and the task driving it |
//! | [`replica`]    | `raft::Storage` over the log, control batches, `raft.state`      |
//! | [`producers`]  | idempotent-producer sequence state per partition                 |
//! | [`peer`]       | the peer transport: lanes per shard and peer, handshake, Raft <-> wire |
//! | [`error`]      | [`Error`], the one error type, and its wire code for answers     |
//! | [`config`]     | broker settings from flags and a TOML file, validated on load    |
//! | [`topics`]     | topic records, replica assignment, partition-to-shard placement  |
//! | [`telemetry`]  | the telemetry thread: counters over HTTP (`/metrics`, `/api/status`) |
//! | [`logging`]    | the broker's log: `tracing` events to stderr, filtered by `RUST_LOG` |
//! | [`http`]       | the telemetry core's HTTP and WebSocket server (threads, not shards) |
//! | [`dashboard`]  | the dashboard's files, embedded at build time                    |
//!
//! Every partition is a Raft group replicated between brokers; topics live
//! in the controller group; consumer groups in the partitions of the
//! internal offsets topic (docs/ARCHITECTURE.md says what exists).

pub mod balance;
pub mod cluster;
pub mod compaction;
pub mod config;
pub mod connection;
pub mod controller;
pub mod counters;
pub mod dashboard;
pub mod error;
pub mod groups;
pub mod http;
pub mod logging;
pub mod partition;
pub mod peer;
pub mod producers;
pub mod raft_group;
pub mod replica;
pub mod runtime;
pub mod shard;
pub mod snapshot;
pub mod telemetry;
pub mod topics;

pub use error::{Error, Result};
