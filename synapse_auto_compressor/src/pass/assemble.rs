//! The pass's second step: reading the planned groups' edges and rows once,
//! in ranges of `state_group`, and putting each planned chunk together.
//!
//! Each range `[a, b)` is read in one snapshot with three statements over
//! Synapse's own indexes (the ids and rooms from `state_groups`, the edges,
//! the rows), each returning whatever it finds in the range: the table is
//! walked once, in about its own order, however the rooms interleave.
//! A group's edge and rows always come from one snapshot, so each group read
//! is a state Synapse had (Synapse never changes a group's state; a group it
//! deletes meanwhile is caught by the write's re-check). The statements run
//! on a thread of their own ([`super::fetch`]); this one files their rows
//! into the open chunks meanwhile.
//!
//! A planned chunk is complete once the range holding its last group is
//! read; complete chunks go to the run in the order of their last group,
//! which keeps each room's chunks in their own order. Open chunks hold their
//! groups' rows: when they would hold more than the budget, the room whose
//! open chunk ends last leaves the pass (its chunks are done by the
//! room-by-room reader after it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use postgres::{Client, Row};
use synapse_compress_state::core::group::StateGroupEntry;
use synapse_compress_state::core::state_map::{
    Echo, IdBuildHasher, KeyId, StateMap, Symbols, ValueId,
};
use synapse_compress_state::db::load::two_events;
use synapse_compress_state::tool::spawn_named;
use synapse_compress_state::{Error, GroupMap, Result};

use super::fetch::{Fetched, Fetcher};
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
    pub repeated_rows_read: usize,
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
    /// What is sent once complete; its `groups` are filled then, from
    /// `entries`.
    chunk: Assembled,
    /// The groups of `chunk.ids`, in the same order: filing a row is an
    /// index, where a `BTreeMap` search per group was a seventh of this
    /// thread's time.
    entries: Vec<StateGroupEntry>,
    rows: usize,
    /// Finds most rows' ids from the room's last snapshot's.
    echo: Echo,
}

impl Open {
    /// About the memory it holds: its rows, its groups, its strings and the
    /// snapshot its rows are compared with.
    fn bytes(&self) -> usize {
        self.rows * 8 + self.chunk.ids.len() * 72 + self.chunk.symbols.bytes() + self.echo.bytes()
    }

    fn damage(&mut self, why: String) {
        self.chunk.damaged.get_or_insert(why);
    }

    /// Makes `rows` (read of its group `index` since its last part,
    /// emptied) part of the group's delta, however the parts fell (stored
    /// apart, or in other slices). Exact repeats are counted, and a key
    /// with two events is damage, as in `db::load`.
    fn add_rows(&mut self, index: usize, rows: &mut Vec<(KeyId, ValueId)>) {
        let entry = &mut self.entries[index];
        let mut all: Vec<_> = entry.delta.iter().collect();
        all.append(rows);
        match StateMap::from_rows(all) {
            Ok((delta, repeats)) => {
                self.chunk.repeated_rows_read += repeats;
                entry.repeated_rows += repeats as u32;
                entry.delta = delta;
            }
            Err(key) => {
                let why = two_events(self.chunk.ids[index], self.chunk.symbols.key_str(key));
                self.damage(why);
            }
        }
    }
}

/// Which open chunk each group of the range being read joins, and its
/// place there.
type Members = HashMap<i64, (u32, usize), IdBuildHasher>;

/// The state of the pass.
struct Assembler<'p> {
    plan: &'p Plan,
    /// Open chunks by rank (looked up for every group read: a cheap hash).
    open: HashMap<u32, Open, IdBuildHasher>,
    /// Chunks by last group, and how many of them are complete.
    by_last: Vec<u32>,
    completed: usize,
    left: &'p LeftPass,
    budget: usize,
    /// The most the open chunks held, for the summary.
    pub peak_bytes: usize,
}

/// Reads the plan's groups range by range on `client` (on a thread of its
/// own, [`super::fetch`]), sending each chunk as it completes. Ends when
/// every chunk is sent, when the run stops listening, or at a signal.
/// Returns the most the open chunks held. `read_to` follows where the
/// reading has got to (for the run's bar).
pub fn run(
    client: &mut Client,
    plan: &Plan,
    left: &LeftPass,
    (budget, range_ids): (usize, i64),
    read_to: &AtomicI64,
    out: &SyncSender<Result<Piece>>,
) -> usize {
    let mut assembler = Assembler::new(plan, left, budget);
    std::thread::scope(|scope| {
        let (send, fetched) = sync_channel(super::PIECES_IN_HAND);
        let fetcher = Fetcher::new(plan, left, range_ids);
        spawn_named(scope, "pass-fetch", move || fetcher.run(client, &send));
        if let Err(e) = assembler.assemble(&fetched, read_to, out) {
            let _ = out.send(Err(e));
        }
        // Stops the reading at its next piece if the assembling ended
        // first.
        drop(fetched);
    });
    assembler.peak_bytes
}

