//! `--dry-run`: the survey. Runs the chunk loop of a real run over the
//! database, in memory, and reports per room what that run would save.
//!
//! It starts where a real run would (the saved scan position, rooms'
//! positions and levels, read only; from scratch when the progress tables
//! do not exist) and carries the run's progress from chunk to chunk in
//! memory as a real run carries it in the tables: the scan position, and
//! each room's last group and levels, fresh after a chunk that would grow.
//! Each chunk is loaded, compressed and verified with the run's own code
//! (`chunk::take_loaded`, `chunk::would_grow`), so the
//! decisions are the run's.
//!
//! It reads as the run would (`--reader`): room by room, each chunk through
//! the indexes, or with the pass (`crate::pass`), which plans the chunks
//! from `state_groups` and reads the table once on a second read-only
//! connection, handing each chunk over as it completes. The survey keeps
//! every room's progress in memory, so chunks of different rooms may come
//! in any order; a room's own come in order. What the pass leaves (rooms
//! over its memory budget, damaged ones, what a failed pass connection did
//! not hand over, and the rest of `-n`) is surveyed room by room after it.
//! The figures are the same either way (`tests/survey.rs` compares them).
//!
//! One thing differs from a real run: a later chunk of a room would find
//! its level heads and their predecessors along the edges as they are,
//! where the run would find the edges the earlier chunk wrote. The states
//! are the same, but the compressor, when a head cannot be a group's base,
//! walks up the *new* edges from it. So the survey carries, per room, the
//! groups of the new structure that the levels' heads reach (a
//! [`crate::carry::Carry`], as a real run keeps them for the next chunk)
//! and loads the next chunk with them. Unlike a run, it keeps every room's
//! carry, whatever their size: without it, its figures would be wrong.
//! `tests/survey.rs` checks the figures against real runs.
//!
//! It writes nothing: the session is read-only (`default_transaction_read_only`),
//! it needs only SELECT, creates no table and takes no lock at all (no run
//! lock, no room locks: those only keep writers apart, and a survey running
//! beside a real run reports the database as it read it).
//!
//! Per room it counts the groups of the room's chunks (in range, not the
//! level heads and predecessors loaded with later chunks) and their rows
//! now and after. The time estimate is the survey's own time (a run does
//! all it does) plus what a run does beyond it: per chunk a lock and its
//! transactions ([`WRITE_SECONDS_PER_CHUNK`]), and the rows it would
//! delete and insert, at [`WRITE_ROWS_PER_SECOND`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use log::{info, warn};
use postgres::Client;
use synapse_compress_state::core::group::changed_groups;
use synapse_compress_state::core::verify::verify;
use synapse_compress_state::db::lock_wait::{stop_requested, wait_for_state_tables};
use synapse_compress_state::db::{self, schema, Prepared};
use synapse_compress_state::tool::interrupt::{self, Signal};
use synapse_compress_state::{compress, Error, GroupMap, Level, Result};

use crate::carry::{Carry, CarryRef};
use crate::chunk::{take_loaded, would_grow, Loaded};
use crate::config::AutoConfig;
use crate::pass::{self, assemble::LeftPass, given::Given};
use crate::prefetch::{load_chunk, ChunkRequest};
use crate::room_ids::RoomIds;
use crate::state_saving::{self, LeftRooms};

/// Rows deleted or inserted per second by a real run's writes, measured on
/// this tool's runs over generated databases (see the "Dry run" section of
/// docs/automatic.md): the write phase of those runs divided by the rows the chunks
/// deleted and inserted. Real servers vary by a factor of a few either way.
pub const WRITE_ROWS_PER_SECOND: f64 = 300_000.0;

/// Seconds a real run spends per chunk on what a survey does not do, apart
/// from the rows: the room's lock, and the transactions that save its
/// progress (a skipped chunk's too). Measured on this tool's runs over
/// generated databases (see the README's "Dry run" section); a server that
/// syncs each commit to a slow disk takes longer.
pub const WRITE_SECONDS_PER_CHUNK: f64 = 0.002;

/// How good the estimate proved, said with it: release builds over a
/// generated database of 8,000 groups (`-c` 100, 500 and 2000, three runs
/// each: real runs took 1.02 to 1.36 times the estimate) and over the
/// benchmark's `3m` database (0.7 times).
const ESTIMATE_QUALITY: &str = "Measured on generated databases, real runs took 0.7 to 1.4 times \
     this estimate: more on small databases, where each write's fixed costs count, less on big ones, \
     where a run loads its next chunks while it writes. This is an estimate; nothing was written.";

