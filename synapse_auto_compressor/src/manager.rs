//! The chunk loop of the automatic tool.
//!
//! Each step picks the room of the lowest group not yet compressed, loads
//! the next chunk of that room (plus the saved level heads and every needed
//! predecessor), compresses it continuing from the saved levels, verifies,
//! and writes the changes; the last write transaction also saves the new
//! levels and position, so a run killed at any instant resumes cleanly.
//! With `--largest-rooms`, `room_by_room` takes the rooms [`crate::largest`]
//! picks instead, each to its end through the same chunk code, leaving the
//! scan position alone.
//!
//! Each chunk holds its room's lock (`db::room_lock`) from before it reads
//! the room's progress until its last write commits. A room another
//! compressor holds, or whose data is damaged, is left for a later run:
//! nothing is saved for it, and the saved scan position stays at its next
//! group so the next run comes back to it. A chunk loaded ahead (before its
//! room's lock was taken) is still safe to use: the write re-checks every
//! group under row locks, and no writer changes any group's state.
//!
//! Ctrl-C or SIGTERM (`tool::interrupt`) is looked at between chunks only,
//! once the last chunk's progress has committed with it, so the saved
//! progress of an interrupted run is exact and the next run continues from
//! there. A bar on a terminal shows chunks done, rows saved and the room.
//!
//! The run's figures (`RunSummary`) count each group once, in its own
//! chunk; rows saved come from what the writes actually deleted and
//! inserted; the rows of the rooms touched are counted in the table once,
//! at the end (`RunFigures`), and the table's size and the optional VACUUM
//! come last (`db::stats`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use postgres::Client;
use synapse_compress_state::core::chains::longest_chains;
use synapse_compress_state::core::group::{
    changed_groups, in_range_row_counts, row_count, row_count_after,
};
use synapse_compress_state::core::state_map::Symbols;
use synapse_compress_state::core::verify::verify;
use synapse_compress_state::db::load::{self, LoadReport};
use synapse_compress_state::db::stats::{self, DiskSpace};
use synapse_compress_state::db::write::{Rewrite, WriteReport};
use synapse_compress_state::db::{self, schema, Prepared, RoomLock};
use synapse_compress_state::error::printable;
use synapse_compress_state::tool::args::Positive;
use synapse_compress_state::tool::interrupt::{self, Signal};
use synapse_compress_state::tool::timings::Timings;
use synapse_compress_state::tool::{failpoint, progress};
use synapse_compress_state::{compress, Compressed, Error, GroupMap, Level, LevelSizes, Result};

use crate::prefetch::{load_chunk, ChunkRequest, LoadedChunk, Prefetcher};
use crate::state_saving::LeftRooms;
use crate::{largest, lock, state_saving};

