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
//! there. A bar on a terminal shows groups done of about those left (so its
//! time left is that of the work), rows saved and the room.
//!
//! The run's figures are counted in [`crate::summary`].

use std::time::Instant;

use log::{debug, info, warn};
use postgres::Client;
use synapse_compress_state::core::group::{changed_groups, row_count, row_count_after};
use synapse_compress_state::core::state_map::Symbols;
use synapse_compress_state::core::verify::verify;
use synapse_compress_state::db::load::{self, LoadReport};
use synapse_compress_state::db::lock_wait::{stop_requested, wait_for_state_tables};
use synapse_compress_state::db::schema::Access;
use synapse_compress_state::db::stats;
use synapse_compress_state::db::write::{Rewrite, WriteReport};
use synapse_compress_state::db::{self, schema, Prepared, RoomLock};
use synapse_compress_state::error::printable;
use synapse_compress_state::tool::args::{MemorySize, Positive};
use synapse_compress_state::tool::interrupt;
use synapse_compress_state::tool::{failpoint, progress};
use synapse_compress_state::{compress, Compressed, Error, GroupMap, Level, LevelSizes, Result};

use crate::carry::{Carries, Carry};
use crate::connections::Budget;
use crate::pass::{self, Given, Reader};
use crate::prefetch::{load_chunk, ChunkRequest, LoadedChunk, Prefetcher};
use crate::room_ids::RoomIds;
use crate::state_saving::LeftRooms;
use crate::summary::RunFigures;
pub use crate::summary::{ChunkOutcome, RunSummary};
use crate::{largest, lock, state_saving, workers};

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
    /// Workers compressing different rooms at the same time (`--jobs`).
    pub jobs: Positive,
    /// Connections the run leaves free for Synapse (`--reserve-connections`).
    pub reserve_connections: u32,
    /// How the chunks' groups are read (`--reader`).
    pub reader: Reader,
    /// Most memory the pass's unfinished chunks may hold (`--pass-memory`).
    pub pass_memory: MemorySize,
    /// Group ids per range the pass reads (hidden `--pass-range`, for tests).
    pub pass_range_ids: i64,
}

/// Runs up to `number_of_chunks` chunks over the database.
pub fn run(config: &AutoConfig) -> Result<RunSummary> {
    let started = Instant::now();
    warn_about_settings(config);
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
    // Nothing has begun while the tables are held: a signal during this
    // wait ends the process at once (Python callers have no signals).
    wait_for_state_tables(&mut client, Access::Read)?;
    interrupt::begin_work();
    lock::acquire(&mut client)?;
    state_saving::create_tables_if_needed(&mut client)?;

    let largest = match config.largest_rooms {
        Some(n) => Some(largest::largest_rooms(
            &mut client,
            &mut Prepared::new(),
            config,
            n.get(),
        )?),
        None => None,
    };
    let mut summary = RunSummary {
        workers: 1,
        ..RunSummary::default()
    };
    if config.jobs.get() > 1 && largest.is_none() {
        workers::run(&mut client, config, &mut summary)?;
    } else {
        let rooms: Option<Vec<String>> =
            largest.map(|rooms| rooms.into_iter().map(|r| r.room_id).collect());
        one_worker(&mut client, config, rooms.as_deref(), &mut summary)?;
    }
    lock::release(&mut client)?;
    summary.rows_after = (summary.rows_before as i64 - summary.rows_saved) as usize;
    summary.disk = stats::after_run(&mut client, summary.rows_deleted, config.vacuum)?;
    summary.elapsed = started.elapsed();
    summary.log();
    info!("{}", summary.timings);
    Ok(summary)
}

/// Warns (one line each) about settings that run but serve badly: levels
/// that make chains far longer than Synapse's, chunks smaller than the
/// first level (the survey warns alike).
pub(crate) fn warn_about_settings(config: &AutoConfig) {
    let levels = &config.default_levels;
    let warnings = [
        levels.long_chain_warning(),
        levels.small_chunk_warning(config.chunk_size.get()),
    ];
    for warning in warnings.into_iter().flatten() {
        warn!("{warning}");
    }
}

