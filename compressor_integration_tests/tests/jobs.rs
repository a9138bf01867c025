//! `synapse_auto_compressor --jobs N`: several rooms compressed at the same
//! time. Runs to completion with 2 and 4 workers leave exactly the edges,
//! rows and saved progress of one worker; runs killed at random moments
//! resume to that same result; two rooms really are in flight at once
//! (seen in `pg_locks`, not guessed from timing); a room in flight
//! holds the scan position back, so a room below the others' ids is still
//! finished; and with the pass, a room whose write waits leaves it once
//! its chunks pile up.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::{self, GenConfig, GenGroup, Generated};
use compressor_integration_tests::pg::{TestDb, ROOM_LOCK_CLASS};
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::tools;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const AUTO: &str = "synapse_auto_compressor";

fn config(seed: u64) -> GenConfig {
    GenConfig::compressible(seed, 6, 240)
}

/// Edges and rows, and the saved progress (positions and levels).
fn result(db: &TestDb) -> (Structure, Vec<String>) {
    let mut c = db.client();
    let tree = structure::structure(&mut c, None).expect("reading the structure");
    let progress = c
        .query(
            "SELECT p.room_id || ':' || p.last_compressed || ':' || \
                    COALESCE(string_agg(s.level_num || '/' || s.max_size || '/' || \
                        s.current_length || '/' || COALESCE(s.current_head::text, '-'), \
                        ',' ORDER BY s.level_num), '') \
             FROM state_compressor_progress p \
             LEFT JOIN state_compressor_state s USING (room_id) \
             GROUP BY p.room_id, p.last_compressed ORDER BY p.room_id",
            &[],
        )
        .expect("reading the progress")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (tree, progress)
}

fn args<'a>(db: &'a TestDb, jobs: &'a str, chunks: &'a str) -> Vec<&'a str> {
    vec![
        "-p",
        db.url(),
        "-c",
        "40",
        "-n",
        chunks,
        "-l",
        "10,5",
        "--jobs",
        jobs,
    ]
}

/// A database of `seed`'s data, compressed to completion by `jobs`
/// workers; every group's state is checked against the data's (Synapse's
/// query) afterwards.
fn run_to_completion(seed: u64, jobs: &str) -> (TestDb, Generated) {
    let (db, generated) = check::generated_db(&format!("jobs{jobs}_{seed}"), &config(seed));
    let original = snapshot(&mut db.client()).states;
    let run = tools::run_bin(AUTO, &args(&db, jobs, "10000"));
    tools::assert_success(&run);
    tools::assert_finished_all(&run);
    let workers = format!("by {jobs} worker");
    assert!(run.stderr.contains(&workers), "{}", run.describe());
    assert_same_states(
        &original,
        &snapshot(&mut db.client()).states,
        &format!("seed {seed}, --jobs {jobs}"),
    );
    (db, generated)
}

#[test]
fn more_workers_leave_the_same_result_as_one() {
    for seed in [1, 2, 3] {
        let (one, generated) = run_to_completion(seed, "1");
        let expected = result(&one);
        assert!(!expected.1.is_empty(), "the run saved no progress");
        assert_ne!(
            expected.0,
            generated.structure(),
            "seed {seed}: nothing was compressed"
        );
        for jobs in ["2", "4"] {
            let (db, _) = run_to_completion(seed, jobs);
            let got = result(&db);
            assert!(
                got.0 == expected.0,
                "seed {seed}, --jobs {jobs}: edges or rows differ from one worker's"
            );
            assert_eq!(got.1, expected.1, "seed {seed}, --jobs {jobs}: progress");
        }
    }
}

