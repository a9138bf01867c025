//! `--jobs N`: N workers compress different rooms at the same time, each
//! on its own connection. (When the run reads with the pass, the pass
//! writes on N connections first, `crate::pass`; the workers then do what
//! it leaves, continuing its rooms left, figures and carries.)
//!
//! Each worker does what the one-worker chunk loop does, a chunk at a time:
//! pick the room of the lowest group not yet compressed, take the room's
//! lock, compress the room's next chunk and write it with its progress.
//! What they share sits behind one mutex, held only while picking and
//! while counting a finished chunk:
//! - the rooms in flight: another worker leaves them out of its pick, and
//!   the saved scan position never passes their next group (as for rooms
//!   left to a later run), so a run killed at any instant resumes with
//!   nothing skipped;
//! - the chunk count (`-n` counts chunks for the whole run), the figures,
//!   and the first error (the others stop at their next pick).
//!
//! A room is in one worker's hands at a time and its chunks keep their
//! order, so a run to completion leaves the same edges, rows and progress
//! as one worker does. There is no loading ahead; memory grows with
//! N × chunk (and the rooms' carries, within one budget for the run). The
//! database server does the heavy part of the work (reads, deletes, index
//! updates): more workers help only while its cores and disks have room.

use std::collections::BTreeMap;
use std::sync::Mutex;

use log::{info, warn};
use postgres::Client;
use synapse_compress_state::db::{self, Prepared, RoomLock};
use synapse_compress_state::error::printable;
use synapse_compress_state::tool::{interrupt, progress, spawn_named};
use synapse_compress_state::{Error, Result};

use crate::carry::Carries;
use crate::chain_lengths::ChainLengths;
use crate::chunk::{compress_chunk, Ahead, Walk};
use crate::config::AutoConfig;
use crate::connections::Budget;
use crate::room_ids::RoomIds;
use crate::state_saving::{self, LeftRooms};
use crate::summary::{RunFigures, RunSummary};

/// What the workers share.
struct Shared {
    /// Rooms left to a later run (busy elsewhere, or damaged).
    left: LeftRooms,
    /// Rooms a worker is compressing, with the group that made each next.
    in_flight: BTreeMap<String, i64>,
    /// Chunks claimed so far (returned when a room turns out busy or
    /// damaged, as those are not counted).
    claimed: i64,
    summary: RunSummary,
    /// The rooms touched and the chain lengths recorded by rooms' earlier
    /// chunks.
    figures: RunFigures,
    /// Rooms' new structures, for their next chunks (`crate::carry`).
    carries: Carries,
    /// No more picks: the work is done, a signal came, or a worker failed.
    stop: bool,
    error: Option<Error>,
}

/// A room a worker picked.
struct Picked {
    room: String,
    next_group: i64,
    lengths: ChainLengths,
    carries: Carries,
}

/// The server's connection budget for `--jobs`, refused when there is no
/// connection to spare for a worker.
pub(crate) fn budget(client: &mut Client, config: &AutoConfig) -> Result<Budget> {
    let budget = Budget::read(client, config.reserve_connections)?;
    if budget.spare() == 0 {
        return Err(Error::InvalidArgument(format!(
            "--jobs {}: no connection to spare for workers (the server has {} free and {} \
             are kept for Synapse by --reserve-connections); run without --jobs",
            config.jobs.get(),
            budget.free,
            budget.reserve
        )));
    }
    Ok(budget)
}

