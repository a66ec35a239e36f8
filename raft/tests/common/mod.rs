//! A small synchronous cluster for scenario tests: every node's Ready is
//! persisted to its MemStorage exactly as the contract says, messages go
//! through a queue that tests can cut, filter or rewrite, and crashes keep
//! only what is durable.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::{
    Config, Entry, EntryPayload, MemStorage, Membership, Message, NodeId, Raft, Ready, Role,
    SnapshotMeta,
};

pub type Rewrite = Box<dyn FnMut(Message) -> Option<Message>>;

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Raft<MemStorage>>,
    pub crashed: BTreeMap<NodeId, MemStorage>,
    /// Applied data payloads per node (the "state machine").
    pub applied: BTreeMap<NodeId, Vec<Vec<u8>>>,
    /// Snapshot staging area per node.
    pub staging: BTreeMap<NodeId, Vec<u8>>,
    pub queue: VecDeque<Message>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Rewrites (or drops, returning None) each message before delivery.
    pub rewrite: Option<Rewrite>,
    /// Every message delivered, in order.
    pub delivered: Vec<Message>,
    /// (term, node) of the first report of each committed index, from every
    /// node's Ready, crashes included: the history committed entries must keep.
    pub committed: BTreeMap<u64, (u64, NodeId)>,
    /// Reports that contradicted `committed`: (index, term, node).
    pub committed_changed: Vec<(u64, u64, NodeId)>,
    pub configure: fn(&mut Config),
}

pub fn config(id: NodeId) -> Config {
    let mut c = Config::new(id, 1);
    c.seed = 42;
    c
}

