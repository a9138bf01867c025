//! The cold mode (`--cold`): each run measured with the database out of
//! memory, as on a server whose `state_groups_state` no longer fits.
//!
//! `scripts/bench.sh --cold` runs the PostgreSQL server in a cgroup v1
//! memory group and a blkio group of the same name (created before the
//! server starts, so the postmaster and every backend are in them from
//! their first read). Before each measured step this module restarts the
//! server (empty shared buffers), writes out dirty pages and drops the
//! kernel's caches, then caps the group's memory, which caps the server's
//! page cache too. The disk reads are the blkio group's counters
//! (`blkio.throttle.io_service_bytes` and `io_serviced`), read before and
//! after. Between measured steps (cloning, checking) the cap is lifted.
//!
//! The counters only see what the server's processes read; the tools and
//! this program are outside the groups.

use crate::{say, Res};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cgroup v1 hierarchies the groups live in.
const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";
const BLKIO_ROOT: &str = "/sys/fs/cgroup/blkio";

/// The server's groups, and how to restart it inside them.
pub struct Cold {
    memory: PathBuf,
    blkio: PathBuf,
    /// A program that restarts the server from inside the groups (written
    /// by bench.sh).
    restart: PathBuf,
    /// The memory caps to measure each run under, bytes.
    pub caps: Vec<u64>,
}

/// Disk reads counted by the blkio group.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskReads {
    pub bytes: u64,
    pub ops: u64,
}

impl DiskReads {
    /// The reads between `self` (before) and `after`.
    pub fn until(self, after: DiskReads) -> DiskReads {
        DiskReads {
            bytes: after.bytes.saturating_sub(self.bytes),
            ops: after.ops.saturating_sub(self.ops),
        }
    }
}

impl Cold {
    /// The groups named `group` (made by bench.sh), restarted with
    /// `restart`; each run measured under each of `caps`.
    pub fn new(group: &str, restart: &Path, caps: Vec<u64>) -> Res<Cold> {
        let cold = Cold {
            memory: Path::new(MEMORY_ROOT).join(group),
            blkio: Path::new(BLKIO_ROOT).join(group),
            restart: restart.to_path_buf(),
            caps,
        };
        for file in [
            cold.memory.join("memory.limit_in_bytes"),
            cold.blkio.join("blkio.throttle.io_service_bytes"),
            cold.restart.clone(),
        ] {
            if !file.exists() {
                return Err(format!(
                    "--cold: {} does not exist (run the cold mode through scripts/bench.sh --cold)",
                    file.display()
                ));
            }
        }
        Ok(cold)
    }

    /// Lifts the memory cap.
    pub fn uncap(&self) -> Res<()> {
        write(&self.memory.join("memory.limit_in_bytes"), "-1")
    }

    /// Makes the next step start cold: restarts the server (its shared
    /// buffers start empty), writes out dirty pages, drops the kernel's
    /// caches, and caps the server's memory at `cap` bytes. Connections
    /// made before are closed by the restart.
    pub fn start_cold(&self, cap: u64) -> Res<()> {
        self.uncap()?;
        let status = Command::new(&self.restart)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", self.restart.display()))?;
        if !status.success() {
            return Err(format!(
                "{} failed ({status}): the server did not restart",
                self.restart.display()
            ));
        }
        drop_caches()?;
        write(&self.memory.join("memory.limit_in_bytes"), &cap.to_string()).map_err(|e| {
            format!("{e} (the server uses more than the cap right after a restart: raise it)")
        })
    }

    /// The disk reads counted so far.
    pub fn reads(&self) -> Res<DiskReads> {
        Ok(DiskReads {
            bytes: read_counter(&self.blkio.join("blkio.throttle.io_service_bytes"))?,
            ops: read_counter(&self.blkio.join("blkio.throttle.io_serviced"))?,
        })
    }

    /// How many times the kernel has killed a process of the group for
    /// going over its cap (`oom_kill` in `memory.oom_control`).
    pub fn oom_kills(&self) -> Res<u64> {
        let path = self.memory.join("memory.oom_control");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    /// What the cold figures were taken with: the group, the caps, and
    /// the read-ahead of the disks the server read from (every random read
    /// brings in that much more).
    pub fn describe(&self) -> String {
        let text = std::fs::read_to_string(self.blkio.join("blkio.throttle.io_service_bytes"))
            .unwrap_or_default();
        let mut disks: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|d| d.contains(':'))
            .map(|d| {
                let ahead =
                    std::fs::read_to_string(format!("/sys/dev/block/{d}/queue/read_ahead_kb"))
                        .map_or("?".to_string(), |s| s.trim().to_string());
                format!("{d} read_ahead_kb={ahead}")
            })
            .collect();
        disks.dedup();
        let caps: Vec<String> = self.caps.iter().map(|&c| mib(c)).collect();
        format!(
            "cold: server in cgroup {} (memory caps {}), caches dropped and server restarted before each run and each floor; disks: {}",
            self.memory.display(),
            caps.join(", "),
            if disks.is_empty() {
                "none read yet".to_string()
            } else {
                disks.join(", ")
            }
        )
    }
}

/// `268435456` as `256 MiB`, `1073741824` as `1 GiB`.
pub fn mib(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// A memory size: `256MiB`, `256M`, `1GiB`, `1G` (binary units).
pub fn parse_size(text: &str) -> Res<u64> {
    let t = text.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &t[digits.len()..];
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad memory size {text:?} (expected e.g. 256MiB or 1GiB)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "bad memory size {text:?} (expected e.g. 256MiB or 1GiB)"
            ))
        }
    };
    if !(64 << 20..=1 << 50).contains(&(n << shift)) {
        return Err(format!(
            "memory size {text:?} out of range (64 MiB or more)"
        ));
    }
    Ok(n << shift)
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`.
fn drop_caches() -> Res<()> {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    write(Path::new("/proc/sys/vm/drop_caches"), "3")
        .map_err(|e| format!("{e} (the cold mode needs root)"))?;
    say("caches dropped");
    Ok(())
}

fn write(path: &Path, value: &str) -> Res<()> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value} to {}: {e}", path.display()))
}

/// The sum of the `Read` lines of a blkio counter file (one per disk).
fn read_counter(path: &Path) -> Res<u64> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "Read", n] => n.parse::<u64>().ok(),
            _ => None,
        })
        .sum())
}
