//! An independent model of the compressor's default algorithm (the level
//! tree of docs/algorithm.md#the-level-tree, which must match the reference
//! tool exactly), used as a test oracle: given a room's stored tree, which
//! groups are in range and the level sizes, it says exactly which edges and
//! rows the compressor must leave behind.
//!
//! Deliberately naive (full states recomputed from the original tree), so
//! only for small inputs.

use crate::structure::{resolve_all, Structure};
use crate::StateMap;
use std::collections::{BTreeMap, BTreeSet};

/// A group as the algorithm sees it: predecessor and delta.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    pub prev: Option<i64>,
    pub delta: StateMap,
}

/// The algorithm's result.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The new tree of the in-range groups (others are unchanged).
    pub new: BTreeMap<i64, Entry>,
    /// Rows of the in-range groups before and after.
    pub rows_before: usize,
    pub rows_after: usize,
    /// Groups whose candidate differed from their original prev.
    pub groups_changed: usize,
    /// Groups that became snapshots because no base was valid.
    pub forced_resets: usize,
}

impl Outcome {
    /// Whether the compressor would write the new tree (not when it has
    /// more rows than before: docs/algorithm.md#deciding-whether-to-write).
    /// `None` when rows are equal, where the contract leaves the choice
    /// open.
    pub fn writes(&self) -> Option<bool> {
        use std::cmp::Ordering::*;
        match self.rows_after.cmp(&self.rows_before) {
            Less => Some(true),
            Greater => Some(false),
            Equal => None,
        }
    }
}

/// The entries (prev and delta) of every group in `structure`.
pub fn entries(structure: &Structure) -> BTreeMap<i64, Entry> {
    structure
        .iter()
        .map(|(&id, info)| {
            (
                id,
                Entry {
                    prev: info.prev(),
                    delta: info.delta(),
                },
            )
        })
        .collect()
}

/// One level of the tree as the algorithm runs (and as the automatic tool
/// saves it between chunks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub max_length: usize,
    pub current_length: usize,
    pub head: Option<i64>,
}

/// Fresh, empty levels of `sizes`.
pub fn empty_levels(sizes: &[usize]) -> Vec<Level> {
    sizes
        .iter()
        .map(|&max_length| Level {
            max_length,
            current_length: 0,
            head: None,
        })
        .collect()
}

/// Runs the level algorithm over `structure` (a room's groups, including
/// every predecessor of the in-range ones), compressing the groups in
/// `in_range` with `levels` (e.g. `[100, 50, 25]`).
pub fn compress(structure: &Structure, in_range: &BTreeSet<i64>, levels: &[usize]) -> Outcome {
    compress_from(structure, in_range, &mut empty_levels(levels))
}

/// [`compress`] continuing from `levels` (saved by an earlier chunk; their
/// heads must be in `structure`), which are left where the last group put
/// them.
pub fn compress_from(
    structure: &Structure,
    in_range: &BTreeSet<i64>,
    levels: &mut [Level],
) -> Outcome {
    let original = entries(structure);
    let states = resolve_all(structure);

    let mut new_prev: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    let mut outcome = Outcome::default();
    for (&id, entry) in &original {
        if !in_range.contains(&id) {
            new_prev.insert(id, entry.prev);
            continue;
        }
        // 1. The candidate: the head of the first level with room.
        let mut candidate = None;
        for level in levels.iter_mut() {
            if level.current_length < level.max_length {
                candidate = level.head;
                level.head = Some(id);
                level.current_length += 1;
                break;
            }
            level.head = Some(id);
            level.current_length = 1;
        }
        outcome.rows_before += entry.delta.len();
        // 2. Same as before: keep it.
        if candidate == entry.prev {
            new_prev.insert(id, entry.prev);
            outcome.rows_after += entry.delta.len();
            outcome.new.insert(id, entry.clone());
            continue;
        }
        // 3. Otherwise find a valid base, walking up the new tree.
        outcome.groups_changed += 1;
        let full = &states[&id];
        let mut base = candidate;
        while let Some(b) = base {
            if states[&b].keys().all(|key| full.contains_key(key)) {
                break;
            }
            base = new_prev.get(&b).copied().flatten();
            if base.is_none() {
                outcome.forced_resets += 1;
            }
        }
        let new_entry = match base {
            None => Entry {
                prev: None,
                delta: full.clone(),
            },
            Some(b) => Entry {
                prev: Some(b),
                delta: full
                    .iter()
                    .filter(|(key, event)| states[&b].get(*key) != Some(*event))
                    .map(|(key, event)| (key.clone(), event.clone()))
                    .collect(),
            },
        };
        new_prev.insert(id, new_entry.prev);
        outcome.rows_after += new_entry.delta.len();
        outcome.new.insert(id, new_entry);
    }
    outcome
}

/// The in-range groups of `room_groups` (ascending ids of one room) for the
/// compressor's `-b MIN -n COUNT -s MAX`: ids above `min` (exclusive), up to
/// `max` (inclusive), the first `count` of them.
pub fn in_range(
    room_groups: impl IntoIterator<Item = i64>,
    min: Option<i64>,
    count: Option<usize>,
    max: Option<i64>,
) -> BTreeSet<i64> {
    let mut ids: Vec<i64> = room_groups
        .into_iter()
        .filter(|&id| !matches!(min, Some(m) if id <= m) && !matches!(max, Some(m) if id > m))
        .collect();
    ids.sort_unstable();
    if let Some(count) = count {
        ids.truncate(count);
    }
    ids.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structure::{GroupInfo, StateRow};

    /// A linear chain: group i adds key `k{i}`.
    fn chain(n: i64) -> Structure {
        (0..n)
            .map(|i| {
                (
                    i,
                    GroupInfo {
                        room_id: Some("!r:x".into()),
                        event_id: Some(format!("$e{i}")),
                        prevs: if i == 0 { vec![] } else { vec![i - 1] },
                        rows: vec![StateRow {
                            room_id: "!r:x".into(),
                            event_type: "t".into(),
                            state_key: format!("k{i}"),
                            event_id: format!("$e{i}"),
                        }],
                    },
                )
            })
            .collect()
    }

    #[test]
    fn chain_of_13_with_levels_3_3() {
        let s = chain(13);
        let all: BTreeSet<i64> = s.keys().copied().collect();
        let out = compress(&s, &all, &[3, 3]);
        let prevs: Vec<Option<i64>> = out.new.values().map(|e| e.prev).collect();
        assert_eq!(
            prevs,
            vec![
                None,
                Some(0),
                Some(1),
                None,
                Some(3),
                Some(4),
                Some(3),
                Some(6),
                Some(7),
                Some(6),
                Some(9),
                Some(10),
                None
            ]
        );
        // Snapshots hold the full state; group 6 on 3 holds k4..k6.
        assert_eq!(out.new[&3].delta.len(), 4);
        assert_eq!(out.new[&12].delta.len(), 13);
        assert_eq!(out.new[&6].delta.len(), 3);
        assert_eq!(out.forced_resets, 0);
    }

    #[test]
    fn in_range_bounds() {
        let ids = [1, 3, 5, 7, 9];
        assert_eq!(
            in_range(ids, Some(3), Some(2), None),
            BTreeSet::from([5, 7])
        );
        assert_eq!(
            in_range(ids, Some(1), None, Some(7)),
            BTreeSet::from([3, 5, 7])
        );
        assert_eq!(in_range(ids, None, None, None).len(), 5);
    }
}
