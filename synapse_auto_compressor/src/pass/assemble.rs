//! The pass's second step: reading the planned groups' edges and rows once,
//! in ranges of `state_group`, and putting each planned chunk together.
//!
//! Each range `[a, b)` is read in one snapshot with three statements over
//! Synapse's own indexes (the ids and rooms from `state_groups`, the edges,
//! the rows), each returning whatever it finds in the range: the table is
//! walked once, in about its own order, however the rooms interleave.
//! A group's edge and rows always come from one snapshot, so each group read
//! is a state Synapse had (Synapse never changes a group's state; a group it
//! deletes meanwhile is caught by the write's re-check).
//!
//! A planned chunk is complete once the range holding its last group is
//! read; complete chunks go to the run in the order of their last group,
//! which keeps each room's chunks in their own order. Open chunks hold their
//! groups' rows: when they would hold more than the budget, the room whose
//! open chunk ends last leaves the pass (its chunks are done by the
//! room-by-room reader after it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::SyncSender;

use log::debug;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{Client, Row, RowIter, Transaction};
use synapse_compress_state::core::group::StateGroupEntry;
use synapse_compress_state::core::state_map::{IdBuildHasher, KeyId, StateMap, Symbols, ValueId};
use synapse_compress_state::db::load;
use synapse_compress_state::db::lock_wait::stop_requested;
use synapse_compress_state::db::schema::Access;
use synapse_compress_state::{Error, GroupMap, Result};

use super::plan::Plan;

/// Ids per range by default: a few hundred thousand rows at most on
/// Synapse-like data, read in about a second even out of cache, so a stop
/// is never far.
pub const RANGE_IDS: i64 = 25_000;

/// A complete chunk's groups as read, in their own symbol table.
#[derive(Debug, Default)]
pub struct Assembled {
    /// Its place in the plan.
    pub chunk: u32,
    /// The groups found, ascending.
    pub ids: Vec<i64>,
    pub symbols: Symbols,
    /// The groups (in range) with their edges and rows.
    pub groups: GroupMap,
    pub duplicate_rows: usize,
    /// Why the chunk cannot be read safely, if so.
    pub damaged: Option<String>,
}

/// What the pass hands to the run.
#[derive(Debug)]
pub enum Piece {
    Chunk(Box<Assembled>),
    /// The room left the pass to stay within the memory budget.
    OverBudget {
        room: u32,
    },
}

/// Rooms that left the pass (shared: the run leaves rooms too, when they
/// are busy, damaged or moved on by another compressor).
pub struct LeftPass(Vec<AtomicBool>);

impl LeftPass {
    pub fn new(rooms: usize) -> Self {
        Self((0..rooms).map(|_| AtomicBool::new(false)).collect())
    }

    pub fn leave(&self, room: u32) {
        self.0[room as usize].store(true, Ordering::Relaxed);
    }

    pub fn has_left(&self, room: u32) -> bool {
        self.0[room as usize].load(Ordering::Relaxed)
    }
}

/// A chunk being put together.
#[derive(Default)]
struct Open {
    chunk: Assembled,
    rows: usize,
}

impl Open {
    /// About the memory it holds: its rows, its groups and its strings.
    fn bytes(&self) -> usize {
        self.rows * 8 + self.chunk.ids.len() * 72 + self.chunk.symbols.bytes()
    }

    fn damage(&mut self, why: String) {
        self.chunk.damaged.get_or_insert(why);
    }
}

/// The state of the pass.
struct Assembler<'p> {
    plan: &'p Plan,
    room_index: HashMap<&'p str, u32>,
    /// Per room: its chunk the next group may belong to (index into the
    /// room's chunk list).
    next: Vec<usize>,
    /// Open chunks by rank (looked up for every row read: a cheap hash).
    open: HashMap<u32, Open, IdBuildHasher>,
    /// Chunks by last group, and how many of them are complete.
    by_last: Vec<u32>,
    completed: usize,
    left: &'p LeftPass,
    budget: usize,
    range_ids: i64,
    /// The most the open chunks held, for the summary.
    pub peak_bytes: usize,
}

