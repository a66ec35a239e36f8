//! Deterministic simulation (after TigerBeetle's VOPR): a seeded cluster of 3
//! or 5 voters (plus 2 spare nodes for membership changes) on a simulated
//! network that loses, duplicates, delays and reorders messages, with
//! partitions (symmetric and asymmetric), crashes that lose everything not yet
//! durable, restarts, snapshots with log compaction, membership changes and
//! leadership transfers, and clocks that miss ticks. After every step the invariants below are checked;
//! after the faults heal, a leader must be elected and commit within
//! `LIVENESS_TICKS_MAX` ticks.
//!
//! Invariants (Raft paper, Figure 3):
//! - Election Safety: at most one leader per term.
//! - Log Matching: two durable logs with an entry of the same index and term
//!   agree on it and on the term of the entry before it (so, by induction, on
//!   the whole prefix).
//! - Leader Completeness: a new leader's log holds every entry any node has
//!   seen committed.
//! - State Machine Safety: a committed entry never changes (every node's
//!   committed entries agree with one history), and every node's applied
//!   sequence is a prefix of one history.
//!
//! Shared by `tests/simulation.rs` (the seeds) and `benches/raft.rs` (seeds
//! per minute).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use raft::{
    coalesce, ConfChange, Config, Entry, EntryPayload, MemStorage, Membership, Message, NodeId,
    Raft, Ready, Rng, Role, SnapshotMeta, Storage,
};

/// Ticks of faults per seed: ~30 election timeouts, room for several leader
/// changes, crashes and partitions.
pub const FAULT_TICKS: u64 = 300;
/// Liveness bound: once every fault has healed (all nodes up, all links up, no
/// loss), a leader must be elected and commit a new entry on every member
/// within this many ticks. 20 election timeouts (10 ticks each): the worst
/// case needs a node's lease to expire (1 timeout), a few split pre-votes
/// (randomized timeouts, ~2 timeouts each) and catching up a node by snapshot.
pub const LIVENESS_TICKS_MAX: u64 = 200;
/// Spare nodes that start outside the group (for AddLearner / Promote).
const SPARE_NODES: u64 = 2;
const ELECTION_TIMEOUT_TICKS: u32 = 10;

fn data_id(entry: &Entry) -> Option<u64> {
    match &entry.payload {
        EntryPayload::Data(data) => Some(u64::from_le_bytes(data[..8].try_into().unwrap())),
        _ => None,
    }
}

/// A digest of an entry's payload for comparisons.
fn digest(entry: &Entry) -> u64 {
    match &entry.payload {
        EntryPayload::Empty => 0,
        EntryPayload::Data(_) => data_id(entry).unwrap() + 1,
        EntryPayload::Membership(m) => {
            let mut h = 0xABCD_u64;
            for id in m.voters.iter() {
                h = h.wrapping_mul(31).wrapping_add(*id);
            }
            for id in m.learners.iter() {
                h = h.wrapping_mul(37).wrapping_add(*id + 1000);
            }
            h | (1 << 63)
        }
    }
}

fn encode_state(state: &[u64]) -> Vec<u8> {
    state.iter().flat_map(|id| id.to_le_bytes()).collect()
}

