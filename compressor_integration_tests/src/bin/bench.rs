//! `bench`: the workspace's benchmark. Run it with `scripts/bench.sh`, which
//! builds the release binaries and starts a throwaway PostgreSQL for it.
//!
//! For each preset it generates a database `bench_src` with the generator's
//! mixed-room data (`MixConfig`, streamed into PostgreSQL with binary `COPY`,
//! indexes built afterwards), then does each run on its own copy of it
//! (`CREATE DATABASE bench_run TEMPLATE bench_src`), so runs never see each
//! other's changes:
//!
//! - `manual`: `synapse_compress_state -p URL -r ROOM -c` on the room with the
//!   most rows;
//! - `auto`: `synapse_auto_compressor -p URL -c 500 -n N` with `N` large
//!   enough to go through the whole database.
//!
//! For each run it measures, on the same copy: the tool's wall time and peak
//! RSS (from `wait4`, in a small launcher process: see [`Launcher`]), its
//! own time per phase (its `Time: load ...` line),
//! rows before and after (counted with SQL), and the I/O floor: the time to
//! `COPY` the rows the run reads out to a null sink, plus the time to `COPY`
//! the rows it leaves into a fresh table with Synapse's index. It then checks
//! the result cheaply (group count, edge sanity, the resolved state of a
//! sample of groups read with Synapse's own query before and after) and
//! prints one table row per run.
//!
//! Nothing here asserts timings; it only reports them.

use clap::Parser;
use compressor_integration_tests::digest::{state_digest, Fnv128};
use compressor_integration_tests::generator::{generate_mix, write_mix, MixConfig, MixRoom};
use compressor_integration_tests::pg::{db_url, quote_ident, SCHEMA_SQL};
use compressor_integration_tests::synapse_state::for_each_state_synapse;
use postgres::{Client, NoTls};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The generated database every run is cloned from.
const SRC_DB: &str = "bench_src";
/// The clone a run works on.
const RUN_DB: &str = "bench_run";
/// The tables the generator fills (their indexes are built after loading).
const STATE_TABLES: &[&str] = &[
    "state_groups",
    "state_groups_state",
    "state_group_edges",
    "event_to_state_groups",
];

#[derive(Parser, Debug)]
#[command(about = "Benchmark the state compressor against generated Synapse-like data")]
struct Args {
    /// Base URL of a PostgreSQL server where we may create databases, without
    /// a database name (as printed by scripts/pg-throwaway.sh start)
    #[arg(long)]
    url: String,
    /// Data set: 200k, 3m or 20m (repeat for several)
    #[arg(long = "preset", default_values_t = vec!["3m".to_string()])]
    presets: Vec<String>,
    /// Runs to do, comma-separated: manual, auto
    #[arg(long, default_value = "manual,auto", value_delimiter = ',')]
    runs: Vec<String>,
    /// Directory holding synapse_compress_state and synapse_auto_compressor
    /// (default: the directory of this program, i.e. target/release)
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Chunk size for the automatic tool (-c)
    #[arg(long, default_value_t = 500)]
    chunk_size: u64,
    /// Seed for the generator (default: the preset's)
    #[arg(long)]
    seed: Option<u64>,
    /// Reuse bench_src when it already holds this preset and seed
    #[arg(long)]
    reuse: bool,
    /// Keep the last run's database (bench_run) instead of dropping it
    #[arg(long)]
    keep: bool,
    /// Groups whose resolved state is compared before and after each run
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Write each tool's stdout and stderr into this directory
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Only generate in memory and print the row counts (no database)
    #[arg(long)]
    count_only: bool,
}

type Res<T> = Result<T, String>;

fn pg<T>(what: &str, r: Result<T, postgres::Error>) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn say(msg: &str) {
    eprintln!("bench: {msg}");
}

/// `200k`, `3m`, `20m` (or the generator's names) to the short name and the
/// configuration.
fn preset(name: &str, seed: Option<u64>) -> Res<(String, MixConfig)> {
    let short = name
        .strip_prefix("bench")
        .unwrap_or(name)
        .to_ascii_lowercase();
    let mut cfg = MixConfig::preset(&format!("bench{short}"))
        .ok_or_else(|| format!("unknown preset {name:?} (expected 200k, 3m or 20m)"))?;
    if let Some(seed) = seed {
        cfg.base.seed = seed;
    }
    Ok((short, cfg))
}