/// Reads the plan's groups range by range on `client`, sending each chunk
/// as it completes. Ends when every chunk is sent, when the run stops
/// listening, or at a signal. Returns the most the open chunks held.
/// `read_to` follows where the reading has got to (for the run's bar).
pub fn run(
    client: &mut Client,
    plan: &Plan,
    left: &LeftPass,
    (budget, range_ids): (usize, i64),
    read_to: &AtomicI64,
    out: &SyncSender<Result<Piece>>,
) -> usize {
    let mut assembler = Assembler::new(plan, left, budget, range_ids);
    match assembler.read_all(client, read_to, out) {
        Ok(()) => {}
        Err(e) => {
            let _ = out.send(Err(e));
        }
    }
    assembler.peak_bytes
}

impl<'p> Assembler<'p> {
    fn new(plan: &'p Plan, left: &'p LeftPass, budget: usize, range_ids: i64) -> Self {
        let mut by_last: Vec<u32> = (0..plan.chunks.len() as u32).collect();
        by_last.sort_by_key(|&c| plan.chunks[c as usize].last);
        Self {
            plan,
            room_index: plan
                .rooms
                .iter()
                .enumerate()
                .map(|(i, r)| (r.room_id.as_str(), i as u32))
                .collect(),
            next: vec![0; plan.rooms.len()],
            open: HashMap::default(),
            by_last,
            completed: 0,
            left,
            budget,
            range_ids,
            peak_bytes: 0,
        }
    }

    fn read_all(
        &mut self,
        client: &mut Client,
        read_to: &AtomicI64,
        out: &SyncSender<Result<Piece>>,
    ) -> Result<()> {
        let (Some(first), Some(end)) = (self.plan.chunks.first(), self.plan.end()) else {
            return Ok(());
        };
        let mut from = first.first;
        while from <= end {
            let to = from
                .saturating_add(self.range_ids)
                .min(end.saturating_add(1));
            // Waits visibly while the tables are held; a signal ends the
            // pass (the run sees it too).
            if stop_requested(client, Access::Read)?.is_some() {
                return Ok(());
            }
            let mut snapshot = load::snapshot(client)?;
            match self.read_range(&mut snapshot, from, to) {
                Ok(()) => snapshot
                    .commit()
                    .map_err(|e| Error::db("finishing a range of the pass", e))?,
                Err(e) if is_lock_timeout(&e) => {
                    // A lock taken just after the check: forget the range's
                    // groups and read it again once the lock is gone.
                    drop(snapshot);
                    debug!("range {from}..{to} met a lock; reading it again");
                    self.forget_from(from);
                    continue;
                }
                Err(e) => return Err(e),
            }
            read_to.store(to, Ordering::Relaxed);
            let held: usize = self.open.values().map(Open::bytes).sum();
            self.peak_bytes = self.peak_bytes.max(held);
            if !self.send_complete(to, out) {
                return Ok(());
            }
            self.keep_to_budget(out);
            from = to;
        }
        Ok(())
    }

    /// Reads the ids, edges and rows of `[from, to)` into the open chunks.
    fn read_range(&mut self, tx: &mut Transaction<'_>, from: i64, to: i64) -> Result<()> {
        let ctx = "reading a range of state groups";
        // Which chunk each group of the range joins.
        let mut member: HashMap<i64, u32, IdBuildHasher> = HashMap::default();
        let mut rows = in_range(
            tx,
            "SELECT id, room_id FROM state_groups \
             WHERE id >= $1 AND id < $2 AND room_id IS NOT NULL ORDER BY id",
            (from, to),
            ctx,
        )?;
        while let Some(row) = rows.next().map_err(|e| Error::db(ctx, e))? {
            let id: i64 = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
            let room: &str = row.try_get(1).map_err(|e| Error::db(ctx, e))?;
            if let Some(chunk) = self.chunk_of(id, room) {
                member.insert(id, chunk);
                let open = self.open.entry(chunk).or_default();
                open.chunk.chunk = chunk;
                open.chunk.ids.push(id);
                open.chunk.groups.insert(
                    id,
                    StateGroupEntry {
                        in_range: true,
                        ..Default::default()
                    },
                );
            }
        }
        drop(rows);
        if member.is_empty() {
            return Ok(());
        }
        self.read_edges(tx, from, to, &member)?;
        self.read_rows(tx, from, to, &member)
    }

