//! One run: a tool on a fresh clone of its source database (`bench_src`, or
//! `bench_compressed` for the nightly run), with the honest I/O
//! floor (see `floor`) measured around it, its output read for its own
//! figures, and the result checked.

use crate::checks::check_after;
use crate::cold::{mib, Cold, DiskReads};
use crate::floor::{changes_after, read_floor, record_before, write_floor};
use crate::launcher::{run_measured, ChildRun, Launcher};
use crate::report::load_average;
use crate::source::Source;
use crate::{connect, count, literal, pg, say, Res};
use compressor_integration_tests::pg::db_url;
use postgres::Client;
use std::fmt;
use std::path::PathBuf;

/// The clone a run works on.
const RUN_DB: &str = "bench_run";
/// The clone the floor's delete and insert are timed on.
const FLOOR_DB: &str = "bench_floor";

/// The chunks of the nightly run: the playbooks' `-n 100`.
pub const NIGHTLY_CHUNKS: u32 = 100;

/// The tool a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    /// `synapse_compress_state` on the room with the most rows.
    Manual,
    /// `synapse_auto_compressor` over the whole database.
    Auto,
    /// `synapse_auto_compressor -n 100` on a database compressed already,
    /// with about 2% new groups (see `nightly`).
    Nightly,
}

impl Tool {
    pub fn program(self) -> &'static str {
        match self {
            Tool::Manual => "synapse_compress_state",
            Tool::Auto | Tool::Nightly => "synapse_auto_compressor",
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tool::Manual => "manual",
            Tool::Auto => "auto",
            Tool::Nightly => "nightly",
        })
    }
}

/// The automatic tool's `--reader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reader {
    /// The tool chooses by the work at hand.
    Auto,
    /// One pass over the table in id ranges.
    Pass,
    /// Each chunk's groups through the indexes.
    Rooms,
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reader::Auto => "auto",
            Reader::Pass => "pass",
            Reader::Rooms => "rooms",
        })
    }
}

/// A run of the table: a tool, and for the automatic one its `--jobs` and
/// `--reader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub tool: Tool,
    pub jobs: u32,
    pub reader: Option<Reader>,
}

impl Job {
    /// The run's name in the table: the tool, the reader asked for and,
    /// when it differs (always for `auto`), the one that ran (`auto:pass`,
    /// `pass:rooms`), then `-jN`.
    pub fn name(&self, read_by: Option<Reader>) -> String {
        let mut name = self.tool.to_string();
        match (self.reader, read_by) {
            (Some(asked), Some(ran)) if asked != ran => name += &format!(" {asked}:{ran}"),
            (Some(asked), _) => name += &format!(" {asked}"),
            (None, Some(ran)) => name += &format!(" {ran}"),
            (None, None) => {}
        }
        if self.jobs > 1 {
            name += &format!(" -j{}", self.jobs);
        }
        name
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name(None))
    }
}

/// What every run shares.
pub struct RunSettings {
    /// The server's base URL (no database).
    pub base: String,
    /// Where the tools' binaries are.
    pub bin_dir: PathBuf,
    /// The automatic tool's `-c`.
    pub chunk_size: u64,
    /// Keep `bench_run` after the run.
    pub keep: bool,
    /// Where the tools' output is kept (none: temporary files).
    pub log_dir: Option<PathBuf>,
}

/// One row of the table.
pub struct RunResult {
    pub preset: String,
    pub job: Job,
    /// The automatic tool's reader, as its output tells.
    pub read_by: Option<Reader>,
    pub rows_before: i64,
    pub rows_after: i64,
    pub wall: f64,
    pub phases: Option<[f64; 4]>,
    pub max_rss_kib: i64,
    pub read_floor: f64,
    pub delete_floor: f64,
    pub insert_floor: f64,
    pub check: String,
    pub notes: Vec<String>,
    /// Cold mode: the server's memory cap and the disk reads.
    pub cold: Option<ColdFigures>,
}

/// A cold run's figures (see `cold`).
pub struct ColdFigures {
    /// The server's memory cap, bytes.
    pub cap: u64,
    /// What the server read from disk for the tool.
    pub reads: DiskReads,
    /// What it read for the floor's cold `COPY` of the rows and edges
    /// (the tables read once).
    pub floor_reads: DiskReads,
    /// What it read for the floor's delete and insert, right after.
    pub write_reads: DiskReads,
}

