//! Several compressors at once: two manual runs on one room, the manual
//! tool beside the automatic one (and turned away from the room the
//! automatic tool holds), the automatic tool meeting a room that another
//! session has locked, and a write batch that meets a deadlock, a
//! serialization failure or a duplicate edge and is tried again.
//!
//! The contract: every exit status is 0 or 75 ("someone else is working,
//! try later"), no output mentions a duplicate key or a constraint, every
//! group keeps its state (Synapse's query) and no group ends up with two
//! edges (the invariants `check::snapshot` asserts).

use compressor_integration_tests::check::{self, assert_same_states, snapshot, DbSnapshot};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::{hold_room_lock, TestDb, ROOM_LOCK_CLASS};
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
    assert_batch_retried(
        &run,
        &["deadlock detected; trying the batch again"],
        &db,
        &original,
    );
}

/// Waits until some other session of this database waits for a lock, and
/// returns its pid.
fn wait_for_waiting_session(watcher: &mut postgres::Client) -> i32 {
    first_pid(
        watcher,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        &[],
        "nobody ever waited for a lock",
    )
}

/// Polls the server (bounded, two minutes) until `query` returns a row,
/// and returns its first column, a pid; fails with `never` otherwise.
fn first_pid(
    watcher: &mut postgres::Client,
    query: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
    never: &str,
) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(row) = watcher.query_opt(query, params).unwrap() {
            return row.get(0);
        }
        assert!(std::time::Instant::now() < deadline, "{never}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Statements that apply `group`'s new edge and rows as the tool's own
/// SQL file for `room` has them, without the file's locks and checks: what
/// a compressor that takes no locks (the reference tool) would run.
fn unguarded_rewrite(db: &TestDb, room: &str, levels: &str, group: i64) -> String {
    let sql = tools::TempPath::new("unguarded_plan", "sql");
    tools::assert_success(&tools::run_bin(
        MANUAL,
        &["-p", db.url(), "-r", room, "-l", levels, "-o", sql.as_str()],
    ));
    let text = std::fs::read_to_string(sql.path()).unwrap();
    let start = format!("DELETE FROM state_group_edges WHERE state_group = {group};");
    let statements: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != start)
        .take_while(|l| !l.trim_start().starts_with("END"))
        .collect();
    assert!(
        statements
            .iter()
            .any(|l| l.contains("INSERT INTO state_group_edges")),
        "group {group} gets no new edge in the plan"
    );
    statements.join("\n")
}

/// Another writer that takes no row locks rewrites a group exactly as the
/// tool is about to (its new edge and rows, in an open transaction); the
/// tool's write waits on it. Once it commits, the tool's delete finds that
/// group's old rows gone, so the rows it deleted do not add up to those
/// loaded: the tool rolls the batch back, tries it again counting each
/// group's rows, finds that group changed and leaves it as the other writer
/// left it, writes the rest, and every state is intact with one edge per
/// group.
#[test]
fn a_write_whose_rows_were_rewritten_meanwhile_is_tried_again() {
    meets_a_rewrite_while_waiting(
        "conc_rewritten",
        false,
        &["were loaded; trying the batch again, counting each group's rows"],
    );
}

/// The same with a group that has no rows (an empty delta): the delete's
/// count adds up, so the tool goes on to insert its edge and meets the
/// other writer's committed duplicate edge; it rolls the batch back and
/// tries it again, with the same outcome.
#[test]
fn a_write_that_meets_a_duplicate_edge_is_tried_again() {
    meets_a_rewrite_while_waiting(
        "conc_duplicate",
        true,
        &[
            "duplicate key value violates unique constraint",
            "trying the batch again",
        ],
    );
}

fn meets_a_rewrite_while_waiting(hint: &str, empty: bool, said: &[&str]) {
    // Enough groups for a few empty deltas among those rewritten.
    let (db, generated) = generated_db(hint, 61, 2, 600);
    let room = generated.rooms[0].room_id.clone();
    let groups = groups_to_rewrite(&db, &room, "10,10");
    assert!(groups.len() >= 2 && groups.len() < 500, "not one batch");
    let original = snapshot(&mut db.client());
    let group = *groups
        .iter()
        .rev()
        .find(|g| original.structure[g].rows.is_empty() == empty)
        .expect("a rewritten group with (or without) rows");
    let rewrite = unguarded_rewrite(&db, &room, "10,10", group);

    let mut other = db.client();
    let mut tx = other.transaction().unwrap();
    tx.batch_execute(&rewrite).unwrap();
    let tool = tools::start_bin(MANUAL, &manual_args(&db, &room, "10,10"));
    wait_for_waiting_session(&mut db.client());
    tx.commit().unwrap();
    let run = tool.wait();
    assert!(
        run.stderr
            .contains(&format!("state group {group}: its edge changed")),
        "the group the other writer rewrote was not left alone\n{}",
        run.describe()
    );
    assert_batch_retried(&run, said, &db, &original);
}

