//! `synapse_auto_compressor --largest-rooms N` against a real PostgreSQL:
//! it fully compresses the N rooms the survey (`--dry-run`) says save the
//! most, saves their progress, leaves the scan position and every other
//! room alone, and a normal run to completion afterwards leaves exactly
//! the tree a normal run alone leaves (each room's chunks are the same
//! either way), every group's state unchanged.

use std::collections::BTreeMap;

use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::{self, GenConfig};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::tools::{self, ToolRun};
use serde_json::Value;

const AUTO: &str = "synapse_auto_compressor";

fn auto(url: &str, args: &[&str]) -> ToolRun {
    let mut all = vec!["-p", url];
    all.extend_from_slice(args);
    let run = tools::run_bin(AUTO, &all);
    tools::assert_success(&run);
    run
}

/// Rooms that compress well, of sizes far enough apart that what each
/// saves is clearly ranked (the estimate is only an estimate: near ties
/// may come out either way), and rooms of Synapse's own shape that hardly
/// compress (their chunks mostly would grow).
fn rooms_of_all_sizes(hint: &str) -> TestDb {
    let (db, _) = check::generated_db(hint, &GenConfig::compressible(51, 1, 1200));
    let more = [
        GenConfig {
            first_group_id: 10_000,
            ..GenConfig::compressible(52, 1, 700)
        },
        GenConfig {
            first_group_id: 20_000,
            ..GenConfig::compressible(53, 1, 400)
        },
        // (One generation with hostile strings only: their event ids may
        // repeat between generations.)
        GenConfig {
            first_group_id: 30_000,
            nasty_strings: false,
            ..GenConfig::compressible(54, 2, 120)
        },
        GenConfig {
            seed: 55,
            rooms: 2,
            groups_per_room: 500,
            first_group_id: 40_000,
            ..GenConfig::default()
        },
    ];
    for cfg in &more {
        generator::generate_into(&mut db.client(), cfg).expect("generating more rooms");
    }
    db
}

/// Each room's last group.
fn last_groups(db: &TestDb) -> BTreeMap<String, i64> {
    db.client()
        .query(
            "SELECT room_id, max(id) FROM state_groups GROUP BY room_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn progress(db: &TestDb) -> BTreeMap<String, i64> {
    check::saved_positions(&mut db.client())
}

#[test]
fn the_largest_rooms_are_compressed_first_and_a_normal_run_then_ends_the_same() {
    let db = rooms_of_all_sizes("largest_first");
    let alone = rooms_of_all_sizes("largest_alone");
    let before = snapshot(&mut db.client());
    let options = ["-c", "60", "-n", "100000"];

    // The survey's ranking (a whole run's savings per room).
    let survey = auto(db.url(), &[&options[..], &["--dry-run", "--json"]].concat());
    let json: Value = serde_json::from_str(survey.stdout.trim()).expect("the survey's JSON");
    let ranked: Vec<(String, i64)> = json["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["room_id"].as_str().unwrap().to_owned(),
                r["rows_saved"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranked.len(), 7, "{json}");
    // A clear top three, so the test does not hang on a tie.
    assert!(ranked[2].1 > ranked[3].1, "{ranked:?}");
    let top: Vec<&str> = ranked[..3].iter().map(|(room, _)| room.as_str()).collect();

    let run = auto(
        db.url(),
        &[&options[..], &["--largest-rooms", "3"]].concat(),
    );
    let lasts = last_groups(&db);
    let saved = progress(&db);
    let mut done: Vec<&str> = saved.keys().map(String::as_str).collect();
    let mut expected = top.clone();
    done.sort_unstable();
    expected.sort_unstable();
    let picked: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("Largest rooms:"))
        .collect();
    assert_eq!(done, expected, "survey {ranked:?}, picked {picked:#?}");
    for room in &top {
        assert_eq!(
            saved[*room], lasts[*room],
            "room {room} not compressed to its end"
        );
    }
    let scan: i64 = db
        .client()
        .query_one(
            "SELECT lowest_uncompressed_group FROM state_compressor_total_progress",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(scan, 0, "the scan position moved");
    let midway = snapshot(&mut db.client());
    assert_same_states(&before.states, &midway.states, "after --largest-rooms");
    for (id, group) in &before.structure {
        if !top.contains(&group.room_id.as_deref().unwrap_or("")) {
            assert_eq!(
                Some(group),
                midway.structure.get(id),
                "group {id} of a room not picked changed"
            );
        }
    }

    // A normal run to completion, then: the same tree as a normal run alone.
    let rest = auto(db.url(), &options);
    assert!(rest.finished_all(), "{}", rest.describe());
    let one = auto(alone.url(), &options);
    assert!(one.finished_all(), "{}", one.describe());
    let after = snapshot(&mut db.client());
    assert_same_states(
        &before.states,
        &after.states,
        "largest rooms, then a normal run",
    );
    assert!(
        after.structure == snapshot(&mut alone.client()).structure,
        "largest rooms first, then a normal run, left another tree than a normal run alone"
    );
    assert_eq!(progress(&db), progress(&alone));
}

/// `-n` caps the chunks of a --largest-rooms run too: it stops inside a
/// room, whose progress a later run continues.
#[test]
fn the_chunk_count_caps_a_largest_rooms_run() {
    let db = rooms_of_all_sizes("largest_capped");
    let run = auto(db.url(), &["-c", "60", "-n", "3", "--largest-rooms", "2"]);
    assert!(
        run.stderr.contains("Stopping at the run's chunk count"),
        "{}",
        run.describe()
    );
    let summary = auto(
        db.url(),
        &["-c", "60", "-n", "3", "--largest-rooms", "2", "--json"],
    );
    let json: Value = serde_json::from_str(summary.stdout.trim()).unwrap();
    assert_eq!(json["chunks"], 3, "{json}");
    let saved = progress(&db);
    let lasts = last_groups(&db);
    assert!(saved.len() <= 2, "{saved:?}");
    assert!(
        saved.iter().any(|(room, last)| *last < lasts[room]),
        "six chunks of 60 finished every picked room: {saved:?}"
    );
}

#[test]
fn a_bad_room_count_is_a_user_error() {
    let (db, _) = check::small_db("largest_bad_n", 20);
    let base = ["-p", db.url(), "-c", "10", "-n", "1", "--largest-rooms"];
    for bad in [&["0"][..], &["-2"], &["many"], &["2", "--dry-run"]] {
        let run = tools::run_bin(AUTO, &[&base[..], bad].concat());
        tools::assert_user_error(&run);
    }
}
