//! Compresses Synapse's state tables.
//!
//! Synapse stores each state group as a delta on a predecessor, in chains of
//! up to 100 hops that end in full snapshots; the snapshots are most of
//! `state_groups_state`. This crate rewrites a room's groups into a shallow
//! tree of deltas (the "level" algorithm) that resolves every group to
//! exactly the same state with far fewer rows.
//!
//! Modules, each with one job:
//! - [`state_map`]: interned keys and the sorted delta map;
//! - [`group`]: a group's predecessor and delta, and the map of all groups;
//! - [`levels`]: validated level sizes and the compressor's levels;
//! - [`resolve`]: a group's full state from its chain;
//! - [`compressor`]: the level-tree algorithm;
//! - [`verify`]: proof that no group's state changes;
//! - [`sql`]: SQL text output; [`graph`]: graph files;
//! - [`db`]: connecting as libpq does (environment, password file, TLS),
//!   loading and writing;
//! - [`config`], [`cli`], [`manual`], [`summary`]: the manual tool;
//! - [`error`], [`progress`], [`logging`], [`memory`]: shared plumbing;
//! - [`failpoint`]: fault injection, in test builds only;
//! - `python` (feature `pyo3`): the Python module and the plumbing the
//!   automatic tool's module shares.

pub mod cli;
pub mod compressor;
pub mod config;
pub mod db;
pub mod error;
pub mod failpoint;
pub mod graph;
pub mod group;
pub mod levels;
pub mod logging;
pub mod manual;
pub mod memory;
pub mod progress;
#[cfg(feature = "pyo3")]
pub mod python;
pub mod resolve;
pub mod sql;
pub mod state_map;
pub mod summary;
pub mod verify;

pub use compressor::{compress, Compressed, Stats};
pub use config::ManualConfig;
pub use error::{Error, Result};
pub use group::{GroupMap, StateGroupEntry};
pub use levels::{Level, LevelSizes};
pub use state_map::StateMap;
