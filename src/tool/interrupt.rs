//! Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.
//!
//! The binaries call [`install`]: the first of these signals only records
//! which one came, and the tools look at [`requested`] at their safe points
//! (the automatic tool between chunks, once a chunk's last transaction,
//! which also saves its progress, has committed; the manual tool between
//! phases and between write batches, each batch being a committed
//! transaction of its own). A second signal ends the process at once, from
//! the signal handler, with 128 + the signal's number: safe too, since an
//! open transaction is simply rolled back by the server when the
//! connection goes.
//!
//! Until the tool calls [`begin_work`] (once its first connection is up)
//! there is nothing a safe point would save: the first signal then ends
//! the process at once, with the same exit status, instead of leaving it
//! waiting on a server that may never answer.
//!
//! The Python modules never call [`install`] (Python keeps its own Ctrl-C
//! handling): for them [`requested`] stays `None` and a call runs to its
//! end.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The signal that asked a run to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Ctrl-C on a terminal.
    Interrupt,
    /// SIGTERM: `kill`, systemd stopping the unit, a container shutting
    /// down.
    Terminate,
}

impl Signal {
    fn number(self) -> i32 {
        match self {
            Signal::Interrupt => SIGINT,
            Signal::Terminate => SIGTERM,
        }
    }

    /// The exit status of a process stopped by this signal, as shells
    /// report one killed by it: 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_status(self) -> u8 {
        (128 + self.number()) as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the signal handlers write: whether a stop was asked, and by which
/// signal (its number).
struct Flags {
    stop: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

fn flags() -> &'static Flags {
    static FLAGS: OnceLock<Flags> = OnceLock::new();
    FLAGS.get_or_init(|| Flags {
        stop: Arc::new(AtomicBool::new(false)),
        which: Arc::new(AtomicUsize::new(0)),
    })
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<Signal> {
    let flags = flags();
    if !flags.stop.load(Ordering::SeqCst) {
        return None;
    }
    Some(match flags.which.load(Ordering::SeqCst) as i32 {
        SIGTERM => Signal::Terminate,
        _ => Signal::Interrupt,
    })
}

/// Whether the run's work has begun (see [`begin_work`]); the signal
/// thread holds the lock while it ends an idle process, so work cannot
/// begin under its feet.
static WORK_BEGUN: Mutex<bool> = Mutex::new(false);

/// Says that the run's work begins: from now on the first signal stops it
/// at its next safe point. Before, the first signal ends the process at
/// once (nothing to save yet).
pub fn begin_work() {
    *WORK_BEGUN.lock().unwrap_or_else(|e| e.into_inner()) = true;
}

/// Installs the handlers of SIGINT and SIGTERM (binaries only), and a
/// thread that, when the first signal comes, ends the process if no work
/// has begun, or else logs that the run stops at its next safe point. Fails only if the operating system refuses a
/// handler; the run then goes on without them.
pub fn install() -> std::io::Result<()> {
    let flags = flags();
    for signal in [SIGINT, SIGTERM] {
        // Handlers run in the order registered: a signal that finds the
        // flag already set (the second one) ends the process before
        // anything else runs.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            128 + signal,
            Arc::clone(&flags.stop),
        )?;
        signal_hook::flag::register_usize(signal, Arc::clone(&flags.which), signal as usize)?;
        signal_hook::flag::register(signal, Arc::clone(&flags.stop))?;
    }
    // Logging is not safe inside a signal handler: a thread does it.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
                let begun = WORK_BEGUN.lock().unwrap_or_else(|e| e.into_inner());
                if !*begun {
                    log::warn!("Interrupted by {name} before any work began: nothing was changed");
                    std::process::exit(128 + signal);
                }
                drop(begun);
                log::warn!(
                    "{name} received: stopping at the next safe point (a second Ctrl-C or SIGTERM stops at once, which is safe too)"
                );
            }
        })?;
    Ok(())
}