fn connect(base: &str, db: &str) -> Res<Client> {
    let url = db_url(base, db);
    Client::connect(&url, NoTls).map_err(|e| format!("cannot connect to {url}: {e}"))
}

fn count(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Res<i64> {
    Ok(pg(sql, client.query_one(sql, params))?.get(0))
}

/// A string literal (standard_conforming_strings is on by default).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn thousands(n: i64) -> String {
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

// ---------------------------------------------------------------------------
// The generated database

/// What is in `bench_src`.
struct Source {
    key: String,
    rooms: i64,
    groups: i64,
    rows: i64,
    snapshots: i64,
    biggest_room: String,
    biggest_groups: i64,
    biggest_rows: i64,
    /// Seconds: generating and copying, building indexes, vacuum+analyze
    /// (none when reused).
    build: Option<[f64; 3]>,
    /// Digest of the resolved state of each sampled group.
    sample: BTreeMap<i64, String>,
}

/// What `bench_src` holds, as its comment: the preset, the seed and a
/// digest of the whole configuration (so a changed preset is regenerated).
fn source_key(short: &str, cfg: &MixConfig) -> String {
    let mut h = Fnv128::default();
    h.write_str(&format!("{cfg:?}"));
    format!(
        "bench preset={short} seed={} config={:08x}",
        cfg.base.seed,
        h.finish() >> 96
    )
}

/// Creates `bench_src` with Synapse's schema and the preset's data.
fn build_source(base: &str, key: &str, cfg: &MixConfig) -> Res<[f64; 3]> {
    let mut admin = connect(base, "postgres")?;
    pg(
        "dropping bench_src",
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {SRC_DB} WITH (FORCE)")),
    )?;
    pg(
        "creating bench_src",
        admin.batch_execute(&format!(
            "CREATE DATABASE {SRC_DB} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )),
    )?;
    let mut c = connect(base, SRC_DB)?;
    pg("loading Synapse's schema", c.batch_execute(SCHEMA_SQL))?;

    // Loading is much faster without indexes: note their definitions, drop
    // them, and build them again once the rows are in.
    let tables: Vec<String> = STATE_TABLES.iter().map(|t| t.to_string()).collect();
    let constraints = pg(
        "reading constraints",
        c.query(
            "SELECT t.relname::text, k.conname::text, pg_get_constraintdef(k.oid)
             FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
             WHERE t.relname = ANY($1) AND k.contype IN ('p', 'u')",
            &[&tables],
        ),
    )?;
    let indexes = pg(
        "reading indexes",
        c.query(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
             WHERE t.relname = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
            &[&tables],
        ),
    )?;
    let mut rebuild = Vec::new();
    for row in &constraints {
        let (table, name, def): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        pg(
            "dropping a constraint",
            c.batch_execute(&format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                quote_ident(&table),
                quote_ident(&name)
            )),
        )?;
        rebuild.push(format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {def}",
            quote_ident(&table),
            quote_ident(&name)
        ));
    }
    for row in &indexes {
        let (name, def): (String, String) = (row.get(0), row.get(1));
        pg(
            "dropping an index",
            c.batch_execute(&format!("DROP INDEX {name}")),
        )?;
        rebuild.push(def);
    }

    say(&format!(
        "generating {} rooms, {} state groups into {SRC_DB}",
        thousands(cfg.room_count() as i64),
        thousands(cfg.group_count() as i64)
    ));
    let started = Instant::now();
    let mut tx = pg("BEGIN", c.transaction())?;
    // Truncating in the loading transaction lets COPY store the rows frozen.
    pg(
        "TRUNCATE",
        tx.batch_execute(&format!("TRUNCATE {}", STATE_TABLES.join(", "))),
    )?;
    pg(
        "writing the generated groups",
        write_mix(&mut tx, cfg, true),
    )?;
    pg("COMMIT", tx.commit())?;
    let generated = started.elapsed().as_secs_f64();

    say("building indexes");
    let started = Instant::now();
    pg(
        "SET",
        c.batch_execute(
            "SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 2",
        ),
    )?;
    for statement in &rebuild {
        pg(statement, c.batch_execute(statement))?;
    }
    let indexed = started.elapsed().as_secs_f64();
    let started = Instant::now();
    pg(
        "VACUUM ANALYZE",
        c.batch_execute(&format!("VACUUM (ANALYZE) {}", STATE_TABLES.join(", "))),
    )?;
    let analyzed = started.elapsed().as_secs_f64();
    pg(
        "COMMENT",
        c.batch_execute(&format!("COMMENT ON DATABASE {SRC_DB} IS {}", literal(key))),
    )?;
    Ok([generated, indexed, analyzed])
}

/// The comment of `bench_src`, if it exists.
fn source_comment(base: &str) -> Res<Option<String>> {
    let mut admin = connect(base, "postgres")?;
    let row = pg(
        "reading bench_src's comment",
        admin.query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&SRC_DB],
        ),
    )?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
}

