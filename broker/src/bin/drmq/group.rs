//! `drmq consume --group` (a member of a consumer group, on the client's
//! [`GroupConsumer`]) and `drmq group list|describe|reset-offsets`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::consumer::list_offset_opt;
use client::group::{coordinator_request, offsets_partition_request, OFFSETS_TOPIC};
use client::{ClientConfig, GroupConfig, GroupConsumer, GroupEvent, Reset};
use serde_json::{json, Value};
use wire::{
    CommittedOffset, DescribeGroupRequest, DescribeGroupResponse, ListGroupsRequest, Message,
    OffsetCommitRequest, OffsetSpec,
};

/// How long a group consumer's round waits for records.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Long-poll wait of each fetch.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// `drmq consume --group`'s settings.
pub struct MemberArgs {
    pub group: String,
    pub topic: String,
    pub from: Reset,
    pub lease_ms: u64,
    pub auto_commit_ms: u64,
    pub client_id: Option<String>,
    pub max_messages: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
}

/// Consumes as a member of a group: prints records as JSON lines (with the
/// member's generation), membership changes on stderr; on SIGINT/SIGTERM,
/// `--max-messages` or `--idle-timeout-ms` it commits and leaves the group.
pub fn consume(cfg: ClientConfig, a: MemberArgs, stop: Arc<AtomicBool>) -> Result<()> {
    let mut g = GroupConfig::new(cfg, a.group.clone(), a.topic.clone());
    g.lease = Duration::from_millis(a.lease_ms);
    g.auto_commit_interval =
        (a.auto_commit_ms > 0).then(|| Duration::from_millis(a.auto_commit_ms));
    g.reset = a.from;
    g.fetch_wait = FETCH_WAIT;
    g.fetch_bytes_max = 1 << 20;
    if let Some(id) = a.client_id {
        g.client_id = id;
    }
    let mut member = GroupConsumer::new(g).context("joining the group")?;
    let out = std::io::stdout();
    let mut printed = 0u64;
    let mut last_data = Instant::now();
    loop {
        let events = member.take_events();
        report(&a.group, member.member_id(), events);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let generation = member.generation();
        let mut o = out.lock();
        let mut write_error = None;
        let mut done = false;
        let topic = &a.topic;
        // A record not printed is refused: the member neither counts nor
        // commits it (the next member of the group reads it).
        let got = member.poll(POLL_WAIT, |partition, rec, _| {
            if done || write_error.is_some() {
                return false;
            }
            let line = json!({
                "topic": topic,
                "partition": partition,
                "offset": rec.offset,
                "key": rec.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": rec.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                "timestamp_ms": rec.timestamp_ms,
                "generation": generation,
            });
            if let Err(e) = writeln!(o, "{line}") {
                write_error = Some(e);
                return false;
            }
            printed += 1;
            done = a.max_messages.is_some_and(|m| printed >= m);
            true
        })?;
        let flushed = o.flush();
        drop(o);
        if write_error.is_some() || flushed.is_err() {
            break; // the reader went away (`| head`): leave quietly
        }
        if done {
            break;
        }
        if got > 0 {
            last_data = Instant::now();
        } else if a
            .idle_timeout_ms
            .is_some_and(|ms| last_data.elapsed() >= Duration::from_millis(ms))
        {
            break;
        }
    }
    let events = member.take_events();
    report(&a.group, member.member_id(), events);
    member.close().context("leaving the group")?;
    Ok(())
}

/// Membership events as one stderr line each.
fn report(group: &str, member: Option<&str>, events: Vec<GroupEvent>) {
    let member = member.unwrap_or("-");
    for e in events {
        match e {
            GroupEvent::Assigned {
                generation,
                partitions,
                ..
            } => eprintln!(
                "drmq: group {group} member {member} generation {generation}: partitions {partitions:?}"
            ),
            GroupEvent::CommitRefused { code, partitions } => eprintln!(
                "drmq: group {group} member {member}: commit of partitions {partitions:?} refused: {code} (rejoining)"
            ),
            GroupEvent::LeaseLost { .. } => {
                eprintln!("drmq: group {group} member {member}: lease ended; reading paused")
            }
        }
    }
}

/// Every group, from the leader of every offsets partition.
pub fn list(cfg: &ClientConfig) -> Result<Vec<Value>> {
    let admin = client::Admin::new(cfg.brokers.clone(), cfg.request_timeout);
    let meta = admin.metadata(Some(vec![OFFSETS_TOPIC.to_owned()]))?;
    let partitions = meta
        .topics
        .iter()
        .find(|t| t.name == OFFSETS_TOPIC && t.error == 0)
        .map_or(0, |t| t.partitions.len() as u32);
    let mut out = Vec::new();
    for index in 0..partitions {
        let r =
            offsets_partition_request(cfg, index, &ListGroupsRequest { partition: index }.into())
                .with_context(|| {
                format!("ListGroupsRequest to the leader of {OFFSETS_TOPIC}-{index}")
            })?;
        let Message::ListGroupsResponse(r) = r else {
            bail!("unexpected answer {}", r.kind().name());
        };
        for g in r.groups {
            out.push(json!({"group": g.group, "generation": g.generation, "members": g.members}));
        }
    }
    out.sort_by(|a, b| a["group"].as_str().cmp(&b["group"].as_str()));
    Ok(out)
}

