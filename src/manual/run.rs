//! One manual run, in phases: connect (and lock the room when writing),
//! load the room's range, compress, decide whether writing is worth it,
//! verify, then write the SQL file and/or apply the changes. Loading,
//! compressing and verifying run window by window ([`window`]), or on the
//! whole range at once (with `-g`, or the test knob).
//!
//! Ctrl-C or SIGTERM (`tool::interrupt`) is looked at between phases and
//! between write batches, each batch being a committed transaction of its
//! own that leaves every group's state as it was. The SQL file is written
//! whole or not at all ([`AtomicFile`]): a run that fails or is stopped
//! before it is complete leaves an earlier file of that name as it was;
//! once started, the file is finished first, as it is local and quick.
//!
//! With `-c` it also counts the room's rows before and after, measures the
//! table and VACUUMs it when asked.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::{info, warn};

use postgres::Client;

use crate::core::chains::longest_chains;
use crate::core::compressor::compress;
use crate::core::group::{changed_groups, GroupMap, LoadedGroups};
use crate::core::state_map::Symbols;
use crate::core::verify::verify;
use crate::db::load::{self, LoadReport};
use crate::db::write::WriteReport;
use crate::db::{self, schema, stats, RoomLock};
use crate::error::{Error, Result};
use crate::manual::config::ManualConfig;
use crate::manual::summary::{Outcome, Summary};
use crate::manual::window::{self, Windowed};
use crate::output::atomic::AtomicFile;
use crate::output::{graph, sql};
use crate::tool::args::{NonNegative, Positive};
use crate::tool::interrupt;
use crate::tool::progress;
use crate::tool::timings::Timings;

/// Runs the manual tool with `config` and returns its figures.
///
/// The room is read in windows of groups (see [`window`]) unless graphs
/// are asked for (they draw every group) or the test knob
/// [`window::WINDOW_ENV`] is `0`: then it is read whole.
pub fn run(config: &ManualConfig) -> Result<Summary> {
    let run_started = Instant::now();
    let room = config.room_id.as_str();
    // Up to the writes, a damaged structure is reported with the room's
    // name: nothing of it has been touched.
    let damaged = |e: Error| e.in_room(room);

    if let Some(warning) = config.level_sizes.long_chain_warning() {
        warn!("{warning}");
    }
    if !config.verify && (config.commit_changes || config.output_file.is_some()) {
        warn!("Verification is off (-N): the changes are written without checking that every group keeps its state");
    }
    // Check the output file first: an unwritable path fails before any
    // work (nothing is created or changed until the SQL is complete, so a
    // server that cannot be reached leaves an earlier file alone).
    let sql_out = config
        .output_file
        .as_deref()
        .map(SqlOut::open)
        .transpose()?;
    let (client, room_lock) = connect(config)?;
    let mut held = Held {
        client,
        room_lock,
        sql_out,
        run_started,
    };

    let window_size = window::window_size();
    if window_size > 0 && !config.graphs {
        let windowed =
            window::compress_room(&mut held.client, config, window_size).map_err(damaged)?;
        if let Windowed::Done(done) = windowed {
            let table_rows_before = held.room_rows_before(config, done.room_rows)?;
            let mut summary = Summary::of_room(room, done.figures, done.stats, done.timings);
            (summary.longest_chain_before, summary.longest_chain_after) = done.longest_chains;
            if ends_before_writing(config, &mut held, &mut summary, table_rows_before)? {
                return Ok(summary);
            }
            if let Some(verified) = done.verified {
                info!("Checked that state maps match, window by window");
                summary.verified = Some(verified.map_err(damaged)?);
            }
            let changed: Vec<i64> = done.changes.keys().copied().collect();
            let new = NewStructure {
                symbols: &done.symbols,
                original: &done.kept,
                new: &done.changes,
                changed: &changed,
            };
            write(config, new, &mut summary, held)?;
            return Ok(summary);
        }
    }

    let table_rows_before = held.room_rows_before(config, None)?;
    let mut timings = Timings::default();
    let started = Instant::now();
    let loaded = load_room(&mut held.client, config).map_err(damaged)?;
    timings.load = started.elapsed();
    info!(
        "Loaded {} groups ({} to compress, up to group {}) in {:.2}s",
        loaded.original.len(),
        loaded.report.in_range,
        loaded.last_group,
        timings.load.as_secs_f64()
    );
    let mut summary = Summary::loaded(room, &loaded, timings);
    if held.stop_if_asked(&mut summary)? {
        return Ok(summary);
    }

    let started = Instant::now();
    let compressed =
        compress(&loaded.original, config.level_sizes.empty_levels()).map_err(damaged)?;
    timings.compress = started.elapsed();
    let mut summary = Summary::new(room, &loaded, &compressed, timings);
    let original = &loaded.original;
    let chains = longest_chains(
        original,
        Some(&compressed.changes),
        &Default::default(),
        &Default::default(),
    );
    (summary.longest_chain_before, summary.longest_chain_after) = (chains.before, chains.after);
    if ends_before_writing(config, &mut held, &mut summary, table_rows_before)? {
        return Ok(summary);
    }

    if config.verify {
        let started = Instant::now();
        info!("Checking that state maps match...");
        summary.verified = Some(verify(original, &compressed.changes).map_err(damaged)?);
        summary.timings.verify = started.elapsed();
    }
    if config.graphs {
        let written = graph::write_graphs(Path::new("."), original, &compressed.view(original))?;
        info!("Wrote graph files: {written:?}");
    }
    if held.stop_if_asked(&mut summary)? {
        return Ok(summary);
    }

    let changed = changed_groups(original, &compressed.changes);
    let new = NewStructure {
        symbols: &loaded.symbols,
        original,
        new: &compressed.changes,
        changed: &changed,
    };
    write(config, new, &mut summary, held)?;
    Ok(summary)
}

