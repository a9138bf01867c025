//! The automatic tool's run and its main modes: the chunk loop, and
//! `--largest-rooms`' room by room (the pass, `crate::pass`, runs before
//! the loop when chosen; `--jobs` is `crate::workers`).
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
use synapse_compress_state::db::lock_wait::{stop_requested, wait_for_state_tables};
use synapse_compress_state::db::schema::Access;
use synapse_compress_state::db::stats;
use synapse_compress_state::db::{self, schema, Prepared, RoomLock};
use synapse_compress_state::error::printable;
use synapse_compress_state::tool::interrupt;
use synapse_compress_state::tool::progress;
use synapse_compress_state::{Error, Result};

use crate::carry::Carries;
use crate::chunk::{compress_chunk, Ahead, Walk};
use crate::config::{warn_about_settings, AutoConfig};
use crate::connections::{self, Budget};
use crate::pass;
use crate::prefetch::Prefetcher;
use crate::room_ids::RoomIds;
use crate::state_saving::LeftRooms;
use crate::summary::RunFigures;
pub use crate::summary::RunSummary;
use crate::{largest, lock, state_saving, workers};

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
        several_workers(&mut client, config, &mut summary)?;
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
    // A load held up by a lock fails soon and is done again on the main
    // connection, which waits visibly at its safe point: a stop never
    // waits for a reader.
    let readers = connections::open_up_to(
        &config.db_url,
        "SET lock_timeout = '1s'",
        wanted,
        |got, e| {
            format!("Loading ahead on {got} connection(s), not {wanted} (no more connections: {e})")
        },
    );
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
                        Vec::new(),
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
                end_walk(client, summary, walk)?;
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

/// `--jobs N`: the pass first when the run reads with it, writing on N
/// connections, then N workers for what is left.
fn several_workers(
    client: &mut Client,
    config: &AutoConfig,
    summary: &mut RunSummary,
) -> Result<()> {
    let wanted = config.jobs.get() as usize;
    workers::budget(client, config)?;
    let mut walk = Walk::new(work_bar(client, config)?);
    if let Some(reader) = pass_reader(client, config)? {
        let allowed = Budget::read(client, config.reserve_connections)?
            .allow(wanted - 1, "more writing connections for the pass");
        let writers = connections::open_up_to(&config.db_url, "", allowed, |got, e| {
            format!(
                "The pass writes on {} connection(s), not {wanted} (no more connections: {e})",
                got + 1
            )
        });
        let room_ids = RoomIds::default();
        pass::run(
            client, reader, writers, config, summary, &mut walk, &room_ids,
        )?;
    }
    if summary.interrupted.is_none() {
        workers::run(client, config, summary, &mut walk)?;
    }
    end_walk(client, summary, walk)
}

/// What a run does after its last chunk: the final scan position after a
/// pass, and the rooms' rows counted.
fn end_walk(client: &mut Client, summary: &mut RunSummary, walk: Walk) -> Result<()> {
    if let (None, Some(first)) = (summary.interrupted, walk.pass_highest_first) {
        // The loop's last pick leaves the position at the start of the
        // highest chunk done; after the pass, the loop's own last pick may
        // be a lower one (a room the pass gave it), so the position goes
        // where the loop alone would have left it (never past a left room).
        let position = walk.left.hold().map_or(first, |hold| hold.min(first));
        state_saving::raise_scan_position(client, position)?;
    }
    walk.bar.finish_and_clear();
    walk.figures.count_rooms_after(client, summary)
}

/// The pass's reading connection, when this run reads with the pass
/// (`--reader`, by default when the run covers a good share of what is
/// left); `None` reads room by room.
fn pass_reader(client: &mut Client, config: &AutoConfig) -> Result<Option<Client>> {
    let (_, left) = state_saving::groups_left_estimate(client)?;
    pass::connect(client, config, left, "")
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
            progress: None,
            later: None,
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
        figures.add(&outcome, summary);
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
            figures.add(&outcome, summary);
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