/// A run measured cold: the server restarted, caches dropped and its
/// memory capped at `cap` bytes before the tool and before the floor.
#[derive(Clone, Copy)]
pub struct ColdRun<'a> {
    pub cold: &'a Cold,
    pub cap: u64,
}

/// Runs `job` on a fresh clone of `source` and measures it.
pub fn do_run(
    settings: &RunSettings,
    launcher: &mut Launcher,
    source: &Source,
    job: Job,
    cold: Option<ColdRun>,
) -> Res<RunResult> {
    let tool = job.tool;
    let label = match cold {
        Some(run) => format!("{}/{job}/{}", source.preset, mib(run.cap)),
        None => format!("{}/{job}", source.preset),
    };
    if let Some(run) = cold {
        run.cold.uncap()?;
    }
    say(&format!("{label}: cloning {}", source.db));
    clone_db(&settings.base, &source.db, RUN_DB)?;
    let url = db_url(&settings.base, RUN_DB);
    let mut c = connect(&settings.base, RUN_DB)?;
    pg("CHECKPOINT", c.batch_execute("CHECKPOINT"))?;

    let where_clause = covered_rows(tool, source);
    let invocation = invocation(job, &url, source, settings.chunk_size, &mut c)?;
    let rows_before = count_rows(&mut c, &where_clause)?;
    record_before(&mut c)?;
    pg("CHECKPOINT", c.batch_execute("CHECKPOINT"))?;
    // Cold, the read floor is measured with the delete and insert below.
    let mut read = 0.0;
    if cold.is_none() {
        say(&format!("{label}: measuring the read floor"));
        read = read_floor(&mut c, &rows_copy(&where_clause), 2)?;
    }

    let name = match cold {
        Some(run) => format!("{}-{job}-{}", source.preset, mib(run.cap)),
        None => format!("{}-{job}", source.preset),
    }
    .replace(' ', "");
    let mut tool_reads = DiskReads::default();
    // Cold, the restart closes every connection: this one is made again.
    let kept = match cold {
        Some(run) => {
            drop(c);
            run.cold.start_cold(run.cap)?;
            tool_reads = run.cold.reads()?;
            None
        }
        None => Some(c),
    };
    let kills = cold.map(|run| run.cold.oom_kills()).transpose()?;
    let ran = run_tool(settings, launcher, &name, &invocation);
    if let (Some(run), Some(before)) = (cold, kills) {
        if run.cold.oom_kills()? > before {
            let why = ran.err().unwrap_or_default();
            return Err(format!(
                "the server went over its {} cap and the kernel killed one of its processes \
                 (see dmesg): lower shared_buffers or work_mem, or raise the cap\n{why}",
                mib(run.cap)
            ));
        }
    }
    let (child, command_note) = ran?;
    if let Some(run) = cold {
        tool_reads = tool_reads.until(run.cold.reads()?);
        run.cold.uncap()?;
    }
    let mut c = match kept {
        Some(c) => c,
        None => connect(&settings.base, RUN_DB)?,
    };
    let all_output = format!("{}\n{}", child.stdout, child.stderr);
    let phases = parse_phases(&all_output);
    let read_by = (tool != Tool::Manual).then(|| read_by(&child.stderr));
    let mut notes = vec![command_note];
    notes.extend(output_notes(&invocation, &child, &all_output));

    let rows_after = count_rows(&mut c, &where_clause)?;
    say(&format!("{label}: checking the result"));
    let check = check_after(&mut c, source)?;
    let changes = changes_after(&mut c)?;
    drop(c);
    if !settings.keep {
        drop_db(&settings.base, RUN_DB)?;
    }
    say(&format!(
        "{label}: measuring the delete and insert floor on a fresh clone"
    ));
    clone_db(&settings.base, &source.db, FLOOR_DB)?;
    let mut floor_reads = DiskReads::default();
    if let Some(run) = cold {
        run.cold.start_cold(run.cap)?;
        floor_reads = run.cold.reads()?;
    }
    let mut f = connect(&settings.base, FLOOR_DB)?;
    if cold.is_some() {
        say(&format!("{label}: measuring the cold read floor"));
        read = read_floor(&mut f, &rows_copy(&where_clause), 1)?
            + read_floor(
                &mut f,
                &format!(
                    "COPY (SELECT state_group, prev_state_group FROM state_group_edges \
                     {where_clause}) TO STDOUT (FORMAT binary)"
                ),
                1,
            )?;
    }
    let mut write_reads = DiskReads::default();
    if let Some(run) = cold {
        write_reads = run.cold.reads()?;
        floor_reads = floor_reads.until(write_reads);
        // Under a 256 MiB cap, the insert of 2.1 M rows (20m) went over it
        // and the kernel killed the backend: the delete and insert run
        // uncapped, on what the cold COPY left in the cache.
        run.cold.uncap()?;
    }
    let (delete, insert) = write_floor(&mut f, &changes)?;
    drop(f);
    if let Some(run) = cold {
        write_reads = write_reads.until(run.cold.reads()?);
        run.cold.uncap()?;
    }
    drop_db(&settings.base, FLOOR_DB)?;
    Ok(RunResult {
        preset: source.preset.clone(),
        job,
        read_by,
        rows_before,
        rows_after,
        wall: child.wall,
        phases,
        max_rss_kib: child.max_rss_kib,
        read_floor: read,
        delete_floor: delete,
        insert_floor: insert,
        check,
        notes,
        cold: cold.map(|run| ColdFigures {
            cap: run.cap,
            reads: tool_reads,
            floor_reads,
            write_reads,
        }),
    })
}

