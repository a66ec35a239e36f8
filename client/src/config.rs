//! Settings every part of the client shares, and the counters a producer or
//! consumer keeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use wire::FrameLimits;

use crate::retry::RetryPolicy;

/// Settings shared by producers, consumers and admin calls.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bootstrap brokers (any one answers metadata).
    pub brokers: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    /// A request with no answer after this is treated as failed.
    pub request_timeout: Duration,
    /// First retry back-off; doubled per attempt up to `retry_backoff_max`.
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub limits: FrameLimits,
}

impl ClientConfig {
    pub fn new(brokers: Vec<SocketAddr>) -> Self {
        ClientConfig {
            brokers,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry_backoff_min: Duration::from_millis(10),
            retry_backoff_max: Duration::from_secs(1),
            limits: FrameLimits::default(),
        }
    }

    /// The retry policy these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            backoff_min: self.retry_backoff_min,
            backoff_max: self.retry_backoff_max,
        }
    }
}

/// Counters a producer or consumer keeps: retries and failures by kind
/// (keyed by [`crate::RetryCause::name`]).
#[derive(Debug, Default, Clone)]
pub struct ClientStats {
    pub requests_sent: u64,
    pub retries_by_kind: BTreeMap<&'static str, u64>,
    pub reroutes: u64,
    pub metadata_refreshes: u64,
}