fn decode_state(data: &[u8]) -> Vec<u64> {
    data.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Node {
    raft: Option<Raft<MemStorage>>,
    /// Holds the durable storage while crashed.
    crashed: Option<MemStorage>,
    /// A Ready taken but not yet durable: lost on a crash.
    pending: Option<Ready>,
    /// The volatile state machine: applied data ids, and the membership and
    /// index it is at.
    state: Vec<u64>,
    state_index: u64,
    state_membership: Membership,
    staging: Vec<u8>,
    checked_commit: u64,
    was_leader: bool,
}

struct InFlight {
    deliver_at: u64,
    messages: Vec<Message>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    trace: bool,
    now: u64,
    nodes: BTreeMap<NodeId, Node>,
    net: Vec<InFlight>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    loss_per_mille: u64,
    dup_per_mille: u64,
    delay_max: u64,
    persist_per_mille: u64,
    next_data_id: u64,
    // Invariant state.
    leaders_by_term: HashMap<u64, NodeId>,
    committed: HashMap<u64, (u64, u64)>,
    committed_max: u64,
    log_pairs: HashMap<(u64, u64), (u64, u64)>,
    history: Vec<u64>,
    stats: Stats,
}

/// What a run exercised (to show the faults actually happen).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub seeds: u64,
    /// Readies that only sent, taken the broker's way: sent and advanced
    /// at once, with nothing written.
    pub send_only_readies: u64,
    pub leaders_elected: u64,
    pub entries_committed: u64,
    pub crashes: u64,
    pub torn_readies: u64,
    pub partitions: u64,
    pub snapshots_installed: u64,
    pub membership_changes_applied: u64,
    pub transfers_started: u64,
    /// Messages a leader sent before its Ready was durable.
    pub sent_before_persisting: u64,
    /// Crashes of a leader whose Ready had sent its messages but was not
    /// durable (its followers may hold entries it lost).
    pub crashes_after_early_send: u64,
    /// The slowest recovery after healing, in ticks (bound: LIVENESS_TICKS_MAX).
    pub liveness_ticks_max: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.seeds += other.seeds;
        self.send_only_readies += other.send_only_readies;
        self.leaders_elected += other.leaders_elected;
        self.entries_committed += other.entries_committed;
        self.crashes += other.crashes;
        self.torn_readies += other.torn_readies;
        self.partitions += other.partitions;
        self.snapshots_installed += other.snapshots_installed;
        self.membership_changes_applied += other.membership_changes_applied;
        self.transfers_started += other.transfers_started;
        self.sent_before_persisting += other.sent_before_persisting;
        self.crashes_after_early_send += other.crashes_after_early_send;
        self.liveness_ticks_max = self.liveness_ticks_max.max(other.liveness_ticks_max);
    }
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let voters_initial = if rng.chance(1, 2) { 3 } else { 5 };
        let membership = Membership::with_voters(1..=voters_initial);
        let mut sim = Sim {
            seed,
            loss_per_mille: rng.below(150),
            dup_per_mille: rng.below(100),
            delay_max: rng.below(5),
            persist_per_mille: 400 + rng.below(601),
            rng,
            trace,
            now: 0,
            nodes: BTreeMap::new(),
            net: Vec::new(),
            blocked: BTreeSet::new(),
            next_data_id: 1,
            leaders_by_term: HashMap::new(),
            committed: HashMap::new(),
            committed_max: 0,
            log_pairs: HashMap::new(),
            history: Vec::new(),
            stats: Stats {
                seeds: 1,
                ..Stats::default()
            },
        };
        for id in 1..=voters_initial + SPARE_NODES {
            let m = if id <= voters_initial {
                membership.clone()
            } else {
                Membership::default()
            };
            let node = Node {
                raft: None,
                crashed: Some(MemStorage::new(m)),
                pending: None,
                state: Vec::new(),
                state_index: 0,
                state_membership: Membership::default(),
                staging: Vec::new(),
                checked_commit: 0,
                was_leader: false,
            };
            sim.nodes.insert(id, node);
            sim.restart(id);
        }
        sim.log(format!(
            "voters {voters_initial}, loss {}‰, dup {}‰, delay ≤{}, persist {}‰",
            sim.loss_per_mille, sim.dup_per_mille, sim.delay_max, sim.persist_per_mille
        ));
        sim
    }

    fn log(&self, line: String) {
        if self.trace {
            println!("[t={}] {line}", self.now);
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {} tick {}: invariant violated: {what}",
            self.seed, self.now
        );
    }

    fn config(&self, id: NodeId) -> Config {
        let mut c = Config::new(id, 7);
        c.seed = self.seed;
        c.election_timeout_ticks = ELECTION_TIMEOUT_TICKS;
        c.heartbeat_interval_ticks = 2;
        // Small limits so that windows, byte budgets and chunking are exercised.
        c.inflight_msgs_max = 4;
        c.inflight_bytes_max = 256;
        c.msg_bytes_max = 128;
        c.uncommitted_bytes_max = 4096;
        c.snapshot_chunk_bytes = 48;
        c.committed_bytes_per_ready_max = 256;
        c
    }

    fn restart(&mut self, id: NodeId) {
        let cfg = self.config(id);
        let node = self.nodes.get_mut(&id).unwrap();
        let storage = node.crashed.take().expect("restart of a running node");
        let meta = storage.snapshot_meta();
        node.state = decode_state(storage.snapshot_data());
        node.state_index = meta.index;
        node.state_membership = meta.membership.clone();
        node.staging.clear();
        node.pending = None;
        node.was_leader = false;
        let mut cfg = cfg;
        cfg.applied_index = meta.index;
        let raft = Raft::new(cfg, storage).expect("restart from durable state");
        node.checked_commit = raft.first_index() - 1;
        node.raft = Some(raft);
        self.log(format!("restart {id}"));
    }

    /// Loses everything not durable. A pending Ready may be torn: its entries
    /// reached the disk (they are written first) but its hard state did not,
    /// and none of its messages were sent.
    fn crash(&mut self, id: NodeId) {
        let torn = self.rng.chance(1, 2);
        let node = self.nodes.get_mut(&id).unwrap();
        let raft = node.raft.take().expect("crash of a crashed node");
        let mut storage = raft.into_storage();
        let mut pairs = Vec::new();
        if let Some(ready) = node.pending.take() {
            if ready.send_before_persisting && !ready.entries.is_empty() {
                self.stats.crashes_after_early_send += 1;
            }
            if torn && ready.snapshot.is_none() && !ready.entries.is_empty() {
                let first = ready.entries[0].index;
                let mut prev_term = storage.term(first - 1).expect("prev term");
                for e in &ready.entries {
                    pairs.push(((e.index, e.term), (digest(e), prev_term)));
                    prev_term = e.term;
                }
                storage.append(&ready.entries);
            }
        }
        node.crashed = Some(storage);
        self.stats.crashes += 1;
        self.stats.torn_readies += u64::from(!pairs.is_empty());
        self.log(format!("crash {id} (torn Ready: {})", !pairs.is_empty()));
        for (key, value) in pairs {
            self.check_log_pair(id, key, value);
        }
    }

    fn check_log_pair(&mut self, id: NodeId, key: (u64, u64), value: (u64, u64)) {
        match self.log_pairs.insert(key, value) {
            Some(old) if old != value => self.fail(format!(
                "log matching: node {id} entry {key:?} is {value:?}, another log has {old:?}"
            )),
            _ => {}
        }
    }

    fn alive(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn leader(&self) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for (&id, node) in &self.nodes {
            if let Some(r) = &node.raft {
                if r.role() == Role::Leader && best.is_none_or(|(t, _)| r.term() > t) {
                    best = Some((r.term(), id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    fn send(&mut self, messages: Vec<Message>) {
        let mut messages = messages;
        let batches = coalesce(&mut messages);
        let mut units: Vec<Vec<Message>> = messages.into_iter().map(|m| vec![m]).collect();
        units.extend(batches.into_iter().map(|b| b.into_messages().collect()));
        for unit in units {
            let (from, to) = (unit[0].from, unit[0].to);
            if self.blocked.contains(&(from, to)) || self.rng.chance(self.loss_per_mille, 1000) {
                continue;
            }
            if self.rng.chance(self.dup_per_mille, 1000) {
                let at = self.now + 1 + self.rng.below(self.delay_max + 1);
                self.net.push(InFlight {
                    deliver_at: at,
                    messages: unit.clone(),
                });
            }
            let at = self.now + 1 + self.rng.below(self.delay_max + 1);
            self.net.push(InFlight {
                deliver_at: at,
                messages: unit,
            });
        }
    }

    fn deliver(&mut self) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].deliver_at <= self.now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Reorder what arrives in the same tick.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for unit in due {
            for m in unit.messages {
                if self.blocked.contains(&(m.from, m.to)) {
                    continue;
                }
                let trace = self.trace;
                let now = self.now;
                let Some(raft) = self.nodes.get_mut(&m.to).and_then(|n| n.raft.as_mut()) else {
                    continue;
                };
                if trace {
                    println!(
                        "[t={now}]   {} -> {} t{} {:?}",
                        m.from, m.to, m.term, m.body
                    );
                }
                raft.step(m).expect("step");
            }
        }
    }

    /// What the broker does with a Ready that [`Raft::ready_sends_only`]
    /// calls send-only: sends its messages and advances at once, writing
    /// nothing (not even a moved commit index), and a crash right after
    /// keeps only what was durable before. Checks that the Ready asked for
    /// nothing else.
    fn handle_send_only_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        if node.pending.is_some() || !raft.ready_sends_only() {
            return;
        }
        let ready = raft.ready().expect("ready");
        let durable = raft.storage().hard_state();
        let more = !ready.entries.is_empty()
            || ready.snapshot.is_some()
            || !ready.snapshot_chunks.is_empty()
            || !ready.committed_entries.is_empty()
            || ready.soft_state.is_some()
            || ready
                .hard_state
                .is_some_and(|h| (h.term, h.vote) != (durable.term, durable.vote));
        if more {
            self.fail(format!(
                "node {id}: a send-only Ready asks for more than sending: {ready:?}"
            ));
        }
        raft.advance().expect("advance");
        self.stats.send_only_readies += 1;
        self.send(ready.messages);
    }

    /// Takes a Ready if none is pending; persists the pending one with the
    /// seed's probability (so crashes can catch Readies not yet durable).
    fn handle_ready(&mut self, id: NodeId, persist_always: bool) {
        let persist = persist_always || self.rng.chance(self.persist_per_mille, 1000);
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let mut early = Vec::new();
        if node.pending.is_none() && raft.has_ready() {
            let mut ready = raft.ready().expect("ready");
            // A leader's messages leave before its Ready is durable (and a
            // crash may then lose the Ready): what the broker does.
            if ready.send_before_persisting {
                early = std::mem::take(&mut ready.messages);
            }
            node.pending = Some(ready);
        }
        if !early.is_empty() {
            self.stats.sent_before_persisting += early.len() as u64;
            self.send(early);
        }
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        if !persist {
            return;
        }
        let Some(ready) = node.pending.take() else {
            return;
        };
        // 1. Snapshot chunks to staging, and an install.
        for chunk in &ready.snapshot_chunks {
            if chunk.offset == 0 {
                node.staging.clear();
            }
            assert_eq!(
                chunk.offset,
                node.staging.len() as u64,
                "chunk out of order"
            );
            node.staging.extend_from_slice(&chunk.data);
        }
        let mut installed = None;
        if let Some(meta) = &ready.snapshot {
            let data = std::mem::take(&mut node.staging);
            assert_eq!(data.len() as u64, meta.size_bytes, "staged snapshot size");
            raft.storage_mut()
                .install_snapshot(meta.clone(), data.clone());
            node.state = decode_state(&data);
            node.state_index = meta.index;
            node.state_membership = meta.membership.clone();
            installed = Some(node.state.clone());
            self.stats.snapshots_installed += 1;
        }
        // 2. Entries (checking Log Matching as they become durable).
        let mut pairs = Vec::new();
        if let Some(first) = ready.entries.first() {
            let mut prev_term = raft.storage().term(first.index - 1).expect("prev term");
            for e in &ready.entries {
                pairs.push(((e.index, e.term), (digest(e), prev_term)));
                prev_term = e.term;
            }
        }
        raft.storage_mut().append(&ready.entries);
        // 3. Hard state.
        if let Some(hs) = ready.hard_state {
            raft.storage_mut().set_hard_state(hs);
        }
        // 5. Apply committed entries.
        let mut applied = Vec::new();
        for e in &ready.committed_entries {
            assert_eq!(e.index, node.state_index + 1, "committed entries in order");
            node.state_index = e.index;
            match &e.payload {
                EntryPayload::Data(_) => {
                    let data = data_id(e).unwrap();
                    applied.push((node.state.len(), data));
                    node.state.push(data);
                }
                EntryPayload::Membership(m) => {
                    node.state_membership = m.clone();
                    if id == 1 {
                        self.stats.membership_changes_applied += 1;
                    }
                }
                EntryPayload::Empty => {}
            }
        }
        raft.advance().expect("advance");
        let committed: Vec<Entry> = ready.committed_entries;
        // 4. Send: after everything above is durable.
        self.send(ready.messages);
        for (key, value) in pairs {
            self.check_log_pair(id, key, value);
        }
        for e in &committed {
            self.check_committed(id, e);
        }
        if let Some(state) = installed {
            self.check_prefix(id, &state);
        }
        for (position, data) in applied {
            match self.history.get(position) {
                Some(&h) if h != data => self.fail(format!(
                    "node {id} applied {data} at position {position}, history has {h}"
                )),
                Some(_) => {}
                None => {
                    assert_eq!(position, self.history.len(), "applied sequence has a gap");
                    self.history.push(data);
                }
            }
        }
    }

    fn check_prefix(&mut self, id: NodeId, state: &[u64]) {
        let common = state.len().min(self.history.len());
        if state[..common] != self.history[..common] {
            self.fail(format!(
                "node {id} restored a snapshot that is not a prefix of history"
            ));
        }
        if state.len() > self.history.len() {
            self.history.extend_from_slice(&state[common..]);
        }
    }

    fn check_committed(&mut self, id: NodeId, e: &Entry) {
        let value = (e.term, digest(e));
        match self.committed.insert(e.index, value) {
            Some(old) if old != value => self.fail(format!(
                "committed entry {} changed: node {id} has {value:?}, was {old:?}",
                e.index
            )),
            _ => {}
        }
        self.committed_max = self.committed_max.max(e.index);
    }

    fn check_invariants(&mut self) {
        let ids: Vec<NodeId> = self.alive();
        for id in ids {
            let raft = self.nodes[&id].raft.as_ref().unwrap();
            let (term, role, commit) = (raft.term(), raft.role(), raft.commit_index());
            if role == Role::Leader {
                if let Some(&other) = self.leaders_by_term.get(&term) {
                    if other != id {
                        self.fail(format!("two leaders in term {term}: {other} and {id}"));
                    }
                }
                self.leaders_by_term.insert(term, id);
            }
            // Newly committed entries must agree with every other node's.
            let from = self.nodes[&id].checked_commit.max(raft.first_index() - 1);
            if commit > from {
                let entries = raft
                    .log_entries(from + 1, commit + 1)
                    .expect("committed entries");
                for e in &entries {
                    self.check_committed(id, e);
                }
                self.nodes.get_mut(&id).unwrap().checked_commit = commit;
            }
            let raft = self.nodes[&id].raft.as_ref().unwrap();
            let became_leader = role == Role::Leader && !self.nodes[&id].was_leader;
            if became_leader {
                self.stats.leaders_elected += 1;
                for index in raft.first_index()..=self.committed_max {
                    let Some(&(term, _)) = self.committed.get(&index) else {
                        continue;
                    };
                    if raft.log_term(index) != Some(term) {
                        self.fail(format!(
                            "leader completeness: new leader {id} lacks committed entry {index} (term {term})"
                        ));
                    }
                }
            }
            self.nodes.get_mut(&id).unwrap().was_leader = role == Role::Leader;
        }
    }

    fn step(&mut self, faults: bool) {
        self.now += 1;
        if faults {
            self.inject_faults();
        }
        for id in self.alive() {
            // A slow clock: under faults, a node now and then misses a tick.
            if faults && self.rng.chance(1, 10) {
                continue;
            }
            let raft = self.nodes.get_mut(&id).unwrap().raft.as_mut().unwrap();
            raft.tick().expect("tick");
        }
        self.deliver();
        for id in self.alive() {
            if self.rng.chance(1, 2) {
                self.handle_send_only_ready(id);
            }
            self.handle_ready(id, !faults);
        }
        self.check_invariants();
    }

    fn inject_faults(&mut self) {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let alive = self.alive();
        if self.rng.chance(1, 60) && alive.len() > 1 {
            let id = alive[self.rng.below(alive.len() as u64) as usize];
            self.crash(id);
        }
        let down: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|id| !alive.contains(id))
            .collect();
        if !down.is_empty() && self.rng.chance(1, 15) {
            let id = down[self.rng.below(down.len() as u64) as usize];
            self.restart(id);
        }
        if self.rng.chance(1, 50) {
            self.partition(&all);
        }
        if self.rng.chance(1, 40) {
            self.blocked.clear();
            self.log("heal partitions".into());
        }
        if let Some(leader) = self.leader() {
            if self.rng.chance(1, 3) {
                let data = self.next_data_id;
                let raft = self.nodes.get_mut(&leader).unwrap().raft.as_mut().unwrap();
                if raft.propose(data.to_le_bytes().to_vec()).is_ok() {
                    self.next_data_id += 1;
                }
            }
            if self.rng.chance(1, 40) {
                self.change_membership(leader);
            }
            if self.rng.chance(1, 80) {
                let raft = self.nodes[&leader].raft.as_ref().unwrap();
                let voters: Vec<NodeId> = raft.membership().voters.iter().copied().collect();
                let to = voters[self.rng.below(voters.len() as u64) as usize];
                let raft = self.nodes.get_mut(&leader).unwrap().raft.as_mut().unwrap();
                let result = raft.transfer_leader(to);
                self.stats.transfers_started += u64::from(result.is_ok());
                self.log(format!("transfer {leader} -> {to}: {result:?}"));
            }
        }
        for id in self.alive() {
            if self.rng.chance(1, 25) {
                self.compact(id);
            }
        }
    }

    fn partition(&mut self, all: &[NodeId]) {
        self.blocked.clear();
        self.stats.partitions += 1;
        match self.rng.below(3) {
            0 => {
                let id = all[self.rng.below(all.len() as u64) as usize];
                for &other in all {
                    self.blocked.insert((id, other));
                    self.blocked.insert((other, id));
                }
                self.log(format!("isolate {id}"));
            }
            1 => {
                let side: Vec<bool> = all.iter().map(|_| self.rng.chance(1, 2)).collect();
                for (i, &a) in all.iter().enumerate() {
                    for (j, &b) in all.iter().enumerate() {
                        if side[i] != side[j] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.log(format!("split {side:?}"));
            }
            _ => {
                // Asymmetric: some directed links only.
                for &a in all {
                    for &b in all {
                        if a != b && self.rng.chance(1, 4) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.log(format!("asymmetric {:?}", self.blocked));
            }
        }
    }

    fn change_membership(&mut self, leader: NodeId) {
        let raft = self.nodes[&leader].raft.as_ref().unwrap();
        let m = raft.membership().clone();
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let outsiders: Vec<NodeId> = all.iter().copied().filter(|id| !m.contains(*id)).collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let removable: Vec<NodeId> = m.voters.iter().copied().filter(|&v| v != leader).collect();
        let change = match self.rng.below(3) {
            0 if !outsiders.is_empty() => {
                ConfChange::AddLearner(outsiders[self.rng.below(outsiders.len() as u64) as usize])
            }
            1 if !learners.is_empty() => {
                ConfChange::PromoteLearner(learners[self.rng.below(learners.len() as u64) as usize])
            }
            2 if m.voters.len() > 2 || !learners.is_empty() => {
                let pool: Vec<NodeId> = if m.voters.len() > 2 {
                    removable.into_iter().chain(learners).collect()
                } else {
                    learners
                };
                ConfChange::RemoveNode(pool[self.rng.below(pool.len() as u64) as usize])
            }
            _ => return,
        };
        let raft = self.nodes.get_mut(&leader).unwrap().raft.as_mut().unwrap();
        let result = raft.propose_conf_change(change);
        self.log(format!("conf change {change:?} on {leader}: {result:?}"));
    }

    /// Snapshot the applied state and drop the log before it.
    fn compact(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        let raft = node.raft.as_mut().unwrap();
        if node.pending.is_some() || node.state_index < raft.storage().first_index() {
            return;
        }
        let index = node.state_index;
        let term = raft
            .storage()
            .term(index)
            .expect("applied entries are durable");
        let meta = SnapshotMeta {
            index,
            term,
            membership: node.state_membership.clone(),
            size_bytes: 0,
        };
        raft.storage_mut().compact(meta, encode_state(&node.state));
        self.log(format!("compact {id} at {index}"));
    }

    /// Heal everything and require a leader that commits a new entry on every
    /// member within the bound.
    fn check_liveness(&mut self) {
        self.blocked.clear();
        self.loss_per_mille = 0;
        self.dup_per_mille = 0;
        self.delay_max = 1;
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            if self.nodes[&id].raft.is_none() {
                self.restart(id);
            }
        }
        self.log("all faults healed".into());
        let marker = u64::MAX / 2 + self.seed % 1000;
        let mut proposed_at: Option<(NodeId, u64, u64)> = None;
        let start = self.now;
        while self.now - start < LIVENESS_TICKS_MAX {
            self.step(false);
            let Some(leader) = self.leader() else {
                continue;
            };
            let raft = self.nodes[&leader].raft.as_ref().unwrap();
            let term = raft.term();
            if proposed_at.is_none_or(|(l, t, _)| l != leader || t != term) {
                let raft = self.nodes.get_mut(&leader).unwrap().raft.as_mut().unwrap();
                if let Ok(index) = raft.propose(marker.to_le_bytes().to_vec()) {
                    proposed_at = Some((leader, term, index));
                }
            }
            let raft = self.nodes[&leader].raft.as_ref().unwrap();
            let members: Vec<NodeId> = raft.membership().members().collect();
            if members
                .iter()
                .all(|id| self.nodes[id].state.contains(&marker))
            {
                self.stats.liveness_ticks_max = self.now - start;
                self.log(format!(
                    "live: leader {leader} committed after {} ticks",
                    self.now - start
                ));
                return;
            }
        }
        self.fail(format!(
            "liveness: no leader committed on all members within {LIVENESS_TICKS_MAX} ticks of healing (leader {:?})",
            self.leader()
        ));
    }
}

/// Runs one seed: faults, then healing and the liveness check. Panics with
/// the seed and tick on any violated invariant.
pub fn run_seed(seed: u64, trace: bool) -> Stats {
    let mut sim = Sim::new(seed, trace);
    for _ in 0..FAULT_TICKS {
        sim.step(true);
    }
    sim.check_liveness();
    sim.stats.entries_committed = sim.committed_max;
    sim.stats
}
