//! Several compressors at once: two manual runs on one room, the manual
//! tool beside the automatic one, and the automatic tool meeting a room
//! that another session has locked.
//!
//! The contract: every exit status is 0 or 75 ("someone else is working,
//! try later"), no output mentions a duplicate key or a constraint, every
//! group keeps its state (Synapse's query) and no group ends up with two
//! edges (the invariants `check::snapshot` asserts).

use compressor_integration_tests::check::{self, assert_same_states, snapshot, DbSnapshot};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::{hold_room_lock, TestDb};
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::tools::{self, ToolRun};

const MANUAL: &str = "synapse_compress_state";
const AUTO: &str = "synapse_auto_compressor";

fn generated_db(hint: &str, seed: u64, rooms: usize, groups: usize) -> (TestDb, Generated) {
    check::generated_db(hint, &GenConfig::compressible(seed, rooms, groups))
}

/// Asserts the run ended with 0 or 75 and said nothing about constraints;
/// returns whether it was turned away (75).
fn assert_clean_exit(run: &ToolRun) -> bool {
    for text in [&run.stdout, &run.stderr] {
        for bad in ["duplicate key", "constraint", "panicked", "deadlock"] {
            assert!(
                !text.contains(bad),
                "output mentions {bad:?}\n{}",
                run.describe()
            );
        }
    }
    match run.status.code() {
        Some(0) => false,
        Some(75) => {
            let errors = run.error_lines();
            assert_eq!(errors.len(), 1, "{}", run.describe());
            assert!(
                errors[0].contains("is being compressed by") || errors[0].contains("advisory lock"),
                "{}",
                run.describe()
            );
            true
        }
        _ => panic!("expected exit status 0 or 75\n{}", run.describe()),
    }
}

fn manual_args<'a>(db: &'a TestDb, room: &'a str, levels: &'a str) -> Vec<&'a str> {
    vec![
        "-p",
        db.url(),
        "-r",
        room,
        "-l",
        levels,
        "-c",
        "--no-progress",
    ]
}

#[test]
fn a_locked_room_turns_the_manual_tool_away_with_75() {
    let (db, generated) = generated_db("conc_locked_manual", 3, 2, 150);
    let room = generated.rooms[0].room_id.clone();
    let holder = hold_room_lock(&db, &room);
    let before = snapshot(&mut db.client());

    let run = tools::run_bin(MANUAL, &manual_args(&db, &room, "100,50,25"));
    assert_eq!(run.status.code(), Some(75), "{}", run.describe());
    tools::assert_user_error(&run);
    let error = run.error_lines()[0];
    assert!(error.contains(&room), "names the room: {error}");
    assert!(
        error.contains("room-lock-holder"),
        "names the holder: {error}"
    );
    assert_eq!(
        before,
        snapshot(&mut db.client()),
        "a turned-away run wrote"
    );

    // Reading is never refused: a dry run and an SQL file still work.
    let dry = tools::run_bin(MANUAL, &["-p", db.url(), "-r", &room]);
    tools::assert_success(&dry);

    drop(holder);
    let run = tools::run_bin(MANUAL, &manual_args(&db, &room, "100,50,25"));
    tools::assert_success(&run);
    assert_same_states(
        &before.states,
        &snapshot(&mut db.client()).states,
        "after the lock was released",
    );
}

/// Two manual runs on the same room, started together, round after round
/// with level lists that rewrite most groups each time.
#[test]
fn two_manual_runs_on_one_room_never_collide() {
    let levels = ["10,10", "100,50,25", "3,3,3", "50", "7,5"];
    let mut turned_away = 0;
    let mut rounds = 0;
    for seed in [11, 12, 13] {
        let (db, generated) = generated_db("conc_two_manual", seed, 2, 400);
        let room = generated.biggest_room().room_id.clone();
        let original = snapshot(&mut db.client());
        for round in 0..levels.len() {
            let a = levels[round];
            let b = levels[(round + 1) % levels.len()];
            let first = tools::start_bin(MANUAL, &manual_args(&db, &room, a));
            let second = tools::start_bin(MANUAL, &manual_args(&db, &room, b));
            for run in [first.wait(), second.wait()] {
                turned_away += usize::from(assert_clean_exit(&run));
            }
            rounds += 1;
            let now = snapshot(&mut db.client());
            assert_same_states(
                &original.states,
                &now.states,
                &format!("seed {seed}, round {round}"),
            );
        }
    }
    eprintln!("{rounds} rounds of two manual runs: {turned_away} run(s) turned away with 75");
}

