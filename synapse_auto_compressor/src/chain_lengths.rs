//! Chain lengths before the run (and after each group's own chunk), kept
//! for rooms' next chunks within a budget.
//!
//! The "longest chain before" of a room's later chunk runs through groups of
//! its earlier chunks, which the database already shows rewritten, so the
//! lengths those groups had before the run are kept here. Its "longest
//! chain after" runs through them too, and with the pass's sweep
//! (`crate::pass`) the database may not show them rewritten yet, so the
//! lengths they have after their own chunk are kept beside. Kept for every
//! group of the run, they grew with the database (on the benchmark's 1.7
//! million groups, keeping them all made the run's peak 115 MiB instead of
//! 101). So:
//!
//! - a room keeps the lengths of its last [`PER_ROOM`] groups only: a group
//!   builds on a recent one (on the benchmark's data, at most 363 of the
//!   room's groups back), so the next chunk's chains leave it through
//!   those;
//! - a room's lengths go when it is finished (a chunk with nothing after
//!   it);
//! - beyond [`LENGTHS`] in all, the rooms needed last go first: those whose
//!   chunk ended at the highest group, as the run scans by group id.
//!
//! A chain through a forgotten group (a group building on an old one, as a
//! backfilled event's may) is counted along the structure the database
//! holds, as for a group compressed by an earlier run: the figure can then
//! be off, higher or lower. Nothing else depends on these lengths.

use std::collections::HashMap;

use crate::room_store::{Kept, RoomStore};

/// Most lengths kept for all rooms together (16 bytes each: 16 MiB).
pub const LENGTHS: usize = 1_000_000;

/// Most lengths kept for one room: those of its highest groups.
pub const PER_ROOM: usize = 1_000;

/// Groups' chain lengths before the run, and after their own chunk's
/// rewrite, by group id.
pub type Lengths = HashMap<i64, Length>;

/// A group's chain length before the run and after its chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Length {
    pub before: u32,
    pub after: u32,
}

/// One room's lengths.
#[derive(Debug)]
struct RoomLengths {
    /// The last group of the chunk that kept them.
    last: i64,
    /// By ascending group id.
    lengths: Box<[(i64, Length)]>,
}

impl Kept for RoomLengths {
    fn size(&self) -> usize {
        self.lengths.len()
    }
    fn last(&self) -> i64 {
        self.last
    }
}

/// Rooms' lengths, by room, within [`LENGTHS`] ([`RoomStore`]).
#[derive(Debug)]
pub struct ChainLengths {
    rooms: RoomStore<RoomLengths>,
    per_room: usize,
}

impl Default for ChainLengths {
    fn default() -> Self {
        Self::with_budget(LENGTHS, PER_ROOM)
    }
}

impl ChainLengths {
    /// No lengths, at most `budget` kept, `per_room` for one room.
    pub fn with_budget(budget: usize, per_room: usize) -> Self {
        ChainLengths {
            rooms: RoomStore::with_budget(budget),
            per_room,
        }
    }

    /// Takes `room`'s lengths (none if none are kept).
    pub fn take(&mut self, room: &str) -> Lengths {
        match self.rooms.take(room) {
            Some(kept) => kept.lengths.iter().copied().collect(),
            None => Lengths::new(),
        }
    }

    /// Keeps `lengths` (those of the room's highest groups) for `room`'s
    /// next chunk, after its chunk ending at `last`, within the budget.
    pub fn keep(&mut self, room: &str, last: i64, lengths: Lengths) {
        let mut sorted: Vec<(i64, Length)> = lengths.into_iter().collect();
        sorted.sort_unstable_by_key(|(id, _)| *id);
        let cut = sorted.len().saturating_sub(self.per_room);
        let lengths: Box<[(i64, Length)]> = sorted.drain(cut..).collect();
        if lengths.is_empty() {
            self.rooms.take(room);
        } else {
            self.rooms.keep(room, RoomLengths { last, lengths });
        }
    }

    /// `room`'s lengths as a store of their own (a worker's, `--jobs`).
    pub fn split_off(&mut self, room: &str) -> ChainLengths {
        ChainLengths {
            rooms: self.rooms.split_off(room),
            per_room: self.per_room,
        }
    }

    /// Moves `other`'s lengths into this store, within its budget.
    pub fn merge(&mut self, other: ChainLengths) {
        self.rooms.merge(other.rooms);
    }

    /// Lengths kept now.
    pub fn len(&self) -> usize {
        self.rooms.total()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(ids: std::ops::Range<i64>) -> Lengths {
        ids.map(|id| {
            let n = id as u32;
            (
                id,
                Length {
                    before: n,
                    after: n / 2,
                },
            )
        })
        .collect()
    }

    #[test]
    fn drops_the_rooms_needed_last_beyond_the_budget() {
        let mut store = ChainLengths::with_budget(10, 10);
        store.keep("!a", 40, lengths(0..4));
        store.keep("!b", 20, lengths(10..14));
        store.keep("!c", 30, lengths(20..24));
        // 12 > 10: "!a" ended highest, so it goes.
        assert_eq!(store.len(), 8);
        assert!(store.take("!a").is_empty());
        assert_eq!(store.take("!b"), lengths(10..14));
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn a_room_keeps_its_highest_groups() {
        let mut store = ChainLengths::with_budget(10, 3);
        store.keep("!a", 9, lengths(0..10));
        assert_eq!(store.take("!a"), lengths(7..10));
    }

    #[test]
    fn keeping_again_replaces_and_split_off_and_merge_round_trip() {
        let mut store = ChainLengths::with_budget(10, 10);
        store.keep("!a", 5, lengths(0..5));
        store.keep("!a", 8, lengths(0..8));
        assert_eq!(store.len(), 8);
        let own = store.split_off("!a");
        assert!(store.is_empty());
        assert_eq!(own.len(), 8);
        store.merge(own);
        assert_eq!(store.take("!a"), lengths(0..8));
        assert!(store.split_off("!b").is_empty());
    }
}
