//! Carrying a room's new structure from one of its chunks to the next.
//!
//! A chunk continues from its room's saved levels: their heads, and every
//! group up the heads' edges, are loaded with it, never rewritten, so the
//! compressor can build on their states (and, when a head cannot be a
//! group's base, walk up its edges). After a chunk is written, those groups
//! are in memory already, exactly as the write left them: the heads' new
//! chains are a few hundred groups, but reading them again for every chunk
//! of a room was a fifth of all the rows the automatic tool read.
//!
//! So a run keeps, per room, a [`Carry`]: the groups the new levels' heads
//! reach, as the chunk just written left them. The room's next chunk is
//! loaded with them as known groups (`db::load::load_groups_after`), which
//! loads only what they do not cover. A carry is used only when the room's
//! progress, read under its lock, is still the one the carry was made with
//! (another compressor may have worked on the room in between), and only
//! after a write that Synapse did not interfere with (a group left as
//! Synapse rewrote it would differ from the carried one).
//!
//! Why the groups can be taken from memory at all: no writer ever changes
//! the state of a group, so the carried states stay right; a carried group
//! Synapse deletes meanwhile is caught by the write, which locks every new
//! base and leaves a group alone when its base is gone, as it does for a
//! group deleted between any load and write.
//!
//! The survey (`--dry-run`) carries the same groups, where they stand in
//! for the edges a real run would have written.
//!
//! Memory: the carries of a run hold at most [`CARRY_ROWS`] rows in all;
//! beyond that, those of the rooms needed last are dropped (their rooms'
//! next chunks read the groups from the database, as before). The pass
//! (`crate::pass`) has every room of the run under way at once, so it lets
//! them hold as many rows as its memory budget (`--pass-memory`) pays for
//! ([`Carries::raise_for_pass`]): out of cache, a dropped carry means its
//! room's next chunk reads the heads' chains back by index, at random. On
//! `20m` in 256 MiB that was 32 s of a 90 s run (docs/reading.md).

use std::collections::BTreeSet;
use std::sync::Arc;

use synapse_compress_state::core::group::StateGroupEntry;
use synapse_compress_state::core::state_map::{StateMap, Symbols};
use synapse_compress_state::{Error, GroupMap, Level, Result};

use crate::room_store::{Kept, RoomStore};

/// Most rows the carries of one run keep in memory, whatever the database:
/// about 15 MiB measured at the limit (strings included). On the benchmark's
/// 3-million-row database this much spares over 90% of the re-reading.
pub const CARRY_ROWS: usize = 100_000;

/// The test knob: the most rows the carries of a run may hold, whatever the
/// run (0 drops every carry), so a test can make rooms load what their
/// carries would hold, on small data.
pub const CARRY_ENV: &str = "SYNAPSE_COMPRESS_STATE_CARRY_ROWS";

/// The carries' budget the test knob sets, if it does.
fn carry_rows_set() -> Option<usize> {
    static SET: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var(CARRY_ENV).ok().and_then(|v| v.parse().ok()))
}

/// What a carried row costs in memory, strings and maps included (about
/// 15 MiB for [`CARRY_ROWS`], measured).
const CARRY_ROW_BYTES: u64 = 160;

/// Groups of a room's new structure: the levels' heads and every group up
/// their new edges, with the strings of their rows (each chunk is loaded
/// with its own symbol table).
#[derive(Debug)]
pub struct Carry {
    /// The room position and level heads the chunk saved: the carry
    /// continues exactly that progress.
    last: i64,
    heads: Vec<i64>,
    symbols: Symbols,
    groups: Vec<(i64, StateGroupEntry)>,
    rows: usize,
}