/// Encodes a state machine (list of payloads) as a snapshot.
pub fn encode_state(state: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in state {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

pub fn decode_state(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        out.push(data[4..4 + len].to_vec());
        data = &data[4 + len..];
    }
    out
}

impl Cluster {
    /// `n` voters 1..=n with empty logs.
    pub fn new(n: u64) -> Self {
        Self::with_config(n, |_| {})
    }

    pub fn with_config(n: u64, configure: fn(&mut Config)) -> Self {
        let membership = Membership::with_voters(1..=n);
        let storages = (1..=n)
            .map(|id| (id, MemStorage::new(membership.clone())))
            .collect::<Vec<_>>();
        Self::from_storages(storages, configure)
    }

    /// Nodes restarted from prepared storages (to build the paper's figures).
    pub fn from_storages(storages: Vec<(NodeId, MemStorage)>, configure: fn(&mut Config)) -> Self {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            crashed: storages.into_iter().collect(),
            applied: BTreeMap::new(),
            staging: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            rewrite: None,
            delivered: Vec::new(),
            committed: BTreeMap::new(),
            committed_changed: Vec::new(),
            configure,
        };
        let ids: Vec<NodeId> = cluster.crashed.keys().copied().collect();
        for id in ids {
            cluster.restart(id);
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Raft<MemStorage> {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Raft<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|r| r.role() == Role::Leader)
            .map(|r| r.id())
    }

    /// Adds a node that is in nobody's membership yet (empty log).
    pub fn add_blank_node(&mut self, id: NodeId) {
        self.crashed
            .insert(id, MemStorage::new(Membership::default()));
        self.restart(id);
    }

    /// Loses everything not durable: in-memory Raft state, unsent messages
    /// and the volatile state machine.
    pub fn crash(&mut self, id: NodeId) {
        let raft = self.nodes.remove(&id).unwrap();
        self.crashed.insert(id, raft.into_storage());
        self.applied.remove(&id);
        self.staging.remove(&id);
        self.queue.retain(|m| m.from != id && m.to != id);
    }

    pub fn restart(&mut self, id: NodeId) {
        let storage = self.crashed.remove(&id).unwrap();
        let state = decode_state(storage.snapshot_data());
        let mut cfg = config(id);
        (self.configure)(&mut cfg);
        let snapshot_index = raft::Storage::first_index(&storage) - 1;
        cfg.applied_index = snapshot_index;
        self.applied.insert(id, state);
        self.nodes.insert(id, Raft::new(cfg, storage).unwrap());
    }

    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.rewrite = None;
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes
            .keys()
            .chain(self.crashed.keys())
            .copied()
            .collect()
    }

    /// Persists one Ready of `id` following the contract, queues its
    /// messages, applies its committed entries, and advances. Returns it.
    pub fn handle_ready(&mut self, id: NodeId) -> Option<Ready> {
        let raft = self.nodes.get_mut(&id)?;
        if !raft.has_ready() {
            return None;
        }
        let ready = raft.ready().unwrap();
        let staging = self.staging.entry(id).or_default();
        for chunk in &ready.snapshot_chunks {
            if chunk.offset == 0 {
                staging.clear();
            }
            assert_eq!(chunk.offset, staging.len() as u64, "chunks arrive in order");
            staging.extend_from_slice(&chunk.data);
        }
        if let Some(meta) = &ready.snapshot {
            let data = std::mem::take(staging);
            self.applied.insert(id, decode_state(&data));
            raft.storage_mut().install_snapshot(meta.clone(), data);
        }
        raft.storage_mut().append(&ready.entries);
        if let Some(hs) = ready.hard_state {
            raft.storage_mut().set_hard_state(hs);
        }
        // Durable now; the messages may go.
        self.queue.extend(ready.messages.iter().cloned());
        for entry in &ready.committed_entries {
            let (term, _) = *self
                .committed
                .entry(entry.index)
                .or_insert((entry.term, id));
            if term != entry.term {
                self.committed_changed.push((entry.index, entry.term, id));
            }
        }
        let state = self.applied.entry(id).or_default();
        for entry in &ready.committed_entries {
            if let EntryPayload::Data(data) = &entry.payload {
                state.push(data.to_vec());
            }
        }
        raft.advance().unwrap();
        Some(ready)
    }

    /// Delivers one queued message (subject to cuts and the rewrite).
    pub fn deliver_one(&mut self) -> bool {
        let Some(m) = self.queue.pop_front() else {
            return false;
        };
        if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
            return true;
        }
        let m = match self.rewrite.as_mut() {
            Some(rewrite) => match rewrite(m) {
                Some(m) => m,
                None => return true,
            },
            None => m,
        };
        self.delivered.push(m.clone());
        self.nodes.get_mut(&m.to).unwrap().step(m).unwrap();
        true
    }

    /// Runs Readies and deliveries until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for id in self.ids() {
                while self.handle_ready(id).is_some() {
                    moved = true;
                }
            }
            while self.deliver_one() {
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks every live node `ticks` times, stabilizing after each.
    pub fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node_mut(id).tick().unwrap();
            }
            self.stabilize();
        }
    }

    pub fn tick_node(&mut self, id: NodeId, ticks: u32) {
        for _ in 0..ticks {
            self.node_mut(id).tick().unwrap();
            self.stabilize();
        }
    }

    pub fn campaign(&mut self, id: NodeId) {
        self.node_mut(id).campaign();
        self.stabilize();
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> u64 {
        let index = self.node_mut(id).propose(data.to_vec()).unwrap();
        self.stabilize();
        index
    }

    /// (index, term) of every entry in `id`'s log.
    pub fn log_terms(&self, id: NodeId) -> Vec<(u64, u64)> {
        let raft = self.node(id);
        raft.log_entries(raft.first_index(), raft.last_index() + 1)
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    /// Takes a snapshot of `id`'s applied state and compacts its log.
    pub fn compact(&mut self, id: NodeId) {
        let raft = self.nodes.get_mut(&id).unwrap();
        let index = raft.applied_index();
        let term = raft.log_term(index).unwrap();
        let membership = raft.membership().clone();
        let data = encode_state(&self.applied[&id]);
        let meta = SnapshotMeta {
            index,
            term,
            membership,
            size_bytes: 0,
        };
        raft.storage_mut().compact(meta, data);
    }
}

/// A storage holding entries of the given terms at indexes 1.., at `term`.
pub fn storage_with_terms(voters: &[NodeId], terms: &[u64], current_term: u64) -> MemStorage {
    let mut storage = MemStorage::new(Membership::with_voters(voters.iter().copied()));
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry {
            index: i as u64 + 1,
            term,
            payload: EntryPayload::data(format!("{}@{}", i + 1, term).into_bytes()),
        })
        .collect();
    storage.append(&entries);
    storage.set_hard_state(raft::HardState {
        term: current_term,
        vote: None,
        commit: 0,
    });
    storage
}