/// Makes (or reuses) `bench_src` and reads what is in it.
fn prepare_source(args: &Args, base: &str, short: &str, cfg: &MixConfig) -> Res<Source> {
    let key = source_key(short, cfg);
    let build = if args.reuse && source_comment(base)?.as_deref() == Some(key.as_str()) {
        say(&format!("reusing {SRC_DB} ({key})"));
        None
    } else {
        Some(build_source(base, &key, cfg)?)
    };
    let mut c = connect(base, SRC_DB)?;
    let biggest = pg(
        "finding the biggest room",
        c.query_one(
            "SELECT room_id, count(*) FROM state_groups_state GROUP BY room_id
             ORDER BY 2 DESC, 1 LIMIT 1",
            &[],
        ),
    )?;
    let biggest_room: String = biggest.get(0);
    let mut source = Source {
        key,
        rooms: count(
            &mut c,
            "SELECT count(DISTINCT room_id) FROM state_groups",
            &[],
        )?,
        groups: count(&mut c, "SELECT count(*) FROM state_groups", &[])?,
        rows: count(&mut c, "SELECT count(*) FROM state_groups_state", &[])?,
        snapshots: count(
            &mut c,
            "SELECT count(*) FROM state_groups g
             WHERE NOT EXISTS (SELECT 1 FROM state_group_edges e WHERE e.state_group = g.id)",
            &[],
        )?,
        biggest_groups: count(
            &mut c,
            "SELECT count(*) FROM state_groups WHERE room_id = $1",
            &[&biggest_room],
        )?,
        biggest_rows: biggest.get(1),
        biggest_room,
        build,
        sample: BTreeMap::new(),
    };
    if args.samples > 0 {
        say(&format!(
            "recording the state of {} sampled groups",
            args.samples
        ));
        let ids = sample_groups(&mut c, &source.biggest_room, args.samples)?;
        source.sample = digests(&mut c, &ids)?;
    }
    Ok(source)
}

