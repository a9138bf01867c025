//! The pass's writes, gathered and done in one sweep of ascending group ids.
//!
//! Most chunks complete late in a pass (a room's first chunk spans the
//! whole id range), and a chunk's groups are spread over the whole table.
//! Written chunk by chunk, each chunk's deletes and index inserts land on
//! pages read long before: out of cache, every chunk reads its pages again
//! at random. Measured on `20m` with the server in 256 MiB, deleting every
//! group's rows in 500-group chunks of one room each, in the order the pass
//! completes them, read 34 GB in 1.9 M reads and took 203 s; the same
//! deletes in batches of 500 consecutive ids read 5.2 GB in 3,800 reads in
//! 20 s (docs/reading.md, "Writing in one sweep").
//!
//! So with one writer, the pass decides each complete chunk as it comes
//! (the room's lock, its progress read under it, compress, decide, verify:
//! `crate::chunk::decide_chunk`) and keeps what it will write here instead:
//! the changed groups' new entries in one symbol table, how each was
//! loaded, and the room's new levels. When what is kept reaches the pass's
//! memory budget, or when the reading is over, one sweep writes all of it
//! in batches of ascending ids across
//! rooms, each batch one transaction with the usual locks and re-checks
//! (`db::write`). A chunk's progress (levels and position) is saved in the
//! transaction of the batch that holds its highest changed group, and never
//! before the progress of the room's chunk before it: a kill between
//! batches leaves every room at the end of a chunk whose groups are all
//! written, or at its chunk before with some of the next chunk's groups
//! rewritten already, each onto a base that keeps its state. (A signal lets
//! the sweep finish: `super::writers`.)
//!
//! A room's next chunk is decided from what its chunk before will leave:
//! that chunk's levels and position, its carry, and the room's groups
//! waiting here with their new entries ([`Sweep::later_of`]), which its
//! load takes wherever it meets them instead of what the database still
//! shows (`db::load::LaterGroups`). Only the groups the load reaches are
//! translated, so a big room with many chunks waiting costs each of its
//! chunks what it walks through, not all of the room's waiting groups (a
//! first version handed them all over and had to write a room once it had
//! four chunks waiting: 21 sweeps over the table on `20m` instead of one).
//! The sweep's re-checks then guard the writes as any write: a group
//! Synapse changed meanwhile is left as it is, and a group whose new base
//! is gone keeps its old entry.

use std::collections::{BTreeMap, HashMap};

use postgres::{Client, Transaction};
use synapse_compress_state::core::group::{Loaded, LoadedGroups};
use synapse_compress_state::core::state_map::Symbols;
use synapse_compress_state::db::load::LaterGroups;
use synapse_compress_state::db::write::{BatchHooks, Rewrite, RoomOf};
use synapse_compress_state::db::Prepared;
use synapse_compress_state::tool::failpoint;
use synapse_compress_state::{GroupMap, Level, LevelSizes, Result, StateGroupEntry};

use crate::carry::{out_of_range, translate};
use crate::chunk::Pending;
use crate::state_saving::{self, RoomProgress};
use crate::summary::ChunkOutcome;

/// What deciding a chunk leaves for the sweep.
pub(super) enum Kept {
    /// Verified changes to write, with the new progress.
    Write(Box<Pending>),
    /// Only the progress to save (a chunk not worth writing).
    Progress(ChunkOutcome),
}

/// A decided chunk waiting for the sweep.
pub(super) struct Part {
    /// Its rank in the pass's plan.
    pub(super) rank: u32,
    pub(super) outcome: ChunkOutcome,
    /// The levels and position saved with it.
    levels: Vec<Level>,
    last: i64,
    /// Its highest changed group (none: nothing to rewrite).
    highest: Option<i64>,
    /// It was decided worth writing (its outcome says committed).
    write: bool,
    /// The room's part before it in this sweep.
    before: Option<usize>,
    saved: bool,
}

/// What the sweep will write.
#[derive(Default)]
pub(super) struct Sweep {
    symbols: Symbols,
    new: GroupMap,
    loaded: AsLoaded,
    rooms: Vec<String>,
    room_index: HashMap<String, u32>,
    /// The room (index) of each changed group.
    group_room: HashMap<i64, u32>,
    /// Each room's changed groups.
    room_groups: HashMap<u32, Vec<i64>>,
    /// The part (index) of each changed group.
    group_part: HashMap<i64, u32>,
    /// Each room's last part.
    room_last: HashMap<u32, usize>,
    parts: Vec<Part>,
    changed: Vec<i64>,
    bytes: usize,
}