/// What the writers need of a compressed room.
#[derive(Clone, Copy)]
struct NewStructure<'a> {
    symbols: &'a Symbols,
    /// The original entries of (at least) the changed groups and of the
    /// groups loaded without a `state_groups` row.
    original: &'a (dyn LoadedGroups + Sync),
    /// The new entries of (at least) the changed groups.
    new: &'a GroupMap,
    /// The groups that change, ascending.
    changed: &'a [i64],
}

/// Records what kind of run this is and the room's counted rows, then
/// whether it ends before writing (true): when writing is not worth it
/// (saying why in the SQL file, if any), or a signal asked it to stop.
fn ends_before_writing(
    config: &ManualConfig,
    held: &mut Held,
    summary: &mut Summary,
    table_rows_before: Option<u64>,
) -> Result<bool> {
    summary.dry_run = !config.commit_changes && config.output_file.is_none();
    summary.to_sql_file = config.output_file.is_some();
    summary.to_database = config.commit_changes;
    summary.verify_skipped = !config.verify;
    summary.table_rows_before = table_rows_before;
    summary.table_rows_after = table_rows_before;
    if let Some(why) = reason_to_write_nothing(config, summary) {
        // Nothing is written: the chains stay as they are.
        summary.longest_chain_after = summary.longest_chain_before;
        if let Some(out) = held.sql_out.take() {
            out.nothing(&config.room_id, &why)?;
            summary.sql_file_written = true;
        }
        finish_database(
            &mut held.client,
            config,
            summary,
            WriteReport::default(),
            &[],
        )?;
        summary.timings.total = held.run_started.elapsed();
        return Ok(true);
    }
    held.stop_if_asked(summary)
}

