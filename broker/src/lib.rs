//! The DRMQ broker process, its client library and the `drmq` CLI.
//!
//! # Layout
//! | module        | what it holds                                                    |
//! |---------------|------------------------------------------------------------------|
//! | [`config`]    | broker settings from flags and a TOML file, validated on load    |
//! | [`runtime`]   | the shards on glommio: client server, partitions, cross-shard messages |
//! | [`topics`]    | the topic registry on disk and partition-to-shard placement      |
//! | [`producers`] | idempotent-producer sequence state per partition                 |
//! | [`telemetry`] | the telemetry thread: counters over HTTP (`/metrics`, `/api/status`) |
//! | [`pipeline`]  | the throughput client: pipelined producer and consumer, routing by metadata |
//! | [`client`]    | a blocking request/response client over the wire protocol        |
//!
//! Today the runtime serves a single broker (replication factor 1); Raft
//! between brokers, the controller group and consumer groups come next (see
//! docs/ARCHITECTURE.md for what exists).

pub mod client;
pub mod config;
pub mod group;
pub mod peer;
pub mod pipeline;
pub mod producers;
pub mod replica;
pub mod runtime;
pub mod telemetry;
pub mod topics;
