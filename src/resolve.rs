//! Resolving a group's full state from its chain of deltas, the way Synapse
//! reads it: walk the predecessors to a root and let nearer groups win.

use crate::error::{Error, Result};
use crate::group::GroupMap;
use crate::state_map::FullState;

/// The full state of `group` in `map`.
///
/// Fails (rather than panicking) when the chain leaves the map or loops,
/// which only happens on a damaged structure.
pub fn full_state(map: &GroupMap, group: i64) -> Result<FullState> {
    let mut chain = Vec::new();
    let mut rows = 0;
    let mut current = Some(group);
    while let Some(id) = current {
        let entry = map.get(&id).ok_or_else(|| {
            Error::Damaged(format!(
                "state group {id} (in the chain of {group}) was not loaded"
            ))
        })?;
        if chain.len() > map.len() {
            return Err(Error::Damaged(format!(
                "the predecessor chain of state group {group} loops"
            )));
        }
        rows += entry.delta.len();
        chain.push(entry);
        current = entry.prev;
    }
    let mut state = FullState::with_capacity(rows);
    for entry in chain.iter().rev() {
        entry.delta.apply_to(&mut state);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::StateGroupEntry;
    use crate::state_map::{key, Atom, StateMap};

    #[test]
    fn nearer_groups_win_and_missing_links_are_errors() {
        let mut map = GroupMap::new();
        map.insert(
            1,
            StateGroupEntry {
                in_range: true,
                prev: None,
                delta: StateMap::from_unsorted(vec![
                    (key("m.room.member", "@a"), Atom::from("$1")),
                    (key("m.room.topic", ""), Atom::from("$2")),
                ]),
            },
        );
        map.insert(
            2,
            StateGroupEntry {
                in_range: true,
                prev: Some(1),
                delta: StateMap::from_unsorted(vec![(key("m.room.topic", ""), Atom::from("$3"))]),
            },
        );
        let state = full_state(&map, 2).unwrap();
        assert_eq!(state.len(), 2);
        assert_eq!(state[&key("m.room.topic", "")], Atom::from("$3"));

        map.insert(
            3,
            StateGroupEntry {
                in_range: true,
                prev: Some(9),
                delta: StateMap::new(),
            },
        );
        assert!(matches!(full_state(&map, 3), Err(Error::Damaged(_))));
    }
}