/// The manual tool, room after room, while the automatic tool works
/// through the same database.
#[test]
fn manual_runs_beside_an_automatic_run() {
    let mut turned_away = 0;
    let mut manual_runs = 0;
    for seed in [21, 22] {
        let (db, generated) = generated_db("conc_manual_auto", seed, 6, 200);
        let original = snapshot(&mut db.client());
        let auto = tools::start_bin(
            AUTO,
            &["-p", db.url(), "-c", "20", "-n", "1000", "--no-progress"],
        );
        for (i, room) in generated.rooms.iter().enumerate() {
            let levels = if i % 2 == 0 { "10,10" } else { "100,50,25" };
            let run = tools::run_bin(MANUAL, &manual_args(&db, &room.room_id, levels));
            turned_away += usize::from(assert_clean_exit(&run));
            manual_runs += 1;
        }
        let auto = auto.wait();
        assert!(!assert_clean_exit(&auto), "{}", auto.describe());
        let now = snapshot(&mut db.client());
        assert_same_states(&original.states, &now.states, &format!("seed {seed}"));
    }
    eprintln!("{manual_runs} manual runs beside the automatic tool: {turned_away} turned away");
}

fn json_field(run: &ToolRun, field: &str) -> i64 {
    let line = run.stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
    value[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no {field}\n{}", run.describe()))
}

fn auto_to_the_end(db: &TestDb) -> ToolRun {
    let run = tools::run_bin(
        AUTO,
        &["-p", db.url(), "-c", "30", "-n", "100000", "--json"],
    );
    tools::assert_success(&run);
    run
}

fn room_structure(db: &TestDb, room: &str) -> Structure {
    structure::structure(&mut db.client(), Some(room)).expect("reading the room")
}

fn fingerprint(snapshot: &DbSnapshot) -> &Structure {
    &snapshot.structure
}

/// A room locked by another session is left for a later run: untouched,
/// no progress saved, the scan position held at it; the next run finishes
/// it and the database ends exactly as if the lock had never been there.
#[test]
fn the_automatic_tool_leaves_a_locked_room_for_a_later_run() {
    let (locked_db, generated) = generated_db("conc_auto_locked", 31, 5, 150);
    let (free_db, _) = generated_db("conc_auto_free", 31, 5, 150);
    let room = generated.rooms[2].room_id.clone();
    let first_group = generated.rooms[2].group_ids[0];
    let original = snapshot(&mut locked_db.client());
    let room_before = room_structure(&locked_db, &room);

    let holder = hold_room_lock(&locked_db, &room);
    let run = auto_to_the_end(&locked_db);
    assert!(
        run.stderr
            .contains(&format!("Room {room} is being compressed by")),
        "{}",
        run.describe()
    );
    assert_eq!(json_field(&run, "rooms_busy"), 1, "{}", run.describe());
    assert_eq!(
        room_structure(&locked_db, &room),
        room_before,
        "the locked room was written"
    );
    let mut client = locked_db.client();
    let progress: i64 = client
        .query_one(
            "SELECT count(*) FROM state_compressor_progress WHERE room_id = $1",
            &[&room],
        )
        .unwrap()
        .get(0);
    assert_eq!(progress, 0, "progress was saved for the locked room");
    let position: i64 = client
        .query_one(
            "SELECT lowest_uncompressed_group FROM state_compressor_total_progress",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        position <= first_group,
        "the scan moved past the locked room ({position} > {first_group})"
    );
    let during = snapshot(&mut locked_db.client());
    assert_same_states(&original.states, &during.states, "with the room locked");
    assert!(
        json_field(&run, "rows_saved") > 0,
        "the other rooms were compressed"
    );

    drop(holder);
    let second = auto_to_the_end(&locked_db);
    assert_eq!(json_field(&second, "rooms_busy"), 0);
    auto_to_the_end(&free_db);
    let after = snapshot(&mut locked_db.client());
    assert_same_states(&original.states, &after.states, "after the second run");
    assert_eq!(
        fingerprint(&after),
        fingerprint(&snapshot(&mut free_db.client())),
        "leaving the room for later changed the result"
    );
}

/// The automatic tool's run lock key ("SynCompr", big-endian).
const RUN_LOCK_KEY: i64 = i64::from_be_bytes(*b"SynCompr");

/// Waits until a session of this database waits for a lock (the first
/// run, stopped in the middle of its work by the test's table lock), and
/// asserts it holds the run lock. Returns its pid.
fn wait_for_blocked_run(watcher: &mut postgres::Client) -> i32 {
    let pid = wait_for_waiting_session(watcher);
    let holds: bool = watcher
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks \
             WHERE pid = $1 AND locktype = 'advisory' AND granted AND objsubid = 1 \
               AND ((classid::int8 << 32) | objid::int8) = $2)",
            &[&pid, &RUN_LOCK_KEY],
        )
        .unwrap()
        .get(0);
    assert!(
        holds,
        "the working run (server process {pid}) does not hold the run lock"
    );
    pid
}

