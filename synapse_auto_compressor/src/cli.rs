//! Command-line parsing for the automatic tool. Options and defaults are
//! those of the reference `synapse_auto_compressor`.

use clap::Parser;
use synapse_compress_state::tool::args::{version_text, Connection, MemorySize, Positive};
use synapse_compress_state::LevelSizes;

use crate::config::AutoConfig;
use crate::config::Reader;
use crate::connections::DEFAULT_RESERVE;

/// Compresses the state tables of a whole Synapse database, a chunk of one
/// room at a time, saving its progress in the database so each run picks up
/// where the last one stopped. Safe to run from cron while Synapse runs.
#[derive(Debug, Parser)]
#[command(
    name = "synapse_auto_compressor",
    version = version_text(env!("CARGO_PKG_VERSION")),
    max_term_width = 100
)]
pub struct AutoArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// How many state groups to load and compress at once. Memory use grows
    /// with it; it should be at least the first level size.
    #[arg(
        short = 'c',
        long = "chunk-size",
        alias = "chunk_size",
        value_name = "CHUNK_SIZE",
        allow_negative_numbers = true
    )]
    pub chunk_size: Positive,

    /// How many chunks to compress in this run (then stop, saving progress).
    #[arg(
        short = 'n',
        long = "chunks-to-compress",
        alias = "chunks_to_compress",
        value_name = "CHUNKS_TO_COMPRESS",
        allow_negative_numbers = true
    )]
    pub chunks_to_compress: Positive,

    /// Level sizes for rooms without saved progress, lowest level first.
    #[arg(
        short = 'l',
        long = "levels",
        alias = "default-levels",
        value_name = "LEVELS",
        default_value = "100,50,25"
    )]
    pub default_levels: LevelSizes,

    /// Never draw progress bars.
    #[arg(long = "no-progress")]
    pub no_progress: bool,

    /// At the end, run `VACUUM (ANALYZE) state_groups_state`, so the space of
    /// the deleted rows is reused for new rows (it does not block Synapse;
    /// it needs the right to vacuum the table, checked before any work).
    #[arg(long = "vacuum")]
    pub vacuum: bool,

    /// Print the run's summary as one JSON object on stdout (logs stay on
    /// stderr).
    #[arg(long = "json")]
    pub json: bool,

    /// Write nothing: run the same chunks in memory and print, per room,
    /// the rows a real run with these options would save, and how long it
    /// would take (an estimate). Needs only SELECT.
    #[arg(long = "dry-run", conflicts_with = "largest_rooms")]
    pub dry_run: bool,

    /// Compress the N rooms estimated to save the most, each to its end in
    /// chunks of CHUNK_SIZE (at most CHUNKS_TO_COMPRESS chunks in all),
    /// instead of scanning by group id.
    #[arg(
        long = "largest-rooms",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub largest_rooms: Option<Positive>,

    /// How many rooms to compress at the same time, each by its own worker
    /// on its own connection (the chunks of one room stay in order, so a
    /// run to completion gives the same result whatever N). Helps when the
    /// database server has cores and I/O to spare.
    #[arg(
        short = 'j',
        long = "jobs",
        value_name = "N",
        default_value = "1",
        allow_negative_numbers = true,
        conflicts_with_all = ["dry_run", "largest_rooms"]
    )]
    pub jobs: Positive,

    /// Write the run's figures (last success time, duration, rows saved,
    /// chunks, rooms busy or damaged, interrupted, exit status) to PATH in
    /// Prometheus' text format, for node_exporter's textfile collector
    /// (name it `*.prom`). Replaced whole at the end of every run, failed or
    /// interrupted ones included.
    #[arg(long = "metrics-file", value_name = "PATH", conflicts_with = "dry_run")]
    pub metrics_file: Option<std::path::PathBuf>,

    /// Connections to leave free for Synapse: `--jobs` workers and the
    /// connections that load ahead are only opened while more than this
    /// many of the server's connections are free (a run that asks for more
    /// says so and uses fewer; `--jobs` with none to spare is refused).
    #[arg(
        long = "reserve-connections",
        value_name = "N",
        default_value_t = DEFAULT_RESERVE
    )]
    pub reserve_connections: u32,

    /// How chunks are read: `pass` reads the table once in its own order
    /// (far fewer disk reads when the table does not fit in memory),
    /// `rooms` reads each chunk's groups through the indexes, `auto` takes
    /// the pass when the run covers at least a tenth of the groups left.
    /// The result is the same either way.
    #[arg(
        long = "reader",
        value_name = "READER",
        value_enum,
        default_value = "auto"
    )]
    pub reader: Reader,

    /// Most memory the pass may hold in chunks not yet complete (e.g.
    /// 256MiB, 1GiB); rooms beyond it are read room by room after the pass.
    /// With one writer, also the most held in decided chunks waiting to be
    /// written together.
    #[arg(long = "pass-memory", value_name = "SIZE", default_value_t = DEFAULT_PASS_MEMORY)]
    pub pass_memory: MemorySize,

    /// Group ids per range the pass reads (for tests: many small ranges).
    #[arg(long = "pass-range", hide = true, default_value_t = crate::pass::assemble::RANGE_IDS,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub pass_range_ids: i64,
}

/// The pass's default memory budget for unfinished chunks.
pub const DEFAULT_PASS_MEMORY: MemorySize = MemorySize::mib(256);

impl AutoArgs {
    /// The run configuration these arguments describe.
    pub fn into_config(&self) -> AutoConfig {
        AutoConfig {
            db_url: self.connection.clone().into_string(),
            chunk_size: self.chunk_size,
            number_of_chunks: self.chunks_to_compress,
            default_levels: self.default_levels.clone(),
            largest_rooms: self.largest_rooms,
            vacuum: self.vacuum,
            jobs: self.jobs,
            reserve_connections: self.reserve_connections,
            reader: self.reader,
            pass_memory: self.pass_memory,
            pass_range_ids: self.pass_range_ids,
        }
    }
}