/// A third of the sample from the biggest room, the rest from anywhere;
/// deterministic.
fn sample_groups(c: &mut Client, biggest_room: &str, n: usize) -> Res<Vec<i64>> {
    let ids = |c: &mut Client, room: Option<&str>| -> Res<Vec<i64>> {
        let rows = pg(
            "reading group ids",
            c.query(
                "SELECT id FROM state_groups WHERE $1::text IS NULL OR room_id = $1 ORDER BY id",
                &[&room],
            ),
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    };
    let mut rng = SmallRng::seed_from_u64(7);
    let mut chosen = BTreeSet::new();
    let big = ids(c, Some(biggest_room))?;
    let all = ids(c, None)?;
    for (pool, want) in [(&big, n / 3), (&all, n - n / 3)] {
        let target = (chosen.len() + want).min(all.len());
        let mut tries = 0;
        while chosen.len() < target && !pool.is_empty() && tries < 100 * n {
            chosen.insert(pool[rng.random_range(0..pool.len())]);
            tries += 1;
        }
    }
    Ok(chosen.into_iter().collect())
}

fn digests(c: &mut Client, ids: &[i64]) -> Res<BTreeMap<i64, String>> {
    let mut out = BTreeMap::new();
    pg(
        "reading states with Synapse's query",
        for_each_state_synapse(c, ids, |group, state| {
            out.insert(group, state_digest(&state));
        }),
    )?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Measuring

/// A finished child process.
struct ChildRun {
    command: String,
    /// Exit code, or None when killed by a signal.
    code: Option<i32>,
    wall: f64,
    /// ru_maxrss: peak resident set, KiB.
    max_rss_kib: i64,
    stdout: String,
    stderr: String,
}

/// The first argument that makes this program a [`Launcher`].
const LAUNCHER_ARG: &str = "--internal-launcher";

/// Starts the tools on the benchmark's behalf, from a process that stays
/// small.
///
/// Linux charges a new program with the resident set of the process it was
/// forked from (exec records the old address space's size in `ru_maxrss`),
/// so a tool started directly by this process, after it has generated
/// millions of rows, would be reported as at least as big as this process.
/// The launcher is a second copy of this program, started before anything
/// else while it is a few MiB; it starts each tool, waits for it with
/// `wait4` and reports its exit status, wall time and peak RSS.
///
/// Protocol, over its stdin and stdout: a request is a line with the number
/// of fields, then each field as a line with its length in bytes followed by
/// the bytes: program, stdout file, stderr file, arguments. The answer is a
/// line `ok CODE MAX_RSS_KIB WALL_SECONDS` (CODE -1 for a signal) or
/// `error MESSAGE`.
struct Launcher {
    child: std::process::Child,
    to: Option<std::process::ChildStdin>,
    from: std::io::BufReader<std::process::ChildStdout>,
    /// The launcher's own peak RSS, KiB (the most a tool can be charged
    /// for it).
    own_rss_kib: i64,
}

impl Launcher {
    fn start() -> Res<Launcher> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this program to start its launcher: {e}"))?;
        let mut child = Command::new(exe)
            .arg(LAUNCHER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the launcher: {e}"))?;
        let to = child.stdin.take().ok_or("the launcher has no stdin")?;
        let from =
            std::io::BufReader::new(child.stdout.take().ok_or("the launcher has no stdout")?);
        let mut launcher = Launcher {
            child,
            to: Some(to),
            from,
            own_rss_kib: 0,
        };
        // A no-op request: once it is answered the launcher is fully up.
        launcher.run(
            Path::new("true"),
            &[],
            Path::new("/dev/null"),
            Path::new("/dev/null"),
        )?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", launcher.child.id()))
            .unwrap_or_default();
        launcher.own_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Ok(launcher)
    }

    /// Runs `program args` with stdout and stderr into the given files;
    /// returns (exit code or None for a signal, wall seconds, peak RSS KiB).
    fn run(
        &mut self,
        program: &Path,
        args: &[String],
        stdout: &Path,
        stderr: &Path,
    ) -> Res<(Option<i32>, f64, i64)> {
        use std::os::unix::ffi::OsStrExt;
        let mut fields: Vec<Vec<u8>> = vec![
            program.as_os_str().as_bytes().to_vec(),
            stdout.as_os_str().as_bytes().to_vec(),
            stderr.as_os_str().as_bytes().to_vec(),
        ];
        fields.extend(args.iter().map(|a| a.as_bytes().to_vec()));
        let mut request = format!("{}\n", fields.len()).into_bytes();
        for field in &fields {
            request.extend_from_slice(format!("{}\n", field.len()).as_bytes());
            request.extend_from_slice(field);
        }
        let lost = |e: std::io::Error| format!("lost the launcher: {e}");
        let to = self.to.as_mut().ok_or("the launcher is closed")?;
        to.write_all(&request).map_err(lost)?;
        to.flush().map_err(lost)?;
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut self.from, &mut answer).map_err(lost)?;
        let words: Vec<&str> = answer.split_whitespace().collect();
        match words.as_slice() {
            ["ok", code, rss, wall] => {
                let bad = || format!("bad answer from the launcher: {answer:?}");
                let code: i32 = code.parse().map_err(|_| bad())?;
                Ok((
                    (code >= 0).then_some(code),
                    wall.parse().map_err(|_| bad())?,
                    rss.parse().map_err(|_| bad())?,
                ))
            }
            [] => Err("the launcher stopped".to_string()),
            _ => Err(answer.trim().trim_start_matches("error ").to_string()),
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing its stdin ends it.
        drop(self.to.take());
        let _ = self.child.wait();
    }
}

/// The launcher's side (this program started with [`LAUNCHER_ARG`]).
fn launcher_main() -> ExitCode {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    while let Some(fields) = read_request(&mut input) {
        let answer = match launch(&fields) {
            Ok((code, rss, wall)) => format!("ok {code} {rss} {wall}\n"),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        if output
            .write_all(answer.as_bytes())
            .and_then(|()| output.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// One request (None at the end of the input).
fn read_request(input: &mut impl std::io::BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if input.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n: usize = line.trim().parse().ok()?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        input.read_line(&mut line).ok()?;
        let mut field = vec![0; line.trim().parse().ok()?];
        input.read_exact(&mut field).ok()?;
        fields.push(field);
    }
    Some(fields)
}

/// Runs one request's program; (exit code or -1 for a signal, peak RSS KiB,
/// wall seconds).
fn launch(fields: &[Vec<u8>]) -> Res<(i32, i64, f64)> {
    use std::os::unix::ffi::OsStrExt;
    let os = |bytes: &Vec<u8>| std::ffi::OsStr::from_bytes(bytes).to_os_string();
    let [program, stdout, stderr, args @ ..] = fields else {
        return Err("a request needs a program and two files".to_string());
    };
    let file = |path: &Vec<u8>| {
        std::fs::File::create(os(path))
            .map_err(|e| format!("cannot create {}: {e}", String::from_utf8_lossy(path)))
    };
    let started = Instant::now();
    let child = Command::new(os(program))
        .args(args.iter().map(os))
        .stdin(Stdio::null())
        .stdout(file(stdout)?)
        .stderr(file(stderr)?)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
        )
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", String::from_utf8_lossy(program)))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (`Child::wait` is never
        // called); both pointers are to live, writable locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!(
                "waiting for {}: {e}",
                String::from_utf8_lossy(program)
            ));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // Reaped already: dropping the handle neither waits nor kills.
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss, wall))
}

