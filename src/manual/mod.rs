//! The manual tool (one room, on demand): its command line, its validated
//! settings, the run itself (whole, or in windows of groups), and the
//! summary it prints. The binary in `src/main.rs` only parses, calls
//! [`run`] and prints.

pub mod args;
pub mod config;
#[cfg(feature = "pyo3")]
mod python;
pub mod run;
pub mod summary;
pub mod window;

pub use args::ManualArgs;
pub use config::ManualConfig;
pub use run::run;
pub use summary::Summary;
