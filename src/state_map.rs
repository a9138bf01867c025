//! Interned state keys and the compact, sorted map a group's delta is kept in.
//!
//! Types, state keys and event ids repeat across millions of rows, so they are
//! interned with `string_cache`: a row costs three pointer-sized atoms and
//! comparing two values is usually one integer comparison.

use std::collections::HashMap;

/// An interned string (type, state key or event id).
pub type Atom = string_cache::DefaultAtom;

/// The key of a state entry: the event type and its state key.
pub type StateKey = (Atom, Atom);

/// A group's resolved state, keyed for fast lookup while resolving.
pub type FullState = HashMap<StateKey, Atom>;

/// A set of state entries (a group's delta), sorted by key with unique keys.
///
/// A sorted vector is smaller than a hash map for the one- or two-row deltas
/// that make up most groups, iterates in a stable order (so SQL output is
/// deterministic) and compares for equality cheaply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMap {
    entries: Vec<(StateKey, Atom)>,
}

impl StateMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from entries in any order. When a key repeats, the last
    /// value wins (the database has no unique constraint on the rows).
    pub fn from_unsorted(mut entries: Vec<(StateKey, Atom)>) -> Self {
        // Stable sort keeps the insertion order of duplicates, so the last one
        // inserted stays last and wins in dedup below.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(StateKey, Atom)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match out.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => out.push(entry),
            }
        }
        out.shrink_to_fit();
        Self { entries: out }
    }

    /// Builds the map of every entry of a resolved state.
    pub fn from_full(state: &FullState) -> Self {
        Self::from_unsorted(state.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Number of entries (rows in `state_groups_state`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&StateKey, &Atom)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Looks up one key.
    pub fn get(&self, key: &StateKey) -> Option<&Atom> {
        self.entries
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    /// Writes every entry over `state` (applying this delta).
    pub fn apply_to(&self, state: &mut FullState) {
        for (k, v) in &self.entries {
            state.insert(k.clone(), v.clone());
        }
    }
}

/// Makes a key from two strings.
pub fn key(ty: &str, state_key: &str) -> StateKey {
    (Atom::from(ty), Atom::from(state_key))
}
