//! The one retry policy of the client: every failed request is classified
//! into a [`RetryCause`] (or is fatal), and [`RetryPolicy::decide`] says
//! whether to send again, after how long, and where (the hinted leader, a
//! metadata refresh, or the same place). The producer, the consumer, routing
//! and every blocking call ([`call`]) use it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{ErrorCode, Message};

use crate::connection::hint_addr;
use crate::ClientError;

/// Why a request failed in a way that sending it again may fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryCause {
    /// The broker does not lead the partition; `hint` is where it says the
    /// leader is (None while it does not know).
    NotLeader { hint: Option<SocketAddr> },
    /// The broker is not the controller; `hint` is where the controller is.
    NotController { hint: Option<SocketAddr> },
    /// The partition or topic is between leaders, not known to this broker
    /// yet, or the broker is stopping (LeaderNotAvailable,
    /// UnknownTopicOrPartition, ShuttingDown): ask again where it is.
    Unavailable { code: ErrorCode },
    /// The broker is short of something (DiskFull, NotEnoughReplicas,
    /// StorageError, TooManyConnections, ...): the same place, later.
    Overloaded { code: ErrorCode },
    /// The broker's own deadline for the request passed (`Timeout`); the
    /// outcome may be unknown.
    BrokerTimeout,
    /// No answer within the client's request timeout (the connection is
    /// presumed dead).
    RequestTimeout,
    /// The connection could not be made, broke, or was closed.
    Connection,
    /// An idempotent batch reached a new leader before an earlier one of its
    /// partition; the earlier one lands on its own retry, then this one.
    OutOfOrder,
}

impl RetryCause {
    /// The cause for a broker's error code, or None if sending again will
    /// not change the answer.
    pub fn from_code(code: ErrorCode, hint: Option<SocketAddr>) -> Option<RetryCause> {
        if !code.is_retryable() {
            return None;
        }
        Some(match code {
            ErrorCode::NotLeader => RetryCause::NotLeader { hint },
            ErrorCode::NotController => RetryCause::NotController { hint },
            ErrorCode::LeaderNotAvailable
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::ShuttingDown => RetryCause::Unavailable { code },
            ErrorCode::Timeout => RetryCause::BrokerTimeout,
            _ => RetryCause::Overloaded { code },
        })
    }

    /// The cause of a failed blocking request, or None if it is fatal
    /// (a refusal that will not change, a protocol error, bad input).
    pub fn of_error(e: &ClientError) -> Option<RetryCause> {
        match e {
            ClientError::Broker { code, hint, .. } => {
                RetryCause::from_code(*code, hint.as_ref().and_then(hint_addr))
            }
            ClientError::Io { .. }
            | ClientError::Closed { .. }
            | ClientError::Unreachable { .. } => Some(RetryCause::Connection),
            ClientError::Protocol { .. }
            | ClientError::BadBrokers(_)
            | ClientError::Unexpected(_) => None,
        }
    }

    /// A short stable name, for counting retries by kind: the error code's
    /// name for a broker's answer.
    pub fn name(&self) -> &'static str {
        match self {
            RetryCause::NotLeader { .. } => ErrorCode::NotLeader.name(),
            RetryCause::NotController { .. } => ErrorCode::NotController.name(),
            RetryCause::Unavailable { code } | RetryCause::Overloaded { code } => code.name(),
            RetryCause::BrokerTimeout => ErrorCode::Timeout.name(),
            RetryCause::RequestTimeout => "RequestTimeout",
            RetryCause::Connection => "Connection",
            RetryCause::OutOfOrder => ErrorCode::OutOfOrderSequence.name(),
        }
    }

    /// Where the next attempt goes, given where this one went.
    pub fn route(&self, current: Option<SocketAddr>) -> Route {
        match self {
            RetryCause::NotLeader { hint: Some(a) }
            | RetryCause::NotController { hint: Some(a) }
                if Some(*a) != current =>
            {
                Route::Reroute(*a)
            }
            // The leader may have moved or died: ask where it is now.
            RetryCause::NotLeader { .. }
            | RetryCause::NotController { .. }
            | RetryCause::Unavailable { .. }
            | RetryCause::RequestTimeout
            | RetryCause::Connection => Route::Refresh,
            RetryCause::Overloaded { .. } | RetryCause::BrokerTimeout | RetryCause::OutOfOrder => {
                Route::Same
            }
        }
    }
}

/// Where a retried request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the broker the hint named.
    Reroute(SocketAddr),
    /// Wherever metadata says now (for a cluster-wide request: any
    /// bootstrap broker).
    Refresh,
    /// To the same broker.
    Same,
}

/// What a failed request should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Send again (see [`RetryPolicy::decide`]); `reason` is for reports.
    Retry { cause: RetryCause, reason: String },
    /// Sending again will not change the answer.
    Fatal { code: ErrorCode, message: String },
}