    /// The planned chunk group `id` of `room` belongs to, if any.
    fn chunk_of(&mut self, id: i64, room: &str) -> Option<u32> {
        let &room = self.room_index.get(room)?;
        if self.left.has_left(room) {
            return None;
        }
        let chunks = &self.plan.rooms[room as usize].chunks;
        let next = &mut self.next[room as usize];
        while *next < chunks.len() && self.plan.chunks[chunks[*next] as usize].last < id {
            *next += 1;
        }
        let &chunk = chunks.get(*next)?;
        (self.plan.chunks[chunk as usize].first <= id).then_some(chunk)
    }

    fn read_edges(
        &mut self,
        tx: &mut Transaction<'_>,
        from: i64,
        to: i64,
        member: &HashMap<i64, u32, IdBuildHasher>,
    ) -> Result<()> {
        let ctx = "reading a range of state group edges";
        let mut rows = in_range(
            tx,
            "SELECT state_group, prev_state_group FROM state_group_edges \
             WHERE state_group >= $1 AND state_group < $2",
            (from, to),
            ctx,
        )?;
        while let Some(row) = rows.next().map_err(|e| Error::db(ctx, e))? {
            let group: i64 = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
            let Some(chunk) = member.get(&group) else {
                continue;
            };
            let open = self.open.get_mut(chunk).expect("a member's chunk is open");
            let prev = match row.try_get::<_, Option<i64>>(1) {
                Ok(Some(prev)) => prev,
                Ok(None) => {
                    open.damage(format!(
                        "state group {group} has a NULL prev_state_group in state_group_edges"
                    ));
                    continue;
                }
                Err(e) => return Err(Error::db(ctx, e)),
            };
            if prev >= group {
                open.damage(format!(
                    "state group {group}'s predecessor {prev} does not have a lower id"
                ));
            }
            let entry = open.chunk.groups.get_mut(&group).expect("a member is held");
            match entry.prev {
                Some(other) if other != prev => open.damage(format!(
                    "state group {group} has two predecessors ({other} and {prev})"
                )),
                _ => entry.prev = Some(prev),
            }
        }
        Ok(())
    }

    fn read_rows(
        &mut self,
        tx: &mut Transaction<'_>,
        from: i64,
        to: i64,
        member: &HashMap<i64, u32, IdBuildHasher>,
    ) -> Result<()> {
        let ctx = "reading a range of state rows";
        let mut rows = in_range(
            tx,
            "SELECT state_group, type, state_key, event_id FROM state_groups_state \
             WHERE state_group >= $1 AND state_group < $2",
            (from, to),
            ctx,
        )?;
        // A group's rows mostly come together: gathered here, then made
        // its delta when another group's row comes (merged if it came in
        // parts, as rows stored apart do).
        let mut scratch: Vec<(KeyId, ValueId)> = Vec::new();
        let mut current: Option<(i64, u32)> = None;
        while let Some(row) = rows.next().map_err(|e| Error::db(ctx, e))? {
            let group: i64 = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
            let Some(&chunk) = member.get(&group) else {
                continue;
            };
            if current.map(|(g, _)| g) != Some(group) {
                self.flush(current, &mut scratch);
                current = Some((group, chunk));
            }
            let open = self.open.get_mut(&chunk).expect("a member's chunk is open");
            match row_strings(&row, group) {
                Ok((ty, state_key, event_id)) => {
                    let symbols = &mut open.chunk.symbols;
                    scratch.push((symbols.key(ty, state_key), symbols.value(event_id)));
                    open.rows += 1;
                }
                Err(why) => open.damage(why),
            }
        }
        self.flush(current, &mut scratch);
        Ok(())
    }

