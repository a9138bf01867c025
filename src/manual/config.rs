//! The validated settings of one manual run.

use std::path::PathBuf;

use crate::core::levels::LevelSizes;
use crate::tool::args::{NonNegative, Positive};

/// Everything a manual run needs. Built by the CLI (or a library caller);
/// the types keep every field valid (no negative id, no zero count), so
/// running never re-checks arguments.
#[derive(Clone, Debug)]
pub struct ManualConfig {
    /// Connection string: a `postgresql://` URL or `key=value` pairs.
    pub db_url: String,
    /// The room whose groups are compressed.
    pub room_id: String,
    /// Only groups above this id (exclusive).
    pub min_state_group: Option<NonNegative>,
    /// At most this many groups (from the start of the range).
    pub groups_to_compress: Option<Positive>,
    /// Only groups up to this id (inclusive).
    pub max_state_group: Option<NonNegative>,
    /// The level sizes of the tree.
    pub level_sizes: LevelSizes,
    /// Write nothing unless at least this many rows would be saved.
    pub min_saved_rows: Option<NonNegative>,
    /// Write the changes as SQL to this file.
    pub output_file: Option<PathBuf>,
    /// Wrap each group's SQL in its own transaction.
    pub transactions: bool,
    /// Write before/after graph files.
    pub graphs: bool,
    /// Apply the changes to the database.
    pub commit_changes: bool,
    /// Check the new structure before writing anything.
    pub verify: bool,
    /// After applying the changes, run `VACUUM (ANALYZE) state_groups_state`
    /// (only with `commit_changes`; checked before any work).
    pub vacuum: bool,
}

impl ManualConfig {
    /// A configuration with the reference tool's defaults.
    pub fn new(db_url: impl Into<String>, room_id: impl Into<String>) -> Self {
        Self {
            db_url: db_url.into(),
            room_id: room_id.into(),
            min_state_group: None,
            groups_to_compress: None,
            max_state_group: None,
            level_sizes: LevelSizes::default(),
            min_saved_rows: None,
            output_file: None,
            transactions: false,
            graphs: false,
            commit_changes: false,
            verify: true,
            vacuum: false,
        }
    }
}
