//! What the benchmark prints: the machine and server settings, the table
//! of runs with its legend, and the row counts of `--count-only`.

use crate::cold::mib;
use crate::run::RunResult;
use crate::{connect, pg, Res};
use compressor_integration_tests::generator::{MixConfig, MixRoom};
use std::fmt::Write as _;

/// `1234567` as `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The 1-minute load average (other work on the machine skews timings).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// CPUs, memory, kernel and load: what the timings were taken on.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".to_string(), |kib| {
            format!("{:.1}", kib / 1024.0 / 1024.0)
        });
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: {cpus} CPUs ({model}), {mem_gib} GiB RAM, Linux {}, load average {} at the end",
        kernel.trim(),
        load_average()
    )
}

/// The server's version and the settings that matter for bulk work.
pub fn pg_line(base: &str) -> Res<String> {
    let mut c = connect(base, "postgres")?;
    let version: String = pg("SHOW", c.query_one("SHOW server_version", &[]))?.get(0);
    let mut line = format!("PostgreSQL {version}:");
    let mut fsync_off = false;
    for name in [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "effective_cache_size",
        "max_wal_size",
        "jit",
    ] {
        let value: String = pg("SHOW", c.query_one(&format!("SHOW {name}"), &[]))?.get(0);
        if name == "fsync" && value == "off" {
            fsync_off = true;
        }
        let _ = write!(line, " {name}={value}");
    }
    if fsync_off {
        line.push_str(
            "\n  (fsync is OFF: fine for a benchmark, never for real data; writes cost \
             less here than on a durable server)",
        );
    }
    Ok(line)
}

