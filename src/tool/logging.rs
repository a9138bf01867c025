//! Logging set-up shared by both binaries: `env_logger` to stderr, `info`
//! unless `RUST_LOG` says otherwise, each line written with the progress
//! bars lifted off the screen (`progress::suspend`), so neither garbles
//! the other.

use log::{Log, Metadata, Record};

use crate::tool::progress;

/// `env_logger`, writing around the progress bars.
struct AroundBars(env_logger::Logger);

impl Log for AroundBars {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.0.matches(record) {
            progress::suspend(|| self.0.log(record));
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Starts the logger. Safe to call more than once (later calls do nothing).
pub fn init() {
    let env = env_logger::Env::default().default_filter_or("info");
    let logger = env_logger::Builder::from_env(env)
        .format_target(false)
        .build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(AroundBars(logger))).is_ok() {
        log::set_max_level(level);
    }
}