/// One room's groups waiting in a sweep, for its next chunk's load
/// ([`LaterGroups`]): each is translated into the chunk's symbols only if
/// the load reaches it, so a big room with many chunks waiting costs each
/// of its chunks only what it walks through.
pub(super) struct RoomLater<'a> {
    sweep: &'a Sweep,
    ids: &'a [i64],
}

impl LaterGroups for RoomLater<'_> {
    fn ids(&self) -> &[i64] {
        self.ids
    }

    fn entry(&self, id: i64, symbols: &mut Symbols) -> Option<StateGroupEntry> {
        self.ids.binary_search(&id).ok()?;
        Some(out_of_range(
            self.sweep.new.get(&id)?,
            &self.sweep.symbols,
            symbols,
        ))
    }
}

/// How the sweep's groups were loaded.
#[derive(Default)]
struct AsLoaded(BTreeMap<i64, Loaded>);

impl LoadedGroups for AsLoaded {
    fn loaded(&self, id: i64) -> Option<Loaded> {
        self.0.get(&id).copied()
    }
    fn rows_digest(&self, _: i64, _: &Symbols) -> Option<String> {
        None
    }
}

/// The rooms of the sweep's groups, for the rows written.
struct Rooms<'a> {
    rooms: &'a [String],
    group_room: &'a HashMap<i64, u32>,
}

impl RoomOf for Rooms<'_> {
    fn room_of(&self, group: i64) -> &str {
        &self.rooms[self.group_room[&group] as usize]
    }
}

