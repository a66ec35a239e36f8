//! The DRMQ client library: blocking std threads over the wire protocol,
//! depending on `wire` only.
//!
//! # Layout
//! | module         | what it holds                                                      |
//! |----------------|--------------------------------------------------------------------|
//! | [`connection`] | one blocking request/response connection; broker lists, addresses  |
//! | [`retry`]      | the one retry policy: failures as [`RetryCause`]s, back-off, reroute, give-up |
//! | [`routes`]     | metadata: the client endpoint of the shard that leads each partition, refreshes |
//! | `links`        | the pipelined connections: a writer and a reader thread per shard endpoint |
//! | [`producer`]   | the batching, pipelined, idempotent [`Producer`]                   |
//! | [`consumer`]   | the [`Consumer`]: one long-poll fetch in flight per partition      |
//! | [`group`]      | the consumer-group member: join, leases by heartbeat, commits, rebalances |
//! | [`admin`]      | topics and cluster status through any broker ([`Admin`])           |
//! | [`local`]      | local clusters of `drmq broker` child processes (dev, load test, tests) |
//! | [`config`]     | [`ClientConfig`] shared by all of them, [`ClientStats`]            |
//! | [`error`]      | [`ClientError`] (one request), [`PipelineError`] (producer, consumer, routing) |
//!
//! Protocol facts both sides must agree on (the key partitioner, the
//! idempotence window) live in `wire::rules`.

pub mod admin;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
mod links;
pub mod local;
pub mod producer;
pub mod retry;
pub mod routes;

pub use admin::Admin;
pub use config::{ClientConfig, ClientStats};
pub use connection::{connect_tcp, parse_brokers, Connection};
pub use consumer::{Consumer, ConsumerConfig, StartAt};
pub use error::{ClientError, PipelineError};
pub use group::{GroupConfig, GroupConsumer, GroupEvent, Reset};
pub use producer::{
    random_producer_id, Delivery, DeliveryError, Producer, ProducerConfig, IN_FLIGHT_BYTES_DEFAULT,
    IN_FLIGHT_MAX_LIMIT,
};
pub use retry::{RetryCause, RetryPolicy};
pub use routes::{routes, routes_partial};
