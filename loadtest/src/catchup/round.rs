//! One mode on a fresh cluster: kill, write, restart, watch the catch-up.

use super::*;

#[derive(Debug, Serialize)]
pub(super) struct Timeline {
    pub(super) kill_s: f64,
    pub(super) bulk_done_s: f64,
    pub(super) restart_s: f64,
    pub(super) listening_s: f64,
    pub(super) caught_up_s: Option<f64>,
}

/// A mode's figures.
#[derive(Debug, Serialize)]
pub(super) struct ModeResult {
    pub(super) mode: Mode,
    pub(super) broker_args: Vec<String>,
    pub(super) leader: u64,
    pub(super) follower: u64,
    pub(super) shard: u32,
    pub(super) behind_bytes: u64,
    pub(super) prefill_bytes: u64,
    /// Snapshot bytes sent per byte the follower missed.
    pub(super) snapshot_sent_per_behind: f64,
    pub(super) bulk_write_s: f64,
    pub(super) bulk_failed: u64,
    /// The partition's size on the leader when the follower restarted
    /// (telemetry, up to 1 s old).
    pub(super) leader_log_bytes: Option<u64>,
    /// Restart of the follower's process until it listened.
    pub(super) follower_start_s: f64,
    /// Restart of the follower's process until its match index reached the
    /// leader's commit index (None: not within --timeout-s).
    pub(super) rejoin_s: Option<f64>,
    /// Leaders' `snapshot_bytes_sent` over the catch-up (summed over the
    /// brokers that stayed up).
    pub(super) snapshot_bytes_sent: u64,
    pub(super) transfer: TransferSeen,
    pub(super) transfer_s: Option<f64>,
    /// Snapshot bytes sent / transfer window.
    pub(super) transfer_mb_per_s: Option<f64>,
    /// What the follower caught up on / rejoin time: snapshot bytes sent,
    /// else (replay) the leader's log size.
    pub(super) catch_up_mb_per_s: Option<f64>,
    /// The returning follower's counters since its restart, and the other
    /// brokers' deltas over the catch-up.
    pub(super) follower_counters: BTreeMap<String, u64>,
    pub(super) leader_counter_deltas: BTreeMap<String, u64>,
    pub(super) leader_changes_seen: u32,
    /// Seconds since the mode's start: kill, bulk write done, restart,
    /// caught up.
    pub(super) timeline: Timeline,
    pub(super) probes: Vec<Value>,
    pub(super) ok: bool,
    pub(super) notes: Vec<String>,
}

