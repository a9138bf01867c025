//! Test infrastructure for the state compressor, driven entirely through
//! PostgreSQL and the shipped binaries (this crate does not link the
//! compressor library).
//!
//! - [`pg`]: throwaway test databases on the server named by `SYNAPSE_TEST_PG`.
//! - [`generator`]: writes realistic Synapse-like state groups.
//! - [`synapse_state`]: reads groups' resolved state exactly as Synapse does.
//! - [`synapse_imitation`]: a live Synapse's writes, deletions and purges,
//!   to run beside the compressor, with the states every group must keep.
//! - [`structure`]: the raw tree (edges and rows) and its invariants.
//! - [`level_model`]: an independent model of the default level algorithm,
//!   the oracle for the exact structure the compressor must produce.
//! - [`auto_model`]: the automatic tool's chunk loop over that model, the
//!   oracle for the tree, progress and skipped chunks of automatic runs.
//! - [`digest`]: short, order-independent digests of resolved states.
//! - [`tls_server`]: a throwaway TLS-only server and test certificates.
//! - [`tools`]: locating and running the workspace binaries and `psql`.
//! - [`check`]: end-to-end helpers shared by the integration tests.

pub mod auto_model;
pub mod check;
pub mod digest;
pub mod generator;
pub mod level_model;
pub mod pg;
pub mod structure;
pub mod synapse_imitation;
pub mod synapse_state;
pub mod tls_server;
pub mod tools;

/// A state key: `(type, state_key)`.
pub type StateKey = (String, String);

/// A resolved state or a delta: state key to event id.
pub type StateMap = std::collections::BTreeMap<StateKey, String>;
