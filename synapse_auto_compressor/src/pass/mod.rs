//! The pass: reading `state_groups_state` once, in the table's own order,
//! for a run that covers much of the table (docs/reading.md).
//!
//! The chunk loop reads each chunk's groups through the indexes, and a
//! room's groups are spread over the whole table, so out of cache it reads
//! the table many times over in random reads. The pass instead:
//!
//! 1. plans the run's chunks from `state_groups` alone ([`plan`]): the same
//!    chunks, in the same ranks, as the chunk loop would pick;
//! 2. reads the planned groups' edges and rows once, range by range, on a
//!    connection of its own, putting the chunks together as their groups
//!    come ([`assemble`]);
//! 3. hands each complete chunk to the chunk code the loop uses (the room's
//!    lock, its progress read under it, compress, decide, verify, write
//!    with the progress), with the predecessors it needs beyond its own
//!    groups read by index as today.
//!
//! The result is the chunk loop's: each room's chunks are the same and run
//! in their own order from the same levels; only the order between rooms
//! differs, which changes nothing a chunk reads or writes. The scan
//! position is kept at the lowest first group of the planned chunks not yet
//! written (never past a left room), so a run killed at any instant
//! resumes as after the loop. Rooms that leave the pass (over the memory
//! budget, busy, damaged, or moved on by another compressor) have their
//! remaining chunks done by the loop after the pass, which also does any
//! chunks the run still has to do.

pub mod assemble;
mod fetch;
pub(crate) mod given;
pub mod plan;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use postgres::Client;
use synapse_compress_state::db::lock_wait::stop_requested;
use synapse_compress_state::db::schema::Access;
use synapse_compress_state::db::{Prepared, RoomLock};
use synapse_compress_state::error::printable;
use synapse_compress_state::tool::{failpoint, interrupt, progress};
use synapse_compress_state::{Error, Result};

use crate::chunk::{compress_chunk, Ahead, Walk};
use crate::config::AutoConfig;
use crate::room_ids::RoomIds;
use crate::state_saving;
use crate::summary::RunSummary;
use assemble::{Assembled, LeftPass, Piece};
use given::Given;

/// Which reader a run uses (`--reader`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Reader {
    /// The pass when the run covers a good share of what is left, else
    /// room by room.
    #[default]
    Auto,
    /// One pass over the table in its own order.
    Pass,
    /// Each chunk's groups through the indexes (the reference tool's way).
    Rooms,
}

/// The pass pays for itself when the run's groups are at least this share
/// of the groups left past the scan position (docs/reading.md).
const AUTO_SHARE: f64 = 0.1;

impl Reader {
    /// Whether this run may read with the pass, given about `left` groups
    /// past the scan position: a first look, before the plan, at what the
    /// run could cover at most (`-n` full chunks).
    pub fn may_use_pass(self, config: &AutoConfig, left: u64) -> bool {
        match self {
            Reader::Pass => true,
            Reader::Rooms => false,
            Reader::Auto => {
                let most = config.number_of_chunks.get() as f64 * config.chunk_size.get() as f64;
                most >= left as f64 * AUTO_SHARE
            }
        }
    }

    /// Whether the planned run reads with the pass: its chunks' groups
    /// against every group the pass would read for them. (A nightly run
    /// whose chunks hold the few new groups of many rooms reads room by
    /// room, though `-n` full chunks would have covered much.)
    fn uses_pass(self, plan: &plan::Plan) -> bool {
        self != Reader::Auto || plan.groups() as f64 >= plan.span_groups as f64 * AUTO_SHARE
    }
}

/// What the pass did, for the run's log.
#[derive(Debug, Default)]
struct PassFigures {
    chunks: usize,
    over_budget: usize,
    peak_bytes: usize,
}

