//! The real thing: state tables written by a real Synapse (6 rooms, forked
//! DAGs, 3,027 groups; `fixtures/README.md`). Every room is compressed and
//! every group's state must stay exactly the same.
//!
//! States are read with Synapse's query before and after all rooms; between
//! rooms they are resolved in memory from the stored tree (the invariants
//! are checked each time), as Synapse's query takes ~2 ms per group here.

use compressor_integration_tests::check::{self, snapshot, snapshot_in_memory, DbSnapshot};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::resolve_all;
use compressor_integration_tests::synapse_state::{self, first_difference};
use compressor_integration_tests::tools::{self, TempPath};
use std::collections::BTreeSet;

/// A fresh database (UTF8, C collation, from template0) holding the fixture.
fn load_fixture(hint: &str) -> (TestDb, DbSnapshot) {
    let path = tools::synapse_fixture();
    let db = TestDb::create_empty(hint);
    let run = tools::psql_gzip_file(db.url(), &path);
    tools::assert_success(&run);
    let snap = snapshot(&mut db.client());
    assert_eq!(snap.structure.len(), 3_027, "unexpected fixture contents");
    (db, snap)
}

fn rooms(snap: &DbSnapshot) -> Vec<String> {
    let rooms: BTreeSet<String> = snap
        .structure
        .values()
        .filter_map(|g| g.room_id.clone())
        .collect();
    rooms.into_iter().collect()
}

/// Compresses every room in turn with `levels` (None: the default), checking
/// after each room that only it changed, exactly as the model says, and
/// that no group's state changed.
fn compress_every_room(hint: &str, levels: Option<&str>, sql_file: bool) {
    let (db, original) = load_fixture(hint);
    let mut client = db.client();
    let level_sizes: Vec<usize> = levels
        .unwrap_or("100,50,25")
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let mut previous = original.clone();
    let mut rewrote = 0;
    for room in rooms(&original) {
        let mut args = vec!["-r", room.as_str()];
        if let Some(levels) = levels {
            args.extend_from_slice(&["-l", levels]);
        }
        let sql = TempPath::new("fixture", "sql");
        if sql_file {
            args.extend_from_slice(&["-o", sql.as_str(), "-t"]);
        } else {
            args.push("-c");
        }
        check::compress_ok(db.url(), &args);
        if sql_file {
            check::apply_sql(db.url(), sql.path());
        }
        let now = snapshot_in_memory(&mut client);
        check::assert_same_states(&original.states, &now.states, &format!("room {room}"));
        check::assert_other_rooms_untouched(&previous.structure, &now.structure, &room);
        assert_eq!(original.tables, now.tables);
        let in_range: BTreeSet<i64> = check::room_part(&previous.structure, &room)
            .keys()
            .copied()
            .collect();
        let outcome = check::assert_matches_model(
            &previous.structure,
            &now.structure,
            &room,
            &in_range,
            &level_sizes,
        );
        if previous.structure != now.structure {
            rewrote += 1;
        }
        eprintln!(
            "room {room}: {} groups, rows {} -> {} (model), {} forced resets",
            in_range.len(),
            outcome.rows_before,
            outcome.rows_after,
            outcome.forced_resets
        );
        previous = now;
    }
    eprintln!("{rewrote} rooms rewritten");
    let last = snapshot(&mut client);
    check::assert_same_states(&original.states, &last.states, "after all rooms");
    assert!(rewrote > 0, "no room was rewritten: a weak test");
}

#[test]
fn every_room_default_levels_committed() {
    compress_every_room("fixdefault", None, false);
}

#[test]
fn every_room_levels_50_25_committed() {
    compress_every_room("fixsmall", Some("50,25"), false);
}

#[test]
fn every_room_sql_file() {
    compress_every_room("fixsql", Some("20,20"), true);
}

#[test]
fn readers_agree_on_real_synapse_data() {
    let (db, snap) = load_fixture("fixreaders");
    let mut client = db.client();
    let batched = synapse_state::all_states_batched(&mut client, None).unwrap();
    if let Some(d) = first_difference(&snap.states, &batched) {
        panic!("batched reader disagrees with Synapse's query: {d}");
    }
    let model = resolve_all(&snap.structure);
    if let Some(d) = first_difference(&snap.states, &model) {
        panic!("in-memory resolution disagrees with Synapse's query: {d}");
    }
}