/// The table of runs, one row each, columns aligned.
pub fn table(results: &[RunResult]) -> String {
    let header = [
        "preset",
        "run",
        "rows before",
        "rows after",
        "after %",
        "wall s",
        "load s",
        "compress s",
        "verify s",
        "write s",
        "verify %",
        "peak RSS MiB",
        "rows/s",
        "floor s (read+del+ins)",
        "x floor",
        "check",
    ];
    let cold = results.iter().any(|r| r.cold.is_some());
    let cold_header = [
        "memory",
        "read MB",
        "reads",
        "floor read MB",
        "floor reads",
        "x read",
        "del+ins read MB",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    if cold {
        rows[0].extend(cold_header.iter().map(|h| h.to_string()));
    }
    for r in results {
        let phase = |i: usize| r.phases.map_or("?".to_string(), |p| format!("{:.2}", p[i]));
        let floor = r.read_floor + r.delete_floor + r.insert_floor;
        rows.push(vec![
            r.preset.clone(),
            r.job.name(r.read_by),
            thousands(r.rows_before),
            thousands(r.rows_after),
            format!(
                "{:.2}%",
                100.0 * r.rows_after as f64 / r.rows_before.max(1) as f64
            ),
            format!("{:.2}", r.wall),
            phase(0),
            phase(1),
            phase(2),
            phase(3),
            r.phases.map_or("?".to_string(), |p| {
                format!("{:.1}%", 100.0 * p[2] / r.wall)
            }),
            format!("{:.1}", r.max_rss_kib as f64 / 1024.0),
            thousands((r.rows_before as f64 / r.wall) as i64),
            format!(
                "{floor:.2} ({:.2}+{:.2}+{:.2})",
                r.read_floor, r.delete_floor, r.insert_floor
            ),
            format!("{:.2}", r.wall / floor),
            r.check.clone(),
        ]);
        if let Some(c) = &r.cold {
            let mb = |bytes: u64| thousands((bytes as f64 / 1e6).round() as i64);
            rows.last_mut().expect("just pushed").extend([
                mib(c.cap),
                mb(c.reads.bytes),
                thousands(c.reads.ops as i64),
                mb(c.floor_reads.bytes),
                thousands(c.floor_reads.ops as i64),
                format!(
                    "{:.2}",
                    c.reads.bytes as f64 / c.floor_reads.bytes.max(1) as f64
                ),
                mb(c.write_reads.bytes),
            ]);
        } else if cold {
            rows.last_mut()
                .expect("just pushed")
                .extend(cold_header.iter().map(|_| "-".to_string()));
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // Text columns left, numbers right.
            if i < 2 || i == header.len() - 1 || i == header.len() {
                let _ = write!(line, "{cell:<w$}", w = widths[i]);
            } else {
                let _ = write!(line, "{cell:>w$}", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// What the table's columns mean, printed under it.
pub const LEGEND: &str = "\
runs: manual = synapse_compress_state -c on the biggest room; auto = synapse_auto_compressor -c 500
  through the whole database; nightly = synapse_auto_compressor -c 500 -n 100 on the database
  compressed to completion with about 2% new groups (its header line); then the --reader asked
  for and, when another one ran, the one that did (`auto:pass`: the tool chose the pass), and
  -jN (its workers read room by room whatever the reader: one run, without --reader).
columns: rows before/after = state_groups_state rows the run covers (the room for `manual`, the
  whole table for `auto`, every new group for `nightly`, whether its 100 chunks reach it or not),
  counted with SQL; load/compress/verify/write = the tool's own phase times (its `Time:` line);
  verify % = verify / wall; peak RSS = the tool's maximum resident set (wait4); rows/s = rows
  before / wall; floor = read + delete + insert, what any compressor with the same result must do: read = COPY of the rows the run covers TO STDOUT (binary,
  drained to a null sink, best of 2 on the same database just before the run); delete =
  DELETE of the old rows and edges of every group the run changed (edge or row count differs),
  insert = COPY of those groups' new rows and edges into the tables with Synapse's index in
  place, both timed on a fresh copy of the source; x floor = wall / floor (for `nightly` the
  read floor is the new groups' rows alone, not the older state they build on, so the ratio is
  high); check = group count, edge sanity and the resolved state (Synapse's query) of sampled
  groups (for `nightly` some new ones too), before vs after.
targets (reported, not enforced): manual <= 1.3x floor, auto <= 1.3x floor, verify < 20% of wall,
  peak RSS < 70 MiB for the 3m biggest room (~2M rows), < 1 GiB for the 20m biggest room;
  nightly: no reader slower than `rooms` (the reference tool's way), warm or cold.";

/// What the cold mode's columns mean (see `cold`).
pub const COLD_LEGEND: &str = "\
cold columns: every run and every floor starts with the server restarted, `sync` and the kernel's
  caches dropped, and the server (postmaster and backends) in a cgroup v1 memory group capped at
  `memory` (page cache included); read MB, reads = bytes and read operations the server's blkio
  group counted during the tool's run (1 MB = 10^6 bytes); the floor is measured cold as well:
  read = one cold COPY of the covered rows of state_groups_state and of their edges
  (floor read MB, floor reads: about the tables' size on disk), then delete and insert right
  after, with the cap lifted (del+ins read MB); x read = read MB / floor read MB. Times vary with what
  else runs on the machine; bytes and read operations barely do.";

/// `--count-only`: the rows each class of rooms got, generated in memory.
pub fn print_counts(short: &str, cfg: &MixConfig, rooms: &[MixRoom], secs: f64) {
    println!("preset {short}: generated in memory in {secs:.1}s");
    let mut start = 0;
    for class in &cfg.classes {
        let part = &rooms[start..start + class.rooms];
        start += class.rooms;
        let rows: usize = part.iter().map(|r| r.rows).sum();
        let max = part.iter().map(|r| r.rows).max().unwrap_or(0);
        println!(
            "  {} rooms x {} groups, {} members ({} at join): {} rows (largest room {})",
            class.rooms,
            class.groups_per_room,
            class.members,
            class.initial_members,
            thousands(rows as i64),
            thousands(max as i64)
        );
    }
    let rows: usize = rooms.iter().map(|r| r.rows).sum();
    let groups: usize = rooms.iter().map(|r| r.groups).sum();
    let snapshots: usize = rooms.iter().map(|r| r.snapshots).sum();
    println!(
        "  total: {} rooms, {} groups, {} rows, {} snapshots",
        rooms.len(),
        thousands(groups as i64),
        thousands(rows as i64),
        thousands(snapshots as i64)
    );
}