/// What the run would do to one room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomSurvey {
    pub room_id: String,
    /// Chunks of the room the run would do (skipped ones included).
    pub chunks: usize,
    /// Of those, chunks skipped because they would grow.
    pub chunks_skipped: usize,
    /// Groups in those chunks.
    pub groups: usize,
    /// Rows of those groups now, and after the run.
    pub rows_now: usize,
    pub rows_after: usize,
    /// Rows the run would delete and insert (old and new rows of the groups
    /// it rewrites).
    pub rows_written: usize,
    /// The run would reach the room's end.
    pub finished: bool,
    /// The room's data is damaged: a run leaves it alone.
    pub damaged: bool,
}

impl RoomSurvey {
    pub fn rows_saved(&self) -> i64 {
        self.rows_now as i64 - self.rows_after as i64
    }

    fn percent_saved(&self) -> f64 {
        percent(self.rows_saved(), self.rows_now)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "room_id": self.room_id,
            "chunks": self.chunks,
            "chunks_skipped": self.chunks_skipped,
            "groups": self.groups,
            "rows_now": self.rows_now,
            "rows_after": self.rows_after,
            "rows_saved": self.rows_saved(),
            "percent_saved": self.percent_saved(),
            "finished": self.finished,
            "damaged": self.damaged,
        })
    }
}

