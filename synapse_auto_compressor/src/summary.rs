//! The automatic tool's figures: what happened to each chunk
//! ([`ChunkOutcome`]), the whole run's summary ([`RunSummary`]: the log
//! lines and the `--json` object), and what a run keeps between chunks to
//! count them honestly (`RunFigures`).
//!
//! Each group is counted once, in its own chunk; rows saved come from what
//! the writes actually deleted and inserted; the rows of the rooms touched
//! come from what the chunks loaded and wrote, plus the rooms' other groups
//! counted in the table once, at the end; the table's size and the
//! optional VACUUM come last (`db::stats`).

use std::collections::BTreeMap;
use std::time::Duration;

use log::{info, warn};
use postgres::Client;
use synapse_compress_state::core::chains::longest_chains;
use synapse_compress_state::core::group::in_range_row_counts;
use synapse_compress_state::db::stats::{self, DiskSpace};
use synapse_compress_state::tool::interrupt::Signal;
use synapse_compress_state::tool::timings::Timings;
use synapse_compress_state::{Compressed, GroupMap, Result};

use crate::chain_lengths::{ChainLengths, Length};

/// What happened to one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkOutcome {
    pub room_id: String,
    /// Exclusive start of the chunk.
    pub after: Option<i64>,
    /// Last group of the chunk.
    pub last: i64,
    pub groups: usize,
    /// Rows of the chunk's own groups (not of the level heads and
    /// predecessors loaded with them), as loaded.
    pub rows_before: usize,
    /// The same groups' rows as the compressor would leave them.
    pub rows_after: usize,
    /// Rows the chunk's writes deleted and inserted (only groups actually
    /// rewritten: a group Synapse changed meanwhile keeps its rows).
    pub rows_deleted: u64,
    pub rows_inserted: u64,
    /// The longest chain (hops to a group with no edge) of the chunk's
    /// groups before this run touched them, and as they are after it.
    pub longest_chain_before: u32,
    pub longest_chain_after: u32,
    /// Groups the compressor gave a new predecessor (or made a snapshot).
    pub groups_changed: usize,
    /// Groups that had to become snapshots for want of a usable predecessor.
    pub forced_resets: usize,
    /// Groups whose rows or edge were rewritten.
    pub groups_written: usize,
    /// Groups left alone because another writer (Synapse, another
    /// compressor) changed them meanwhile.
    pub groups_skipped_live: usize,
    /// False when the chunk was skipped (it would not have saved rows, or
    /// its structure could not be read safely).
    pub committed: bool,
    /// The room's rows or edges are damaged: nothing was written or saved
    /// for it, and the run leaves it alone.
    pub damaged: bool,
    /// The room has no groups after this chunk.
    pub room_finished: bool,
}

impl ChunkOutcome {
    /// A chunk of `room` after `after` that nothing has happened to yet.
    pub(crate) fn new(room: &str, after: Option<i64>) -> Self {
        ChunkOutcome {
            room_id: room.to_owned(),
            after,
            last: after.unwrap_or(0),
            groups: 0,
            rows_before: 0,
            rows_after: 0,
            rows_deleted: 0,
            rows_inserted: 0,
            longest_chain_before: 0,
            longest_chain_after: 0,
            groups_changed: 0,
            forced_resets: 0,
            groups_written: 0,
            groups_skipped_live: 0,
            committed: false,
            damaged: false,
            room_finished: false,
        }
    }

    /// Rows this chunk's writes removed (none when it was not written).
    fn saved(&self) -> i64 {
        if self.committed {
            self.rows_deleted as i64 - self.rows_inserted as i64
        } else {
            0
        }
    }

    /// Takes in the compressor's figures for the chunk, and logs them.
    pub(crate) fn record(&mut self, original: &GroupMap, compressed: &Compressed) {
        (self.rows_before, self.rows_after) = in_range_row_counts(original, &compressed.changes);
        self.groups_changed = compressed.stats.state_groups_changed;
        self.forced_resets = compressed.stats.resets_no_suitable_prev;
        info!(
            "Room {}: groups {}..={} ({} groups): rows {} -> {}",
            self.room_id,
            self.after.map_or(0, |a| a + 1),
            self.last,
            self.groups,
            self.rows_before,
            self.rows_after
        );
    }

    /// This chunk's room is damaged: say so, and leave it alone.
    pub(crate) fn leave_damaged(mut self, why: &str) -> Self {
        warn!(
            "Room {} is damaged ({why}); leaving it alone: nothing written, no progress saved",
            self.room_id
        );
        self.damaged = true;
        self
    }
}