/// The chunk bar, in groups: as long as the groups left past the scan
/// position (an estimate), or what `-n` chunks of `-c` can do when that is
/// less; its time left is then that of the work, not of `-n`.
pub(crate) fn work_bar(client: &mut Client, config: &AutoConfig) -> Result<progress::Bar> {
    let (scan, left) = state_saving::groups_left_estimate(client)?;
    let chunks = config.number_of_chunks.get() as u64;
    let most = chunks.saturating_mul(config.chunk_size.get() as u64);
    info!(
        "About {} groups left to compress from group {scan}; this run does at most {} ({chunks} chunks of {})",
        progress::count(left),
        progress::count(most),
        config.chunk_size
    );
    Ok(progress::groups(left.min(most)))
}

/// The run with one worker (the default): the chunk loop, or `rooms` one
/// after the other (`--largest-rooms`). Up to two more connections load
/// the next chunks while this one writes; a run without them (one chunk,
/// or no connection to spare) just loads in turn. Room by room, each chunk
/// continues the one before: nothing to load ahead.
fn one_worker(
    client: &mut Client,
    config: &AutoConfig,
    rooms: Option<&[String]>,
    summary: &mut RunSummary,
) -> Result<()> {
    let wanted = match rooms {
        Some(_) => 0,
        None => (config.number_of_chunks.get() - 1).clamp(0, READERS as i64) as usize,
    };
    let wanted = match wanted {
        0 => 0,
        _ => Budget::read(client, config.reserve_connections)?.allow(wanted, "loading connections"),
    };
    let mut readers = Vec::with_capacity(wanted);
    while readers.len() < wanted {
        match db::connect_as(&config.db_url, "synapse_auto_compressor") {
            Ok(mut reader) => {
                // A load held up by a lock fails soon and is done again on
                // the main connection, which waits visibly at its safe
                // point: a stop never waits for a reader.
                reader
                    .batch_execute("SET lock_timeout = '1s'")
                    .map_err(|e| Error::db("setting up a loading connection", e))?;
                readers.push(reader);
            }
            Err(e) => {
                warn!(
                    "Loading ahead on {} connection(s), not {wanted} (no more connections: {e})",
                    readers.len()
                );
                break;
            }
        }
    }
    let room_ids = RoomIds::default();
    let pass_reader = match rooms {
        Some(_) => None,
        None => pass_reader(client, config)?,
    };
    std::thread::scope(|scope| {
        let mut prefetcher =
            (!readers.is_empty()).then(|| Prefetcher::spawn(scope, readers, &room_ids));
        let mut prepared = Prepared::new();
        match rooms {
            Some(rooms) => room_by_room(client, &mut prepared, config, summary, rooms, &room_ids)?,
            None => {
                let bar = work_bar(client, config)?;
                let mut walk = Walk::new(bar);
                if let Some(reader) = pass_reader {
                    pass::run(
                        client,
                        reader,
                        &mut prepared,
                        config,
                        summary,
                        &mut walk,
                        &room_ids,
                    )?;
                }
                if summary.interrupted.is_none() {
                    chunk_loop(
                        client,
                        &mut prepared,
                        config,
                        summary,
                        prefetcher.as_mut(),
                        &room_ids,
                        &mut walk,
                    )?;
                }
                if let (None, Some(first)) = (summary.interrupted, walk.pass_highest_first) {
                    // The loop's last pick leaves the position at the start
                    // of the highest chunk done; after the pass, the loop's
                    // own last pick may be a lower one (a room the pass
                    // gave it), so the position goes where the loop alone
                    // would have left it (never past a left room).
                    let position = walk.left.hold().map_or(first, |hold| hold.min(first));
                    state_saving::raise_scan_position(client, position)?;
                }
                walk.bar.finish_and_clear();
                walk.figures.count_rooms_after(client, summary)?;
            }
        }
        if let Some(p) = &prefetcher {
            debug!(
                "Chunks loaded ahead: {} used, {} dropped",
                p.used, p.dropped
            );
        }
        Ok::<_, Error>(())
    })
}

