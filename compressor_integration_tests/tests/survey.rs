//! `synapse_auto_compressor --dry-run` (the survey) against a real
//! PostgreSQL: run as a role holding only the SELECT grants of docs/privileges.md, it
//! changes nothing (every row of the state and progress tables, with the
//! transaction that last wrote it, is the same after), and its per-room
//! figures are exactly those of the real run with the same options that
//! follows: the room's groups and rows, counted by SQL over the groups that
//! run compressed, before and after. Covered: first runs (no progress
//! tables), runs that stop mid-room, runs continuing saved progress, and
//! rooms whose chunks would grow (skipped, fresh levels after), and a room
//! damaged part-way, which both leave alone. The survey reads as the run
//! would (`--reader`): with the pass, its figures are exactly those of the
//! room-by-room survey, and it still changes nothing.

use std::collections::BTreeMap;

use compressor_integration_tests::check;
use compressor_integration_tests::generator::{self, GenConfig};
use compressor_integration_tests::pg::{Role, TestDb};
use compressor_integration_tests::tools::{self, ToolRun};
use serde_json::Value;

const AUTO: &str = "synapse_auto_compressor";
const PROGRESS_TABLES: [&str; 3] = [
    "state_compressor_state",
    "state_compressor_progress",
    "state_compressor_total_progress",
];

/// Every row of the state and progress tables as text, with the
/// transaction that wrote it (`xmin`): a rewrite of a row with the same
/// values still shows. A missing table dumps as `None`.
fn dump(db: &TestDb) -> BTreeMap<&'static str, Option<Vec<String>>> {
    let mut client = db.client();
    ["state_groups", "state_groups_state", "state_group_edges"]
        .into_iter()
        .chain(PROGRESS_TABLES)
        .map(|table| {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .unwrap()
                .get(0);
            let rows = exists.then(|| {
                client
                    .query(
                        &format!("SELECT t::text || ' xmin ' || t.xmin::text FROM {table} AS t ORDER BY 1"),
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            });
            (table, rows)
        })
        .collect()
}

fn positions(db: &TestDb) -> BTreeMap<String, i64> {
    check::saved_positions(&mut db.client())
}

/// A room's figures: groups, rows now, rows after.
type Figures = (i64, i64, i64);

