//! Which groups make up a room's next chunk, without a scan per chunk.
//!
//! A chunk is the room's first `-c` groups after its saved position, by
//! id. Synapse has no index on `(room_id, id)`: finding them walks either
//! the primary key from the position, filtering out other rooms' groups
//! (a long walk for a room with few groups among many), or every group of
//! the room through the `room_id` index, a table page each, then sorts.
//! Done for every chunk, that was a third of the server's time on the
//! benchmark's 20-million-row database.
//!
//! So a room's ids are read once for many chunks: up to [`IDS_PER_READ`]
//! chunks' worth at a time, kept here (shared by the connections that load
//! chunks) within [`CACHED_IDS`] ids in all, the oldest rooms dropped first.
//! A chunk taken from here is checked inside its load's snapshot: every
//! one of its groups must still exist in the room, or the chunk is read
//! afresh. Only whole chunks come from here: the room's last chunk is
//! always read afresh, so groups Synapse added since are found, as before.
//! (A group committed later than groups with higher ids, which Synapse's
//! sequence allows, is not seen by a chunk already past it either way.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use log::debug;
use postgres::GenericClient;
use synapse_compress_state::db::load;
use synapse_compress_state::Result;

/// Chunks' worth of ids read at once for a room.
pub const IDS_PER_READ: i64 = 32;

/// Most ids kept for all rooms together (8 bytes each).
pub const CACHED_IDS: usize = 500_000;

/// A room's ids after `start`, as read.
#[derive(Debug)]
struct Ids {
    /// The read's exclusive lower bound.
    start: Option<i64>,
    /// Ascending.
    ids: Vec<i64>,
    /// When this was kept (for dropping the oldest first).
    serial: u64,
}

#[derive(Debug, Default)]
struct Cache {
    rooms: HashMap<String, Ids>,
    order: BTreeMap<u64, String>,
    next: u64,
    total: usize,
}

impl Cache {
    fn forget(&mut self, room: &str) {
        if let Some(old) = self.rooms.remove(room) {
            self.order.remove(&old.serial);
            self.total -= old.ids.len();
        }
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
        let entry = cache.rooms.get_mut(room)?;
        if entry.start > after {
            return None;
        }
        let skip = entry.ids.partition_point(|&id| Some(id) <= after);
        let ids = entry.ids.get(skip..skip + want)?.to_vec();
        // What lies before `after` is never asked for again.
        entry.ids.drain(..skip);
        entry.start = after;
        cache.total -= skip;
        Some(ids)
    }

    /// Keeps `ids` (`room`'s ids after `start`, ascending) for its next
    /// chunks, within the budget.
    fn keep(&self, room: &str, start: Option<i64>, ids: Vec<i64>) {
        let mut cache = self.cache();
        cache.forget(room);
        if ids.len() > self.budget {
            return;
        }
        while cache.total + ids.len() > self.budget {
            let Some((_, oldest)) = cache.order.pop_first() else {
                break;
            };
            if let Some(dropped) = cache.rooms.remove(&oldest) {
                cache.total -= dropped.ids.len();
            }
        }
        let serial = cache.next;
        cache.next += 1;
        cache.total += ids.len();
        cache.order.insert(serial, room.to_owned());
        cache
            .rooms
            .insert(room.to_owned(), Ids { start, ids, serial });
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
    /// read inside the load's snapshot `client`.
    pub fn chunk_ids(
        &self,
        client: &mut impl GenericClient,
        room: &str,
        after: Option<i64>,
        chunk_size: i64,
    ) -> Result<Vec<i64>> {
        let want = chunk_size.saturating_add(1);
        if let Some(ids) = self.cached(room, after, want as usize) {
            if load::existing_ids(client, room, &ids)? == ids {
                return Ok(ids);
            }
            // Synapse deleted some of them: read the chunk afresh.
            debug!("Room {room}: groups read ahead were deleted since; reading the chunk again");
            self.cache().forget(room);
        }
        let ahead = want.saturating_mul(IDS_PER_READ);
        let mut ids = load::range_ids(client, room, after, None, Some(ahead))?;
        if ids.len() as i64 > want {
            // Enough for more chunks: keep them for the room's next ones.
            self.keep(room, after, ids.clone());
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
        ids.keep("!a", Some(0), (1..=10).collect());
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
    fn drops_the_oldest_rooms_beyond_the_budget() {
        let ids = RoomIds::with_budget(10);
        ids.keep("!a", None, (1..=4).collect());
        ids.keep("!b", None, (5..=8).collect());
        ids.keep("!c", None, (9..=12).collect());
        assert_eq!(ids.len(), 8);
        assert_eq!(ids.cached("!a", None, 1), None);
        assert_eq!(ids.cached("!c", None, 1), Some(vec![9]));
        ids.keep("!d", None, (1..=11).collect());
        assert_eq!(ids.cached("!d", None, 1), None);
        assert_eq!(ids.len(), 8);
    }
}
