//! The figures of a manual run and how they are printed.
//!
//! The first lines keep the reference tool's wording, so scripts that read
//! its output keep working; the lines after them say in plain words what
//! was decided, what was written where, the room's rows counted in the
//! table, the longest chain and, after `-c`, the table's disk space.

use std::fmt;

use crate::core::compressor::Stats;
use crate::core::verify::Verified;
use crate::db::stats::DiskSpace;
use crate::tool::interrupt::Signal;
use crate::tool::timings::Timings;

/// What a run decided to do with its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new structure would need more rows than the old one.
    WouldGrow,
    /// Fewer rows than `-m` would be saved.
    TooFewSaved { saved: i64, minimum: i64 },
    /// The result was checked (unless disabled) and written as asked
    /// (SQL file, database, or neither for a dry run).
    Done,
}

/// The figures of one manual run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The room compressed.
    pub room_id: String,
    /// Groups loaded (in range, predecessors and heads).
    pub groups: usize,
    /// Groups eligible for rewriting.
    pub groups_in_range: usize,
    /// The last group id of the range.
    pub last_group: i64,
    /// Rows of all loaded groups before.
    pub rows_before: usize,
    /// Rows of all loaded groups after.
    pub rows_after: usize,
    /// Counters from the compressor.
    pub stats: Stats,
    /// What verification covered (None when skipped or not reached).
    pub verified: Option<Verified>,
    /// Groups whose new rows or edge differ from their old ones: what the
    /// SQL file holds, or what a dry run would write.
    pub groups_to_write: usize,
    /// Groups whose rows and edge were (or, with -o, would be) rewritten.
    pub groups_written: usize,
    /// Groups left alone because another writer (Synapse, another
    /// compressor) changed them while we worked.
    pub groups_skipped_live: usize,
    /// Predecessors that had no `state_groups` row.
    pub missing_predecessors: usize,
    /// Neither `-c` nor `-o` was given: nothing was to be written.
    pub dry_run: bool,
    /// `-o`: the changes went to an SQL file.
    pub to_sql_file: bool,
    /// `-c`: the changes were applied to the database.
    pub to_database: bool,
    /// `-o`: the SQL file (or standard output) was written in full.
    pub sql_file_written: bool,
    /// The run reached its write phase (the SQL file, then the database).
    pub writing: bool,
    /// `-N`: the new structure was not checked against the old states.
    pub verify_skipped: bool,
    /// With `-c`, once written: the rows the compressor planned to leave
    /// (`rows_after` is then what the writes left: fewer groups are
    /// rewritten when Synapse changed some meanwhile or a signal stopped
    /// the writes).
    pub rows_after_planned: Option<usize>,
    /// Rows the writes deleted (with `-c`).
    pub rows_deleted: u64,
    /// With `-c`: the room's rows in `state_groups_state`, counted before
    /// the load and after the writes (Synapse's writes meanwhile included).
    pub table_rows_before: Option<u64>,
    pub table_rows_after: Option<u64>,
    /// The longest chain (edges Synapse follows to read a group's state)
    /// among the range's groups, before and after (or as it would be).
    pub longest_chain_before: u32,
    pub longest_chain_after: u32,
    /// With `-c`: the table's size and the space freed inside it.
    pub disk: Option<DiskSpace>,
    /// The decision taken.
    pub outcome: Outcome,
    /// Time per phase.
    pub timings: Timings,
    /// The signal that stopped the run before it was done.
    pub interrupted: Option<Signal>,
}

/// A compressed room's own figures, however it was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomFigures {
    pub groups: usize,
    pub groups_in_range: usize,
    pub last_group: i64,
    pub rows_before: usize,
    pub rows_after: usize,
    pub missing_predecessors: usize,
}

impl Summary {
    /// The figures of a compressed room, before anything is decided or
    /// written.
    pub fn new(
        room: &str,
        loaded: &crate::manual::run::LoadedRoom,
        compressed: &crate::core::compressor::Compressed,
        timings: Timings,
    ) -> Summary {
        use crate::core::group::{row_count, row_count_after};
        let figures = RoomFigures {
            groups: loaded.original.len(),
            groups_in_range: loaded.report.in_range,
            last_group: loaded.last_group,
            rows_before: row_count(&loaded.original),
            rows_after: row_count_after(&loaded.original, &compressed.changes),
            missing_predecessors: loaded.report.missing_predecessors.len(),
        };
        Summary::of_room(room, figures, compressed.stats, timings)
    }

