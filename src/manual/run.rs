//! One manual run, in phases: connect (and lock the room when writing),
//! load the room's range, compress, decide whether writing is worth it,
//! verify, then write the SQL file and/or apply the changes; with `-c`,
//! count the room's rows before and after, measure the table and VACUUM it
//! when asked.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::{info, warn};

use postgres::Client;

use crate::core::chains::longest_chains;
use crate::core::compressor::compress;
use crate::core::group::{changed_groups, GroupMap};
use crate::core::state_map::Symbols;
use crate::core::verify::verify;
use crate::db::load::{self, LoadReport};
use crate::db::write::WriteReport;
use crate::db::{self, schema, stats, RoomLock};
use crate::error::{Error, Result};
use crate::manual::config::ManualConfig;
use crate::manual::summary::{Outcome, Summary};
use crate::output::{graph, sql};
use crate::tool::args::{NonNegative, Positive};
use crate::tool::progress;
use crate::tool::timings::Timings;

/// Runs the manual tool with `config` and returns its figures.
pub fn run(config: &ManualConfig) -> Result<Summary> {
    let run_started = Instant::now();
    let room = config.room_id.as_str();
    // Up to the writes, a damaged structure is reported with the room's
    // name: nothing of it has been touched.
    let damaged = |e: Error| e.in_room(room);

    // Open the output file first: an unwritable path fails before any work.
    let mut sql_out = config
        .output_file
        .as_deref()
        .map(SqlOut::open)
        .transpose()?;
    let (mut client, room_lock) = connect(config)?;
    // Counted under the room's lock: no other compressor changes them.
    let table_rows_before = match room_lock {
        Some(_) => Some(stats::room_rows(&mut client, room)?),
        None => None,
    };

    let mut timings = Timings::default();
    let started = Instant::now();
    let loaded = load_room(&mut client, config).map_err(damaged)?;
    timings.load = started.elapsed();
    info!(
        "Loaded {} groups ({} to compress, up to group {}) in {:.2}s",
        loaded.original.len(),
        loaded.report.in_range,
        loaded.last_group,
        timings.load.as_secs_f64()
    );

    let started = Instant::now();
    let compressed =
        compress(&loaded.original, config.level_sizes.empty_levels()).map_err(damaged)?;
    timings.compress = started.elapsed();
    let mut summary = Summary::new(room, &loaded, &compressed, timings);
    summary.dry_run = !config.commit_changes && config.output_file.is_none();
    summary.to_sql_file = config.output_file.is_some();
    summary.to_database = config.commit_changes;
    summary.table_rows_before = table_rows_before;
    summary.table_rows_after = table_rows_before;
    (summary.longest_chain_before, summary.longest_chain_after, _) =
        longest_chains(&loaded.original, None, &Default::default());

    if let Some(why) = reason_to_write_nothing(config, &mut summary) {
        if let Some(out) = sql_out.as_mut() {
            out.nothing(room, &why)?;
        }
        finish_database(&mut client, config, &mut summary, WriteReport::default())?;
        summary.timings.total = run_started.elapsed();
        return Ok(summary);
    }

    let original = &loaded.original;
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

    let changed = changed_groups(original, &compressed.changes);
    summary.longest_chain_after =
        longest_chains(original, Some(&compressed.changes), &Default::default()).1;
    let started = Instant::now();
    if let Some(out) = sql_out.as_mut() {
        out.write(config, &loaded, &compressed.changes, &changed)?;
    }
    let mut report = WriteReport::default();
    if let Some(lock) = room_lock {
        report = commit(&mut client, room, &loaded, &compressed.changes, &changed)?;
        lock.release(&mut client)?;
        // Exact: a group Synapse changed meanwhile keeps its rows.
        let saved = report.rows_deleted as i64 - report.rows_inserted as i64;
        summary.rows_after = (summary.rows_before as i64 - saved) as usize;
    }
    summary.timings.write = started.elapsed();
    summary.groups_skipped_live = report.skipped;
    summary.groups_to_write = changed.len();
    summary.groups_written = changed.len() - summary.groups_skipped_live;
    finish_database(&mut client, config, &mut summary, report)?;
    summary.timings.total = run_started.elapsed();
    Ok(summary)
}

