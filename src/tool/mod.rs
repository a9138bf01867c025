//! What both binaries (and both Python modules) share around the library:
//! argument types and reporting, progress bars, logging, timings, peak
//! memory, stopping on a signal, fault injection for tests, named threads,
//! and the Python glue.

pub mod args;
pub mod failpoint;
pub mod interrupt;
pub mod logging;
pub mod memory;
pub mod progress;
#[cfg(feature = "pyo3")]
pub mod python;
pub mod say;
pub mod timings;

/// Starts `work` on a thread of `scope` named `name`, as `top -H`, `perf`
/// and a panic's message show it (at most 15 characters on Linux). Like
/// `Scope::spawn`, it panics if the system cannot start a thread.
pub fn spawn_named<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    work: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn_scoped(scope, work)
        .unwrap_or_else(|e| panic!("starting the {name} thread: {e}"))
}

/// What a binary sets up before its run: log output, fault injection (test
/// builds only), progress bars unless `no_progress`, and the handling of
/// Ctrl-C and SIGTERM (stop at the next safe point). Keep the returned
/// guard until the run is over.
pub fn start(no_progress: bool) -> failpoint::Guard {
    if no_progress {
        progress::disable();
    }
    logging::init();
    let guard = failpoint::setup();
    if let Err(e) = interrupt::install() {
        log::warn!("cannot handle Ctrl-C and SIGTERM ({e}); they will stop the run at once");
    }
    guard
}
