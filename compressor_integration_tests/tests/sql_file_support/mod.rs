//! What the SQL-file tests share: the generated fixture, the plan a twin
//! database learns with `-c`, writing and applying the file, and reading
//! which groups it skipped. Included by `sql_file.rs` and
//! `sql_file_races.rs`, each of which uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use compressor_integration_tests::check::{self, compress_ok, snapshot, DbSnapshot};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::Structure;
use compressor_integration_tests::synapse_state;
use compressor_integration_tests::tools::{self, TempPath, ToolRun};
use postgres::Client;

pub const LEVELS: &str = "10,5";

/// Rooms with short Synapse chains: many snapshots, so the compressor
/// rewrites many groups, and the group before each snapshot is a leaf that
/// becomes a new base.
pub fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 2,
        groups_per_room: 250,
        members: 30,
        max_delta_hops: 5,
        nasty_strings: true,
        ..GenConfig::default()
    }
}

/// A generated database and the room the tests compress.
pub struct Fixture {
    pub db: TestDb,
    pub room: String,
    pub generated: compressor_integration_tests::generator::Generated,
}

pub fn fixture(hint: &str, seed: u64) -> Fixture {
    let (db, generated) = check::generated_db(hint, &config(seed));
    let room = generated.rooms[0].room_id.clone();
    Fixture {
        db,
        room,
        generated,
    }
}

/// What `-c` makes of the fixture's room: each rewritten group with its new
/// prev (from a twin database).
pub fn plan(seed: u64) -> (Structure, BTreeMap<i64, Option<i64>>) {
    let twin = fixture("sqlplan", seed);
    let before = snapshot(&mut twin.db.client()).structure;
    compress_ok(twin.db.url(), &["-r", &twin.room, "-l", LEVELS, "-c"]);
    let after = snapshot(&mut twin.db.client()).structure;
    let rewritten = before
        .iter()
        .filter(|(id, g)| after.get(id) != Some(g))
        .map(|(&id, _)| (id, after[&id].prev()))
        .collect();
    (after, rewritten)
}

/// Writes the SQL file for the fixture's room (`-o FILE`, `-t` if asked)
/// and returns the tool's --json figures.
pub fn write_file(fx: &Fixture, file: &TempPath, transactions: bool) -> serde_json::Value {
    let mut args = vec!["-r", &fx.room, "-l", LEVELS, "-o", file.as_str(), "--json"];
    if transactions {
        args.push("-t");
    }
    let run = compress_ok(fx.db.url(), &args);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("bad JSON ({e})\n{}", run.describe()));
    assert!(
        json["outcome"] == "done" && json["groups_written"].as_u64() > Some(20),
        "the file would rewrite too little to test anything: {json}"
    );
    json
}

/// A fixture whose SQL file is written but not applied yet.
pub struct Pending {
    pub fx: Fixture,
    /// The database when the file was made.
    pub before: DbSnapshot,
    pub file: TempPath,
    /// The whole tree `-c` makes (on a twin database).
    pub expected: Structure,
    /// Each group the file rewrites, with its new prev.
    pub rewritten: BTreeMap<i64, Option<i64>>,
}

pub fn file_for(hint: &str, seed: u64, transactions: bool) -> Pending {
    let (expected, rewritten) = plan(seed);
    let fx = fixture(hint, seed);
    let before = snapshot(&mut fx.db.client());
    let file = TempPath::new(hint, "sql");
    write_file(&fx, &file, transactions);
    Pending {
        fx,
        before,
        file,
        expected,
        rewritten,
    }
}

/// `psql -v ON_ERROR_STOP=1 < FILE`, which must succeed.
pub fn apply(db: &TestDb, file: &TempPath) -> ToolRun {
    let run = tools::psql_file(db.url(), file.path());
    tools::assert_success(&run);
    run
}

/// Asserts two stored trees are identical, naming the first group that
/// differs (the whole trees are too big for a message).
pub fn assert_same_tree(found: &Structure, expected: &Structure, context: &str) {
    if let Some(id) = expected
        .keys()
        .chain(found.keys())
        .find(|id| found.get(id) != expected.get(id))
    {
        panic!(
            "{context}: group {id} differs\nexpected: {:?}\nfound: {:?}",
            expected.get(id),
            found.get(id)
        );
    }
}

/// The groups psql reported as skipped, with the reason given.
pub fn skipped(run: &ToolRun) -> BTreeMap<i64, String> {
    run.stderr
        .lines()
        .filter_map(|line| {
            let rest = line.split("NOTICE:  state group ").nth(1)?;
            let (id, why) = rest.split_once(" skipped: ")?;
            Some((id.parse().ok()?, why.to_owned()))
        })
        .collect()
}

/// Asserts that psql reported exactly one skipped group, `g`, for `why`.
pub fn assert_only_skip(run: &ToolRun, g: i64, why: &str) {
    let skips = skipped(run);
    assert_eq!(
        skips.keys().collect::<Vec<_>>(),
        vec![&g],
        "{}",
        run.describe()
    );
    assert!(skips[&g].starts_with(why), "{skips:?}");
}

/// Rewrites `g` as Synapse's de-delta does: its full state (Synapse's query)
/// as its rows, its edge removed.
pub fn de_delta(client: &mut Client, g: i64) {
    let state = synapse_state::state_of_group(client, g).expect("reading a state");
    let mut tx = client.transaction().unwrap();
    let room: String = tx
        .query_one("SELECT room_id FROM state_groups WHERE id = $1", &[&g])
        .unwrap()
        .get(0);
    tx.execute(
        "DELETE FROM state_groups_state WHERE state_group = $1",
        &[&g],
    )
    .unwrap();
    tx.execute(
        "DELETE FROM state_group_edges WHERE state_group = $1",
        &[&g],
    )
    .unwrap();
    for ((ty, key), event) in &state {
        tx.execute(
            "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&g, &room, ty, key, event],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// An unreferenced leaf (no group builds on it) that the file makes a new
/// base, which Synapse's cleanup may delete before or while the file is
/// applied; and the groups the file builds on it.
pub fn leaf_base(
    before: &Structure,
    rewritten: &BTreeMap<i64, Option<i64>>,
) -> (i64, BTreeSet<i64>) {
    let children: BTreeSet<i64> = before.values().filter_map(|g| g.prev()).collect();
    let victim = rewritten
        .values()
        .flatten()
        .copied()
        .find(|b| !children.contains(b))
        .expect("no leaf group became a new base: pick another seed");
    let users = rewritten
        .iter()
        .filter(|(_, base)| **base == Some(victim))
        .map(|(&g, _)| g)
        .collect();
    (victim, users)
}