/// The `COPY` reading the rows a run covers (`where_clause`: see
/// [`covered_rows`]).
fn rows_copy(where_clause: &str) -> String {
    format!(
        "COPY (SELECT state_group, type, state_key, event_id FROM state_groups_state \
         {where_clause}) TO STDOUT (FORMAT binary)"
    )
}

/// The `WHERE` clause selecting the `state_groups_state` rows the run
/// covers: the biggest room's for the manual tool, all for the automatic,
/// the appended groups' for the nightly run.
fn covered_rows(tool: Tool, source: &Source) -> String {
    match tool {
        Tool::Manual => format!(
            "WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = {})",
            literal(&source.biggest_room)
        ),
        Tool::Auto => String::new(),
        Tool::Nightly => format!("WHERE state_group >= {}", source.appended_from.unwrap_or(0)),
    }
}

fn count_rows(c: &mut Client, where_clause: &str) -> Res<i64> {
    count(
        c,
        &format!("SELECT count(*) FROM state_groups_state {where_clause}"),
        &[],
    )
}

/// A tool's command line.
pub struct Invocation {
    tool: Tool,
    args: Vec<String>,
    /// The database's URL (hidden in the notes).
    url: String,
}

/// The manual tool on the biggest room; the automatic tool with `-n` large
/// enough to go through the whole database; the nightly run with
/// `-n 100`; the job's `--jobs` and `--reader`.
pub fn invocation(
    job: Job,
    url: &str,
    source: &Source,
    chunk_size: u64,
    c: &mut Client,
) -> Res<Invocation> {
    let tool = job.tool;
    let mut args: Vec<String> = match tool {
        Tool::Manual => vec![
            "-p".to_string(),
            url.to_string(),
            "-r".to_string(),
            source.biggest_room.clone(),
            "-c".to_string(),
            "--no-progress".to_string(),
        ],
        Tool::Auto => {
            let chunks = count(
                c,
                "SELECT COALESCE(sum(ceil(n / $1::float8)), 0)::bigint
                 FROM (SELECT count(*) AS n FROM state_groups GROUP BY room_id) x",
                &[&(chunk_size as f64)],
            )?;
            // Every room takes ceil(groups / chunk) chunks; leave room to spare.
            let n = chunks * 2 + 10;
            vec![
                "-p".to_string(),
                url.to_string(),
                "-c".to_string(),
                chunk_size.to_string(),
                "-n".to_string(),
                n.to_string(),
                "--no-progress".to_string(),
            ]
        }
        Tool::Nightly => vec![
            "-p".to_string(),
            url.to_string(),
            "-c".to_string(),
            chunk_size.to_string(),
            "-n".to_string(),
            NIGHTLY_CHUNKS.to_string(),
            "--no-progress".to_string(),
        ],
    };
    if job.jobs > 1 {
        args.extend(["--jobs".to_string(), job.jobs.to_string()]);
    }
    if let Some(reader) = job.reader {
        args.extend(["--reader".to_string(), reader.to_string()]);
    }
    Ok(Invocation {
        tool,
        args,
        url: url.to_string(),
    })
}

