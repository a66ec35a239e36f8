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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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
    pub error: Option<String>,
}

/// Applies `spec` to `cluster` on its own thread, timed from the run's start
/// (sent on the returned sender; dropping it unsent cancels the fault).
pub fn spawn(
    spec: FaultSpec,
    cluster: Arc<Mutex<LocalCluster>>,
    topic: String,
) -> (
    std::sync::mpsc::Sender<Instant>,
    std::thread::JoinHandle<FaultLog>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut log = FaultLog::default();
        let Ok(start) = rx.recv() else {
            log.error = Some("the run did not start".into());
            return log;
        };
        if let Err(e) = apply(spec, &cluster, &topic, start, &mut log) {
            log.error = Some(format!("{e:#}"));
        }
        log
    });
    (tx, thread)
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
                let mut c = lock()?;
                let p = c.placement(topic, 0)?;
                log.leader_after = p.leader.map(|l| (l, p.term));
                c.restart(leader as usize - 1)?;
                log.healed_at = Some(Instant::now());
            }
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
    FaultReport {
        spec,
        log,
        unavailable_s,
        max_ack_after_ms,
        rate_ratio_during,
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
        })
    }

    pub fn ok(&self) -> bool {
        self.log.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
