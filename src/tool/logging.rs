//! Logging set-up shared by both binaries: `env_logger` to stderr, `info`
//! unless `RUST_LOG` says otherwise.

/// Starts the logger. Safe to call more than once (later calls do nothing).
pub fn init() {
    let env = env_logger::Env::default().default_filter_or("info");
    let _ = env_logger::Builder::from_env(env)
        .format_target(false)
        .try_init();
}