/// With `default_transaction_isolation = 'repeatable read'` (set for the
/// database, so the tool's sessions get it), a session that holds an
/// update of the room's groups while the tool's write waits for them makes
/// PostgreSQL refuse the tool's transaction once it commits ("could not
/// serialize access"). The tool rolls the batch back and tries it again in
/// a new transaction, which writes.
#[test]
fn a_write_that_meets_a_serialization_failure_is_tried_again() {
    let (db, generated) = generated_db("conc_serialize", 63, 2, 150);
    let room = generated.rooms[0].room_id.clone();
    let groups = groups_to_rewrite(&db, &room, "10,10");
    assert!(groups.len() >= 2 && groups.len() < 500, "not one batch");
    let original = snapshot(&mut db.client());
    db.client()
        .batch_execute(
            "DO $$ BEGIN EXECUTE format(\
                 'ALTER DATABASE %I SET default_transaction_isolation = %L', \
                 current_database(), 'repeatable read'); END $$",
        )
        .unwrap();

    let mut other = db.client();
    let mut tx = other.transaction().unwrap();
    tx.execute(
        "UPDATE state_groups SET room_id = room_id WHERE id = ANY($1)",
        &[&groups],
    )
    .unwrap();
    let tool = tools::start_bin(MANUAL, &manual_args(&db, &room, "10,10"));
    wait_for_waiting_session(&mut db.client());
    tx.commit().unwrap();
    let run = tool.wait();
    assert_batch_retried(
        &run,
        &["could not serialize access due to concurrent update; trying the batch again"],
        &db,
        &original,
    );
}

/// The server process of an automatic run that holds a room lock and waits
/// for a table lock (seen in `pg_locks`); waits until there is one.
fn wait_for_auto_holding_a_room(watcher: &mut postgres::Client) -> i32 {
    first_pid(
        watcher,
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
           AND l.classid::int8 = $1 AND a.datname = current_database() \
           AND a.application_name = 'synapse_auto_compressor' \
           AND a.wait_event_type = 'Lock'",
        &[&(ROOM_LOCK_CLASS as i64 & 0xffff_ffff)],
        "the automatic tool never held a room while waiting",
    )
}

/// Exclusion across the tools, shown by the tools themselves: while the
/// automatic tool holds a room (held in place after taking the room's lock,
/// before reading its progress, by the test's lock on its levels table),
/// the manual tool is run on every room: the room the automatic tool holds
/// turns it away with 75, naming the automatic tool's session, and only
/// that one. So the two tools lock a room under the same key, whatever
/// that key is.
#[test]
fn the_manual_tool_exits_75_on_the_room_the_automatic_tool_holds() {
    let (db, generated) = generated_db("conc_cross_tool", 64, 3, 100);
    // A first short run creates the progress tables.
    tools::assert_success(&tools::run_bin(
        AUTO,
        &["-p", db.url(), "-c", "20", "-n", "1"],
    ));
    let original = snapshot(&mut db.client());

    let mut blocker = db.client();
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE state_compressor_state IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let auto = tools::start_bin(
        AUTO,
        &["-p", db.url(), "-c", "20", "-n", "1000", "--no-progress"],
    );
    let holder = wait_for_auto_holding_a_room(&mut db.client());

    let mut turned_away = Vec::new();
    for room in &generated.rooms {
        let run = tools::run_bin(MANUAL, &manual_args(&db, &room.room_id, "10,10"));
        if assert_clean_exit(&run) {
            let error = run.error_lines()[0].to_owned();
            assert!(
                error.contains(&format!("synapse_auto_compressor (server process {holder}")),
                "the message names the automatic tool's session: {error}"
            );
            turned_away.push(room.room_id.clone());
        }
    }
    assert_eq!(
        turned_away.len(),
        1,
        "the manual tool was turned away from {turned_away:?}, not from exactly the room the automatic tool holds"
    );

    tx.commit().unwrap();
    let auto = auto.wait();
    assert!(!assert_clean_exit(&auto), "{}", auto.describe());
    assert_same_states(
        &original.states,
        &snapshot(&mut db.client()).states,
        "both tools done",
    );
}

/// A run that met a conflict in a write batch (its log holds every one of
/// `said`), tried the batch again and succeeded: it wrote, and every
/// group's state is what it was.
fn assert_batch_retried(run: &ToolRun, said: &[&str], db: &TestDb, original: &DbSnapshot) {
    tools::assert_success(run);
    assert!(
        said.iter().all(|text| run.stderr.contains(text)),
        "the tool did not meet the conflict ({said:?})\n{}",
        run.describe()
    );
    let now = snapshot(&mut db.client());
    assert_same_states(&original.states, &now.states, "after the retried batch");
    assert_ne!(
        original.structure, now.structure,
        "the retried batch wrote nothing"
    );
}
