//! The automatic tool against a real PostgreSQL: many interleaved rooms
//! compressed over several runs, runs killed at random moments and resumed,
//! progress tables written by hand (reference format) or corrupted, a room
//! purged between runs, the one-run-at-a-time lock, and the real Synapse
//! fixture. After every step, every group's state (Synapse's query at the
//! start and end, the stored tree resolved in memory in between) must be
//! exactly what it was.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use compressor_integration_tests::check::{self, assert_same_states, snapshot, snapshot_in_memory};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::pg::{Role, TestDb};
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::tools::{self, ToolRun};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const AUTO: &str = "synapse_auto_compressor";
/// The tool's advisory lock key ("SynCompr", big-endian).
const LOCK_KEY: i64 = i64::from_be_bytes(*b"SynCompr");

/// Rooms that compress well, with hostile strings for odd seeds.
fn config(seed: u64, rooms: usize, groups: usize) -> GenConfig {
    GenConfig {
        nasty_strings: seed % 2 == 1,
        ..GenConfig::compressible(seed, rooms, groups)
    }
}

fn auto(url: &str, chunk: &str, chunks: &str, extra: &[&str]) -> ToolRun {
    let mut args = vec!["-p", url, "-c", chunk, "-n", chunks];
    args.extend_from_slice(extra);
    tools::run_bin(AUTO, &args)
}

fn auto_ok(url: &str, chunk: &str, chunks: &str) -> ToolRun {
    let run = auto(url, chunk, chunks, &[]);
    tools::assert_success(&run);
    run
}

/// Runs `-n chunks` repeatedly until the tool reports nothing left.
fn run_until_done(url: &str, chunk: &str, chunks: &str) -> usize {
    for runs in 1..=500 {
        if auto_ok(url, chunk, chunks).finished_all() {
            return runs;
        }
    }
    panic!("the automatic tool never finished");
}

fn room_structure(db: &TestDb) -> Structure {
    structure::structure(&mut db.client(), None).expect("reading the structure")
}

