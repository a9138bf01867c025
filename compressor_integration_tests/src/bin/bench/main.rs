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
//!   enough to go through the whole database, once per `--reader` in
//!   `--readers` and per `--jobs` value (with the pass, several jobs write
//!   its chunks on as many connections);
//! - `nightly` (`--nightly`): `synapse_auto_compressor -p URL -c 500 -n 100`,
//!   the playbooks' nightly run, on a copy of `bench_compressed` (`bench_src`
//!   compressed to completion, then about 2% more groups: see `nightly`),
//!   once per reader.
//!
//! For each run it measures, on the same copy: the tool's wall time and peak
//! RSS (from `wait4`, in a small launcher process: see [`launcher::Launcher`]), its
//! own time per phase (its `Time: load ...` line), rows before and after
//! (counted with SQL), and the honest I/O floor (see `floor`): reading the
//! rows the run reads, deleting the old rows and edges of the groups it
//! changed, and inserting their new ones with Synapse's index in place. It
//! then checks the result cheaply (group count, edge sanity, the resolved state of a
//! sample of groups read with Synapse's own query before and after) and
//! prints one table row per run.
//!
//! Nothing here asserts timings; it only reports them.
//!
//! This file holds the arguments, the main loop and the small helpers every
//! part uses; the parts:
//! - `launcher`: how the tools are started and their peak memory measured;
//! - `source`: generating (or reusing) `bench_src` and describing it;
//! - `run`: one run of a tool on a clone of it;
//! - `floor`: the honest I/O floor, measured with PostgreSQL alone;
//! - `checks`: the check after each run;
//! - `report`: the table, the machine and server lines, the legend;
//! - `nightly`: making `bench_compressed` for the nightly runs;
//! - `cold`: `--cold`, the runs measured with the server's memory capped
//!   and its caches dropped, and its disk reads counted.

mod checks;
mod cold;
mod floor;
mod launcher;
mod nightly;
mod report;
mod run;
mod source;

use clap::Parser;
use cold::{parse_size, Cold};
use compressor_integration_tests::generator::{generate_mix, MixConfig};
use compressor_integration_tests::pg::db_url;
use launcher::{Launcher, LAUNCHER_ARG};
use postgres::{Client, NoTls};
use report::thousands;
use run::{do_run, ColdRun, Job, Reader, RunSettings, Tool};
use source::{prepare_source, Source};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Runs to do, comma-separated: manual, auto, nightly
    #[arg(long, value_enum, default_value = "manual,auto", value_delimiter = ',')]
    runs: Vec<Tool>,
    /// Add the nightly run (`-n 100` on a database compressed already, with
    /// about 2% new groups) to --runs
    #[arg(long)]
    nightly: bool,
    /// The automatic tool's readers (--reader), comma-separated: one `auto`
    /// run per reader and --jobs value, and one `nightly` run each
    #[arg(long, value_enum, default_value = "auto", value_delimiter = ',')]
    readers: Vec<Reader>,
    /// Directory holding synapse_compress_state and synapse_auto_compressor
    /// (default: the directory of this program, i.e. target/release)
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Worker counts for the automatic tool (--jobs), comma-separated: one
    /// `auto` run each
    #[arg(long, default_value = "1", value_delimiter = ',')]
    jobs: Vec<u32>,
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
    /// Cold mode: measure every run with the server's memory capped at each
    /// of these sizes (e.g. 256MiB,1GiB), caches dropped before it, and its
    /// disk reads counted; needs --cgroup and --restart-server (use
    /// `scripts/bench.sh --cold SIZES`)
    #[arg(long, value_delimiter = ',')]
    cold: Vec<String>,
    /// Cold mode: the name of the server's cgroup v1 memory and blkio groups
    #[arg(long, requires = "cold")]
    cgroup: Option<String>,
    /// Cold mode: a program that restarts the server inside those groups
    #[arg(long, requires = "cold")]
    restart_server: Option<PathBuf>,
}

/// Every failure ends the benchmark with a one-line message.
type Res<T> = Result<T, String>;

/// A PostgreSQL result, its error said with what was being done.
fn pg<T>(what: &str, r: Result<T, postgres::Error>) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Progress, on stderr (the table goes to stdout).
fn say(msg: &str) {
    eprintln!("bench: {msg}");
}