/// Runs `program args` through the launcher, its output into
/// `<log_dir>/<name>.stdout` and `.stderr` (or temporary files).
fn run_measured(
    launcher: &mut Launcher,
    log_dir: Option<&Path>,
    name: &str,
    program: &Path,
    args: &[String],
) -> Res<ChildRun> {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let (dir, keep) = match log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            (dir.to_path_buf(), true)
        }
        None => (std::env::temp_dir(), false),
    };
    let prefix = if keep {
        name.to_string()
    } else {
        format!("bench-{}-{name}", std::process::id())
    };
    let out_path = dir.join(format!("{prefix}.stdout"));
    let err_path = dir.join(format!("{prefix}.stderr"));
    let (code, wall, max_rss_kib) = launcher.run(program, args, &out_path, &err_path)?;
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap_or_default();
        if !keep {
            let _ = std::fs::remove_file(path);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(ChildRun {
        command,
        code,
        wall,
        max_rss_kib,
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

/// The four times of a `Time: load 1.00s, compress 2.00s, verify 0.50s,
/// write 3.00s` line.
fn parse_phases(text: &str) -> Option<[f64; 4]> {
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.find("Time: load ").map(|i| &l[i..]))?;
    let mut out = [0.0; 4];
    for (slot, name) in out
        .iter_mut()
        .zip(["load ", "compress ", "verify ", "write "])
    {
        let rest = &line[line.find(name)? + name.len()..];
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        *slot = number.parse().ok()?;
    }
    Some(out)
}

/// The rest of the first line containing `marker`, from the marker on.
fn line_with<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.find(marker).map(|i| l[i..].trim_end()))
}

