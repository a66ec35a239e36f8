//! Figures for docs/BENCHMARKS.md:
//! - entries committed per CPU-second by a simulated 3-node group (the state
//!   machine alone: no I/O, a perfect in-memory network, MemStorage), with a
//!   1-node group measured in the same run as the baseline;
//! - deterministic simulation seeds per minute (one core).
//!
//! Run: `cargo bench -p raft --bench raft` (optionally `-- <entries> <seeds>`).
//! CPU time is the thread's own (`/proc/thread-self/schedstat`), so other load on
//! the machine does not count; elsewhere it falls back to wall time.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::collections::VecDeque;
use std::time::Instant;

use raft::{
    Config, EntryPayload, MemStorage, Membership, Message, Raft, Role, SnapshotMeta, Storage,
};

/// Payload per entry: a small record batch.
const PAYLOAD_BYTES: usize = 128;
/// Proposals per round before the group is driven to quiescence; models a
/// driver that proposes what arrived since its last Ready.
const PROPOSALS_PER_ROUND: usize = 64;
/// Compact every node's log after this many entries, bounding memory.
const COMPACT_EVERY_ENTRIES: u64 = 8192;

/// CPU time of this thread in seconds (wall time where unavailable).
struct CpuClock {
    wall: Instant,
    cpu_ns: Option<u64>,
}

fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

impl CpuClock {
    fn start() -> Self {
        CpuClock {
            wall: Instant::now(),
            cpu_ns: thread_cpu_ns(),
        }
    }
    fn seconds(&self) -> f64 {
        match (self.cpu_ns, thread_cpu_ns()) {
            (Some(start), Some(now)) => (now - start) as f64 / 1e9,
            _ => self.wall.elapsed().as_secs_f64(),
        }
    }
}

struct Group {
    nodes: Vec<Raft<MemStorage>>,
    applied: Vec<u64>,
    queue: VecDeque<Message>,
    committed_data: u64,
}

impl Group {
    fn new(voters: u64) -> Group {
        let membership = Membership::with_voters(1..=voters);
        let nodes = (1..=voters)
            .map(|id| {
                let mut c = Config::new(id, 1);
                c.seed = 1;
                Raft::new(c, MemStorage::new(membership.clone())).unwrap()
            })
            .collect();
        Group {
            nodes,
            applied: vec![0; voters as usize],
            queue: VecDeque::new(),
            committed_data: 0,
        }
    }

    fn drive(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let raft = &mut self.nodes[i];
                while raft.has_ready() {
                    moved = true;
                    let ready = raft.ready().unwrap();
                    if let Some(hs) = ready.hard_state {
                        raft.storage_mut().set_hard_state(hs);
                    }
                    raft.storage_mut().append(&ready.entries);
                    self.queue.extend(ready.messages);
                    if let Some(last) = ready.committed_entries.last() {
                        self.applied[i] = last.index;
                    }
                    if i == 0 {
                        self.committed_data += ready
                            .committed_entries
                            .iter()
                            .filter(|e| matches!(e.payload, EntryPayload::Data(_)))
                            .count() as u64;
                    }
                    raft.advance().unwrap();
                }
            }
            while let Some(m) = self.queue.pop_front() {
                moved = true;
                let to = (m.to - 1) as usize;
                self.nodes[to].step(m).unwrap();
            }
            if !moved {
                return;
            }
        }
    }

    fn compact(&mut self) {
        for (i, raft) in self.nodes.iter_mut().enumerate() {
            let index = self.applied[i];
            if index < raft.storage().first_index() {
                continue;
            }
            let term = raft.storage().term(index).unwrap();
            let membership = raft.membership().clone();
            let meta = SnapshotMeta {
                index,
                term,
                membership,
                size_bytes: 0,
            };
            raft.storage_mut().compact(meta, Vec::new());
        }
    }
}

/// Entries committed per CPU-second by a group of `voters` nodes.
fn commit_throughput(voters: u64, entries: u64) -> f64 {
    let mut group = Group::new(voters);
    group.nodes[0].campaign();
    group.drive();
    assert_eq!(group.nodes[0].role(), Role::Leader);
    let payload = vec![0xAB_u8; PAYLOAD_BYTES];
    let clock = CpuClock::start();
    let mut since_compact = 0;
    while group.committed_data < entries {
        for _ in 0..PROPOSALS_PER_ROUND {
            group.nodes[0].propose(payload.clone()).unwrap();
        }
        group.drive();
        since_compact += PROPOSALS_PER_ROUND as u64;
        if since_compact >= COMPACT_EVERY_ENTRIES {
            since_compact = 0;
            group.compact();
        }
    }
    group.committed_data as f64 / clock.seconds()
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let entries = args.first().copied().unwrap_or(1_000_000);
    let seeds = args.get(1).copied().unwrap_or(500);

    println!("raft benchmark: {entries} entries of {PAYLOAD_BYTES} B, {PROPOSALS_PER_ROUND} proposals per round");
    let single = commit_throughput(1, entries);
    println!("  1-node group (baseline): {single:>12.0} entries committed per CPU-second");
    let three = commit_throughput(3, entries);
    println!("  3-node group:            {three:>12.0} entries committed per CPU-second");
    println!("  ratio 3-node / 1-node:   {:>12.3}", three / single);

    let clock = CpuClock::start();
    let mut stats = sim::Stats::default();
    for seed in 0..seeds {
        stats.add(&sim::run_seed(0xBE4C_0000 + seed, false));
    }
    assert_eq!(stats.seeds, seeds);
    let per_minute = seeds as f64 / clock.seconds() * 60.0;
    println!(
        "  simulation: {seeds} seeds ({} fault ticks + liveness each), {per_minute:.0} seeds per CPU-minute (one core)",
        sim::FAULT_TICKS
    );
    println!("  simulation exercised: {stats:?}");
}