impl Carry {
    /// The groups reachable from `levels`' heads in `original` with
    /// `changes` laid over it (the structure a chunk ending at `last`
    /// leaves).
    pub fn after_chunk(
        original: &GroupMap,
        changes: &GroupMap,
        symbols: &Symbols,
        levels: &[Level],
        last: i64,
    ) -> Result<Carry> {
        let mut own = Symbols::new();
        let mut seen = BTreeSet::new();
        let mut todo = Level::heads(levels);
        let mut groups = Vec::new();
        let mut rows = 0;
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            let entry = changes
                .get(&id)
                .or_else(|| original.get(&id))
                .ok_or_else(|| {
                    Error::Internal(format!("group {id} of the new structure was not loaded"))
                })?;
            todo.extend(entry.prev);
            rows += entry.delta.len();
            groups.push((id, out_of_range(entry, symbols, &mut own)));
        }
        own.shrink_to_fit();
        Ok(Carry {
            last,
            heads: Level::heads(levels),
            symbols: own,
            groups,
            rows,
        })
    }

    /// After a chunk ending at `last` that was skipped (not worth writing):
    /// the room continues with fresh levels, so nothing is built on, but
    /// the next chunk's first groups lead into this one, whose chains are
    /// as Synapse wrote them (up to a hundred groups back to a snapshot,
    /// read again from the database otherwise). So the chain of its last
    /// group, which they mostly lead to, is carried as loaded, as far as
    /// it was loaded.
    pub fn after_skipped(original: &GroupMap, symbols: &Symbols, last: i64) -> Carry {
        let mut own = Symbols::new();
        let mut groups = Vec::new();
        let mut rows = 0;
        let mut next = Some(last);
        while let Some(entry) = next.and_then(|id| original.get(&id).map(|e| (id, e))) {
            let (id, entry) = entry;
            if groups.len() > original.len() {
                break; // a loop (a damaged structure is refused elsewhere)
            }
            rows += entry.delta.len();
            groups.push((id, out_of_range(entry, symbols, &mut own)));
            next = entry.prev;
        }
        own.shrink_to_fit();
        Carry {
            last,
            heads: Vec::new(),
            symbols: own,
            groups,
            rows,
        }
    }

    /// Whether this carry continues a room whose saved progress is
    /// position `last` with level heads `heads`.
    pub fn continues(&self, last: Option<i64>, heads: &[i64]) -> bool {
        last == Some(self.last) && heads == self.heads
    }

    /// The start of the next chunk's load: a symbol table holding the
    /// carried rows' strings (the load adds its own), and the carried
    /// groups in its ids, as loaded groups out of range. A copy, not a
    /// translation: the carry is kept in the ids of its own table.
    pub fn lay_out(&self) -> (Symbols, GroupMap) {
        (self.symbols.clone(), self.groups.iter().cloned().collect())
    }

    /// The carried groups in `symbols`' ids (translated), as loaded groups
    /// out of range: for a chunk whose own groups were read before the
    /// carry existed (the pass, `crate::pass`), into their table.
    pub fn lay_out_into(&self, symbols: &mut Symbols) -> GroupMap {
        self.groups
            .iter()
            .map(|(id, entry)| {
                let mut entry = entry.clone();
                entry.delta = translate(&entry.delta, &self.symbols, symbols);
                (*id, entry)
            })
            .collect()
    }

    /// Rows carried.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// `entry` (in `from`'s ids) as a loaded group out of range, in `to`'s ids:
/// how a group a chunk builds on, but does not rewrite, is handed to it.
pub(crate) fn out_of_range(
    entry: &StateGroupEntry,
    from: &Symbols,
    to: &mut Symbols,
) -> StateGroupEntry {
    StateGroupEntry {
        in_range: false,
        prev: entry.prev,
        delta: translate(&entry.delta, from, to),
        missing_group_row: entry.missing_group_row,
        repeated_rows: entry.repeated_rows,
    }
}

/// `delta` (in `from`'s ids) in `to`'s ids.
pub(crate) fn translate(delta: &StateMap, from: &Symbols, to: &mut Symbols) -> StateMap {
    let entries = delta
        .iter()
        .map(|(key, value)| {
            let (ty, state_key) = from.key_str(key);
            (to.key(ty, state_key), to.value(from.value_str(value)))
        })
        .collect();
    StateMap::from_unsorted(entries)
}

/// A carry as a load request holds it. Two requests are the same only with
/// the very same carry (a load made ahead is used only on an exact match).
#[derive(Clone)]
pub struct CarryRef(Arc<Carry>);

