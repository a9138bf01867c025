//! The figures of a manual run and how they are printed.
//!
//! The first lines keep the reference tool's wording, so scripts that read
//! its output keep working.

use std::fmt;

use crate::core::compressor::Stats;
use crate::core::verify::Verified;
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
    /// Groups whose rows and edge were (or, with -o, would be) rewritten.
    pub groups_written: usize,
    /// Groups left alone because another writer (Synapse, another
    /// compressor) changed them while we worked.
    pub groups_skipped_live: usize,
    /// Predecessors that had no `state_groups` row.
    pub missing_predecessors: usize,
    /// Neither `-c` nor `-o` was given: nothing was to be written.
    pub dry_run: bool,
    /// The decision taken.
    pub outcome: Outcome,
    /// Time per phase.
    pub timings: Timings,
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
            groups_written: 0,
            groups_skipped_live: 0,
            missing_predecessors: figures.missing_predecessors,
            dry_run: false,
            outcome: Outcome::Done,
            timings,
        }
    }

    /// The figures as one JSON object (for `--json`, scripts and monitoring).
    pub fn to_json(&self) -> serde_json::Value {
        let outcome = match &self.outcome {
            Outcome::WouldGrow => "would_grow",
            Outcome::TooFewSaved { .. } => "too_few_saved",
            Outcome::Done => "done",
        };
        serde_json::json!({
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
            "groups_written": self.groups_written,
            "groups_skipped_live": self.groups_skipped_live,
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
        })
    }

    /// Rows after as a percentage of rows before.
    pub fn percent_after(&self) -> f64 {
        if self.rows_before == 0 {
            100.0
        } else {
            self.rows_after as f64 * 100.0 / self.rows_before as f64
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Number of state groups: {}", self.groups)?;
        writeln!(f, "Number of rows in current table: {}", self.rows_before)?;
        writeln!(
            f,
            "Number of rows after compression: {} ({:.2}%)",
            self.rows_after,
            self.percent_after()
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
                }
                if self.dry_run {
                    writeln!(
                        f,
                        "Nothing was written (a dry run): add -c to apply the changes, or -o FILE to write them as SQL."
                    )?;
                }
            }
        }
        if self.groups_skipped_live > 0 {
            writeln!(
                f,
                "Groups left as they were because they changed since they were loaded: {}",
                self.groups_skipped_live
            )?;
        }
        if self.missing_predecessors > 0 {
            writeln!(
                f,
                "Predecessors without a state_groups row (read as Synapse reads them): {}",
                self.missing_predecessors
            )?;
        }
        write!(f, "{}", self.timings)
    }
}