    /// The figures of a room loaded but not compressed (a run stopped
    /// there): the rows stay as they are.
    pub fn loaded(
        room: &str,
        loaded: &crate::manual::run::LoadedRoom,
        timings: Timings,
    ) -> Summary {
        let rows = crate::core::group::row_count(&loaded.original);
        let figures = RoomFigures {
            groups: loaded.original.len(),
            groups_in_range: loaded.report.in_range,
            last_group: loaded.last_group,
            rows_before: rows,
            rows_after: rows,
            missing_predecessors: loaded.report.missing_predecessors.len(),
        };
        Summary::of_room(room, figures, Stats::default(), timings)
    }

    /// The same from the figures themselves (a room compressed in windows).
    pub fn of_room(room: &str, figures: RoomFigures, stats: Stats, timings: Timings) -> Summary {
        Summary {
            room_id: room.to_owned(),
            groups: figures.groups,
            groups_in_range: figures.groups_in_range,
            last_group: figures.last_group,
            rows_before: figures.rows_before,
            rows_after: figures.rows_after,
            stats,
            verified: None,
            groups_to_write: 0,
            groups_written: 0,
            groups_skipped_live: 0,
            missing_predecessors: figures.missing_predecessors,
            dry_run: false,
            to_sql_file: false,
            to_database: false,
            sql_file_written: false,
            writing: false,
            verify_skipped: false,
            rows_after_planned: None,
            rows_deleted: 0,
            table_rows_before: None,
            table_rows_after: None,
            longest_chain_before: 0,
            longest_chain_after: 0,
            disk: None,
            outcome: Outcome::Done,
            timings,
            interrupted: None,
        }
    }

    /// The figures as one JSON object (for `--json`, scripts and monitoring).
    pub fn to_json(&self) -> serde_json::Value {
        let outcome = match &self.outcome {
            Outcome::WouldGrow => "would_grow",
            Outcome::TooFewSaved { .. } => "too_few_saved",
            Outcome::Done => "done",
        };
        let mut json = serde_json::json!({
            "room_id": self.room_id,
            "groups": self.groups,
            "groups_in_range": self.groups_in_range,
            "last_group": self.last_group,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "rows_saved": self.rows_before as i64 - self.rows_after as i64,
            "percent_after": self.percent_after(),
            "groups_changed": self.stats.state_groups_changed,
            "forced_resets": self.stats.resets_no_suitable_prev,
            "forced_reset_rows": self.stats.resets_no_suitable_prev_size,
            "groups_to_write": self.groups_to_write,
            "groups_written": self.groups_written,
            "groups_skipped_live": self.groups_skipped_live,
            "rows_deleted": self.rows_deleted,
            "table_rows_before": self.table_rows_before,
            "table_rows_after": self.table_rows_after,
            "longest_chain_before": self.longest_chain_before,
            "longest_chain_after": self.longest_chain_after,
            "missing_predecessors": self.missing_predecessors,
            "outcome": outcome,
            "verified": self.verified.is_some(),
            "groups_compared": self.verified.map_or(0, |v| v.compared),
            "seconds": {
                "load": self.timings.load.as_secs_f64(),
                "compress": self.timings.compress.as_secs_f64(),
                "verify": self.timings.verify.as_secs_f64(),
                "write": self.timings.write.as_secs_f64(),
                "total": self.timings.total.as_secs_f64(),
            },
            "peak_rss_mib": crate::tool::memory::peak_rss_mib(),
            "interrupted": self.interrupted.is_some(),
        });
        DiskSpace::add_json(self.disk.as_ref(), &mut json);
        json
    }

