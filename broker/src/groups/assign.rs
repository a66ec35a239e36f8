//! Sticky assignment of a group's partitions to its members: a pure function
//! of the members (with the topics each subscribes to), the partitions, and
//! who held each partition before.
//!
//! The choice (documented in docs/ARCHITECTURE.md): every member gets
//! `n / m` partitions and `n % m` of them one more — the extra going to the
//! members that held the most before, so a rebalance takes the extras away
//! from nobody. A partition stays with its previous holder while that holder
//! is a member, subscribes to its topic and is under its quota; the rest go,
//! in partition order, to the eligible member with the fewest. So a join
//! moves only as many partitions as the new member's share, and a leave or
//! an expiry moves only the partitions of the member that went.
//!
//! Deterministic (ordered maps, ties broken by member id): the coordinator
//! computes it once and replicates the result, and tests can replay it.

use std::collections::BTreeMap;

/// A topic partition.
pub type Tp = (String, u32);

/// `members`: member id → topics it subscribes to. `partitions`: every
/// partition to place (sorted). `previous`: who held each partition.
/// Returns the holder of each partition that has an eligible member.
pub fn sticky(
    members: &BTreeMap<String, Vec<String>>,
    partitions: &[Tp],
    previous: &BTreeMap<Tp, String>,
) -> BTreeMap<Tp, String> {
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let eligible = |id: &str, tp: &Tp| members.get(id).is_some_and(|t| t.contains(&tp.0));
    let placeable: Vec<&Tp> = partitions
        .iter()
        .filter(|tp| members.keys().any(|m| eligible(m, tp)))
        .collect();
    let (n, m) = (placeable.len(), members.len());
    let (base, extra) = (n / m, n % m);
    // The extras go to the members holding the most now (then by id).
    let mut held: BTreeMap<&str, usize> = members.keys().map(|k| (k.as_str(), 0)).collect();
    for tp in &placeable {
        if let Some(h) = previous.get(*tp).filter(|h| eligible(h, tp)) {
            if let Some(c) = held.get_mut(h.as_str()) {
                *c += 1;
            }
        }
    }
    let mut order: Vec<(&str, usize)> = held.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let quota: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, base + usize::from(i < extra)))
        .collect();
    let mut count: BTreeMap<&str, usize> = members.keys().map(|k| (k.as_str(), 0)).collect();
    // Pass 1: keep what a member held, up to its quota.
    let mut rest = Vec::new();
    for tp in placeable {
        match previous.get(tp).filter(|h| eligible(h, tp)) {
            Some(h) if count[h.as_str()] < quota[h.as_str()] => {
                *count.get_mut(h.as_str()).expect("a member") += 1;
                out.insert(tp.clone(), h.clone());
            }
            _ => rest.push(tp),
        }
    }
    // Pass 2: the rest to the eligible member with the fewest (under its
    // quota first; with mixed subscriptions a quota may be unreachable).
    for tp in rest {
        let pick = |under_quota: bool| {
            members
                .keys()
                .filter(|id| eligible(id, tp))
                .filter(|id| !under_quota || count[id.as_str()] < quota[id.as_str()])
                .min_by_key(|id| (count[id.as_str()], (*id).clone()))
                .cloned()
        };
        if let Some(id) = pick(true).or_else(|| pick(false)) {
            *count.get_mut(id.as_str()).expect("a member") += 1;
            out.insert(tp.clone(), id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str], topics: &[&str]) -> BTreeMap<String, Vec<String>> {
        ids.iter()
            .map(|id| {
                (
                    id.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn parts(topic: &str, n: u32) -> Vec<Tp> {
        (0..n).map(|p| (topic.to_owned(), p)).collect()
    }

    fn counts(a: &BTreeMap<Tp, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for m in a.values() {
            *c.entry(m.clone()).or_default() += 1;
        }
        c
    }

    fn moved(a: &BTreeMap<Tp, String>, b: &BTreeMap<Tp, String>) -> usize {
        a.iter().filter(|(tp, m)| b.get(*tp) != Some(*m)).count()
    }

    #[test]
    fn three_members_on_six_partitions_get_two_each() {
        let a = sticky(
            &members(&["a", "b", "c"], &["t"]),
            &parts("t", 6),
            &BTreeMap::new(),
        );
        assert_eq!(a.len(), 6);
        assert!(counts(&a).values().all(|&c| c == 2), "{a:?}");
    }

    #[test]
    fn a_join_moves_only_the_new_members_share() {
        let p = parts("t", 6);
        let two = sticky(&members(&["a", "b"], &["t"]), &p, &BTreeMap::new());
        let three = sticky(&members(&["a", "b", "c"], &["t"]), &p, &two);
        assert_eq!(moved(&two, &three), 2, "{two:?} -> {three:?}");
        assert_eq!(counts(&three)["c"], 2);
        // Uneven: 7 partitions, 3 members: 3/2/2, and the extra stays put.
        let p = parts("t", 7);
        let two = sticky(&members(&["a", "b"], &["t"]), &p, &BTreeMap::new());
        let three = sticky(&members(&["a", "b", "c"], &["t"]), &p, &two);
        assert_eq!(moved(&two, &three), 2);
        let mut c: Vec<usize> = counts(&three).into_values().collect();
        c.sort_unstable();
        assert_eq!(c, vec![2, 2, 3]);
    }

    #[test]
    fn a_leave_moves_only_the_partitions_of_the_member_that_went() {
        let p = parts("t", 6);
        let three = sticky(&members(&["a", "b", "c"], &["t"]), &p, &BTreeMap::new());
        let two = sticky(&members(&["a", "c"], &["t"]), &p, &three);
        assert_eq!(moved(&three, &two), 2);
        assert!(two.values().all(|m| m != "b"));
        assert!(counts(&two).values().all(|&c| c == 3));
    }

    #[test]
    fn partitions_go_only_to_members_subscribed_to_their_topic() {
        let mut m = members(&["a"], &["t"]);
        m.insert("b".into(), vec!["u".into()]);
        let mut p = parts("t", 3);
        p.extend(parts("u", 2));
        p.extend(parts("v", 2)); // nobody reads v
        let a = sticky(&m, &p, &BTreeMap::new());
        assert_eq!(a.len(), 5);
        for (tp, who) in &a {
            assert_eq!(who, if tp.0 == "t" { "a" } else { "b" });
        }
    }

    #[test]
    fn no_members_assign_nothing_and_more_members_than_partitions_leave_some_idle() {
        assert!(sticky(&BTreeMap::new(), &parts("t", 3), &BTreeMap::new()).is_empty());
        let a = sticky(
            &members(&["a", "b", "c"], &["t"]),
            &parts("t", 2),
            &BTreeMap::new(),
        );
        assert_eq!(a.len(), 2);
        assert_eq!(counts(&a).len(), 2);
    }
}
