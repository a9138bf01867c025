//! The automatic tool's two readers (`--reader pass|rooms`) leave the same
//! database: the same edges and rows and the same progress tables (room
//! levels and positions, and the scan position), run after run, whichever
//! reader each run uses, with the pass reading in many small ranges and
//! with rooms going over its memory budget, with one writing connection or
//! several (`--jobs`). Every group's state is checked
//! with Synapse's own query. A room another compressor holds is left by
//! the pass as by the loop, the default reader takes the pass only for
//! runs that cover much of what is left, and a range that meets a lock is
//! read again.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use compressor_integration_tests::check::{self, assert_same_states, saved_progress, snapshot};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::{hold_room_lock, TestDb};
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::synapse_imitation::{expectations_of, Imitator, ImitatorConfig};
use compressor_integration_tests::tools::{self, ToolRun};
use synapse_auto_compressor::carry::CARRY_ENV;

const AUTO: &str = "synapse_auto_compressor";

/// Rooms with forks, state resolutions and resets, interleaved by id.
fn config(seed: u64) -> GenConfig {
    GenConfig {
        fork_probability: 0.06,
        resolve_probability: 0.04,
        reset_probability: 0.02,
        empty_delta_probability: 0.02,
        ..GenConfig::compressible(seed, 7, 220)
    }
}

/// Edges and rows, and the three progress tables.
fn result(db: &TestDb) -> (Structure, Vec<String>) {
    let tree = structure::structure(&mut db.client(), None).expect("reading the structure");
    (tree, saved_progress(db))
}

/// The tests' options for a run with `reader`, at most `chunks` chunks,
/// and `extra`.
fn args<'a>(db: &'a TestDb, reader: &'a str, chunks: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-p",
        db.url(),
        "-c",
        "30",
        "-n",
        chunks,
        "-l",
        "10,5",
        "--reader",
        reader,
    ];
    args.extend_from_slice(extra);
    args
}

/// One run with `reader` and `extra` options, which must succeed.
fn run(db: &TestDb, reader: &str, chunks: &str, extra: &[&str]) -> ToolRun {
    let run = tools::run_bin(AUTO, &args(db, reader, chunks, extra));
    tools::assert_success(&run);
    run
}

/// Runs `steps` (reader, chunks) on a fresh copy of `seed`'s data, with
/// `extra` options, checking every group's state after.
fn runs(
    hint: &str,
    seed: u64,
    steps: &[(&str, &str)],
    extra: &[&str],
) -> (TestDb, Generated, Vec<ToolRun>) {
    let (db, generated) = check::generated_db(hint, &config(seed));
    let original = snapshot(&mut db.client()).states;
    let done: Vec<ToolRun> = steps
        .iter()
        .map(|(reader, chunks)| run(&db, reader, chunks, extra))
        .collect();
    assert_same_states(&original, &snapshot(&mut db.client()).states, hint);
    (db, generated, done)
}

#[test]
fn the_pass_leaves_what_the_room_by_room_reader_leaves() {
    for seed in [1, 2] {
        let steps = |reader| [(reader, "4"), (reader, "9"), (reader, "10000")];
        let (rooms, generated, _) = runs(&format!("rooms_{seed}"), seed, &steps("rooms"), &[]);
        let expected = result(&rooms);
        assert_ne!(expected.0, generated.structure(), "nothing was compressed");
        // Many small ranges (chunks span several), then the default ones,
        // then small ranges written by three connections at once.
        for (range, jobs) in [("23", "1"), ("25000", "1"), ("23", "3")] {
            let (pass, _, done) = runs(
                &format!("pass_{seed}_{range}_{jobs}"),
                seed,
                &steps("pass"),
                &["--pass-range", range, "--jobs", jobs],
            );
            for run in &done {
                let (chunks, over) = run
                    .pass_chunks()
                    .unwrap_or_else(|| panic!("no pass: {}", run.describe()));
                assert!(chunks > 0, "the pass did nothing: {}", run.describe());
                assert_eq!(over, 0, "{}", run.describe());
            }
            let got = result(&pass);
            assert!(
                got.0 == expected.0,
                "seed {seed}, ranges of {range}, {jobs} writers: edges or rows differ"
            );
            assert_eq!(
                got.1, expected.1,
                "seed {seed}, ranges of {range}, {jobs} writers: progress"
            );
        }
    }
}

