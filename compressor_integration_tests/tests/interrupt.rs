//! Ctrl-C (SIGINT) and SIGTERM at random moments of both tools.
//!
//! The moment: the tools run with `RUST_LOG=debug` (the database driver
//! logs every statement before sending it), and the signal is sent after a
//! randomly chosen stderr line, before the run's last commit: while
//! loading, compressing, verifying or between and inside write batches.
//! The random numbers come from a seed printed at the start (set
//! `INTERRUPT_SEED` to replay a run).
//!
//! A stopped run must exit 130 (SIGINT) or 143 (SIGTERM), say on stderr
//! that it was interrupted, give `"interrupted": true` with `--json`, and
//! leave every group's state unchanged. The manual tool's figures must
//! match what it wrote; the automatic tool's saved progress must be
//! exactly that of a run of as many chunks that was not interrupted. A
//! following run must finish the work with the very tree an uninterrupted
//! run makes (but for a manual run killed between write batches whose
//! rerun finds the rest not worth writing: docs/safety.md). A signal that comes after the last safe point finds the work
//! done: exit 0, not interrupted.
//!
//! A second signal stops at once, even inside a write transaction: the
//! server rolls the transaction back, so every state is still unchanged.
//!
//! Random moments can miss a narrow one, so the automatic tool is also
//! stopped at fixed moments: once at each chunk's, between its write and
//! its progress save (a fault point waits there for the signal).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use compressor_integration_tests::check::{self, assert_same_states, room_part, COMPRESSOR};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::tools;
use compressor_integration_tests::StateMap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use synapse_compress_state::db::write::BATCH_ENV;

const AUTO: &str = "synapse_auto_compressor";
/// Level sizes that rewrite over half of the groups (two write batches
/// per room in the manual tool) and still save rows.
const LEVELS: &str = "2,2,2,2";
/// The line the signal handling thread logs for the first signal.
const RECEIVED: &str = "received: stopping at the next safe point";

/// Two rooms of 1,000 groups, short Synapse chains.
fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 2,
        groups_per_room: 1_000,
        members: 30,
        join_rate: 3.0,
        max_delta_hops: 8,
        ..GenConfig::rare_forks()
    }
}

/// The seed of this test's random moments: `INTERRUPT_SEED`, or the clock.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("INTERRUPT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: INTERRUPT_SEED={seed}");
    seed
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Int,
    Term,
}

impl Signal {
    fn random(rng: &mut SmallRng) -> Signal {
        if rng.random_bool(0.5) {
            Signal::Int
        } else {
            Signal::Term
        }
    }

    fn number(self) -> i32 {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
        }
    }

    /// The exit status of a tool it stopped.
    fn status(self) -> i32 {
        128 + self.number()
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// Sends it to `pid` (a child not waited for yet, so the pid is still
    /// its own even if it has exited).
    fn send(self, pid: u32) {
        // SAFETY: kill(2) has no memory effects on this process.
        let done = unsafe { libc::kill(pid as libc::pid_t, self.number()) };
        assert_eq!(done, 0, "kill {pid}: {}", std::io::Error::last_os_error());
    }
}

/// When and how to stop a run: `first` at `at`, then `second` as soon as
/// the tool says it got the first.
#[derive(Clone, Copy, Debug)]
struct Stop {
    at: At,
    first: Signal,
    second: Option<Signal>,
}

/// A moment in a run, by its stderr.
#[derive(Clone, Copy, Debug)]
enum At {
    /// After this line (counted from 0).
    Line(usize),
    /// On the first line holding this text.
    Text(&'static str),
}

/// How a run ended.
struct Ending {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The first signal was sent (the run had not ended before).
    sent: bool,
}

impl Ending {
    fn describe(&self) -> String {
        let tail: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect();
        let tail = &tail[tail.len().saturating_sub(12)..];
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr (no debug lines) ---\n{}",
            self.code,
            self.stdout,
            tail.join("\n")
        )
    }

