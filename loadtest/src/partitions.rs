//! `bench --compare-partitions A,B`: throughput as partitions grow. The
//! maximum-rate case (1 KiB, RF=3 on three brokers, acks=quorum, one
//! producer and one consumer as in the suite) on A partitions and on B, on
//! the same brokers in the same run, `--compare-rounds` times in ABBA order
//! (A, B; B, A; ...), each run on a fresh topic. Prints B's mean throughput
//! as a fraction of A's, with the spread of A's runs as the noise to read it
//! against. Issue 15's figure: 256 partitions at ≥ 0.9 of 16.

use anyhow::{bail, Result};
use serde_json::json;

use crate::{bench_case, bench_topic_with, brokers_for, write_json, Baselines, BenchArgs};

/// Segments of the compared topics: 256 partitions × 3 replicas each
/// preallocate an active segment, so 4 MiB keeps that at 3 GB (the suite's
/// 32 MiB would be 24 GB). Both counts use the same size, so both roll
/// equally often per byte.
const COMPARE_SEGMENT_BYTES: u64 = 4 << 20;
/// Brokers and replication of the comparison.
const NODES: u16 = 3;
const REPLICATION: u16 = 3;
/// Message size, as the suite's 1 KiB cases.
const MESSAGE_BYTES: usize = 1024;

pub fn compare_partitions(a: &BenchArgs, counts: &[u32]) -> Result<bool> {
    let &[small, large] = counts else {
        bail!("--compare-partitions takes two counts, e.g. 16,256");
    };
    if small == 0 || large == 0 || small == large {
        bail!("--compare-partitions takes two different counts above 0");
    }
    let mut b = a.broker.clone();
    b.spawn_broker = true;
    b.nodes = NODES;
    let (brokers, local, https) = brokers_for(None, &b)?;
    let none = Baselines {
        tcp: None,
        fsync: None,
    };
    let mut ok = true;
    let (mut runs_small, mut runs_large) = (Vec::new(), Vec::new());
    let mut rounds = Vec::new();
    for round in 0..a.compare_rounds {
        // ABBA: a drift over the rounds falls on both sides alike.
        let order = if round % 2 == 0 {
            [small, large]
        } else {
            [large, small]
        };
        let mut pair = serde_json::Map::new();
        for partitions in order {
            let topic = format!("bench-rf3-1024b-{partitions}p-compare-{round}");
            bench_topic_with(
                &brokers,
                &https,
                &topic,
                partitions,
                REPLICATION,
                Some(COMPARE_SEGMENT_BYTES),
            )?;
            let c = bench_case(
                a,
                &brokers,
                &https,
                local.as_ref(),
                &none,
                &topic,
                MESSAGE_BYTES,
                None,
                None,
                0,
            )?;
            ok &= c.ok;
            if partitions == small {
                runs_small.push(c.msgs_per_s);
            } else {
                runs_large.push(c.msgs_per_s);
            }
            eprintln!(
                "drmq-loadtest: round {round}: {partitions} partitions {:.0} msgs/s (ack p50 {} µs, p99 {} µs)",
                c.msgs_per_s, c.ack_p50_us, c.ack_p99_us
            );
            pair.insert(partitions.to_string(), c.json);
        }
        rounds.push(serde_json::Value::Object(pair));
    }
    drop(local);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        (hi - lo) / mean(v).max(1e-9) * 100.0
    };
    let (m_small, m_large) = (mean(&runs_small), mean(&runs_large));
    let ratio = m_large / m_small.max(1e-9);
    println!();
    println!(
        "RF=3, 1 KiB, maximum rate: {small} partitions {m_small:.0} msgs/s {runs_small:.0?}, {large} partitions {m_large:.0} msgs/s {runs_large:.0?}; ratio {ratio:.3} (target ≥ 0.9; runs spread {:.1} % and {:.1} %)",
        spread(&runs_small),
        spread(&runs_large),
    );
    if let Some(path) = &a.json {
        write_json(
            path,
            &json!({ "compare_partitions": {
                "partitions": [small, large],
                "segment_bytes": COMPARE_SEGMENT_BYTES,
                "rounds": rounds,
                "msgs_per_s": { small.to_string(): runs_small, large.to_string(): runs_large },
                "msgs_per_s_mean": { small.to_string(): m_small, large.to_string(): m_large },
                "ratio": ratio,
                "spread_pct": { small.to_string(): spread(&runs_small), large.to_string(): spread(&runs_large) },
            }}),
        )?;
    }
    Ok(ok)
}