/// With `-c`: the room's rows after the run, the table's size and the space
/// the deleted rows left, and the VACUUM of `--vacuum`.
fn finish_database(
    client: &mut Client,
    config: &ManualConfig,
    summary: &mut Summary,
    report: WriteReport,
) -> Result<()> {
    if !config.commit_changes {
        return Ok(());
    }
    summary.rows_deleted = report.rows_deleted;
    summary.table_rows_after = Some(stats::room_rows(client, &config.room_id)?);
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

/// Loads the range of groups `config` asks for, in one consistent read.
fn load_room(client: &mut Client, config: &ManualConfig) -> Result<LoadedRoom> {
    let room = config.room_id.as_str();
    info!("Fetching state from DB for room '{room}'...");
    let mut snapshot = load::snapshot(client)?;
    let ids = load::range_ids(
        &mut snapshot,
        room,
        config.min_state_group.map(NonNegative::get),
        config.max_state_group.map(NonNegative::get),
        config.groups_to_compress.map(Positive::get),
    )?;
    let Some(&last_group) = ids.last() else {
        return Err(if load::room_has_groups(&mut snapshot, room)? {
            Error::EmptyRange(room.to_owned())
        } else {
            Error::UnknownRoom(room.to_owned())
        });
    };
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
    if report.duplicate_rows > 0 {
        warn!(
            "ignored {} duplicate (type, state_key) rows",
            report.duplicate_rows
        );
    }
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

/// Applies the changes to the database: what was written, and how many
/// groups were left alone because they changed since they were loaded.
fn commit(
    client: &mut Client,
    room: &str,
    loaded: &LoadedRoom,
    new: &GroupMap,
    changed: &[i64],
) -> Result<WriteReport> {
    let bar = progress::bar(changed.len() as u64, "Writing changes");
    let rewrite = db::write::Rewrite {
        room_id: room,
        symbols: &loaded.symbols,
        original: &loaded.original,
        new,
    };
    let report = rewrite.write(client, changed, &mut |n| bar.inc(n as u64), None)?;
    bar.finish_and_clear();
    info!(
        "Committed changes to {} groups ({} rows deleted, {} inserted)",
        report.written, report.rows_deleted, report.rows_inserted
    );
    Ok(report)
}

/// Where the SQL of `-o` goes: a file, or standard output for `-o -`.
struct SqlOut {
    /// What to call it in messages.
    path: PathBuf,
    sink: Box<dyn Write>,
}

impl SqlOut {
    fn open(path: &Path) -> Result<SqlOut> {
        if sql::is_stdout(path) {
            return Ok(SqlOut {
                path: PathBuf::from("standard output"),
                sink: Box::new(BufWriter::new(io::stdout())),
            });
        }
        let file = File::create(path).map_err(|e| Error::file(path, e))?;
        Ok(SqlOut {
            path: path.to_owned(),
            sink: Box::new(BufWriter::new(file)),
        })
    }

    /// Writes the file of a run that changes nothing (a comment saying why).
    fn nothing(&mut self, room: &str, why: &str) -> Result<()> {
        sql::write_nothing(&mut self.sink, room, why).map_err(|e| Error::file(&self.path, e))
    }

    /// Writes the guarded changes of `changed` (or, with none, a file
    /// that says so).
    fn write(
        &mut self,
        config: &ManualConfig,
        loaded: &LoadedRoom,
        new: &GroupMap,
        changed: &[i64],
    ) -> Result<()> {
        let room = config.room_id.as_str();
        if changed.is_empty() {
            return self.nothing(room, "no state group needs changing");
        }
        sql::write_changes(
            &mut self.sink,
            room,
            &loaded.symbols,
            &loaded.original,
            new,
            changed,
            config.transactions,
        )
        .map_err(|e| Error::file(&self.path, e))?;
        info!(
            "Wrote SQL for {} groups to {}",
            changed.len(),
            self.path.display()
        );
        Ok(())
    }
}