/// Splits an answer into a message to use and a failure (an
/// [`wire::ErrorResponse`]).
pub fn classify(msg: Message) -> Result<Message, Failure> {
    match msg {
        Message::ErrorResponse(e) => {
            let code = e.error_code();
            let hint = e.leader_hint.as_ref().and_then(hint_addr);
            match RetryCause::from_code(code, hint) {
                Some(cause) => Err(Failure::Retry {
                    cause,
                    reason: format!("{code}: {}", e.message),
                }),
                None => Err(Failure::Fatal {
                    code,
                    message: e.message,
                }),
            }
        }
        other => Ok(other),
    }
}

/// The decision for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait `after`, then send along `route`.
    Retry { after: Duration, route: Route },
    /// The deadline has passed: report the last failure.
    GiveUp,
}

/// Back-off and give-up rules: exponential back-off from `backoff_min`,
/// doubling per attempt up to `backoff_max`, until a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Doublings of the back-off at most: 2^16 × 10 ms is far past any maximum.
const BACKOFF_DOUBLINGS_MAX: u32 = 16;

impl RetryPolicy {
    /// The wait before attempt `attempts + 1` after a failure of `cause`.
    /// Out of order is an ordering artefact of retries, not overload: it is
    /// tried again soon.
    pub fn backoff(&self, cause: &RetryCause, attempts: u32) -> Duration {
        if *cause == RetryCause::OutOfOrder {
            return self.backoff_min;
        }
        let factor = 1u32 << attempts.saturating_sub(1).min(BACKOFF_DOUBLINGS_MAX);
        self.backoff_min
            .saturating_mul(factor)
            .min(self.backoff_max)
    }

    /// What to do after the `attempts`-th attempt failed with `cause`, sent
    /// to `current`: give up once `deadline` has passed (None: never),
    /// otherwise wait (never past the deadline) and go where the cause says.
    pub fn decide(
        &self,
        cause: &RetryCause,
        attempts: u32,
        now: Instant,
        deadline: Option<Instant>,
        current: Option<SocketAddr>,
    ) -> Decision {
        if deadline.is_some_and(|d| now >= d) {
            return Decision::GiveUp;
        }
        let mut after = self.backoff(cause, attempts);
        if let Some(d) = deadline {
            after = after.min(d - now);
        }
        Decision::Retry {
            after,
            route: cause.route(current),
        }
    }
}

/// Most attempts of one blocking call: with the smallest back-off of 10 ms
/// doubling to 1 s this is over 15 minutes, far past any deadline; it only
/// bounds a loop whose deadline is huge.
const CALL_ATTEMPTS_MAX: u32 = 1_000;