/// Writes the SQL file and/or applies the changes, as asked, and finishes
/// the run's figures.
fn write(
    config: &ManualConfig,
    new: NewStructure<'_>,
    summary: &mut Summary,
    mut held: Held,
) -> Result<()> {
    let started = Instant::now();
    if let Some(out) = held.sql_out.take() {
        out.write(config, new)?;
        summary.sql_file_written = true;
    }
    summary.groups_to_write = new.changed.len();
    summary.writing = true;
    if held.room_lock.is_none() {
        summary.timings.write = started.elapsed();
        summary.groups_written = new.changed.len();
        summary.timings.total = held.run_started.elapsed();
        return Ok(());
    }
    // Another session may have taken the tables during the load (VACUUM
    // FULL): wait visibly; a signal meanwhile stops the run just below.
    db::lock_wait::wait_for_state_tables(&mut held.client, schema::Access::Write)?;
    if held.stop_if_asked(summary)? {
        return Ok(());
    }
    let (report, written) = commit(&mut held.client, config, new)?;
    summary.timings.write = started.elapsed();
    // Exact: a group Synapse changed meanwhile keeps its rows, and so do
    // the groups of batches a stop left undone.
    let saved = report.rows_deleted as i64 - report.rows_inserted as i64;
    summary.rows_after_planned = Some(summary.rows_after);
    summary.rows_after = (summary.rows_before as i64 - saved) as usize;
    summary.groups_written = report.written;
    summary.groups_skipped_live = report.skipped;
    // Stopped between two batches: the groups of later batches are as
    // they were.
    if report.written + report.skipped < new.changed.len() {
        held.stop_if_asked(summary)?;
    }
    held.release()?;
    finish_database(&mut held.client, config, summary, report, &written)?;
    summary.timings.total = held.run_started.elapsed();
    Ok(())
}

/// What a run holds until it ends: its connection, the room's lock (when
/// it writes) and the SQL output (until written).
struct Held {
    client: Client,
    room_lock: Option<RoomLock>,
    sql_out: Option<SqlOut>,
    run_started: Instant,
}

impl Held {
    /// At a safe point: if a signal asked the run to stop, releases the
    /// room, removes the SQL file not written yet (it would read as a file
    /// with nothing to apply) and marks `summary` as stopped.
    fn stop_if_asked(&mut self, summary: &mut Summary) -> Result<bool> {
        let Some(signal) = interrupt::requested() else {
            return Ok(false);
        };
        self.release()?;
        if let Some(out) = self.sql_out.take() {
            out.discard();
        }
        summary.interrupted = Some(signal);
        summary.timings.total = self.run_started.elapsed();
        Ok(true)
    }

    /// With `-c`, the room's rows before the run: `counted` when the load
    /// counted them (a windowed read of the whole room), else counted here.
    /// Either way under the room's lock: no other compressor changes them.
    fn room_rows_before(
        &mut self,
        config: &ManualConfig,
        counted: Option<u64>,
    ) -> Result<Option<u64>> {
        if self.room_lock.is_none() {
            return Ok(None);
        }
        match counted {
            Some(rows) => Ok(Some(rows)),
            None => stats::room_rows(&mut self.client, &config.room_id).map(Some),
        }
    }

    /// Releases the room's lock, if held.
    fn release(&mut self) -> Result<()> {
        match self.room_lock.take() {
            Some(lock) => lock.release(&mut self.client),
            None => Ok(()),
        }
    }
}

/// With `-c`: the room's rows after the run (the `written` groups with
/// their new edge and rows, see [`stats::room_rows_after_rewrite`]), the
/// table's size and the space the deleted rows left, and the VACUUM of
/// `--vacuum`.
fn finish_database(
    client: &mut Client,
    config: &ManualConfig,
    summary: &mut Summary,
    report: WriteReport,
    written: &[stats::Written],
) -> Result<()> {
    if !config.commit_changes {
        return Ok(());
    }
    summary.rows_deleted = report.rows_deleted;
    let rows_after = stats::room_rows_after_rewrite(client, &config.room_id, written)?;
    summary.table_rows_after = Some(rows_after);
    summary.disk = stats::after_run(client, report.rows_deleted, config.vacuum)?;
    Ok(())
}

