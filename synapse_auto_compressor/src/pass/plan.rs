//! The pass's first step: which chunks the run does, from `state_groups`
//! alone.
//!
//! One ordered scan of `state_groups (id, room_id)` from the scan position,
//! with each room's saved `last_compressed`, splits every room's remaining
//! groups into its chunks (`-c` groups each, by id) exactly as the chunk
//! loop would find them one at a time. The loop does chunks in the order of
//! their first group, so a chunk's place in this scan is its rank, and the
//! run's `-n` chunks are the first `-n` found. Only two ids and a count are
//! kept per chunk; nothing per group.

use std::collections::HashMap;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::Client;
use synapse_compress_state::{Error, Result};

/// A room with chunks in the plan.
#[derive(Debug)]
pub struct PlanRoom {
    pub room_id: String,
    /// Its chunks, by rank (in the room's own order).
    pub chunks: Vec<u32>,
}

/// One chunk the run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChunk {
    /// Index into [`Plan::rooms`].
    pub room: u32,
    /// Where the chunk starts (exclusive): the room's saved position, or
    /// the last group of the room's chunk before.
    pub after: Option<i64>,
    pub first: i64,
    pub last: i64,
    pub groups: u32,
    /// The room has groups after this chunk.
    pub more: bool,
}

/// The chunks of the run, by rank (their first group).
#[derive(Debug, Default)]
pub struct Plan {
    pub rooms: Vec<PlanRoom>,
    pub chunks: Vec<PlannedChunk>,
    /// Groups from the scan position to the end of the last chunk: what
    /// the pass would read, compressed or not.
    pub span_groups: u64,
}

impl Plan {
    /// The room of a chunk.
    pub fn room_of(&self, chunk: u32) -> &str {
        &self.rooms[self.chunks[chunk as usize].room as usize].room_id
    }

    /// Groups in the plan's chunks.
    pub fn groups(&self) -> u64 {
        self.chunks.iter().map(|c| c.groups as u64).sum()
    }

    /// The highest last group of any chunk (where the pass can stop).
    pub fn end(&self) -> Option<i64> {
        self.chunks.iter().map(|c| c.last).max()
    }
}

/// A room as the scan goes: its saved position and its open chunk.
struct Cursor {
    room: u32,
    /// The room's chunk being filled (index into the plan), if any.
    open: Option<u32>,
    /// The room takes no more chunks (the run's count was reached).
    closed: bool,
}

/// Scans `state_groups` from `start` (the saved scan position) and plans up
/// to `chunks` chunks of `chunk_size` groups, leaving out `left` rooms.
/// The scan stops once every planned chunk knows its end and whether its
/// room goes on. Rooms start after their saved `last_compressed` when
/// `saved`; from their first group otherwise (the progress tables do not
/// exist: a survey reads only, and a run would create them empty).
pub fn read(
    client: &mut Client,
    start: i64,
    chunk_size: i64,
    chunks: i64,
    left: &[String],
    saved: bool,
) -> Result<Plan> {
    let ctx = "planning the pass over state_groups";
    let mut plan = Plan::default();
    let mut cursors: HashMap<String, Cursor> = HashMap::new();
    // Chunks whose `more` is not known yet (full, waiting for one more
    // group of their room, or still filling).
    let mut unsettled = 0usize;
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&start, Type::INT8), (&left, Type::TEXT_ARRAY)];
    let sql = if saved {
        "SELECT g.id, g.room_id, p.last_compressed FROM state_groups AS g \
         LEFT JOIN state_compressor_progress AS p USING (room_id) \
         WHERE g.id >= $1 AND g.room_id IS NOT NULL AND g.room_id <> ALL($2) \
         ORDER BY g.id"
    } else {
        "SELECT g.id, g.room_id, NULL::bigint FROM state_groups AS g \
         WHERE g.id >= $1 AND g.room_id IS NOT NULL AND g.room_id <> ALL($2) \
         ORDER BY g.id"
    };
    let mut rows = client
        .query_typed_raw(sql, params)
        .map_err(|e| Error::db(ctx, e))?;
    let mut seen = 0u64;
    while let Some(row) = rows.next().map_err(|e| Error::db(ctx, e))? {
        seen += 1;
        let id: i64 = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
        let room_id: &str = row.try_get(1).map_err(|e| Error::db(ctx, e))?;
        let saved: Option<i64> = row.try_get(2).map_err(|e| Error::db(ctx, e))?;
        if saved.is_some_and(|saved| id <= saved) {
            continue;
        }
        let cursor = match cursors.get_mut(room_id) {
            Some(cursor) => cursor,
            None => {
                let room = plan.rooms.len() as u32;
                plan.rooms.push(PlanRoom {
                    room_id: room_id.to_owned(),
                    chunks: Vec::new(),
                });
                cursors.entry(room_id.to_owned()).or_insert(Cursor {
                    room,
                    open: None,
                    closed: false,
                })
            }
        };
        if cursor.closed {
            continue;
        }
        if let Some(open) = cursor.open {
            let chunk = &mut plan.chunks[open as usize];
            if (chunk.groups as i64) < chunk_size {
                chunk.groups += 1;
                chunk.last = id;
                plan.span_groups = seen;
                continue;
            }
            // The open chunk is full and its room goes on.
            chunk.more = true;
            unsettled -= 1;
        }
        if plan.chunks.len() as i64 >= chunks {
            cursor.closed = true;
            if unsettled == 0 {
                break;
            }
            continue;
        }
        let after = match cursor.open {
            Some(open) => Some(plan.chunks[open as usize].last),
            None => saved,
        };
        let rank = plan.chunks.len() as u32;
        plan.chunks.push(PlannedChunk {
            room: cursor.room,
            after,
            first: id,
            last: id,
            groups: 1,
            more: false,
        });
        plan.rooms[cursor.room as usize].chunks.push(rank);
        cursor.open = Some(rank);
        unsettled += 1;
        plan.span_groups = seen;
    }
    Ok(plan)
}
