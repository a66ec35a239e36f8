//! The replicated state of the consumer groups of one coordinator (one
//! partition of the offsets topic): pure data and pure transitions, no I/O
//! and no clock. The coordinator decides a change here, writes it to the
//! partition's Raft log as a [`Command`], and applies it once committed;
//! a new leader rebuilds the same state by applying the log in order.
//!
//! # Ownership and handover
//! `owners` says which member may read (and commit) each partition and the
//! generation it was granted in; `targets` is where the sticky assignment
//! wants each partition. A partition moves from A to B in two steps: A is
//! told to rejoin (the generation changed), commits, and rejoins — only then
//! is the partition taken from A; it is granted to B in the same change, and
//! B learns it at its next heartbeat. A member that leaves or whose lease
//! expires loses its partitions at once. So a partition is never owned by
//! two members, and never handed to a new owner while the old one may still
//! believe it holds it (unless the old one's lease ran out).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use wire::ErrorCode;

use super::assign::{sticky, Tp};

/// One member as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub lease_ms: u32,
}

/// Who may read a partition, since which generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub member: String,
    pub since_generation: u64,
}

/// A committed offset: the next offset the group will read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
}

/// One group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub generation: u64,
    pub members: BTreeMap<String, Member>,
    pub owners: BTreeMap<Tp, Owner>,
    pub targets: BTreeMap<Tp, String>,
    pub offsets: BTreeMap<Tp, Committed>,
}

/// A change as written to the log (JSON in one record; the record's key is
/// the group name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Command {
    /// The group's whole membership as of a new generation.
    Members {
        group: String,
        generation: u64,
        members: Vec<Member>,
        /// (topic, partition, member, since generation)
        owners: Vec<(String, u32, String, u64)>,
        /// (topic, partition, member)
        targets: Vec<(String, u32, String)>,
    },
    /// Offsets committed (by the owner, or by a reset while the group is empty).
    Commit {
        group: String,
        /// (topic, partition, offset, metadata)
        offsets: Vec<(String, u32, u64, String)>,
    },
}

impl Command {
    pub fn group(&self) -> &str {
        match self {
            Command::Members { group, .. } | Command::Commit { group, .. } => group,
        }
    }

    /// The record key: `members/GROUP`, or `offset/GROUP/TOPIC/PARTITION`
    /// for a commit of one partition (names cannot hold `/`). Key
    /// compaction of the offsets log would keep exactly the latest of each.
    pub fn key(&self) -> String {
        match self {
            Command::Members { group, .. } => format!("members/{group}"),
            Command::Commit { group, offsets } => match offsets.as_slice() {
                [(t, p, _, _)] => format!("offset/{group}/{t}/{p}"),
                _ => format!("offsets/{group}"),
            },
        }
    }

    /// A commit of several partitions as one command per partition (what
    /// the log holds); any other command as it is.
    pub fn split(self) -> Vec<Command> {
        match self {
            Command::Commit { group, offsets } if offsets.len() > 1 => offsets
                .into_iter()
                .map(|o| Command::Commit {
                    group: group.clone(),
                    offsets: vec![o],
                })
                .collect(),
            other => vec![other],
        }
    }
}

/// Every group of one coordinator.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    pub groups: BTreeMap<String, Group>,
}

impl Groups {
    /// Applies a committed command (also when replaying the log).
    pub fn apply(&mut self, c: Command) {
        match c {
            Command::Members {
                group,
                generation,
                members,
                owners,
                targets,
            } => {
                let g = self.groups.entry(group).or_default();
                g.generation = generation;
                g.members = members.into_iter().map(|m| (m.id.clone(), m)).collect();
                g.owners = owners
                    .into_iter()
                    .map(|(t, p, member, since_generation)| {
                        (
                            (t, p),
                            Owner {
                                member,
                                since_generation,
                            },
                        )
                    })
                    .collect();
                g.targets = targets.into_iter().map(|(t, p, m)| ((t, p), m)).collect();
            }
            Command::Commit { group, offsets } => {
                let g = self.groups.entry(group).or_default();
                for (t, p, offset, metadata) in offsets {
                    g.offsets.insert((t, p), Committed { offset, metadata });
                }
            }
        }
    }
}

/// What happens to a group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new member joins (its id chosen by the coordinator).
    Join(Member),
    /// A member rejoins (after a rebalance notice): it gives up the
    /// partitions that are targeted elsewhere and takes those granted to it.
    Rejoin { member: String, topics: Vec<String> },
    /// A member leaves, or its lease expired: its partitions are free.
    Remove { member: String },
}