/// Connects and checks what the run needs: Synapse's tables, the
/// privileges of this mode and, for a run that writes, the room to itself
/// (its lock is kept from before the load until the last write commits).
fn connect(config: &ManualConfig) -> Result<(Client, Option<RoomLock>)> {
    let mut client = db::connect(&config.db_url)?;
    schema::require_state_tables(&mut client)?;
    let access = if config.commit_changes {
        schema::Access::Write
    } else {
        schema::Access::Read
    };
    schema::require_privileges(&mut client, access, &[], &[])?;
    if config.vacuum && config.commit_changes {
        stats::require_vacuum_right(&mut client)?;
    }
    // Nothing has begun while the tables are held: a signal during this
    // wait ends the process at once (Python callers have no signals).
    db::lock_wait::wait_for_state_tables(&mut client, schema::Access::Read)?;
    interrupt::begin_work();
    let room_lock = if config.commit_changes {
        Some(RoomLock::try_acquire(&mut client, &config.room_id)?)
    } else {
        None
    };
    Ok((client, room_lock))
}

/// A room's range as loaded: its groups and everything they need.
pub struct LoadedRoom {
    pub original: GroupMap,
    pub symbols: Symbols,
    pub report: LoadReport,
    /// The last group of the range.
    pub last_group: i64,
}

/// The ids of the range `config` asks for, ascending, and the last one;
/// an error naming the room when there are none.
pub(crate) fn range_ids(
    snapshot: &mut postgres::Transaction<'_>,
    config: &ManualConfig,
) -> Result<(Vec<i64>, i64)> {
    let room = config.room_id.as_str();
    let ids = load::range_ids(
        snapshot,
        room,
        config.min_state_group.map(NonNegative::get),
        config.max_state_group.map(NonNegative::get),
        config.groups_to_compress.map(Positive::get),
    )?;
    match ids.last() {
        Some(&last) => Ok((ids, last)),
        None if load::room_has_groups(snapshot, room)? => Err(Error::EmptyRange(room.to_owned())),
        None => Err(Error::UnknownRoom(room.to_owned())),
    }
}

/// Loads the range of groups `config` asks for, in one consistent read.
fn load_room(client: &mut Client, config: &ManualConfig) -> Result<LoadedRoom> {
    let room = config.room_id.as_str();
    info!("Fetching state from DB for room '{room}'...");
    let mut snapshot = load::snapshot(client)?;
    let (ids, last_group) = range_ids(&mut snapshot, config)?;
    let rows_bar = progress::counter("Rows read");
    let mut symbols = Symbols::new();
    let loaded = load::load_groups(&mut snapshot, &mut symbols, room, &ids, &[], &mut |n| {
        rows_bar.inc(n)
    });
    rows_bar.finish_and_clear();
    let (mut original, mut report) = loaded?;
    // As the reference does when the range has a lower bound (-b).
    load::include_groups_without_row(
        &mut original,
        &mut report,
        config.min_state_group.map(NonNegative::get),
        last_group,
    );
    snapshot
        .commit()
        .map_err(|e| Error::db("finishing the read", e))?;
    if !report.missing_predecessors.is_empty() {
        warn!(
            "{} predecessor group(s) have no state_groups row (purged?); reading them as Synapse does: {:?}",
            report.missing_predecessors.len(),
            &report.missing_predecessors[..report.missing_predecessors.len().min(10)]
        );
    }
    crate::db::load::log_repeated_rows(report.repeated_rows_read);
    Ok(LoadedRoom {
        original,
        symbols,
        report,
        last_group,
    })
}

/// Why the run writes nothing (and the outcome it records), if it does not:
/// the tree would need more rows, or fewer than `-m` would be saved.
fn reason_to_write_nothing(config: &ManualConfig, summary: &mut Summary) -> Option<String> {
    let (before, after) = (summary.rows_before, summary.rows_after);
    if after > before {
        summary.outcome = Outcome::WouldGrow;
        return Some(format!(
            "compressing would need more rows ({before} -> {after})"
        ));
    }
    let minimum = config.min_saved_rows?.get();
    let saved = before as i64 - after as i64;
    if saved >= minimum {
        return None;
    }
    summary.outcome = Outcome::TooFewSaved { saved, minimum };
    Some(format!(
        "only {saved} rows would be saved, fewer than the minimum of {minimum} (-m)"
    ))
}

