//! `--json`: both tools print their final figures as one JSON object on
//! stdout, and those figures agree with what the database shows.

use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::tools::{self, ToolRun};
use serde_json::Value;

fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 3,
        groups_per_room: 300,
        members: 40,
        max_delta_hops: 8,
        nasty_strings: true,
        ..GenConfig::default()
    }
}

fn parse(run: &ToolRun) -> Value {
    tools::assert_success(run);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one JSON line on stdout\n{}",
        run.describe()
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", lines[0]))
}

#[test]
fn manual_tool_json_matches_the_database() {
    let (db, generated) = check::generated_db("json_manual", &config(5));
    let room = &generated.rooms[1].room_id;
    let before = snapshot(&mut db.client());
    let rows_before = db.state_rows();

    let run = tools::run_bin(
        "synapse_compress_state",
        &["-p", db.url(), "-r", room, "-c", "-l", "10,5", "--json"],
    );
    let json = parse(&run);
    assert_eq!(json["room_id"], Value::from(room.as_str()));
    assert_eq!(json["outcome"], "done", "{json}");
    let (json_before, json_after) = (
        json["rows_before"].as_i64().unwrap(),
        json["rows_after"].as_i64().unwrap(),
    );
    assert_eq!(json_before, generated.room_row_count(room) as i64);
    assert_eq!(
        rows_before - db.state_rows(),
        json_before - json_after,
        "{json}"
    );
    assert_eq!(
        json["rows_saved"].as_i64().unwrap(),
        json_before - json_after
    );
    assert!(json["groups_written"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["verified"], true);
    assert!(json["seconds"]["total"].as_f64().unwrap() >= 0.0);
    assert_same_states(
        &before.states,
        &snapshot(&mut db.client()).states,
        "--json run",
    );
}

#[test]
fn automatic_tool_json_matches_the_database() {
    let (db, _) = check::generated_db("json_auto", &config(6));
    let before = snapshot(&mut db.client());
    let rows_before = db.state_rows();

    let run = tools::run_bin(
        "synapse_auto_compressor",
        &["-p", db.url(), "-c", "100", "-n", "1000", "--json"],
    );
    let json = parse(&run);
    assert!(json["chunks"].as_u64().unwrap() >= 9, "{json}");
    assert_eq!(
        json["rows_saved"].as_i64().unwrap(),
        rows_before - db.state_rows(),
        "{json}"
    );
    assert!(json["rows_saved"].as_i64().unwrap() > 0, "{json}");
    assert_eq!(json["rooms_finished"], 3, "{json}");
    // Every group was in exactly one chunk.
    assert_eq!(
        json["groups"].as_u64().unwrap() as usize,
        before.states.len(),
        "{json}"
    );
    assert!(json["groups_changed"].as_u64().unwrap() > 0, "{json}");
    assert_same_states(
        &before.states,
        &snapshot(&mut db.client()).states,
        "--json run",
    );
}