impl Group {
    /// The membership after `change`, as the command that records it, or
    /// None if nothing changes. `partitions_of(topic)`: the topic's
    /// partition count (None: no such topic, nothing of it is assigned).
    pub fn decide(
        &self,
        name: &str,
        change: Change,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Option<Command> {
        let mut members = self.members.clone();
        let mut revoke_from = None;
        match change {
            Change::Join(m) => {
                members.insert(m.id.clone(), m);
            }
            Change::Rejoin { member, topics } => {
                if let Some(m) = members.get_mut(&member) {
                    m.topics = topics;
                }
                revoke_from = Some(member);
            }
            Change::Remove { member } => {
                members.remove(&member);
            }
        }
        let subscribed: BTreeMap<String, Vec<String>> = members
            .values()
            .map(|m| (m.id.clone(), m.topics.clone()))
            .collect();
        let topics: BTreeSet<&String> = members.values().flat_map(|m| &m.topics).collect();
        let mut partitions: Vec<Tp> = Vec::new();
        for t in topics {
            for p in 0..partitions_of(t).unwrap_or(0) {
                partitions.push((t.clone(), p));
            }
        }
        // Stickiness follows the current owner, else the last target.
        let mut previous = self.targets.clone();
        for (tp, o) in &self.owners {
            previous.insert(tp.clone(), o.member.clone());
        }
        let targets = sticky(&subscribed, &partitions, &previous);
        let generation = self.generation + 1;
        let mut owners: BTreeMap<Tp, Owner> = self
            .owners
            .iter()
            .filter(|(tp, o)| {
                let member_ok = members
                    .get(&o.member)
                    .is_some_and(|m| m.topics.contains(&tp.0));
                let exists = tp.1 < partitions_of(&tp.0).unwrap_or(0);
                // The rejoining member hands over what is targeted elsewhere.
                let handed_over = revoke_from.as_deref() == Some(o.member.as_str())
                    && targets.get(*tp) != Some(&o.member);
                member_ok && exists && !handed_over
            })
            .map(|(tp, o)| (tp.clone(), o.clone()))
            .collect();
        for (tp, m) in &targets {
            owners.entry(tp.clone()).or_insert_with(|| Owner {
                member: m.clone(),
                since_generation: generation,
            });
        }
        if members == self.members && owners == self.owners && targets == self.targets {
            return None;
        }
        Some(Command::Members {
            group: name.to_owned(),
            generation,
            members: members.into_values().collect(),
            owners: owners
                .into_iter()
                .map(|((t, p), o)| (t, p, o.member, o.since_generation))
                .collect(),
            targets: targets.into_iter().map(|((t, p), m)| (t, p, m)).collect(),
        })
    }

    /// The partitions `member` owns now.
    pub fn assignment(&self, member: &str) -> Vec<Tp> {
        self.owners
            .iter()
            .filter(|(_, o)| o.member == member)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// Partitions targeted at a member other than their owner (moving).
    pub fn pending(&self) -> Vec<Tp> {
        self.targets
            .iter()
            .filter(|(tp, m)| self.owners.get(*tp).is_none_or(|o| &o.member != *m))
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// Whether `member`, at `generation`, may commit `tp`: it is a member,
    /// owns `tp`, and was granted it at or before `generation`, which is not
    /// in the future. `UnknownMember` (its lease expired, or it left) and
    /// `IllegalGeneration` (fenced) are both final for that membership: the
    /// client rejoins, it does not resend.
    pub fn check_commit(&self, member: &str, generation: u64, tp: &Tp) -> Result<(), ErrorCode> {
        if !self.members.contains_key(member) {
            return Err(ErrorCode::UnknownMember);
        }
        if generation > self.generation {
            return Err(ErrorCode::IllegalGeneration);
        }
        match self.owners.get(tp) {
            Some(o) if o.member == member && o.since_generation <= generation => Ok(()),
            _ => Err(ErrorCode::IllegalGeneration),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn six(t: &str) -> Option<u32> {
        (t == "t").then_some(6)
    }

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            client_id: "c".into(),
            topics: vec!["t".into()],
            lease_ms: 3000,
        }
    }

    fn step(gs: &mut Groups, change: Change) -> bool {
        let g = gs.groups.get("g").cloned().unwrap_or_default();
        match g.decide("g", change, &six) {
            Some(c) => {
                // Through JSON, as the log carries it.
                let json = serde_json::to_vec(&c).unwrap();
                gs.apply(serde_json::from_slice(&json).unwrap());
                true
            }
            None => false,
        }
    }

    fn group(gs: &Groups) -> &Group {
        &gs.groups["g"]
    }

    #[test]
    fn a_commit_is_written_one_record_per_partition_each_with_its_own_key() {
        let c = Command::Commit {
            group: "g".into(),
            offsets: vec![
                ("t".into(), 0, 5, String::new()),
                ("t".into(), 3, 9, String::new()),
            ],
        };
        let parts = c.clone().split();
        let keys: Vec<String> = parts.iter().map(Command::key).collect();
        assert_eq!(keys, ["offset/g/t/0", "offset/g/t/3"]);
        // Applying the parts is applying the whole.
        let (mut a, mut b) = (Groups::default(), Groups::default());
        a.apply(c);
        for p in parts {
            b.apply(p);
        }
        assert_eq!(a.groups["g"], b.groups["g"]);
        let m = Command::Members {
            group: "g".into(),
            generation: 1,
            members: vec![],
            owners: vec![],
            targets: vec![],
        };
        assert_eq!(m.key(), "members/g");
        assert_eq!(m.clone().split(), vec![m]);
    }

    #[test]
    fn a_join_grants_free_partitions_and_moves_owned_ones_only_after_their_owner_rejoins() {
        let mut gs = Groups::default();
        assert!(step(&mut gs, Change::Join(member("a"))));
        assert_eq!(group(&gs).assignment("a").len(), 6);
        assert_eq!(group(&gs).generation, 1);
        assert!(step(&mut gs, Change::Join(member("b"))));
        // b is targeted 3, but a still owns them until it rejoins.
        assert_eq!(group(&gs).assignment("a").len(), 6);
        assert!(group(&gs).assignment("b").is_empty());
        assert_eq!(group(&gs).pending().len(), 3);
        let gen_before = group(&gs).generation;
        assert!(step(
            &mut gs,
            Change::Rejoin {
                member: "a".into(),
                topics: vec!["t".into()],
            }
        ));
        assert_eq!(group(&gs).assignment("a").len(), 3);
        assert_eq!(group(&gs).assignment("b").len(), 3);
        assert!(group(&gs).pending().is_empty());
        assert_eq!(group(&gs).generation, gen_before + 1);
        // Rejoining again changes nothing and bumps nothing.
        assert!(!step(
            &mut gs,
            Change::Rejoin {
                member: "a".into(),
                topics: vec!["t".into()],
            }
        ));
    }

    #[test]
    fn a_removed_member_loses_its_partitions_at_once_and_its_commits_are_refused() {
        let mut gs = Groups::default();
        step(&mut gs, Change::Join(member("a")));
        step(&mut gs, Change::Join(member("b")));
        let rejoin = |m: &str| Change::Rejoin {
            member: m.into(),
            topics: vec!["t".into()],
        };
        step(&mut gs, rejoin("a"));
        let gen = group(&gs).generation;
        let tp = group(&gs).assignment("a")[0].clone();
        assert_eq!(group(&gs).check_commit("a", gen, &tp), Ok(()));
        step(&mut gs, Change::Remove { member: "a".into() });
        assert_eq!(group(&gs).assignment("b").len(), 6);
        assert_eq!(
            group(&gs).check_commit("a", gen, &tp),
            Err(ErrorCode::UnknownMember)
        );
        // b may commit what it was granted, not with a generation before the
        // grant, and not one from the future.
        let g = group(&gs).generation;
        assert_eq!(group(&gs).check_commit("b", g, &tp), Ok(()));
        assert_eq!(
            group(&gs).check_commit("b", gen, &tp),
            Err(ErrorCode::IllegalGeneration)
        );
        assert_eq!(
            group(&gs).check_commit("b", g + 1, &tp),
            Err(ErrorCode::IllegalGeneration)
        );
    }

    /// Members act in an arbitrary order (seeded); each believes it owns
    /// what its last join answered until it rejoins or is removed. At no
    /// point do two members believe they own one partition, and every
    /// partition is owned once the group settles.
    #[test]
    fn no_partition_is_believed_owned_by_two_members_at_any_step() {
        for seed in 0..200u64 {
            let mut rng = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut gs = Groups::default();
            let mut believed: BTreeMap<String, Vec<Tp>> = BTreeMap::new();
            let mut ids = 0;
            for _ in 0..60 {
                let live: Vec<String> = believed.keys().cloned().collect();
                match next(4) {
                    0 if live.len() < 5 => {
                        ids += 1;
                        let id = format!("m{ids}");
                        step(&mut gs, Change::Join(member(&id)));
                        believed.insert(id.clone(), group(&gs).assignment(&id));
                    }
                    1 if !live.is_empty() => {
                        let id = &live[next(live.len() as u64) as usize];
                        step(&mut gs, Change::Remove { member: id.clone() });
                        believed.remove(id);
                    }
                    _ if !live.is_empty() => {
                        let id = &live[next(live.len() as u64) as usize];
                        step(
                            &mut gs,
                            Change::Rejoin {
                                member: id.clone(),
                                topics: vec!["t".into()],
                            },
                        );
                        believed.insert(id.clone(), group(&gs).assignment(id));
                    }
                    _ => {}
                }
                let mut seen = BTreeSet::new();
                for (id, tps) in &believed {
                    for tp in tps {
                        assert!(seen.insert(tp.clone()), "seed {seed}: {tp:?} twice ({id})");
                        // What a member believes it holds, the state says it owns.
                        let owner = gs.groups.get("g").and_then(|g| g.owners.get(tp));
                        assert_eq!(
                            owner.map(|o| o.member.as_str()),
                            Some(id.as_str()),
                            "seed {seed}"
                        );
                    }
                }
            }
            // Settle: everyone rejoins twice; then all 6 are owned, balanced.
            for _ in 0..2 {
                for id in believed.keys().cloned().collect::<Vec<_>>() {
                    step(
                        &mut gs,
                        Change::Rejoin {
                            member: id.clone(),
                            topics: vec!["t".into()],
                        },
                    );
                }
            }
            if !believed.is_empty() {
                let g = group(&gs);
                assert_eq!(g.owners.len(), 6, "seed {seed}");
                assert!(g.pending().is_empty(), "seed {seed}");
            }
        }
    }
}
