//! The automatic compressor: walks the whole state database a chunk at a
//! time, resumably, so it can run unattended from cron.
//!
//! - [`cli`]: command-line options (those of the reference binary);
//! - [`state_saving`]: the three progress tables, shared with the reference
//!   tool so either can continue the other's work;
//! - [`lock`]: one run per database;
//! - [`manager`]: the chunk loop (and `--largest-rooms`' room by room);
//! - [`metrics`]: `--metrics-file`, the run's figures for Prometheus;
//! - [`summary`]: the figures of each chunk and of the run;
//! - [`largest`]: which rooms `--largest-rooms` picks;
//! - [`pass`]: reading the table once, in its own order, for a run that
//!   covers much of it (`--reader`);
//! - [`prefetch`]: loading the next chunks while the current one is written;
//! - [`carry`]: a room's new structure kept in memory for its next chunk;
//! - [`chain_lengths`]: chain lengths before the run, for the figures of
//!   rooms' next chunks;
//! - [`room_ids`]: rooms' group ids read once for many chunks;
//! - [`room_store`]: what is kept per room for its next chunk, within a
//!   budget (carries, chain lengths);
//! - [`survey`]: `--dry-run`, what a run would save per room, writing nothing;
//! - [`workers`]: `--jobs N`, several rooms compressed at the same time.
//!
//! With the `pyo3` feature, the private `python` module is the Python module
//! of the same name (built by maturin, see `pyproject.toml`).

pub mod carry;
pub mod chain_lengths;
pub mod cli;
pub mod connections;
pub mod largest;
pub mod lock;
pub mod manager;
pub mod metrics;
pub mod pass;
pub mod prefetch;
pub mod room_ids;
pub mod room_store;
pub mod state_saving;
pub mod summary;
pub mod survey;
pub mod workers;

#[cfg(feature = "pyo3")]
mod python;

pub use manager::{run, AutoConfig, ChunkOutcome, RunSummary};
