//! The DRMQ broker process and the `drmq` CLI (the client library is the
//! `client` crate).
//!
//! # Layout
//! | module        | what it holds                                                    |
//! |---------------|------------------------------------------------------------------|
//! | [`config`]    | broker settings from flags and a TOML file, validated on load    |
//! | [`runtime`]   | the shards on glommio: client server, partitions, cross-shard messages |
//! | [`topics`]    | topic records, replica assignment, partition-to-shard placement  |
//! | [`logging`]   | the broker's log: `tracing` events to stderr, filtered by `RUST_LOG` |
//! | [`group`]     | a Raft group over a partition log and the task that drives it    |
//! | [`replica`]   | `raft::Storage` over the log, control batches, `raft.state`      |
//! | [`peer`]      | the peer transport: authenticated lanes per shard and peer       |
//! | [`producers`] | idempotent-producer sequence state per partition                 |
//! | [`telemetry`] | the telemetry thread: counters over HTTP (`/metrics`, `/api/status`) |
//!
//! Every partition is a Raft group replicated between brokers; topics live
//! in the controller group. Consumer groups and snapshot catch-up come next
//! (docs/ARCHITECTURE.md says what exists).

pub mod config;
pub mod dashboard;
pub mod group;
pub mod http;
pub mod logging;
pub mod peer;
pub mod producers;
pub mod replica;
pub mod runtime;
pub mod telemetry;
pub mod topics;