/// Seconds to run `copy_query` (a `COPY ... TO STDOUT`) and drain its
/// output into a null sink; the best of `tries`.
fn read_floor(c: &mut Client, copy_query: &str, tries: usize) -> Res<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..tries.max(1) {
        let started = Instant::now();
        let mut reader = pg("COPY TO", c.copy_out(copy_query))?;
        std::io::copy(&mut reader, &mut std::io::sink())
            .map_err(|e| format!("reading {copy_query}: {e}"))?;
        drop(reader);
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Reads the rows selected by `where_clause` (binary COPY, all five
/// columns), then times copying them into a fresh table shaped like
/// `state_groups_state` with Synapse's index. Returns (seconds, rows).
fn write_floor(c: &mut Client, where_clause: &str) -> Res<f64> {
    let mut bytes = Vec::new();
    {
        let mut reader = pg(
            "COPY TO",
            c.copy_out(&format!(
                "COPY (SELECT state_group, room_id, type, state_key, event_id \
                 FROM state_groups_state {where_clause}) TO STDOUT (FORMAT binary)"
            )),
        )?;
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the rows after the run: {e}"))?;
    }
    pg(
        "creating the floor table",
        c.batch_execute(
            "DROP TABLE IF EXISTS bench_floor;
             CREATE TABLE bench_floor (
                 state_group BIGINT NOT NULL,
                 room_id TEXT NOT NULL,
                 type TEXT NOT NULL,
                 state_key TEXT NOT NULL,
                 event_id TEXT NOT NULL
             );
             CREATE INDEX bench_floor_type_idx ON bench_floor (state_group, type, state_key);",
        ),
    )?;
    let started = Instant::now();
    let mut writer = pg(
        "COPY FROM",
        c.copy_in("COPY bench_floor FROM STDIN (FORMAT binary)"),
    )?;
    writer
        .write_all(&bytes)
        .map_err(|e| format!("writing the floor table: {e}"))?;
    pg("finishing COPY FROM", writer.finish())?;
    let secs = started.elapsed().as_secs_f64();
    pg(
        "dropping the floor table",
        c.batch_execute("DROP TABLE bench_floor"),
    )?;
    Ok(secs)
}

/// Group count, edge sanity and the sampled states, after a run.
fn check_after(c: &mut Client, source: &Source) -> Res<String> {
    let mut problems = Vec::new();
    let groups = count(c, "SELECT count(*) FROM state_groups", &[])?;
    if groups != source.groups {
        problems.push(format!("{} groups, expected {}", groups, source.groups));
    }
    let forward = count(
        c,
        "SELECT count(*) FROM state_group_edges WHERE prev_state_group >= state_group",
        &[],
    )?;
    if forward > 0 {
        problems.push(format!("{forward} edges to a higher id"));
    }
    let doubled = count(
        c,
        "SELECT count(*) FROM (SELECT 1 FROM state_group_edges
         GROUP BY state_group HAVING count(*) > 1) x",
        &[],
    )?;
    if doubled > 0 {
        problems.push(format!("{doubled} groups with several edges"));
    }
    let ids: Vec<i64> = source.sample.keys().copied().collect();
    let after = digests(c, &ids)?;
    let changed = source
        .sample
        .iter()
        .filter(|(g, d)| after.get(*g) != Some(*d))
        .count();
    if changed > 0 {
        problems.push(format!("{changed} of {} sampled states changed", ids.len()));
    }
    Ok(if problems.is_empty() {
        match ids.len() {
            0 => "ok (no sample)".to_string(),
            n => format!("ok ({n} states)"),
        }
    } else {
        format!("FAILED: {}", problems.join("; "))
    })
}

fn clone_source(base: &str) -> Res<()> {
    let mut admin = connect(base, "postgres")?;
    pg(
        "dropping bench_run",
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {RUN_DB} WITH (FORCE)")),
    )?;
    // FILE_COPY copies the files instead of WAL-logging every page.
    let fast = format!("CREATE DATABASE {RUN_DB} TEMPLATE {SRC_DB} STRATEGY FILE_COPY");
    if admin.batch_execute(&fast).is_err() {
        pg(
            "cloning bench_src",
            admin.batch_execute(&format!("CREATE DATABASE {RUN_DB} TEMPLATE {SRC_DB}")),
        )?;
    }
    Ok(())
}

fn drop_run_db(base: &str) -> Res<()> {
    let mut admin = connect(base, "postgres")?;
    pg(
        "dropping bench_run",
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {RUN_DB} WITH (FORCE)")),
    )
}

/// One row of the table.
struct RunResult {
    preset: String,
    run: String,
    rows_before: i64,
    rows_after: i64,
    wall: f64,
    phases: Option<[f64; 4]>,
    max_rss_kib: i64,
    read_floor: f64,
    write_floor: f64,
    check: String,
    notes: Vec<String>,
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn do_run(
    args: &Args,
    launcher: &mut Launcher,
    base: &str,
    bin_dir: &Path,
    short: &str,
    source: &Source,
    run: &str,
) -> Res<RunResult> {
    say(&format!("{short}/{run}: cloning {SRC_DB}"));
    clone_source(base)?;
    let url = db_url(base, RUN_DB);
    let mut c = connect(base, RUN_DB)?;
    pg("CHECKPOINT", c.batch_execute("CHECKPOINT"))?;
    let mut notes = Vec::new();

    let (where_clause, program, tool_args) = match run {
        "manual" => {
            let room = &source.biggest_room;
            let clause = format!(
                "WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = {})",
                literal(room)
            );
            let tool_args = vec![
                "-p".to_string(),
                url.clone(),
                "-r".to_string(),
                room.clone(),
                "-c".to_string(),
                "--no-progress".to_string(),
            ];
            (clause, "synapse_compress_state", tool_args)
        }
        "auto" => {
            let chunks = count(
                &mut c,
                "SELECT COALESCE(sum(ceil(n / $1::float8)), 0)::bigint
                 FROM (SELECT count(*) AS n FROM state_groups GROUP BY room_id) x",
                &[&(args.chunk_size as f64)],
            )?;
            // Every room takes ceil(groups / chunk) chunks; leave room to spare.
            let n = chunks * 2 + 10;
            let tool_args = vec![
                "-p".to_string(),
                url.clone(),
                "-c".to_string(),
                args.chunk_size.to_string(),
                "-n".to_string(),
                n.to_string(),
                "--no-progress".to_string(),
            ];
            (String::new(), "synapse_auto_compressor", tool_args)
        }
        other => return Err(format!("unknown run {other:?} (expected manual or auto)")),
    };
    let rows_before = count(
        &mut c,
        &format!("SELECT count(*) FROM state_groups_state {where_clause}"),
        &[],
    )?;

    say(&format!("{short}/{run}: measuring the read floor"));
    let read = read_floor(
        &mut c,
        &format!(
            "COPY (SELECT state_group, type, state_key, event_id FROM state_groups_state \
             {where_clause}) TO STDOUT (FORMAT binary)"
        ),
        2,
    )?;

    let program_path = bin_dir.join(format!("{program}{}", std::env::consts::EXE_SUFFIX));
    if !program_path.is_file() {
        return Err(format!(
            "{} not found: build with `cargo build --release --workspace --bins` or pass --bin-dir",
            program_path.display()
        ));
    }
    say(&format!("{short}/{run}: running {program}"));
    let load_before = load_average();
    let tool = run_measured(
        launcher,
        args.log_dir.as_deref(),
        &format!("{short}-{run}"),
        &program_path,
        &tool_args,
    )?;
    let shown: Vec<&str> = tool_args
        .iter()
        .map(|a| if *a == url { "URL" } else { a.as_str() })
        .collect();
    notes.push(format!(
        "{program} {} (load average before: {load_before}, after: {})",
        shown.join(" "),
        load_average()
    ));
    if tool.code != Some(0) {
        return Err(format!(
            "{} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            tool.command,
            tool.code
                .map_or("killed by a signal".to_string(), |c| format!("exit {c}")),
            tail(&tool.stdout, 30),
            tail(&tool.stderr, 30)
        ));
    }
    let all_output = format!("{}\n{}", tool.stdout, tool.stderr);
    let phases = parse_phases(&all_output);
    match line_with(&all_output, "Time: load ") {
        Some(line) => notes.push(format!("the tool's own figures: {line}")),
        None => notes.push("no `Time: load ...` line in the tool's output".to_string()),
    }
    match run {
        "manual" => {
            for marker in [
                "Number of rows in current table:",
                "Number of rows after compression:",
            ] {
                if let Some(line) = line_with(&tool.stdout, marker) {
                    notes.push(line.to_string());
                }
            }
        }
        _ => {
            if let Some(line) = line_with(&tool.stderr, "Finished: ") {
                notes.push(line.to_string());
            }
            if !tool.stderr.contains("nothing left to do") {
                notes.push(format!(
                    "did not report finishing the database ({})",
                    tool_args.join(" ")
                ));
            }
        }
    }

    let rows_after = count(
        &mut c,
        &format!("SELECT count(*) FROM state_groups_state {where_clause}"),
        &[],
    )?;
    say(&format!("{short}/{run}: measuring the write floor"));
    let write = write_floor(&mut c, &where_clause)?;
    say(&format!("{short}/{run}: checking the result"));
    let check = check_after(&mut c, source)?;
    drop(c);
    if !args.keep {
        drop_run_db(base)?;
    }
    Ok(RunResult {
        preset: short.to_string(),
        run: run.to_string(),
        rows_before,
        rows_after,
        wall: tool.wall,
        phases,
        max_rss_kib: tool.max_rss_kib,
        read_floor: read,
        write_floor: write,
        check,
        notes,
    })
}

// ---------------------------------------------------------------------------
// Reporting

/// The 1-minute load average (other work on the machine skews timings).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn machine_line() -> String {
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

fn pg_line(base: &str) -> Res<String> {
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

fn table(results: &[RunResult]) -> String {
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
        "floor s (read+write)",
        "x floor",
        "check",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in results {
        let phase = |i: usize| r.phases.map_or("?".to_string(), |p| format!("{:.2}", p[i]));
        let floor = r.read_floor + r.write_floor;
        rows.push(vec![
            r.preset.clone(),
            r.run.clone(),
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
            format!("{floor:.2} ({:.2}+{:.2})", r.read_floor, r.write_floor),
            format!("{:.2}", r.wall / floor),
            r.check.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
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
            if i < 2 || i == header.len() - 1 {
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

const LEGEND: &str = "\
columns: rows before/after = state_groups_state rows the run covers (the room for `manual`, the
  whole table for `auto`), counted with SQL; load/compress/verify/write = the tool's own phase
  times (its `Time:` line); verify % = verify / wall; peak RSS = the tool's maximum resident set
  (wait4); rows/s = rows before / wall; floor = read + write: read = COPY of the rows the run
  covers TO STDOUT (binary, drained to a null sink, best of 2 on the same database just before
  the run), write = COPY of the rows left after the run into a fresh table with Synapse's index
  (state_group, type, state_key); x floor = wall / floor; check = group count, edge sanity and
  the resolved state (Synapse's query) of sampled groups, before vs after.
targets (reported, not enforced): manual <= 2x floor, auto <= 3x floor, verify < 20% of wall,
  peak RSS < 70 MiB for the 3m biggest room (~2M rows), < 1 GiB for the 20m biggest room.";

fn run(args: Args) -> Res<()> {
    if args.count_only {
        for name in &args.presets {
            let (short, cfg) = preset(name, args.seed)?;
            let started = Instant::now();
            let rooms = generate_mix(&cfg, |_| Ok::<(), ()>(()))
                .map_err(|()| "generation failed".to_string())?;
            print_counts(&short, &cfg, &rooms, started.elapsed().as_secs_f64());
        }
        return Ok(());
    }
    if args.chunk_size < 1 {
        return Err("--chunk-size must be at least 1".to_string());
    }
    // First, while this process is small (see Launcher).
    let mut launcher = Launcher::start()?;
    let base = args.url.trim().to_string();
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's directory: {e}"))?
            .parent()
            .ok_or("this program has no directory")?
            .to_path_buf(),
    };
    let presets: Vec<(String, MixConfig)> = args
        .presets
        .iter()
        .map(|p| preset(p, args.seed))
        .collect::<Res<_>>()?;
    for run in &args.runs {
        if run != "manual" && run != "auto" {
            return Err(format!("unknown run {run:?} (expected manual or auto)"));
        }
    }

    let mut header = String::new();
    let settings = pg_line(&base)?;
    let mut results = Vec::new();
    for (short, cfg) in &presets {
        let source = prepare_source(&args, &base, short, cfg)?;
        let built = match source.build {
            Some([generated, indexed, analyzed]) => format!(
                "built in {:.1}s (generate+COPY {generated:.1}s, indexes {indexed:.1}s, vacuum+analyze {analyzed:.1}s)",
                generated + indexed + analyzed
            ),
            None => "reused".to_string(),
        };
        let _ = writeln!(
            header,
            "data {short} ({}): {} rooms, {} groups, {} rows, {} snapshots; biggest room {}: {} groups, {} rows; {built}",
            source.key,
            thousands(source.rooms),
            thousands(source.groups),
            thousands(source.rows),
            thousands(source.snapshots),
            source.biggest_room,
            thousands(source.biggest_groups),
            thousands(source.biggest_rows),
        );
        for run in &args.runs {
            let result = do_run(&args, &mut launcher, &base, &bin_dir, short, &source, run)?;
            eprintln!("{}", table(std::slice::from_ref(&result)));
            results.push(result);
        }
    }

    println!(
        "{}\n{settings}\ntools started by a helper process of {:.1} MiB (a tool's peak RSS can include at most that much of it)\n{header}",
        machine_line(),
        launcher.own_rss_kib as f64 / 1024.0
    );
    print!("{}", table(&results));
    println!();
    for r in &results {
        for note in &r.notes {
            println!("{} {}: {note}", r.preset, r.run);
        }
    }
    println!("{LEGEND}");
    if results.iter().any(|r| r.check.starts_with("FAILED")) {
        return Err("a run changed the state of some group (see the check column)".to_string());
    }
    Ok(())
}

fn print_counts(short: &str, cfg: &MixConfig, rooms: &[MixRoom], secs: f64) {
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

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(LAUNCHER_ARG)) {
        return launcher_main();
    }
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