/// The figures of a whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub chunks: usize,
    pub chunks_skipped: usize,
    pub rooms_finished: usize,
    /// Groups in the chunks processed (skipped chunks included).
    pub groups: usize,
    /// Rows of those groups when their chunk loaded them. Each group is in
    /// one chunk only: level heads and predecessors loaded with a chunk are
    /// not counted again.
    pub rows_before: usize,
    /// The same groups' rows after the run: `rows_before - rows_saved`.
    pub rows_after: usize,
    /// Rows the run's writes deleted minus rows they inserted: exactly
    /// what the run removed from `state_groups_state`.
    pub rows_saved: i64,
    /// Rows the run's writes deleted (the space they held is what VACUUM
    /// makes reusable).
    pub rows_deleted: u64,
    /// Rows of `state_groups_state` of the rooms the run touched. After:
    /// the groups of each room's chunks with the rows they were loaded with
    /// less what the run removed from them, plus the room's other groups
    /// counted in the table at the end of the run, in one query (one count
    /// per room before its first chunk cost as much server time as loading
    /// the chunks: 9.9 s against 8.9 s over the benchmark's 3m database;
    /// counting the chunks' groups again at the end read the whole table
    /// after a full run, dead rows included). Before: after plus the rows
    /// the run removed (`rows_saved`). None when the run touched no room.
    pub table_rows_before: Option<u64>,
    pub table_rows_after: Option<u64>,
    /// Rooms whose rows those counts cover.
    pub rooms_touched: usize,
    /// The longest chain (edges Synapse follows to read a group's state)
    /// among the groups of the run's chunks, before the run and after it.
    pub longest_chain_before: u32,
    pub longest_chain_after: u32,
    /// The table's size and the space freed inside it, when rows were
    /// deleted or `--vacuum` ran.
    pub disk: Option<DiskSpace>,
    /// Groups given a new structure in committed chunks.
    pub groups_changed: usize,
    /// Of those, groups forced to be snapshots (no usable predecessor).
    pub forced_resets: usize,
    pub groups_written: usize,
    /// Groups left alone because another writer (Synapse, another
    /// compressor) changed them meanwhile.
    pub groups_skipped_live: usize,
    /// Rooms whose saved levels were unusable and were reset.
    pub levels_reset: usize,
    /// Rooms left for a later run because another compressor had them.
    pub rooms_busy: usize,
    /// Rooms left alone because their rows or edges are damaged.
    pub rooms_damaged: usize,
    /// Time per phase, summed over chunks.
    pub timings: Timings,
    pub elapsed: Duration,
    /// The signal that stopped the run before its `-n` chunks were done.
    pub interrupted: Option<Signal>,
    /// Workers that compressed rooms at the same time (`--jobs`).
    pub workers: usize,
}

impl RunSummary {
    /// Adds what a worker's own summary of one chunk holds besides the
    /// chunk's outcome (counted with [`RunSummary::add`]): rooms whose
    /// levels were reset and the time per phase.
    pub(crate) fn add_worker(&mut self, own: &RunSummary) {
        self.levels_reset += own.levels_reset;
        self.timings.load += own.timings.load;
        self.timings.compress += own.timings.compress;
        self.timings.verify += own.timings.verify;
        self.timings.write += own.timings.write;
    }

    /// Counts a chunk that was done (committed or skipped): each group in
    /// its own chunk only, rows saved from what the writes did.
    pub(crate) fn add(&mut self, outcome: &ChunkOutcome) {
        self.chunks += 1;
        self.groups += outcome.groups;
        self.rows_before += outcome.rows_before;
        self.longest_chain_before = self.longest_chain_before.max(outcome.longest_chain_before);
        self.longest_chain_after = self.longest_chain_after.max(outcome.longest_chain_after);
        if outcome.committed {
            self.groups_changed += outcome.groups_changed;
            self.forced_resets += outcome.forced_resets;
            self.rows_saved += outcome.saved();
            self.rows_deleted += outcome.rows_deleted;
            self.groups_written += outcome.groups_written;
            self.groups_skipped_live += outcome.groups_skipped_live;
        } else {
            self.chunks_skipped += 1;
        }
        if outcome.room_finished {
            self.rooms_finished += 1;
        }
    }