/// With one writer the pass decides a room's chunks before their writes
/// (which wait for the sweep), so a chunk whose room has no carry must
/// take the room's waiting groups as they will be, not as the database
/// still shows them. Without carries, every such chunk does.
#[test]
fn the_pass_without_carries_leaves_what_the_room_by_room_reader_leaves() {
    for seed in [1, 2] {
        let (rooms, _, _) = runs(
            &format!("nocarry_rooms_{seed}"),
            seed,
            &[("rooms", "10000")],
            &[],
        );
        let expected = result(&rooms);
        let (pass, _) = check::generated_db(&format!("nocarry_pass_{seed}"), &config(seed));
        let original = snapshot(&mut pass.client()).states;
        let run = tools::run_bin_with_env(
            AUTO,
            &args(&pass, "pass", "10000", &["--pass-range", "23"]),
            &[(CARRY_ENV, "0")],
        );
        tools::assert_success(&run);
        assert!(
            run.pass_chunks()
                .is_some_and(|(chunks, over)| chunks > 0 && over == 0),
            "{}",
            run.describe()
        );
        assert_same_states(
            &original,
            &snapshot(&mut pass.client()).states,
            "no carries",
        );
        let got = result(&pass);
        assert!(got.0 == expected.0, "seed {seed}: edges or rows differ");
        assert_eq!(got.1, expected.1, "seed {seed}: progress");
    }
}

#[test]
fn rooms_over_the_pass_memory_budget_are_done_room_by_room_with_the_same_result() {
    let seed = 3;
    let steps = |reader| [(reader, "6"), (reader, "10000")];
    let (rooms, _, _) = runs("budget_rooms", seed, &steps("rooms"), &[]);
    let expected = result(&rooms);
    // A budget that a few open chunks already exceed: some rooms leave the
    // pass, the others stay in it.
    let (pass, _, done) = runs(
        "budget_pass",
        seed,
        &steps("pass"),
        &["--pass-range", "40", "--pass-memory", "24KiB"],
    );
    let (chunks, over) = done[1].pass_chunks().expect("the pass ran");
    assert!(chunks > 0 && over > 0, "{}", done[1].describe());
    let got = result(&pass);
    assert!(got.0 == expected.0, "edges or rows differ");
    assert_eq!(got.1, expected.1, "progress");
}

#[test]
fn runs_may_switch_readers_and_still_match() {
    let seed = 4;
    let (rooms, _, _) = runs("switch_rooms", seed, &[("rooms", "10000")], &[]);
    let expected = result(&rooms);
    let (mixed, _, _) = runs(
        "switch_mixed",
        seed,
        &[
            ("pass", "3"),
            ("rooms", "5"),
            ("pass", "7"),
            ("rooms", "2"),
            ("pass", "10000"),
        ],
        &["--pass-range", "61"],
    );
    let got = result(&mixed);
    assert!(got.0 == expected.0, "edges or rows differ");
    assert_eq!(got.1, expected.1, "progress");
}