/// The pass's reading connection, when this run reads with the pass
/// (`--reader`, by default when the run covers a good share of what is
/// left); `None` reads room by room.
fn pass_reader(client: &mut Client, config: &AutoConfig) -> Result<Option<Client>> {
    let (_, left) = state_saving::groups_left_estimate(client)?;
    if !config.reader.use_pass(config, left) {
        debug!(
            "Reading room by room ({:?} reader, about {left} groups left)",
            config.reader
        );
        return Ok(None);
    }
    if Budget::read(client, config.reserve_connections)?.allow(1, "pass reading connection") == 0 {
        warn!("No connection to spare for the pass; reading room by room");
        return Ok(None);
    }
    match db::connect_as(&config.db_url, "synapse_auto_compressor") {
        Ok(mut reader) => {
            // A range held up by a lock fails soon and is read again once
            // the lock is visibly gone: a stop never waits for the reader.
            reader
                .batch_execute("SET lock_timeout = '1s'")
                .map_err(|e| Error::db("setting up the pass's connection", e))?;
            Ok(Some(reader))
        }
        Err(e) => {
            warn!("No connection for the pass ({e}); reading room by room");
            Ok(None)
        }
    }
}

/// What the chunk loop (and the pass before it) keep over a run.
pub(crate) struct Walk {
    /// Rooms left for a later run.
    pub(crate) left: LeftRooms,
    pub(crate) figures: RunFigures,
    pub(crate) carries: Carries,
    pub(crate) bar: progress::Bar,
    /// The first group of the highest chunk the pass did, if it did any.
    pub(crate) pass_highest_first: Option<i64>,
}

impl Walk {
    fn new(bar: progress::Bar) -> Self {
        Self {
            left: LeftRooms::default(),
            figures: RunFigures::default(),
            carries: Carries::default(),
            bar,
            pass_highest_first: None,
        }
    }
}

