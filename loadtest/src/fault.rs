//! `--fault`: one scripted fault during a run on brokers this harness
//! started (they are signalled by PID), and what it did to the workload.
//!
//! - `kill-leader@AT[:RESTART[:TIMES]]`: kill -9 of the leader of
//!   partition 0 at AT seconds (warm-up included), restarted RESTART seconds
//!   later (default 5); with TIMES, again (the leader of that moment)
//!   RESTART seconds after each restart, TIMES kills in all (default 1).
//! - `pause-follower@AT:FOR`: SIGSTOP of a follower of partition 0 at AT
//!   seconds, SIGCONT FOR seconds later.
//!
//! The report comes from the run's acknowledgement timeline (100 ms
//! buckets): the longest time without any acknowledgement after the fault, the
//! largest ack latency after it, and the ack rate while it lasted against
//! the rate before it. Lost or duplicated messages are the consumers' id
//! checks, as in every run.
//!
//! With kill-leader the thread also counts the partitions each broker leads
//! (merged `cluster status`) before the kill, just before the last restart,
//! and then every [`LEADERS_POLL`] until they are balanced again (no broker
//! leads more than one more than another, twice in a row): the time from
//! the restart to that moment, and the ack rate over [`RATE_WINDOW_BUCKETS`]
//! from it against the same span before the fault (leader rebalancing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::Admin;
use serde_json::{json, Value};

use crate::run::{Outcome, TIMELINE_BUCKET_US};
use crate::spawn::LocalCluster;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultSpec {
    KillLeader {
        at_s: f64,
        restart_after_s: f64,
        times: u32,
    },
    PauseFollower {
        at_s: f64,
        for_s: f64,
    },
}