    /// Makes the scratch rows the delta of their group (`current`).
    fn flush(&mut self, current: Option<(i64, u32)>, scratch: &mut Vec<(KeyId, ValueId)>) {
        let Some((group, chunk)) = current else {
            return;
        };
        let open = self.open.get_mut(&chunk).expect("a member's chunk is open");
        let entry = open.chunk.groups.get_mut(&group).expect("a member is held");
        let mut rows = std::mem::take(scratch);
        if !entry.delta.is_empty() {
            rows.extend(entry.delta.iter());
        }
        let (delta, duplicates) = StateMap::from_unsorted(rows);
        open.chunk.duplicate_rows += duplicates;
        entry.delta = delta;
    }

    /// Forgets every group from `from` on (a range read again).
    fn forget_from(&mut self, from: i64) {
        for open in self.open.values_mut() {
            open.chunk.ids.retain(|&id| id < from);
            open.chunk.groups.retain(|&id, _| id < from);
            open.rows = open.chunk.groups.values().map(|g| g.delta.len()).sum();
        }
        self.open.retain(|_, open| !open.chunk.ids.is_empty());
    }

    /// Sends every chunk whose last group is below `to`, by last group.
    /// False once the run has stopped listening.
    fn send_complete(&mut self, to: i64, out: &SyncSender<Result<Piece>>) -> bool {
        while let Some(&chunk) = self.by_last.get(self.completed) {
            let planned = &self.plan.chunks[chunk as usize];
            if planned.last >= to {
                break;
            }
            self.completed += 1;
            let open = self.open.remove(&chunk).unwrap_or_default();
            if self.left.has_left(planned.room) {
                continue;
            }
            let mut assembled = open.chunk;
            assembled.chunk = chunk;
            if out.send(Ok(Piece::Chunk(Box::new(assembled)))).is_err() {
                return false;
            }
        }
        true
    }

    /// While the open chunks hold more than the budget, the room whose open
    /// chunk ends last leaves the pass.
    fn keep_to_budget(&mut self, out: &SyncSender<Result<Piece>>) {
        let mut held: usize = self.open.values().map(Open::bytes).sum();
        while held > self.budget {
            let Some((&chunk, _)) = self
                .open
                .iter()
                .max_by_key(|(&c, _)| self.plan.chunks[c as usize].last)
            else {
                break;
            };
            let room = self.plan.chunks[chunk as usize].room;
            if let Some(open) = self.open.remove(&chunk) {
                held -= open.bytes();
            }
            self.left.leave(room);
            let _ = out.send(Ok(Piece::OverBudget { room }));
        }
    }
}

/// Streams `sql`'s rows for the range `[from, to)` (its `$1` and `$2`).
fn in_range<'t>(
    tx: &'t mut Transaction<'_>,
    sql: &str,
    (from, to): (i64, i64),
    ctx: &str,
) -> Result<RowIter<'t>> {
    let range: [(&(dyn ToSql + Sync), Type); 2] = [(&from, Type::INT8), (&to, Type::INT8)];
    tx.query_typed_raw(sql, range)
        .map_err(|e| Error::db(ctx, e))
}

/// The type, state_key and event_id of a row, or why the group is damaged.
fn row_strings(row: &Row, group: i64) -> std::result::Result<(&str, &str, &str), String> {
    let get = |i: usize, name: &str| match row.try_get::<_, Option<&str>>(i) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(format!(
            "state group {group} has a NULL {name} in state_groups_state"
        )),
        Err(e) => Err(format!(
            "state group {group} has an unreadable {name} in state_groups_state ({e})"
        )),
    };
    Ok((get(1, "type")?, get(2, "state_key")?, get(3, "event_id")?))
}

/// Whether a statement failed on `lock_timeout`.
fn is_lock_timeout(e: &Error) -> bool {
    e.sqlstate() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}
