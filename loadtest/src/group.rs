//! `--group`: the run's consumers are members of one consumer group. Their
//! threads are started (and, with `--group-churn`, stopped) here, and every
//! rebalance is timed: from the member's join, leave or crash to the moment
//! the coordinator has every partition owned again by the members expected
//! (nothing pending), read with `DescribeGroup` every 20 ms.
//!
//! The churn script, in the measured window: at a third, member 0 leaves
//! (commits, `LeaveGroup`) and a new member joins; at two thirds, member 1
//! "crashes" (its thread drops its `GroupConsumer` without leaving: no more
//! heartbeats, as after kill -9) and a new member joins once its partitions
//! are owned again. Duplicates are counted by the consumers' id check as in
//! any run; in a group run they come from rebalances only (a crash: what the
//! crashed member read after its last commit).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use client::group::{coordinator_request, OFFSETS_TOPIC};
use client::{ClientConfig, GroupConfig, GroupConsumer, Reset};
use serde_json::{json, Value};
use wire::{CommittedOffset, DescribeGroupRequest, Message, OffsetCommitRequest};

use crate::run::{consume, ConsumerOut, Live, Workload};

/// How often the coordinator is asked whether a rebalance is over (each
/// ask is a metadata lookup and one request: a few ms on loopback).
const DESCRIBE_EVERY: Duration = Duration::from_millis(20);
/// The longest a rebalance may take before the run reports it as stuck
/// (a crash takes a lease and a little more).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the group's consumers run.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub group: String,
    /// Leave, join, crash and join during the window (needs 2+ consumers).
    pub churn: bool,
    /// The members join (and settle) first, then read nothing until the
    /// producers are done: the read rate is the group's on a backlog.
    pub after_produce: bool,
    pub lease: Duration,
    /// Heartbeat interval (None: the client's default, a quarter of the lease).
    pub heartbeat: Option<Duration>,
}

/// Rebalance times, in ms.
#[derive(Debug, Clone, Default)]
pub struct RebalanceReport {
    pub lease_ms: u64,
    /// Each member that joined after the first: join → all owned.
    pub join_ms: Vec<f64>,
    /// A member's leave → all owned by the others.
    pub leave_ms: Vec<f64>,
    /// A member's crash → all owned by the others (includes the lease).
    pub crash_ms: Vec<f64>,
    /// `--group-after-produce`: from starting every member at once to the
    /// group settled (every partition owned, nothing pending).
    pub start_ms: Option<f64>,
    /// `--group-after-produce`: the backlog's read rate, from the producers'
    /// end (the settled group starts reading) to the last record, msgs/s.
    pub settled_msgs_per_s: Option<f64>,
    pub errors: Vec<String>,
}

impl RebalanceReport {
    pub fn to_json(&self) -> Value {
        json!({
            "lease_ms": self.lease_ms,
            "join_ms": self.join_ms,
            "leave_ms": self.leave_ms,
            "crash_ms": self.crash_ms,
            "start_ms": self.start_ms,
            "settled_msgs_per_s": self.settled_msgs_per_s,
            "errors": self.errors,
        })
    }

    pub fn print(&self, duplicates: u64) {
        let list = |v: &[f64]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        println!(
            "  group    rebalance ms: join [{}]  leave [{}]  crash [{}] (lease {} ms); {} duplicate(s) from rebalances",
            list(&self.join_ms),
            list(&self.leave_ms),
            list(&self.crash_ms),
            self.lease_ms,
            duplicates
        );
        if let (Some(start), Some(rate)) = (self.start_ms, self.settled_msgs_per_s) {
            println!(
                "  group    backlog read at {rate:.0} msgs/s by the settled group (it settled {start:.0} ms after its members started)"
            );
        }
        for e in &self.errors {
            println!("  group    error: {e}");
        }
    }
}

/// What a member thread is told to do when it stops.
const RUN: u8 = 0;
const LEAVE: u8 = 1;
const CRASH: u8 = 2;

struct MemberThread {
    stop: Arc<AtomicBool>,
    how: Arc<AtomicU8>,
    thread: JoinHandle<ConsumerOut>,
}

