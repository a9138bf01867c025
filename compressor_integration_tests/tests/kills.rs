//! SIGKILL at random moments, mostly while writing: the manual tool (`-c`)
//! and the automatic tool with chunks big enough that one chunk is written
//! in several transactions (batches of at most 500 groups). `auto.rs`
//! already kills the automatic tool with small chunks; here each chunk
//! spans two write batches plus the progress save.
//!
//! The moment: the tools run with `RUST_LOG=debug`, so the database
//! driver logs every statement before sending it; the tool is killed after
//! a random number of stderr lines (mostly among those of the write phase)
//! plus a random delay of up to 3 ms, which lands kills between and inside
//! statements, the COPY of new rows and the commits.
//!
//! After every kill every group must resolve to its original state, with
//! the tree's invariants intact; a rerun must finish the job; and the final
//! tree must be exactly the one an uninterrupted run makes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use compressor_integration_tests::check::{
    self, assert_same_states, room_part, snapshot, snapshot_in_memory, COMPRESSOR,
};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::tools;
use compressor_integration_tests::StateMap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const AUTO: &str = "synapse_auto_compressor";
/// Level sizes that rewrite over half of the groups (two write batches per
/// room of 1,000 groups) and still save rows.
const LEVELS: &str = "2,2,2,2";

/// Two rooms of 1,000 groups, short Synapse chains (many snapshots).
fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 2,
        groups_per_room: 1_000,
        members: 40,
        join_rate: 3.0,
        max_delta_hops: 10,
        nasty_strings: seed % 2 == 1,
        ..GenConfig::rare_forks()
    }
}

/// How a run ended.
struct Ending {
    killed: bool,
    lines: usize,
    success: bool,
    /// Exit 75: a killed run's session still held the run lock (the server
    /// ends a session only once it notices its client is gone).
    locked_out: bool,
    stderr_tail: String,
}

/// The log line after which each tool's write phase starts (the manual
/// tool's "Checking that state maps match..." when it reads the room
/// whole, "Checked that state maps match, window by window" in windows).
const MANUAL_WRITE_MARKER: &str = "that state maps match";
const AUTO_WRITE_MARKER: &str = "write batch of";

/// When to kill a run: `after` stderr lines counted from the first line
/// that contains `marker` (the empty marker: from the first line), so the
/// aim follows this run's own log, which is shorter for a run that
/// continues after a kill.
#[derive(Clone, Copy, Debug)]
struct Aim {
    marker: &'static str,
    after: usize,
}

impl Aim {
    /// A run that is allowed to finish.
    const NEVER: Aim = Aim {
        marker: "",
        after: usize::MAX,
    };
}

/// Runs `program args` with `RUST_LOG=debug` and SIGKILLs it at `aim` plus
/// `delay` (not killed if it ends first).
fn run_and_kill(program: &str, args: &[&str], aim: Aim, delay: Duration) -> Ending {
    let mut child = Command::new(tools::bin_path(program))
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the tool");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = 0;
    let mut since_marker: Option<usize> = None;
    let mut killed = false;
    let mut tail = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        seen += 1;
        if since_marker.is_none() && line.contains(aim.marker) {
            since_marker = Some(0);
        }
        tail.push(line.chars().take(200).collect::<String>());
        if tail.len() > 6 {
            tail.remove(0);
        }
        if since_marker == Some(aim.after) {
            std::thread::sleep(delay);
            killed = child.kill().is_ok();
            break;
        }
        if let Some(n) = since_marker.as_mut() {
            *n += 1;
        }
    }
    let status = child.wait().expect("waiting for the tool");
    // A kill that came after the tool had exited did nothing.
    let killed = killed && status.code().is_none();
    Ending {
        killed,
        lines: seen,
        success: status.success(),
        locked_out: status.code() == Some(75),
        stderr_tail: tail.join("\n"),
    }
}

/// Stderr lines of an uninterrupted debug run: the line that opens the
/// write phase and the line of its last commit (counting from 1). Kills
/// are aimed at lines up to that commit: a kill after it finds the work
/// done (or the process gone) and tests nothing.
fn line_profile(program: &str, args: &[&str], write_marker: &str) -> (usize, usize) {
    let run = Command::new(tools::bin_path(program))
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .expect("running the tool");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    let write_start = stderr
        .lines()
        .position(|l| l.contains(write_marker))
        .unwrap_or_else(|| panic!("no {write_marker:?} in the log:\n{stderr}"));
    let lines: Vec<&str> = stderr.lines().collect();
    let last_commit = lines
        .iter()
        .rposition(|l| l.ends_with("executing statement batch: COMMIT"))
        .filter(|&i| i > write_start)
        .unwrap_or_else(|| panic!("no commit after {write_marker:?} in the log:\n{stderr}"));
    (write_start + 1, last_commit + 1)
}