impl FaultSpec {
    pub fn parse(s: &str) -> Result<FaultSpec, String> {
        let bad = || {
            format!("`{s}`: expected kill-leader@SECS[:RESTART_AFTER_SECS[:TIMES]] or pause-follower@SECS:FOR_SECS")
        };
        let (kind, times) = s.split_once('@').ok_or_else(bad)?;
        let nums: Vec<f64> = times
            .split(':')
            .map(|t| t.parse::<f64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if nums.iter().any(|n| !n.is_finite() || *n < 0.0) {
            return Err(bad());
        }
        match (kind, nums.as_slice()) {
            ("kill-leader", [at]) => Ok(FaultSpec::KillLeader {
                at_s: *at,
                restart_after_s: 5.0,
                times: 1,
            }),
            ("kill-leader", [at, r]) => Ok(FaultSpec::KillLeader {
                at_s: *at,
                restart_after_s: *r,
                times: 1,
            }),
            // Bounded: at most 100 kills in one run.
            ("kill-leader", [at, r, n]) if n.fract() == 0.0 && (1.0..=100.0).contains(n) => {
                Ok(FaultSpec::KillLeader {
                    at_s: *at,
                    restart_after_s: *r,
                    times: *n as u32,
                })
            }
            ("pause-follower", [at, f]) if *f > 0.0 => Ok(FaultSpec::PauseFollower {
                at_s: *at,
                for_s: *f,
            }),
            _ => Err(bad()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            FaultSpec::KillLeader { .. } => "kill-leader",
            FaultSpec::PauseFollower { .. } => "pause-follower",
        }
    }
}

/// How often the leaders are counted after the last restart: a status
/// round trip to each broker, a few a second at most.
const LEADERS_POLL: Duration = Duration::from_millis(250);
/// How long the leaders are watched after the last restart at most (the
/// run's end stops it earlier).
const BALANCE_WAIT_MAX: Duration = Duration::from_secs(300);
/// The spans compared for the ack rate before the fault and after the
/// leaders are balanced again: 10 s of 100 ms buckets (this shared
/// machine's rate swings by tens of percent from one second to the next).
const RATE_WINDOW_BUCKETS: usize = 100;
/// An after-balance span shorter than this (the run ended) gives no ratio.
const RATE_WINDOW_BUCKETS_MIN: usize = 50;

/// What the fault thread did.
#[derive(Debug, Default, Clone)]
pub struct FaultLog {
    pub target: Option<u64>,
    /// Partition 0's (leader, term) when the fault began and when it was
    /// healed (before the healing step).
    pub leader_before: Option<(u64, u64)>,
    pub leader_after: Option<(u64, u64)>,
    pub injected_at: Option<Instant>,
    pub healed_at: Option<Instant>,
    /// Brokers killed (kill-leader).
    pub kills: u32,
    /// Partitions of the topic each broker leads (index: id - 1), just
    /// before the first kill, just before the last restart, and once
    /// balanced again after it (kill-leader).
    pub leaders_before: Option<Vec<u64>>,
    pub leaders_down: Option<Vec<u64>>,
    pub leaders_balanced: Option<Vec<u64>>,
    /// When the leaders were first seen balanced after the last restart.
    pub balanced_at: Option<Instant>,
    pub error: Option<String>,
}

/// A fault thread: told the run's start on `start` (dropping it unsent
/// cancels the fault), told the run is over through `run_over`.
pub struct FaultThread {
    pub start: std::sync::mpsc::Sender<Instant>,
    pub run_over: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<FaultLog>,
}

/// Applies `spec` to `cluster` on its own thread, timed from the run's start.
pub fn spawn(spec: FaultSpec, cluster: Arc<Mutex<LocalCluster>>, topic: String) -> FaultThread {
    let (tx, rx) = std::sync::mpsc::channel();
    let run_over = Arc::new(AtomicBool::new(false));
    let over = run_over.clone();
    let thread = std::thread::spawn(move || {
        let mut log = FaultLog::default();
        let Ok(start) = rx.recv() else {
            log.error = Some("the run did not start".into());
            return log;
        };
        if let Err(e) = apply(spec, &cluster, &topic, start, &over, &mut log) {
            log.error = Some(format!("{e:#}"));
        }
        log
    });
    FaultThread {
        start: tx,
        run_over,
        thread,
    }
}

/// Partitions of `topic` led by each broker (index: id - 1) as the running
/// brokers report them; `None` while a partition has no leader or the
/// status cannot be read.
fn leader_counts(cluster: &Mutex<LocalCluster>, topic: &str) -> Option<Vec<u64>> {
    let (live, nodes) = {
        let c = cluster.lock().ok()?;
        let live: Vec<_> = (0..c.nodes())
            .filter(|&i| c.is_running(i))
            .map(|i| c.listens[i])
            .collect();
        (live, c.nodes())
    };
    let status = Admin::new(live, Duration::from_secs(2))
        .cluster_status()
        .ok()?;
    let mut counts = vec![0u64; nodes];
    for p in status.partitions.iter().filter(|p| p.topic == topic) {
        let l = p.leader?;
        *counts.get_mut((l as usize).checked_sub(1)?)? += 1;
    }
    Some(counts)
}

/// No broker leads more than one partition more than another.
pub fn balanced(counts: &[u64]) -> bool {
    let (min, max) = (counts.iter().min(), counts.iter().max());
    min.zip(max).is_some_and(|(a, b)| b - a <= 1)
}

/// Polls the leaders until they are balanced twice in a row (the first of
/// the two is the moment), the run ends or [`BALANCE_WAIT_MAX`] passes.
fn watch_balance(
    cluster: &Mutex<LocalCluster>,
    topic: &str,
    run_over: &AtomicBool,
    log: &mut FaultLog,
) {
    let deadline = Instant::now() + BALANCE_WAIT_MAX;
    let mut first: Option<(Instant, Vec<u64>)> = None;
    while Instant::now() < deadline && !run_over.load(Ordering::Relaxed) {
        let at = Instant::now();
        match leader_counts(cluster, topic).filter(|c| balanced(c)) {
            Some(counts) => match first.take() {
                Some((t, c)) => {
                    log.balanced_at = Some(t);
                    log.leaders_balanced = Some(c);
                    return;
                }
                None => first = Some((at, counts)),
            },
            None => first = None,
        }
        std::thread::sleep(LEADERS_POLL);
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn apply(
    spec: FaultSpec,
    cluster: &Mutex<LocalCluster>,
    topic: &str,
    start: Instant,
    run_over: &AtomicBool,
    log: &mut FaultLog,
) -> Result<()> {
    let lock = || {
        cluster
            .lock()
            .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))
    };
    match spec {
        FaultSpec::KillLeader {
            at_s,
            restart_after_s,
            times,
        } => {
            sleep_until(start + Duration::from_secs_f64(at_s));
            log.leaders_before = leader_counts(cluster, topic);
            for k in 0..times {
                if k > 0 {
                    std::thread::sleep(Duration::from_secs_f64(restart_after_s));
                }
                let mut c = lock()?;
                let p = c.placement(topic, 0)?;
                let leader = p.leader.context("partition 0 has no leader to kill")?;
                if k == 0 {
                    log.leader_before = Some((leader, p.term));
                    log.target = Some(leader);
                    log.injected_at = Some(Instant::now());
                }
                c.kill(leader as usize - 1);
                log.kills += 1;
                drop(c);
                std::thread::sleep(Duration::from_secs_f64(restart_after_s));
                if k + 1 == times {
                    log.leaders_down = leader_counts(cluster, topic);
                }
                let mut c = lock()?;
                let p = c.placement(topic, 0)?;
                log.leader_after = p.leader.map(|l| (l, p.term));
                c.restart(leader as usize - 1)?;
                log.healed_at = Some(Instant::now());
            }
            watch_balance(cluster, topic, run_over, log);
        }
        FaultSpec::PauseFollower { at_s, for_s } => {
            sleep_until(start + Duration::from_secs_f64(at_s));
            let c = lock()?;
            let p = c.placement(topic, 0)?;
            let Some(follower) = p.replicas.iter().copied().find(|r| Some(*r) != p.leader) else {
                bail!("partition 0 has no follower (replication 1?)");
            };
            log.leader_before = p.leader.map(|l| (l, p.term));
            c.pause(follower as usize - 1)?;
            log.target = Some(follower);
            log.injected_at = Some(Instant::now());
            drop(c);
            std::thread::sleep(Duration::from_secs_f64(for_s));
            let c = lock()?;
            // Asked of the running brokers (the stopped one would not answer).
            let p = c.placement_without(topic, 0, follower)?;
            log.leader_after = p.leader.map(|l| (l, p.term));
            c.resume(follower as usize - 1)?;
            log.healed_at = Some(Instant::now());
        }
    }
    Ok(())
}

/// What the fault did to the run.
#[derive(Debug, Clone)]
pub struct FaultReport {
    pub spec: FaultSpec,
    pub log: FaultLog,
    /// The longest time without any acknowledgement after the fault, in
    /// whole 100 ms buckets (0: acknowledgements never stopped that long).
    pub unavailable_s: Option<f64>,
    /// Largest publish-ack latency acknowledged after the fault (ms).
    pub max_ack_after_ms: Option<f64>,
    /// Ack rate while the fault lasted / ack rate in the 3 s before it.
    pub rate_ratio_during: Option<f64>,
    /// From the last restart to leaders balanced again (kill-leader).
    pub balanced_after_restart_s: Option<f64>,
    /// Acks per second over the [`RATE_WINDOW_BUCKETS`] before the fault,
    /// and over as many (at least [`RATE_WINDOW_BUCKETS_MIN`]) from the
    /// moment the leaders were balanced again; their ratio.
    pub rate_before: Option<f64>,
    pub rate_after_balance: Option<f64>,
    pub rate_ratio_after_balance: Option<f64>,
    /// Acks per second over the last [`RATE_WINDOW_BUCKETS`] of the
    /// producers (long after the fault, balanced or not), and against the
    /// rate before the fault.
    pub rate_end: Option<f64>,
    pub rate_ratio_end: Option<f64>,
    /// Acks in each second of the run (timeline), for plots.
    pub acks_per_s: Vec<u64>,
}

pub fn analyse(spec: FaultSpec, log: FaultLog, o: &Outcome) -> FaultReport {
    let bucket_s = TIMELINE_BUCKET_US as f64 / 1e6;
    let index = |t: Instant| {
        (t.saturating_duration_since(o.started_at).as_micros() as u64 / TIMELINE_BUCKET_US) as usize
    };
    let t = &o.ack_timeline;
    let (mut unavailable_s, mut max_ack_after_ms, mut rate_ratio_during) = (None, None, None);
    if let Some(at) = log.injected_at {
        let i0 = index(at).min(t.len());
        // The longest run of 100 ms buckets without any ack between the
        // fault and the last ack of the run (the quiet tail after the
        // producers stopped is not an outage).
        let last_ack = t.iter().rposition(|b| b.acks > 0).unwrap_or(0);
        let (mut longest, mut run) = (0usize, 0usize);
        for b in t.iter().take(last_ack + 1).skip(i0) {
            run = if b.acks == 0 { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        unavailable_s = Some(longest as f64 * bucket_s);
        max_ack_after_ms = t[i0..]
            .iter()
            .map(|b| b.max_ack_us)
            .max()
            .map(|us| us as f64 / 1e3);
        let before: Vec<u64> = t[i0.saturating_sub(30)..i0]
            .iter()
            .map(|b| b.acks)
            .collect();
        let i1 = log.healed_at.map_or(t.len(), |h| index(h).min(t.len()));
        let during: Vec<u64> = t[i0..i1.max(i0)].iter().map(|b| b.acks).collect();
        if !before.is_empty() && !during.is_empty() {
            let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
            if avg(&before) > 0.0 {
                rate_ratio_during = Some(avg(&during) / avg(&before));
            }
        }
    }
    let avg = |b: &[crate::run::Bucket]| {
        (!b.is_empty())
            .then(|| b.iter().map(|b| b.acks).sum::<u64>() as f64 / (b.len() as f64 * bucket_s))
    };
    let rate_before = log
        .injected_at
        .map(|at| index(at).min(t.len()))
        .and_then(|i0| avg(&t[i0.saturating_sub(RATE_WINDOW_BUCKETS)..i0]));
    // Up to the last whole bucket with acks (the producers' end).
    let end = t.iter().rposition(|b| b.acks > 0).unwrap_or(0);
    let rate_after_balance = log.balanced_at.and_then(|at| {
        let i = index(at);
        let span = &t[i.min(end)..(i + RATE_WINDOW_BUCKETS).min(end)];
        if span.len() < RATE_WINDOW_BUCKETS_MIN {
            return None;
        }
        avg(span)
    });
    let ratio = |after: Option<f64>| {
        rate_before
            .zip(after)
            .filter(|(b, _)| *b > 0.0)
            .map(|(b, a)| a / b)
    };
    let rate_ratio_after_balance = ratio(rate_after_balance);
    let rate_end = log
        .healed_at
        .map(|h| index(h).min(end))
        .map(|healed| &t[end.saturating_sub(RATE_WINDOW_BUCKETS).max(healed)..end])
        .filter(|span| span.len() >= RATE_WINDOW_BUCKETS_MIN)
        .and_then(avg);
    let rate_ratio_end = ratio(rate_end);
    let balanced_after_restart_s = log
        .healed_at
        .zip(log.balanced_at)
        .map(|(h, b)| b.saturating_duration_since(h).as_secs_f64());
    let per_s = (1e6 / TIMELINE_BUCKET_US as f64).round().max(1.0) as usize;
    let acks_per_s = t
        .chunks(per_s)
        .map(|c| c.iter().map(|b| b.acks).sum())
        .collect();
    FaultReport {
        spec,
        log,
        unavailable_s,
        max_ack_after_ms,
        rate_ratio_during,
        balanced_after_restart_s,
        rate_before,
        rate_after_balance,
        rate_ratio_after_balance,
        rate_end,
        rate_ratio_end,
        acks_per_s,
    }
}

impl FaultReport {
    pub fn print(&self, o: &Outcome) {
        let since = |t: Option<Instant>| {
            t.map(|t| {
                format!(
                    "{:.1} s",
                    t.saturating_duration_since(o.started_at).as_secs_f64()
                )
            })
            .unwrap_or_else(|| "-".into())
        };
        let kills = match self.log.kills {
            0 | 1 => String::new(),
            n => format!(" ({n} kills in all, the last healed at the end)"),
        };
        println!(
            "  fault {}: broker {} at {}, healed at {}{kills}{}",
            self.spec.name(),
            self.log.target.map_or("-".into(), |t| t.to_string()),
            since(self.log.injected_at),
            since(self.log.healed_at),
            self.log
                .error
                .as_ref()
                .map(|e| format!(" (FAILED: {e})"))
                .unwrap_or_default()
        );
        let f = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2}{unit}"));
        println!(
            "    longest time without an ack after it {}; largest ack latency after it {}; ack rate during it {} of before; elections {}",
            f(self.unavailable_s, " s"),
            f(self.max_ack_after_ms, " ms"),
            f(self.rate_ratio_during, ""),
            o.broker_counters
                .as_ref()
                .and_then(|c| c.get("elections"))
                .map_or("-".into(), |n| n.to_string()),
        );
        let lt =
            |v: Option<(u64, u64)>| v.map_or("-".into(), |(l, t)| format!("broker {l} term {t}"));
        println!(
            "    partition 0 leader: {} before, {} at the end of the fault",
            lt(self.log.leader_before),
            lt(self.log.leader_after)
        );
        if let FaultSpec::KillLeader { .. } = self.spec {
            let counts = |v: &Option<Vec<u64>>| {
                v.as_ref().map_or("-".into(), |c| {
                    c.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                })
            };
            println!(
                "    partitions led per broker: {} before, {} before the restart, {} balanced again {} after the restart",
                counts(&self.log.leaders_before),
                counts(&self.log.leaders_down),
                counts(&self.log.leaders_balanced),
                f(self.balanced_after_restart_s, " s"),
            );
            let window_s = RATE_WINDOW_BUCKETS as f64 * TIMELINE_BUCKET_US as f64 / 1e6;
            println!(
                "    ack rate: {} msgs/s in the {window_s:.0} s before the fault; {} msgs/s in the {window_s:.0} s from the balance on ({} of before); {} msgs/s in the last {window_s:.0} s of the producers ({} of before)",
                f(self.rate_before, ""),
                f(self.rate_after_balance, ""),
                f(self.rate_ratio_after_balance, ""),
                f(self.rate_end, ""),
                f(self.rate_ratio_end, ""),
            );
        }
        println!(
            "    acknowledged messages missing: {}, duplicated: {}",
            o.missing, o.duplicates
        );
    }

    pub fn to_json(&self, o: &Outcome) -> Value {
        let since =
            |t: Option<Instant>| t.map(|t| t.saturating_duration_since(o.started_at).as_secs_f64());
        json!({
            "kind": self.spec.name(),
            "target_broker": self.log.target,
            "injected_at_s": since(self.log.injected_at),
            "healed_at_s": since(self.log.healed_at),
            "kills": self.log.kills,
            "error": self.log.error,
            "leader_before": self.log.leader_before,
            "leader_after": self.log.leader_after,
            "unavailable_s": self.unavailable_s,
            "max_ack_ms_after": self.max_ack_after_ms,
            "ack_rate_ratio_during": self.rate_ratio_during,
            "missing": o.missing,
            "duplicates": o.duplicates,
            "elections": o.broker_counters.as_ref().and_then(|c| c.get("elections")),
            "leaders_before": self.log.leaders_before,
            "leaders_before_restart": self.log.leaders_down,
            "leaders_balanced": self.log.leaders_balanced,
            "balanced_at_s": since(self.log.balanced_at),
            "balanced_after_restart_s": self.balanced_after_restart_s,
            "ack_rate_before": self.rate_before,
            "ack_rate_after_balance": self.rate_after_balance,
            "ack_rate_ratio_after_balance": self.rate_ratio_after_balance,
            "ack_rate_end": self.rate_end,
            "ack_rate_ratio_end": self.rate_ratio_end,
            "acks_per_s": self.acks_per_s,
        })
    }

    pub fn ok(&self) -> bool {
        self.log.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Bucket;

    #[test]
    fn balance_is_within_one_partition_per_broker() {
        assert!(balanced(&[2, 2, 2]));
        assert!(balanced(&[3, 2, 2]));
        assert!(!balanced(&[3, 3, 0]));
        assert!(!balanced(&[]));
    }

    #[test]
    fn the_rate_after_the_balance_is_compared_with_the_rate_before_the_fault() {
        // 10 acks per 100 ms bucket for 10 s, nothing for 2 s after the
        // kill at 10 s, then 8 per bucket; the leaders balance at 20 s.
        let mut t = vec![
            Bucket {
                acks: 10,
                max_ack_us: 1
            };
            100
        ];
        t.extend(vec![Bucket::default(); 20]);
        t.extend(vec![
            Bucket {
                acks: 8,
                max_ack_us: 1
            };
            150
        ]);
        let started_at = Instant::now();
        let at = |s: f64| started_at + Duration::from_secs_f64(s);
        let log = FaultLog {
            injected_at: Some(at(10.0)),
            healed_at: Some(at(15.0)),
            balanced_at: Some(at(20.0)),
            ..FaultLog::default()
        };
        let o = crate::run::Outcome::for_tests(started_at, t);
        let spec = FaultSpec::KillLeader {
            at_s: 10.0,
            restart_after_s: 5.0,
            times: 1,
        };
        let r = analyse(spec, log, &o);
        assert_eq!(r.rate_before, Some(100.0));
        assert_eq!(r.rate_after_balance, Some(80.0));
        assert_eq!(r.rate_ratio_after_balance, Some(0.8));
        // The last 10 s of the producers: buckets 169..269.
        assert_eq!(r.rate_end, Some(80.0));
        assert_eq!(r.balanced_after_restart_s, Some(5.0));
        assert_eq!(r.unavailable_s.map(|s| (s * 10.0).round()), Some(20.0));
        assert_eq!(r.acks_per_s.len(), 27);
        assert_eq!(r.acks_per_s[0], 100);
    }

    #[test]
    fn fault_specs_parse_and_bad_ones_are_named() {
        assert_eq!(
            FaultSpec::parse("kill-leader@3").unwrap(),
            FaultSpec::KillLeader {
                at_s: 3.0,
                restart_after_s: 5.0,
                times: 1,
            }
        );
        assert_eq!(
            FaultSpec::parse("kill-leader@3:2:4").unwrap(),
            FaultSpec::KillLeader {
                at_s: 3.0,
                restart_after_s: 2.0,
                times: 4,
            }
        );
        for bad in [
            "kill-leader@3:2:0",
            "kill-leader@3:2:1.5",
            "kill-leader@3:2:101",
        ] {
            assert!(FaultSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            FaultSpec::parse("pause-follower@2:10").unwrap(),
            FaultSpec::PauseFollower {
                at_s: 2.0,
                for_s: 10.0
            }
        );
        for bad in [
            "kill-leader",
            "pause-follower@2",
            "nuke@1",
            "kill-leader@-1",
            "kill-leader@x",
        ] {
            assert!(FaultSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
