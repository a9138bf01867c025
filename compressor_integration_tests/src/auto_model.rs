//! An independent model of the automatic tool's chunk loop
//! (docs/algorithm.md#across-chunks-and-runs), the oracle for the exact
//! tree, saved progress and skipped chunks that a sequence of automatic
//! runs must leave behind.
//!
//! Written from that description, not from the tool: rooms are picked by the
//! lowest group at or above the scan position that is past its room's
//! progress; a chunk is the room's next groups after that progress, plus
//! the saved level heads and every predecessor, compressed by
//! [`crate::level_model`] continuing from the saved levels; a chunk that
//! would add rows is skipped (fresh levels and its last group saved,
//! nothing rewritten), any other is written with its new levels.
//!
//! As the reference tool does, a chunk with a lower bound (every chunk of a
//! room after its first) also rewrites the predecessors it loads that have
//! no `state_groups` row, when their id lies inside the chunk.

use crate::level_model::{self, empty_levels, Level, Outcome};
use crate::structure::{StateRow, Structure};
use std::collections::{BTreeMap, BTreeSet};

/// A room's saved progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomProgress {
    pub last_compressed: i64,
    pub levels: Vec<Level>,
}

/// What the model did with one chunk.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub room_id: String,
    /// Exclusive start (the room's progress before the chunk).
    pub after: Option<i64>,
    /// The chunk's last group (saved as the room's progress).
    pub last: i64,
    /// The levels the chunk started from.
    pub levels_before: Vec<Level>,
    /// The groups rewritten if the chunk is written.
    pub in_range: BTreeSet<i64>,
    /// The level algorithm's result (its new tree, rows and levels).
    pub outcome: Outcome,
    /// The chunk would have added rows: nothing written.
    pub skipped: bool,
}

/// The database's state tables and the automatic tool's progress tables,
/// as the model sees them after each chunk.
#[derive(Clone, Debug)]
pub struct AutoModel {
    /// Every group, edge and row of the database.
    pub structure: Structure,
    /// `state_compressor_state` and `state_compressor_progress`, by room.
    pub rooms: BTreeMap<String, RoomProgress>,
    /// `state_compressor_total_progress`.
    pub lowest_uncompressed_group: i64,
    /// Every chunk so far, in order.
    pub chunks: Vec<Chunk>,
}

impl AutoModel {
    /// A database that was never compressed (no progress saved).
    pub fn new(structure: Structure) -> Self {
        AutoModel {
            structure,
            rooms: BTreeMap::new(),
            lowest_uncompressed_group: 0,
            chunks: Vec::new(),
        }
    }

    /// One run of the tool (`-l default_levels -c chunk_size -n number`).
    /// True when it stopped because no group was left to compress.
    pub fn run(&mut self, default_levels: &[usize], chunk_size: usize, number: usize) -> bool {
        for _ in 0..number {
            let Some(room) = self.next_room() else {
                return true;
            };
            self.compress_room_chunk(&room, default_levels, chunk_size);
        }
        false
    }

    /// The last groups of the skipped chunks from chunk `from` on.
    pub fn skipped_since(&self, from: usize) -> BTreeSet<i64> {
        self.chunks[from..]
            .iter()
            .filter(|c| c.skipped)
            .map(|c| c.last)
            .collect()
    }

    /// The room of the lowest group at or above the scan position that is
    /// past its room's progress; the scan position moves to that group.
    fn next_room(&mut self) -> Option<String> {
        let (id, room) = self
            .structure
            .range(self.lowest_uncompressed_group..)
            .filter_map(|(&id, info)| Some((id, info.room_id.as_ref()?)))
            .find(|(id, room)| {
                self.rooms
                    .get(*room)
                    .is_none_or(|p| *id > p.last_compressed)
            })?;
        let room = room.clone();
        self.lowest_uncompressed_group = id;
        Some(room)
    }