/// Groups and rows of `room`'s groups in `(start, end]`.
fn counted(db: &TestDb, room: &str, start: Option<i64>, end: i64) -> (i64, i64) {
    let row = db
        .client()
        .query_one(
            "SELECT (SELECT count(*) FROM state_groups WHERE room_id = $1 \
                     AND id > COALESCE($2::bigint, -1) AND id <= $3::bigint), \
                    (SELECT count(*) FROM state_groups_state WHERE room_id = $1 \
                     AND state_group > COALESCE($2::bigint, -1) AND state_group <= $3::bigint)",
            &[&room, &start, &end],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Rows per (room, group), as they are now.
fn rows_per_group(db: &TestDb) -> BTreeMap<(String, i64), i64> {
    db.client()
        .query(
            "SELECT room_id, state_group, count(*) FROM state_groups_state GROUP BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// A role holding only the documented grants for the survey (the progress
/// tables' line only once they exist).
fn reader(db: &TestDb, hint: &str) -> Role {
    let role = Role::create(db, hint);
    let block = check::grants_block("auto-dry-run");
    let tables_exist = !positions(db).is_empty();
    for statement in block.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if statement.contains("state_compressor") && !tables_exist {
            continue;
        }
        db.client()
            .batch_execute(&statement.replace("synapse_compressor", &role.ident()))
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    role
}

fn auto(url: &str, options: &[&str], extra: &[&str]) -> ToolRun {
    let mut args = vec!["-p", url];
    args.extend_from_slice(options);
    args.extend_from_slice(extra);
    let run = tools::run_bin(AUTO, &args);
    tools::assert_success(&run);
    run
}

/// The survey's `--json`, and the run that gave it.
fn survey_json(url: &str, options: &[&str]) -> (Value, ToolRun) {
    let run = auto(url, options, &["--dry-run", "--json"]);
    let json: Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("--dry-run --json gave no JSON ({e}): {}", run.describe()));
    (json, run)
}

/// The survey's rooms from `--json`, by room id, and their order.
fn survey(url: &str, options: &[&str]) -> (BTreeMap<String, Figures>, Vec<String>, Value) {
    let (json, _) = survey_json(url, options);
    let rooms = json["rooms"].as_array().expect("rooms");
    let order = rooms
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect();
    // A damaged room whose first chunk is damaged has no chunk to compare.
    let figures = rooms
        .iter()
        .filter(|r| r["chunks"].as_i64() > Some(0))
        .map(|r| {
            (
                r["room_id"].as_str().unwrap().to_owned(),
                (
                    r["groups"].as_i64().unwrap(),
                    r["rows_now"].as_i64().unwrap(),
                    r["rows_after"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    (figures, order, json)
}

/// Surveys as a SELECT-only role (checking it changes nothing), then runs
/// for real with the same options and checks the survey's figures against
/// SQL counts of what the run did. Returns the survey's JSON.
fn survey_then_run(db: &TestDb, hint: &str, options: &[&str]) -> Value {
    let role = reader(db, hint);
    let before = dump(db);
    let (figures, order, json) = survey(&role.url(), options);
    assert!(
        dump(db) == before,
        "the dry run {options:?} changed the database"
    );
    drop(role);

    let start = positions(db);
    let rows_before = rows_per_group(db);
    let run = auto(db.url(), options, &["--json"]);
    let end = positions(db);
    // The ranges the run compressed: from each room's position before to
    // its position after.
    let mut measured: BTreeMap<String, Figures> = BTreeMap::new();
    for (room, &last) in &end {
        let from = start.get(room).copied();
        if from == Some(last) {
            continue;
        }
        let (groups, rows_after) = counted(db, room, from, last);
        let rows_now = rows_before
            .range((room.clone(), from.unwrap_or(-1) + 1)..=(room.clone(), last))
            .map(|(_, rows)| rows)
            .sum();
        measured.insert(room.clone(), (groups, rows_now, rows_after));
    }
    assert_eq!(
        figures.keys().collect::<Vec<_>>(),
        measured.keys().collect::<Vec<_>>(),
        "the survey's rooms are not the run's ({options:?}): {}",
        run.describe()
    );
    for (room, figures) in &figures {
        assert_eq!(
            figures, &measured[room],
            "room {room} ({options:?}): the survey's (groups, rows now, rows after) vs the run's"
        );
    }
    // Ordered by rows saved, most first.
    let saved: Vec<i64> = order
        .iter()
        .map(|room| figures[room].1 - figures[room].2)
        .collect();
    assert!(saved.windows(2).all(|w| w[0] >= w[1]), "{saved:?}");
    json
}

/// Rooms that compress well, and rooms of Synapse's own shape (chains of
/// up to 100 hops) whose chunks mostly would grow, interleaved in id order
/// within each kind.
fn mixed_db(hint: &str, seed: u64) -> TestDb {
    let (db, _) = check::generated_db(hint, &GenConfig::compressible(seed, 3, 260));
    generator::generate_into(
        &mut db.client(),
        &GenConfig {
            seed: seed + 100,
            rooms: 2,
            groups_per_room: 400,
            first_group_id: 100_000,
            ..GenConfig::default()
        },
    )
    .expect("generating the second kind of rooms");
    db
}

#[test]
fn a_first_run_is_surveyed_exactly_and_the_table_says_the_same() {
    let db = mixed_db("survey_first", 41);
    let options = ["-c", "50", "-n", "100000"];

    // The human table: header, one line per room in the JSON's order, the
    // total, the estimate; nothing else on stdout.
    let role = reader(&db, "table");
    let table = auto(&role.url(), &options, &["--dry-run"]);
    let (_, order, _) = survey(&role.url(), &options);
    drop(role);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("room id"), "{}", table.stdout);
    for (i, room) in order.iter().enumerate() {
        assert!(lines[i + 1].starts_with(room.as_str()), "{}", table.stdout);
    }
    assert!(
        lines[order.len() + 1].starts_with("total"),
        "{}",
        table.stdout
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("This is an estimate; nothing was written"),
        "{}",
        table.stdout
    );
    assert_eq!(lines.len(), order.len() + 4, "{}", table.stdout);

    let json = survey_then_run(&db, "first", &options);
    let total = &json["total"];
    assert_eq!(total["finished_all"], true);
    assert_eq!(total["rooms"], 5);
    assert!(total["chunks_skipped"].as_i64().unwrap() > 0, "{json}");
    assert!(total["rows_saved"].as_i64().unwrap() > 0, "{json}");
    // Everything is compressed: a survey now finds nothing to do.
    let (figures, _, json) = survey(&reader(&db, "after").url(), &options);
    assert!(figures.is_empty(), "{json}");
}

#[test]
fn runs_that_stop_mid_room_and_continue_saved_progress_are_surveyed_exactly() {
    let db = mixed_db("survey_steps", 42);
    let steps: [&[&str]; 4] = [
        &["-c", "40", "-n", "7", "-l", "10,5"],
        &["-c", "60", "-n", "9", "-l", "10,5"],
        &["-c", "33", "-n", "5", "-l", "20,10,5"],
        &["-c", "70", "-n", "100000"],
    ];
    for (i, options) in steps.iter().enumerate() {
        let json = survey_then_run(&db, &format!("step{i}"), options);
        let finished = json["total"]["finished_all"].as_bool().unwrap();
        assert_eq!(finished, i == steps.len() - 1, "step {i}: {json}");
    }
}

#[test]
fn a_survey_with_saved_levels_of_another_size_matches_the_run() {
    // Saved progress whose levels differ from -l: rooms continue theirs.
    let (db, _) = check::generated_db("survey_levels", &GenConfig::compressible(43, 4, 200));
    auto(db.url(), &["-c", "25", "-n", "6", "-l", "3,3,3"], &[]);
    survey_then_run(&db, "levels", &["-c", "45", "-n", "11", "-l", "100,50,25"]);
}

/// A room damaged part-way (an edge into another room, which a run leaves
/// alone from that chunk on): the survey says so and its figures, those of
/// the chunks before and of every other room, are still the run's, with
/// either reader.
#[test]
fn a_damaged_room_is_left_alone_as_a_run_leaves_it() {
    let (db, generated) =
        check::generated_db("survey_damaged", &GenConfig::compressible(44, 3, 200));
    let (room, other) = (&generated.rooms[0].room_id, &generated.rooms[1].room_id);
    let mut client = db.client();
    let ids: Vec<i64> = client
        .query(
            "SELECT id FROM state_groups WHERE room_id = $1 ORDER BY id",
            &[room],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let group = ids[ids.len() / 2];
    check::edge_into_other_room(&mut client, group, other);
    // The pass finds the damage as the room-by-room reader does.
    pass_survey_is_the_rooms_survey(&db, "damaged_pass", &["-c", "30", "-n", "100000"]);
    let json = survey_then_run(&db, "damaged", &["-c", "30", "-n", "100000"]);
    let listed = json["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room.as_str())
        .expect("the damaged room is listed");
    assert_eq!(listed["damaged"], true, "{json}");
    assert!(listed["chunks"].as_i64() > Some(0), "{json}");
}

/// The time estimate is the survey's whole time (a run repeats all of it)
/// plus what a run adds: per chunk its lock and transactions, and the rows
/// it deletes and inserts, at the measured rates. (The real run's time is
/// printed beside it, not asserted: this machine's load varies.)
#[test]
fn the_time_estimate_is_the_whole_survey_plus_the_writes() {
    use synapse_auto_compressor::survey::{WRITE_ROWS_PER_SECOND, WRITE_SECONDS_PER_CHUNK};
    let db = mixed_db("survey_estimate", 41);
    let options = ["-c", "100", "-n", "1000"];
    let (_, _, json) = survey(db.url(), &options);
    let total = &json["total"];
    let seconds = |key: &str| total["seconds"][key].as_f64().unwrap();
    let count = |key: &str| total[key].as_f64().unwrap();
    let write =
        count("chunks") * WRITE_SECONDS_PER_CHUNK + count("rows_written") / WRITE_ROWS_PER_SECOND;
    assert!((seconds("write_estimate") - write).abs() < 1e-6, "{json}");
    assert!(
        (seconds("run_estimate") - seconds("survey") - write).abs() < 1e-6,
        "{json}"
    );
    let run = auto(db.url(), &options, &["--json"]);
    let real: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    eprintln!(
        "estimated {:.2}s (survey {:.2}s), real run {:.2}s",
        seconds("run_estimate"),
        seconds("survey"),
        real["seconds"]["total"].as_f64().unwrap()
    );
}

/// Rooms with forks, state resolutions and resets interleaved by id, then
/// rooms of Synapse's own shape whose chunks mostly would grow.
fn forked_db(hint: &str, seed: u64) -> TestDb {
    let config = GenConfig {
        fork_probability: 0.06,
        resolve_probability: 0.04,
        reset_probability: 0.02,
        empty_delta_probability: 0.02,
        ..GenConfig::compressible(seed, 6, 220)
    };
    let (db, _) = check::generated_db(hint, &config);
    generator::generate_into(
        &mut db.client(),
        &GenConfig {
            seed: seed + 100,
            rooms: 2,
            groups_per_room: 300,
            first_group_id: 100_000,
            ..GenConfig::default()
        },
    )
    .expect("generating the second kind of rooms");
    db
}

/// The survey's figures, without its times.
fn without_times(mut json: Value) -> Value {
    json["total"]
        .as_object_mut()
        .expect("total")
        .remove("seconds");
    json
}

/// Surveys with `options` as a SELECT-only role, with the room-by-room
/// reader and with the pass (small ranges, the default ones, and a memory
/// budget some rooms go over): the same rooms, figures and totals, the
/// pass really used, and the database unchanged by any of them. Returns
/// how many rooms went over the small budget.
fn pass_survey_is_the_rooms_survey(db: &TestDb, hint: &str, options: &[&str]) -> u64 {
    let role = reader(db, hint);
    let before = dump(db);
    let with = |reader: &[&str]| {
        let mut all = options.to_vec();
        all.extend_from_slice(reader);
        survey_json(&role.url(), &all)
    };
    let (rooms, run) = with(&["--reader", "rooms"]);
    assert_eq!(run.pass_chunks(), None, "{}", run.describe());
    let expected = without_times(rooms);
    assert!(expected["total"]["chunks"].as_i64() > Some(0), "{expected}");
    let readers: [&[&str]; 3] = [
        &["--reader", "pass", "--pass-range", "23"],
        &["--reader", "pass"],
        &[
            "--reader",
            "pass",
            "--pass-range",
            "40",
            "--pass-memory",
            "24KiB",
        ],
    ];
    let mut over_budget = 0;
    for reader in readers {
        let (json, run) = with(reader);
        let (chunks, over) = run
            .pass_chunks()
            .unwrap_or_else(|| panic!("{reader:?}: no pass: {}", run.describe()));
        assert!(
            chunks > 0,
            "{reader:?}: the pass did nothing: {}",
            run.describe()
        );
        over_budget += over;
        assert_eq!(
            without_times(json),
            expected,
            "{options:?} {reader:?}: the pass's survey vs the room-by-room one"
        );
    }
    assert!(
        dump(db) == before,
        "a survey {options:?} changed the database"
    );
    over_budget
}

#[test]
fn the_pass_surveys_exactly_what_the_room_by_room_survey_does() {
    let db = forked_db("survey_pass", 51);
    // From scratch (no progress tables), to the end and stopping at -n.
    let over = pass_survey_is_the_rooms_survey(&db, "scratch", &["-c", "30", "-n", "100000"]);
    assert!(
        over > 0,
        "no room went over the pass's budget: its fallback is untested"
    );
    pass_survey_is_the_rooms_survey(&db, "scratch_n", &["-c", "30", "-n", "11", "-l", "10,5"]);
    // After a real run that stopped part-way: saved positions and levels.
    auto(db.url(), &["-c", "30", "-n", "3", "-l", "10,5"], &[]);
    pass_survey_is_the_rooms_survey(&db, "partial", &["-c", "30", "-n", "100000", "-l", "10,5"]);
    pass_survey_is_the_rooms_survey(&db, "partial_n", &["-c", "45", "-n", "9", "-l", "10,5"]);
    // And the pass's survey is what the real run then does.
    let options = ["-c", "30", "-n", "100000", "-l", "10,5", "--reader", "pass"];
    let json = survey_then_run(
        &db,
        "pass_run",
        &[&options[..], &["--pass-range", "23"]].concat(),
    );
    assert_eq!(json["total"]["finished_all"], true, "{json}");
    assert!(json["total"]["chunks_skipped"].as_i64() > Some(0), "{json}");
}

/// `--reader auto`: the survey reads with the pass when the run would (a
/// long run), room by room for a short one.
#[test]
fn the_default_reader_surveys_with_the_pass_only_for_runs_that_cover_much() {
    let db = forked_db("survey_auto", 52);
    let role = reader(&db, "auto");
    // 8 rooms of 220 to 300 groups: one chunk of 10 is far below a tenth.
    let (_, short) = survey_json(&role.url(), &["-c", "10", "-n", "1"]);
    assert_eq!(short.pass_chunks(), None, "{}", short.describe());
    let (_, long) = survey_json(&role.url(), &["-c", "10", "-n", "10000"]);
    assert!(
        long.pass_chunks().is_some_and(|(c, _)| c > 0),
        "{}",
        long.describe()
    );
}

/// The server closes the pass's connection part-way through a survey: the
/// chunks it had not handed over are surveyed room by room, and the
/// figures are still the room-by-room survey's.
#[test]
fn a_survey_whose_pass_connection_fails_finishes_room_by_room() {
    let (db, _) = check::generated_db(
        "survey_pass_killed",
        &GenConfig {
            fork_probability: 0.06,
            reset_probability: 0.02,
            ..GenConfig::compressible(53, 5, 240)
        },
    );
    let options = ["-c", "30", "-n", "100000", "--pass-range", "5"];
    let (rooms, _) = survey_json(db.url(), &[&options[..], &["--reader", "rooms"]].concat());
    let url = db.url().to_owned();
    let args: Vec<String> = options
        .iter()
        .chain(&["--reader", "pass"])
        .map(|s| s.to_string())
        .collect();
    let tool = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        survey_json(&url, &args)
    });
    // The pass's connection is the one reading ranges of state_groups.
    let mut watcher = db.client();
    let mut killed = false;
    while !killed && !tool.is_finished() {
        killed = watcher
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND query LIKE '%AND state_group < $2%' LIMIT 1",
                &[],
            )
            .expect("looking for the pass's connection")
            .is_some_and(|row| row.get(0));
    }
    let (json, run) = tool.join().expect("the survey's thread panicked");
    assert!(
        killed,
        "the pass was never caught reading: {}",
        run.describe()
    );
    assert!(
        run.stderr.contains("The pass stopped reading"),
        "{}",
        run.describe()
    );
    assert_eq!(without_times(json), without_times(rooms));
}
