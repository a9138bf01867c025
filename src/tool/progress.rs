//! Progress bars on stderr while loading and writing.
//!
//! Bars only draw on a terminal (indicatif hides them otherwise, so cron
//! logs stay clean), can be switched off with a flag, and are compiled out
//! entirely with the `no-progress-bars` feature.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(!cfg!(feature = "no-progress-bars"));

/// Hides every bar created from now on.
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

fn target() -> ProgressDrawTarget {
    if ENABLED.load(Ordering::Relaxed) {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A counter of rows of unknown total (rows read), with its rate as a
/// whole number of rows per second ("690,152 rows/s", not indicatif's
/// "690152.2844/s").
pub fn counter(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {human_pos} [{elapsed}, {rate}]")
            .expect("valid template")
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(
                        w,
                        "{} rows/s",
                        indicatif::HumanCount(state.per_sec() as u64)
                    );
                },
            ),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar for `len` units of work.
pub fn bar(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), target());
    bar.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {human_pos}/{human_len} [{elapsed}<{eta}]")
            .expect("valid template"),
    );
    bar.set_message(message);
    bar
}