pub fn describe_raw(cfg: &ClientConfig, group: &str) -> Result<DescribeGroupResponse> {
    let req = DescribeGroupRequest {
        group: group.to_owned(),
    };
    match coordinator_request(cfg, group, &req.into()).context("DescribeGroupRequest")? {
        Message::DescribeGroupResponse(r) => Ok(r),
        other => bail!("unexpected answer {}", other.kind().name()),
    }
}

/// A group with every partition of its topics: owner, committed offset,
/// high watermark and lag (high watermark − committed).
pub fn describe(cfg: &ClientConfig, group: &str) -> Result<Value> {
    let d = describe_raw(cfg, group)?;
    let mut topics: BTreeSet<String> = d.members.iter().flat_map(|m| m.topics.clone()).collect();
    topics.extend(d.offsets.iter().map(|o| o.topic.clone()));
    let owners: BTreeMap<(String, u32), String> = d
        .members
        .iter()
        .flat_map(|m| {
            m.partitions
                .iter()
                .map(|tp| ((tp.topic.clone(), tp.partition), m.member_id.clone()))
        })
        .collect();
    let committed: BTreeMap<(String, u32), u64> = d
        .offsets
        .iter()
        .filter_map(|o| Some(((o.topic.clone(), o.partition), o.offset?)))
        .collect();
    let mut partitions = Vec::new();
    for t in &topics {
        let mut routes = match client::routes(cfg, t) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("drmq: topic {t}: {e}");
                continue;
            }
        };
        for p in 0..routes.len() as u32 {
            let hw = list_offset_opt(cfg, t, &mut routes, p, OffsetSpec::Latest)
                .ok()
                .flatten();
            let key = (t.clone(), p);
            let c = committed.get(&key).copied();
            partitions.push(json!({
                "topic": t,
                "partition": p,
                "owner": owners.get(&key),
                "committed": c,
                "high_watermark": hw,
                "lag": c.zip(hw).map(|(c, hw)| hw.saturating_sub(c)),
            }));
        }
    }
    Ok(json!({
        "group": d.group,
        "generation": d.generation,
        "members": d.members.iter().map(|m| json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "topics": m.topics,
            "lease_ms": m.lease_ms,
            "lease_left_ms": m.lease_left_ms,
            "partitions": m.partitions.iter().map(|tp| json!({"topic": tp.topic, "partition": tp.partition})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "partitions": partitions,
        "pending": d.pending.iter().map(|tp| json!({"topic": tp.topic, "partition": tp.partition})).collect::<Vec<_>>(),
    }))
}

/// Where `reset-offsets --to` points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

pub fn parse_reset_to(s: &str) -> Result<ResetTo> {
    Ok(match s {
        "earliest" => ResetTo::Earliest,
        "latest" => ResetTo::Latest,
        _ if s.starts_with('@') => ResetTo::Timestamp(s[1..].parse().with_context(|| {
            format!("--to `{s}`: a timestamp is @MS, milliseconds since the Unix epoch")
        })?),
        n => ResetTo::Offset(n.parse().with_context(|| {
            format!("--to `{n}`: expected earliest, latest, an offset, or @MS (a timestamp)")
        })?),
    })
}

/// Sets the group's committed offset of every partition of `topic` (only
/// while the group has no members; the coordinator checks it too).
pub fn reset(cfg: &ClientConfig, group: &str, topic: &str, to: ResetTo) -> Result<Value> {
    let d = describe_raw(cfg, group)?;
    if !d.members.is_empty() {
        bail!(
            "group {group} has {} member(s): stop its consumers first (offsets can be reset only while it has none)",
            d.members.len()
        );
    }
    let mut routes = client::routes(cfg, topic)?;
    let mut offsets = Vec::new();
    for p in 0..routes.len() as u32 {
        let lookup = |spec| list_offset_opt(cfg, topic, &mut routes.clone(), p, spec);
        let (start, end) = (
            lookup(OffsetSpec::Earliest)?.unwrap_or(0),
            lookup(OffsetSpec::Latest)?.unwrap_or(0),
        );
        let offset = match to {
            ResetTo::Earliest => start,
            ResetTo::Latest => end,
            ResetTo::Offset(o) => {
                if o < start || o > end {
                    bail!("--to {o}: {topic}-{p} holds offsets {start}..{end}");
                }
                o
            }
            // No batch at or after the time: the end (nothing to re-read).
            ResetTo::Timestamp(ms) => {
                list_offset_opt(cfg, topic, &mut routes, p, OffsetSpec::Timestamp(ms))?
                    .unwrap_or(end)
            }
        };
        offsets.push(CommittedOffset {
            topic: topic.to_owned(),
            partition: p,
            offset,
            metadata: "reset".into(),
        });
    }
    let req = OffsetCommitRequest {
        group: group.to_owned(),
        member_id: String::new(),
        generation: 0,
        offsets: offsets.clone(),
    };
    match coordinator_request(cfg, group, &req.into()).context("OffsetCommitRequest")? {
        Message::OffsetCommitResponse(r) => {
            if let Some(bad) = r.results.iter().find(|r| r.error != 0) {
                bail!(
                    "{}-{}: {}",
                    bad.topic,
                    bad.partition,
                    wire::ErrorCode::from_u16(bad.error)
                );
            }
        }
        other => bail!("unexpected answer {}", other.kind().name()),
    }
    Ok(json!({
        "group": group,
        "topic": topic,
        "offsets": offsets.iter().map(|o| json!({"partition": o.partition, "offset": o.offset})).collect::<Vec<_>>(),
    }))
}
