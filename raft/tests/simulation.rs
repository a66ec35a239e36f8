//! The deterministic simulation (see `sim/mod.rs` for what it injects and
//! checks). `DRMQ_SIM_SEEDS=N` runs N seeds (from `DRMQ_SIM_SEED_BASE`),
//! `DRMQ_SIM_SEED=S` replays one, `DRMQ_SIM_TRACE=1` prints its events.

mod sim;

use std::panic::{catch_unwind, AssertUnwindSafe};

use sim::run_seed;

/// Seeds per `cargo test` run: sized so the whole raft suite stays well under
/// 90 s in the debug profile on a 2-core machine (~15 ms per seed per core).
const SEEDS_DEFAULT: u64 = 2000;
const SEED_BASE_DEFAULT: u64 = 0x5EED_0000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).expect("hex seed"),
            None => v
                .parse()
                .unwrap_or_else(|_| panic!("{name} must be a number")),
        }
    })
}

fn run_checked(seed: u64, trace: bool) -> Result<sim::Stats, String> {
    catch_unwind(AssertUnwindSafe(|| run_seed(seed, trace))).map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!(
            "seed {seed} failed: {what}\nreplay: DRMQ_SIM_SEED={seed} cargo test -p raft --release --test simulation -- --nocapture"
        )
    })
}

#[test]
fn simulation_keeps_raft_safe_and_live_under_faults() {
    if let Some(seed) = env_u64("DRMQ_SIM_SEED") {
        let trace = std::env::var("DRMQ_SIM_TRACE").is_ok();
        println!("simulation: replaying seed {seed}");
        match run_checked(seed, trace) {
            Ok(stats) => println!("simulation: seed {seed} passed: {stats:?}"),
            Err(report) => panic!("{report}"),
        }
        return;
    }
    let count = env_u64("DRMQ_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let base = env_u64("DRMQ_SIM_SEED_BASE").unwrap_or(SEED_BASE_DEFAULT);
    println!("simulation: {count} seeds from {base} (DRMQ_SIM_SEED_BASE={base})");
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8) as u64;
    let results: Vec<(sim::Stats, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut stats = sim::Stats::default();
                    let mut failures = Vec::new();
                    let mut seed = base + t;
                    while seed < base + count {
                        match run_checked(seed, false) {
                            Ok(s) => stats.add(&s),
                            Err(report) => {
                                eprintln!("{report}");
                                failures.push(report);
                            }
                        }
                        seed += threads;
                    }
                    (stats, failures)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut stats = sim::Stats::default();
    let mut failures = Vec::new();
    for (s, f) in results {
        stats.add(&s);
        failures.extend(f);
    }
    println!("simulation: {stats:?}");
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if count >= 100 {
        // The faults must really happen, or a passing run proves nothing.
        assert!(stats.crashes > count && stats.torn_readies > 0, "{stats:?}");
        assert!(
            stats.partitions > count && stats.transfers_started > 0,
            "{stats:?}"
        );
        assert!(stats.snapshots_installed > count / 10, "{stats:?}");
        assert!(stats.membership_changes_applied > count / 10, "{stats:?}");
        assert!(stats.leaders_elected > count, "{stats:?}");
        // Leaders send appends before their own fsync, and some crash
        // before it: acknowledged entries must survive that too.
        assert!(
            stats.sent_before_persisting > count && stats.crashes_after_early_send > 0,
            "{stats:?}"
        );
        // Heartbeats and their answers take the send-only path.
        assert!(stats.send_only_readies > count, "{stats:?}");
    }
}
