//! Leader rebalancing with real brokers: three brokers, six RF=3
//! partitions, a producer running throughout. Broker 3 is killed (kill -9):
//! the other two lead everything; it comes back: once it has caught up,
//! each broker leads two again, and every acknowledged message is there
//! exactly once.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CliProducer, Cluster};
use serde_json::Value;

const TOPIC: &str = "spread";
const PARTITIONS: usize = 6;
/// Rounds every second here (3 s by default): the waits stay short.
const INTERVAL_MS: &str = "1000";
/// Generous bounds on the waits (polled): elections take 1-2 s, a round
/// plus the settle time 2-3 s, a restart a few seconds on a loaded machine.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// Leader of each partition of `TOPIC` as the leaders report them (merged
/// `cluster status`); `None` for a partition nobody reports leading.
fn leaders(c: &Cluster) -> Vec<Option<u64>> {
    let o = c.cli(&["cluster", "status", "--json"], None);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let mut out = vec![None; PARTITIONS];
    for p in s["partitions"].as_array().into_iter().flatten() {
        if p["topic"] == TOPIC {
            if let (Some(i), Some(l)) = (p["partition"].as_u64(), p["leader"].as_u64()) {
                out[i as usize] = Some(l);
            }
        }
    }
    out
}

/// Partitions led by each broker (1-based ids, index 0 unused).
fn per_broker(leaders: &[Option<u64>]) -> [usize; 4] {
    let mut n = [0; 4];
    for l in leaders.iter().flatten() {
        n[*l as usize] += 1;
    }
    n
}

/// Polls (bounded by [`WAIT_MAX`]) until `done` holds for three polls in a
/// row (a moment mid-transfer can show two leaders); returns how long it
/// took.
fn wait_for(c: &Cluster, what: &str, done: impl Fn(&[Option<u64>]) -> bool) -> Duration {
    let started = Instant::now();
    let mut in_a_row = 0;
    loop {
        let l = leaders(c);
        in_a_row = if done(&l) { in_a_row + 1 } else { 0 };
        if in_a_row == 3 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "{what} not reached within {WAIT_MAX:?}: leaders {l:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn after_a_broker_is_killed_and_restarted_leaders_are_spread_again_and_no_acknowledged_message_is_lost(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_with(
        dir.path(),
        3,
        &["--leader-balance-interval-ms", INTERVAL_MS],
    );
    c.create_topic(TOPIC, PARTITIONS as u32, 3, &["--segment-bytes", "1048576"]);
    wait_for(&c, "two leaders per broker at the start", |l| {
        per_broker(l)[1..] == [2, 2, 2]
    });

    // A producer throughout: 20 lines every 50 ms until told to stop.
    let (producer, mut stdin) = CliProducer::start(&c.brokers(), TOPIC, "30000");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    writeln!(stdin, "v-{sent}").unwrap();
                    sent += 1;
                }
                stdin.flush().unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    c.kill(2);
    let took = wait_for(&c, "brokers 1 and 2 leading everything", |l| {
        l.iter().all(|b| matches!(b, Some(1 | 2)))
    });
    eprintln!("brokers 1 and 2 lead everything {took:?} after the kill");
    std::thread::sleep(Duration::from_secs(2));

    c.restart(2);
    let took = wait_for(&c, "two leaders per broker after the restart", |l| {
        per_broker(l)[1..] == [2, 2, 2]
    });
    eprintln!("balanced {took:?} after the restart");
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap();
    let (acks, err) = producer.finish();
    assert_eq!(acks.len(), sent, "every line acknowledged: {err}");

    let seen: BTreeMap<String, usize> = c.consume_counts(TOPIC, 3000);
    for a in &acks {
        let line = a["line"].as_u64().unwrap();
        let v = format!("v-{}", line - 1);
        assert_eq!(
            seen.get(&v),
            Some(&1),
            "acknowledged {v} must be there once"
        );
    }
    assert_eq!(seen.len(), sent, "nothing but the lines sent");
}