/// Everything a member thread shares with the run.
#[derive(Clone)]
pub struct Ctx {
    pub w: Workload,
    pub plan: GroupPlan,
    pub partitions: u32,
    pub t0: Instant,
    pub warmup_us: u64,
    pub window_end_us: Option<u64>,
    pub live: Arc<Live>,
    pub end_marks: Arc<Mutex<Option<BTreeMap<u32, u64>>>>,
    pub positions: Arc<Mutex<BTreeMap<u32, u64>>>,
    /// Set when the churn script is over: members may stop once caught up.
    pub script_done: Arc<AtomicBool>,
    /// `--group-after-produce`: the members hold off reading until the
    /// producers are done.
    pub paused: Arc<AtomicBool>,
}

fn client(w: &Workload) -> ClientConfig {
    let mut c = ClientConfig::new(w.brokers.clone());
    c.request_timeout = Duration::from_secs(10);
    c
}

/// Sets the group's offsets to where the run starts (the group must have
/// no members: a leftover one is an error).
pub fn reset(w: &Workload, group: &str, start: &BTreeMap<u32, u64>) -> Result<()> {
    let cfg = client(w);
    client::group::ensure_offsets_topic(&cfg)?;
    let req = OffsetCommitRequest {
        group: group.to_owned(),
        member_id: String::new(),
        generation: 0,
        offsets: start
            .iter()
            .map(|(&partition, &offset)| CommittedOffset {
                topic: w.topic.clone(),
                partition,
                offset,
                metadata: "loadtest".into(),
            })
            .collect(),
    };
    match coordinator_request(&cfg, group, &req.into())? {
        Message::OffsetCommitResponse(_) => Ok(()),
        other => bail!("unexpected answer {}", other.kind().name()),
    }
}

fn spawn_member(ctx: &Ctx, index: usize) -> MemberThread {
    let stop = Arc::new(AtomicBool::new(false));
    let how = Arc::new(AtomicU8::new(RUN));
    let (s, h, ctx) = (stop.clone(), how.clone(), ctx.clone());
    let thread = std::thread::spawn(move || {
        let mut g = GroupConfig::new(client(&ctx.w), ctx.plan.group.clone(), ctx.w.topic.clone());
        g.client_id = format!("loadtest-{index}");
        g.lease = ctx.plan.lease;
        g.heartbeat_interval = ctx.plan.heartbeat;
        g.reset = Reset::Latest;
        let mut member = match GroupConsumer::new(g) {
            Ok(m) => m,
            Err(e) => return ConsumerOut::failed(&ctx.w, format!("member {index}: {e}")),
        };
        let out = consume(
            &mut member,
            &ctx.w,
            ctx.t0,
            ctx.warmup_us,
            ctx.window_end_us,
            &ctx.live,
            &ctx.end_marks,
            Some(crate::run::MemberShared {
                stop: &s,
                positions: &ctx.positions,
                script_done: &ctx.script_done,
                paused: &ctx.paused,
            }),
        );
        if h.load(Ordering::SeqCst) == CRASH {
            // No leave, no commit: as after kill -9.
            drop(member);
        } else if let Err(e) = member.close() {
            eprintln!("drmq-loadtest: member {index} leaving: {e}");
        }
        out
    });
    MemberThread { stop, how, thread }
}

/// Waits until the coordinator shows `members` members owning every
/// partition with nothing pending; how long that took from `since`.
fn settled(ctx: &Ctx, members: usize, since: Instant) -> Result<f64> {
    let cfg = client(&ctx.w);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let want = ctx.partitions as usize;
    loop {
        let req = DescribeGroupRequest {
            group: ctx.plan.group.clone(),
        };
        if let Ok(Message::DescribeGroupResponse(d)) =
            coordinator_request(&cfg, &ctx.plan.group, &req.into())
        {
            let owned: usize = d
                .members
                .iter()
                .map(|m| {
                    m.partitions
                        .iter()
                        .filter(|tp| tp.topic == ctx.w.topic)
                        .count()
                })
                .sum();
            if d.members.len() == members && d.pending.is_empty() && owned == want {
                return Ok(since.elapsed().as_secs_f64() * 1e3);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "group {}: {members} member(s) did not own all {want} partitions within {SETTLE_TIMEOUT:?} ({OFFSETS_TOPIC} coordinator)",
                ctx.plan.group
            );
        }
        std::thread::sleep(DESCRIBE_EVERY);
    }
}

