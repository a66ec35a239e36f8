//! The DRMQ broker process, its client library and the `drmq` CLI.
//!
//! # Layout
//! | module        | what it holds                                                    |
//! |---------------|------------------------------------------------------------------|
//! | [`config`]    | broker settings from flags and a TOML file, validated on load    |
//! | [`runtime`]   | the shards on glommio: client server, partitions, cross-shard messages |
//! | [`topics`]    | topic records, replica assignment, partition-to-shard placement  |
//! | [`logging`]   | the broker's log: `tracing` events to stderr, filtered by `RUST_LOG` |
//! | [`raft_group`] | a Raft group over a log (a partition or the controller) and the task that drives it |
//! | [`replica`]   | `raft::Storage` over the log, control batches, `raft.state`      |
//! | [`peer`]      | the peer transport: authenticated lanes per shard and peer       |
//! | [`producers`] | idempotent-producer sequence state per partition                 |
//! | [`telemetry`] | the telemetry thread: counters over HTTP (`/metrics`, `/api/status`) |
//! | [`pipeline`]  | the throughput client: pipelined producer and consumer, routing by metadata |
//! | [`client`]    | a blocking request/response client over the wire protocol        |
//!
//! Every partition is a Raft group replicated between brokers; topics live
//! in the controller group. Consumer groups and snapshot catch-up come next
//! (docs/ARCHITECTURE.md says what exists).

pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod controller;
pub mod error;
pub mod logging;
pub mod partition;
pub mod peer;
pub mod pipeline;
pub mod producers;
pub mod raft_group;
pub mod replica;
pub mod runtime;
pub mod shard;
pub mod telemetry;
pub mod topics;

pub use error::{Error, Result};
