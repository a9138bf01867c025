//! Interned state entries: per-run symbol tables and the compact maps built
//! on them.
//!
//! A big room repeats the same few thousand (type, state_key) pairs and event
//! ids across millions of rows. Each distinct string is stored once and rows
//! refer to it by a 32-bit id, so a row costs 8
//! bytes (key id, event id) and resolving or comparing states is integer
//! work.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// A (type, state_key) pair, as an index into [`Symbols`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(u32);

/// An event id, as an index into [`Symbols`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueId(u32);

/// A hasher for small integer ids: one multiply, no SipHash rounds.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Hash-map builder for id keys.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// A group's resolved state: key to event.
pub type FullState = HashMap<KeyId, ValueId, IdBuildHasher>;

/// The strings of one run, by id.
///
/// Each distinct string is stored once; a hash table of ids (hashed with
/// hashbrown's default, foldhash, seeded per process) finds the id of a
/// string seen before. Interning runs three times per row read, so this
/// table is the hottest code of a load: it measured about twice as fast as
/// a `HashMap<Box<str>, u32>` with SipHash in front of a global atom set.
#[derive(Clone, Default)]
pub struct Symbols {
    hasher: hashbrown::DefaultHashBuilder,
    string_ids: hashbrown::HashTable<u32>,
    strings: Vec<Box<str>>,
    key_ids: HashMap<(u32, u32), KeyId, IdBuildHasher>,
    keys: Vec<(u32, u32)>,
    /// About how much memory the tables hold (for budgets).
    bytes: usize,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("strings", &self.strings.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Symbols {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    fn string(&mut self, text: &str) -> u32 {
        let hash = self.hasher.hash_one(text);
        let (strings, hasher) = (&self.strings, &self.hasher);
        let entry = self.string_ids.entry(
            hash,
            |&id| &*strings[id as usize] == text,
            |&id| hasher.hash_one(&*strings[id as usize]),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(found) => *found.get(),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                let id = u32::try_from(strings.len()).expect("fewer than 2^32 distinct strings");
                slot.insert(id);
                self.strings.push(text.into());
                // The string, its box and its slot in the hash table.
                self.bytes += text.len() + 24;
                id
            }
        }
    }

    /// The id of a (type, state_key) pair, interning it if new.
    pub fn key(&mut self, ty: &str, state_key: &str) -> KeyId {
        let parts = (self.string(ty), self.string(state_key));
        if let Some(&id) = self.key_ids.get(&parts) {
            return id;
        }
        let id = KeyId(u32::try_from(self.keys.len()).expect("fewer than 2^32 distinct keys"));
        self.keys.push(parts);
        self.key_ids.insert(parts, id);
        self.bytes += 28;
        id
    }

    /// The id of an event id, interning it if new.
    pub fn value(&mut self, event_id: &str) -> ValueId {
        ValueId(self.string(event_id))
    }

    /// Gives back the tables' spare capacity (for a table kept long).
    pub fn shrink_to_fit(&mut self) {
        let (strings, hasher) = (&self.strings, &self.hasher);
        self.string_ids
            .shrink_to_fit(|&id| hasher.hash_one(&*strings[id as usize]));
        self.strings.shrink_to_fit();
        self.key_ids.shrink_to_fit();
        self.keys.shrink_to_fit();
    }

    /// About how many bytes the tables hold: the strings and, roughly,
    /// their entries in the tables (spare capacity not counted).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The (type, state_key) strings of a key.
    pub fn key_str(&self, key: KeyId) -> (&str, &str) {
        let (ty, state_key) = self.keys[key.0 as usize];
        (
            &self.strings[ty as usize],
            &self.strings[state_key as usize],
        )
    }

    /// The event id string of a value.
    pub fn value_str(&self, value: ValueId) -> &str {
        &self.strings[value.0 as usize]
    }
}

/// A set of state entries (a group's delta), sorted by key id with unique
/// keys, stored in an exactly-sized boxed slice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMap {
    entries: Box<[(KeyId, ValueId)]>,
}

impl StateMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from entries in any order. When a key repeats, the last
    /// value wins (the database has no unique constraint on the rows).
    /// Returns the map and how many duplicates were dropped.
    pub fn from_unsorted(mut entries: Vec<(KeyId, ValueId)>) -> (Self, usize) {
        let before = entries.len();
        // Stable: duplicates keep their order, so the last one read is last.
        entries.sort_by_key(|e| e.0);
        let mut kept = 0;
        for i in 0..entries.len() {
            if kept > 0 && entries[kept - 1].0 == entries[i].0 {
                entries[kept - 1] = entries[i];
            } else {
                entries[kept] = entries[i];
                kept += 1;
            }
        }
        entries.truncate(kept);
        (
            Self {
                entries: entries.into_boxed_slice(),
            },
            before - kept,
        )
    }

    /// The entries of `state` that `keep` accepts, sorted.
    pub fn from_full_filtered(
        state: &FullState,
        mut keep: impl FnMut(KeyId, ValueId) -> bool,
    ) -> Self {
        let entries: Vec<_> = state
            .iter()
            .map(|(&k, &v)| (k, v))
            .filter(|&(k, v)| keep(k, v))
            .collect();
        Self::from_unsorted(entries).0
    }

    /// Every entry of a resolved state.
    pub fn from_full(state: &FullState) -> Self {
        Self::from_full_filtered(state, |_, _| true)
    }

    /// Number of entries (rows in `state_groups_state`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in key-id order.
    pub fn iter(&self) -> impl Iterator<Item = (KeyId, ValueId)> + '_ {
        self.entries.iter().copied()
    }

    /// Looks up one key.
    pub fn get(&self, key: KeyId) -> Option<ValueId> {
        self.entries
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// Writes every entry over `state` (applying this delta).
    pub fn apply_to(&self, state: &mut FullState) {
        state.extend(self.entries.iter().copied());
    }
}
