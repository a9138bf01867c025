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

/// A group's resolved state: the event of each key, by key id.
///
/// Dense, indexed by key id: the ids of a table are `0..n`, one table
/// holds one room's strings, and a room's states share most of its keys,
/// so a vector of `n` slots is about as small as a hash map of the state
/// and needs no hashing. Resolving applies every delta of a chain to one
/// of these and the compressor and verification resolve each group, so
/// this was the writers' largest single cost as a hash map (a seventh of
/// their CPU on `20m`).
#[derive(Clone, Debug, Default)]
pub struct FullState {
    /// The value of key id `i`, or [`ABSENT`]; keys past the end are absent.
    values: Vec<ValueId>,
    /// How many keys are present.
    len: usize,
}

/// The slot of a key the state lacks ([`Symbols`] never hands out this id).
const ABSENT: ValueId = ValueId(u32::MAX);

impl FullState {
    /// Number of keys present.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is present.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The event of `key`, if present.
    pub fn get(&self, key: KeyId) -> Option<ValueId> {
        self.values
            .get(key.0 as usize)
            .copied()
            .filter(|&v| v != ABSENT)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: KeyId) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: KeyId, value: ValueId) {
        let i = key.0 as usize;
        if i >= self.values.len() {
            self.values.resize(i + 1, ABSENT);
        }
        if self.values[i] == ABSENT {
            self.len += 1;
        }
        self.values[i] = value;
    }

    /// The entries present, in key-id order.
    pub fn iter(&self) -> impl Iterator<Item = (KeyId, ValueId)> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter(|&(_, &v)| v != ABSENT)
            .map(|(i, &v)| (KeyId(i as u32), v))
    }

    /// True when every key present here is present in `other`.
    pub fn keys_within(&self, other: &FullState) -> bool {
        self.len <= other.len
            && self
                .values
                .iter()
                .enumerate()
                .all(|(i, &v)| v == ABSENT || other.values.get(i).is_some_and(|&w| w != ABSENT))
    }
}

impl PartialEq for FullState {
    fn eq(&self, other: &Self) -> bool {
        let common = self.values.len().min(other.values.len());
        let beyond = |values: &[ValueId]| values[common..].iter().all(|&v| v == ABSENT);
        self.len == other.len
            && self.values[..common] == other.values[..common]
            && beyond(&self.values)
            && beyond(&other.values)
    }
}

impl Eq for FullState {}

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
                // u32::MAX is kept for a key a state lacks (`FullState`).
                let id = u32::try_from(strings.len())
                    .ok()
                    .filter(|&id| id != ABSENT.0)
                    .expect("fewer than 2^32 - 1 distinct strings");
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

/// Interning for groups read one after the other, that mostly repeat an
/// earlier group's rows in the same order.
///
/// Synapse stores a room's whole state again every hundred or so groups,
/// so nearly every row of a big room is a row of its previous snapshot
/// once more, and read through Synapse's index a group's rows come in key
/// order. Each row is first compared with the rows at the same place in
/// the room's last big group, whose strings were just used (in the CPU's
/// cache), and only a row that differs is looked up in the table (hashing
/// each string whole, then a slot and a string stored apart). Interning
/// was the reading thread's largest cost on `20m`'s biggest room; this cut
/// the manual tool's CPU by about a quarter there. A row is taken as found
/// only when its strings are equal, so the ids are the ones [`Symbols`]
/// gives: only the time changes.
#[derive(Debug, Default)]
pub struct Echo {
    /// The rows of the last group at least half as big as the one before.
    model: Vec<(KeyId, ValueId)>,
    /// Where the group being read has got to in `model`.
    cursor: usize,
    /// The rows of the group being read.
    current: Vec<(KeyId, ValueId)>,
}

impl Echo {
    /// The next rows are another group's.
    pub fn next_group(&mut self) {
        // A small delta leaves the last snapshot as the model.
        if !self.current.is_empty() && self.current.len() * 2 >= self.model.len() {
            std::mem::swap(&mut self.model, &mut self.current);
        }
        self.current.clear();
        self.cursor = 0;
    }