    /// The `--json` object.
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("no JSON on stdout ({e}):\n{}", self.describe()))
    }
}

/// Runs `program args` with `RUST_LOG=debug`, stopping it as `stop` says.
fn run(program: &str, args: &[String], stop: Option<Stop>) -> Ending {
    run_with_env(program, args, stop, &[])
}

/// [`run`] with extra environment variables (fault points).
fn run_with_env(
    program: &str,
    args: &[String],
    stop: Option<Stop>,
    env: &[(&str, &str)],
) -> Ending {
    let mut child = Command::new(tools::bin_path(program))
        .args(args)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the tool");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).expect("reading stdout");
        text
    });
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (mut text, mut line, mut n) = (String::new(), Vec::new(), 0);
    let (mut sent, mut second_sent) = (false, false);
    while stderr.read_until(b'\n', &mut line).expect("reading stderr") > 0 {
        let this = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        if let Some(stop) = stop {
            let now = match stop.at {
                At::Line(at) => n >= at,
                At::Text(text) => this.contains(text),
            };
            if !sent && now {
                stop.first.send(pid);
                sent = true;
            } else if sent && !second_sent && this.contains(RECEIVED) {
                if let Some(second) = stop.second {
                    second.send(pid);
                    second_sent = true;
                }
            }
        }
        text.push_str(&this);
        n += 1;
    }
    let status = child.wait().expect("waiting for the tool");
    Ending {
        code: status.code(),
        stdout: reader.join().expect("stdout reader"),
        stderr: text,
        sent,
    }
}

/// Where an uninterrupted debug run's work is in its stderr (lines
/// counted from 0).
#[derive(Clone, Copy, Debug)]
struct Profile {
    /// The first line logged once the run's work has begun (after its
    /// first look at the state tables): a signal before it ends the run at
    /// once, with no summary.
    begun: usize,
    /// The line that opens the write phase (its first batch).
    write: usize,
    /// The line that opens the last write batch.
    last_batch: usize,
    /// The line of the last commit.
    last_commit: usize,
}

fn profile(ending: &Ending) -> Profile {
    assert_eq!(ending.code, Some(0), "{}", ending.describe());
    let lines: Vec<&str> = ending.stderr.lines().collect();
    let batch = |l: &&str| l.contains("write batch of");
    let last_commit = lines
        .iter()
        .rposition(|l| l.ends_with("executing statement batch: COMMIT"))
        .expect("a commit");
    let probe = lines
        .iter()
        .position(|l| l.contains("IN ACCESS SHARE MODE"))
        .expect("the first look at the state tables");
    Profile {
        // The probe's ROLLBACK is logged before it is sent; the line after
        // comes once the work has begun.
        begun: probe + 2,
        write: lines.iter().position(batch).expect("a write phase"),
        last_batch: lines.iter().rposition(batch).expect("a write phase"),
        last_commit,
    }
}

/// A random moment: anywhere from the work's beginning to the last commit
/// (loading, compressing, verifying, writing; a signal in the last batch
/// finds the work done at the next safe point) or, when `writing`, in the
/// write phase before the last batch (the run stops with work left).
fn moment(rng: &mut SmallRng, profile: Profile, writing: bool) -> usize {
    if writing {
        rng.random_range(profile.write..profile.last_batch)
    } else {
        rng.random_range(profile.begun..profile.last_commit)
    }
}

/// Checks how a run that was sent `signal` ended; whether it was stopped
/// before its work was done (if not, the signal came after its last safe
/// point and the run is a normal one).
fn check_stopped(ending: &Ending, signal: Signal, json: bool) -> bool {
    assert!(ending.sent, "the run ended before the signal");
    let interrupted = ending.code != Some(0);
    if interrupted {
        assert_eq!(ending.code, Some(signal.status()), "{}", ending.describe());
        let line = format!("Interrupted by {}", signal.name());
        assert!(ending.stderr.contains(&line), "{}", ending.describe());
    }
    if json {
        assert_eq!(
            ending.json()["interrupted"],
            interrupted,
            "{}",
            ending.describe()
        );
    }
    interrupted
}

