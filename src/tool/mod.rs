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

/// What a binary sets up before its run: log output, fault injection (test
/// builds only) and progress bars, unless `no_progress`. Keep the returned
/// guard until the run is over.
pub fn start(no_progress: bool) -> failpoint::Guard {
    logging::init();
    let guard = failpoint::setup();
    if no_progress {
        progress::disable();
    }
    guard
}
