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
//!    groups read by index as today ([`writers`]: on the run's connection,
//!    or on `--jobs` connections at once).
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
pub(crate) mod given;
pub mod plan;
mod writers;

use std::sync::atomic::AtomicI64;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use log::info;
use postgres::Client;
use synapse_compress_state::tool::progress;
use synapse_compress_state::Result;

use crate::chunk::Walk;
use crate::config::AutoConfig;
use crate::room_ids::RoomIds;
use crate::state_saving;
use crate::summary::RunSummary;
use assemble::{LeftPass, Piece};
use writers::Writers;

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

/// Runs the pass with `reader` as its reading connection and `client`
/// (the run's own connection) plus `extra` as its writers; the walk's
/// chunk loop (or `--jobs`' workers) does whatever is left afterwards.
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
    let writers = 1 + extra.len();
    info!(
        "Reading the table once for {} chunks of {} rooms ({} groups, ids {} to {}), \
         holding at most {} of unfinished chunks{}",
        plan.chunks.len(),
        plan.rooms.len(),
        progress::count(plan.groups()),
        first.first,
        plan.end().unwrap_or(first.first),
        config.pass_memory,
        match writers {
            1 => String::new(),
            n => format!(", writing on {n} connections"),
        }
    );
    summary.timings.load += started.elapsed();
    state_saving::raise_scan_position(client, first.first)?;
    let left_pass = LeftPass::new(plan.rooms.len());
    let read_to = AtomicI64::new(first.first);
    let budget = config.pass_memory.bytes() as usize;
    let (figures, peak_bytes, error) = {
        let writers = Writers::new(&plan, &left_pass, &read_to, writers, summary, walk);
        let peak_bytes = std::thread::scope(|scope| {
            let (out, pieces) = sync_channel::<Result<Piece>>(1);
            let (plan, left_pass, read_to, writers) = (&plan, &left_pass, &read_to, &writers);
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
            scope.spawn(move || writers.feed(pieces));
            for mut connection in extra {
                scope.spawn(move || writers.write(&mut connection, config, room_ids, false));
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
    info!(
        "The pass did {} chunks; {} rooms went over its memory budget ({}, most held {:.1} MiB) and are done room by room",
        figures.chunks,
        figures.over_budget,
        config.pass_memory,
        peak_bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
