//! What one automatic run is asked to do: its settings, and the warnings
//! about settings that run but serve badly.

use log::warn;
use synapse_compress_state::tool::args::{MemorySize, Positive};
use synapse_compress_state::LevelSizes;

/// The settings of one automatic run.
#[derive(Clone, Debug)]
pub struct AutoConfig {
    /// Connection string: a `postgresql://` URL or `key=value` pairs.
    pub db_url: String,
    /// Groups per chunk.
    pub chunk_size: Positive,
    /// Chunks to process in this run.
    pub number_of_chunks: Positive,
    /// Levels for rooms without usable saved levels.
    pub default_levels: LevelSizes,
    /// Compress this many rooms, those estimated to save the most, each to
    /// its end, instead of scanning by group id (`--largest-rooms`).
    pub largest_rooms: Option<Positive>,
    /// Run `VACUUM (ANALYZE) state_groups_state` at the end.
    pub vacuum: bool,
    /// Workers compressing different rooms at the same time (`--jobs`).
    pub jobs: Positive,
    /// Connections the run leaves free for Synapse (`--reserve-connections`).
    pub reserve_connections: u32,
    /// How the chunks' groups are read (`--reader`).
    pub reader: Reader,
    /// Most memory the pass's unfinished chunks may hold (`--pass-memory`).
    pub pass_memory: MemorySize,
    /// Group ids per range the pass reads (hidden `--pass-range`, for tests).
    pub pass_range_ids: i64,
}

/// Warns (one line each) about settings that run but serve badly: levels
/// that make chains far longer than Synapse's, chunks smaller than the
/// first level (the survey warns alike).
pub(crate) fn warn_about_settings(config: &AutoConfig) {
    let levels = &config.default_levels;
    let warnings = [
        levels.long_chain_warning(),
        levels.small_chunk_warning(config.chunk_size.get()),
    ];
    for warning in warnings.into_iter().flatten() {
        warn!("{warning}");
    }
}

/// Which reader a run uses (`--reader`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Reader {
    /// The pass when the run covers a good share of what is left, else
    /// room by room.
    #[default]
    Auto,
    /// One pass over the table in its own order.
    Pass,
    /// Each chunk's groups through the indexes (the reference tool's way).
    Rooms,
}