    /// Rows after as a percentage of rows before.
    pub fn percent_after(&self) -> f64 {
        percent_of(self.rows_after, self.rows_before)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Number of state groups: {}", self.groups)?;
        writeln!(f, "Number of rows in current table: {}", self.rows_before)?;
        // The plan's figure: a stopped run's partial one is in its last line.
        let (after, percent) = match self.rows_after_planned {
            Some(planned) if self.interrupted.is_some() => {
                (planned, percent_of(planned, self.rows_before))
            }
            _ => (self.rows_after, self.percent_after()),
        };
        writeln!(
            f,
            "Number of rows after compression: {after} ({percent:.2}%)"
        )?;
        writeln!(f, "Compression Statistics:")?;
        writeln!(
            f,
            "  Number of forced resets due to lacking prev: {}",
            self.stats.resets_no_suitable_prev
        )?;
        writeln!(
            f,
            "  Number of compressed rows caused by the above: {}",
            self.stats.resets_no_suitable_prev_size
        )?;
        writeln!(
            f,
            "  Number of state groups changed: {}",
            self.stats.state_groups_changed
        )?;
        match &self.outcome {
            Outcome::WouldGrow => writeln!(f, "This compression would not remove any rows. Exiting.")?,
            Outcome::TooFewSaved { saved, minimum } => writeln!(
                f,
                "Only {saved} rows would be saved by this compression (minimum {minimum}). Skipping output."
            )?,
            Outcome::Done => {
                if let Some(v) = self.verified {
                    writeln!(
                        f,
                        "New state map matches old one ({} groups checked, {} compared in full)",
                        v.groups, v.compared
                    )?;
                } else if self.verify_skipped {
                    writeln!(
                        f,
                        "New state map NOT checked against the old one: verification was skipped (-N)"
                    )?;
                }
                self.fmt_writes(f)?;
            }
        }
        if self.missing_predecessors > 0 {
            writeln!(
                f,
                "Predecessors without a state_groups row (read as Synapse reads them): {}",
                self.missing_predecessors
            )?;
        }
        self.fmt_table(f)?;
        if let Some(signal) = self.interrupted {
            writeln!(f, "Interrupted by {signal} {}", self.interrupted_what())?;
        }
        write!(f, "{}", self.timings)
    }
}

/// `part` as a percentage of `whole` (100 for an empty whole).
fn percent_of(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Summary {
    /// What an interrupted run did and did not do, by what it was asked to
    /// write.
    fn interrupted_what(&self) -> String {
        let file = if !self.to_sql_file {
            ""
        } else if self.sql_file_written {
            " The SQL file was written in full."
        } else {
            " No SQL file was written (a file of that name is left as it was)."
        };
        if self.to_database && self.writing {
            let planned = self.rows_after_planned.unwrap_or(self.rows_after);
            format!(
                "before the run was done: {} of {} groups rewritten in the database ({} of the {} rows planned saved), every group's state unchanged; run the same command again to finish.{file}",
                self.groups_written,
                self.groups_to_write,
                self.rows_before as i64 - self.rows_after as i64,
                self.rows_before as i64 - planned as i64,
            )
        } else if self.to_database {
            format!("before the run was done: 0 of its groups rewritten, as it stopped before writing: the database is as it was; run the same command again.{file}")
        } else if self.to_sql_file {
            format!(
                "before the SQL file was complete:{file} Run the same command again to write it."
            )
        } else {
            "before the dry run was done: nothing was to be written; the figures above cover the work done before it stopped.".to_owned()
        }
    }
}

impl Summary {
    /// What was decided and what was written where, in plain words.
    fn fmt_writes(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decided = self.stats.state_groups_changed;
        writeln!(
            f,
            "Groups given a new structure by the compressor: {decided}; of them, {} end up with different rows or edge",
            self.groups_to_write
        )?;
        if self.dry_run {
            writeln!(
                f,
                "Groups that would be rewritten: {}",
                self.groups_to_write
            )?;
            writeln!(
                f,
                "Nothing was written (a dry run): add -c to apply the changes, or -o FILE to write them as SQL."
            )?;
        }
        if self.to_sql_file {
            writeln!(
                f,
                "Groups written to the SQL file: {} (applying it rewrites each one that is still as it was loaded)",
                self.groups_to_write
            )?;
        }
        if self.to_database {
            writeln!(
                f,
                "Groups rewritten in the database: {} ({} rows deleted, {} saved)",
                self.groups_written,
                self.rows_deleted,
                self.rows_before as i64 - self.rows_after as i64
            )?;
        }
        if self.groups_skipped_live > 0 {
            writeln!(
                f,
                "Groups left as they were because they changed since they were loaded: {}",
                self.groups_skipped_live
            )?;
        }
        Ok(())
    }

    /// The room's rows counted in the table, the longest chain, and the
    /// table's disk space.
    fn fmt_table(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(before), Some(after)) = (self.table_rows_before, self.table_rows_after) {
            writeln!(
                f,
                "Rows of this room in state_groups_state: {before} before, {after} after (counted; includes Synapse's writes meanwhile)"
            )?;
        }
        let after = if self.to_database || self.outcome != Outcome::Done {
            "after"
        } else {
            "once written"
        };
        writeln!(
            f,
            "Longest chain Synapse walks to read one of these groups: {} hops before, {} {after}",
            self.longest_chain_before, self.longest_chain_after
        )?;
        if let Some(disk) = &self.disk {
            write!(f, "{disk}")?;
        }
        Ok(())
    }
}