fn connect(base: &str, db: &str) -> Res<Client> {
    let url = db_url(base, db);
    Client::connect(&url, NoTls).map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// The single number `sql` returns.
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

fn run(args: Args) -> Res<()> {
    if args.count_only {
        return count_only(&args);
    }
    if args.chunk_size < 1 {
        return Err("--chunk-size must be at least 1".to_string());
    }
    let cold = cold_mode(&args)?;
    // First, while this process is small (see Launcher).
    let mut launcher = Launcher::start()?;
    let settings = RunSettings {
        base: args.url.trim().to_string(),
        bin_dir: match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => own_dir()?,
        },
        chunk_size: args.chunk_size,
        keep: args.keep,
        log_dir: args.log_dir.clone(),
    };
    let presets: Vec<(String, MixConfig)> = args
        .presets
        .iter()
        .map(|p| preset(p, args.seed))
        .collect::<Res<_>>()?;

    let mut runs = args.runs.clone();
    if args.nightly && !runs.contains(&Tool::Nightly) {
        runs.push(Tool::Nightly);
    }

    let mut header = String::new();
    let server = report::pg_line(&settings.base)?;
    let mut results = Vec::new();
    for (short, cfg) in &presets {
        let source = prepare_source(&settings.base, short, cfg, args.reuse, args.samples)?;
        let _ = writeln!(header, "{}", describe(&source));
        let compressed = match runs.contains(&Tool::Nightly) {
            true => {
                let (compressed, line) = nightly::prepare_compressed(
                    &settings,
                    &mut launcher,
                    &source,
                    cfg,
                    args.reuse,
                    args.samples,
                )?;
                let _ = writeln!(header, "{line}");
                Some(compressed)
            }
            false => None,
        };
        for &tool in &runs {
            let from = match (tool, &compressed) {
                (Tool::Nightly, Some(compressed)) => compressed,
                _ => &source,
            };
            for job in jobs_of(tool, &args) {
                let colds: Vec<Option<ColdRun>> = match &cold {
                    Some(cold) => cold
                        .caps
                        .iter()
                        .map(|&cap| Some(ColdRun { cold, cap }))
                        .collect(),
                    None => vec![None],
                };
                for cold in colds {
                    let result = do_run(&settings, &mut launcher, from, job, cold)?;
                    eprintln!("{}", report::table(std::slice::from_ref(&result)));
                    results.push(result);
                }
            }
        }
    }

    println!(
        "{}\n{server}\ntools started by a helper process of {:.1} MiB (a tool's peak RSS can include at most that much of it)\n{header}",
        report::machine_line(),
        launcher.own_rss_kib as f64 / 1024.0
    );
    if let Some(cold) = &cold {
        println!("{}", cold.describe());
    }
    print!("{}", report::table(&results));
    println!();
    for r in &results {
        for note in &r.notes {
            println!("{} {}: {note}", r.preset, r.job.name(r.read_by));
        }
    }
    println!("{}", report::LEGEND);
    if cold.is_some() {
        println!("{}", report::COLD_LEGEND);
    }
    if results.iter().any(|r| r.check.starts_with("FAILED")) {
        return Err("a run changed the state of some group (see the check column)".to_string());
    }
    Ok(())
}

/// The runs of `tool`: the manual tool once; the automatic one per reader
/// and per `--jobs` value; the nightly run once per reader.
fn jobs_of(tool: Tool, args: &Args) -> Vec<Job> {
    let per_reader = |jobs: u32| {
        args.readers.iter().map(move |&reader| Job {
            tool,
            jobs,
            reader: Some(reader),
        })
    };
    match tool {
        Tool::Manual => vec![Job {
            tool,
            jobs: 1,
            reader: None,
        }],
        Tool::Auto => args
            .jobs
            .iter()
            .flat_map(|&jobs| per_reader(jobs.max(1)))
            .collect(),
        Tool::Nightly => per_reader(1).collect(),
    }
}

/// The cold mode's groups and caps, when `--cold` is given.
fn cold_mode(args: &Args) -> Res<Option<Cold>> {
    if args.cold.is_empty() {
        return Ok(None);
    }
    let caps = args
        .cold
        .iter()
        .map(|s| parse_size(s))
        .collect::<Res<Vec<u64>>>()?;
    match (&args.cgroup, &args.restart_server) {
        (Some(group), Some(restart)) => Cold::new(group, restart, caps).map(Some),
        _ => Err(
            "--cold needs --cgroup and --restart-server (run it through scripts/bench.sh --cold)"
                .to_string(),
        ),
    }
}

/// `--count-only`: generates each preset in memory and prints its counts.
fn count_only(args: &Args) -> Res<()> {
    for name in &args.presets {
        let (short, cfg) = preset(name, args.seed)?;
        let started = Instant::now();
        let rooms = generate_mix(&cfg, |_| Ok::<(), ()>(()))
            .map_err(|()| "generation failed".to_string())?;
        report::print_counts(&short, &cfg, &rooms, started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The directory of this program (where `cargo build` puts the tools too).
fn own_dir() -> Res<PathBuf> {
    Ok(std::env::current_exe()
        .map_err(|e| format!("cannot find this program's directory: {e}"))?
        .parent()
        .ok_or("this program has no directory")?
        .to_path_buf())
}

/// The header line of a data set: its counts, its biggest room and how long
/// building it took.
fn describe(source: &Source) -> String {
    let built = match source.build {
        Some([generated, indexed, analyzed]) => format!(
            "built in {:.1}s (generate+COPY {generated:.1}s, indexes {indexed:.1}s, vacuum+analyze {analyzed:.1}s)",
            generated + indexed + analyzed
        ),
        None => "reused".to_string(),
    };
    format!(
        "data {} ({}): {} rooms, {} groups, {} rows, {} snapshots; biggest room {}: {} groups, {} rows; {built}",
        source.preset,
        source.key,
        thousands(source.rooms),
        thousands(source.groups),
        thousands(source.rows),
        thousands(source.snapshots),
        source.biggest_room,
        thousands(source.biggest_groups),
        thousands(source.biggest_rows),
    )
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(LAUNCHER_ARG)) {
        return launcher::launcher_main();
    }
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