impl CarryRef {
    pub fn new(carry: Carry) -> Self {
        Self(Arc::new(carry))
    }
}

impl std::ops::Deref for CarryRef {
    type Target = Carry;
    fn deref(&self) -> &Carry {
        &self.0
    }
}

impl PartialEq for CarryRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CarryRef {}

impl std::fmt::Debug for CarryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Carry({} groups, {} rows, after {})",
            self.groups.len(),
            self.rows,
            self.last
        )
    }
}

impl Kept for CarryRef {
    fn size(&self) -> usize {
        self.rows
    }
    fn last(&self) -> i64 {
        self.last
    }
}

/// The carries of a run, by room, within [`CARRY_ROWS`] rows
/// ([`RoomStore`]: beyond them, the carries needed last go first).
#[derive(Debug)]
pub struct Carries(RoomStore<CarryRef>);

impl Default for Carries {
    fn default() -> Self {
        Self::with_budget(carry_rows_set().unwrap_or(CARRY_ROWS))
    }
}

impl Carries {
    /// Carries within `budget` rows.
    pub fn with_budget(budget: usize) -> Self {
        Carries(RoomStore::with_budget(budget))
    }

    /// Lets the carries hold as many rows as `bytes` pay for, if that is
    /// more than they may hold now (the pass's budget, `--pass-memory`).
    pub fn raise_for_pass(&mut self, bytes: u64) {
        if carry_rows_set().is_none() {
            self.0
                .raise_budget(usize::try_from(bytes / CARRY_ROW_BYTES).unwrap_or(usize::MAX));
        }
    }

    /// The carry of `room`, if it continues the progress `last`/`heads`.
    pub fn get(&self, room: &str, last: Option<i64>, heads: &[i64]) -> Option<CarryRef> {
        self.0
            .get(room)
            .filter(|carry| carry.continues(last, heads))
            .cloned()
    }

    /// Takes `room`'s carry out (whether or not it still continues the
    /// room's progress: a chunk of the room is about to change it),
    /// returning it if it continues `last`/`heads`.
    pub fn take(&mut self, room: &str, last: Option<i64>, heads: &[i64]) -> Option<CarryRef> {
        self.0
            .take(room)
            .filter(|carry| carry.continues(last, heads))
    }

    /// Keeps `carry` for `room`'s next chunk, dropping the carries needed
    /// last beyond the budget (this one too, if it is).
    pub fn keep(&mut self, room: &str, carry: Carry) {
        self.0.keep(room, CarryRef::new(carry));
    }

    /// Moves `room`'s carry, if any, into carries of its own (for a worker
    /// compressing the room), within the same budget.
    pub fn split_off(&mut self, room: &str) -> Carries {
        Carries(self.0.split_off(room))
    }

    /// Moves `other`'s carries into this one (a worker's, back into the
    /// run's), within this one's budget.
    pub fn merge(&mut self, other: Carries) {
        self.0.merge(other.0);
    }

