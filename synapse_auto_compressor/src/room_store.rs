//! What a run keeps per room for the room's next chunk, within a budget
//! ([`crate::carry`]'s structures, [`crate::chain_lengths`]' lengths).
//!
//! Beyond the budget the rooms needed last go first: the run scans by group
//! id, so the room whose chunk ended at the highest group is, roughly, the
//! one needed last. A value bigger than the whole budget is not kept.

use std::collections::{BTreeMap, HashMap};

/// A value kept for a room's next chunk.
pub trait Kept {
    /// Its share of the budget.
    fn size(&self) -> usize;
    /// The last group of the chunk that left it.
    fn last(&self) -> i64;
}

/// Where a value stands among the others: [`Kept::last`], then a serial
/// number.
type Place = (i64, u64);

/// Values by room, within a budget of [`Kept::size`].
#[derive(Debug)]
pub struct RoomStore<T> {
    rooms: HashMap<String, (Place, T)>,
    order: BTreeMap<Place, String>,
    next: u64,
    total: usize,
    budget: usize,
}

impl<T: Kept> RoomStore<T> {
    /// Nothing kept, within `budget`.
    pub fn with_budget(budget: usize) -> Self {
        RoomStore {
            rooms: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            total: 0,
            budget,
        }
    }

    /// Lets the store hold up to `budget` once it is more than it had (a
    /// pass keeps every room going at once: `crate::carry::Carries::for_pass`).
    pub fn raise_budget(&mut self, budget: usize) {
        self.budget = self.budget.max(budget);
    }

    /// `room`'s value, if kept.
    pub fn get(&self, room: &str) -> Option<&T> {
        self.rooms.get(room).map(|(_, value)| value)
    }

    /// Takes `room`'s value out.
    pub fn take(&mut self, room: &str) -> Option<T> {
        let (place, value) = self.rooms.remove(room)?;
        self.order.remove(&place);
        self.total -= value.size();
        Some(value)
    }

    /// Keeps `value` for `room` (replacing what it had), dropping the values
    /// needed last beyond the budget (this one too, if it is).
    pub fn keep(&mut self, room: &str, value: T) {
        self.take(room);
        if value.size() > self.budget {
            return;
        }
        let place = (value.last(), self.next);
        self.next += 1;
        self.total += value.size();
        self.order.insert(place, room.to_owned());
        self.rooms.insert(room.to_owned(), (place, value));
        while self.total > self.budget {
            let Some((_, last)) = self.order.pop_last() else {
                break;
            };
            if let Some((_, dropped)) = self.rooms.remove(&last) {
                self.total -= dropped.size();
            }
        }
    }

    /// Moves `room`'s value, if any, into a store of its own (for a worker
    /// compressing the room, `--jobs`), within the same budget.
    pub fn split_off(&mut self, room: &str) -> Self {
        let mut own = Self::with_budget(self.budget);
        if let Some(value) = self.take(room) {
            own.keep(room, value);
        }
        own
    }

    /// Moves `other`'s values into this store (a worker's, back into the
    /// run's), in their order, within this store's budget.
    pub fn merge(&mut self, other: Self) {
        let mut values: Vec<_> = other.rooms.into_iter().collect();
        values.sort_by_key(|(_, (place, _))| *place);
        for (room, (_, value)) in values {
            self.keep(&room, value);
        }
    }

    /// The budget used now.
    pub fn total(&self) -> usize {
        self.total
    }
}
