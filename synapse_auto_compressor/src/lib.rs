//! The automatic compressor: walks the whole state database a chunk at a
//! time, resumably, so it can run unattended from cron.
//!
//! A run, in one direction:
//!
//! 1. **What to do**: [`cli`] (the reference binary's options) gives a
//!    [`config::AutoConfig`]; [`lock`] makes it the database's one run;
//!    [`connections`] counts what the server can spare.
//! 2. **Reading** a chunk's groups: [`prefetch`] loads the next chunks
//!    through the indexes while the current one is written, with
//!    [`room_ids`] (rooms' ids read once for many chunks); or [`pass`]
//!    reads the whole table once, in its own order, and puts the chunks
//!    together (`--reader`).
//! 3. **One chunk**: [`chunk`] compresses, decides, verifies and writes it
//!    with its room's progress ([`state_saving`]: the three progress
//!    tables, shared with the reference tool), continuing from the
//!    structure [`carry`] kept in memory (within [`room_store`]'s budget).
//! 4. **The modes**, thin users of the above: [`manager`] (the chunk loop,
//!    and `--largest-rooms` with the rooms [`largest`] picks), the pass's
//!    driver in [`pass`], [`workers`] (`--jobs N`), and [`survey`]
//!    (`--dry-run`, which writes nothing).
//! 5. **Figures**: [`summary`] counts each chunk and the run,
//!    [`chain_lengths`] gives the chains before it, [`metrics`] writes them
//!    for Prometheus (`--metrics-file`).
//!
//! With the `pyo3` feature, the private `python` module is the Python module
//! of the same name (built by maturin, see `pyproject.toml`).

pub mod carry;
pub mod chain_lengths;
pub mod chunk;
pub mod cli;
pub mod config;
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

pub use config::AutoConfig;
pub use manager::run;
pub use summary::{ChunkOutcome, RunSummary};
