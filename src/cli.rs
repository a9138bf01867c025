//! Command-line parsing for the manual tool. Options, short letters and
//! defaults are those of the reference `synapse_compress_state`, so existing
//! scripts keep working; every option also has a long form.

use std::path::PathBuf;

use clap::Parser;

use crate::config::ManualConfig;
use crate::error::Error;
use crate::levels::LevelSizes;

/// Compresses the state groups of one room of a Synapse database.
///
/// Reads the room's groups, rebuilds their chains of deltas as a shallow
/// tree that needs far fewer rows, checks that every group keeps exactly its
/// state, and then writes SQL (-o) or applies the changes (-c). Without -o
/// or -c nothing is written: a dry run that prints what would be saved.
#[derive(Debug, Parser)]
#[command(
    name = "synapse_compress_state",
    version = version_text(env!("CARGO_PKG_VERSION")),
    max_term_width = 100
)]
pub struct ManualArgs {
    /// PostgreSQL connection: "postgresql://user:pass@host/db" or
    /// "user=... dbname=... host=..." (sslmode and sslrootcert are honoured).
    #[arg(short = 'p', long = "postgres-url", value_name = "POSTGRES_LOCATION")]
    pub postgres_url: String,

    /// The room to compress, e.g. '!abcdef:example.org'.
    #[arg(
        short = 'r',
        long = "room-id",
        alias = "room_id",
        value_name = "ROOM_ID"
    )]
    pub room_id: String,

    /// Only compress groups with an id above this one (exclusive).
    #[arg(short = 'b', long = "min-state-group", alias = "min_state_group",
          value_name = "MIN_STATE_GROUP", value_parser = non_negative, allow_negative_numbers = true)]
    pub min_state_group: Option<i64>,

    /// Compress at most this many groups (from the start of the range).
    #[arg(short = 'n', long = "groups-to-compress", alias = "groups_to_compress",
          value_name = "GROUPS_TO_COMPRESS", value_parser = positive, allow_negative_numbers = true)]
    pub groups_to_compress: Option<i64>,

    /// Only compress groups with an id up to this one (inclusive).
    #[arg(short = 's', long = "max-state-group", alias = "max_state_group",
          value_name = "MAX_STATE_GROUP", value_parser = non_negative, allow_negative_numbers = true)]
    pub max_state_group: Option<i64>,

    /// Level sizes of the tree, lowest level first. Their sum bounds the
    /// number of hops Synapse needs to read a group's state.
    #[arg(
        short = 'l',
        long = "level-sizes",
        alias = "level_sizes",
        value_name = "LEVELS",
        default_value = "100,50,25"
    )]
    pub level_sizes: LevelSizes,

    /// Write nothing unless at least this many rows would be saved.
    #[arg(short = 'm', long = "min-saved-rows", alias = "min_saved_rows",
          value_name = "COUNT", value_parser = non_negative, allow_negative_numbers = true)]
    pub min_saved_rows: Option<i64>,

    /// Write the changes as SQL to this file ("-" for standard output; the
    /// summary then goes to stderr), to apply later with psql.
    #[arg(
        short = 'o',
        long = "output-file",
        alias = "output_file",
        value_name = "FILE"
    )]
    pub output_file: Option<PathBuf>,

    /// Wrap each group's block in the SQL file in BEGIN/COMMIT (needs -o;
    /// each block is checked and atomic on its own either way).
    #[arg(short = 't', long = "transactions", requires = "output_file")]
    pub transactions: bool,

    /// Apply the changes to the database (each group atomically).
    #[arg(short = 'c', long = "commit-changes", alias = "commit_changes")]
    pub commit_changes: bool,

    /// Write before/after graph files (nodes and edges CSV, for Gephi) to
    /// the current directory.
    #[arg(short = 'g', long = "graphs")]
    pub graphs: bool,

    /// Skip checking that every group keeps its state (not recommended).
    #[arg(short = 'N', long = "no-verify", alias = "no_verify")]
    pub no_verify: bool,

    /// Never draw progress bars (they are only drawn on a terminal anyway).
    #[arg(long = "no-progress")]
    pub no_progress: bool,

    /// Print the final summary as one JSON object on stdout instead of
    /// text (logs stay on stderr).
    #[arg(long = "json")]
    pub json: bool,
}