pub(super) fn run_mode(
    a: &CatchUpArgs,
    mode: Mode,
    drmq: &Path,
    base_dir: &Path,
) -> Result<ModeResult> {
    // The probes write to partitions led by the catch-up partition's
    // leader, on its shard: leader rebalancing would move some of them to
    // the returning follower once it has caught up on them, mid-measurement.
    let mut broker_args = vec!["--leader-balance-interval-ms".to_owned(), "0".to_owned()];
    if let Some(r) = a.snapshot_rate_mb {
        broker_args.extend(["--snapshot-rate-mb".to_owned(), r.to_string()]);
    }
    match (mode, a.catch_up_mib) {
        (Mode::Replay, _) => broker_args.extend(["--snapshot-catch-up-mib".into(), "0".into()]),
        (Mode::Snapshot, Some(m)) => {
            broker_args.extend(["--snapshot-catch-up-mib".to_owned(), m.to_string()])
        }
        (Mode::Snapshot, None) => {}
    }
    let dir = base_dir.join(format!(
        "drmq-catchup-{}-{}-{}",
        std::process::id(),
        random_secret(),
        mode.name()
    ));
    let mut opts = LaunchOptions::new(drmq.to_owned(), dir, 3, a.shards);
    opts.remove_data_dir = true;
    opts.secret = Some(format!("catchup-{}", random_secret()));
    opts.extra_args = broker_args.clone();
    opts.parent_death_signal = true;
    if let Some(p) = &a.broker_log {
        opts.log = BrokerLog::Append(p.clone());
    }
    // Dropped last (after the probes): kills the brokers, removes the data.
    let mut cluster = LocalCluster::start(opts).context("starting the brokers")?;
    say(
        a.quiet,
        format!(
            "{}: 3 brokers up (pids {:?}), args {broker_args:?}, data in {}",
            mode.name(),
            (0..3).filter_map(|i| cluster.pid(i)).collect::<Vec<_>>(),
            cluster.data_dir.display()
        ),
    );
    let brokers = cluster.listens.clone();
    let https = cluster.https.clone();
    let topic = format!("catchup-{}", mode.name());
    let probe_topic = format!("catchup-{}-probe", mode.name());
    let segment = a.segment_mib << 20;
    create_topic(&brokers, &topic, 1, segment)?;
    // Probe partitions: small segments (they are preallocated).
    create_topic(
        &brokers,
        &probe_topic,
        a.probe_partitions,
        PROBE_SEGMENT_BYTES,
    )?;
    if !cluster.wait_caught_up(SETTLE_TIMEOUT) {
        bail!("the topics' replicas did not settle within {SETTLE_TIMEOUT:?}");
    }
    let admin = Admin::new(brokers.clone(), ADMIN_TIMEOUT);
    let d = admin.describe_topic(&topic)?;
    let part = d.topic.partitions.first().context("no partition 0")?;
    let (leader, shard) = (
        part.leader.context("partition 0 has no leader")?,
        part.shard,
    );
    let follower = *part
        .replicas
        .iter()
        .find(|&&b| b != leader)
        .context("no follower")?;
    let other = *part
        .replicas
        .iter()
        .find(|&&b| b != leader && b != follower)
        .context("RF=3 has a second follower")?;
    let probe_desc = admin.describe_topic(&probe_topic)?;
    let same_shard: Vec<_> = probe_desc
        .topic
        .partitions
        .iter()
        .filter(|p| p.shard == shard)
        .collect();
    let mut notes = Vec::new();
    let mut probe_parts: Vec<u32> = same_shard
        .iter()
        .filter(|p| p.leader == Some(leader))
        .map(|p| p.partition)
        .collect();
    if probe_parts.is_empty() {
        notes.push(format!(
            "no partition of {probe_topic} on shard {shard} is led by broker {leader}: the shard probe writes to shard {shard} of other leaders"
        ));
        probe_parts = same_shard.iter().map(|p| p.partition).collect();
    }
    say(
        a.quiet,
        format!(
            "{topic}-0: leader {leader}, shard {shard}, follower to kill {follower}; {probe_topic} partitions {probe_parts:?} on the same shard{}",
            if notes.is_empty() { " and leader" } else { "" }
        ),
    );

    if a.prefill_mib > 0 {
        let t = Instant::now();
        let failed = bulk_write(
            &brokers,
            &topic,
            a.prefill_mib * 1024,
            Duration::from_secs_f64(a.timeout_s),
        )?;
        if failed > 0 {
            notes.push(format!("{failed} messages of the prefill failed"));
        }
        say(
            a.quiet,
            format!(
                "prefilled {} MiB in {:.1} s; waiting for every replica to hold it",
                a.prefill_mib,
                t.elapsed().as_secs_f64()
            ),
        );
        if !cluster.wait_caught_up(SETTLE_TIMEOUT) {
            bail!("the replicas did not catch up with the prefill within {SETTLE_TIMEOUT:?}");
        }
    }
    let t0 = Instant::now();
    let mut probes = Vec::new();
    if a.probe_rate > 0.0 {
        if !probe_parts.is_empty() {
            probes.push(Probe::start(
                "same-shard",
                &brokers,
                &probe_topic,
                probe_parts.clone(),
                a.probe_rate,
                t0,
            )?);
        } else {
            notes.push(format!("no partition of {probe_topic} on shard {shard}"));
        }
        probes.push(Probe::start(
            "catch-up-partition",
            &brokers,
            &topic,
            vec![0],
            a.probe_rate,
            t0,
        )?);
    }
    std::thread::sleep(PROBE_WARMUP);
    let before_from = us_since(t0, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(a.quiet_s));

    // The follower goes away; the leader writes --behind-mib.
    let fi = follower as usize - 1;
    let kill_us = us_since(t0, Instant::now());
    cluster.kill(fi);
    let live: Vec<SocketAddr> = (0..3).filter(|&i| i != fi).map(|i| brokers[i]).collect();
    say(
        a.quiet,
        format!(
            "killed broker {follower}; writing {} MiB to {topic}-0",
            a.behind_mib
        ),
    );
    let limit = Duration::from_secs_f64(a.timeout_s);
    let bulk_start = Instant::now();
    let bulk_failed = bulk_write(&live, &topic, a.behind_mib * 1024, limit)?;
    let bulk_write_s = bulk_start.elapsed().as_secs_f64();
    let bulk_done_us = us_since(t0, Instant::now());
    say(
        a.quiet,
        format!(
            "wrote {} MiB in {bulk_write_s:.1} s ({:.1} MB/s), {bulk_failed} failed; waiting for broker {other} to hold it all",
            a.behind_mib,
            mb(a.behind_mib << 20) / bulk_write_s
        ),
    );
    wait_for("the second follower catching up", SETTLE_TIMEOUT, || {
        let s = status(&live)?;
        let o = observe(&s, &topic, 0, other)?;
        o.caught_up().then_some(())
    })?;
    let leader_now = observe(
        &status(&live).context("cluster status")?,
        &topic,
        0,
        follower,
    )
    .map_or(leader, |o| o.leader);
    if leader_now != leader {
        notes.push(format!(
            "leadership of {topic}-0 moved from {leader} to {leader_now} while the follower was down"
        ));
    }
    // Telemetry samples are a second old at most.
    std::thread::sleep(Duration::from_millis(1100));
    let leader_log_bytes = partition_size(https[leader_now as usize - 1], &topic, 0);
    let live_https: Vec<(usize, SocketAddr)> =
        (0..3).filter(|&i| i != fi).map(|i| (i, https[i])).collect();
    let before_counters: Vec<_> = live_https.iter().map(|(_, h)| counters(*h)).collect();

    // Back: restart and poll until it has every committed entry.
    let restart_us = us_since(t0, Instant::now());
    let restart_at = Instant::now();
    cluster.restart(fi).context("restarting the follower")?;
    let follower_start_s = restart_at.elapsed().as_secs_f64();
    say(
        a.quiet,
        format!("broker {follower} restarted (listening after {follower_start_s:.2} s); waiting for it to catch up"),
    );
    let mut transfer = TransferSeen::default();
    let mut leaders_seen = vec![leader_now];
    let mut caught_up_us = None;
    let mut last: Option<Observation> = None;
    let mut last_print = Instant::now();
    let deadline = restart_at + limit;
    // Bounded by the deadline, one poll per POLL_INTERVAL.
    while Instant::now() < deadline {
        let polled = Instant::now();
        let o = status(&brokers).and_then(|s| observe(&s, &topic, 0, follower));
        let at = us_since(t0, Instant::now());
        if let Some(o) = &o {
            transfer.add(at, o.snapshot);
            if !leaders_seen.contains(&o.leader) {
                leaders_seen.push(o.leader);
            }
            if o.caught_up() {
                caught_up_us = Some(at);
                last = Some(o.clone());
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(2) {
                last_print = Instant::now();
                say(
                    a.quiet,
                    format!(
                        "  match {} / commit {} (lag {}){}",
                        o.match_index,
                        o.commit_index,
                        o.lag,
                        o.snapshot.map_or(String::new(), |(s, t, r)| format!(
                            ", snapshot {:.0}/{:.0} MB at {:.1} MB/s",
                            mb(s),
                            mb(t),
                            mb(r)
                        ))
                    ),
                );
            }
            last = Some(o.clone());
        }
        std::thread::sleep(POLL_INTERVAL.saturating_sub(polled.elapsed()));
    }
    let rejoin_s = caught_up_us.map(|c| (c - restart_us) as f64 / 1e6);
    match rejoin_s {
        Some(s) => say(a.quiet, format!("broker {follower} caught up in {s:.2} s")),
        None => {
            notes.push(format!(
                "broker {follower} did not catch up within {:.0} s; last seen {last:?}",
                a.timeout_s
            ));
            say(a.quiet, notes.last().expect("just pushed"));
        }
    }
    std::thread::sleep(Duration::from_millis(1100));
    let after_counters: Vec<_> = live_https.iter().map(|(_, h)| counters(*h)).collect();
    let follower_counters = counters(https[fi]).unwrap_or_default();
    let mut leader_counter_deltas = BTreeMap::new();
    for (b, a2) in before_counters.iter().zip(&after_counters) {
        if let (Some(b), Some(a2)) = (b, a2) {
            for (k, v) in a2 {
                *leader_counter_deltas.entry(k.clone()).or_insert(0) +=
                    v.saturating_sub(b.get(k).copied().unwrap_or(0));
            }
        }
    }
    let snapshot_bytes_sent = leader_counter_deltas
        .get("snapshot_bytes_sent")
        .copied()
        .unwrap_or(0);

    // The window after, all three up again.
    let after_from = us_since(t0, Instant::now()) + 1_000_000;
    std::thread::sleep(Duration::from_secs_f64(a.quiet_s + 1.0));
    let after_to = us_since(t0, Instant::now());
    let outs: Vec<(&'static str, ProbeOut)> =
        probes.into_iter().map(|p| (p.name, p.finish())).collect();

    let transfer_s = transfer
        .window_us()
        .map(|(f, e)| (e - f) as f64 / 1e6)
        .filter(|s| *s > 0.0);
    let transfer_mb_per_s = transfer_s
        .filter(|_| snapshot_bytes_sent > 0)
        .map(|s| mb(snapshot_bytes_sent) / s);
    let caught_up_bytes = if snapshot_bytes_sent > 0 {
        Some(snapshot_bytes_sent)
    } else {
        leader_log_bytes
    };
    let catch_up_mb_per_s = rejoin_s
        .zip(caught_up_bytes)
        .map(|(s, b)| mb(b) / s.max(1e-6));
    let mut windows: Vec<(&str, u64, u64)> = vec![
        ("before", before_from, kill_us),
        (
            "catch_up",
            restart_us,
            caught_up_us.unwrap_or_else(|| us_since(t0, deadline)),
        ),
    ];
    if let Some((f, e)) = transfer.window_us() {
        windows.push(("transfer", f, e));
    }
    windows.push(("after", after_from, after_to));
    let mut probes_json = Vec::new();
    for (name, out) in &outs {
        let mut w = serde_json::Map::new();
        for (wname, f, t) in &windows {
            w.insert(
                (*wname).to_owned(),
                serde_json::to_value(window_stats(&out.samples, &out.failures, *f, *t))?,
            );
        }
        let before_p99 = w["before"]["p99_us"].as_u64().unwrap_or(0);
        let p99_ratio = |k: &str| {
            w.get(k)
                .and_then(|v| v["p99_us"].as_u64())
                .and_then(|d| ratio(d, before_p99))
        };
        let (r_catch, r_transfer, r_after) = (
            p99_ratio("catch_up"),
            p99_ratio("transfer"),
            p99_ratio("after"),
        );
        if let Some(f) = &out.fatal {
            notes.push(format!("probe {name}: {f}"));
        }
        probes_json.push(json!({
            "probe": name,
            "topic": if *name == "same-shard" { &probe_topic } else { &topic },
            "partitions": if *name == "same-shard" { probe_parts.clone() } else { vec![0] },
            "rate": a.probe_rate,
            "sent": out.sent,
            "errors": out.errors,
            "not_recorded": out.not_recorded,
            "windows": w,
            "p99_ratio_catch_up_to_before": r_catch,
            "p99_ratio_transfer_to_before": r_transfer,
            "p99_ratio_after_to_before": r_after,
            "timeline": timeline(&out.samples),
        }));
    }
    let snapshot_expected = mode == Mode::Snapshot;
    let installs = follower_counters
        .get("snapshot_installs")
        .copied()
        .unwrap_or(0);
    if snapshot_expected && installs == 0 {
        notes.push("snapshot mode, but the follower installed no snapshot".into());
    }
    if !snapshot_expected && (installs > 0 || snapshot_bytes_sent > 0) {
        notes.push("replay mode, but a snapshot was sent".into());
    }
    let ok = rejoin_s.is_some()
        && bulk_failed == 0
        && (installs > 0) == snapshot_expected
        && outs.iter().all(|(_, o)| o.fatal.is_none());
    drop(cluster);
    Ok(ModeResult {
        mode,
        broker_args,
        leader: leader_now,
        follower,
        shard,
        behind_bytes: a.behind_mib << 20,
        prefill_bytes: a.prefill_mib << 20,
        snapshot_sent_per_behind: snapshot_bytes_sent as f64 / (a.behind_mib << 20) as f64,
        bulk_write_s,
        bulk_failed,
        leader_log_bytes,
        follower_start_s,
        rejoin_s,
        snapshot_bytes_sent,
        transfer,
        transfer_s,
        transfer_mb_per_s,
        catch_up_mb_per_s,
        follower_counters,
        leader_counter_deltas,
        leader_changes_seen: leaders_seen.len() as u32 - 1,
        timeline: Timeline {
            kill_s: kill_us as f64 / 1e6,
            bulk_done_s: bulk_done_us as f64 / 1e6,
            restart_s: restart_us as f64 / 1e6,
            listening_s: restart_us as f64 / 1e6 + follower_start_s,
            caught_up_s: caught_up_us.map(|c| c as f64 / 1e6),
        },
        probes: probes_json,
        ok,
        notes,
    })
}
