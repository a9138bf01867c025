//! Chain lengths: how many edges Synapse follows from a group before it
//! reaches a group with no edge (a snapshot, or the end of a purged
//! chain). Synapse walks that whole chain on every read of the group's
//! state, so the longest chain is the figure a read's cost follows.

use std::collections::HashMap;

use crate::core::group::{GroupMap, Groups, Overlay};

/// Hops from each group of `ids` to the end of its chain in `groups`.
///
/// A walk that reaches a group of `known` stops there and adds that
/// group's known length: the automatic tool uses it for groups an earlier
/// chunk of the run rewrote, whose length *before* the run it recorded then
/// (the loaded structure already shows them rewritten). A walk that reaches
/// a group that is not loaded ends there, as a chain does at a purged group.
/// A cycle (a damaged structure, refused elsewhere) cannot loop: a walk is
/// bounded by the number of groups.
pub fn chain_hops(
    groups: &impl Groups,
    ids: impl IntoIterator<Item = i64>,
    known: &HashMap<i64, u32>,
) -> HashMap<i64, u32> {
    let mut hops: HashMap<i64, u32> = HashMap::new();
    let mut path = Vec::new();
    let bound = groups.count() + known.len() + 1;
    for id in ids {
        if hops.contains_key(&id) {
            continue;
        }
        // Walk up until a group whose length is known (or the chain ends),
        // then give every group of the path its length on the way back.
        path.clear();
        let mut current = id;
        let mut end = 0;
        loop {
            if !path.is_empty() {
                if let Some(&n) = hops.get(&current).or_else(|| known.get(&current)) {
                    end = n;
                    break;
                }
            }
            path.push(current);
            match groups.entry(current).and_then(|e| e.prev) {
                Some(prev) if path.len() < bound => current = prev,
                _ => break,
            }
        }
        // The last group of the path is either the end of the chain (0
        // more hops) or the group just before a known one (`end` + 1).
        let last = if path.len() < bound && hops_continue(groups, &path) {
            end + 1
        } else {
            0
        };
        for (n, &group) in (last..).zip(path.iter().rev()) {
            hops.insert(group, n);
        }
    }
    hops
}

/// Whether the last group of `path` has an edge (so the walk stopped at a
/// known group after it, not at the end of the chain).
fn hops_continue(groups: &impl Groups, path: &[i64]) -> bool {
    path.last()
        .and_then(|&last| groups.entry(last))
        .is_some_and(|e| e.prev.is_some())
}

/// The longest chain of `original`'s in-range groups before (in `original`,
/// walks ending at groups of `known` as [`chain_hops`] says) and after (with
/// `changes` laid over it, or as it is without them; walks ending at groups
/// of `known_after`, the lengths earlier groups have after their own
/// rewrite), and each in-range group's length before and after.
pub fn longest_chains(
    original: &GroupMap,
    changes: Option<&GroupMap>,
    known: &HashMap<i64, u32>,
    known_after: &HashMap<i64, u32>,
) -> OwnChains {
    let ids: Vec<i64> = original
        .iter()
        .filter(|(_, e)| e.in_range)
        .map(|(&id, _)| id)
        .collect();
    let before = chain_hops(original, ids.iter().copied(), known);
    let after = match changes {
        Some(changes) => {
            let new = Overlay { original, changes };
            chain_hops(&new, ids.iter().copied(), known_after)
        }
        None if known.is_empty() && known_after.is_empty() => before.clone(),
        None => chain_hops(original, ids.iter().copied(), known_after),
    };
    let own = |hops: &HashMap<i64, u32>| -> HashMap<i64, u32> {
        ids.iter()
            .filter_map(|id| Some((*id, *hops.get(id)?)))
            .collect()
    };
    let (own_before, own_after) = (own(&before), own(&after));
    OwnChains {
        before: longest(&own_before, ids.iter().copied()),
        after: longest(&own_after, ids.iter().copied()),
        own_before,
        own_after,
    }
}

/// What [`longest_chains`] found.
pub struct OwnChains {
    /// The longest chain before and after.
    pub before: u32,
    pub after: u32,
    /// Each in-range group's length before and after.
    pub own_before: HashMap<i64, u32>,
    pub own_after: HashMap<i64, u32>,
}

/// The longest of `hops` over `ids` (0 for none).
pub fn longest(hops: &HashMap<i64, u32>, ids: impl IntoIterator<Item = i64>) -> u32 {
    ids.into_iter()
        .filter_map(|id| hops.get(&id).copied())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::group::{GroupMap, StateGroupEntry};

    fn chain(edges: &[(i64, Option<i64>)]) -> GroupMap {
        edges
            .iter()
            .map(|&(id, prev)| {
                (
                    id,
                    StateGroupEntry {
                        in_range: true,
                        prev,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn counts_edges_to_the_end_of_each_chain() {
        // 1 <- 2 <- 3 <- 4, and 5 (snapshot) <- 6; 7's prev 9 is not loaded.
        let map = chain(&[
            (1, None),
            (2, Some(1)),
            (3, Some(2)),
            (4, Some(3)),
            (5, None),
            (6, Some(5)),
            (7, Some(9)),
        ]);
        let hops = chain_hops(&map, map.keys().copied(), &HashMap::new());
        let want = [(1, 0), (2, 1), (3, 2), (4, 3), (5, 0), (6, 1), (7, 1)];
        for (id, n) in want {
            assert_eq!(hops[&id], n, "group {id}");
        }
        assert_eq!(longest(&hops, [4, 6]), 3);
        assert_eq!(longest(&hops, [5, 6, 7]), 1);
    }

    #[test]
    fn a_known_group_ends_the_walk_with_its_length() {
        // 2 was rewritten into a snapshot, but before the run it was 10 hops
        // from its chain's end.
        let map = chain(&[(2, None), (3, Some(2)), (4, Some(3))]);
        let known = HashMap::from([(2, 10)]);
        let hops = chain_hops(&map, [4, 3], &known);
        assert_eq!(hops[&4], 12);
        assert_eq!(hops[&3], 11);
    }

    #[test]
    fn a_cycle_does_not_hang() {
        let map = chain(&[(1, Some(2)), (2, Some(1))]);
        let hops = chain_hops(&map, [1, 2], &HashMap::new());
        assert!(hops.contains_key(&1) && hops.contains_key(&2));
    }
}
