//! The process's peak memory, for the final summary and the benchmark.
//!
//! Read from `VmHWM` in `/proc/self/status` (Linux): the high-water mark of
//! this program's own address space. (A parent's `wait4` figure can include
//! the parent's own size from before `exec`, so we report it ourselves.)

/// Peak resident memory in bytes, where the platform tells it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident memory in MiB (0 where unknown).
pub fn peak_rss_mib() -> f64 {
    peak_rss_bytes().map_or(0.0, |b| b as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_plausible_peak_on_linux() {
        if cfg!(target_os = "linux") {
            let peak = super::peak_rss_bytes().expect("VmHWM on Linux");
            assert!(peak > 100 * 1024, "{peak}");
        }
    }
}