impl Sweep {
    /// Roughly the memory held (the budget's measure, as the pass's open
    /// chunks count theirs).
    pub(super) fn bytes(&self) -> usize {
        self.bytes + self.symbols.bytes()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// What it holds, in words, for the log and the bar.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} decided chunks of {} rooms ({} groups to rewrite)",
            self.parts.len(),
            self.rooms.len(),
            self.changed.len()
        )
    }

    /// `room`'s groups waiting here, as its next chunk's load takes them
    /// where it meets them: it must see them as they will be.
    pub(super) fn later_of(&self, room: &str) -> Option<RoomLater<'_>> {
        let ids = self.room_groups.get(self.room_index.get(room)?)?;
        debug_assert!(ids.is_sorted());
        Some(RoomLater { sweep: self, ids })
    }

    /// The progress `room`'s last part here leaves it at, if it has one:
    /// its next chunk continues from there, not from the saved progress.
    pub(super) fn progress_of(&self, room: &str) -> Option<RoomProgress> {
        let part = &self.parts[*self.room_last.get(self.room_index.get(room)?)?];
        Some(RoomProgress {
            last_compressed: Some(part.last),
            levels: part.levels.clone(),
            reset_reason: None,
        })
    }

    /// Keeps a decided chunk: its writes, or only its position with fresh
    /// levels of `sizes` when it is not worth writing.
    pub(super) fn add(&mut self, rank: u32, kept: Kept, sizes: &LevelSizes) {
        match kept {
            Kept::Write(pending) => self.add_write(rank, *pending),
            Kept::Progress(outcome) => self.add_progress(rank, outcome, sizes.empty_levels()),
        }
    }

    /// Keeps a chunk with nothing to write: its position (with `levels`)
    /// to save.
    fn add_progress(&mut self, rank: u32, outcome: ChunkOutcome, levels: Vec<Level>) {
        let last = outcome.last;
        self.add_part(rank, outcome, levels, last, None, false);
    }

    /// Keeps a decided chunk's changes, its new levels and position.
    fn add_write(&mut self, rank: u32, pending: Pending) {
        let Pending {
            outcome,
            chunk,
            compressed,
            changed,
        } = pending;
        let room = self.room(&outcome.room_id);
        let part = self.parts.len() as u32;
        for &group in &changed {
            let entry = &compressed.changes[&group];
            let delta = translate(&entry.delta, &chunk.symbols, &mut self.symbols);
            self.bytes += delta.len() * 8 + 96;
            if let Some(base) = entry.prev {
                if let Some(original) = chunk.original.get(&base) {
                    self.loaded
                        .0
                        .entry(base)
                        .or_insert_with(|| original.loaded());
                }
            }
            self.loaded.0.insert(group, chunk.original[&group].loaded());
            self.new.insert(
                group,
                StateGroupEntry {
                    in_range: true,
                    prev: entry.prev,
                    delta,
                    missing_group_row: false,
                    repeated_rows: 0,
                },
            );
            self.group_room.insert(group, room);
            self.room_groups.entry(room).or_default().push(group);
            self.group_part.insert(group, part);
        }
        self.changed.extend_from_slice(&changed);
        self.add_part(
            rank,
            outcome,
            compressed.levels,
            chunk.last,
            changed.last().copied(),
            true,
        );
    }

    fn room(&mut self, room: &str) -> u32 {
        if let Some(&i) = self.room_index.get(room) {
            return i;
        }
        let i = self.rooms.len() as u32;
        self.rooms.push(room.to_owned());
        self.room_index.insert(room.to_owned(), i);
        self.bytes += room.len() * 2 + 64;
        i
    }

    fn add_part(
        &mut self,
        rank: u32,
        outcome: ChunkOutcome,
        levels: Vec<Level>,
        last: i64,
        highest: Option<i64>,
        write: bool,
    ) {
        let room = self.room(&outcome.room_id);
        let index = self.parts.len();
        let before = self.room_last.insert(room, index);
        self.bytes += 256;
        self.parts.push(Part {
            rank,
            outcome,
            levels,
            last,
            highest,
            write,
            before,
            saved: false,
        });
    }

    /// Writes everything kept, batch after batch; `before` runs before each
    /// batch and may stop the sweep there. Returns the parts whose writes
    /// and progress committed, in the order they did, with their outcomes
    /// filled in; the others are given up (a later run does them again).
    pub(super) fn write(
        mut self,
        client: &mut Client,
        prepared: &mut Prepared,
        before: &mut dyn FnMut(&mut Client) -> Result<bool>,
    ) -> Result<Vec<Part>> {
        self.changed.sort_unstable();
        let Sweep {
            symbols,
            new,
            loaded,
            rooms,
            group_room,
            group_part,
            mut parts,
            changed,
            ..
        } = self;
        let room_of = Rooms {
            rooms: &rooms,
            group_room: &group_room,
        };
        let rewrite = Rewrite {
            room_id: "",
            room_of: Some(&room_of),
            symbols: &symbols,
            original: &loaded,
            new: &new,
        };
        let mut order = Vec::with_capacity(parts.len());
        let mut in_transaction = |tx: &mut Transaction<'_>, batch: &[i64], ready: &[i64]| {
            for &group in batch {
                let part = &mut parts[group_part[&group] as usize];
                if ready.binary_search(&group).is_ok() {
                    part.outcome.groups_written += 1;
                    part.outcome.rows_deleted += loaded.0[&group].rows as u64;
                    part.outcome.rows_inserted += new[&group].delta.len() as u64;
                } else {
                    part.outcome.groups_skipped_live += 1;
                }
            }
            // Every part whose changed groups are all written by now, after
            // the room's part before it.
            let reached = batch.last().copied().unwrap_or(i64::MAX);
            for i in 0..parts.len() {
                let part = &parts[i];
                let ready = !part.saved
                    && part.highest.is_none_or(|h| h <= reached)
                    && part.before.is_none_or(|b| parts[b].saved);
                if ready {
                    failpoint::stop_here("auto::before-progress-save");
                    state_saving::write_room_progress(
                        tx,
                        prepared,
                        &part.outcome.room_id,
                        &part.levels,
                        part.last,
                    )?;
                    parts[i].saved = true;
                    order.push(i);
                }
            }
            Ok(())
        };
        rewrite.write_each(
            client,
            &changed,
            BatchHooks {
                before,
                in_transaction: &mut in_transaction,
            },
        )?;
        let mut by_index: Vec<Option<Part>> = parts.into_iter().map(Some).collect();
        Ok(order
            .into_iter()
            .filter_map(|i| by_index[i].take())
            .map(|mut part| {
                part.outcome.committed = part.write;
                part
            })
            .collect())
    }
}