    /// The ids of one row of the group being read, from `symbols`.
    pub fn row(
        &mut self,
        symbols: &mut Symbols,
        ty: &str,
        state_key: &str,
        event_id: &str,
    ) -> (KeyId, ValueId) {
        // The row in the model's place, or the one after it (a key the
        // group no longer has); a key the model lacks leaves the place.
        let ahead = self.model.get(self.cursor..).unwrap_or_default();
        let found = ahead
            .iter()
            .take(2)
            .position(|&(key, _)| symbols.key_str(key) == (ty, state_key));
        let ids = match found {
            Some(skip) => {
                let (key, value) = ahead[skip];
                self.cursor += skip + 1;
                if symbols.value_str(value) == event_id {
                    (key, value)
                } else {
                    (key, symbols.value(event_id))
                }
            }
            None => (symbols.key(ty, state_key), symbols.value(event_id)),
        };
        self.current.push(ids);
        ids
    }

    /// About the memory it holds.
    pub fn bytes(&self) -> usize {
        (self.model.capacity() + self.current.capacity()) * std::mem::size_of::<(KeyId, ValueId)>()
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

    /// Builds a map from a group's rows as stored, in any order. The table
    /// has no unique constraint, so a row may repeat: an exact repeat (same
    /// key, same event) says nothing new and is dropped, and how many were
    /// is returned with the map. A key with two different events has no
    /// one state (Synapse's read takes whichever row comes first): that key
    /// is the error.
    pub fn from_rows(mut rows: Vec<(KeyId, ValueId)>) -> Result<(Self, usize), KeyId> {
        rows.sort_unstable();
        let mut kept = 0;
        for i in 0..rows.len() {
            if kept > 0 && rows[kept - 1].0 == rows[i].0 {
                if rows[kept - 1].1 != rows[i].1 {
                    return Err(rows[i].0);
                }
                continue;
            }
            rows[kept] = rows[i];
            kept += 1;
        }
        let repeats = rows.len() - kept;
        rows.truncate(kept);
        Ok((
            Self {
                entries: rows.into_boxed_slice(),
            },
            repeats,
        ))
    }

    /// Builds a map from entries in any order (a group's rows as the
    /// database has them go through [`StateMap::from_rows`]). When a key
    /// repeats, the last value wins.
    pub fn from_unsorted(mut entries: Vec<(KeyId, ValueId)>) -> Self {
        // Stable: duplicates keep their order, so the last one given is last.
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
        Self {
            entries: entries.into_boxed_slice(),
        }
    }

    /// The entries of `state` that `keep` accepts, sorted.
    pub fn from_full_filtered(
        state: &FullState,
        mut keep: impl FnMut(KeyId, ValueId) -> bool,
    ) -> Self {
        // In key order already, with unique keys.
        let entries: Vec<_> = state.iter().filter(|&(k, v)| keep(k, v)).collect();
        Self {
            entries: entries.into_boxed_slice(),
        }
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
        for &(key, value) in self.entries.iter() {
            state.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_that_repeat_exactly_are_dropped_and_a_key_with_two_events_is_refused() {
        let mut symbols = Symbols::new();
        let name = symbols.key("m.room.name", "");
        let member = symbols.key("m.room.member", "@a:x");
        let (a, b) = (symbols.value("$a"), symbols.value("$b"));
        let (map, repeats) =
            StateMap::from_rows(vec![(member, b), (name, a), (member, b), (member, b)])
                .expect("exact repeats only");
        assert_eq!(repeats, 2);
        assert_eq!(map.iter().collect::<Vec<_>>(), [(name, a), (member, b)]);
        assert_eq!(
            StateMap::from_rows(vec![(member, a), (name, a), (member, b)]),
            Err(member)
        );
        assert_eq!(StateMap::from_rows(Vec::new()), Ok((StateMap::new(), 0)));
    }

    /// Groups as (type, state_key, event_id) rows, read in turn.
    fn groups() -> Vec<Vec<(&'static str, &'static str, &'static str)>> {
        let snapshot = vec![
            ("m.room.create", "", "$create"),
            ("m.room.member", "@a:x", "$a1"),
            ("m.room.member", "@b:x", "$b1"),
            ("m.room.member", "@c:x", "$c1"),
            ("m.room.name", "", "$name"),
        ];
        // The next snapshot: @b left the state, @bb joined, @c changed.
        let mut next = snapshot.clone();
        next[2] = ("m.room.member", "@bb:x", "$bb1");
        next[3].2 = "$c2";
        let shifted = vec![
            ("m.room.member", "@a:x", "$a1"),
            ("m.room.member", "@c:x", "$c2"),
            ("m.room.topic", "", "$topic"),
        ];
        vec![
            snapshot.clone(),
            vec![("m.room.member", "@d:x", "$d1")],
            next,
            vec![("m.room.member", "@a:x", "$a2")],
            shifted,
            snapshot,
        ]
    }

    /// One group's rows through `echo`.
    fn read(
        echo: &mut Echo,
        symbols: &mut Symbols,
        group: &[(&str, &str, &str)],
    ) -> Vec<(KeyId, ValueId)> {
        echo.next_group();
        group
            .iter()
            .map(|&(ty, state_key, event_id)| echo.row(symbols, ty, state_key, event_id))
            .collect()
    }

    #[test]
    fn echo_gives_the_ids_the_table_gives() {
        let mut plain = Symbols::new();
        let mut echoed = Symbols::new();
        let mut echo = Echo::default();
        for group in groups() {
            let read = read(&mut echo, &mut echoed, &group);
            for (&(ty, state_key, event_id), &ids) in group.iter().zip(&read) {
                assert_eq!(ids, (plain.key(ty, state_key), plain.value(event_id)));
                assert_eq!(echoed.key_str(ids.0), (ty, state_key));
                assert_eq!(echoed.value_str(ids.1), event_id);
            }
        }
        assert_eq!(echoed.strings, plain.strings);
        assert_eq!(echoed.keys, plain.keys);
    }

    #[test]
    fn a_full_state_counts_compares_and_nests_by_present_keys() {
        let (k0, k1, k5) = (KeyId(0), KeyId(1), KeyId(5));
        let (v1, v2) = (ValueId(1), ValueId(2));
        let mut short = FullState::default();
        short.insert(k1, v1);
        let mut long = FullState::default();
        long.insert(k1, v2);
        long.insert(k1, v1);
        // Slots past the short state's end, all absent, do not count.
        long.values.resize(9, ABSENT);
        assert_eq!(long.len(), 1);
        assert_eq!(short, long);
        assert_eq!(long, short);
        assert!(short.keys_within(&long) && long.keys_within(&short));

        long.insert(k5, v2);
        assert_ne!(short, long);
        assert_ne!(long, short);
        assert!(short.keys_within(&long));
        assert!(!long.keys_within(&short));
        assert_eq!(long.get(k5), Some(v2));
        assert_eq!(long.get(k0), None);
        assert_eq!(long.get(KeyId(40)), None);
        assert_eq!(long.iter().collect::<Vec<_>>(), [(k1, v1), (k5, v2)]);

        // The same keys with another value: equal counts, not equal states.
        let mut other = short.clone();
        other.insert(k1, v2);
        assert_ne!(short, other);
        assert!(other.keys_within(&short));
    }

    #[test]
    fn a_small_delta_keeps_the_snapshot_as_the_model() {
        let mut symbols = Symbols::new();
        let mut echo = Echo::default();
        for group in groups().into_iter().take(2) {
            read(&mut echo, &mut symbols, &group);
        }
        echo.next_group();
        assert_eq!(echo.model.len(), 5);
    }
}
