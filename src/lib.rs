//! Compresses Synapse's state tables.
//!
//! Synapse stores each state group as a delta on a predecessor, in chains of
//! up to 100 hops that end in full snapshots; the snapshots are most of
//! `state_groups_state`. This crate rewrites a room's groups into a shallow
//! tree of deltas (the "level" algorithm, `docs/algorithm.md`) that
//! resolves every group to exactly the same state with far fewer rows.
//!
//! The layers, each a folder:
//! - [`core`]: the algorithm and its data (state maps, groups, levels,
//!   resolution, the compressor, verification, chain lengths); no I/O;
//! - [`db`]: PostgreSQL access: connecting as libpq does (environment,
//!   password file, TLS), checking tables and
//!   privileges, loading, the per-room lock, writing safely beside Synapse
//!   (`docs/safety.md`), the table's row counts, size and VACUUM;
//! - [`output`]: the SQL file and graph files;
//! - [`tool`]: what both binaries share (argument types, progress, logging,
//!   timings, memory, fault injection, the Python glue);
//! - [`manual`]: the manual tool (arguments, settings, run, the windowed
//!   load and compression, summary);
//! - [`error`]: the one error type, with one-line messages.
//!
//! The automatic tool is the `synapse_auto_compressor` crate, built on
//! these same layers.

pub mod core;
pub mod db;
pub mod error;
pub mod manual;
pub mod output;
pub mod tool;

pub use crate::core::compressor::{compress, Compressed, Stats};
pub use crate::core::group::{GroupMap, StateGroupEntry};
pub use crate::core::levels::{Level, LevelSizes};
pub use crate::core::state_map::StateMap;
pub use error::{Error, Result};
pub use manual::ManualConfig;
