//! Which groups make up a room's next chunk, without a scan per chunk.
//!
//! A chunk is the room's first `-c` groups after its saved position, by
//! id. Synapse has no index on `(room_id, id)`: finding them walks either
//! the primary key from the position, filtering out other rooms' groups
//! (a long walk for a room with few groups among many), or every group of
//! the room through the `room_id` index, a table page each, then sorts.
//! Done for every chunk, that was over a quarter of the server's time on the
//! benchmark's 20-million-row database.
//!
//! So a room's ids are read once for many chunks: up to [`IDS_PER_READ`]
//! chunks' worth at a time, kept here (shared by the connections that load
//! chunks) within [`CACHED_IDS`] ids in all. Beyond that, the rooms whose
//! next chunk starts at the highest group go first: the run scans by group
//! id, so those are needed last.
//!
//! Only whole chunks come from here: the room's last chunk is always read
//! afresh, so groups Synapse added since are found, as before. A chunk
//! taken from here is checked by its load (`prefetch::load_chunk`), inside
//! the load's snapshot: a group Synapse deleted has neither rows nor an
//! edge there, and a chunk with such a group is read afresh
//! ([`RoomIds::read_again`]; checking each id by primary key instead cost
//! as much as reading them). The spare id that says the room goes on is
//! not checked: if it is gone, the room's next chunk finds nothing, and the
//! room's position is saved as it is, as for a room purged meanwhile. (A
//! group committed later than groups with higher ids, which Synapse's
//! sequence allows, is not seen by a chunk already past it either way.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use log::debug;
use postgres::GenericClient;
use synapse_compress_state::db::load;
use synapse_compress_state::Result;

/// Chunks' worth of ids read at once for a room.
pub const IDS_PER_READ: i64 = 32;

/// Most ids kept for all rooms together (8 bytes each: 8 MiB).
pub const CACHED_IDS: usize = 1_000_000;

/// A room's ids after `start`, as read.
#[derive(Debug)]
struct Ids {
    /// The read's exclusive lower bound.
    start: Option<i64>,
    /// Ascending.
    ids: Vec<i64>,
    /// Its place in [`Cache::order`].
    place: Place,
}

/// When a room's ids will be needed: the first group of its chunk after
/// the one they were last asked for (the run scans by group id, so the
/// room whose next chunk starts last is needed last), then a serial number.
type Place = (i64, u64);

#[derive(Debug, Default)]
struct Cache {
    rooms: HashMap<String, Ids>,
    order: BTreeMap<Place, String>,
    next: u64,
    total: usize,
}

impl Cache {
    fn forget(&mut self, room: &str) {
        if let Some(old) = self.rooms.remove(room) {
            self.order.remove(&old.place);
            self.total -= old.ids.len();
        }
    }

    /// A place for a room whose next chunk starts at `needed`.
    fn place(&mut self, needed: Option<i64>) -> Place {
        self.next += 1;
        (needed.unwrap_or(i64::MAX), self.next)
    }
}

/// The ids read ahead for rooms, shared by every connection loading chunks.
#[derive(Debug)]
pub struct RoomIds {
    cache: Mutex<Cache>,
    budget: usize,
}

impl Default for RoomIds {
    fn default() -> Self {
        Self::with_budget(CACHED_IDS)
    }
}