fn whole_tree(db: &TestDb) -> Structure {
    structure::structure(&mut db.client(), None).expect("reading the structure")
}

/// Every group resolves to its original state, and the tree's invariants
/// hold; the tree.
fn assert_intact(db: &TestDb, original: &BTreeMap<i64, StateMap>, context: &str) -> Structure {
    let tree = whole_tree(db);
    let problems = structure::violations(&tree);
    assert!(problems.is_empty(), "{context}: {problems:?}");
    assert_same_states(original, &structure::resolve_all(&tree), context);
    tree
}

/// Groups whose edge or rows differ between two trees.
fn differing(a: &Structure, b: &Structure) -> usize {
    a.iter().filter(|(id, g)| b.get(id) != Some(g)).count()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A database of [`config`] and its groups' original states.
fn database(hint: &str, seed: u64) -> (TestDb, Generated, BTreeMap<i64, StateMap>) {
    let (db, generated) = check::generated_db(hint, &config(seed));
    let original = structure::resolve_all(&generated.structure());
    (db, generated, original)
}

#[test]
fn manual_tool_stopped_at_random_moments() {
    let seed = seed("manual");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (db, generated, original) = database("intr_manual", seed % 1000);
    let rooms: Vec<String> = generated.rooms.iter().map(|r| r.room_id.clone()).collect();
    let args = |room: &str, json: bool| {
        let mut args = strings(&["-p", db.url(), "-r", room, "-l", LEVELS, "-c"]);
        if json {
            args.push("--json".to_owned());
        }
        args
    };
    let uninterrupted: Vec<Ending> = rooms
        .iter()
        .map(|room| run(COMPRESSOR, &args(room, false), None))
        .collect();
    let profiles: Vec<Profile> = uninterrupted.iter().map(profile).collect();
    // The plan's figure, which a stopped run's summary keeps.
    let planned: Vec<&str> = uninterrupted
        .iter()
        .map(|ending| planned_rows_line(&ending.stdout))
        .collect();
    let reference = assert_intact(&db, &original, "uninterrupted runs");
    let generated_tree = generated.structure();

    let (mut stopped, mut mid_write) = (0, 0);
    for round in 0..8 {
        check::restore(&db, &generated);
        let which = round % 2;
        let room = &rooms[which];
        let signal = Signal::random(&mut rng);
        let json = rng.random_bool(0.5);
        let at = moment(&mut rng, profiles[which], round % 4 < 2);
        let ending = run(
            COMPRESSOR,
            &args(room, json),
            Some(Stop {
                at: At::Line(at),
                first: signal,
                second: None,
            }),
        );
        let context = format!("round {round}: {signal:?} after line {at}");
        let interrupted = check_stopped(&ending, signal, json);
        let now = assert_intact(&db, &original, &context);
        if interrupted {
            stopped += 1;
            // The summary counts exactly the groups rewritten.
            let written = differing(&now, &generated_tree);
            if json {
                assert_eq!(
                    ending.json()["groups_written"],
                    written,
                    "{context}\n{}",
                    ending.describe()
                );
            }
            let summary = format!("before the run was done: {written} of ");
            assert!(ending.stderr.contains(&summary), "{}", ending.describe());
            assert_eq!(
                planned_rows_line(&ending.stderr),
                planned[which],
                "{context}: the plan's heading shows another figure\n{}",
                ending.describe()
            );
            if written > 0 && now != reference {
                mid_write += 1;
            }
        } else {
            // Not stopped: the work is whole.
            assert!(
                room_part(&now, room) == room_part(&reference, room),
                "{context}: exit 0 with the work not done\n{}",
                ending.describe()
            );
        }
        // The same command finishes the work: the room as one run makes
        // it, the other room untouched.
        let rerun = run(COMPRESSOR, &args(room, false), None);
        assert_eq!(rerun.code, Some(0), "{context}\n{}", rerun.describe());
        let now = assert_intact(&db, &original, &context);
        if rerun
            .stdout
            .contains("This compression would not remove any rows")
        {
            // What was left of the plan would add rows on its own (its
            // groups become snapshots): the rerun leaves it, and the room
            // ends with no more rows than one run leaves.
            assert!(
                structure::row_count(&room_part(&now, room))
                    <= structure::row_count(&room_part(&reference, room)),
                "{context}: the rerun declined, yet the room has more rows than after one run"
            );
        } else {
            assert!(
                room_part(&now, room) == room_part(&reference, room),
                "{context}: a stopped run and a rerun gave another tree than one run\n{}\n{}",
                ending.describe(),
                rerun.describe()
            );
        }
        let other = &rooms[1 - which];
        assert!(room_part(&now, other) == room_part(&generated_tree, other));
    }
    eprintln!("manual tool: {stopped} of 8 runs stopped, {mid_write} between two write batches");
    assert!(stopped >= 3, "only {stopped} runs were stopped");
    assert!(mid_write >= 1, "no run stopped between two write batches");
}

/// The manual tool's "Number of rows after compression" line (the plan's
/// figure).
fn planned_rows_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("Number of rows after compression:"))
        .unwrap_or_else(|| panic!("no planned rows line in\n{text}"))
}

