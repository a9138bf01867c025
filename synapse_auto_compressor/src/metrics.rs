//! `--metrics-file`: the run's figures in Prometheus' text exposition
//! format, for node_exporter's textfile collector (or anything that reads
//! that format), so a cron job or timer is watched by its metrics.
//!
//! Written at the end of every run, whatever its outcome: a run that
//! succeeded, was interrupted or failed (then only the figures known
//! without a summary: when, how long, exit status). The time of the last
//! successful run is carried over from the file the previous run wrote, so
//! a failing run keeps it and an alert can fire when it grows old. The file
//! is replaced atomically (`output::atomic`): the collector never reads a
//! half-written one.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use synapse_compress_state::output::atomic::AtomicFile;
use synapse_compress_state::{Error, Result};

use crate::summary::RunSummary;

/// Every metric's name starts with this.
const PREFIX: &str = "synapse_auto_compressor_";

/// The metric carried over from run to run.
const LAST_SUCCESS: &str = "last_success_timestamp_seconds";

/// How a run ended, as the metrics file records it.
pub struct RunEnd<'a> {
    /// The run's figures (none when it failed).
    pub summary: Option<&'a RunSummary>,
    /// The process's exit status.
    pub exit_status: u8,
    pub started: SystemTime,
    pub ended: SystemTime,
}

/// Checks that `path` can be written, before the run does any work.
pub fn check(path: &Path) -> Result<()> {
    AtomicFile::check_writable(path).map_err(|e| Error::file(path, e))
}

/// Writes the metrics of `end` to `path`, replacing the file whole.
pub fn write(path: &Path, end: &RunEnd<'_>) -> Result<()> {
    let previous = std::fs::read_to_string(path).ok();
    let text = render(end, previous.as_deref());
    let failed = |e| Error::file(path, e);
    let mut file = AtomicFile::create(path).map_err(failed)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(failed)?;
    file.commit().map_err(failed)
}

/// The file's text for `end`; `previous` is the file the last run wrote,
/// if any, for the time of the last success.
pub fn render(end: &RunEnd<'_>, previous: Option<&str>) -> String {
    let success = end.exit_status == 0;
    let last_success = if success {
        seconds(end.ended)
    } else {
        previous.and_then(last_success).unwrap_or(0.0)
    };
    let duration = end
        .ended
        .duration_since(end.started)
        .unwrap_or(Duration::ZERO);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(out, "# TYPE {PREFIX}{name} gauge");
        let _ = writeln!(out, "{PREFIX}{name} {value}");
    };
    gauge(
        LAST_SUCCESS,
        "Unix time at which the last run that exited 0 ended (0: none known).",
        last_success,
    );
    gauge(
        "last_run_timestamp_seconds",
        "Unix time at which the last run ended, whatever its outcome.",
        seconds(end.ended),
    );
    gauge(
        "last_run_duration_seconds",
        "How long the last run took.",
        duration.as_secs_f64(),
    );
    gauge(
        "last_run_exit_status",
        "The last run's exit status (0 success, 1 error, 75 another run busy, 130/143 interrupted).",
        f64::from(end.exit_status),
    );
    gauge(
        "last_run_success",
        "1 if the last run exited 0.",
        f64::from(u8::from(success)),
    );
    let interrupted = end.summary.is_some_and(|s| s.interrupted.is_some());
    gauge(
        "last_run_interrupted",
        "1 if Ctrl-C or SIGTERM stopped the last run between two chunks (its progress is saved).",
        f64::from(u8::from(interrupted)),
    );
    let Some(summary) = end.summary else {
        return out;
    };
    let figures: [(&str, &str, f64); 8] = [
        (
            "last_run_rows_saved",
            "Rows the last run removed from state_groups_state (deleted minus inserted).",
            summary.rows_saved as f64,
        ),
        (
            "last_run_rows_deleted",
            "Rows the last run deleted from state_groups_state.",
            summary.rows_deleted as f64,
        ),
        (
            "last_run_chunks",
            "Chunks the last run did (skipped ones included).",
            summary.chunks as f64,
        ),
        (
            "last_run_chunks_skipped",
            "Chunks the last run skipped as not worth writing.",
            summary.chunks_skipped as f64,
        ),
        (
            "last_run_groups",
            "State groups in the last run's chunks.",
            summary.groups as f64,
        ),
        (
            "last_run_rooms_finished",
            "Rooms the last run compressed to their end.",
            summary.rooms_finished as f64,
        ),
        (
            "last_run_rooms_busy",
            "Rooms the last run left because another compressor had them.",
            summary.rooms_busy as f64,
        ),
        (
            "last_run_rooms_damaged",
            "Rooms the last run left alone because their data is damaged.",
            summary.rooms_damaged as f64,
        ),
    ];
    for (name, help, value) in figures {
        gauge(name, help, value);
    }
    out
}

/// Seconds since the Unix epoch.
fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The last success's time in a file this module wrote.
fn last_success(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(PREFIX)?
                .strip_prefix(LAST_SUCCESS)?
                .strip_prefix(' ')
        })
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_keeps_the_last_success() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let ok = RunEnd {
            summary: Some(&RunSummary::default()),
            exit_status: 0,
            started: at(1_000),
            ended: at(1_060),
        };
        let first = render(&ok, None);
        assert_eq!(last_success(&first), Some(1_060.0));
        let failed = RunEnd {
            summary: None,
            exit_status: 1,
            started: at(2_000),
            ended: at(2_005),
        };
        let second = render(&failed, Some(&first));
        assert_eq!(last_success(&second), Some(1_060.0));
        assert!(second.contains("synapse_auto_compressor_last_run_exit_status 1\n"));
        assert!(!second.contains("rows_saved"));
        assert_eq!(last_success(&render(&failed, None)), Some(0.0));
    }
}