    /// The room's next chunk: compressed from its saved levels (if usable),
    /// then skipped or written, and the progress saved.
    fn compress_room_chunk(&mut self, room: &str, default_levels: &[usize], chunk_size: usize) {
        let saved = self.rooms.get(room);
        let after = saved.map(|p| p.last_compressed);
        let mut levels = match saved {
            Some(p) if heads_usable(&self.structure, room, &p.levels) => p.levels.clone(),
            _ => empty_levels(default_levels),
        };
        let chunk = plan_chunk(&self.structure, room, after, chunk_size, &mut levels)
            .expect("the room was picked for a group after its progress");
        let levels = if chunk.skipped {
            empty_levels(default_levels)
        } else {
            apply(&mut self.structure, room, &chunk.outcome);
            levels
        };
        self.rooms.insert(
            room.to_owned(),
            RoomProgress {
                last_compressed: chunk.last,
                levels,
            },
        );
        self.chunks.push(chunk);
    }
}

/// Saved levels are usable when every head is still a group: of the room,
/// or without a `state_groups` row (it is then read as Synapse reads it).
fn heads_usable(structure: &Structure, room: &str, levels: &[Level]) -> bool {
    levels.iter().filter_map(|l| l.head).all(|head| {
        structure
            .get(&head)
            .is_some_and(|g| g.room_id.as_deref().is_none_or(|r| r == room))
    })
}

/// Compresses the `chunk_size` groups of `room` after `after` (all of them
/// from its first when `after` is `None`), continuing from `levels` (left
/// where the chunk ends). `None` when the room has no group after `after`.
pub fn plan_chunk(
    structure: &Structure,
    room: &str,
    after: Option<i64>,
    chunk_size: usize,
    levels: &mut [Level],
) -> Option<Chunk> {
    let levels_before = levels.to_vec();
    let ids: Vec<i64> = structure
        .iter()
        .filter(|(&id, g)| g.room_id.as_deref() == Some(room) && after.is_none_or(|a| id > a))
        .map(|(&id, _)| id)
        .take(chunk_size)
        .collect();
    let last = *ids.last()?;

    // The chunk, the level heads and every predecessor of them.
    let mut loaded = BTreeSet::new();
    let mut todo: Vec<i64> = ids
        .iter()
        .copied()
        .chain(levels.iter().filter_map(|l| l.head))
        .collect();
    while let Some(id) = todo.pop() {
        let Some(info) = structure.get(&id) else {
            continue; // nothing stored: the chain ends here, as Synapse reads it
        };
        if loaded.insert(id) {
            todo.extend(info.prev());
        }
    }
    let part: Structure = loaded
        .iter()
        .map(|id| (*id, structure[id].clone()))
        .collect();

    let mut in_range: BTreeSet<i64> = ids.iter().copied().collect();
    if let Some(min) = after {
        in_range.extend(
            part.iter()
                .filter(|(&id, g)| g.room_id.is_none() && min < id && id <= last)
                .map(|(&id, _)| id),
        );
    }
    let outcome = level_model::compress_from(&part, &in_range, levels);
    let skipped = outcome.rows_after > outcome.rows_before;
    Some(Chunk {
        room_id: room.to_owned(),
        after,
        last,
        levels_before,
        in_range,
        outcome,
        skipped,
    })
}

/// Writes the groups whose entry in `outcome` differs from `structure`
/// (new edge and rows, the rows carrying `room`'s id), as the tool writes
/// a chunk.
pub fn apply(structure: &mut Structure, room: &str, outcome: &Outcome) {
    for (id, entry) in &outcome.new {
        let info = structure.get_mut(id).expect("an in-range group");
        if info.prev() == entry.prev && info.delta() == entry.delta {
            continue;
        }
        info.prevs = entry.prev.into_iter().collect();
        info.rows = entry
            .delta
            .iter()
            .map(|((event_type, state_key), event_id)| StateRow {
                room_id: room.to_owned(),
                event_type: event_type.clone(),
                state_key: state_key.clone(),
                event_id: event_id.clone(),
            })
            .collect();
        info.rows.sort_unstable();
    }
}