/// The automatic tool, `chunks` chunks of 100 groups, reading room by
/// room: a stopped run's progress is then exactly that of a run of as many
/// chunks. (The pass does its chunks in the order they complete, so a run
/// it stops has done other chunks than the first ones; its stops are
/// checked in `auto_tool_stopped_at_each_safe_point`.)
fn auto_args(db: &TestDb, chunks: u64) -> Vec<String> {
    auto_args_with(db, chunks, "rooms")
}

fn auto_args_with(db: &TestDb, chunks: u64, reader: &str) -> Vec<String> {
    let chunks = chunks.to_string();
    strings(&[
        "-p",
        db.url(),
        "-c",
        "100",
        "-n",
        &chunks,
        "-l",
        LEVELS,
        "--json",
        "--reader",
        reader,
    ])
}

/// Every group below the saved scan position is compressed (at or below
/// its room's saved position): what the next run of either tool relies on.
fn assert_scan_position_holds(db: &TestDb, context: &str) {
    let behind: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM state_groups AS g \
             LEFT JOIN state_compressor_progress AS p USING (room_id) \
             WHERE g.id < (SELECT lowest_uncompressed_group FROM state_compressor_total_progress) \
               AND (p.last_compressed IS NULL OR g.id > p.last_compressed)",
            &[],
        )
        .expect("checking the scan position")
        .get(0);
    assert_eq!(behind, 0, "{context}: groups left behind the scan position");
}

