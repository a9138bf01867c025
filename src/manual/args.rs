//! The manual tool's command line. Options, short letters and
//! defaults are those of the reference `synapse_compress_state`, so existing
//! scripts keep working; every option also has a long form.

use std::path::PathBuf;

use clap::Parser;

use crate::core::levels::LevelSizes;
use crate::manual::config::ManualConfig;
use crate::tool::args::{version_text, Connection, NonNegative, Positive};

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
    #[command(flatten)]
    pub connection: Connection,

    /// The room to compress, e.g. '!abcdef:example.org'.
    #[arg(
        short = 'r',
        long = "room-id",
        alias = "room_id",
        value_name = "ROOM_ID"
    )]
    pub room_id: String,

    /// Only compress groups with an id above this one (exclusive).
    #[arg(
        short = 'b',
        long = "min-state-group",
        alias = "min_state_group",
        value_name = "MIN_STATE_GROUP",
        allow_negative_numbers = true
    )]
    pub min_state_group: Option<NonNegative>,

    /// Compress at most this many groups (from the start of the range).
    #[arg(
        short = 'n',
        long = "groups-to-compress",
        alias = "groups_to_compress",
        value_name = "GROUPS_TO_COMPRESS",
        allow_negative_numbers = true
    )]
    pub groups_to_compress: Option<Positive>,

    /// Only compress groups with an id up to this one (inclusive).
    #[arg(
        short = 's',
        long = "max-state-group",
        alias = "max_state_group",
        value_name = "MAX_STATE_GROUP",
        allow_negative_numbers = true
    )]
    pub max_state_group: Option<NonNegative>,

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
    #[arg(
        short = 'm',
        long = "min-saved-rows",
        alias = "min_saved_rows",
        value_name = "COUNT",
        allow_negative_numbers = true
    )]
    pub min_saved_rows: Option<NonNegative>,

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

    /// After applying the changes (needs -c), run `VACUUM (ANALYZE)
    /// state_groups_state` so the space of the deleted rows is reused for new
    /// rows (it does not block Synapse; it needs the right to vacuum the
    /// table, checked before any work).
    #[arg(long = "vacuum", requires = "commit_changes")]
    pub vacuum: bool,

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
            db_url: self.connection.into_string(),
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
            vacuum: self.vacuum,
        }
    }
}
