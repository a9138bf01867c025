//! The pass's writers: each complete chunk through the chunk code, on the
//! run's own connection, or on several at once with `--jobs`.
//!
//! The reader hands complete chunks over in the order of their last group;
//! a feeder puts them in a short queue (so the reader stays a few chunks
//! ahead, no more). A writer takes the first queued chunk of a room no
//! other writer has: a room's chunks keep their order, its next one waits
//! until the one before is written. It does the chunk as the loop would
//! (the room's lock, its progress read under it, compress, decide, verify,
//! write with the progress), then raises the scan position to the lowest
//! first group of the planned chunks not yet written. With one writer, the
//! default, the chunks go in the reader's order.
//!
//! Several writers keep the server's cores and disk busy while the reader
//! reads: most chunks complete late in the pass (a room's first chunk
//! spans the whole id range), so one writer would do their writes one
//! after the other at the end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use postgres::Client;
use synapse_compress_state::db::load::LaterGroups;
use synapse_compress_state::db::lock_wait::{stop_requested, wait_for_state_tables};
use synapse_compress_state::db::schema::Access;
use synapse_compress_state::db::{Prepared, RoomLock};
use synapse_compress_state::error::printable;
use synapse_compress_state::tool::interrupt::Signal;
use synapse_compress_state::tool::{failpoint, interrupt, progress};
use synapse_compress_state::{Error, Result};

use super::assemble::{Assembled, LeftPass, Piece};
use super::given::Given;
use super::plan::{Plan, PlannedChunk};
use super::sweep::{Kept, Sweep};
use crate::carry::Carries;
use crate::chunk::{compress_chunk, decide_chunk, Ahead, Decided, Walk};
use crate::config::AutoConfig;
use crate::room_ids::RoomIds;
use crate::state_saving::{self, LeftRooms};
use crate::summary::{ChunkOutcome, RunFigures, RunSummary};

/// Most queued chunks of rooms in flight: beyond, the room with the most
/// of them leaves the pass (the queue's memory stays bounded).
const MAX_BLOCKED: usize = 16;

/// Complete chunks queued beyond one per writer. The reader hands chunks
/// over in bursts (a range completes many rooms' chunks at once) while the
/// writer takes them one by one: with one spare the writer and the reader
/// kept waiting on each other, and on `20m` in cache the reading took 33 s
/// where eight spares take 28 s, for about 13 MiB more at the peak.
const SPARE_CHUNKS: usize = 8;

/// What the pass did, for the run's log.
#[derive(Debug, Default)]
pub(super) struct PassFigures {
    pub(super) chunks: usize,
    pub(super) over_budget: usize,
}

/// What the feeder and the writers share, behind one mutex.
struct Shared<'w> {
    /// Complete chunks not yet taken, in the reader's order.
    queue: VecDeque<Box<Assembled>>,
    /// Rooms (by their index in the plan) a writer is doing a chunk of.
    in_flight: HashSet<u32>,
    /// The reader may still hand chunks over.
    reading: bool,
    /// No more chunks: a signal came or a writer failed.
    stop: bool,
    error: Option<Error>,
    summary: &'w mut RunSummary,
    walk: &'w mut Walk,
    /// Planned chunks done, by rank, and the lowest rank not done.
    done: Vec<bool>,
    lowest: usize,
    /// The highest scan position a writer was told to save (saving a lower
    /// or equal one changes nothing: the saved one only rises).
    raised: i64,
    figures: PassFigures,
}

/// The pass's queue and writers.
pub(super) struct Writers<'w> {
    shared: Mutex<Shared<'w>>,
    /// Signalled whenever the queue, the rooms in flight or `stop` change.
    changed: Condvar,
    plan: &'w Plan,
    left_pass: &'w LeftPass,
    /// Where the reading has got to, and where it ends (for the bar).
    read_to: &'w AtomicI64,
    end: i64,
    /// Most complete chunks queued.
    capacity: usize,
    /// One writer: chunks are decided as they come and written together
    /// in sweeps ([`super::sweep`]).
    sweeping: bool,
}

/// A chunk a writer took, with what the room carries from its chunks
/// before.
struct Taken {
    assembled: Box<Assembled>,
    carries: Carries,
    figures: RunFigures,
}

/// How one chunk of the pass went.
enum Done {
    /// Written, or skipped as not worth writing: the chunk is done.
    Written(ChunkOutcome),
    /// Done, but not as planned: another compressor moved the room on, so
    /// its later chunks are the loop's.
    Moved(ChunkOutcome),
    /// Another compressor holds the room: left for a later run.
    Busy,
    /// The room's data cannot be read safely: left for a later run.
    Damaged,
    /// A signal came: the run stops.
    Stopped(Signal),
}