/// A kill moment, mostly inside the write phase (from `marker` up to its
/// last commit, as `profile` measured them), and a delay.
fn moment(rng: &mut SmallRng, marker: &'static str, profile: (usize, usize)) -> (Aim, Duration) {
    let (write_start, last_commit) = profile;
    let aim = if rng.random_bool(0.8) {
        Aim {
            marker,
            after: rng.random_range(0..=last_commit - write_start),
        }
    } else {
        Aim {
            marker: "",
            after: rng.random_range(0..last_commit),
        }
    };
    (aim, Duration::from_micros(rng.random_range(0..3_000)))
}

fn assert_intact(db: &TestDb, original: &BTreeMap<i64, StateMap>, context: &str) {
    // Invariants are asserted by the snapshot; states resolved in memory.
    let now = snapshot_in_memory(&mut db.client());
    assert_same_states(original, &now.states, context);
}

/// [`assert_intact`] for one room, `original` holding its groups' states
/// (the tools never touch another room; that is checked separately).
fn assert_room_intact(
    db: &TestDb,
    room: &str,
    original: &BTreeMap<i64, StateMap>,
    context: &str,
) -> Structure {
    let stored = structure::structure(&mut db.client(), Some(room)).expect("reading the room");
    let problems = structure::violations(&stored);
    assert!(
        problems.is_empty(),
        "{context}: invariants broken: {problems:?}"
    );
    // `original` holds this room's groups only: a lost or extra group fails.
    assert_same_states(original, &structure::resolve_all(&stored), context);
    stored
}

/// A successful run of the automatic tool, retried (a bounded number of
/// times) while a killed run's session still holds the run lock.
fn auto_after_kills(args: &[&str]) -> tools::ToolRun {
    for _ in 0..50 {
        let run = tools::run_bin(AUTO, args);
        if run.status.code() != Some(75) {
            tools::assert_success(&run);
            return run;
        }
    }
    panic!("the run lock of a killed run was never released");
}

fn whole_tree(db: &TestDb) -> Structure {
    structure::structure(&mut db.client(), None).expect("reading the structure")
}

/// The tree the uninterrupted reference runs just made, after checking
/// that they changed it and kept every state.
fn reference_tree(
    db: &TestDb,
    generated: &Generated,
    original: &BTreeMap<i64, StateMap>,
) -> Structure {
    let reference = whole_tree(db);
    assert_ne!(
        reference,
        generated.structure(),
        "the reference run changed nothing"
    );
    assert_intact(db, original, "uninterrupted runs");
    reference
}

/// Kills one tool at random moments of its write phase, and counts what
/// the kills did.
struct Killer {
    program: &'static str,
    /// The log line that opens the tool's write phase.
    marker: &'static str,
    rng: SmallRng,
    runs: usize,
    kills: usize,
    /// Kills that left the tree partly rewritten (some batches committed).
    partly_written: usize,
}

impl Killer {
    fn new(program: &'static str, marker: &'static str, seed: u64) -> Killer {
        Killer {
            program,
            marker,
            rng: SmallRng::seed_from_u64(seed),
            runs: 0,
            kills: 0,
            partly_written: 0,
        }
    }

    /// Attempt `attempt` of round `round`: killed at a random moment of
    /// the write phase (as `profile` measured it) for the first three
    /// attempts, allowed to finish after. Returns how the run ended and a
    /// description for failure messages.
    fn attempt(
        &mut self,
        args: &[&str],
        profile: (usize, usize),
        round: usize,
        attempt: usize,
    ) -> (Ending, String) {
        let (aim, delay) = if attempt < 3 {
            moment(&mut self.rng, self.marker, profile)
        } else {
            (Aim::NEVER, Duration::ZERO)
        };
        let ending = run_and_kill(self.program, args, aim, delay);
        self.runs += 1;
        let context = format!(
            "round {round}, run {attempt}: killed={} at {aim:?} after {} lines (+{delay:?})\n{}",
            ending.killed, ending.lines, ending.stderr_tail
        );
        (ending, context)
    }

    /// Counts a kill; `partly` when it left the tree neither as it was nor
    /// as an uninterrupted run makes it.
    fn killed(&mut self, partly: bool) {
        self.kills += 1;
        self.partly_written += usize::from(partly);
    }

    /// Enough kills, and one of them between two write batches.
    fn assert_enough(&self) {
        assert!(self.kills >= 10, "only {} runs were killed", self.kills);
        assert!(
            self.partly_written >= 1,
            "no kill landed between two write batches"
        );
    }
}