fn percent(part: i64, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The survey of a run: its rooms, ordered by rows saved (most first).
#[derive(Clone, Debug, Default)]
pub struct Survey {
    pub rooms: Vec<RoomSurvey>,
    pub chunks: usize,
    /// The run would stop for want of groups (not at `-n`).
    pub finished_all: bool,
    /// Ctrl-C or SIGTERM stopped the survey early: it covers the chunks
    /// before that only.
    pub interrupted: Option<Signal>,
    pub load: Duration,
    pub compress: Duration,
    pub verify: Duration,
    /// The survey itself, start to end.
    pub elapsed: Duration,
}

impl Survey {
    fn total(&self) -> RoomSurvey {
        let mut total = RoomSurvey::default();
        for room in &self.rooms {
            total.chunks += room.chunks;
            total.chunks_skipped += room.chunks_skipped;
            total.groups += room.groups;
            total.rows_now += room.rows_now;
            total.rows_after += room.rows_after;
            total.rows_written += room.rows_written;
        }
        total
    }

    /// The estimated time of what a real run does beyond the survey: per
    /// chunk, its room's lock and the transactions that save its progress
    /// (with its rows), and the rows deleted and inserted, at the measured
    /// rates.
    pub fn write_estimate(&self) -> Duration {
        let total = self.total();
        Duration::from_secs_f64(
            total.chunks as f64 * WRITE_SECONDS_PER_CHUNK
                + total.rows_written as f64 / WRITE_ROWS_PER_SECOND,
        )
    }

    /// The estimated time of the real run: the survey's whole time (a run
    /// does all it did: finding rooms, loading, compressing, verifying),
    /// plus the write estimate. A run loads ahead while it writes, so on
    /// databases where loading dominates it is faster than this.
    pub fn time_estimate(&self) -> Duration {
        self.elapsed + self.write_estimate()
    }

    /// The `--json` form: `{"dry_run": true, "rooms": [...], "total": {...}}`,
    /// rooms in the table's order, the totals and time estimate around them.
    pub fn to_json(&self) -> serde_json::Value {
        let total = self.total();
        serde_json::json!({
            "dry_run": true,
            "rooms": self.rooms.iter().map(RoomSurvey::to_json).collect::<Vec<_>>(),
            "total": {
                "rooms": self.rooms.len(),
                "chunks": total.chunks,
                "chunks_skipped": total.chunks_skipped,
                "groups": total.groups,
                "rows_now": total.rows_now,
                "rows_after": total.rows_after,
                "rows_saved": total.rows_saved(),
                "percent_saved": total.percent_saved(),
                "rows_written": total.rows_written,
                "finished_all": self.finished_all,
                "interrupted": self.interrupted.is_some(),
                "seconds": {
                    "load": self.load.as_secs_f64(),
                    "compress": self.compress.as_secs_f64(),
                    "verify": self.verify.as_secs_f64(),
                    "write_estimate": self.write_estimate().as_secs_f64(),
                    "run_estimate": self.time_estimate().as_secs_f64(),
                    "survey": self.elapsed.as_secs_f64(),
                },
            },
        })
    }

    /// The human table: one line per room, the total, the time estimate.
    pub fn to_table(&self) -> String {
        let total = self.total();
        let width = self
            .rooms
            .iter()
            .map(|r| r.room_id.chars().count())
            .chain(["room id".len(), "total".len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let mut line = |room: &str, groups: &str, now: &str, after: &str, saved: &str| {
            let _ = writeln!(
                out,
                "{room:<width$}  {groups:>9}  {now:>12}  {after:>12}  {saved:>7}"
            );
        };
        line("room id", "groups", "rows now", "rows after", "saved");
        for room in &self.rooms {
            let id = if room.damaged {
                format!("{} (damaged, left alone)", room.room_id)
            } else {
                room.room_id.clone()
            };
            line(
                &id,
                &room.groups.to_string(),
                &room.rows_now.to_string(),
                &room.rows_after.to_string(),
                &format!("{:.1}%", room.percent_saved()),
            );
        }
        line(
            "total",
            &total.groups.to_string(),
            &total.rows_now.to_string(),
            &total.rows_after.to_string(),
            &format!("{:.1}%", total.percent_saved()),
        );
        let _ = writeln!(
            out,
            "{} rooms, {} chunks ({} would be skipped), {} rows saved; {}",
            self.rooms.len(),
            total.chunks,
            total.chunks_skipped,
            total.rows_saved(),
            if let Some(signal) = self.interrupted {
                format!(
                    "stopped by {signal}: these figures cover only the chunks surveyed before it"
                )
            } else if self.finished_all {
                "the run would compress everything left".to_string()
            } else {
                "the run would stop at its chunk count, with more left".to_string()
            }
        );
        let _ = writeln!(
            out,
            "Estimated time of the real run: {:.1}s: this survey's {:.1}s (load {:.1}s, compress {:.1}s, \
             verify {:.1}s), which a run repeats, plus writing estimated at {:.1}s ({} chunks at {:.0} ms, \
             {} rows deleted or inserted at {} rows/s). {ESTIMATE_QUALITY}",
            self.time_estimate().as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.load.as_secs_f64(),
            self.compress.as_secs_f64(),
            self.verify.as_secs_f64(),
            self.write_estimate().as_secs_f64(),
            total.chunks,
            WRITE_SECONDS_PER_CHUNK * 1000.0,
            total.rows_written,
            WRITE_ROWS_PER_SECOND as u64,
        );
        out
    }
}

/// A room's progress as the run would have saved it by now.
#[derive(Clone, Debug)]
struct Position {
    last: i64,
    levels: Vec<Level>,
    /// The new structure the next chunk's compression may walk.
    carried: Option<CarryRef>,
}

/// Surveys what a real run with `config` would do, writing nothing.
pub fn run(config: &AutoConfig) -> Result<Survey> {
    let started = Instant::now();
    crate::config::warn_about_settings(config);
    let mut client = db::connect_as(&config.db_url, "synapse_auto_compressor")?;
    read_only(&mut client)?;
    schema::require_state_tables(&mut client)?;
    let exists = schema::tables_exist(&mut client, &state_saving::PROGRESS_TABLES)?;
    let reads: Vec<schema::Need> = state_saving::PROGRESS_TABLES
        .iter()
        .map(|&table| schema::Need::new("SELECT", table, "needed to read saved progress"))
        .collect();
    schema::require_privileges(&mut client, schema::Access::Read, &reads, &[])?;
    // Nothing has begun while the tables are held: a signal during this
    // wait ends the process at once (Python callers have no signals).
    wait_for_state_tables(&mut client, schema::Access::Read)?;
    interrupt::begin_work();
    // Saved positions and levels are read when both their tables exist (a
    // real run creates missing ones empty, so their rooms start afresh).
    let scan = state_saving::read_scan_position(&mut client, exists[2])?;
    let mut surveying = Surveying {
        config,
        saved: exists[0] && exists[1],
        scan,
        prepared: Prepared::new(),
        survey: Survey::default(),
        rooms: HashMap::new(),
        positions: HashMap::new(),
        room_ids: RoomIds::default(),
        left: LeftRooms::default(),
    };
    // The reader a real run would choose (`--reader`), on a connection of
    // its own, read-only too.
    let left = state_saving::groups_left_from(&mut client, scan)?;
    if let Some(reader) = pass::connect(&mut client, config, left, READ_ONLY)? {
        surveying.with_pass(&mut client, reader)?;
    }
    if surveying.survey.interrupted.is_none() {
        surveying.room_by_room(&mut client)?;
    }
    let Surveying {
        mut survey, rooms, ..
    } = surveying;
    let mut list: Vec<RoomSurvey> = rooms.into_values().collect();
    list.sort_by(|a, b| {
        b.rows_saved()
            .cmp(&a.rows_saved())
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    survey.rooms = list;
    survey.elapsed = started.elapsed();
    info!(
        "Dry run: {} chunks over {} rooms surveyed in {:.1}s; nothing was written",
        survey.chunks,
        survey.rooms.len(),
        survey.elapsed.as_secs_f64()
    );
    Ok(survey)
}

/// Anything that tried to write would fail, whatever the role may do.
const READ_ONLY: &str = "SET default_transaction_read_only = on";

fn read_only(client: &mut Client) -> Result<()> {
    client
        .batch_execute(READ_ONLY)
        .map_err(|e| Error::db("making the session read-only", e))
}

/// The survey under way: the run's progress as it would have saved it,
/// kept in memory, and the figures so far.
struct Surveying<'c> {
    config: &'c AutoConfig,
    /// The progress tables exist: rooms not surveyed yet start where saved.
    saved: bool,
    /// Where the next room is looked for.
    scan: i64,
    prepared: Prepared,
    survey: Survey,
    rooms: HashMap<String, RoomSurvey>,
    positions: HashMap<String, Position>,
    room_ids: RoomIds,
    left: LeftRooms,
}

impl Surveying<'_> {
    /// Whether a signal asks the survey to stop (it then covers the chunks
    /// before only).
    fn stopped(&mut self, client: &mut Client) -> Result<bool> {
        let Some(signal) = stop_requested(client, schema::Access::Read)? else {
            return Ok(false);
        };
        warn!("{signal} received: the survey stops here and covers only the chunks before");
        self.survey.interrupted = Some(signal);
        Ok(true)
    }

    /// The chunk loop's order: the room of the lowest group not compressed
    /// yet, its next chunk, and again, until `-n` chunks are surveyed or
    /// none is left.
    fn room_by_room(&mut self, client: &mut Client) -> Result<()> {
        while (self.survey.chunks as i64) < self.config.number_of_chunks.get() {
            if self.stopped(client)? {
                break;
            }
            let positions = &self.positions;
            let known = |room: &str| positions.get(room).map(|p| p.last);
            let Some(next) = state_saving::peek_next_room(
                client,
                &mut self.prepared,
                self.scan,
                &known,
                &self.left,
                self.saved,
            )?
            else {
                self.survey.finished_all = true;
                break;
            };
            // Where the scan got to: the rooms it leaves are left out of the
            // query, so it need not start back at them (as the run's scan,
            // see `LeftRooms`).
            self.scan = next.group;
            self.chunk(client, next.room_id, next.group, None)?;
        }
        Ok(())
    }

    /// The planned chunks as the pass reads them, each surveyed as it
    /// completes (a room's chunks in their own order; the order between
    /// rooms changes nothing, as every room's progress is kept here).
    /// What the pass leaves (rooms over its memory budget, damaged or not
    /// where the plan has them, chunks after a failed pass connection) is
    /// left to [`Self::room_by_room`], from the lowest chunk not surveyed.
    fn with_pass(&mut self, client: &mut Client, reader: Client) -> Result<()> {
        let Some(plan) = pass::plan(
            client,
            self.config,
            self.scan,
            self.left.rooms(),
            self.saved,
        )?
        else {
            return Ok(());
        };
        let left_pass = LeftPass::new(plan.rooms.len());
        let mut done = vec![false; plan.chunks.len()];
        let mut waited = Instant::now();
        pass::read_chunks(reader, &plan, &left_pass, self.config, |rank, given| {
            self.survey.load += waited.elapsed();
            if self.stopped(client)? {
                return Ok(false);
            }
            let planned = &plan.chunks[rank as usize];
            let room = plan.room_of(rank);
            self.chunk(client, room.to_owned(), planned.first, Some(given))?;
            done[rank as usize] = true;
            // Gone, damaged, or moved on: the room's later chunks are not
            // the planned ones.
            if self.positions.get(room).map(|p| p.last) != Some(planned.last) {
                left_pass.leave(planned.room);
            }
            waited = Instant::now();
            Ok(true)
        })?;
        // Every group below the lowest chunk not surveyed is surveyed or
        // in a room left alone; every chunk after the plan starts after
        // the plan's last one.
        let rest = done.iter().position(|&d| !d).unwrap_or(done.len() - 1);
        self.scan = plan.chunks[rest].first;
        Ok(())
    }

    /// Surveys `room`'s next chunk (whose first group, found by the scan or
    /// planned, is `first`), as the pass read it if `given`.
    fn chunk(
        &mut self,
        client: &mut Client,
        room: String,
        first: i64,
        given: Option<Given>,
    ) -> Result<()> {
        let config = self.config;
        let (after, levels, carried) = match self.positions.remove(&room) {
            Some(p) => (Some(p.last), p.levels, p.carried),
            None if self.saved => {
                let progress = state_saving::read_room_progress(
                    client,
                    &mut self.prepared,
                    &room,
                    &config.default_levels,
                )?;
                if let Some(reason) = &progress.reset_reason {
                    warn!("Room {room}: {reason}");
                }
                (progress.last_compressed, progress.levels, None)
            }
            None => (None, config.default_levels.empty_levels(), None),
        };
        let figures = self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| RoomSurvey {
                room_id: room.clone(),
                ..RoomSurvey::default()
            });
        let start = Start {
            after,
            levels,
            carried,
        };
        let survey = &mut self.survey;
        match survey_chunk(client, config, &room, start, given, &self.room_ids, survey)? {
            Surveyed::Gone => {
                // The run saves fresh levels at the old position.
                figures.finished = true;
                if let Some(last) = after {
                    self.positions.insert(
                        room,
                        Position {
                            last,
                            levels: config.default_levels.empty_levels(),
                            carried: None,
                        },
                    );
                }
                figures.chunks += 1;
                survey.chunks += 1;
            }
            Surveyed::Damaged(why) => {
                warn!("Room {room} is damaged ({why}); a run would leave it alone");
                figures.damaged = true;
                self.left.leave(room, first);
            }
            Surveyed::Done(done) => {
                figures.chunks += 1;
                figures.chunks_skipped += usize::from(done.skipped);
                figures.groups += done.groups;
                figures.rows_now += done.rows_now;
                figures.rows_after += done.rows_after;
                figures.rows_written += done.rows_written;
                figures.finished = !done.more;
                survey.chunks += 1;
                self.positions.insert(room, done.next);
            }
        }
        Ok(())
    }
}

/// One chunk as the survey sees it.
enum Surveyed {
    /// The room has no groups after its position any more.
    Gone,
    /// The room's data is damaged (why).
    Damaged(String),
    Done(ChunkFigures),
}

/// What a run would do with one chunk.
struct ChunkFigures {
    groups: usize,
    rows_now: usize,
    rows_after: usize,
    rows_written: usize,
    /// The chunk would grow: a run skips it.
    skipped: bool,
    /// Rows after of the chunk's first group.
    first_rows_after: usize,
    /// The room goes on after the chunk.
    more: bool,
    /// The room's progress after the chunk.
    next: Position,
}

/// Where a room's next chunk starts: after `after`, with `levels` and the
/// new structure `carried` from the room's chunk before.
struct Start {
    after: Option<i64>,
    levels: Vec<Level>,
    carried: Option<CarryRef>,
}

/// Loads (or takes as the pass read it, when `given` is that chunk),
/// compresses and verifies `room`'s chunk from `start` as a run would,
/// adding the time each phase took to `times`.
fn survey_chunk(
    client: &mut Client,
    config: &AutoConfig,
    room: &str,
    start: Start,
    given: Option<Given>,
    room_ids: &RoomIds,
    times: &mut Survey,
) -> Result<Surveyed> {
    let Start {
        after,
        levels,
        carried,
    } = start;
    let request = ChunkRequest {
        room_id: room.to_owned(),
        after,
        heads: Level::heads(&levels),
        chunk_size: config.chunk_size.get(),
        carried,
    };
    let loading = Instant::now();
    let given = match given {
        Some(given) => given.into_loaded(client, &request, None)?,
        None => None,
    };
    let loaded = match given {
        Some(loaded) => loaded,
        None => load_chunk(client, &request, room_ids, &mut |_| {})?,
    };
    let loaded = take_loaded(loaded, &request)?;
    times.load += loading.elapsed();
    let chunk = match loaded {
        Loaded::Chunk(chunk) => chunk,
        Loaded::Gone => return Ok(Surveyed::Gone),
        Loaded::Damaged { why, .. } => return Ok(Surveyed::Damaged(why)),
    };
    let compressing = Instant::now();
    let compressed = match compress(&chunk.original, levels) {
        Ok(compressed) => compressed,
        Err(Error::Damaged(why)) => return Ok(Surveyed::Damaged(why)),
        Err(e) => return Err(e),
    };
    times.compress += compressing.elapsed();
    let rows_now = in_range_rows(&chunk.original, None);
    let mut figures = ChunkFigures {
        groups: chunk.report.in_range,
        rows_now,
        rows_after: rows_now,
        rows_written: 0,
        skipped: true,
        first_rows_after: 0,
        more: chunk.more,
        next: Position {
            last: chunk.last,
            levels: config.default_levels.empty_levels(),
            carried: None,
        },
    };
    if would_grow(&chunk.original, &compressed) {
        return Ok(Surveyed::Done(figures));
    }
    let verifying = Instant::now();
    verify(&chunk.original, &compressed.changes)?;
    times.verify += verifying.elapsed();
    figures.skipped = false;
    figures.rows_after = in_range_rows(&chunk.original, Some(&compressed.changes));
    figures.first_rows_after = chunk
        .original
        .iter()
        .find(|(_, entry)| entry.in_range)
        .map_or(0, |(id, entry)| {
            compressed
                .changes
                .get(id)
                .map_or(entry.rows(), |new| new.delta.len())
        });
    figures.rows_written = changed_groups(&chunk.original, &compressed.changes)
        .iter()
        .map(|id| chunk.original[id].rows() + compressed.changes[id].delta.len())
        .sum();
    figures.next.carried = Some(CarryRef::new(Carry::after_chunk(
        &chunk.original,
        &compressed.changes,
        &chunk.symbols,
        &compressed.levels,
        chunk.last,
    )?));
    figures.next.levels = compressed.levels;
    Ok(Surveyed::Done(figures))
}

/// A trial of a room's next chunk, for `--largest-rooms`' estimate.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    pub groups: usize,
    pub rows_now: usize,
    pub rows_after: usize,
    /// Rows after of the chunk's first group when it starts the room's new
    /// tree (fresh levels: a snapshot, which the rest of the room does not
    /// repeat); 0 otherwise.
    pub start_rows: usize,
}

/// A trial of `room`'s next chunk, as a run would do it, or `None` when
/// the room has no chunk to compress (or is damaged). Reads only; no lock.
pub fn trial_chunk(
    client: &mut Client,
    config: &AutoConfig,
    room: &str,
    after: Option<i64>,
    levels: Vec<Level>,
) -> Result<Option<Trial>> {
    let mut times = Survey::default();
    let fresh = levels.iter().all(|l| l.head().is_none());
    let start = Start {
        after,
        levels,
        carried: None,
    };
    let room_ids = RoomIds::default();
    let surveyed = survey_chunk(client, config, room, start, None, &room_ids, &mut times)?;
    Ok(match surveyed {
        Surveyed::Done(done) => Some(Trial {
            groups: done.groups,
            rows_now: done.rows_now,
            rows_after: done.rows_after,
            start_rows: if fresh && !done.skipped {
                done.first_rows_after
            } else {
                0
            },
        }),
        Surveyed::Gone | Surveyed::Damaged(_) => None,
    })
}

/// Rows of the chunk's own groups (not the heads and predecessors loaded
/// with it): as they are, or with `changes` in place.
fn in_range_rows(original: &GroupMap, changes: Option<&GroupMap>) -> usize {
    original
        .iter()
        .filter(|(_, entry)| entry.in_range)
        .map(|(id, entry)| {
            changes
                .and_then(|c| c.get(id))
                .map_or(entry.rows(), |new| new.delta.len())
        })
        .sum()
}
