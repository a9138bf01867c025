//! One chunk, in stages: its groups (loaded ahead, put together by the pass,
//! or loaded now), then compress, decide, verify and write, with the room's
//! new progress in the last write transaction. Every mode runs its chunks
//! through [`compress_chunk`]: the chunk loop and `--largest-rooms`
//! (`crate::manager`), the pass (`crate::pass`) and `--jobs`
//! (`crate::workers`); the survey (`--dry-run`) shares the load and the
//! decision.
//!
//! A chunk loaded before its room's lock was taken (ahead, or by the pass)
//! is still safe to use: the write re-checks every group under row locks,
//! and no writer changes any group's state.

use std::time::Instant;

use log::{debug, warn};
use postgres::Client;
use synapse_compress_state::core::group::{changed_groups, row_count, row_count_after};
use synapse_compress_state::core::state_map::Symbols;
use synapse_compress_state::core::verify::verify;
use synapse_compress_state::db::load::{self, LaterGroups, LoadReport};
use synapse_compress_state::db::lock_wait::wait_for_state_tables;
use synapse_compress_state::db::schema::Access;
use synapse_compress_state::db::write::{Rewrite, WriteReport};
use synapse_compress_state::db::Prepared;
use synapse_compress_state::tool::{failpoint, progress};
use synapse_compress_state::{compress, Compressed, Error, GroupMap, Level, LevelSizes, Result};

use crate::carry::{Carries, Carry};
use crate::config::AutoConfig;
use crate::prefetch::{load_chunk, ChunkRequest, LoadedChunk, Prefetcher};
use crate::room_ids::RoomIds;
use crate::state_saving::{self, LeftRooms, RoomProgress};
use crate::summary::{ChunkOutcome, RunFigures, RunSummary};

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
    pub(crate) fn new(bar: progress::Bar) -> Self {
        Self {
            left: LeftRooms::default(),
            figures: RunFigures::default(),
            carries: Carries::default(),
            bar,
            pass_highest_first: None,
        }
    }
}

/// A chunk read before its turn by another reader (the pass,
/// `crate::pass`), handed to the chunk code in place of a load.
pub(crate) trait GivenChunk: Send {
    /// The chunk as a load of `request` would give it, reading only what
    /// it needs beyond its own groups; `None` when it must be loaded as
    /// usual after all. `later` are the room's groups decided and not
    /// written yet, which the chunk must see as they will be.
    fn into_loaded(
        self: Box<Self>,
        client: &mut Client,
        request: &ChunkRequest,
        later: Option<&dyn LaterGroups>,
    ) -> Result<Option<LoadedChunk>>;
}

