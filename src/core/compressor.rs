//! The level-tree compressor.
//!
//! Groups are visited in ascending id order and appended to the lowest level
//! with room; a group's new predecessor is the head of that level. The result
//! is a tree whose depth is bounded by the sum of the level sizes, in place of
//! Synapse's chains of up to 100 hops ended by full snapshots.
//!
//! This module implements exactly the rules of `docs/algorithm.md`
//! ([the level tree](../../docs/algorithm.md#the-level-tree) and
//! [forced resets](../../docs/algorithm.md#forced-resets)), which are also what
//! the reference tool does, so both produce the same edges and rows for the
//! same input and levels.

use crate::core::group::{GroupMap, Overlay, StateGroupEntry};
use crate::core::levels::Level;
use crate::core::resolve::Resolver;
use crate::core::state_map::{FullState, StateMap};
use crate::error::{Error, Result};

/// Counters gathered while compressing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Groups that became snapshots because no ancestor of the candidate
    /// base had a subset of their keys.
    pub resets_no_suitable_prev: usize,
    /// Rows written by those forced snapshots.
    pub resets_no_suitable_prev_size: usize,
    /// Groups given a predecessor other than their original one.
    pub state_groups_changed: usize,
}

/// The outcome of a compression: the rewritten entries and where the levels
/// ended, so a later run can continue from there.
#[derive(Clone, Debug)]
pub struct Compressed {
    /// New entries of the groups whose predecessor changed; every other
    /// group keeps its original entry.
    pub changes: GroupMap,
    /// The levels after the last group.
    pub levels: Vec<Level>,
    /// What happened.
    pub stats: Stats,
}

impl Compressed {
    /// The new structure: `original` with the changes laid over it.
    pub fn view<'a>(&'a self, original: &'a GroupMap) -> Overlay<'a> {
        Overlay {
            original,
            changes: &self.changes,
        }
    }
}

/// Compresses `original` starting from `levels` (empty levels for a fresh
/// start, saved ones to continue an earlier run).
///
/// Groups with `in_range == false` are left as they are; they are only there
/// so states can be resolved (predecessors) or used as bases (level heads).
pub fn compress(original: &GroupMap, levels: Vec<Level>) -> Result<Compressed> {
    let mut compressor = Compressor::new(levels);
    let mut changes = GroupMap::new();
    compressor.add(original, &mut changes)?;
    plant_wrong_delta_if_asked(&mut changes);
    Ok(Compressed {
        changes,
        levels: compressor.levels,
        stats: compressor.stats,
    })
}

/// The compressor's running position: its levels and counters. One
/// [`Compressor::add`] over a whole range is [`compress`]; several over
/// consecutive id ranges (windows) give the same result, as long as each
/// map holds what the levels can reach (see [`Compressor::add`]).
#[derive(Clone, Debug)]
pub struct Compressor {
    levels: Vec<Level>,
    stats: Stats,
}

impl Compressor {
    /// A compressor starting from `levels`.
    pub fn new(levels: Vec<Level>) -> Self {
        Self {
            levels,
            stats: Stats::default(),
        }
    }

    /// The levels after the groups added so far.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Compresses the in-range groups of `original`, in id order, all of
    /// them above the groups added before, putting their new entries in
    /// `changes`.
    ///
    /// A base is looked up in `changes` first (its new predecessor), then in
    /// `original`, whose entry must then carry its predecessor in the new
    /// structure and resolve to its original state. So `changes` must still
    /// hold the new entries of earlier groups the levels can reach, and
    /// `original` must hold those groups (their original entries, or
    /// stand-ins with their full state).
    pub fn add(&mut self, original: &GroupMap, changes: &mut GroupMap) -> Result<()> {
        let mut resolver = Resolver::new(original);
        for (&group, entry) in original {
            if !entry.in_range {
                continue;
            }
            let candidate = choose_candidate(&mut self.levels, group);
            if candidate == entry.prev {
                continue;
            }
            self.stats.state_groups_changed += 1;
            let (prev, delta) = rebase(
                original,
                changes,
                &mut resolver,
                group,
                candidate,
                &mut self.stats,
            )?;
            changes.insert(
                group,
                StateGroupEntry {
                    in_range: true,
                    prev,
                    delta,
                    missing_group_row: entry.missing_group_row,
                    repeated_rows: 0,
                },
            );
        }
        Ok(())
    }
}

/// The `compress::wrong-delta` fault point, evaluated once per call: a
/// planted bug for the tests, which verification must refuse. Drops a row
/// of the first change with rows.
pub fn plant_wrong_delta_if_asked(changes: &mut GroupMap) {
    if crate::tool::failpoint::triggered("compress::wrong-delta") {
        if let Some(entry) = changes.values_mut().find(|e| !e.delta.is_empty()) {
            let rest: Vec<_> = entry.delta.iter().skip(1).collect();
            entry.delta = StateMap::from_unsorted(rest);
        }
    }
}

/// Climbs the levels from the lowest: the first level with space gives the
/// candidate (its head) and takes `group` as its new head; every full level
/// passed on the way restarts at `group`. No space anywhere: no candidate.
fn choose_candidate(levels: &mut [Level], group: i64) -> Option<i64> {
    for level in levels.iter_mut() {
        if level.has_space() {
            let candidate = level.head();
            level.extend(group);
            return candidate;
        }
        level.restart(group);
    }
    None
}