/// Runs the pass with `reader` as its reading connection; the walk's
/// chunk loop does whatever is left afterwards.
pub(crate) fn run(
    client: &mut Client,
    mut reader: Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    summary: &mut RunSummary,
    walk: &mut Walk,
    room_ids: &RoomIds,
) -> Result<()> {
    let started = Instant::now();
    let start = state_saving::read_scan_position(client, true)?;
    let plan = plan::read(
        client,
        start,
        config.chunk_size.get(),
        config.number_of_chunks.get(),
        walk.left.rooms(),
    )?;
    let Some(first) = plan.chunks.first() else {
        return Ok(());
    };
    if !config.reader.uses_pass(&plan) {
        info!(
            "Reading room by room: this run's {} groups are few of the {} from the scan position",
            progress::count(plan.groups()),
            progress::count(plan.span_groups)
        );
        return Ok(());
    }
    info!(
        "Reading the table once for {} chunks of {} rooms ({} groups, ids {} to {}), \
         holding at most {} of unfinished chunks",
        plan.chunks.len(),
        plan.rooms.len(),
        progress::count(plan.groups()),
        first.first,
        plan.end().unwrap_or(first.first),
        config.pass_memory
    );
    summary.timings.load += started.elapsed();
    state_saving::raise_scan_position(client, first.first)?;
    let left_pass = LeftPass::new(plan.rooms.len());
    let read_to = AtomicI64::new(first.first);
    let end = plan.end().unwrap_or(first.first);
    let budget = config.pass_memory.bytes() as usize;
    let mut figures = PassFigures::default();
    let mut done = vec![false; plan.chunks.len()];
    let mut lowest = 0usize;
    std::thread::scope(|scope| {
        let (out, pieces) = sync_channel::<Result<Piece>>(2);
        let (plan, left_pass, read_to) = (&plan, &left_pass, &read_to);
        let assembler = scope.spawn(move || {
            assemble::run(
                &mut reader,
                plan,
                left_pass,
                (budget, config.pass_range_ids),
                read_to,
                &out,
            )
        });
        let result = (|| -> Result<()> {
            loop {
                let waited = Instant::now();
                let piece = match pieces.recv_timeout(Duration::from_secs(1)) {
                    Ok(Ok(piece)) => piece,
                    Ok(Err(e)) => {
                        // The pass's own connection failed (closed by the
                        // server, say): what it has not handed over yet
                        // is read room by room, as without a pass.
                        warn!("The pass stopped reading ({e}); the rest is read room by room");
                        return Ok(());
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        summary.timings.load += waited.elapsed();
                        if let Some(signal) = interrupt::requested() {
                            summary.interrupted = Some(signal);
                            return Ok(());
                        }
                        // Chunks mostly complete late in the pass: until
                        // they do, the bar says how far the reading is.
                        walk.bar.set_message(format!(
                            "reading the table: up to group {} of {}",
                            progress::count(read_to.load(Ordering::Relaxed).max(0) as u64),
                            progress::count(end.max(0) as u64)
                        ));
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                };
                summary.timings.load += waited.elapsed();
                let assembled = match piece {
                    Piece::OverBudget { room } => {
                        figures.over_budget += 1;
                        debug!(
                            "Room {} leaves the pass (over its memory budget)",
                            plan.rooms[room as usize].room_id
                        );
                        continue;
                    }
                    Piece::Chunk(assembled) => assembled,
                };
                let rank = assembled.chunk;
                let planned = &plan.chunks[rank as usize];
                if left_pass.has_left(planned.room) {
                    continue;
                }
                // The safe point, as in the chunk loop.
                if let Some(signal) = stop_requested(client, Access::Read)? {
                    summary.interrupted = Some(signal);
                    return Ok(());
                }
                let room = plan.room_of(rank);
                match one_chunk(
                    client, prepared, config, summary, walk, room_ids, room, planned, assembled,
                )? {
                    Done::Written => {}
                    Done::Stopped => return Ok(()),
                    Done::Left => {
                        left_pass.leave(planned.room);
                        continue;
                    }
                    Done::Moved => left_pass.leave(planned.room),
                }
                figures.chunks += 1;
                done[rank as usize] = true;
                walk.pass_highest_first = walk.pass_highest_first.max(Some(planned.first));
                while lowest < done.len() && done[lowest] {
                    lowest += 1;
                }
                // The scan position: at or below every planned chunk not
                // yet written (all below `lowest` are), and no higher than
                // the start of the highest chunk done. When the chunks done
                // are the first ones by rank, as at the end of a run or
                // when a stop comes early, that is where the loop's last
                // pick leaves it, so the saved progress is the loop's. A
                // room left during the pass is left at one of its planned
                // chunks, never written, so this is already at or below its
                // hold; the cap only says so.
                let highest = walk.pass_highest_first.unwrap_or(planned.first);
                let next = plan
                    .chunks
                    .get(lowest)
                    .map_or(highest, |unwritten| unwritten.first.min(highest));
                let position = walk.left.hold().map_or(next, |hold| hold.min(next));
                state_saving::raise_scan_position(client, position)?;
            }
        })();
        // Stops the reader (at its next range) if the run ended first.
        drop(pieces);
        figures.peak_bytes = assembler.join().unwrap_or_default();
        result
    })?;
    info!(
        "The pass did {} chunks; {} rooms went over its memory budget ({}, most held {:.1} MiB) and are done room by room",
        figures.chunks,
        figures.over_budget,
        config.pass_memory,
        figures.peak_bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// How one chunk of the pass went.
enum Done {
    /// Written, or skipped as not worth writing: the chunk is done.
    Written,
    /// A signal came: the run stops.
    Stopped,
    /// The room is left for a later run (busy, damaged).
    Left,
    /// Done, but not as planned: another compressor moved the room on, so
    /// its later chunks are the loop's.
    Moved,
}

/// Does one complete chunk of the pass through the chunk code.
#[allow(clippy::too_many_arguments)]
fn one_chunk(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    summary: &mut RunSummary,
    walk: &mut Walk,
    room_ids: &RoomIds,
    room: &str,
    planned: &plan::PlannedChunk,
    assembled: Box<Assembled>,
) -> Result<Done> {
    failpoint::stop_here("pass::hand-over");
    walk.bar.set_message(format!(
        "saved {} rows; room {}",
        progress::count(summary.rows_saved.max(0) as u64),
        printable(room)
    ));
    let lock = match RoomLock::try_acquire(client, room) {
        Ok(lock) => lock,
        Err(Error::RoomBusy { holder, .. }) => {
            warn!("Room {room} is being compressed by {holder}; leaving it for a later run");
            summary.rooms_busy += 1;
            walk.left.leave(room.to_owned(), planned.first);
            return Ok(Done::Left);
        }
        Err(e) => return Err(e),
    };
    walk.figures.touch(room, summary);
    let ahead = Ahead::assembled(
        &walk.left,
        room_ids,
        &mut walk.carries,
        Given {
            assembled,
            after: planned.after,
            more: planned.more,
        },
    );
    let outcome = compress_chunk(
        client,
        prepared,
        room,
        config,
        summary,
        &mut walk.figures,
        ahead,
    );
    let outcome = match outcome {
        Err(Error::Interrupted(signal)) => {
            lock.release(client)?;
            summary.interrupted = Some(signal);
            return Ok(Done::Stopped);
        }
        outcome => outcome?,
    };
    lock.release(client)?;
    if outcome.damaged {
        summary.rooms_damaged += 1;
        walk.left.leave(room.to_owned(), planned.first);
        return Ok(Done::Left);
    }
    summary.add(&outcome);
    walk.bar.set_position(summary.groups as u64);
    Ok(if outcome.last == planned.last {
        Done::Written
    } else {
        Done::Moved
    })
}