/// Runs the tool through the launcher, its output logged as `name`
/// (`<preset>-<run>`); an error unless it exits with 0. Returns what it did
/// and a note: its command line (the URL hidden) and the load average
/// around it.
pub fn run_tool(
    settings: &RunSettings,
    launcher: &mut Launcher,
    name: &str,
    invocation: &Invocation,
) -> Res<(ChildRun, String)> {
    let Invocation { tool, args, url } = invocation;
    let program = tool.program();
    let program_path = settings
        .bin_dir
        .join(format!("{program}{}", std::env::consts::EXE_SUFFIX));
    if !program_path.is_file() {
        return Err(format!(
            "{} not found: build with `cargo build --release --workspace --bins` or pass --bin-dir",
            program_path.display()
        ));
    }
    say(&format!("{name}: running {program}"));
    let load_before = load_average();
    let child = run_measured(
        launcher,
        settings.log_dir.as_deref(),
        name,
        &program_path,
        args,
    )?;
    let shown: Vec<&str> = args
        .iter()
        .map(|a| if a == url { "URL" } else { a.as_str() })
        .collect();
    let note = format!(
        "{program} {} (load average before: {load_before}, after: {})",
        shown.join(" "),
        load_average()
    );
    if child.code != Some(0) {
        return Err(format!(
            "{} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            child.command,
            child
                .code
                .map_or("killed by a signal".to_string(), |c| format!("exit {c}")),
            tail(&child.stdout, 30),
            tail(&child.stderr, 30)
        ));
    }
    Ok((child, note))
}

/// The notes taken from the tool's output: its own figures, and its row
/// counts (manual) or its summary and whether it finished (automatic).
fn output_notes(invocation: &Invocation, child: &ChildRun, all_output: &str) -> Vec<String> {
    let mut notes = Vec::new();
    match line_with(all_output, "Time: load ") {
        Some(line) => notes.push(format!("the tool's own figures: {line}")),
        None => notes.push("no `Time: load ...` line in the tool's output".to_string()),
    }
    match invocation.tool {
        Tool::Manual => {
            for marker in [
                "Number of rows in current table:",
                "Number of rows after compression:",
            ] {
                if let Some(line) = line_with(&child.stdout, marker) {
                    notes.push(line.to_string());
                }
            }
        }
        Tool::Auto | Tool::Nightly => {
            if let Some(line) = line_with(&child.stderr, "Finished: ") {
                notes.push(line.to_string());
            }
            if let Some(line) = line_with(&child.stderr, "The pass did ") {
                notes.push(line.to_string());
            }
            if invocation.tool == Tool::Auto && !finished(&child.stderr) {
                notes.push(format!(
                    "did not report finishing the database ({})",
                    invocation.args.join(" ")
                ));
            }
        }
    }
    notes
}

/// Whether the automatic tool said it went through the whole database.
pub fn finished(stderr: &str) -> bool {
    stderr.contains("nothing left to do")
}

/// The reader the automatic tool used, from its log: the pass says how
/// many chunks it reads the table once for.
fn read_by(stderr: &str) -> Reader {
    if stderr.contains("Reading the table once for ") {
        Reader::Pass
    } else {
        Reader::Rooms
    }
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

/// The last `lines` lines of `s`.
fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh database `name`, cloned from `template`.
pub fn clone_db(base: &str, template: &str, name: &str) -> Res<()> {
    drop_db(base, name)?;
    let mut admin = connect(base, "postgres")?;
    // FILE_COPY copies the files instead of WAL-logging every page.
    let fast = format!("CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY");
    if admin.batch_execute(&fast).is_err() {
        pg(
            &format!("cloning {template}"),
            admin.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}")),
        )?;
    }
    Ok(())
}

pub fn drop_db(base: &str, name: &str) -> Res<()> {
    let mut admin = connect(base, "postgres")?;
    pg(
        &format!("dropping {name}"),
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")),
    )
}