#[test]
fn killed_runs_with_workers_resume_to_the_same_result() {
    let seed = 4;
    let (one, _) = run_to_completion(seed, "1");
    let expected = result(&one);
    let mut rng = SmallRng::seed_from_u64(0x10b5);
    let mut killed = 0;
    for round in 0..4 {
        let (db, _) = check::generated_db(&format!("jobs_kill_{round}"), &config(seed));
        let original = snapshot(&mut db.client()).states;
        // Kill after a random chunk line (a chunk was just compressed and
        // is being written, or the next one is starting).
        let aim = rng.random_range(1..30);
        let mut child = Command::new(tools::bin_path(AUTO))
            .args(args(&db, "3", "10000"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the tool");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut seen = 0;
        for line in BufReader::new(stderr).lines() {
            let line = line.expect("reading the tool's log");
            if line.contains(": groups ") {
                seen += 1;
                if seen == aim {
                    child.kill().expect("killing the tool");
                    killed += 1;
                    break;
                }
            }
        }
        child.wait().expect("waiting for the tool");
        assert_same_states(
            &original,
            &snapshot(&mut db.client()).states,
            &format!("round {round}: killed after chunk line {aim}"),
        );
        let rerun = tools::run_bin(AUTO, &args(&db, "3", "10000"));
        tools::assert_success(&rerun);
        let got = result(&db);
        assert!(
            got.0 == expected.0,
            "round {round}: killed after chunk line {aim}, the resumed tree differs"
        );
        assert_eq!(got.1, expected.1, "round {round}: progress");
    }
    assert!(killed >= 2, "only {killed} kills landed");
}

#[test]
fn two_rooms_are_in_flight_at_once() {
    let (db, _) = check::generated_db("jobs_in_flight", &config(5));
    // Every group locked FOR SHARE: each worker stops at its first write,
    // holding its room's lock.
    let mut holder = db.client();
    let mut tx = holder.transaction().unwrap();
    tx.execute("SELECT id FROM state_groups FOR SHARE", &[])
        .unwrap();
    let started = tools::start_bin(AUTO, &args(&db, "2", "10000"));
    let mut watcher = db.client();
    let mut polls = 0u64;
    let holders: BTreeSet<i32> = loop {
        let rows = watcher
            .query(
                "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.classid::int8 = $1 \
                   AND a.application_name = 'synapse_auto_compressor' \
                   AND EXISTS (SELECT 1 FROM pg_stat_activity w \
                               WHERE w.pid = l.pid AND w.wait_event_type = 'Lock')",
                &[&(ROOM_LOCK_CLASS as i64 & 0xffff_ffff)],
            )
            .unwrap();
        let pids: BTreeSet<i32> = rows.iter().map(|r| r.get(0)).collect();
        if pids.len() >= 2 {
            break pids;
        }
        polls += 1;
        assert!(
            polls < 2_000_000,
            "never saw two workers each holding a room"
        );
    };
    assert_eq!(holders.len(), 2);
    tx.commit().unwrap();
    let run = started.wait();
    tools::assert_success(&run);
    tools::assert_finished_all(&run);
    assert!(
        run.stderr.contains("Compressing with 2 workers"),
        "{}",
        run.describe()
    );
    let json = tools::json_summary(&tools::run_bin(
        AUTO,
        &[&args(&db, "2", "1")[..], &["--json"]].concat(),
    ));
    assert_eq!(json["workers"], 2, "{json}");
}

/// Groups `ids` of `room`, a chain, each restating the same 20 members
/// and its own topic on its predecessor: every chunk compresses and is
/// written.
fn restating_room(room: &str, ids: std::ops::RangeInclusive<i64>) -> Vec<GenGroup> {
    let first = *ids.start();
    let members: Vec<(String, String)> = (0..20)
        .map(|m| (format!("@u{m}:example.org"), format!("$join{m}{room}")))
        .collect();
    ids.map(|id| {
        let topic = format!("$topic{id}");
        let mut rows: Vec<(&str, &str, &str)> = members
            .iter()
            .map(|(user, event)| ("m.room.member", user.as_str(), event.as_str()))
            .collect();
        rows.push(("m.room.topic", "", &topic));
        generator::group(id, room, (id > first).then_some(id - 1), &rows)
    })
    .collect()
}

/// Rooms A (ids `a_ids`) and B (`b_ids`), each a restating chain, run with
/// `extra` options (`--jobs 2`) while the test locks A's groups FOR SHARE:
/// A's worker waits at its first write while B is compressed to its last
/// group, then the lock goes. Returns the finished run, after checking
/// that both rooms end at their last group with every state unchanged.
fn run_with_a_held(
    hint: &str,
    a_ids: std::ops::RangeInclusive<i64>,
    b_ids: std::ops::RangeInclusive<i64>,
    extra: &[&str],
) -> (TestDb, tools::ToolRun) {
    let db = TestDb::create(hint);
    let (a, b) = ("!a:example.org", "!b:example.org");
    let (a_last, b_last) = (*a_ids.end(), *b_ids.end());
    let mut groups = restating_room(a, a_ids);
    groups.extend(restating_room(b, b_ids));
    generator::write_groups(&mut db.client(), &groups).unwrap();
    let original = snapshot(&mut db.client()).states;

    let mut holder = db.client();
    let mut tx = holder.transaction().unwrap();
    tx.execute(
        "SELECT id FROM state_groups WHERE room_id = $1 FOR SHARE",
        &[&a],
    )
    .unwrap();
    let started = tools::start_bin(AUTO, &[&args(&db, "2", "10000")[..], extra].concat());
    // Bounded polling of the server until B is done while A waits.
    let mut watcher = db.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let tables: bool = watcher
            .query_one(
                "SELECT to_regclass('state_compressor_progress') IS NOT NULL",
                &[],
            )
            .unwrap()
            .get(0);
        let b_done = tables
            && watcher
                .query_opt(
                    "SELECT 1 FROM state_compressor_progress \
                     WHERE room_id = $1 AND last_compressed = $2",
                    &[&b, &b_last],
                )
                .unwrap()
                .is_some();
        if b_done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "room B was never finished while room A waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let a_waits: bool = watcher
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND application_name = 'synapse_auto_compressor')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(a_waits, "room A's worker is not waiting at its write");
    tx.commit().unwrap();

    let run = started.wait();
    tools::assert_success(&run);
    tools::assert_finished_all(&run);
    let positions: Vec<(String, i64)> = watcher
        .query(
            "SELECT room_id, last_compressed FROM state_compressor_progress ORDER BY room_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        positions,
        [(a.to_owned(), a_last), (b.to_owned(), b_last)],
        "a room was left part-way\n{}",
        run.describe()
    );
    assert_same_states(&original, &snapshot(&mut db.client()).states, "--jobs 2");
    (db, run)
}

/// A room in flight holds the saved scan position back, as a room left for
/// later does. Room A alone holds ids 1-200 and room B 201-600; A's
/// worker is held at its first write while the other worker compresses
/// all of B, which moves the scan past A's ids. Once A's first chunk is
/// written, its worker must still find A's next chunk: the run ends with
/// both rooms compressed to their last group.
#[test]
fn a_room_in_flight_holds_the_scan_position_back() {
    run_with_a_held("jobs_hold_scan", 1..=200, 201..=600, &[]);
}

/// With the pass writing on two connections, the chunks of a room whose
/// write waits pile up in the queue without holding the other room up;
/// past 16 of them the room leaves the pass (the queue's memory stays
/// bounded) and the workers finish it afterwards, with the result of one
/// worker reading room by room.
#[test]
fn a_waiting_room_whose_chunks_pile_up_leaves_the_pass() {
    let (a_ids, b_ids) = (1..=800, 801..=1200);
    let (held, run) = run_with_a_held(
        "jobs_pile_up",
        a_ids.clone(),
        b_ids.clone(),
        &["--reader", "pass"],
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("The pass did "))
        .unwrap_or_else(|| panic!("no pass\n{}", run.describe()));
    assert!(
        line.contains("; 1 rooms went over its memory budget"),
        "room A did not leave the pass: {line}"
    );
    // The same rooms, one worker, room by room.
    let alone = TestDb::create("jobs_pile_up_alone");
    let mut groups = restating_room("!a:example.org", a_ids);
    groups.extend(restating_room("!b:example.org", b_ids));
    generator::write_groups(&mut alone.client(), &groups).unwrap();
    let mut one = args(&alone, "1", "10000");
    one.extend(["--reader", "rooms"]);
    tools::assert_finished_all(&tools::run_bin(AUTO, &one));
    let (got, expected) = (result(&held), result(&alone));
    assert!(got.0 == expected.0, "edges or rows differ");
    assert_eq!(got.1, expected.1, "progress");
}