/// Two automatic runs started together never both work: while the first
/// holds the run lock (held in place by a table lock it waits for), a
/// second exits 75 at once; once the first is done, a third works.
#[test]
fn a_second_automatic_run_exits_75_while_the_first_works() {
    let (db, _) = generated_db("conc_two_auto", 51, 4, 100);
    // A first short run creates the progress tables.
    tools::assert_success(&tools::run_bin(
        AUTO,
        &["-p", db.url(), "-c", "20", "-n", "1"],
    ));
    let original = snapshot(&mut db.client());

    let mut blocker = db.client();
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE state_compressor_progress IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let first = tools::start_bin(AUTO, &["-p", db.url(), "-c", "20", "-n", "1000"]);
    let holder = wait_for_blocked_run(&mut db.client());

    let second = tools::run_bin(AUTO, &["-p", db.url(), "-c", "20", "-n", "1000"]);
    assert_eq!(second.status.code(), Some(75), "{}", second.describe());
    tools::assert_user_error(&second);
    assert!(
        second.error_lines()[0].contains(&format!("server process {holder}")),
        "the message names the first run's session\n{}",
        second.describe()
    );

    tx.commit().unwrap();
    let first = first.wait();
    tools::assert_success(&first);
    let third = tools::run_bin(AUTO, &["-p", db.url(), "-c", "20", "-n", "1000"]);
    tools::assert_success(&third);
    assert_same_states(
        &original.states,
        &snapshot(&mut db.client()).states,
        "after three runs",
    );
}

/// The groups a manual `-c` run will rewrite, read from the guarded SQL
/// file the tool writes for the same room (each block locks its group
/// FOR NO KEY UPDATE).
fn groups_to_rewrite(db: &TestDb, room: &str, levels: &str) -> Vec<i64> {
    let sql = tools::TempPath::new("rewrite_plan", "sql");
    tools::assert_success(&tools::run_bin(
        MANUAL,
        &["-p", db.url(), "-r", room, "-l", levels, "-o", sql.as_str()],
    ));
    let text = std::fs::read_to_string(sql.path()).unwrap();
    let mut groups: Vec<i64> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("PERFORM 1 FROM state_groups WHERE id = ")?
                .strip_suffix(" FOR NO KEY UPDATE;")?
                .parse()
                .ok()
        })
        .collect();
    groups.sort_unstable();
    groups
}

/// A deadlock between the tool's write and another session (here forced:
/// the test holds the last group the write locks, then asks for the first
/// one, which the write holds) is resolved by PostgreSQL aborting the
/// tool's transaction; the tool rolls the batch back, tries it again once
/// the other session is done, and ends with every state intact.
#[test]
fn a_write_that_meets_a_deadlock_is_tried_again() {
    let (db, generated) = generated_db("conc_deadlock", 61, 2, 150);
    let room = generated.rooms[0].room_id.clone();
    let groups = groups_to_rewrite(&db, &room, "10,10");
    assert!(
        groups.len() >= 2 && groups.len() < 500,
        "{} groups: not one batch",
        groups.len()
    );
    let (first, last) = (groups[0], groups[groups.len() - 1]);
    let original = snapshot(&mut db.client());

    let (holding, held) = std::sync::mpsc::channel::<()>();
    let (go, told) = std::sync::mpsc::channel::<()>();
    let mut other = db.client();
    let other_session = std::thread::spawn(move || {
        // Let the tool be the one that notices the deadlock.
        other.batch_execute("SET deadlock_timeout = '60s'").unwrap();
        let mut tx = other.transaction().unwrap();
        tx.execute(
            "SELECT 1 FROM state_groups WHERE id = $1 FOR UPDATE",
            &[&last],
        )
        .unwrap();
        holding.send(()).unwrap();
        told.recv().unwrap();
        tx.execute(
            "SELECT 1 FROM state_groups WHERE id = $1 FOR UPDATE",
            &[&first],
        )
        .unwrap();
        tx.commit().unwrap();
    });
    held.recv().unwrap();
    let tool = tools::start_bin(MANUAL, &manual_args(&db, &room, "10,10"));
    wait_for_waiting_session(&mut db.client());
    go.send(()).unwrap();
    other_session.join().expect("the other session");
    let run = tool.wait();
    tools::assert_success(&run);
    assert!(
        run.stderr
            .contains("deadlock detected; trying the batch again"),
        "the tool did not meet the deadlock\n{}",
        run.describe()
    );
    let now = snapshot(&mut db.client());
    assert_same_states(&original.states, &now.states, "after the retried batch");
    assert_ne!(
        original.structure, now.structure,
        "the retried batch wrote nothing"
    );
}

/// Waits until some other session of this database waits for a lock, and
/// returns its pid.
fn wait_for_waiting_session(watcher: &mut postgres::Client) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let row = watcher
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nobody ever waited for a lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
