//! Time spent in each phase of a run, and the `Time:` line both tools
//! print at the end (the benchmark reads it).

use std::fmt;
use std::time::Duration;

/// Time spent in each phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub load: Duration,
    pub compress: Duration,
    pub verify: Duration,
    pub write: Duration,
    /// The whole run, connecting included.
    pub total: Duration,
}

impl fmt::Display for Timings {
    /// The `Time:` line both tools print (the benchmark reads it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Time: load {:.2}s, compress {:.2}s, verify {:.2}s, write {:.2}s; peak memory {:.1} MiB",
            self.load.as_secs_f64(),
            self.compress.as_secs_f64(),
            self.verify.as_secs_f64(),
            self.write.as_secs_f64(),
            crate::tool::memory::peak_rss_mib()
        )
    }
}