/// The settings of one automatic run.
#[derive(Clone, Debug)]
pub struct AutoConfig {
    /// Connection string: a `postgresql://` URL or `key=value` pairs.
    pub db_url: String,
    /// Groups per chunk.
    pub chunk_size: Positive,
    /// Chunks to process in this run.
    pub number_of_chunks: Positive,
    /// Levels for rooms without usable saved levels.
    pub default_levels: LevelSizes,
    /// Compress this many rooms, those estimated to save the most, each to
    /// its end, instead of scanning by group id (`--largest-rooms`).
    pub largest_rooms: Option<Positive>,
    /// Run `VACUUM (ANALYZE) state_groups_state` at the end.
    pub vacuum: bool,
}

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
    fn new(room: &str, after: Option<i64>) -> Self {
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

    /// Takes in the compressor's figures for the chunk, and logs them.
    fn record(&mut self, original: &GroupMap, compressed: &Compressed) {
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
    fn leave_damaged(mut self, why: &str) -> Self {
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
    /// Rows of `state_groups_state` of the rooms the run touched: after is
    /// counted (not estimated) at the end of the run, in one query; before
    /// is that count plus the rows the run removed (`rows_saved`), so
    /// Synapse's own writes meanwhile are in both. One count instead of one
    /// per room before its first chunk: that cost as much server time as
    /// loading the chunks (9.9 s against 8.9 s over the benchmark's 3m
    /// database). None when the run touched no room.
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
}

impl RunSummary {
    /// Counts a chunk that was done (committed or skipped): each group in
    /// its own chunk only, rows saved from what the writes did.
    fn add(&mut self, outcome: &ChunkOutcome) {
        self.chunks += 1;
        self.groups += outcome.groups;
        self.rows_before += outcome.rows_before;
        self.longest_chain_before = self.longest_chain_before.max(outcome.longest_chain_before);
        self.longest_chain_after = self.longest_chain_after.max(outcome.longest_chain_after);
        if outcome.committed {
            self.groups_changed += outcome.groups_changed;
            self.forced_resets += outcome.forced_resets;
            self.rows_saved += outcome.rows_deleted as i64 - outcome.rows_inserted as i64;
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
        });
        DiskSpace::add_json(self.disk.as_ref(), &mut json);
        json
    }

    /// Logs the figures in words: what each number counts.
    fn log(&self) {
        let head = format!(
            "saved {} rows, {} chunks done ({} skipped as not worth writing), {} rooms finished, {} rooms busy, {} rooms damaged, in {:.1}s",
            self.rows_saved,
            self.chunks,
            self.chunks_skipped,
            self.rooms_finished,
            self.rooms_busy,
            self.rooms_damaged,
            self.elapsed.as_secs_f64()
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
                "state_groups_state rows of the {} rooms touched: {after} now (counted), {before} before the run (that plus the rows the run removed)",
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

/// Runs up to `number_of_chunks` chunks over the database.
pub fn run(config: &AutoConfig) -> Result<RunSummary> {
    let started = Instant::now();
    let mut client = db::connect_as(&config.db_url, "synapse_auto_compressor")?;
    schema::require_state_tables(&mut client)?;
    let progress_needs = state_saving::progress_needs(&mut client)?;
    schema::require_privileges(
        &mut client,
        schema::Access::Write,
        &progress_needs,
        &state_saving::PROGRESS_TABLES,
    )?;
    if config.vacuum {
        stats::require_vacuum_right(&mut client)?;
    }
    lock::acquire(&mut client)?;
    state_saving::create_tables_if_needed(&mut client)?;

    // Up to two more connections load the next chunks while this one
    // writes; a run without them (one chunk, or no connection to spare)
    // just loads in turn.
    let largest = match config.largest_rooms {
        Some(n) => Some(largest::largest_rooms(
            &mut client,
            &mut Prepared::new(),
            config,
            n.get(),
        )?),
        None => None,
    };
    // (Room by room, each chunk continues the one before: nothing to load
    // ahead.)
    let wanted = match largest {
        Some(_) => 0,
        None => (config.number_of_chunks.get() - 1).clamp(0, READERS as i64) as usize,
    };
    let mut readers = Vec::with_capacity(wanted);
    while readers.len() < wanted {
        match db::connect_as(&config.db_url, "synapse_auto_compressor") {
            Ok(reader) => readers.push(reader),
            Err(e) => {
                warn!(
                    "Loading ahead on {} connection(s), not {wanted} (no more connections: {e})",
                    readers.len()
                );
                break;
            }
        }
    }
    let mut summary = RunSummary::default();
    std::thread::scope(|scope| {
        let mut prefetcher = (!readers.is_empty()).then(|| Prefetcher::spawn(scope, readers));
        let mut prepared = Prepared::new();
        match &largest {
            Some(rooms) => {
                let rooms: Vec<String> = rooms.iter().map(|r| r.room_id.clone()).collect();
                room_by_room(&mut client, &mut prepared, config, &mut summary, &rooms)?;
            }
            None => chunk_loop(
                &mut client,
                &mut prepared,
                config,
                &mut summary,
                prefetcher.as_mut(),
            )?,
        }
        if let Some(p) = &prefetcher {
            debug!(
                "Chunks loaded ahead: {} used, {} dropped",
                p.used, p.dropped
            );
        }
        Ok::<_, Error>(())
    })?;
    lock::release(&mut client)?;
    summary.rows_after = (summary.rows_before as i64 - summary.rows_saved) as usize;
    summary.disk = stats::after_run(&mut client, summary.rows_deleted, config.vacuum)?;
    summary.elapsed = started.elapsed();
    summary.log();
    info!("{}", summary.timings);
    Ok(summary)
}

/// Runs chunks until the run's count is reached or nothing is left.
fn chunk_loop(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    summary: &mut RunSummary,
    mut prefetcher: Option<&mut Prefetcher>,
) -> Result<()> {
    let mut left = LeftRooms::default();
    let bar = progress::chunks(config.number_of_chunks.get() as u64);
    let mut figures = RunFigures::default();
    while (summary.chunks as i64) < config.number_of_chunks.get() {
        // The safe point: every chunk before has committed with its
        // progress, and this one has not started.
        if let Some(signal) = interrupt::requested() {
            summary.interrupted = Some(signal);
            break;
        }
        let Some(next) = state_saving::next_room_to_compress(client, prepared, &left)? else {
            if left.rooms().is_empty() {
                info!("Every state group has been compressed; nothing left to do");
            }
            break;
        };
        let room = next.room_id;
        bar.set_message(format!(
            "saved {} rows; room {}",
            progress::count(summary.rows_saved.max(0) as u64),
            printable(&room)
        ));
        // The room is ours until its chunk is written: another compressor
        // on it (either tool, any process) means leaving it for later.
        let lock = match RoomLock::try_acquire(client, &room) {
            Ok(lock) => lock,
            Err(Error::RoomBusy { holder, .. }) => {
                warn!("Room {room} is being compressed by {holder}; leaving it for a later run");
                summary.rooms_busy += 1;
                left.leave(room, next.group);
                continue;
            }
            Err(e) => return Err(e),
        };
        // No point loading ahead for a chunk this run will not do.
        let ahead = Ahead {
            prefetcher: prefetcher.as_deref_mut(),
            chunks_after: config.number_of_chunks.get() - summary.chunks as i64 - 1,
            same_room: false,
            left: &left,
        };
        figures.touch(&room, summary);
        let outcome = compress_chunk(
            client,
            prepared,
            &room,
            config,
            summary,
            &mut figures,
            ahead,
        )?;
        lock.release(client)?;
        if outcome.damaged {
            summary.rooms_damaged += 1;
            left.leave(room, next.group);
            continue;
        }
        summary.add(&outcome);
        bar.set_position(summary.chunks as u64);
    }
    bar.finish_and_clear();
    figures.count_rooms_after(client, summary)
}

/// `--largest-rooms`: compresses each of `rooms` to its end, chunk after
/// chunk, through the same chunk code and room lock as the scan (so each
/// room's progress is saved as usual), up to the run's chunk count. The
/// scan position is left alone: a later normal run skips what was done
/// here through the rooms' saved positions.
fn room_by_room(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    summary: &mut RunSummary,
    rooms: &[String],
) -> Result<()> {
    let left = LeftRooms::default();
    let mut figures = RunFigures::default();
    let bar = progress::chunks(config.number_of_chunks.get() as u64);
    'rooms: for room in rooms {
        bar.set_message(format!(
            "saved {} rows; room {}",
            progress::count(summary.rows_saved.max(0) as u64),
            printable(room)
        ));
        loop {
            if summary.chunks as i64 >= config.number_of_chunks.get() {
                info!("Stopping at the run's chunk count, in room {room}");
                break 'rooms;
            }
            // The same safe point as the chunk loop's.
            if let Some(signal) = interrupt::requested() {
                summary.interrupted = Some(signal);
                break 'rooms;
            }
            let lock = match RoomLock::try_acquire(client, room) {
                Ok(lock) => lock,
                Err(Error::RoomBusy { holder, .. }) => {
                    warn!(
                        "Room {room} is being compressed by {holder}; leaving it for a later run"
                    );
                    summary.rooms_busy += 1;
                    break;
                }
                Err(e) => return Err(e),
            };
            let ahead = Ahead {
                prefetcher: None,
                chunks_after: 0,
                same_room: false,
                left: &left,
            };
            figures.touch(room, summary);
            let outcome =
                compress_chunk(client, prepared, room, config, summary, &mut figures, ahead)?;
            lock.release(client)?;
            if outcome.damaged {
                summary.rooms_damaged += 1;
                break;
            }
            summary.add(&outcome);
            bar.set_position(summary.chunks as u64);
            if outcome.room_finished {
                break;
            }
        }
    }
    bar.finish_and_clear();
    figures.count_rooms_after(client, summary)
}

/// What the run keeps between chunks for its figures.
#[derive(Default)]
struct RunFigures {
    /// Rooms whose rows were counted before their first chunk.
    rooms: BTreeSet<String>,
    /// For each group a chunk of this run loaded in range, its chain's
    /// length before the run: a later chunk's chains run through those
    /// groups, which the loaded structure already shows rewritten. A few
    /// bytes per group of the run.
    chains_before: HashMap<i64, u32>,
}

impl RunFigures {
    /// Notes that the run touches `room` (for the rows counted at the end).
    fn touch(&mut self, room: &str, summary: &mut RunSummary) {
        if !self.rooms.contains(room) {
            self.rooms.insert(room.to_owned());
            summary.rooms_touched += 1;
        }
    }

    /// Counts the rows of the rooms the run touched, after its last chunk,
    /// and derives the count before from what the run removed.
    fn count_rooms_after(&self, client: &mut Client, summary: &mut RunSummary) -> Result<()> {
        if self.rooms.is_empty() {
            return Ok(());
        }
        let rooms: Vec<&str> = self.rooms.iter().map(String::as_str).collect();
        let after = stats::rooms_rows(client, &rooms)?;
        summary.table_rows_after = Some(after);
        summary.table_rows_before = Some((after as i64 + summary.rows_saved).max(0) as u64);
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
    fn chains(&mut self, chunk: &GroupMap, new: Option<&Compressed>) -> (u32, u32) {
        let changes = new.map(|c| &c.changes);
        let (before, after, lengths) = longest_chains(chunk, changes, &self.chains_before);
        self.chains_before.extend(lengths);
        (before, after)
    }
}

/// Reader connections loading ahead (besides the main one).
const READERS: usize = 2;

/// The background loaders, as one chunk sees them.
struct Ahead<'p> {
    prefetcher: Option<&'p mut Prefetcher>,
    /// How many chunks this run does after this one.
    chunks_after: i64,
    /// The chunk after this one was predicted to be in the same room.
    same_room: bool,
    /// Rooms this run leaves alone (never worth loading).
    left: &'p LeftRooms,
}

impl Ahead<'_> {
    /// The chunk `request`: loaded ahead if it was, else loaded now.
    fn load(&mut self, client: &mut Client, request: &ChunkRequest) -> Result<LoadedChunk> {
        match self.prefetcher.as_deref_mut().and_then(|p| p.take(request)) {
            Some(chunk) => Ok(chunk),
            None => load_chunk(client, request, &mut |_| {}),
        }
    }

    /// Predicts the chunks after `room`'s chunk ending at `last` (each from
    /// where the ones before it end, as their readers report) and starts loading them
    /// while readers are free, so the loads run while this chunk is
    /// compressed, verified and written.
    ///
    /// The predictions stop at a room already in the chain: that chunk
    /// continues one that is not written yet, so the room's saved position
    /// and levels are not yet where it will start, and a load now would be
    /// of the wrong chunk (never used: loads are used only on an exact
    /// match). Its level heads are only known after compressing, and if the
    /// earlier chunk rewrites groups, the compressor must walk up the heads'
    /// *new* predecessors, which only exist once it has committed. (A next
    /// chunk in this same room is left for [`Ahead::start_same_room`].)
    fn start_next(
        &mut self,
        client: &mut Client,
        prepared: &mut Prepared,
        config: &AutoConfig,
        room: &str,
        last: i64,
    ) -> Result<()> {
        self.same_room = false;
        let Some(prefetcher) = self.prefetcher.as_deref_mut() else {
            return Ok(());
        };
        // One prediction per free reader, each from this chunk's end and
        // the ends of the loads under way.
        while prefetcher.has_room() && (prefetcher.pending_len() as i64) < self.chunks_after {
            let Some(ahead) = prefetcher.expected_ends() else {
                break;
            };
            let positions: Vec<(&str, i64)> = std::iter::once((room, last))
                .chain(ahead.iter().map(|(room, end)| (room.as_str(), *end)))
                .collect();
            let Some(next) =
                state_saving::predict_next_room(client, prepared, &positions, self.left)?
            else {
                break;
            };
            if positions.iter().any(|(seen, _)| *seen == next) {
                self.same_room = positions.len() == 1;
                break;
            }
            let progress =
                state_saving::read_room_progress(client, prepared, &next, &config.default_levels)?;
            prefetcher.start(ChunkRequest {
                room_id: next,
                after: progress.last_compressed,
                heads: heads(&progress.levels),
                chunk_size: config.chunk_size.get(),
            });
        }
        Ok(())
    }

    /// Starts loading the next chunk of the same room after a chunk that
    /// rewrites nothing and leaves `levels`, when that chunk comes next.
    fn start_same_room(&mut self, config: &AutoConfig, room: &str, last: i64, levels: &[Level]) {
        if let Some(prefetcher) = self.prefetcher.as_deref_mut().filter(|_| self.same_room) {
            prefetcher.start(ChunkRequest {
                room_id: room.to_owned(),
                after: Some(last),
                heads: heads(levels),
                chunk_size: config.chunk_size.get(),
            });
        }
    }
}

pub(crate) fn heads(levels: &[Level]) -> Vec<i64> {
    levels.iter().filter_map(Level::head).collect()
}

/// Whether compressing the chunk would leave more rows than it has: then
/// the chunk is skipped and its room continues with fresh levels (the
/// survey makes the same decision from the same figures).
pub(crate) fn would_grow(original: &GroupMap, compressed: &Compressed) -> bool {
    row_count_after(original, &compressed.changes) > row_count(original)
}

/// A chunk as loaded, or why there is none to compress.
pub(crate) enum Loaded {
    /// The groups that made us pick this room are gone (purged since).
    Gone,
    /// The chunk ending at `last` cannot be read safely.
    Damaged {
        last: i64,
        why: String,
    },
    Chunk(Chunk),
}

/// A loaded chunk's groups and everything they need.
pub(crate) struct Chunk {
    pub(crate) symbols: Symbols,
    pub(crate) original: GroupMap,
    pub(crate) report: LoadReport,
    pub(crate) last: i64,
    /// The room has groups after this chunk.
    pub(crate) more: bool,
}

/// Compresses the next chunk of `room`: read its progress, load, compress,
/// decide, verify, write (with the new progress in the last transaction).
fn compress_chunk(
    client: &mut Client,
    prepared: &mut Prepared,
    room: &str,
    config: &AutoConfig,
    summary: &mut RunSummary,
    figures: &mut RunFigures,
    mut ahead: Ahead<'_>,
) -> Result<ChunkOutcome> {
    let progress =
        state_saving::read_room_progress(client, prepared, room, &config.default_levels)?;
    if let Some(reason) = &progress.reset_reason {
        warn!("Room {room}: {reason}");
        summary.levels_reset += 1;
    }
    let after = progress.last_compressed;
    let mut outcome = ChunkOutcome::new(room, after);

    let started = Instant::now();
    let request = ChunkRequest {
        room_id: room.to_owned(),
        after,
        heads: heads(&progress.levels),
        chunk_size: config.chunk_size.get(),
    };
    let chunk = match load(client, &mut ahead, &request)? {
        Loaded::Chunk(chunk) => chunk,
        Loaded::Gone => {
            warn!("Room {room} has no groups after {after:?} any more; skipping it");
            outcome.room_finished = true;
            if let Some(last) = after {
                save_progress_only(client, prepared, room, &config.default_levels, last)?;
            }
            return Ok(outcome);
        }
        Loaded::Damaged { last, why } => {
            outcome.last = last;
            return Ok(outcome.leave_damaged(&why));
        }
    };
    summary.timings.load += started.elapsed();
    let last = chunk.last;
    (outcome.last, outcome.room_finished) = (last, !chunk.more);
    outcome.groups = chunk.report.in_range;
    ahead.start_next(client, prepared, config, room, last)?;

    let started = Instant::now();
    let compressed = match compress(&chunk.original, progress.levels) {
        Ok(compressed) => compressed,
        Err(Error::Damaged(why)) => return Ok(outcome.leave_damaged(&why)),
        Err(e) => return Err(e),
    };
    summary.timings.compress += started.elapsed();
    outcome.record(&chunk.original, &compressed);

    if would_grow(&chunk.original, &compressed) {
        (outcome.longest_chain_before, outcome.longest_chain_after) =
            figures.chains(&chunk.original, None);
        warn!(
            "Room {room}: compressing groups up to {last} would increase the rows ({} -> {}); skipping the chunk",
            outcome.rows_before, outcome.rows_after
        );
        let fresh = config.default_levels.empty_levels();
        ahead.start_same_room(config, room, last, &fresh);
        save_progress_only(client, prepared, room, &config.default_levels, last)?;
        return Ok(outcome);
    }

    let started = Instant::now();
    verify(&chunk.original, &compressed.changes)?;
    summary.timings.verify += started.elapsed();

    let started = Instant::now();
    let report = write_chunk(client, prepared, room, &chunk, &compressed)?;
    summary.timings.write += started.elapsed();
    outcome.groups_written = report.written;
    outcome.groups_skipped_live = report.skipped;
    outcome.rows_deleted = report.rows_deleted;
    outcome.rows_inserted = report.rows_inserted;
    outcome.committed = true;
    (outcome.longest_chain_before, outcome.longest_chain_after) =
        figures.chains(&chunk.original, Some(&compressed));
    Ok(outcome)
}

/// Loads the chunk `request` (or takes it from the loads made ahead).
fn load(client: &mut Client, ahead: &mut Ahead<'_>, request: &ChunkRequest) -> Result<Loaded> {
    let loaded = ahead.load(client, request)?;
    take_loaded(loaded, request)
}

/// A loaded chunk as the run uses it (shared with the survey, so both read
/// chunks alike).
pub(crate) fn take_loaded(loaded: LoadedChunk, request: &ChunkRequest) -> Result<Loaded> {
    let LoadedChunk {
        ids,
        more,
        symbols,
        groups,
    } = loaded;
    let (Some(&last), Some(groups)) = (ids.last(), groups) else {
        return Ok(Loaded::Gone);
    };
    let (mut original, mut report) = match groups {
        Ok(loaded) => loaded,
        Err(Error::Damaged(why)) => return Ok(Loaded::Damaged { last, why }),
        Err(e) => return Err(e),
    };
    // As the reference does for every chunk after a room's first.
    load::include_groups_without_row(&mut original, &mut report, request.after, last);
    if !report.missing_predecessors.is_empty() {
        warn!(
            "Room {}: {} predecessor group(s) have no state_groups row; reading them as Synapse does",
            request.room_id,
            report.missing_predecessors.len()
        );
    }
    Ok(Loaded::Chunk(Chunk {
        symbols,
        original,
        report,
        last,
        more,
    }))
}

/// Writes a compressed chunk; its last write transaction also saves the new
/// levels and position, so the chunk and its progress commit together.
fn write_chunk(
    client: &mut Client,
    prepared: &mut Prepared,
    room: &str,
    chunk: &Chunk,
    compressed: &Compressed,
) -> Result<WriteReport> {
    let changed = changed_groups(&chunk.original, &compressed.changes);
    let rewrite = Rewrite {
        room_id: room,
        symbols: &chunk.symbols,
        original: &chunk.original,
        new: &compressed.changes,
    };
    rewrite.write(
        client,
        &changed,
        // Never stopped between batches: the chunk's progress is saved in
        // its last transaction, and interruptions wait for it.
        &mut |_| true,
        Some(&mut |tx| {
            failpoint::stop_here("auto::before-progress-save");
            state_saving::write_room_progress(tx, prepared, room, &compressed.levels, chunk.last)
        }),
    )
}

/// Saves fresh levels and `last` as the room's position (a skipped chunk).
fn save_progress_only(
    client: &mut Client,
    prepared: &mut Prepared,
    room: &str,
    levels: &LevelSizes,
    last: i64,
) -> Result<()> {
    let mut tx = client
        .transaction()
        .map_err(|e| Error::db("saving progress", e))?;
    state_saving::write_room_progress(&mut tx, prepared, room, &levels.empty_levels(), last)?;
    tx.commit().map_err(|e| Error::db("saving progress", e))
}