#[test]
fn a_room_another_compressor_holds_is_left_by_the_pass_as_by_the_loop() {
    let seed = 5;
    let lowest = |generated: &Generated| {
        generated
            .rooms
            .iter()
            .min_by_key(|r| r.group_ids[0])
            .map(|r| r.room_id.clone())
            .unwrap()
    };
    let mut results = Vec::new();
    for reader in ["rooms", "pass"] {
        let (db, generated) = check::generated_db(&format!("held_{reader}"), &config(seed));
        let original = snapshot(&mut db.client()).states;
        let room = lowest(&generated);
        let holder = hold_room_lock(&db, &room);
        let held = run(&db, reader, "10000", &[]);
        assert!(
            held.stderr.contains("leaving it for a later run"),
            "{}",
            held.describe()
        );
        let first_run = result(&db);
        drop(holder);
        run(&db, reader, "10000", &[]);
        assert_same_states(&original, &snapshot(&mut db.client()).states, reader);
        results.push((first_run, result(&db)));
    }
    let (rooms, pass) = (&results[0], &results[1]);
    assert!(
        rooms.0 .0 == pass.0 .0,
        "with the room held: edges or rows differ"
    );
    assert_eq!(rooms.0 .1, pass.0 .1, "with the room held: progress");
    assert!(rooms.1 .0 == pass.1 .0, "after: edges or rows differ");
    assert_eq!(rooms.1 .1, pass.1 .1, "after: progress");
}

#[test]
fn the_default_reader_takes_the_pass_only_for_runs_that_cover_much() {
    let (db, _) = check::generated_db("auto_reader", &config(6));
    let args = |chunks: &'static str| -> Vec<String> {
        ["-p", db.url(), "-c", "10", "-n", chunks]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    // 7 rooms of 220 groups: one chunk of 10 is far below a tenth.
    let short = tools::run_bin(AUTO, &args("1"));
    tools::assert_success(&short);
    assert_eq!(short.pass_chunks(), None, "{}", short.describe());
    let long = tools::run_bin(AUTO, &args("10000"));
    tools::assert_success(&long);
    assert!(
        long.pass_chunks().is_some_and(|(c, _)| c > 0),
        "{}",
        long.describe()
    );
}

#[test]
fn the_default_reader_leaves_the_pass_when_the_planned_chunks_are_few_groups_of_the_range() {
    // Twelve rooms; `--largest-rooms 11` compresses eleven of them to
    // their end and leaves the scan position at the start. The next run may
    // do many chunks (`-n`), but they hold only the last room's groups: a
    // twelfth of what the pass would read for them.
    let (db, _) = check::generated_db("auto_reader_few", &GenConfig::compressible(7, 12, 100));
    let original = snapshot(&mut db.client()).states;
    let first = tools::run_bin(
        AUTO,
        &[
            "-p",
            db.url(),
            "-c",
            "100",
            "-n",
            "10000",
            "--largest-rooms",
            "11",
        ],
    );
    tools::assert_success(&first);
    let nightly = tools::run_bin(AUTO, &["-p", db.url(), "-c", "100", "-n", "10000"]);
    tools::assert_success(&nightly);
    assert_eq!(nightly.pass_chunks(), None, "{}", nightly.describe());
    assert!(
        nightly
            .stderr
            .contains("Reading room by room: this run's 100 groups are few of the"),
        "{}",
        nightly.describe()
    );
    tools::assert_finished_all(&nightly);
    assert_same_states(&original, &snapshot(&mut db.client()).states, "few");
}