    /// Rows carried now.
    pub fn rows(&self) -> usize {
        self.0.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test group: id, predecessor, rows (type, state_key, event_id).
    type Group<'a> = (i64, Option<i64>, &'a [(&'a str, &'a str, &'a str)]);

    fn map(entries: &[Group<'_>], symbols: &mut Symbols) -> GroupMap {
        entries
            .iter()
            .map(|&(id, prev, rows)| {
                let delta = rows
                    .iter()
                    .map(|(t, k, v)| (symbols.key(t, k), symbols.value(v)))
                    .collect();
                (
                    id,
                    StateGroupEntry {
                        in_range: true,
                        prev,
                        delta: StateMap::from_unsorted(delta),
                        missing_group_row: false,
                        repeated_rows: 0,
                    },
                )
            })
            .collect()
    }

    fn levels_with_head(head: i64) -> Vec<Level> {
        vec![Level::restore(3, 1, Some(head))]
    }

    /// A carry of `rows` rows (one group) continuing position `last`.
    fn carry(last: i64, rows: usize) -> Carry {
        let mut symbols = Symbols::new();
        let names: Vec<String> = (0..rows).map(|i| format!("k{i}")).collect();
        let entries: Vec<(&str, &str, &str)> =
            names.iter().map(|k| ("m.t", k.as_str(), "$e")).collect();
        let original = map(&[(last, None, &entries)], &mut symbols);
        Carry::after_chunk(
            &original,
            &GroupMap::new(),
            &symbols,
            &levels_with_head(last),
            last,
        )
        .unwrap()
    }

    #[test]
    fn carries_the_heads_chain_of_the_new_structure_in_new_symbols() {
        let mut symbols = Symbols::new();
        let original = map(
            &[
                (1, None, &[("m.a", "", "$1"), ("m.b", "", "$2")]),
                (2, Some(1), &[("m.a", "", "$3")]),
                (3, Some(2), &[("m.b", "", "$4")]),
                (4, Some(3), &[("m.c", "", "$5")]),
            ],
            &mut symbols,
        );
        // The chunk rewrote 3 onto 1; 4 is the head.
        let changes = map(
            &[(3, Some(1), &[("m.a", "", "$3"), ("m.b", "", "$4")])],
            &mut symbols,
        );
        let carry =
            Carry::after_chunk(&original, &changes, &symbols, &levels_with_head(4), 4).unwrap();
        assert_eq!(carry.rows(), 5);
        assert!(carry.continues(Some(4), &[4]));
        assert!(!carry.continues(Some(5), &[4]));
        assert!(!carry.continues(Some(4), &[3]));

        let (other, laid) = carry.lay_out();
        assert_eq!(laid.keys().copied().collect::<Vec<_>>(), vec![1, 3, 4]);
        assert_eq!(laid[&3].prev, Some(1));
        assert!(laid.values().all(|e| !e.in_range));
        let rows: BTreeSet<_> = laid[&3]
            .delta
            .iter()
            .map(|(k, v)| (other.key_str(k), other.value_str(v).to_owned()))
            .collect();
        assert_eq!(
            rows,
            BTreeSet::from([
                (("m.a", ""), "$3".to_owned()),
                (("m.b", ""), "$4".to_owned())
            ])
        );
    }

    #[test]
    fn a_carry_is_used_only_for_the_progress_it_continues_and_only_once() {
        let mut carries = Carries::with_budget(100);
        carries.keep("!a", carry(10, 5));
        assert!(carries.get("!a", Some(10), &[10]).is_some());
        assert!(carries.get("!a", Some(11), &[10]).is_none());
        assert!(carries.take("!a", Some(9), &[10]).is_none());
        // Taken out even when it no longer fits: the room has moved on.
        assert!(carries.get("!a", Some(10), &[10]).is_none());
        assert_eq!(carries.rows(), 0);
        carries.keep("!a", carry(10, 5));
        assert!(carries.take("!a", Some(10), &[10]).is_some());
        assert!(carries.take("!a", Some(10), &[10]).is_none());
    }

    #[test]
    fn the_carries_needed_last_go_first_beyond_the_budget() {
        let mut carries = Carries::with_budget(100);
        carries.keep("!a", carry(10, 40));
        carries.keep("!b", carry(20, 40));
        carries.keep("!a", carry(30, 30));
        assert_eq!(carries.rows(), 70);
        carries.keep("!c", carry(5, 50));
        // !a's chunk ended at the highest group: it goes.
        assert!(carries.get("!a", Some(30), &[30]).is_none());
        assert!(carries.get("!b", Some(20), &[20]).is_some());
        assert!(carries.get("!c", Some(5), &[5]).is_some());
        assert_eq!(carries.rows(), 90);
        // Needed last itself: not kept.
        carries.keep("!d", carry(40, 20));
        assert!(carries.get("!d", Some(40), &[40]).is_none());
        carries.keep("!e", carry(1, 101));
        assert!(carries.get("!e", Some(1), &[1]).is_none());
        assert_eq!(carries.rows(), 90);

        let mut run = Carries::with_budget(60);
        run.merge(carries);
        assert!(run.get("!c", Some(5), &[5]).is_some());
        assert!(run.get("!b", Some(20), &[20]).is_none());
        assert_eq!(run.rows(), 50);
    }
}