/// What a chunk's load draws on, as one chunk sees it: the background
/// loaders, the rooms' ids read ahead and their carried structures.
pub(crate) struct Ahead<'p> {
    pub(crate) prefetcher: Option<&'p mut Prefetcher>,
    /// How many chunks this run does after this one.
    pub(crate) chunks_after: i64,
    /// The chunk after this one was predicted to be in the same room.
    pub(crate) same_room: bool,
    /// Rooms this run leaves alone (never worth loading).
    pub(crate) left: &'p LeftRooms,
    /// Rooms' ids read ahead (shared with the loaders).
    pub(crate) room_ids: &'p RoomIds,
    /// Rooms' new structures kept for their next chunks.
    pub(crate) carries: &'p mut Carries,
    /// The chunk as the pass read it (`crate::pass`).
    pub(crate) given: Option<Box<dyn GivenChunk>>,
    /// The room's progress as a chunk decided but not written yet leaves
    /// it (the pass's sweep), instead of the saved one.
    pub(crate) progress: Option<RoomProgress>,
    /// The room's groups decided but not written yet (the pass's sweep),
    /// taken by the given chunk's load in place of what the database shows.
    pub(crate) later: Option<&'p dyn LaterGroups>,
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
            progress: None,
            later: None,
        }
    }

    /// The chunk the pass put together (loaded as usual if it is not the
    /// chunk the room's saved progress asks for).
    pub(crate) fn assembled(
        left: &'p LeftRooms,
        room_ids: &'p RoomIds,
        carries: &'p mut Carries,
        given: Box<dyn GivenChunk>,
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
            if let Some(chunk) = given.into_loaded(client, request, self.later)? {
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
            let heads = Level::heads(&progress.levels);
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
    /// Whether it started one.
    fn start_same_room(
        &mut self,
        config: &AutoConfig,
        room: &str,
        last: i64,
        levels: &[Level],
    ) -> bool {
        let Some(prefetcher) = self.prefetcher.as_deref_mut().filter(|_| self.same_room) else {
            return false;
        };
        prefetcher.start(ChunkRequest {
            room_id: room.to_owned(),
            after: Some(last),
            heads: Level::heads(levels),
            chunk_size: config.chunk_size.get(),
            carried: None,
        });
        true
    }
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
    let decided = decide_chunk(client, prepared, room, config, summary, figures, &mut ahead)?;
    let mut pending = match decided {
        Decided::Final(outcome) => return Ok(outcome),
        Decided::SaveOnly { outcome, last } => {
            save_progress_only(client, prepared, room, &config.default_levels, last)?;
            return Ok(outcome);
        }
        Decided::Write(pending) => pending,
    };
    // The tables may have been taken during the load (a VACUUM FULL or a
    // CREATE INDEX begun meanwhile): wait visibly; a signal meanwhile gives
    // the chunk up, nothing of it written.
    if let Some(signal) = wait_for_state_tables(client, Access::Write)? {
        return Err(Error::Interrupted(signal));
    }
    let started = Instant::now();
    let report = write_chunk(client, prepared, room, &pending)?;
    summary.timings.write += started.elapsed();
    pending.record_write(&report);
    // What the next chunk of the room would read back, unless Synapse left
    // some group otherwise than this chunk wrote it.
    if report.skipped == 0 {
        pending.keep_carry(ahead.carries)?;
    }
    Ok(pending.outcome)
}

/// What deciding a chunk came to.
pub(crate) enum Decided {
    /// Nothing to write or save (the room is damaged, or has no groups
    /// left and no position yet).
    Final(ChunkOutcome),
    /// Only the room's position to save, at `last`, with fresh levels: the
    /// chunk is skipped as not worth writing, or its groups are gone.
    SaveOnly { outcome: ChunkOutcome, last: i64 },
    /// A verified new structure to write with the new levels.
    Write(Box<Pending>),
}

/// A chunk compressed and verified, not written yet.
pub(crate) struct Pending {
    pub(crate) outcome: ChunkOutcome,
    pub(crate) chunk: Chunk,
    pub(crate) compressed: Compressed,
    /// The groups whose entries change, ascending.
    pub(crate) changed: Vec<i64>,
}

impl Pending {
    /// Takes in what the write did.
    pub(crate) fn record_write(&mut self, report: &WriteReport) {
        let outcome = &mut self.outcome;
        outcome.groups_written = report.written;
        outcome.groups_skipped_live = report.skipped;
        outcome.rows_deleted = report.rows_deleted;
        outcome.rows_inserted = report.rows_inserted;
        outcome.committed = true;
    }

    /// Keeps the new structure for the room's next chunk, if it has one.
    pub(crate) fn keep_carry(&self, carries: &mut Carries) -> Result<()> {
        if self.chunk.more {
            carries.keep(
                &self.outcome.room_id,
                Carry::after_chunk(
                    &self.chunk.original,
                    &self.compressed.changes,
                    &self.chunk.symbols,
                    &self.compressed.levels,
                    self.chunk.last,
                )?,
            );
        }
        Ok(())
    }
}

/// Reads `room`'s progress, loads its next chunk, compresses it, decides
/// whether it is worth writing and verifies it: everything up to the
/// write. The chain figures are taken here, as the write will leave them.
pub(crate) fn decide_chunk(
    client: &mut Client,
    prepared: &mut Prepared,
    room: &str,
    config: &AutoConfig,
    summary: &mut RunSummary,
    figures: &mut RunFigures,
    ahead: &mut Ahead<'_>,
) -> Result<Decided> {
    let progress = match ahead.progress.take() {
        Some(progress) => progress,
        None => state_saving::read_room_progress(client, prepared, room, &config.default_levels)?,
    };
    if let Some(reason) = &progress.reset_reason {
        warn!("Room {room}: {reason}");
        summary.levels_reset += 1;
    }
    let after = progress.last_compressed;
    let mut outcome = ChunkOutcome::new(room, after);

    let started = Instant::now();
    let heads = Level::heads(&progress.levels);
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
    let chunk = match load(client, ahead, &request)? {
        Loaded::Chunk(chunk) => chunk,
        Loaded::Gone => {
            warn!("Room {room} has no groups after {after:?} any more; skipping it");
            outcome.room_finished = true;
            return Ok(match after {
                Some(last) => Decided::SaveOnly { outcome, last },
                None => Decided::Final(outcome),
            });
        }
        Loaded::Damaged { last, why } => {
            outcome.last = last;
            return Ok(Decided::Final(outcome.leave_damaged(&why)));
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
        Err(Error::Damaged(why)) => return Ok(Decided::Final(outcome.leave_damaged(&why))),
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
        // The next chunk's load, started ahead now, reads what a carry
        // would hold (a carry would not match that load).
        let loading = ahead.start_same_room(config, room, last, &fresh);
        if chunk.more && !loading {
            ahead.carries.keep(
                room,
                Carry::after_skipped(&chunk.original, &chunk.symbols, last),
            );
        }
        return Ok(Decided::SaveOnly { outcome, last });
    }

    let started = Instant::now();
    verify(&chunk.original, &compressed.changes)?;
    summary.timings.verify += started.elapsed();
    (outcome.longest_chain_before, outcome.longest_chain_after) =
        figures.chains(room, &chunk.original, Some(&compressed), last, chunk.more);
    let changed = changed_groups(&chunk.original, &compressed.changes);
    Ok(Decided::Write(Box::new(Pending {
        outcome,
        chunk,
        compressed,
        changed,
    })))
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
    pending: &Pending,
) -> Result<WriteReport> {
    let Pending {
        chunk,
        compressed,
        changed,
        ..
    } = pending;
    let rewrite = Rewrite {
        room_id: room,
        room_of: None,
        symbols: &chunk.symbols,
        original: &chunk.original,
        new: &compressed.changes,
    };
    rewrite.write(
        client,
        changed,
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