#[test]
fn auto_tool_stopped_at_random_moments() {
    let seed = seed("auto");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (db, generated, original) = database("intr_auto", seed % 1000);
    let all = auto_args(&db, 100);
    let first = run(AUTO, &all, None);
    let profile = profile(&first);
    assert!(first.stderr.contains("nothing left to do"));
    let reference = assert_intact(&db, &original, "an uninterrupted run");
    let generated_tree = generated.structure();
    let rows_at_start = structure::row_count(&generated_tree) as i64;

    let mut stopped = 0;
    for round in 0..6 {
        check::restore(&db, &generated);
        let signal = Signal::random(&mut rng);
        let at = moment(&mut rng, profile, round % 2 == 0);
        let ending = run(
            AUTO,
            &all,
            Some(Stop {
                at: At::Line(at),
                first: signal,
                second: None,
            }),
        );
        let context = format!("round {round}: {signal:?} after line {at}");
        let interrupted = check_stopped(&ending, signal, true);
        let now = assert_intact(&db, &original, &context);
        let figures = ending.json();
        assert_eq!(
            figures["rows_saved"],
            rows_at_start - structure::row_count(&now) as i64,
            "{context}"
        );
        if interrupted {
            stopped += 1;
            assert!(ending
                .stderr
                .contains("run the tool again and it continues"));
            // The saved progress is exactly that of a run of as many
            // chunks that nobody stopped.
            let progress = check::saved_progress(&db);
            let chunks = figures["chunks"].as_u64().expect("chunks");
            check::restore(&db, &generated);
            if chunks > 0 {
                let same = run(AUTO, &auto_args(&db, chunks), None);
                assert_eq!(same.code, Some(0), "{}", same.describe());
                assert_eq!(check::saved_progress(&db), progress, "{context}");
                assert!(whole_tree(&db) == now, "{context}: another tree");
            } else {
                assert!(
                    progress.iter().all(|r| r.contains("total_progress")),
                    "{context}: progress saved without a chunk: {progress:?}"
                );
                assert!(now == generated_tree, "{context}: written without a chunk");
            }
        } else {
            // Not stopped: the work is whole.
            assert!(ending.stderr.contains("nothing left to do"), "{context}");
            assert!(now == reference, "{context}: exit 0 with the work not done");
        }
        // The next run continues and finishes with the tree of one
        // uninterrupted run.
        let rerun = run(AUTO, &all, None);
        assert_eq!(rerun.code, Some(0), "{context}\n{}", rerun.describe());
        assert!(rerun.stderr.contains("nothing left to do"));
        let now = assert_intact(&db, &original, &context);
        assert!(
            now == reference,
            "{context}: a stopped run and a rerun gave another tree than one run\n{}\n{}",
            ending.describe(),
            rerun.describe()
        );
    }
    eprintln!("automatic tool: {stopped} of 6 runs stopped");
    assert!(stopped >= 3, "only {stopped} runs were stopped");
}

/// A stop asked for at the very moment each chunk's write is done and its
/// progress is not yet saved (in the chunk's last transaction: the fault
/// point `auto::before-progress-save` waits there for the signal, sent on
/// the line it logs). The run must finish that chunk, progress included,
/// and stop at the safe point right after it: exactly the progress and
/// tree of a run of as many chunks, and a rerun finishes the work. One
/// case per chunk, so every safe point of the run is met once.
#[test]
fn auto_tool_stopped_at_each_safe_point() {
    let config = GenConfig {
        groups_per_room: 300,
        ..config(7)
    };
    let (db, generated) = check::generated_db("intr_fixed", &config);
    let original = structure::resolve_all(&generated.structure());
    for reader in ["rooms", "pass"] {
        check::restore(&db, &generated);
        stopped_at_each_safe_point(&db, &generated, &original, reader);
    }
}