    /// The figures as one JSON object (for `--json`, scripts and monitoring).
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "chunks": self.chunks,
            "chunks_skipped": self.chunks_skipped,
            "rooms_finished": self.rooms_finished,
            "groups": self.groups,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "rows_saved": self.rows_saved,
            "rows_deleted": self.rows_deleted,
            "table_rows_before": self.table_rows_before,
            "table_rows_after": self.table_rows_after,
            "rooms_touched": self.rooms_touched,
            "longest_chain_before": self.longest_chain_before,
            "longest_chain_after": self.longest_chain_after,
            "groups_changed": self.groups_changed,
            "forced_resets": self.forced_resets,
            "groups_written": self.groups_written,
            "groups_skipped_live": self.groups_skipped_live,
            "levels_reset": self.levels_reset,
            "rooms_busy": self.rooms_busy,
            "rooms_damaged": self.rooms_damaged,
            "seconds": {
                "load": self.timings.load.as_secs_f64(),
                "compress": self.timings.compress.as_secs_f64(),
                "verify": self.timings.verify.as_secs_f64(),
                "write": self.timings.write.as_secs_f64(),
                "total": self.elapsed.as_secs_f64(),
            },
            "peak_rss_mib": synapse_compress_state::tool::memory::peak_rss_mib(),
            "interrupted": self.interrupted.is_some(),
            "workers": self.workers,
        });
        DiskSpace::add_json(self.disk.as_ref(), &mut json);
        json
    }

    /// Logs the figures in words: what each number counts.
    pub(crate) fn log(&self) {
        let head = format!(
            "saved {} rows, {} chunks done ({} skipped as not worth writing), {} rooms finished, {} rooms busy, {} rooms damaged, in {:.1}s by {} worker{}",
            self.rows_saved,
            self.chunks,
            self.chunks_skipped,
            self.rooms_finished,
            self.rooms_busy,
            self.rooms_damaged,
            self.elapsed.as_secs_f64(),
            self.workers,
            if self.workers == 1 { "" } else { "s" }
        );
        match self.interrupted {
            None => info!("Finished: {head}"),
            Some(signal) => warn!(
                "Interrupted by {signal}: {head}; the progress of every chunk done is saved: run the tool again and it continues where this run stopped"
            ),
        }
        info!(
            "The {} groups compressed had {} rows and now have {}; {} groups given a new structure, {} rewritten, {} left as Synapse changed them meanwhile",
            self.groups,
            self.rows_before,
            self.rows_after,
            self.groups_changed,
            self.groups_written,
            self.groups_skipped_live
        );
        if let (Some(before), Some(after)) = (self.table_rows_before, self.table_rows_after) {
            info!(
                "state_groups_state rows of the {} rooms touched: {after} now, {before} before the run (that plus the rows the run removed)",
                self.rooms_touched
            );
        }
        info!(
            "Longest chain Synapse walks to read one of these groups: {} hops before, {} after",
            self.longest_chain_before, self.longest_chain_after
        );
        if let Some(disk) = &self.disk {
            for line in disk.to_string().lines() {
                info!("{line}");
            }
        }
    }
}

/// How the rows of a room the run touched are counted at the end.
enum Counted {
    /// No chunk of it was done: all its groups in the table.
    Nothing,
    /// Its chunks covered its groups `after < id <= last`: those count as
    /// loaded, less what the run removed from them (`rows_after`); the
    /// others in the table. Counting the covered ones in the table again
    /// would read every row the run deleted (after a full run, the whole
    /// table). A group Synapse deletes after its chunk still counts.
    Covered {
        after: Option<i64>,
        last: i64,
        /// The room has no groups after `last`.
        finished: bool,
        rows_after: i64,
    },
    /// Synapse changed groups of one of its chunks meanwhile: all its
    /// groups in the table.
    InTable,
}

/// What the run keeps between chunks for its figures.
#[derive(Default)]
pub(crate) struct RunFigures {
    /// The rooms touched, with the groups their chunks covered.
    rooms: BTreeMap<String, Counted>,
    /// For groups of earlier chunks, their chain's length before the run: a
    /// later chunk's chains run through those groups, which the loaded
    /// structure already shows rewritten (within a budget, see
    /// [`crate::chain_lengths`]).
    lengths: ChainLengths,
}

impl RunFigures {
    /// Figures for one chunk of a worker (`--jobs`): the chain lengths
    /// recorded by the room's earlier chunks, given back with
    /// [`RunFigures::into_lengths`] when it is done.
    pub(crate) fn with_lengths(lengths: ChainLengths) -> RunFigures {
        RunFigures {
            rooms: BTreeMap::new(),
            lengths,
        }
    }

    /// The chain lengths kept for the rooms' next chunks.
    pub(crate) fn into_lengths(self) -> ChainLengths {
        self.lengths
    }