impl RoomIds {
    pub fn with_budget(budget: usize) -> Self {
        Self {
            cache: Mutex::new(Cache::default()),
            budget,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first `want` ids of `room` after `after`, if they were read
    /// ahead (and so are a whole chunk, with one id to spare).
    fn cached(&self, room: &str, after: Option<i64>, want: usize) -> Option<Vec<i64>> {
        let mut cache = self.cache();
        let entry = cache.rooms.get(room)?;
        if entry.start > after {
            return None;
        }
        let skip = entry.ids.partition_point(|&id| Some(id) <= after);
        let ids = entry.ids.get(skip..skip + want)?.to_vec();
        let mut entry = cache.rooms.remove(room)?;
        cache.order.remove(&entry.place);
        // What lies before `after` is never asked for again.
        entry.ids.drain(..skip);
        entry.start = after;
        cache.total -= skip;
        entry.place = cache.place(entry.ids.get(want - 1).copied());
        cache.order.insert(entry.place, room.to_owned());
        cache.rooms.insert(room.to_owned(), entry);
        Some(ids)
    }

    /// Keeps `ids` (`room`'s ids after `start`, ascending; the next chunk's
    /// `want` of them first) for its next chunks, within the budget:
    /// beyond it, the rooms needed last are dropped first.
    fn keep(&self, room: &str, start: Option<i64>, ids: Vec<i64>, want: usize) {
        let mut cache = self.cache();
        cache.forget(room);
        if ids.len() > self.budget {
            return;
        }
        let place = cache.place(ids.get(want - 1).copied());
        cache.total += ids.len();
        cache.order.insert(place, room.to_owned());
        cache
            .rooms
            .insert(room.to_owned(), Ids { start, ids, place });
        while cache.total > self.budget {
            let Some((_, last)) = cache.order.pop_last() else {
                break;
            };
            if let Some(dropped) = cache.rooms.remove(&last) {
                cache.total -= dropped.ids.len();
            }
        }
    }

    /// Ids kept now.
    pub fn len(&self) -> usize {
        self.cache().total
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of `room`'s next chunk after `after`: `chunk_size` of them
    /// plus one more if the room goes on (so at most `chunk_size + 1`),
    /// and whether they were read ahead (then the caller checks that each
    /// still exists, and calls [`RoomIds::read_again`] if one does not).
    /// Fresh ones are read inside the load's snapshot `client`.
    pub fn chunk_ids(
        &self,
        client: &mut impl GenericClient,
        room: &str,
        after: Option<i64>,
        chunk_size: i64,
    ) -> Result<(Vec<i64>, bool)> {
        let want = chunk_size.saturating_add(1);
        if let Some(ids) = self.cached(room, after, want as usize) {
            return Ok((ids, true));
        }
        Ok((self.read(client, room, after, want)?, false))
    }

    /// [`RoomIds::chunk_ids`] read afresh: some of the ids read ahead are
    /// gone (Synapse deleted them since).
    pub fn read_again(
        &self,
        client: &mut impl GenericClient,
        room: &str,
        after: Option<i64>,
        chunk_size: i64,
    ) -> Result<Vec<i64>> {
        debug!("Room {room}: groups read ahead were deleted since; reading the chunk again");
        self.cache().forget(room);
        self.read(client, room, after, chunk_size.saturating_add(1))
    }

    /// The first `want` ids of `room` after `after`, read now, keeping
    /// those of the next chunks read with them.
    fn read(
        &self,
        client: &mut impl GenericClient,
        room: &str,
        after: Option<i64>,
        want: i64,
    ) -> Result<Vec<i64>> {
        let ahead = want.saturating_mul(IDS_PER_READ);
        let mut ids = load::range_ids(client, room, after, None, Some(ahead))?;
        if ids.len() as i64 > want {
            // Enough for more chunks: keep them for the room's next ones.
            self.keep(room, after, ids.clone(), want as usize);
            ids.truncate(want as usize);
        } else {
            self.cache().forget(room);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_whole_chunks_only_and_forgets_what_is_behind() {
        let ids = RoomIds::with_budget(100);
        ids.keep("!a", Some(0), (1..=10).collect(), 4);
        assert_eq!(ids.cached("!a", Some(0), 4), Some(vec![1, 2, 3, 4]));
        assert_eq!(ids.cached("!a", Some(3), 4), Some(vec![4, 5, 6, 7]));
        assert_eq!(ids.len(), 7);
        // Before what was read: not known here.
        assert_eq!(ids.cached("!a", Some(1), 4), None);
        assert_eq!(ids.cached("!a", None, 4), None);
        // Not a whole chunk left.
        assert_eq!(ids.cached("!a", Some(7), 4), None);
        assert_eq!(ids.cached("!b", Some(0), 1), None);
    }

    #[test]
    fn drops_the_rooms_needed_last_beyond_the_budget() {
        let ids = RoomIds::with_budget(10);
        // Next chunks (of 2 ids) start at 30, 3 and 20.
        ids.keep("!a", None, vec![10, 30, 31, 32], 2);
        ids.keep("!b", None, vec![1, 3, 4, 5], 2);
        ids.keep("!c", None, vec![2, 20, 21, 22], 2);
        assert_eq!(ids.len(), 8);
        assert_eq!(ids.cached("!a", None, 2), None);
        assert_eq!(ids.cached("!b", None, 2), Some(vec![1, 3]));
        assert_eq!(ids.cached("!c", None, 2), Some(vec![2, 20]));
        // Serving a chunk moves the room to where its next one starts (4
        // for !b after 1): now !c's (21) comes last.
        assert_eq!(ids.cached("!b", Some(1), 2), Some(vec![3, 4]));
        ids.keep("!d", None, vec![6, 7, 8, 9], 2);
        assert_eq!(ids.cached("!c", Some(2), 2), None);
        assert_eq!(ids.cached("!d", None, 2), Some(vec![6, 7]));
        // Larger than the whole budget: not kept.
        ids.keep("!e", None, (1..=11).collect(), 2);
        assert_eq!(ids.cached("!e", None, 1), None);
        assert_eq!(ids.len(), 7);
    }
}