/// [`auto_tool_stopped_at_each_safe_point`] with one reader. Room by room,
/// the progress of the stopped run is exactly that of a run of as many
/// chunks; the pass does its chunks in the order they complete, so there
/// the saved scan position must hold (every group below it compressed)
/// and the rerun must end exactly as an unstopped run.
fn stopped_at_each_safe_point(
    db: &TestDb,
    generated: &Generated,
    original: &BTreeMap<i64, StateMap>,
    reader: &str,
) {
    let all = auto_args_with(db, 100, reader);
    let first = run(AUTO, &all, None);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let chunks = first.json()["chunks"].as_u64().expect("chunks");
    let skipped = first.json()["chunks_skipped"].as_u64().expect("skipped");
    assert!(chunks >= 4, "only {chunks} chunks");
    assert_eq!(skipped, 0, "a skipped chunk has no progress-save point");
    let reference = assert_intact(db, original, "an uninterrupted run");
    let reference_progress = check::saved_progress(db);

    for k in 1..=chunks {
        check::restore(db, generated);
        let signal = if k % 2 == 0 {
            Signal::Int
        } else {
            Signal::Term
        };
        // The k-th time the point is reached: the k-th chunk.
        let point = match k {
            1 => "auto::before-progress-save=return(wait-signal)".to_owned(),
            _ => format!(
                "auto::before-progress-save={}*off->return(wait-signal)",
                k - 1
            ),
        };
        let stop = Stop {
            at: At::Text("waiting for a signal"),
            first: signal,
            second: None,
        };
        // The pass writes its chunks in sweeps of batches of ascending ids
        // across rooms: small batches, so the stops land between batches
        // of one sweep.
        let env = [("FAILPOINTS", point.as_str()), (BATCH_ENV, "40")];
        let ending = run_with_env(AUTO, &all, Some(stop), &env);
        let context = format!(
            "--reader {reader}: {signal:?} between chunk {k}'s write and its progress save"
        );
        assert!(
            check_stopped(&ending, signal, true),
            "{context}: not stopped\n{}",
            ending.describe()
        );
        let done = ending.json()["chunks"].as_u64().expect("chunks");
        if reader == "rooms" {
            assert_eq!(done, k, "{context}\n{}", ending.describe());
        } else {
            // The batch the stop came in commits whole, with every chunk
            // it completes.
            assert!(
                done >= k && done <= chunks,
                "{context}\n{}",
                ending.describe()
            );
        }
        let now = assert_intact(db, original, &context);
        assert_scan_position_holds(db, &context);
        if reader == "rooms" {
            let progress = check::saved_progress(db);
            check::restore(db, generated);
            let same = run(AUTO, &auto_args(db, k), None);
            assert_eq!(same.code, Some(0), "{}", same.describe());
            assert_eq!(
                progress,
                check::saved_progress(db),
                "{context}: the saved progress"
            );
            assert!(whole_tree(db) == now, "{context}: another tree");
        }

        let rerun = run(AUTO, &all, None);
        assert_eq!(rerun.code, Some(0), "{context}\n{}", rerun.describe());
        let now = assert_intact(db, original, &context);
        if now != reference {
            for (id, g) in reference
                .iter()
                .filter(|(id, g)| now.get(id) != Some(g))
                .take(5)
            {
                eprintln!("DIFF {id}: reference {g:?}\n now {:?}", now.get(id));
            }
            eprintln!("STOPPED RUN {}", ending.describe());
            eprintln!("RERUN {}", rerun.describe());
        }
        assert!(now == reference, "{context}: the rerun gave another tree");
        // Every room's levels and position are those of an unstopped run.
        // The scan position may end lower after a stopped pass: the rerun
        // leaves it at the start of the highest chunk *it* did, and the
        // stopped run may have done the highest chunk overall already.
        // Everything is compressed then, so any position holds.
        let rooms_only = |rows: Vec<String>| -> Vec<String> {
            rows.into_iter()
                .filter(|r| reader == "rooms" || !r.starts_with("state_compressor_total_progress"))
                .collect()
        };
        assert_eq!(
            rooms_only(check::saved_progress(db)),
            rooms_only(reference_progress.clone()),
            "{context}: the rerun's progress"
        );
        assert_scan_position_holds(db, &context);
    }
}