/// Applies the changes to the database, batch after batch until done or
/// asked to stop: what was written, and how many groups were left alone
/// because they changed since they were loaded; and each group rewritten,
/// with the edge and the number of rows written.
///
/// With more than one batch, the batches are written on two connections
/// ([`db::write::Rewrite::write_pipelined`]): the server works on the next
/// batch while the current one finishes, and they still commit in order.
fn commit(
    client: &mut Client,
    config: &ManualConfig,
    new: NewStructure<'_>,
) -> Result<(WriteReport, Vec<stats::Written>)> {
    let bar = progress::bar(new.changed.len() as u64, "Writing changes");
    let mut second = (db::write::batches(new.new, new.changed).nth(1).is_some())
        .then(|| second_writer(config))
        .flatten();
    let mut clients = vec![client];
    clients.extend(second.as_mut());
    let rewrite = db::write::Rewrite {
        room_id: &config.room_id,
        room_of: None,
        symbols: new.symbols,
        original: new.original,
        new: new.new,
    };
    let mut written = Vec::new();
    let mut go_on = |batch: &[i64], rewritten: &[i64]| {
        bar.inc(batch.len() as u64);
        written.extend(rewritten.iter().map(|g| {
            let entry = &new.new[g];
            (*g, entry.prev, entry.delta.len() as i64)
        }));
        interrupt::requested().is_none()
    };
    let report = rewrite.write_pipelined(&mut clients, new.changed, &mut go_on)?;
    bar.finish_and_clear();
    info!(
        "Committed changes to {} groups ({} rows deleted, {} inserted)",
        report.written, report.rows_deleted, report.rows_inserted
    );
    Ok((report, written))
}

/// A second connection for the writes, if one can be had: without it the
/// batches are written on the run's connection alone, as safely.
fn second_writer(config: &ManualConfig) -> Option<Client> {
    db::connect(&config.db_url)
        .inspect_err(|e| info!("Writing on one connection (a second one failed: {e})"))
        .ok()
}

/// Where the SQL of `-o` goes: a file (replaced whole, once complete), or
/// standard output for `-o -`.
struct SqlOut {
    /// What to call it in messages.
    path: PathBuf,
    /// The file to write (none for standard output).
    file: Option<PathBuf>,
}

impl SqlOut {
    /// Checks that the file can be written, creating nothing.
    fn open(path: &Path) -> Result<SqlOut> {
        if sql::is_stdout(path) {
            return Ok(SqlOut {
                path: PathBuf::from("standard output"),
                file: None,
            });
        }
        AtomicFile::check_writable(path).map_err(|e| Error::file(path, e))?;
        Ok(SqlOut {
            path: path.to_owned(),
            file: Some(path.to_owned()),
        })
    }

    /// A run stopped before writing the file: says that it left the file
    /// (or its absence) as it was.
    fn discard(self) {
        if let Some(path) = self.file {
            info!(
                "Did not write {}: the run stopped before (a file of that name is left as it was)",
                path.display()
            );
        }
    }

    /// Writes the whole output with `content`: to standard output, or to a
    /// temporary file renamed over the target once complete.
    fn emit(&self, content: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
        let failed = |e| Error::file(&self.path, e);
        let Some(path) = &self.file else {
            let mut out = BufWriter::new(io::stdout());
            content(&mut out).map_err(failed)?;
            return out.flush().map_err(failed);
        };
        let mut out = AtomicFile::create(path).map_err(failed)?;
        content(&mut out).map_err(failed)?;
        out.commit().map_err(failed)
    }

    /// Writes the file of a run that changes nothing (a comment saying why).
    fn nothing(&self, room: &str, why: &str) -> Result<()> {
        self.emit(|out| sql::write_nothing(out, room, why))
    }

    /// Writes the guarded changes of `new` (or, with none, a file that
    /// says so).
    fn write(&self, config: &ManualConfig, new: NewStructure<'_>) -> Result<()> {
        let room = config.room_id.as_str();
        if new.changed.is_empty() {
            return self.nothing(room, "no state group needs changing");
        }
        self.emit(|out| {
            sql::write_changes(
                out,
                room,
                new.symbols,
                new.original,
                new.new,
                new.changed,
                config.transactions,
            )
        })?;
        info!(
            "Wrote SQL for {} groups to {}",
            new.changed.len(),
            self.path.display()
        );
        Ok(())
    }
}