    /// Takes out the chain lengths kept for `room`, for a worker's chunk
    /// (given back with [`RunFigures::merge_lengths`]).
    pub(crate) fn split_lengths(&mut self, room: &str) -> ChainLengths {
        self.lengths.split_off(room)
    }

    pub(crate) fn merge_lengths(&mut self, lengths: ChainLengths) {
        self.lengths.merge(lengths);
    }

    /// Notes that the run touches `room` (for the rows counted at the end).
    pub(crate) fn touch(&mut self, room: &str, summary: &mut RunSummary) {
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.to_owned(), Counted::Nothing);
            summary.rooms_touched += 1;
        }
    }

    /// Counts a chunk that was done (committed or skipped) in `summary`,
    /// and its groups' rows for its room's count ([`Counted`]).
    pub(crate) fn add(&mut self, outcome: &ChunkOutcome, summary: &mut RunSummary) {
        summary.add(outcome);
        self.touch(&outcome.room_id, summary);
        let rows_after = outcome.rows_before as i64 - outcome.saved();
        let counted = self.rooms.get_mut(&outcome.room_id).expect("touched above");
        *counted = match std::mem::replace(counted, Counted::InTable) {
            // Synapse changed some of the chunk's groups meanwhile: the
            // rows loaded no longer say what they hold.
            _ if outcome.groups_skipped_live > 0 => Counted::InTable,
            Counted::Nothing => Counted::Covered {
                after: outcome.after,
                last: outcome.last,
                finished: outcome.room_finished,
                rows_after,
            },
            // A room's chunks follow one another; one that does not (never
            // seen) has its groups counted in the table instead.
            Counted::Covered {
                after,
                last,
                rows_after: before,
                ..
            } if outcome.after == Some(last) => Counted::Covered {
                after,
                last: outcome.last,
                finished: outcome.room_finished,
                rows_after: before + rows_after,
            },
            other => other,
        };
    }

    /// Counts the rows of the rooms the run touched, after its last chunk:
    /// the groups its chunks covered from what they loaded and wrote, the
    /// rooms' other groups in the table. Derives the count before from
    /// what the run removed.
    pub(crate) fn count_rooms_after(
        &self,
        client: &mut Client,
        summary: &mut RunSummary,
    ) -> Result<()> {
        if self.rooms.is_empty() {
            return Ok(());
        }
        let mut known = 0i64;
        let spans: Vec<stats::Span> = self
            .rooms
            .iter()
            .map(|(room, counted)| match *counted {
                Counted::Covered {
                    after,
                    last,
                    finished,
                    rows_after,
                } => {
                    known += rows_after;
                    // A room the run finished has no groups after its last
                    // chunk but those Synapse added meanwhile, which are
                    // not the run's to count.
                    stats::Span::covering(room, after, (!finished).then_some(last))
                }
                Counted::Nothing | Counted::InTable => stats::Span::none(room),
            })
            .collect();
        let outside = stats::rooms_rows_outside(client, &spans)?;
        let after = (outside as i64 + known).max(0);
        summary.table_rows_after = Some(after as u64);
        summary.table_rows_before = Some((after + summary.rows_saved).max(0) as u64);
        Ok(())
    }

    /// The longest chains of `chunk`'s groups before and after: before
    /// along their loaded edges, continuing through earlier chunks' groups
    /// with those groups' lengths before the run; after along the new
    /// structure (`new`, when the chunk is written) as it is in the
    /// database. Every chain ends inside the chunk's loaded groups: every
    /// predecessor is loaded with it. A group Synapse rewrote meanwhile
    /// (`groups_skipped_live`) counts as the compressor would have left it,
    /// not as Synapse did: a figure for the run's own work.
    ///
    /// The lengths of the chunk's groups are kept for the room's next
    /// chunk (the chunk ending at `last`) if `more` says it has one.
    pub(crate) fn chains(
        &mut self,
        room: &str,
        chunk: &GroupMap,
        new: Option<&Compressed>,
        last: i64,
        more: bool,
    ) -> (u32, u32) {
        let changes = new.map(|c| &c.changes);
        let mut known = self.lengths.take(room);
        let before_run = known.iter().map(|(&id, l)| (id, l.before)).collect();
        let after_chunk = known.iter().map(|(&id, l)| (id, l.after)).collect();
        let chains = longest_chains(chunk, changes, &before_run, &after_chunk);
        if more {
            known.extend(chains.own_before.iter().map(|(&id, &before)| {
                let after = chains.own_after.get(&id).copied().unwrap_or(before);
                (id, Length { before, after })
            }));
            self.lengths.keep(room, last, known);
        }
        let (before, after) = (chains.before, chains.after);
        (before, after)
    }
}