/// A blocking call with retries: `attempt(target)` sends the request once
/// (target None: any bootstrap broker, or wherever the caller's metadata
/// says), and failures are retried by `policy` until `deadline`.
/// `refresh()` answers where to go after [`Route::Refresh`] (None: the
/// caller's default). Returns the last error when giving up or when the
/// failure is fatal.
pub fn call<T>(
    policy: &RetryPolicy,
    deadline: Instant,
    start: Option<SocketAddr>,
    mut refresh: impl FnMut() -> Option<SocketAddr>,
    mut attempt: impl FnMut(Option<SocketAddr>) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let mut target = start;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match attempt(target) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(cause) = RetryCause::of_error(&err) else {
            return Err(err);
        };
        if attempts >= CALL_ATTEMPTS_MAX {
            return Err(err);
        }
        match policy.decide(&cause, attempts, Instant::now(), Some(deadline), target) {
            Decision::GiveUp => return Err(err),
            Decision::Retry { after, route } => {
                std::thread::sleep(after);
                match route {
                    Route::Reroute(a) => target = Some(a),
                    Route::Refresh => target = refresh(),
                    Route::Same => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn broker_err(code: ErrorCode, hint_port: Option<u16>) -> ClientError {
        ClientError::Broker {
            code,
            message: "m".into(),
            hint: hint_port.map(|port| wire::LeaderHint {
                broker: 2,
                shard: 0,
                endpoint: wire::Endpoint {
                    host: "127.0.0.1".into(),
                    port,
                },
            }),
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_secs(1),
    };

    #[test]
    fn codes_become_causes_and_refusals_stay_fatal() {
        assert_eq!(
            RetryCause::from_code(ErrorCode::NotLeader, Some(addr(5))),
            Some(RetryCause::NotLeader {
                hint: Some(addr(5))
            })
        );
        assert_eq!(
            RetryCause::from_code(ErrorCode::LeaderNotAvailable, None),
            Some(RetryCause::Unavailable {
                code: ErrorCode::LeaderNotAvailable
            })
        );
        assert_eq!(
            RetryCause::from_code(ErrorCode::DiskFull, None),
            Some(RetryCause::Overloaded {
                code: ErrorCode::DiskFull
            })
        );
        assert_eq!(
            RetryCause::from_code(ErrorCode::Timeout, None),
            Some(RetryCause::BrokerTimeout)
        );
        for code in [
            ErrorCode::RequestTooLarge,
            ErrorCode::TopicAlreadyExists,
            ErrorCode::CorruptBatch,
            ErrorCode::OutOfOrderSequence,
        ] {
            assert_eq!(RetryCause::from_code(code, None), None, "{code}");
        }
        let io = ClientError::Closed { addr: addr(1) };
        assert_eq!(RetryCause::of_error(&io), Some(RetryCause::Connection));
        let garbage = ClientError::Protocol {
            addr: addr(1),
            source: wire::WireError::InvalidBatch("x".into()),
        };
        assert_eq!(RetryCause::of_error(&garbage), None);
        // Every retryable code has a cause, and its name is the code's.
        for &code in ErrorCode::ALL.iter().filter(|c| c.is_retryable()) {
            let cause = RetryCause::from_code(code, None).expect("retryable");
            assert_eq!(cause.name(), code.name());
        }
    }

    #[test]
    fn hints_reroute_and_a_lost_leader_refreshes_metadata() {
        let hinted = RetryCause::NotLeader {
            hint: Some(addr(7)),
        };
        assert_eq!(hinted.route(Some(addr(1))), Route::Reroute(addr(7)));
        // A hint naming where we already are says nothing new.
        assert_eq!(hinted.route(Some(addr(7))), Route::Refresh);
        assert_eq!(
            RetryCause::NotController { hint: None }.route(None),
            Route::Refresh
        );
        assert_eq!(RetryCause::Connection.route(Some(addr(1))), Route::Refresh);
        assert_eq!(
            RetryCause::Overloaded {
                code: ErrorCode::DiskFull
            }
            .route(Some(addr(1))),
            Route::Same
        );
    }

    #[test]
    fn back_off_doubles_to_its_maximum_and_never_passes_the_deadline() {
        let c = RetryCause::Connection;
        assert_eq!(POLICY.backoff(&c, 1), Duration::from_millis(10));
        assert_eq!(POLICY.backoff(&c, 2), Duration::from_millis(20));
        assert_eq!(POLICY.backoff(&c, 4), Duration::from_millis(80));
        assert_eq!(POLICY.backoff(&c, 30), Duration::from_secs(1));
        assert_eq!(POLICY.backoff(&c, u32::MAX), Duration::from_secs(1));
        assert_eq!(
            POLICY.backoff(&RetryCause::OutOfOrder, 9),
            Duration::from_millis(10)
        );
        let now = Instant::now();
        let soon = now + Duration::from_millis(3);
        assert_eq!(
            POLICY.decide(&c, 9, now, Some(soon), None),
            Decision::Retry {
                after: Duration::from_millis(3),
                route: Route::Refresh
            }
        );
        assert_eq!(
            POLICY.decide(&c, 1, soon, Some(soon), None),
            Decision::GiveUp
        );
        assert!(matches!(
            POLICY.decide(&c, 1, now, None, None),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn a_blocking_call_follows_the_hint_then_gives_up_at_the_deadline() {
        let seen = std::cell::RefCell::new(Vec::new());
        let r = call(
            &POLICY,
            Instant::now() + Duration::from_secs(5),
            None,
            || None,
            |target| {
                seen.borrow_mut().push(target);
                match target {
                    None => Err(broker_err(ErrorCode::NotController, Some(9))),
                    Some(a) => Ok(a),
                }
            },
        );
        assert_eq!(r.unwrap(), addr(9));
        assert_eq!(*seen.borrow(), vec![None, Some(addr(9))]);

        let tries = Cell::new(0);
        let started = Instant::now();
        let r: Result<(), _> = call(
            &POLICY,
            started + Duration::from_millis(100),
            None,
            || None,
            |_| {
                tries.set(tries.get() + 1);
                Err(broker_err(ErrorCode::LeaderNotAvailable, None))
            },
        );
        assert!(
            matches!(
                r,
                Err(ClientError::Broker {
                    code: ErrorCode::LeaderNotAvailable,
                    ..
                })
            ),
            "{r:?}"
        );
        assert!(tries.get() >= 3, "{} tries", tries.get());
        assert!(started.elapsed() < Duration::from_secs(2));

        let tries = Cell::new(0);
        let r: Result<(), _> = call(
            &POLICY,
            Instant::now() + Duration::from_secs(5),
            None,
            || None,
            |_| {
                tries.set(tries.get() + 1);
                Err(broker_err(ErrorCode::TopicAlreadyExists, None))
            },
        );
        assert!(r.is_err());
        assert_eq!(tries.get(), 1, "a fatal answer is not retried");
    }
}
