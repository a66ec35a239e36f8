//! The DRMQ broker process, its client library and the `drmq` CLI.
//!
//! # Layout
//! | module     | what it holds                                                       |
//! |------------|---------------------------------------------------------------------|
//! | [`config`] | broker settings from flags and a TOML file, validated on load       |
//! | [`client`] | a blocking request/response client over the wire protocol           |
//!
//! The shard runtime (glommio executors, partitions, peer transport,
//! controller) is the next step (see docs/ARCHITECTURE.md for what exists).

pub mod client;
pub mod config;
pub mod runtime;
pub mod topics;