impl ManualArgs {
    /// The run configuration these arguments describe.
    pub fn into_config(self) -> ManualConfig {
        ManualConfig {
            db_url: self.postgres_url,
            room_id: self.room_id,
            min_state_group: self.min_state_group,
            groups_to_compress: self.groups_to_compress,
            max_state_group: self.max_state_group,
            level_sizes: self.level_sizes,
            min_saved_rows: self.min_saved_rows,
            output_file: self.output_file,
            transactions: self.transactions,
            graphs: self.graphs,
            commit_changes: self.commit_changes,
            verify: !self.no_verify,
        }
    }
}

/// Checks a whole number against the lower bound of its option. Both
/// command lines (through [`non_negative`] and [`positive`]) and the Python
/// modules (through [`check_argument`]) use it, so they accept the same
/// values and explain a refusal in the same words.
fn at_least(value: i64, min: i64) -> Result<i64, String> {
    if value >= min {
        Ok(value)
    } else {
        Err(format!("must be at least {min}"))
    }
}

fn parse_at_least(text: &str, min: i64) -> Result<i64, String> {
    let value = text
        .parse::<i64>()
        .map_err(|e| format!("not a whole number ({e})"))?;
    at_least(value, min)
}

/// Clap parser for counts and ids that may be 0.
pub fn non_negative(text: &str) -> Result<i64, String> {
    parse_at_least(text, 0)
}

/// Clap parser for counts that must be at least 1.
pub fn positive(text: &str) -> Result<i64, String> {
    parse_at_least(text, 1)
}

/// [`at_least`] for a named argument of a library call, worded like the
/// command line's refusal ("invalid value 0 for chunk_size: must be at
/// least 1").
pub fn check_argument(name: &str, value: i64, min: i64) -> Result<i64, Error> {
    at_least(value, min)
        .map_err(|why| Error::InvalidArgument(format!("invalid value {value} for {name}: {why}")))
}

/// Parses the process arguments. Usage errors are reduced to clap's first
/// line (which names the problem) and exit with status 2; `--help` and
/// `--version` print and exit 0.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(err) => exit_on_clap_error(err),
    }
}

/// Prints a clap error the way our binaries report errors and exits.
pub fn exit_on_clap_error(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => err.exit(),
        _ => {
            let rendered = err.render().to_string();
            let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
            let first = lines.next().unwrap_or("error: invalid arguments");
            let mut line = if first.starts_with("error:") {
                first.to_owned()
            } else {
                format!("error: {first}")
            };
            // "...were not provided:" lists the arguments on the next,
            // indented lines: keep them on the one line.
            if line.ends_with(':') {
                for item in lines.take_while(|l| l.starts_with(' ')) {
                    line.push(' ');
                    line.push_str(item.trim());
                }
            }
            eprintln!("{line} (see --help)");
            std::process::exit(2);
        }
    }
}

/// The commit this was built from, when built from a git checkout of this
/// repository (recorded by `build.rs`).
pub const GIT_COMMIT: Option<&str> = option_env!("SYNAPSE_COMPRESS_GIT_COMMIT");

/// `--version` text of a binary whose package version is `version`:
/// "0.1.0 (git 1a2b3c4d)", or just "0.1.0" when built from a tarball.
/// Called once per process, when clap builds the command, so the string is
/// kept for the process's lifetime as clap wants.
pub fn version_text(version: &'static str) -> &'static str {
    match GIT_COMMIT {
        Some(commit) => Box::leak(format!("{version} (git {commit})").into_boxed_str()),
        None => version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked_the_same_way_for_clap_and_library_callers() {
        assert_eq!(non_negative("0"), Ok(0));
        assert_eq!(positive("1"), Ok(1));
        assert_eq!(positive("0"), Err("must be at least 1".to_owned()));
        assert_eq!(non_negative("-1"), Err("must be at least 0".to_owned()));
        assert!(positive("x").unwrap_err().starts_with("not a whole number"));
        assert_eq!(check_argument("chunk_size", 5, 1).unwrap(), 5);
        assert_eq!(
            check_argument("chunk_size", 0, 1).unwrap_err().to_string(),
            "invalid value 0 for chunk_size: must be at least 1"
        );
    }
}