/// Runs chunks until the run's count is reached or nothing is left.
fn chunk_loop(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    summary: &mut RunSummary,
    mut prefetcher: Option<&mut Prefetcher>,
    room_ids: &RoomIds,
    walk: &mut Walk,
) -> Result<()> {
    let Walk {
        left,
        figures,
        carries,
        bar,
        ..
    } = walk;
    while (summary.chunks as i64) < config.number_of_chunks.get() {
        // The safe point: every chunk before has committed with its
        // progress, and this one has not started.
        if let Some(signal) = stop_requested(client, Access::Read)? {
            summary.interrupted = Some(signal);
            break;
        }
        let Some(next) = state_saving::next_room_to_compress(client, prepared, left)? else {
            if left.rooms().is_empty() {
                info!("Every state group has been compressed; nothing left to do");
            }
            break;
        };
        left.scanned_to(next.group);
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
            left,
            room_ids,
            carries,
            given: None,
        };
        figures.touch(&room, summary);
        let outcome = compress_chunk(client, prepared, &room, config, summary, figures, ahead);
        let outcome = match outcome {
            Err(Error::Interrupted(signal)) => {
                lock.release(client)?;
                summary.interrupted = Some(signal);
                break;
            }
            outcome => outcome?,
        };
        lock.release(client)?;
        if outcome.damaged {
            summary.rooms_damaged += 1;
            left.leave(room, next.group);
            continue;
        }
        summary.add(&outcome);
        bar.set_position(summary.groups as u64);
    }
    Ok(())
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
    room_ids: &RoomIds,
) -> Result<()> {
    let left = LeftRooms::default();
    let mut figures = RunFigures::default();
    let mut carries = Carries::default();
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
            if let Some(signal) = stop_requested(client, Access::Read)? {
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
            let ahead = Ahead::none(&left, room_ids, &mut carries);
            figures.touch(room, summary);
            let outcome =
                compress_chunk(client, prepared, room, config, summary, &mut figures, ahead);
            let outcome = match outcome {
                Err(Error::Interrupted(signal)) => {
                    lock.release(client)?;
                    summary.interrupted = Some(signal);
                    break 'rooms;
                }
                outcome => outcome?,
            };
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

/// Reader connections loading ahead (besides the main one).
const READERS: usize = 2;

/// What a chunk's load draws on, as one chunk sees it: the background
/// loaders, the rooms' ids read ahead and their carried structures.
pub(crate) struct Ahead<'p> {
    prefetcher: Option<&'p mut Prefetcher>,
    /// How many chunks this run does after this one.
    chunks_after: i64,
    /// The chunk after this one was predicted to be in the same room.
    same_room: bool,
    /// Rooms this run leaves alone (never worth loading).
    left: &'p LeftRooms,
    /// Rooms' ids read ahead (shared with the loaders).
    room_ids: &'p RoomIds,
    /// Rooms' new structures kept for their next chunks.
    carries: &'p mut Carries,
    /// The chunk as the pass read it (`crate::pass`).
    given: Option<Given>,
}

impl<'p> Ahead<'p> {
    /// No loading ahead: each chunk loads when it starts.
    pub(crate) fn none(
        left: &'p LeftRooms,
        room_ids: &'p RoomIds,
        carries: &'p mut Carries,
    ) -> Self {
        Ahead {
            prefetcher: None,
            chunks_after: 0,
            same_room: false,
            left,
            room_ids,
            carries,
            given: None,
        }
    }

    /// The chunk the pass put together (loaded as usual if it is not the
    /// chunk the room's saved progress asks for).
    pub(crate) fn assembled(
        left: &'p LeftRooms,
        room_ids: &'p RoomIds,
        carries: &'p mut Carries,
        given: Given,
    ) -> Self {
        Ahead {
            given: Some(given),
            ..Ahead::none(left, room_ids, carries)
        }
    }
}

impl Ahead<'_> {
    /// The chunk `request`: loaded ahead if it was, else loaded now.
    fn load(&mut self, client: &mut Client, request: &ChunkRequest) -> Result<LoadedChunk> {
        if let Some(given) = self.given.take() {
            if let Some(chunk) = given.into_loaded(client, request)? {
                return Ok(chunk);
            }
        }
        match self.prefetcher.as_deref_mut().and_then(|p| p.take(request)) {
            Some(chunk) => Ok(chunk),
            None => load_chunk(client, request, self.room_ids, &mut |_| {}),
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
            let heads = heads(&progress.levels);
            prefetcher.start(ChunkRequest {
                carried: self.carries.get(&next, progress.last_compressed, &heads),
                room_id: next,
                after: progress.last_compressed,
                heads,
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
                carried: None,
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
/// The room's carry (`crate::carry`, in `ahead`) is used if it continues
/// the progress, and replaced by the new structure's after a clean write.
pub(crate) fn compress_chunk(
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
    let heads = heads(&progress.levels);
    let request = ChunkRequest {
        carried: ahead.carries.take(room, after, &heads),
        room_id: room.to_owned(),
        after,
        heads,
        chunk_size: config.chunk_size.get(),
    };
    if let Some(carry) = &request.carried {
        debug!("Room {room}: the chunk after {after:?} continues from the carried {carry:?}");
    }
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
            figures.chains(room, &chunk.original, None, last, chunk.more);
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

    // The tables may have been taken during the load (a VACUUM FULL or a
    // CREATE INDEX begun meanwhile): wait visibly; a signal meanwhile gives
    // the chunk up, nothing of it written.
    if let Some(signal) = wait_for_state_tables(client, Access::Write)? {
        return Err(Error::Interrupted(signal));
    }
    let started = Instant::now();
    let report = write_chunk(client, prepared, room, &chunk, &compressed)?;
    summary.timings.write += started.elapsed();
    outcome.groups_written = report.written;
    outcome.groups_skipped_live = report.skipped;
    outcome.rows_deleted = report.rows_deleted;
    outcome.rows_inserted = report.rows_inserted;
    outcome.committed = true;
    // What the next chunk of the room would read back, unless Synapse left
    // some group otherwise than this chunk wrote it.
    if chunk.more && report.skipped == 0 {
        ahead.carries.keep(
            room,
            Carry::after_chunk(
                &chunk.original,
                &compressed.changes,
                &chunk.symbols,
                &compressed.levels,
                last,
            )?,
        );
    }
    (outcome.longest_chain_before, outcome.longest_chain_after) =
        figures.chains(room, &chunk.original, Some(&compressed), last, chunk.more);
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
