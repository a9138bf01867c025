//! Resolving a group's full state from its chain of deltas, the way Synapse
//! reads it: walk the predecessors to a root and let nearer groups win.
//!
//! The groups that need resolving come in id order along shared chains, so a
//! [`Resolver`] keeps the last few states it built and starts from the
//! nearest cached ancestor instead of from the root each time.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::core::group::Groups;
use crate::core::state_map::FullState;
use crate::error::{Error, Result};

/// How many resolved states a resolver keeps.
const CACHE_SIZE: usize = 8;

/// Resolves states in one structure, reusing recent results.
pub struct Resolver<'a, G: Groups> {
    groups: &'a G,
    cache: VecDeque<(i64, Arc<FullState>)>,
    /// How many states `cache` keeps.
    keep: usize,
}

impl<'a, G: Groups> Resolver<'a, G> {
    /// A resolver over `groups` with an empty cache.
    pub fn new(groups: &'a G) -> Self {
        Self::keeping(groups, CACHE_SIZE)
    }

    /// A resolver that keeps only the last `keep` states (at least one):
    /// each costs memory in proportion to the room's state, which a
    /// caller resolving mostly consecutive groups need not pay for.
    pub fn keeping(groups: &'a G, keep: usize) -> Self {
        let keep = keep.max(1);
        Self {
            groups,
            cache: VecDeque::with_capacity(keep),
            keep,
        }
    }

    fn cached(&self, id: i64) -> Option<&Arc<FullState>> {
        self.cache.iter().find(|(g, _)| *g == id).map(|(_, s)| s)
    }

    /// The full state of `group`.
    ///
    /// Fails (rather than panicking) when the chain leaves the loaded groups
    /// or loops, which only happens on a damaged structure.
    pub fn state(&mut self, group: i64) -> Result<Arc<FullState>> {
        if let Some(state) = self.cached(group) {
            return Ok(Arc::clone(state));
        }
        let mut chain = Vec::new();
        let mut start: Option<&Arc<FullState>> = None;
        let mut current = Some(group);
        while let Some(id) = current {
            if let Some(state) = self.cached(id) {
                start = Some(state);
                break;
            }
            let entry = self.groups.entry(id).ok_or_else(|| {
                Error::Damaged(format!(
                    "state group {id} (in the chain of {group}) was not loaded"
                ))
            })?;
            if chain.len() > self.groups.count() {
                return Err(Error::Damaged(format!(
                    "the predecessor chain of state group {group} loops"
                )));
            }
            chain.push(entry);
            current = entry.prev;
        }
        let mut state = match start {
            Some(base) => FullState::clone(base),
            None => FullState::default(),
        };
        for entry in chain.iter().rev() {
            entry.delta.apply_to(&mut state);
        }
        let state = Arc::new(state);
        if self.cache.len() >= self.keep {
            self.cache.pop_front();
        }
        self.cache.push_back((group, Arc::clone(&state)));
        Ok(state)
    }
}

/// The full state of `group` in `groups`, without caching.
pub fn full_state<G: Groups>(groups: &G, group: i64) -> Result<FullState> {
    Resolver::new(groups)
        .state(group)
        .map(|s| Arc::try_unwrap(s).unwrap_or_else(|s| (*s).clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::group::{GroupMap, StateGroupEntry};
    use crate::core::state_map::{StateMap, Symbols};

    #[test]
    fn nearer_groups_win_and_missing_links_are_errors() {
        let mut sym = Symbols::new();
        let member = sym.key("m.room.member", "@a");
        let topic = sym.key("m.room.topic", "");
        let (e1, e2, e3) = (sym.value("$1"), sym.value("$2"), sym.value("$3"));
        let mut map = GroupMap::new();
        map.insert(
            1,
            StateGroupEntry {
                in_range: true,
                prev: None,
                delta: StateMap::from_unsorted(vec![(member, e1), (topic, e2)]),
                missing_group_row: false,
                repeated_rows: 0,
            },
        );
        map.insert(
            2,
            StateGroupEntry {
                in_range: true,
                prev: Some(1),
                delta: StateMap::from_unsorted(vec![(topic, e3)]),
                missing_group_row: false,
                repeated_rows: 0,
            },
        );
        let mut resolver = Resolver::new(&map);
        let state = resolver.state(2).unwrap();
        assert_eq!(state.len(), 2);
        assert_eq!(state.get(topic), Some(e3));
        assert_eq!(resolver.state(1).unwrap().get(topic), Some(e2));
        assert_eq!(*resolver.state(2).unwrap(), full_state(&map, 2).unwrap());

        map.insert(
            3,
            StateGroupEntry {
                in_range: true,
                prev: Some(9),
                delta: StateMap::new(),
                missing_group_row: false,
                repeated_rows: 0,
            },
        );
        assert!(matches!(full_state(&map, 3), Err(Error::Damaged(_))));
    }
}
