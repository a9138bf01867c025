//! Fault injection for the test suite: named points where a test run makes
//! the tool misbehave on purpose, to prove end to end that the protections
//! hold (verification refuses a wrong delta; a write stopped at any
//! statement leaves nothing half-written).
//!
//! Only builds with the `failpoints` feature have them (`scripts/test.sh`
//! builds the binaries so); everywhere else every function here is empty.
//! A test sets `FAILPOINTS="name=return(action)"` (the `fail` crate's
//! syntax, e.g. `2*off->return(abort)` for the third time the point is
//! reached) in the tool's environment.
//!
//! Points:
//! - `compress::wrong-delta` ([`triggered`]): the compressor drops a row
//!   from the first rewritten group's delta;
//! - `lock-wait::skip` ([`triggered`]): the check that the state tables
//!   are free (`db::lock_wait`) is skipped, as if a lock were taken just
//!   after it, so the run's own statements meet the lock;
//! - `write::after-deletes`, `write::before-copy`,
//!   `auto::before-progress-save` ([`stop_here`]): with `return(abort)`
//!   the process aborts right there, in the middle of a write transaction,
//!   as a crash or a kill would stop it; with `return(wait-signal)` it says
//!   so on stderr and waits there until a SIGINT or SIGTERM has come (the
//!   test sends it on that line), so a stop lands at that exact moment;
//! - `pass::hand-over` ([`stop_here`]): before the pass hands a complete
//!   chunk to the chunk code; with `return(pause)` the run waits there
//!   for a line on its standard input, so a test can change the database
//!   between the pass's read of a chunk and its use.

/// Keeps the points configured while it lives (holds nothing in a build
/// without fault injection).
pub struct Guard {
    #[cfg(feature = "failpoints")]
    _scenario: fail::FailScenario<'static>,
}

/// Reads `FAILPOINTS`; keep the guard for as long as the points may fire.
pub fn setup() -> Guard {
    #[cfg(feature = "failpoints")]
    {
        let scenario = fail::FailScenario::setup();
        if let Ok(points) = std::env::var("FAILPOINTS") {
            log::warn!("fault injection is on: FAILPOINTS={points:?}");
        }
        Guard {
            _scenario: scenario,
        }
    }
    #[cfg(not(feature = "failpoints"))]
    Guard {}
}

/// Whether the test asked point `name` to misbehave this time.
pub fn triggered(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Aborts the process here when the test asked point `name` to
/// (`return(abort)`): no destructor runs, no transaction is rolled back
/// politely, the server just loses the connection. With
/// `return(wait-signal)`, waits here for a stop signal instead (at most a
/// minute, then aborts), and goes on once it is recorded. With
/// `return(pause)`, waits for a line on standard input, then goes on.
pub fn stop_here(name: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(action) = fail::eval(name, |arg| arg) {
        match action.as_deref() {
            Some("abort") => {
                super::say::err(&format!("failpoint {name}: aborting"));
                std::process::abort();
            }
            Some("wait-signal") => wait_for_signal(name),
            Some("pause") => {
                // The test changes the database meanwhile, then writes a
                // line to the tool's standard input.
                super::say::err(&format!(
                    "failpoint {name}: paused until a line comes on standard input"
                ));
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            }
            _ => {}
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Waits until [`crate::tool::interrupt`] has recorded a stop signal.
#[cfg(feature = "failpoints")]
fn wait_for_signal(name: &str) {
    use std::time::{Duration, Instant};
    super::say::err(&format!("failpoint {name}: waiting for a signal"));
    let started = Instant::now();
    while crate::tool::interrupt::requested().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            super::say::err(&format!("failpoint {name}: no signal came; aborting"));
            std::process::abort();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
