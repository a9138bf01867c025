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
//!    groups read by index as today ([`writers`]: on `--jobs` connections
//!    at once; with one writer, the writes of many chunks are kept and done
//!    together in sweeps of ascending ids, [`sweep`]).
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
//!
//! The survey (`--dry-run`, `crate::survey`) plans and reads the same way
//! (`plan`, `read_chunks`) and takes each complete chunk into its own
//! in-memory chunk code instead of writing it.

pub mod assemble;
mod fetch;
pub(crate) mod given;
pub mod plan;
mod sweep;
mod writers;

use std::sync::atomic::AtomicI64;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use log::{debug, info, warn};
use postgres::Client;
use synapse_compress_state::tool::{progress, spawn_named};
use synapse_compress_state::Result;

use crate::chunk::Walk;
use crate::config::{AutoConfig, Reader};
use crate::connections::{self, Budget};
use crate::room_ids::RoomIds;
use crate::state_saving;
use crate::summary::RunSummary;
use assemble::{LeftPass, Piece};
use given::Given;
use writers::Writers;

/// Pieces each channel of the pass holds between its threads (the reader,
/// the assembler, the writers' feeder), so that neither side waits on the
/// other's every step (`writers::SPARE_CHUNKS` says why).
const PIECES_IN_HAND: usize = 4;

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
    pub(crate) fn uses_pass(self, plan: &plan::Plan) -> bool {
        self != Reader::Auto || plan.groups() as f64 >= plan.span_groups as f64 * AUTO_SHARE
    }
}

/// The plan of the run's chunks from the scan position `start`, leaving
/// out `left` rooms, when the run reads with the pass; `None` when it has
/// no chunk or reads room by room (said in the log). `saved`: rooms' saved
/// positions are read (false when the progress tables do not exist: every
/// room starts afresh, as the survey of a first run has it).
pub(crate) fn plan(
    client: &mut Client,
    config: &AutoConfig,
    start: i64,
    left: &[String],
    saved: bool,
) -> Result<Option<plan::Plan>> {
    let plan = plan::read(
        client,
        start,
        config.chunk_size.get(),
        config.number_of_chunks.get(),
        left,
        saved,
    )?;
    if plan.chunks.is_empty() {
        return Ok(None);
    }
    if !config.reader.uses_pass(&plan) {
        info!(
            "Reading room by room: this run's {} groups are few of the {} from the scan position",
            progress::count(plan.groups()),
            progress::count(plan.span_groups)
        );
        return Ok(None);
    }
    Ok(Some(plan))
}

