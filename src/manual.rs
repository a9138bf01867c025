//! One manual run: load a room's range, compress, verify, then write SQL
//! and/or apply the changes.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::{info, warn};

use crate::compressor::compress;
use crate::config::ManualConfig;
use crate::db::{self, load, schema, RoomLock};
use crate::error::{Error, Result};
use crate::group::{changed_groups, row_count, row_count_after, GroupMap};
use crate::state_map::Symbols;
use crate::summary::{Outcome, Summary, Timings};
use crate::verify::verify;
use crate::{graph, progress, sql};

/// Runs the manual tool with `config` and returns its figures.
pub fn run(config: &ManualConfig) -> Result<Summary> {
    let run_started = Instant::now();
    let mut timings = Timings::default();
    let room = config.room_id.as_str();

    // Open the output file first: an unwritable path fails before any work.
    let mut sql_out = config
        .output_file
        .as_deref()
        .map(SqlOut::open)
        .transpose()?;

    let mut client = db::connect(&config.db_url)?;
    schema::require_state_tables(&mut client)?;
    let access = if config.commit_changes {
        schema::Access::Write
    } else {
        schema::Access::Read
    };
    schema::require_privileges(&mut client, access, &[], &[])?;
    // Only a run that writes needs the room to itself; it keeps the lock
    // from before the load until its last write has committed.
    let room_lock = if config.commit_changes {
        Some(RoomLock::try_acquire(&mut client, room)?)
    } else {
        None
    };

    let started = Instant::now();
    info!("Fetching state from DB for room '{room}'...");
    let mut snapshot = load::snapshot(&mut client)?;
    let ids = load::range_ids(
        &mut snapshot,
        room,
        config.min_state_group,
        config.max_state_group,
        config.groups_to_compress,
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
    // Up to the writes, a damaged structure is reported with the room's
    // name: nothing of it has been touched.
    let damaged = |e: Error| e.in_room(room);
    let loaded = load::load_groups(&mut snapshot, &mut symbols, room, &ids, &[], &mut |n| {
        rows_bar.inc(n)
    });
    rows_bar.finish_and_clear();
    let (mut original, mut report) = loaded.map_err(damaged)?;
    // As the reference does when the range has a lower bound (-b).
    load::include_groups_without_row(
        &mut original,
        &mut report,
        config.min_state_group,
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
    timings.load = started.elapsed();
    info!(
        "Loaded {} groups ({} to compress, up to group {last_group}) in {:.2}s",
        original.len(),
        report.in_range,
        timings.load.as_secs_f64()
    );

    let started = Instant::now();
    let compressed = compress(&original, config.level_sizes.empty_levels()).map_err(damaged)?;
    timings.compress = started.elapsed();

    let rows_before = row_count(&original);
    let rows_after = row_count_after(&original, &compressed.changes);
    let mut summary = Summary {
        room_id: room.to_owned(),
        groups: original.len(),
        groups_in_range: report.in_range,
        last_group,
        rows_before,
        rows_after,
        stats: compressed.stats,
        verified: None,
        groups_written: 0,
        groups_skipped_live: 0,
        missing_predecessors: report.missing_predecessors.len(),
        outcome: Outcome::Done,
        timings,
    };

    if rows_after > rows_before {
        summary.outcome = Outcome::WouldGrow;
        if let Some(out) = sql_out.as_mut() {
            out.nothing(
                room,
                &format!("compressing would need more rows ({rows_before} -> {rows_after})"),
            )?;
        }
        summary.timings.total = run_started.elapsed();
        return Ok(summary);
    }
    if let Some(minimum) = config.min_saved_rows {
        let saved = rows_before as i64 - rows_after as i64;
        if saved < minimum {
            summary.outcome = Outcome::TooFewSaved { saved, minimum };
            if let Some(out) = sql_out.as_mut() {
                out.nothing(
                    room,
                    &format!("only {saved} rows would be saved, fewer than the minimum of {minimum} (-m)"),
                )?;
            }
            summary.timings.total = run_started.elapsed();
            return Ok(summary);
        }
    }

    if config.verify {
        let started = Instant::now();
        info!("Checking that state maps match...");
        summary.verified = Some(verify(&original, &compressed.changes).map_err(damaged)?);
        summary.timings.verify = started.elapsed();
    }

    if config.graphs {
        let written = graph::write_graphs(Path::new("."), &original, &compressed.view(&original))?;
        info!("Wrote graph files: {written:?}");
    }

    let changed = changed_groups(&original, &compressed.changes);
    let started = Instant::now();
    if let Some(out) = sql_out.as_mut() {
        if changed.is_empty() {
            out.nothing(room, "no state group needs changing")?;
        } else {
            out.changes(
                room,
                &symbols,
                &original,
                &compressed.changes,
                &changed,
                config.transactions,
            )?;
            info!(
                "Wrote SQL for {} groups to {}",
                changed.len(),
                out.path.display()
            );
        }
    }
    if config.commit_changes {
        let bar = progress::bar(changed.len() as u64, "Writing changes");
        let report = db::write::write_changes(
            &mut client,
            room,
            &symbols,
            &original,
            &compressed.changes,
            &changed,
            &mut |n| bar.inc(n as u64),
            None,
        )?;
        bar.finish_and_clear();
        summary.groups_skipped_live = report.skipped;
        if let Some(lock) = room_lock {
            lock.release(&mut client)?;
        }
        info!(
            "Committed changes to {} groups ({} rows deleted, {} inserted)",
            report.written, report.rows_deleted, report.rows_inserted
        );
    }
    summary.timings.write = started.elapsed();
    summary.groups_written = changed.len() - summary.groups_skipped_live;
    summary.timings.total = run_started.elapsed();
    Ok(summary)
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

    /// Writes the guarded changes of `groups`.
    fn changes(
        &mut self,
        room: &str,
        symbols: &Symbols,
        original: &GroupMap,
        new: &GroupMap,
        groups: &[i64],
        transactions: bool,
    ) -> Result<()> {
        sql::write_changes(
            &mut self.sink,
            room,
            symbols,
            original,
            new,
            groups,
            transactions,
        )
        .map_err(|e| Error::file(&self.path, e))
    }
}
