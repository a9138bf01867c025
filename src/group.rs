//! State groups as the compressor sees them: a predecessor and a delta.

use std::collections::BTreeMap;

use crate::state_map::StateMap;

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
}

/// All groups of a run, by id. Ascending id order is the order the
/// compressor visits them and the order changes must be applied in.
pub type GroupMap = BTreeMap<i64, StateGroupEntry>;

/// Total number of `state_groups_state` rows the map holds.
pub fn row_count(map: &GroupMap) -> usize {
    map.values().map(|e| e.delta.len()).sum()
}

/// The groups whose entry differs between `original` and `new`, ascending.
/// These are the only groups a run writes.
pub fn changed_groups(original: &GroupMap, new: &GroupMap) -> Vec<i64> {
    original
        .iter()
        .filter(|(id, old)| new.get(id) != Some(old))
        .map(|(&id, _)| id)
        .collect()
}