impl<'p> Assembler<'p> {
    fn new(plan: &'p Plan, left: &'p LeftPass, budget: usize) -> Self {
        let mut by_last: Vec<u32> = (0..plan.chunks.len() as u32).collect();
        by_last.sort_by_key(|&c| plan.chunks[c as usize].last);
        Self {
            plan,
            open: HashMap::default(),
            by_last,
            completed: 0,
            left,
            budget,
            peak_bytes: 0,
        }
    }

    /// Files what the reading connection sends into the open chunks, and
    /// after each range sends the chunks it completed.
    fn assemble(
        &mut self,
        fetched: &Receiver<Result<Fetched>>,
        read_to: &AtomicI64,
        out: &SyncSender<Result<Piece>>,
    ) -> Result<()> {
        // Which chunk each group of the range being read joins.
        let mut member: Members = HashMap::default();
        for piece in fetched {
            match piece? {
                Fetched::Groups(groups) => self.join(groups, &mut member),
                Fetched::Edges(rows) => self.read_edges(&rows, &member)?,
                Fetched::Rows(rows) => self.read_rows(&rows, &member)?,
                Fetched::Again { from } => {
                    member.clear();
                    self.forget_from(from);
                }
                Fetched::Done { to } => {
                    member.clear();
                    read_to.store(to, Ordering::Relaxed);
                    let held: usize = self.open.values().map(Open::bytes).sum();
                    self.peak_bytes = self.peak_bytes.max(held);
                    if !self.send_complete(to, out) {
                        return Ok(());
                    }
                    self.keep_to_budget(out);
                }
            }
        }
        Ok(())
    }

    /// Opens the range's groups in their chunks. A room that left the pass
    /// since the reading connection looked (over the budget at the last
    /// range, say) is not.
    fn join(&mut self, groups: Vec<(i64, u32)>, member: &mut Members) {
        for (id, chunk) in groups {
            if self.left.has_left(self.plan.chunks[chunk as usize].room) {
                continue;
            }
            let open = self.open.entry(chunk).or_default();
            member.insert(id, (chunk, open.entries.len()));
            open.chunk.chunk = chunk;
            open.chunk.ids.push(id);
            open.entries.push(StateGroupEntry {
                in_range: true,
                ..Default::default()
            });
        }
    }

    fn read_edges(&mut self, rows: &[Row], member: &Members) -> Result<()> {
        let ctx = "reading a range of state group edges";
        for row in rows {
            let group: i64 = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
            let Some(&(chunk, index)) = member.get(&group) else {
                continue;
            };
            let open = self.open.get_mut(&chunk).expect("a member's chunk is open");
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
            let entry = &mut open.entries[index];
            match entry.prev {
                Some(other) if other != prev => open.damage(format!(
                    "state group {group} has two predecessors ({other} and {prev})"
                )),
                _ => entry.prev = Some(prev),
            }
        }
        Ok(())
    }

    fn read_rows(&mut self, rows: &[Row], member: &Members) -> Result<()> {
        let ctx = "reading a range of state rows";
        let groups: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get(0).map_err(|e| Error::db(ctx, e)))
            .collect::<Result<_>>()?;
        // A group's rows mostly come together: each run of them is looked
        // up once and made part of the group's delta (merged with the
        // parts before when they came apart, as rows stored apart do).
        let mut scratch: Vec<(KeyId, ValueId)> = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let group = groups[start];
            let end = start + groups[start..].iter().take_while(|&&g| g == group).count();
            let run = &rows[start..end];
            start = end;
            let Some(&(chunk, index)) = member.get(&group) else {
                continue;
            };
            let open = self.open.get_mut(&chunk).expect("a member's chunk is open");
            open.echo.next_group();
            for row in run {
                match row_strings(row, group) {
                    Ok((ty, state_key, event_id)) => {
                        let symbols = &mut open.chunk.symbols;
                        scratch.push(open.echo.row(symbols, ty, state_key, event_id));
                        open.rows += 1;
                    }
                    Err(why) => open.damage(why),
                }
            }
            open.add_rows(index, &mut scratch);
        }
        Ok(())
    }

    /// Forgets every group from `from` on (a range read again).
    fn forget_from(&mut self, from: i64) {
        for open in self.open.values_mut() {
            // Joined in ascending ids.
            let kept = open.chunk.ids.partition_point(|&id| id < from);
            open.chunk.ids.truncate(kept);
            open.entries.truncate(kept);
            open.rows = open.entries.iter().map(|g| g.delta.len()).sum();
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
            assembled.groups = assembled.ids.iter().copied().zip(open.entries).collect();
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