/// Starts the members (one at a time, each join timed), tells the run to
/// start its producers (`go`), runs the churn script, and returns every
/// member's output once they are done.
pub fn orchestrate(
    ctx: Ctx,
    go: std::sync::mpsc::Sender<()>,
) -> (Vec<ConsumerOut>, RebalanceReport) {
    let mut report = RebalanceReport {
        lease_ms: ctx.plan.lease.as_millis() as u64,
        ..RebalanceReport::default()
    };
    let mut members: Vec<MemberThread> = Vec::new();
    let mut outs = Vec::new();
    let n = ctx.w.consumers.max(1);
    let mut next_index = 0;
    let mut settled_at = None;
    if ctx.plan.after_produce {
        // All at once, timed as one start, paused; they read the backlog
        // once the producers are done, and the rate counts from then.
        let t = Instant::now();
        for _ in 0..n {
            members.push(spawn_member(&ctx, next_index));
            next_index += 1;
        }
        match settled(&ctx, n, t) {
            Ok(ms) => report.start_ms = Some(ms),
            Err(e) => report.errors.push(e.to_string()),
        }
        let _ = go.send(());
        // Bounded: the producers stop by count or time.
        while !ctx.live.producers_done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        settled_at = Some((
            crate::run::elapsed_us(ctx.t0, Instant::now()),
            ctx.live.consumed.load(Ordering::Relaxed),
        ));
        ctx.paused.store(false, Ordering::SeqCst);
    }
    for i in (0..n).filter(|_| !ctx.plan.after_produce) {
        let t = Instant::now();
        members.push(spawn_member(&ctx, next_index));
        next_index += 1;
        match settled(&ctx, i + 1, t) {
            Ok(ms) if i > 0 => report.join_ms.push(ms),
            Ok(_) => {}
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    if !ctx.plan.after_produce {
        let _ = go.send(());
    }
    if ctx.plan.churn && n >= 2 && !ctx.plan.after_produce {
        let window = ctx.window_end_us.map_or(Duration::from_secs(6), |end| {
            Duration::from_micros(end - ctx.warmup_us)
        });
        let at = |fraction: f64| {
            ctx.t0 + Duration::from_micros(ctx.warmup_us) + window.mul_f64(fraction)
        };
        for (fraction, how, victim) in [(1.0 / 3.0, LEAVE, 0usize), (2.0 / 3.0, CRASH, 1usize)] {
            let when = at(fraction);
            std::thread::sleep(when.saturating_duration_since(Instant::now()));
            let m = members.remove(victim.min(members.len() - 1));
            m.how.store(how, Ordering::SeqCst);
            m.stop.store(true, Ordering::SeqCst);
            let t = Instant::now();
            if let Ok(out) = m.thread.join() {
                outs.push(out);
            }
            match settled(&ctx, n - 1, t) {
                Ok(ms) if how == LEAVE => report.leave_ms.push(ms),
                Ok(ms) => report.crash_ms.push(ms),
                Err(e) => report.errors.push(e.to_string()),
            }
            let t = Instant::now();
            members.insert(victim.min(members.len()), spawn_member(&ctx, next_index));
            next_index += 1;
            match settled(&ctx, n, t) {
                Ok(ms) => report.join_ms.push(ms),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    ctx.script_done.store(true, Ordering::SeqCst);
    for m in members {
        match m.thread.join() {
            Ok(out) => outs.push(out),
            Err(_) => report.errors.push("a member thread panicked".into()),
        }
    }
    if let Some((at_us, consumed)) = settled_at {
        let end_us = outs.iter().map(|o| o.last_receipt_us).max().unwrap_or(0);
        let total: u64 = outs.iter().map(|o| o.consumed).sum();
        if end_us > at_us {
            report.settled_msgs_per_s =
                Some(total.saturating_sub(consumed) as f64 / ((end_us - at_us) as f64 / 1e6));
        }
    }
    (outs, report)
}