fn progress_rows(db: &TestDb) -> Vec<(String, i64)> {
    db.client()
        .query(
            "SELECT room_id, last_compressed FROM state_compressor_progress ORDER BY room_id",
            &[],
        )
        .expect("reading progress")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn many_small_runs_give_the_same_result_as_one_big_run() {
    let cfg = config(23, 4, 400);
    let (small, generated) = check::generated_db("auto_small_runs", &cfg);
    let (big, _) = check::generated_db("auto_big_run", &cfg);
    let before = snapshot(&mut small.client());

    // One chunk per run: these runs never load a chunk ahead (a second
    // connection), the big run does for almost every chunk, so this also
    // checks that loading ahead changes nothing.
    let runs = run_until_done(small.url(), "20", "1");
    assert!(runs > 10, "expected many runs, got {runs}");
    let big_run = auto_ok(big.url(), "20", "10000");
    assert!(big_run.finished_all(), "{}", big_run.describe());

    let after_small = snapshot(&mut small.client());
    assert_same_states(&before.states, &after_small.states, "many small runs");
    let after_big = snapshot(&mut big.client());
    assert_same_states(&before.states, &after_big.states, "one big run");
    assert_eq!(
        after_small.structure, after_big.structure,
        "resuming between runs must give exactly the same tree as one run"
    );
    assert!(
        structure::row_count(&after_big.structure) < generated.row_count(),
        "expected the database to shrink"
    );
    // Every room's progress reached its last group.
    let progress = progress_rows(&small);
    assert_eq!(progress.len(), generated.rooms.len());
    for room in &generated.rooms {
        let last = *room.group_ids.iter().max().unwrap();
        assert!(
            progress.contains(&(room.room_id.clone(), last)),
            "room {:?} did not reach {last}: {progress:?}",
            room.room_id
        );
    }
}

/// The run loads ahead on up to two more connections. A server that
/// refuses them (here a role's connection limit: one connection, then two)
/// must give a warning and exactly the tree of a run that had them.
#[test]
fn runs_short_of_connections_load_in_turn_with_the_same_result() {
    let cfg = config(29, 3, 300);
    let (free, _) = check::generated_db("auto_conn_free", &cfg);
    let before = snapshot(&mut free.client());
    let free_run = auto_ok(free.url(), "20", "10000");
    assert!(free_run.finished_all(), "{}", free_run.describe());
    assert!(
        !free_run.stderr.contains("Loading ahead on"),
        "{}",
        free_run.describe()
    );
    let expected = room_structure(&free);

    for limit in [1, 2] {
        let (db, _) = check::generated_db(&format!("auto_conn_limit_{limit}"), &cfg);
        let role = Role::create(&db, "lim");
        db.client()
            .batch_execute(&format!(
                "GRANT ALL ON ALL TABLES IN SCHEMA public TO {0};
                 GRANT CREATE ON SCHEMA public TO {0};
                 ALTER ROLE {0} CONNECTION LIMIT {limit};",
                role.ident()
            ))
            .expect("limiting the role");
        let run = auto_ok(&role.url(), "20", "10000");
        assert!(run.finished_all(), "{}", run.describe());
        let warning = format!("Loading ahead on {} connection(s), not 2", limit - 1);
        assert!(run.stderr.contains(&warning), "{}", run.describe());
        let after = snapshot(&mut db.client());
        assert_same_states(&before.states, &after.states, "a run short of connections");
        assert_eq!(
            after.structure, expected,
            "with {limit} connection(s) the tree must be the one a run with three gives"
        );
    }
}

#[test]
fn runs_killed_at_random_moments_resume_and_lose_nothing() {
    let cfg = config(23, 4, 400);
    let (db, _) = check::generated_db("auto_kills", &cfg);
    let before = snapshot(&mut db.client());
    let mut rng = SmallRng::seed_from_u64(23);

    let mut kills = 0;
    for attempt in 0..15 {
        // Kill after a random number of log lines: the tool keeps working
        // while the signal is delivered, so the moment varies further.
        let lines_before_kill = rng.random_range(1..=8);
        let mut child = Command::new(tools::bin_path(AUTO))
            .args(["-p", db.url(), "-c", "20", "-n", "1000"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the automatic tool");
        let stderr = child.stderr.take().unwrap();
        let mut seen = 0;
        for line in BufReader::new(stderr).lines() {
            if line.is_err() {
                break;
            }
            seen += 1;
            if seen == lines_before_kill {
                child.kill().expect("SIGKILL");
                kills += 1;
                break;
            }
        }
        child.wait().expect("waiting for the tool");
        let now = snapshot_in_memory(&mut db.client());
        assert_same_states(
            &before.states,
            &now.states,
            &format!("after kill {attempt}"),
        );
    }
    assert!(kills >= 10, "only {kills} runs were killed");

    let last = auto_ok(db.url(), "20", "100000");
    assert!(last.finished_all(), "{}", last.describe());
    let after = snapshot(&mut db.client());
    assert_same_states(&before.states, &after.states, "after the final run");

    // Killed runs plus a final one give exactly what an uninterrupted run gives.
    let (fresh, _) = check::generated_db("auto_kills_reference", &cfg);
    auto_ok(fresh.url(), "20", "100000");
    assert_eq!(room_structure(&db), room_structure(&fresh));
}

#[test]
fn progress_written_by_hand_in_the_reference_format_is_continued() {
    let cfg = config(31, 3, 200);
    let (db, _) = check::generated_db("auto_handwritten", &cfg);
    let (whole, _) = check::generated_db("auto_handwritten_whole", &cfg);
    let before = snapshot(&mut db.client());

    auto_ok(db.url(), "50", "4");
    // Read what was saved, drop the tables, and write them again by hand
    // with the reference tool's DDL, as a database it had worked on.
    let mut client = db.client();
    let levels: Vec<(String, i32, i32, i32, Option<i64>)> = client
        .query(
            "SELECT room_id, level_num, max_size, current_length, current_head \
             FROM state_compressor_state ORDER BY room_id, level_num",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert!(!levels.is_empty());
    let progress = progress_rows(&db);
    let lowest: i64 = client
        .query_one(
            "SELECT lowest_uncompressed_group FROM state_compressor_total_progress",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(
            "DROP TABLE state_compressor_state, state_compressor_progress, state_compressor_total_progress;
             CREATE TABLE state_compressor_state (room_id TEXT NOT NULL, level_num INT NOT NULL,
                 max_size INT NOT NULL, current_length INT NOT NULL, current_head BIGINT,
                 UNIQUE (room_id, level_num));
             CREATE INDEX state_compressor_state_index ON state_compressor_state (room_id);
             CREATE TABLE state_compressor_progress (room_id TEXT PRIMARY KEY,
                 last_compressed BIGINT NOT NULL);
             CREATE TABLE state_compressor_total_progress (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,
                 lowest_uncompressed_group BIGINT NOT NULL, CHECK (Lock='X'));",
        )
        .unwrap();
    for (room, num, max, len, head) in &levels {
        client
            .execute(
                "INSERT INTO state_compressor_state VALUES ($1, $2, $3, $4, $5)",
                &[room, num, max, len, head],
            )
            .unwrap();
    }
    for (room, last) in &progress {
        client
            .execute(
                "INSERT INTO state_compressor_progress VALUES ($1, $2)",
                &[room, last],
            )
            .unwrap();
    }
    client
        .execute(
            "INSERT INTO state_compressor_total_progress (lowest_uncompressed_group) VALUES ($1)",
            &[&lowest],
        )
        .unwrap();

    run_until_done(db.url(), "50", "1000");
    auto_ok(whole.url(), "50", "100000");
    let after = snapshot(&mut db.client());
    assert_same_states(
        &before.states,
        &after.states,
        "continued from hand-written tables",
    );
    assert_eq!(room_structure(&db), room_structure(&whole));
}

#[test]
fn corrupt_saves_reset_the_room_and_the_run_goes_on() {
    let cfg = config(41, 4, 150);
    let (db, generated) = check::generated_db("auto_corrupt", &cfg);
    let before = snapshot(&mut db.client());
    auto_ok(db.url(), "40", "4");

    let rooms: Vec<&str> = generated.rooms.iter().map(|r| r.room_id.as_str()).collect();
    let mut client = db.client();
    // Every room has saved levels now; damage each differently.
    let damage = [
        // a gap: level 2 missing
        "DELETE FROM state_compressor_state WHERE room_id = $1 AND level_num = 2",
        // length above the maximum
        "UPDATE state_compressor_state SET current_length = max_size + 5 WHERE room_id = $1 AND level_num = 1",
        // a head that does not exist
        "UPDATE state_compressor_state SET current_head = 987654321, current_length = 1 WHERE room_id = $1 AND level_num = 1",
        // a length without a head
        "UPDATE state_compressor_state SET current_head = NULL, current_length = 3 WHERE room_id = $1 AND level_num = 1",
    ];
    for (room, sql) in rooms.iter().zip(damage) {
        let changed = client.execute(sql, &[room]).unwrap();
        assert!(changed > 0, "damage did not apply to {room:?}: {sql}");
    }
    // Rewind the scan so every room is visited again.
    client
        .execute(
            "UPDATE state_compressor_total_progress SET lowest_uncompressed_group = 0",
            &[],
        )
        .unwrap();

    let mut resets = 0;
    for _ in 0..500 {
        let run = auto_ok(db.url(), "40", "4");
        resets += run.stderr.matches("resetting its levels").count();
        if run.finished_all() {
            break;
        }
    }
    assert!(
        resets >= 4,
        "expected every damaged room to be reset, saw {resets}"
    );
    let after = snapshot(&mut db.client());
    assert_same_states(&before.states, &after.states, "after corrupt saves");
}

#[test]
fn a_room_purged_between_runs_does_not_stop_the_run() {
    let cfg = config(53, 5, 150);
    let (db, generated) = check::generated_db("auto_purge", &cfg);
    auto_ok(db.url(), "30", "6");

    // Purge the room that has saved progress and is not finished yet, the
    // way Synapse's room deletion does: rows, edges, then groups.
    let progress = progress_rows(&db);
    let (victim, _) = progress
        .iter()
        .find(|(room, last)| {
            let room = generated.rooms.iter().find(|r| &r.room_id == room).unwrap();
            room.group_ids.iter().max().unwrap() > last
        })
        .expect("a room in progress")
        .clone();
    let mut client = db.client();
    client
        .execute(
            "DELETE FROM state_groups_state WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = $1)",
            &[&victim],
        )
        .unwrap();
    client
        .execute(
            "DELETE FROM state_group_edges WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = $1)",
            &[&victim],
        )
        .unwrap();
    client
        .execute("DELETE FROM state_groups WHERE room_id = $1", &[&victim])
        .unwrap();
    let before = snapshot(&mut db.client());

    run_until_done(db.url(), "30", "5");
    let after = snapshot(&mut db.client());
    assert_same_states(&before.states, &after.states, "after a purge");
}

#[test]
fn a_second_run_waits_for_nobody_and_exits_75() {
    let (db, _) = check::generated_db("auto_lock", &config(61, 1, 50));
    let mut holder = db.client();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .unwrap();
    let before = snapshot(&mut db.client());

    let run = auto(db.url(), "50", "10", &[]);
    assert_eq!(run.status.code(), Some(75), "{}", run.describe());
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.describe());
    assert!(errors[0].contains("advisory lock"), "{}", errors[0]);
    let during = snapshot(&mut db.client());
    assert_eq!(before, during, "a locked-out run must not touch anything");

    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .unwrap();
    auto_ok(db.url(), "50", "10");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let db = TestDb::create("auto_bad_args");
    let before = snapshot(&mut db.client());
    for (chunk, chunks, extra) in [
        ("0", "1", vec![]),
        ("-3", "1", vec![]),
        ("10", "0", vec![]),
        ("x", "1", vec![]),
        ("10", "1", vec!["-l", "10,0"]),
        ("10", "1", vec!["-l", ""]),
    ] {
        let run = auto(db.url(), chunk, chunks, &extra);
        tools::assert_user_error(&run);
    }
    let run = auto("postgresql://nobody@127.0.0.1:1/none", "10", "1", &[]);
    tools::assert_user_error(&run);
    assert_eq!(before, snapshot(&mut db.client()));
}

#[test]
fn the_real_synapse_fixture_compresses_fully() {
    let path = tools::synapse_fixture();
    let db = TestDb::create_empty("auto_fixture");
    tools::assert_success(&tools::psql_gzip_file(db.url(), &path));
    let before = snapshot(&mut db.client());
    let run = auto_ok(db.url(), "500", "1000");
    assert!(run.finished_all(), "{}", run.describe());
    let after = snapshot(&mut db.client());
    assert_same_states(&before.states, &after.states, "fixture");
    // Every room's progress reached its last group.
    let mut client = db.client();
    let behind: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT room_id, max(id) AS last FROM state_groups GROUP BY room_id) r \
             LEFT JOIN state_compressor_progress p USING (room_id) \
             WHERE p.last_compressed IS DISTINCT FROM r.last",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(behind, 0, "some rooms were not compressed to the end");
}