#[test]
fn manual_tool_killed_while_writing() {
    let (db, generated) = check::generated_db("kill_manual", &config(71));
    let original = snapshot(&mut db.client()).states;
    let rooms: Vec<String> = generated.rooms.iter().map(|r| r.room_id.clone()).collect();
    let room_states: Vec<BTreeMap<i64, StateMap>> = generated
        .rooms
        .iter()
        .map(|r| {
            r.group_ids
                .iter()
                .map(|id| (*id, original[id].clone()))
                .collect()
        })
        .collect();
    let args = |room: &str| -> Vec<String> {
        ["-p", db.url(), "-r", room, "-l", LEVELS, "-c"]
            .map(String::from)
            .to_vec()
    };

    // What an uninterrupted run gives, and where its write phase starts.
    let mut profiles = Vec::new();
    for room in &rooms {
        let a = args(room);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        profiles.push(line_profile(COMPRESSOR, &a, MANUAL_WRITE_MARKER));
    }
    let reference = reference_tree(&db, &generated, &original);

    let generated_tree = generated.structure();
    let mut killer = Killer::new(COMPRESSOR, MANUAL_WRITE_MARKER, 71);
    for round in 0..5 {
        check::restore(&db, &generated);
        let which = round % rooms.len();
        let a = args(&rooms[which]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let profile = profiles[which];
        // Up to three kills, then a run that is allowed to finish.
        let mut finished = false;
        for attempt in 0..4 {
            let (ending, context) = killer.attempt(&a, profile, round, attempt);
            let now = assert_room_intact(&db, &rooms[which], &room_states[which], &context);
            if ending.killed {
                killer.killed(
                    now != room_part(&generated_tree, &rooms[which])
                        && now != room_part(&reference, &rooms[which]),
                );
            } else {
                assert!(ending.success, "the tool failed: {context}");
                finished = true;
                break;
            }
        }
        assert!(finished, "round {round}: no run finished");
        // The room's tree is exactly the uninterrupted result, and the
        // other room was not touched.
        let now = whole_tree(&db);
        assert!(
            room_part(&now, &rooms[which]) == room_part(&reference, &rooms[which]),
            "round {round}: killed runs and a rerun gave another tree than one uninterrupted run"
        );
        let other = &rooms[1 - which];
        assert!(
            room_part(&now, other) == room_part(&generated_tree, other),
            "round {round}: the other room changed"
        );
    }
    let after = snapshot(&mut db.client());
    assert_same_states(&original, &after.states, "at the end");
    eprintln!(
        "manual tool: {} kills in {} runs, {} left the room partly rewritten",
        killer.kills, killer.runs, killer.partly_written
    );
    killer.assert_enough();
}

#[test]
fn auto_tool_with_big_chunks_killed_while_writing() {
    let (db, generated) = check::generated_db("kill_auto_big", &config(72));
    let original = snapshot(&mut db.client()).states;
    // One chunk per run: a whole room (two write batches, then the last
    // batch commits with the saved progress).
    let args = ["-p", db.url(), "-c", "1000", "-n", "1", "-l", LEVELS];

    let profile = line_profile(AUTO, &args, AUTO_WRITE_MARKER);
    let mut all_args = args;
    all_args[5] = "100";
    auto_after_kills(&all_args);
    let reference = reference_tree(&db, &generated, &original);

    let generated_tree = generated.structure();
    let mut killer = Killer::new(AUTO, AUTO_WRITE_MARKER, 72);
    // Rounds end early when a run finishes; seven give at least ten
    // kills with a margin.
    for round in 0..7 {
        check::restore(&db, &generated);
        let mut done = false;
        for attempt in 0..12 {
            let (ending, context) = killer.attempt(&args, profile, round, attempt);
            assert_intact(&db, &original, &context);
            if ending.killed {
                let now = whole_tree(&db);
                killer.killed(now != generated_tree && now != reference);
                continue;
            }
            if ending.locked_out {
                continue;
            }
            assert!(ending.success, "the tool failed: {context}");
            let finished = auto_after_kills(&all_args);
            if finished.finished_all() {
                done = true;
                break;
            }
        }
        assert!(done, "round {round}: never finished");
        assert!(
            whole_tree(&db) == reference,
            "round {round}: killed runs and reruns gave another tree than uninterrupted runs"
        );
    }
    let after = snapshot(&mut db.client());
    assert_same_states(&original, &after.states, "at the end");
    eprintln!(
        "automatic tool (chunks of 1,000 groups): {} kills in {} runs, \
         {} left a chunk partly written",
        killer.kills, killer.runs, killer.partly_written
    );
    killer.assert_enough();
}