/// A second signal while the first waits for the safe point: the tool
/// ends at once (exit 143 for the SIGTERM sent second, without a summary),
/// or, if the safe point came first, as a stopped run (130, or 143 if the
/// SIGTERM came while it was ending). Either way
/// every state is unchanged and a rerun finishes the work.
#[test]
fn a_second_signal_stops_at_once() {
    let seed = seed("second signal");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (db, generated, original) = database("intr_second", seed % 1000);
    let room = generated.rooms[0].room_id.clone();
    let manual = strings(&["-p", db.url(), "-r", &room, "-l", LEVELS, "-c"]);
    let auto = auto_args(&db, 100);
    let mut at_once = 0;
    for (program, args) in [(COMPRESSOR, &manual), (AUTO, &auto)] {
        check::restore(&db, &generated);
        let profile = profile(&run(program, args, None));
        let reference = assert_intact(&db, &original, "an uninterrupted run");
        for round in 0..3 {
            check::restore(&db, &generated);
            let at = moment(&mut rng, profile, true);
            let stop = Stop {
                at: At::Line(at),
                first: Signal::Int,
                second: Some(Signal::Term),
            };
            let ending = run(program, args, Some(stop));
            let context = format!("{program} round {round}: after line {at}");
            assert!(ending.stderr.contains(RECEIVED), "{}", ending.describe());
            match ending.code {
                // Without a summary: it did not wait for the safe point
                // (with one, the SIGTERM came just as the run ended).
                Some(143) => at_once += usize::from(!ending.stderr.contains("Interrupted by")),
                Some(130) => assert!(ending.stderr.contains("Interrupted by SIGINT")),
                _ => panic!("{context}: {}", ending.describe()),
            }
            let stopped = assert_intact(&db, &original, &context);
            let rerun = run(program, args, None);
            assert_eq!(rerun.code, Some(0), "{context}\n{}", rerun.describe());
            let now = assert_intact(&db, &original, &context);
            // The one case that may differ (docs/safety.md, "Kills and
            // crashes"): the manual tool killed between two write batches
            // leaves a room with fewer rows than either tree, and the rerun,
            // which computes the same tree, finds that finishing it would
            // add rows, so it writes nothing. Every state is kept either way.
            let declined = program == COMPRESSOR
                && rerun.stdout.contains("would not remove any rows")
                && now == stopped
                && now != generated.structure();
            assert!(
                now == reference || declined,
                "{context}: another tree after a rerun\n{}",
                rerun.describe()
            );
        }
    }
    eprintln!("second signal: {at_once} of 6 runs ended at once");
    assert!(
        at_once >= 2,
        "only {at_once} runs ended at the second signal"
    );
}

/// `-o FILE`: a run stopped before it writes the file leaves the file of
/// that name as it was (no empty or partial file, no temporary one); a run
/// that was not stopped replaces it with the whole file, which applies
/// cleanly. Nothing is written to the database either way.
#[test]
fn a_stopped_run_leaves_the_earlier_sql_file() {
    let seed = seed("sql file");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (db, generated, original) = database("intr_sql", seed % 1000);
    let room = generated.rooms[0].room_id.clone();
    let file = tools::TempPath::new("interrupted", "sql");
    let args = strings(&[
        "-p",
        db.url(),
        "-r",
        &room,
        "-l",
        LEVELS,
        "-o",
        file.as_str(),
    ]);
    let lines = run(COMPRESSOR, &args, None).stderr.lines().count();
    let generated_tree = generated.structure();
    let mut stopped = 0;
    for round in 0..6 {
        // The round's own file only (the one before would be left alone by
        // a signal that ends the run before it begins).
        let _ = std::fs::remove_file(file.path());
        let signal = Signal::random(&mut rng);
        let at = rng.random_range(0..lines);
        let stop = Stop {
            at: At::Line(at),
            first: signal,
            second: None,
        };
        let earlier = format!("-- the file an earlier run wrote ({round})\n");
        std::fs::write(file.path(), &earlier).unwrap();
        let ending = run(COMPRESSOR, &args, Some(stop));
        let context = format!("round {round}: {signal:?} after line {at}");
        let dir = file.path().parent().unwrap();
        let temporary = format!(
            ".{}.tmp-",
            file.path().file_name().unwrap().to_string_lossy()
        );
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&temporary))
            .collect();
        assert!(left.is_empty(), "{context}: temporary file left: {left:?}");
        if check_stopped(&ending, signal, false) {
            stopped += 1;
            assert_eq!(
                std::fs::read_to_string(file.path()).unwrap(),
                earlier,
                "{context}: the earlier file changed"
            );
        } else {
            check::apply_sql(db.url(), file.path());
            assert_intact(&db, &original, &context);
            check::restore(&db, &generated);
        }
        assert!(whole_tree(&db) == generated_tree, "{context}: written to");
    }
    eprintln!("-o: {stopped} of 6 runs stopped");
    assert!(stopped >= 1, "no run was stopped");
}
