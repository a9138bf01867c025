//! State groups as the compressor sees them: a predecessor and a delta,
//! views over a whole run's groups, and what the writers check a group
//! against before rewriting it ([`LoadedGroups`]).

use std::collections::BTreeMap;

use crate::core::state_map::{StateMap, Symbols};

/// One state group: its predecessor (edge) and its own rows (delta).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateGroupEntry {
    /// True when this group may be rewritten; false for predecessors and
    /// level heads that were loaded only so states can be resolved.
    pub in_range: bool,
    /// The group this one is a delta on, if any.
    pub prev: Option<i64>,
    /// This group's own rows in `state_groups_state`.
    pub delta: StateMap,
    /// The group had no `state_groups` row when it was loaded (only its
    /// edge and rows): the writer cannot row-lock it, so it re-checks it by
    /// its edge and rows alone.
    pub missing_group_row: bool,
    /// Rows it has beyond its delta: exact repeats of one of its rows (the
    /// table has no unique constraint). A rewrite deletes them with the
    /// rest.
    pub repeated_rows: u32,
}

/// Groups by id. Ascending id order is the order the compressor visits them
/// and the order changes must be applied in.
pub type GroupMap = BTreeMap<i64, StateGroupEntry>;

/// Read access to a structure of groups, so the original structure and the
/// original-with-changes can be resolved by the same code.
pub trait Groups: Sync {
    /// The entry of `id`, if loaded.
    fn entry(&self, id: i64) -> Option<&StateGroupEntry>;
    /// How many groups there are (bounds chain walks).
    fn count(&self) -> usize;
}

impl Groups for GroupMap {
    fn entry(&self, id: i64) -> Option<&StateGroupEntry> {
        self.get(&id)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// The new structure: the original groups with the rewritten entries laid
/// over them. Keeping only the rewritten entries (a few percent of a room)
/// avoids a second copy of every row.
#[derive(Clone, Copy, Debug)]
pub struct Overlay<'a> {
    pub original: &'a GroupMap,
    pub changes: &'a GroupMap,
}

impl Groups for Overlay<'_> {
    fn entry(&self, id: i64) -> Option<&StateGroupEntry> {
        self.changes.get(&id).or_else(|| self.original.get(&id))
    }
    fn count(&self) -> usize {
        self.original.len()
    }
}

/// A group as it was loaded, as far as a writer checks it: a group is
/// rewritten only while its edge and rows are still these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub prev: Option<i64>,
    /// How many rows it had.
    pub rows: usize,
    /// It had no `state_groups` row (see [`StateGroupEntry`]).
    pub missing_group_row: bool,
}

/// The loaded groups a writer checks changes against: the whole map of a
/// run, or what a windowed run kept of it (the changed groups and the
/// groups without a `state_groups` row).
pub trait LoadedGroups: Sync {
    /// How group `id` was loaded, if it was (and was kept).
    fn loaded(&self, id: i64) -> Option<Loaded>;
    /// The digest of the rows of `id` as loaded, as
    /// [`crate::output::sql::rows_digest`] computes it; `None` when not
    /// kept.
    fn rows_digest(&self, id: i64, symbols: &Symbols) -> Option<String>;
}

impl LoadedGroups for GroupMap {
    fn loaded(&self, id: i64) -> Option<Loaded> {
        self.get(&id).map(StateGroupEntry::loaded)
    }
    fn rows_digest(&self, id: i64, symbols: &Symbols) -> Option<String> {
        let entry = self.get(&id)?;
        Some(crate::output::sql::rows_digest(symbols, &entry.delta))
    }
}

impl StateGroupEntry {
    /// How many rows it has in `state_groups_state`.
    pub fn rows(&self) -> usize {
        self.delta.len() + self.repeated_rows as usize
    }

    /// This entry, as a writer checks it.
    pub fn loaded(&self) -> Loaded {
        Loaded {
            prev: self.prev,
            rows: self.rows(),
            missing_group_row: self.missing_group_row,
        }
    }
}

/// Total number of `state_groups_state` rows the map holds.
pub fn row_count(map: &GroupMap) -> usize {
    map.values().map(StateGroupEntry::rows).sum()
}

/// Rows of the new structure: the original's, with each change's rows in
/// place of its group's original rows.
pub fn row_count_after(original: &GroupMap, changes: &GroupMap) -> usize {
    let replaced: usize = changes.keys().map(|id| original[id].rows()).sum();
    row_count(original) - replaced + row_count(changes)
}

/// Rows of the in-range groups (those a run may rewrite) before and after
/// the changes: the figures of what a run compressed, leaving out the level
/// heads and predecessors that were loaded only to resolve states (an
/// earlier chunk's groups, counted there).
pub fn in_range_row_counts(original: &GroupMap, changes: &GroupMap) -> (usize, usize) {
    let before: usize = original
        .values()
        .filter(|e| e.in_range)
        .map(StateGroupEntry::rows)
        .sum();
    let replaced: usize = changes.keys().map(|id| original[id].rows()).sum();
    (before, before - replaced + row_count(changes))
}

/// The groups whose new edge or rows really differ from the original,
/// ascending. These are the only groups a run writes.
pub fn changed_groups(original: &GroupMap, changes: &GroupMap) -> Vec<i64> {
    changes
        .iter()
        .filter(|(id, new)| {
            original
                .get(id)
                .is_none_or(|old| old.prev != new.prev || old.delta != new.delta)
        })
        .map(|(&id, _)| id)
        .collect()
}