/// The pass's reading connection, when a run (or survey) with about
/// `left` groups past the scan position reads with the pass (`--reader`)
/// and a connection can be spared; `None` reads room by room. `setup`
/// holds the caller's own settings for it (the survey's read-only).
pub(crate) fn connect(
    client: &mut Client,
    config: &AutoConfig,
    left: u64,
    setup: &str,
) -> Result<Option<Client>> {
    if !config.reader.may_use_pass(config, left) {
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
    // A range held up by a lock fails soon and is read again once the lock
    // is visibly gone: a stop never waits for the reader.
    match connections::open(&config.db_url, &format!("SET lock_timeout = '1s'; {setup}")) {
        Ok(reader) => Ok(Some(reader)),
        Err(e) => {
            warn!("No connection for the pass ({e}); reading room by room");
            Ok(None)
        }
    }
}

/// Says what the pass is about to read, for `writers` writing connections.
fn log_reading(plan: &plan::Plan, config: &AutoConfig, writers: usize) {
    let first = plan.chunks.first().map_or(0, |c| c.first);
    info!(
        "Reading the table once for {} chunks of {} rooms ({} groups, ids {} to {}), \
         holding at most {} of unfinished chunks{}",
        plan.chunks.len(),
        plan.rooms.len(),
        progress::count(plan.groups()),
        first,
        plan.end().unwrap_or(first),
        config.pass_memory,
        match writers {
            1 => String::new(),
            n => format!(", writing on {n} connections"),
        }
    );
}

/// Says what the pass did.
fn log_done(config: &AutoConfig, chunks: usize, over_budget: usize, peak_bytes: usize) {
    info!(
        "The pass did {} chunks; {} rooms went over its memory budget ({}, most held {:.1} MiB) and are done room by room",
        chunks,
        over_budget,
        config.pass_memory,
        peak_bytes as f64 / (1024.0 * 1024.0)
    );
}

/// Runs the pass over `plan` with `reader` as its reading connection and
/// `client` (the run's own connection) plus `extra` as its writers; the
/// walk's chunk loop (or `--jobs`' workers) does whatever is left
/// afterwards.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    client: &mut Client,
    mut reader: Client,
    extra: Vec<Client>,
    config: &AutoConfig,
    summary: &mut RunSummary,
    walk: &mut Walk,
    room_ids: &RoomIds,
) -> Result<()> {
    let started = Instant::now();
    let start = state_saving::read_scan_position(client, true)?;
    let Some(plan) = plan(client, config, start, walk.left.rooms(), true)? else {
        return Ok(());
    };
    let first = plan.chunks[0].first;
    let writers = 1 + extra.len();
    log_reading(&plan, config, writers);
    summary.timings.load += started.elapsed();
    state_saving::raise_scan_position(client, first)?;
    let left_pass = LeftPass::new(plan.rooms.len());
    let read_to = AtomicI64::new(first);
    let budget = config.pass_memory.bytes() as usize;
    walk.carries.raise_for_pass(config.pass_memory.bytes());
    let (figures, peak_bytes, error) = {
        let writers = Writers::new(&plan, &left_pass, &read_to, writers, summary, walk);
        let peak_bytes = std::thread::scope(|scope| {
            let (out, pieces) = sync_channel::<Result<Piece>>(PIECES_IN_HAND);
            let (plan, left_pass, read_to, writers) = (&plan, &left_pass, &read_to, &writers);
            let assembler = spawn_named(scope, "pass-assemble", move || {
                assemble::run(
                    &mut reader,
                    plan,
                    left_pass,
                    (budget, config.pass_range_ids),
                    read_to,
                    &out,
                )
            });
            spawn_named(scope, "pass-feed", move || writers.feed(pieces));
            for mut connection in extra {
                spawn_named(scope, "pass-write", move || {
                    writers.write(&mut connection, config, room_ids, false)
                });
            }
            writers.write(client, config, room_ids, true);
            // The feeder ends once the writers stop, and with it the
            // reader (at its next chunk).
            assembler.join().unwrap_or_default()
        });
        let (figures, error) = writers.finish();
        (figures, peak_bytes, error)
    };
    if let Some(e) = error {
        return Err(e);
    }
    log_done(config, figures.chunks, figures.over_budget, peak_bytes);
    Ok(())
}

/// Reads `plan`'s chunks on `reader` and hands each complete one, with its
/// rank, to `each` on this thread, in the order they complete (a room's
/// chunks in their own order), as a [`Given`] to use in place of a load;
/// until `each` says to stop (false) or fails. Rooms that leave the pass
/// (`left_pass`: over the memory budget, or left by `each`) get no more
/// chunks: they are the caller's to read room by room afterwards, as are
/// those not handed over when the pass's connection fails. The survey's
/// reader (`--dry-run`); a run writes with [`run`].
pub(crate) fn read_chunks(
    mut reader: Client,
    plan: &plan::Plan,
    left_pass: &LeftPass,
    config: &AutoConfig,
    mut each: impl FnMut(u32, Given) -> Result<bool>,
) -> Result<()> {
    log_reading(plan, config, 1);
    let read_to = AtomicI64::new(plan.chunks.first().map_or(0, |c| c.first));
    let budget = config.pass_memory.bytes() as usize;
    let (mut chunks, mut over_budget) = (0, 0);
    let (outcome, peak_bytes) = std::thread::scope(|scope| {
        let (out, pieces) = sync_channel::<Result<Piece>>(1);
        let read_to = &read_to;
        let assembler = spawn_named(scope, "pass-assemble", move || {
            let range = (budget, config.pass_range_ids);
            assemble::run(&mut reader, plan, left_pass, range, read_to, &out)
        });
        let mut outcome = Ok(());
        for piece in pieces.iter() {
            let assembled = match piece {
                Ok(Piece::Chunk(assembled)) => assembled,
                Ok(Piece::OverBudget { .. }) => {
                    over_budget += 1;
                    continue;
                }
                Err(e) => {
                    warn!("The pass stopped reading ({e}); the rest is read room by room");
                    break;
                }
            };
            let rank = assembled.chunk;
            let planned = &plan.chunks[rank as usize];
            if left_pass.has_left(planned.room) {
                continue;
            }
            let given = Given {
                assembled,
                after: planned.after,
                more: planned.more,
            };
            chunks += 1;
            match each(rank, given) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        // The reader stops at its next chunk once nobody listens.
        drop(pieces);
        (outcome, assembler.join().unwrap_or_default())
    });
    outcome?;
    log_done(config, chunks, over_budget, peak_bytes);
    Ok(())
}
