//! Progress bars on stderr: loading and writing in the manual tool, groups
//! in the automatic tool.
//!
//! Bars only draw on a terminal (indicatif hides them otherwise, so cron
//! logs stay clean), can be switched off with a flag, and are compiled out
//! entirely with the `no-progress-bars` feature. Every bar belongs to one
//! process-wide [`MultiProgress`], so the logger can lift the bars off the
//! screen while it writes a line ([`suspend`]) and log lines never land in
//! the middle of a bar.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar type, for code that passes bars around without naming indicatif.
pub use indicatif::ProgressBar as Bar;

static ENABLED: AtomicBool = AtomicBool::new(!cfg!(feature = "no-progress-bars"));

/// The bars on screen, created with the first bar.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Hides every bar created from now on.
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
    if let Some(bars) = BARS.get() {
        bars.set_draw_target(ProgressDrawTarget::hidden());
    }
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A new bar of `len` units (or of unknown length), drawn on stderr with
/// the others, or hidden.
fn new_bar(len: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden());
    if enabled() {
        BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            .add(bar)
    } else {
        bar
    }
}

/// Runs `f` (writing a log line) with the bars taken off the screen, and
/// draws them again after.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match BARS.get() {
        Some(bars) if enabled() => bars.suspend(f),
        _ => f(),
    }
}

/// A counter of rows of unknown total (rows read), with its rate as a
/// whole number of rows per second ("690,152 rows/s", not indicatif's
/// "690152.2844/s").
pub fn counter(message: &'static str) -> ProgressBar {
    let bar = new_bar(None);
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
    let bar = new_bar(Some(len));
    bar.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {human_pos}/{human_len} [{elapsed}<{eta}]")
            .expect("valid template"),
    );
    bar.set_message(message);
    bar
}

/// `n` with thousands separators ("148,762"), as the bars show counts.
pub fn count(n: u64) -> String {
    indicatif::HumanCount(n).to_string()
}

/// The automatic tool's bar over the database: groups done of about
/// `groups` (the work left, or what `-n` allows), with the time left at
/// that pace, and a message (rows saved so far, the current room).
pub fn groups(groups: u64) -> ProgressBar {
    ticking(
        groups,
        "Groups {bar:20} {human_pos}/~{human_len} [{elapsed}<{eta}] {wide_msg}",
    )
}

/// The automatic tool's bar room by room (`--largest-rooms`): chunks done
/// of `chunks`, with the time left, and the same message.
pub fn chunks(chunks: u64) -> ProgressBar {
    ticking(
        chunks,
        "Chunks {bar:20} {human_pos}/{human_len} [{elapsed}<{eta}] {wide_msg}",
    )
}

/// A bar of `len` drawn with `template` (whose message is cut to the
/// width of the terminal) that ticks on its own, so the clock moves
/// during a long chunk.
fn ticking(len: u64, template: &str) -> ProgressBar {
    let bar = new_bar(Some(len));
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}