/// Finds `group`'s new predecessor and delta given the candidate base.
///
/// A delta cannot remove keys, so a base whose state has a key the group
/// lacks is unusable; walk up the NEW structure until a usable base is found
/// or the chain ends (then the group becomes a snapshot: a forced reset).
/// States are those of the original structure (the same, by construction).
fn rebase(
    original: &GroupMap,
    changes: &GroupMap,
    resolver: &mut Resolver<'_, GroupMap>,
    group: i64,
    candidate: Option<i64>,
    stats: &mut Stats,
) -> Result<(Option<i64>, StateMap)> {
    let state = resolver.state(group)?;
    let Some(mut base) = candidate else {
        return Ok((None, StateMap::from_full(&state)));
    };

    let base_state = loop {
        let base_state = resolver.state(base)?;
        if is_subset(&base_state, &state) {
            break base_state;
        }
        let new_prev = match changes.get(&base) {
            Some(changed) => changed.prev,
            None => {
                original
                    .get(&base)
                    .ok_or_else(|| {
                        Error::Damaged(format!("base state group {base} was not loaded"))
                    })?
                    .prev
            }
        };
        match new_prev {
            Some(prev) => base = prev,
            None => {
                stats.resets_no_suitable_prev += 1;
                stats.resets_no_suitable_prev_size += state.len();
                return Ok((None, StateMap::from_full(&state)));
            }
        }
    };

    let delta = StateMap::from_full_filtered(&state, |k, v| base_state.get(k) != Some(v));
    Ok((Some(base), delta))
}

/// True when every key of `base` is also a key of `state`.
fn is_subset(base: &FullState, state: &FullState) -> bool {
    base.keys_within(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::group::Groups;
    use crate::core::resolve::full_state;
    use crate::core::state_map::Symbols;

    fn row(
        sym: &mut Symbols,
        k: &str,
        v: &str,
    ) -> (
        crate::core::state_map::KeyId,
        crate::core::state_map::ValueId,
    ) {
        (sym.key("node", k), sym.value(v))
    }

    fn chain(sym: &mut Symbols, n: i64) -> GroupMap {
        let mut map = GroupMap::new();
        for i in 0..n {
            let r = row(sym, &i.to_string(), &format!("${i}"));
            map.insert(
                i,
                StateGroupEntry {
                    in_range: true,
                    prev: if i == 0 { None } else { Some(i - 1) },
                    delta: StateMap::from_unsorted(vec![r]),
                    missing_group_row: false,
                    repeated_rows: 0,
                },
            );
        }
        map
    }

    fn edges(view: &impl Groups, ids: std::ops::Range<i64>) -> Vec<(i64, Option<i64>)> {
        ids.map(|g| (g, view.entry(g).unwrap().prev)).collect()
    }

    #[test]
    fn linear_chain_of_13_with_levels_3_3() {
        let mut sym = Symbols::new();
        let original = chain(&mut sym, 13);
        let levels = vec![Level::new(3), Level::new(3)];
        let out = compress(&original, levels).unwrap();
        let view = out.view(&original);
        assert_eq!(
            edges(&view, 0..13),
            vec![
                (0, None),
                (1, Some(0)),
                (2, Some(1)),
                (3, None),
                (4, Some(3)),
                (5, Some(4)),
                (6, Some(3)),
                (7, Some(6)),
                (8, Some(7)),
                (9, Some(6)),
                (10, Some(9)),
                (11, Some(10)),
                (12, None),
            ]
        );
        // 3 and 12 are snapshots of their full state; 6 and 9 carry 3 rows
        // relative to their base (the groups skipped over plus their own).
        assert_eq!(out.changes[&3].delta.len(), 4);
        assert_eq!(out.changes[&12].delta.len(), 13);
        assert_eq!(out.changes[&6].delta.len(), 3);
        assert_eq!(out.changes[&9].delta.len(), 3);
        assert_eq!(out.stats.state_groups_changed, 4);
        assert_eq!(out.stats.resets_no_suitable_prev, 0);
        for g in 0..13 {
            assert_eq!(
                full_state(&original, g).unwrap(),
                full_state(&view, g).unwrap()
            );
        }
    }

    #[test]
    fn base_with_extra_key_walks_up_or_resets() {
        // 0 <- 1 (adds node/1); 2 is a snapshot lacking node/1 but with 0's keys.
        let mut sym = Symbols::new();
        let mut map = chain(&mut sym, 2);
        let rows = vec![row(&mut sym, "0", "$0"), row(&mut sym, "other", "$x")];
        map.insert(
            2,
            StateGroupEntry {
                in_range: true,
                prev: None,
                delta: StateMap::from_unsorted(rows),
                missing_group_row: false,
                repeated_rows: 0,
            },
        );
        // Levels 1,2: 0 -> L1 head; 1 -> L1 full, L2 candidate none;
        // 2 -> L1 full, L2 candidate 1, which has key node/1 that 2 lacks;
        // walk to 1's new prev (none, it became a snapshot) -> forced reset.
        let out = compress(&map, vec![Level::new(1), Level::new(2)]).unwrap();
        assert_eq!(out.changes[&2].prev, None);
        assert_eq!(out.stats.resets_no_suitable_prev, 1);
        assert_eq!(out.stats.resets_no_suitable_prev_size, 2);

        // With one level of 3, candidate for 2 is 1; walk up to 0 works.
        let out = compress(&map, vec![Level::new(3)]).unwrap();
        assert_eq!(out.changes[&2].prev, Some(0));
        assert_eq!(out.changes[&2].delta.len(), 1);
        assert_eq!(out.stats.resets_no_suitable_prev, 0);
    }
}
