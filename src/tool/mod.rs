//! What both binaries (and both Python modules) share around the library:
//! argument types and reporting, progress bars, logging, timings, peak
//! memory, fault injection for tests, and the Python glue.

pub mod args;
pub mod failpoint;
pub mod logging;
pub mod memory;
pub mod progress;
#[cfg(feature = "pyo3")]
pub mod python;
pub mod timings;