/// Synapse deletes a group and rewrites its successor as a full snapshot
/// (de-deltas it) after the pass read the successor's chunk and before the
/// chunk is used: the group the chunk led out by no longer has that edge,
/// so the chunk is read again whole, and every state stays right.
#[test]
fn a_chunk_synapse_rewrote_after_the_pass_read_it_is_read_again() {
    // Snapshots every 7 groups, so the second chunk (groups 31 to 60)
    // does not start with one.
    let config = GenConfig {
        max_delta_hops: 7,
        ..GenConfig::compressible(8, 1, 120)
    };
    let (db, generated) = check::generated_db("pass_reread", &config);
    let before = snapshot(&mut db.client()).states;
    // The room's first chunk (30 groups) is compressed first: the next
    // chunk's first group has its predecessor outside the chunk.
    run(&db, "rooms", "1", &[]);
    let victim: i64 = db
        .client()
        .query_one(
            "SELECT prev_state_group FROM state_group_edges WHERE state_group = $1",
            &[&generated.rooms[0].group_ids[30]],
        )
        .expect("the second chunk's first group has a predecessor")
        .get(0);

    let mut tool = Watched::start(
        &args(&db, "pass", "10000", &[]),
        "pass::hand-over=1*return(pause)",
    );
    tool.wait_for("failpoint pass::hand-over: paused");
    // Synapse's deletion of the chunk's way out, de-deltaing its successor.
    let mut synapse = Imitator::new(
        db.client(),
        expectations_of(&generated),
        ImitatorConfig {
            de_delta: true,
            ..ImitatorConfig::default()
        },
    );
    synapse.delete_now(&[victim]).expect("deleting the group");
    assert!(synapse.stats.de_deltas >= 1, "{:?}", synapse.stats);
    tool.resume();
    let stderr = tool.finish();
    assert!(
        stderr.contains("changed since the pass read it; loading the chunk again"),
        "{stderr}"
    );
    let mut expected = before;
    expected.remove(&victim);
    assert_same_states(
        &expected,
        &snapshot(&mut db.client()).states,
        "after the deletion",
    );
}

/// The pass's connection meets a lock taken after its check that the
/// tables are free (the check is skipped, as if the lock came just after
/// it): the range's read of rows fails on `lock_timeout` after its groups
/// were taken in, they are forgotten, the range is read again once the
/// lock is gone, and the result is the room-by-room reader's.
#[test]
fn a_range_that_meets_a_lock_is_read_again_with_the_same_result() {
    let seed = 9;
    let (rooms, _, _) = runs("lock_rooms", seed, &[("rooms", "10000")], &[]);
    let expected = result(&rooms);
    let (db, _) = check::generated_db("lock_pass", &config(seed));
    let original = snapshot(&mut db.client()).states;
    let mut locker = db.client();
    let mut lock = locker.transaction().expect("starting the locker");
    lock.batch_execute("LOCK TABLE state_groups_state IN ACCESS EXCLUSIVE MODE")
        .expect("locking the rows");
    let mut tool = Watched::start(
        &args(&db, "pass", "10000", &["--pass-range", "40"]),
        "lock-wait::skip=return",
    );
    tool.wait_for("met a lock; reading it again");
    lock.rollback().expect("releasing the lock");
    let stderr = tool.finish();
    assert_same_states(&original, &snapshot(&mut db.client()).states, "lock");
    let got = result(&db);
    assert!(got.0 == expected.0, "edges or rows differ\n{stderr}");
    assert_eq!(got.1, expected.1, "progress\n{stderr}");
}

/// A run of the automatic tool whose standard error is followed line by
/// line, with fault points set and the pass's debug lines on.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    fn start(args: &[&str], failpoints: &str) -> Watched {
        let mut child = Command::new(tools::bin_path(AUTO))
            .args(args)
            .env("FAILPOINTS", failpoints)
            .env("RUST_LOG", "info,synapse_auto_compressor::pass=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the tool");
        let (sender, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (a minute at most) for a line holding `text`.
    fn wait_for(&mut self, text: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line {text:?}:\n{}", self.seen.join("\n")));
            let found = line.contains(text);
            self.seen.push(line);
            if found {
                return;
            }
        }
    }

    /// Lets a paused run go on.
    fn resume(&mut self) {
        writeln!(self.child.stdin.take().expect("stdin")).expect("resuming the tool");
    }

    /// The whole standard error, once the run has succeeded.
    fn finish(mut self) -> String {
        self.seen.extend(self.lines.iter());
        let status = self.child.wait().expect("waiting for the tool");
        let stderr = self.seen.join("\n");
        assert!(status.success(), "{status}\n{stderr}");
        stderr
    }
}