/// Runs the chunks of this run with `config.jobs` workers, continuing
/// `walk` (the rooms left, the figures and carries of the pass before, if
/// one ran, whose chunks count towards `-n`).
pub(crate) fn run(
    client: &mut Client,
    config: &AutoConfig,
    summary: &mut RunSummary,
    walk: &mut Walk,
) -> Result<()> {
    let wanted = config.jobs.get() as usize;
    let allowed = budget(client, config)?.allow(wanted, "workers");
    let mut connections = Vec::new();
    for _ in 0..allowed {
        match db::connect_as(&config.db_url, "synapse_auto_compressor") {
            Ok(c) => connections.push(c),
            Err(e) if !connections.is_empty() => {
                warn!(
                    "Compressing with {} workers, not {} (no more connections: {e})",
                    connections.len(),
                    config.jobs.get()
                );
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let workers = connections.len();
    info!("Compressing with {workers} workers, one room each at a time");
    let shared = Mutex::new(Shared {
        left: std::mem::take(&mut walk.left),
        in_flight: BTreeMap::new(),
        claimed: summary.chunks as i64,
        summary: std::mem::take(summary),
        figures: std::mem::take(&mut walk.figures),
        carries: std::mem::take(&mut walk.carries),
        stop: false,
        error: None,
    });
    let bar = walk.bar.clone();
    let room_ids = RoomIds::default();
    std::thread::scope(|scope| {
        for connection in connections {
            let (shared, bar, room_ids) = (&shared, &bar, &room_ids);
            spawn_named(scope, "worker", move || {
                worker(connection, config, shared, bar, room_ids)
            });
        }
    });
    let shared = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    *summary = shared.summary;
    summary.workers = workers;
    (walk.left, walk.figures, walk.carries) = (shared.left, shared.figures, shared.carries);
    match shared.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One worker: chunks until there is nothing left it may take.
fn worker(
    mut client: Client,
    config: &AutoConfig,
    shared: &Mutex<Shared>,
    bar: &progress::Bar,
    room_ids: &RoomIds,
) {
    let mut prepared = Prepared::new();
    let no_rooms = LeftRooms::default();
    loop {
        match db::lock_wait::wait_for_state_tables(&mut client, db::schema::Access::Read) {
            Ok(None) => {}
            Ok(Some(signal)) => {
                let mut s = lock_shared(shared);
                s.summary.interrupted = Some(signal);
                s.stop = true;
                return;
            }
            Err(e) => return fail(shared, e),
        }
        let picked = match pick(&mut client, &mut prepared, config, shared) {
            Ok(Some(picked)) => picked,
            Ok(None) => return,
            Err(e) => return fail(shared, e),
        };
        let room = picked.room.clone();
        // Another process (the other tool, a manual run) may hold the room.
        let lock = match RoomLock::try_acquire(&mut client, &room) {
            Ok(lock) => lock,
            Err(Error::RoomBusy { holder, .. }) => {
                warn!("Room {room} is being compressed by {holder}; leaving it for a later run");
                let mut s = lock_shared(shared);
                s.in_flight.remove(&room);
                s.claimed -= 1;
                s.summary.rooms_busy += 1;
                s.left.leave(room, picked.next_group);
                continue;
            }
            Err(e) => return fail(shared, e),
        };
        let mut figures = RunFigures::with_lengths(picked.lengths);
        let mut carries = picked.carries;
        let mut own = RunSummary::default();
        let outcome = compress_chunk(
            &mut client,
            &mut prepared,
            &room,
            config,
            &mut own,
            &mut figures,
            Ahead::none(&no_rooms, room_ids, &mut carries),
        )
        .and_then(|outcome| lock.release(&mut client).map(|()| outcome));
        let mut s = lock_shared(shared);
        s.in_flight.remove(&room);
        s.summary.add_worker(&own);
        s.figures.merge_lengths(figures.into_lengths());
        s.carries.merge(carries);
        match outcome {
            Ok(outcome) if outcome.damaged => {
                s.claimed -= 1;
                s.summary.rooms_damaged += 1;
                s.left.leave(room, picked.next_group);
            }
            Ok(outcome) => {
                let Shared {
                    figures, summary, ..
                } = &mut *s;
                figures.add(&outcome, summary);
                bar.set_position(s.summary.groups as u64);
                bar.set_message(format!(
                    "saved {} rows; room {}",
                    progress::count(s.summary.rows_saved.max(0) as u64),
                    printable(&room)
                ));
            }
            Err(Error::Interrupted(signal)) => {
                // The chunk was given up before it wrote anything.
                s.claimed -= 1;
                s.summary.interrupted = Some(signal);
                s.stop = true;
                return;
            }
            Err(e) => {
                drop(s);
                return fail(shared, e);
            }
        }
    }
}

/// Picks the next room for a worker, or `None` when it should stop: the
/// run's count is reached, a signal came, another worker failed, or no
/// room is left that no other worker has.
fn pick(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    shared: &Mutex<Shared>,
) -> Result<Option<Picked>> {
    let mut s = lock_shared(shared);
    if s.stop || s.claimed >= config.number_of_chunks.get() {
        return Ok(None);
    }
    // The safe point: this worker's chunks before have committed with
    // their progress, and the next one has not started.
    if let Some(signal) = interrupt::requested() {
        s.summary.interrupted = Some(signal);
        s.stop = true;
        return Ok(None);
    }
    let skip = s.left.with(&s.in_flight);
    let Some(next) = state_saving::next_room_to_compress(client, prepared, &skip)? else {
        // Rooms in flight may have more chunks, for their own workers.
        if s.in_flight.is_empty() {
            s.stop = true;
            if s.left.rooms().is_empty() {
                info!("Every state group has been compressed; nothing left to do");
            }
        }
        return Ok(None);
    };
    // Past every group but the other workers' rooms' (not left for good).
    let scanned = s.in_flight.values().fold(next.group, |low, &g| low.min(g));
    s.left.scanned_to(scanned);
    let room = next.room_id;
    s.in_flight.insert(room.clone(), next.group);
    s.claimed += 1;
    let Shared {
        figures, summary, ..
    } = &mut *s;
    figures.touch(&room, summary);
    let lengths = s.figures.split_lengths(&room);
    let carries = s.carries.split_off(&room);
    Ok(Some(Picked {
        room,
        next_group: next.group,
        lengths,
        carries,
    }))
}

/// Records a worker's error (the first one wins) and stops the others at
/// their next pick.
fn fail(shared: &Mutex<Shared>, error: Error) {
    let mut s = lock_shared(shared);
    s.stop = true;
    s.error.get_or_insert(error);
}

/// The shared state, even if a worker panicked while holding it (its
/// figures are still the run's).
fn lock_shared(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}