impl<'w> Writers<'w> {
    pub(super) fn new(
        plan: &'w Plan,
        left_pass: &'w LeftPass,
        read_to: &'w AtomicI64,
        writers: usize,
        summary: &'w mut RunSummary,
        walk: &'w mut Walk,
    ) -> Self {
        Writers {
            shared: Mutex::new(Shared {
                queue: VecDeque::new(),
                in_flight: HashSet::new(),
                reading: true,
                stop: false,
                error: None,
                summary,
                walk,
                done: vec![false; plan.chunks.len()],
                lowest: 0,
                raised: i64::MIN,
                figures: PassFigures::default(),
            }),
            changed: Condvar::new(),
            plan,
            left_pass,
            read_to,
            end: plan.end().unwrap_or(0),
            capacity: writers + SPARE_CHUNKS,
            sweeping: writers == 1,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<'w>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pass's figures and the first error a writer met, once every
    /// writer is done.
    pub(super) fn finish(self) -> (PassFigures, Option<Error>) {
        let shared = self.shared.into_inner().unwrap_or_else(|e| e.into_inner());
        (shared.figures, shared.error)
    }

    /// Moves the reader's pieces into the queue until the reader is done
    /// or the writers stop.
    pub(super) fn feed(&self, pieces: Receiver<Result<Piece>>) {
        for piece in pieces.iter() {
            let assembled = match piece {
                Ok(Piece::Chunk(assembled)) => assembled,
                Ok(Piece::OverBudget { room }) => {
                    debug!(
                        "Room {} leaves the pass (over its memory budget)",
                        self.plan.rooms[room as usize].room_id
                    );
                    self.lock().figures.over_budget += 1;
                    continue;
                }
                Err(e) => {
                    // The pass's own connection failed (closed by the
                    // server, say): what it has not handed over yet is
                    // read room by room, as without a pass.
                    warn!("The pass stopped reading ({e}); the rest is read room by room");
                    break;
                }
            };
            let mut s = self.lock();
            // Chunks of rooms in flight wait in the queue without holding
            // up the others (a room whose write waits on Synapse's locks,
            // or the biggest room's chunks one after the other).
            while s.queue.len() - self.blocked(&s) >= self.capacity && !s.stop {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.stop {
                break;
            }
            s.queue.push_back(assembled);
            if self.blocked(&s) > MAX_BLOCKED {
                self.leave_most_queued(&mut s);
            }
            self.changed.notify_all();
        }
        self.lock().reading = false;
        self.changed.notify_all();
    }

    /// Queued chunks of rooms in flight (none of them can be taken yet).
    fn blocked(&self, s: &Shared<'_>) -> usize {
        s.queue
            .iter()
            .filter(|a| {
                s.in_flight
                    .contains(&self.plan.chunks[a.chunk as usize].room)
            })
            .count()
    }

    /// The room with the most chunks in the queue leaves the pass: its
    /// queued chunks are dropped, and done by the loop after the pass.
    fn leave_most_queued(&self, s: &mut Shared<'_>) {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for a in &s.queue {
            *counts
                .entry(self.plan.chunks[a.chunk as usize].room)
                .or_default() += 1;
        }
        let Some((room, _)) = counts.into_iter().max_by_key(|&(room, n)| (n, room)) else {
            return;
        };
        debug!(
            "Room {} leaves the pass (its chunks wait for its write)",
            self.plan.rooms[room as usize].room_id
        );
        self.left_pass.leave(room);
        s.queue
            .retain(|a| self.plan.chunks[a.chunk as usize].room != room);
        s.figures.over_budget += 1;
    }

    /// One writer: chunks until none is left or the run stops. An error
    /// stops the other writers too, and is the run's.
    pub(super) fn write(
        &self,
        client: &mut Client,
        config: &AutoConfig,
        room_ids: &RoomIds,
        first: bool,
    ) {
        let mut prepared = Prepared::new();
        if let Err(e) = self.write_chunks(client, &mut prepared, config, room_ids, first) {
            let mut s = self.lock();
            s.stop = true;
            s.error.get_or_insert(e);
            self.changed.notify_all();
        }
    }

    /// A writer's loop. With one writer, each chunk is decided as it
    /// comes and its writes are kept in a [`Sweep`], written with others'
    /// when what is kept reaches the pass's memory budget, and when the
    /// reading is over; with several, each chunk is written as it comes.
    fn write_chunks(
        &self,
        client: &mut Client,
        prepared: &mut Prepared,
        config: &AutoConfig,
        room_ids: &RoomIds,
        first: bool,
    ) -> Result<()> {
        let budget = config.pass_memory.bytes() as usize;
        let mut sweep = self.sweeping.then(Sweep::default);
        while let Some(mut taken) = self.take(first) {
            let rank = taken.assembled.chunk;
            let planned = &self.plan.chunks[rank as usize];
            let room = self.plan.room_of(rank);
            // The safe point, as in the chunk loop.
            if let Some(signal) = stop_requested(client, Access::Read)? {
                self.chunk_done(rank as usize, room, planned, taken, Done::Stopped(signal));
                continue;
            }
            let mut own = RunSummary::default();
            let chunk = (room, planned);
            let done = match sweep.as_mut() {
                None => one_chunk(
                    client, prepared, config, room_ids, chunk, &mut taken, &mut own,
                )?,
                Some(sweep) => {
                    let kept = decide_one(
                        client, prepared, config, room_ids, chunk, &mut taken, &mut own, sweep,
                    )?;
                    match kept {
                        Err(done) => done,
                        Ok(kept) => {
                            self.lock().summary.add_worker(&own);
                            self.release(planned, taken);
                            sweep.add(rank, kept, &config.default_levels);
                            self.flush_over(client, prepared, sweep, budget)?;
                            continue;
                        }
                    }
                }
            };
            self.lock().summary.add_worker(&own);
            if let Some(position) = self.chunk_done(rank as usize, room, planned, taken, done) {
                state_saving::raise_scan_position(client, position)?;
            }
        }
        match sweep {
            Some(sweep) if !self.lock().stop => self.flush(client, prepared, sweep),
            Some(sweep) if !sweep.is_empty() => {
                debug!(
                    "The run stops: the chunks decided and not written are left for the next run"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Writes what `sweep` holds when it holds more than `budget`.
    fn flush_over(
        &self,
        client: &mut Client,
        prepared: &mut Prepared,
        sweep: &mut Sweep,
        budget: usize,
    ) -> Result<()> {
        if sweep.bytes() > budget {
            self.flush(client, prepared, std::mem::take(sweep))?;
        }
        Ok(())
    }

    /// The run stops after what it is doing: `signal` came.
    fn stopped(&self, signal: Signal) {
        let mut s = self.lock();
        s.summary.interrupted.get_or_insert(signal);
        s.stop = true;
        self.changed.notify_all();
    }

    /// Writes what `sweep` holds, and counts the chunks whose writes and
    /// progress committed.
    fn flush(&self, client: &mut Client, prepared: &mut Prepared, sweep: Sweep) -> Result<()> {
        if sweep.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let what = sweep.describe();
        info!("Writing {what} in one sweep of ascending group ids");
        self.lock()
            .walk
            .bar
            .set_message(format!("writing {what} in one sweep"));
        // A signal lets the sweep finish: stopped between two batches, it
        // would leave chunks with some of their groups rewritten and their
        // progress not saved, which the next run may decide otherwise (see
        // docs/reading.md, "Kills"). A second signal ends the process at
        // once, as ever. Only a signal that comes while the tables are
        // taken (waiting for them) stops it between two batches.
        let mut told = false;
        let mut before = |client: &mut Client| -> Result<bool> {
            let signal = match interrupt::requested() {
                Some(signal) => {
                    if !std::mem::replace(&mut told, true) {
                        info!(
                            "The run stops once this sweep is written (see above); a \
                             second Ctrl-C or SIGTERM stops at once, which is safe too"
                        );
                    }
                    self.stopped(signal);
                    return Ok(true);
                }
                None => wait_for_state_tables(client, Access::Write)?,
            };
            match signal {
                Some(signal) => {
                    self.stopped(signal);
                    Ok(false)
                }
                None => Ok(true),
            }
        };
        let parts = sweep.write(client, prepared, &mut before)?;
        // A signal during the last batch: the run stops after the sweep.
        if let Some(signal) = interrupt::requested() {
            self.stopped(signal);
        }
        self.lock().summary.timings.write += started.elapsed();
        info!(
            "Sweep done in {:.1}s: {} chunks committed with their progress",
            started.elapsed().as_secs_f64(),
            parts.len()
        );
        let mut raised = None;
        for part in parts {
            let planned = &self.plan.chunks[part.rank as usize];
            let room = self.plan.room_of(part.rank);
            let done = if part.outcome.last == planned.last {
                Done::Written(part.outcome)
            } else {
                Done::Moved(part.outcome)
            };
            raised = self
                .count(part.rank as usize, room, planned, done)
                .or(raised);
        }
        if let Some(position) = raised {
            state_saving::raise_scan_position(client, position)?;
        }
        Ok(())
    }

    /// The next chunk for a writer, or `None` when there is none left or
    /// the run stops. While it waits, the first writer keeps the bar
    /// saying how far the reading is.
    fn take(&self, first: bool) -> Option<Taken> {
        let mut s = self.lock();
        let waited = Instant::now();
        loop {
            if s.stop {
                return None;
            }
            let free = s.queue.iter().position(|a| {
                !s.in_flight
                    .contains(&self.plan.chunks[a.chunk as usize].room)
            });
            if let Some(i) = free {
                let assembled = s.queue.remove(i).expect("a queued chunk");
                self.changed.notify_all();
                let planned = &self.plan.chunks[assembled.chunk as usize];
                if self.left_pass.has_left(planned.room) {
                    continue;
                }
                s.in_flight.insert(planned.room);
                s.summary.timings.load += waited.elapsed();
                let room = self.plan.room_of(assembled.chunk);
                let carries = s.walk.carries.split_off(room);
                let figures = RunFigures::with_lengths(s.walk.figures.split_lengths(room));
                return Some(Taken {
                    assembled,
                    carries,
                    figures,
                });
            }
            if !s.reading && s.queue.is_empty() {
                s.summary.timings.load += waited.elapsed();
                return None;
            }
            let (guard, wait) = self
                .changed
                .wait_timeout(s, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner());
            s = guard;
            if wait.timed_out() {
                if let Some(signal) = interrupt::requested() {
                    s.summary.interrupted = Some(signal);
                    s.stop = true;
                    self.changed.notify_all();
                    return None;
                }
                // Chunks mostly complete late in the pass: until they do,
                // the bar says how far the reading is.
                if first && s.in_flight.is_empty() {
                    s.walk.bar.set_message(format!(
                        "reading the table: up to group {} of {}",
                        progress::count(self.read_to.load(Ordering::Relaxed).max(0) as u64),
                        progress::count(self.end.max(0) as u64)
                    ));
                }
            }
        }
    }

    /// Counts a chunk a writer finished; returns the scan position to save
    /// when it is done and higher than any saved before.
    fn chunk_done(
        &self,
        rank: usize,
        room: &str,
        planned: &PlannedChunk,
        taken: Taken,
        done: Done,
    ) -> Option<i64> {
        self.release(planned, taken);
        self.count(rank, room, planned, done)
    }

    /// Gives a taken chunk's room back: its next chunk may be taken.
    fn release(&self, planned: &PlannedChunk, taken: Taken) {
        let mut s = self.lock();
        s.in_flight.remove(&planned.room);
        s.walk.carries.merge(taken.carries);
        s.walk.figures.merge_lengths(taken.figures.into_lengths());
        self.changed.notify_all();
    }

    /// Counts a chunk that is done (see [`Writers::chunk_done`]).
    fn count(&self, rank: usize, room: &str, planned: &PlannedChunk, done: Done) -> Option<i64> {
        let mut s = self.lock();
        let outcome = match done {
            Done::Written(outcome) => outcome,
            Done::Moved(outcome) => {
                self.left_pass.leave(planned.room);
                outcome
            }
            Done::Busy | Done::Damaged => {
                let Shared { walk, summary, .. } = &mut *s;
                if matches!(done, Done::Busy) {
                    summary.rooms_busy += 1;
                } else {
                    walk.figures.touch(room, summary);
                    summary.rooms_damaged += 1;
                }
                walk.left.leave(room.to_owned(), planned.first);
                self.left_pass.leave(planned.room);
                return None;
            }
            Done::Stopped(signal) => {
                s.summary.interrupted = Some(signal);
                s.stop = true;
                return None;
            }
        };
        let Shared {
            walk,
            summary,
            done,
            lowest,
            raised,
            figures,
            ..
        } = &mut *s;
        walk.figures.add(&outcome, summary);
        walk.bar.set_position(summary.groups as u64);
        walk.bar.set_message(format!(
            "saved {} rows; room {}",
            progress::count(summary.rows_saved.max(0) as u64),
            printable(room)
        ));
        figures.chunks += 1;
        done[rank] = true;
        walk.pass_highest_first = walk.pass_highest_first.max(Some(planned.first));
        while *lowest < done.len() && done[*lowest] {
            *lowest += 1;
        }
        // The scan position: at or below every planned chunk not yet
        // written (all below `lowest` are; chunks in flight are not done),
        // and no higher than the start of the highest chunk done. When the
        // chunks done are the first ones by rank, as at the end of a run or
        // when a stop comes early, that is where the loop's last pick
        // leaves it, so the saved progress is the loop's. A room left
        // during the pass is left at one of its planned chunks, never
        // written, so this is already at or below its hold; the cap only
        // says so. Writers may save their positions out of order: each is
        // right when computed, and the saved one only ever rises.
        let highest = walk.pass_highest_first.unwrap_or(planned.first);
        let next = self
            .plan
            .chunks
            .get(*lowest)
            .map_or(highest, |unwritten| unwritten.first.min(highest));
        let position = walk.left.hold().map_or(next, |hold| hold.min(next));
        (position > *raised).then(|| {
            *raised = position;
            position
        })
    }
}

/// Decides one complete chunk of the pass (the chunk code up to the
/// write), under the room's lock, from the progress the room's last chunk
/// in `sweep` leaves, if it has one there: what to keep for the sweep, or
/// how the chunk went when there is nothing to keep. The room's carry is
/// kept as the write will leave it.
#[allow(clippy::too_many_arguments)]
fn decide_one(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    room_ids: &RoomIds,
    (room, planned): (&str, &PlannedChunk),
    taken: &mut Taken,
    own: &mut RunSummary,
    sweep: &Sweep,
) -> Result<std::result::Result<Kept, Done>> {
    let decided = under_room_lock(client, room, |client| {
        let no_rooms = LeftRooms::default();
        let later = sweep.later_of(room);
        let (mut ahead, figures) = taken.ahead(&no_rooms, room_ids, planned);
        ahead.progress = sweep.progress_of(room);
        ahead.later = later.as_ref().map(|l| l as &dyn LaterGroups);
        decide_chunk(client, prepared, room, config, own, figures, &mut ahead)
    })?;
    Ok(match decided {
        Err(done) => Err(done),
        Ok(Decided::Final(outcome)) => Err(Done::of(outcome, planned)),
        Ok(Decided::SaveOnly { outcome, .. }) => Ok(Kept::Progress(outcome)),
        Ok(Decided::Write(pending)) => {
            pending.keep_carry(&mut taken.carries)?;
            Ok(Kept::Write(pending))
        }
    })
}

/// Does one complete chunk of the pass through the chunk code.
fn one_chunk(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    room_ids: &RoomIds,
    (room, planned): (&str, &PlannedChunk),
    taken: &mut Taken,
    own: &mut RunSummary,
) -> Result<Done> {
    let outcome = under_room_lock(client, room, |client| {
        let no_rooms = LeftRooms::default();
        let (ahead, figures) = taken.ahead(&no_rooms, room_ids, planned);
        compress_chunk(client, prepared, room, config, own, figures, ahead)
    })?;
    Ok(match outcome {
        Err(done) => done,
        Ok(outcome) => Done::of(outcome, planned),
    })
}

/// Runs `work` under `room`'s lock: `Done::Busy` when another compressor
/// holds it, `Done::Stopped` when a signal came during the work.
fn under_room_lock<T>(
    client: &mut Client,
    room: &str,
    work: impl FnOnce(&mut Client) -> Result<T>,
) -> Result<std::result::Result<T, Done>> {
    failpoint::stop_here("pass::hand-over");
    let lock = match RoomLock::try_acquire(client, room) {
        Ok(lock) => lock,
        Err(Error::RoomBusy { holder, .. }) => {
            warn!("Room {room} is being compressed by {holder}; leaving it for a later run");
            return Ok(Err(Done::Busy));
        }
        Err(e) => return Err(e),
    };
    let result = match work(client) {
        Err(Error::Interrupted(signal)) => Err(Done::Stopped(signal)),
        result => Ok(result?),
    };
    lock.release(client)?;
    Ok(result)
}

impl Taken {
    /// What the chunk code draws on for this chunk (no loading ahead in the
    /// pass: the rooms left are not looked at), and the room's figures.
    fn ahead<'p>(
        &'p mut self,
        no_rooms: &'p LeftRooms,
        room_ids: &'p RoomIds,
        planned: &PlannedChunk,
    ) -> (Ahead<'p>, &'p mut RunFigures) {
        let given = Given {
            assembled: std::mem::take(&mut self.assembled),
            after: planned.after,
            more: planned.more,
        };
        let ahead = Ahead::assembled(no_rooms, room_ids, &mut self.carries, Box::new(given));
        (ahead, &mut self.figures)
    }
}

impl Done {
    /// How a chunk the chunk code did went, against its plan.
    fn of(outcome: ChunkOutcome, planned: &PlannedChunk) -> Done {
        if outcome.damaged {
            Done::Damaged
        } else if outcome.last == planned.last {
            Done::Written(outcome)
        } else {
            Done::Moved(outcome)
        }
    }
}
