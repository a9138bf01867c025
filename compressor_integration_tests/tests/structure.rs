//! Exact trees: small hand-made rooms compressed with small levels, checked
//! edge by edge and row by row against results worked out by hand (and
//! against the level model).
//!
//! Remember the contract's guard: the compressor writes nothing when the new
//! tree has more rows than the old one. A chain of one-row deltas can only
//! grow when levels add snapshots, so the chains here are followed by two
//! groups Synapse stored as full snapshots (a burst of joins), whose
//! conversion into deltas makes the whole rewrite worth it.

use compressor_integration_tests::check::{self, compress_ok, snapshot, DbSnapshot};
use compressor_integration_tests::generator::{write_groups, GenGroup};
use compressor_integration_tests::level_model;
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::StateRow;
use compressor_integration_tests::tools::TempPath;
use compressor_integration_tests::StateMap;
use std::collections::{BTreeMap, BTreeSet};

const ROOM: &str = "!shapes:example.org";

fn key(t: &str, k: &str) -> (String, String) {
    (t.to_string(), k.to_string())
}

fn new_group(id: i64, prev: Option<i64>, delta: StateMap) -> GenGroup {
    GenGroup {
        id,
        room_id: ROOM.to_string(),
        event_id: format!("$ev{id}"),
        prev,
        delta,
    }
}

/// Groups 0..=12: 0 is a snapshot of three keys; each next one is a one-row
/// delta on the previous (a join, or every third a topic change).
fn chain13() -> Vec<GenGroup> {
    let mut groups = vec![new_group(
        0,
        None,
        StateMap::from([
            (key("m.room.create", ""), "$create".into()),
            (key("m.room.member", "@alice:example.org"), "$alice".into()),
            (key("m.room.power_levels", ""), "$pl".into()),
        ]),
    )];
    for i in 1..=12 {
        let entry = if i % 3 == 0 {
            (key("m.room.topic", ""), format!("$topic{i}"))
        } else {
            (
                key("m.room.member", &format!("@u{i}:example.org")),
                format!("$join{i}"),
            )
        };
        groups.push(new_group(i, Some(i - 1), StateMap::from([entry])));
    }
    groups
}

/// Full state of every group of `groups` (prevs precede their groups).
fn states(groups: &[GenGroup]) -> BTreeMap<i64, StateMap> {
    let mut out: BTreeMap<i64, StateMap> = BTreeMap::new();
    for g in groups {
        let mut state = g.prev.map(|p| out[&p].clone()).unwrap_or_default();
        state.extend(g.delta.clone());
        out.insert(g.id, state);
    }
    out
}

/// chain13 plus 13 = snapshot of state(12) + 40 joins, 14 = snapshot of
/// state(13) + a name change.
fn chain13_with_snapshot_tail() -> Vec<GenGroup> {
    let mut groups = chain13();
    let s12 = states(&groups)[&12].clone();
    let mut s13 = s12;
    for j in 0..40 {
        s13.insert(
            key("m.room.member", &format!("@burst{j}:example.org")),
            format!("$burst{j}"),
        );
    }
    let mut s14 = s13.clone();
    s14.insert(key("m.room.name", ""), "$name14".into());
    groups.push(new_group(13, None, s13));
    groups.push(new_group(14, None, s14));
    groups
}

fn load(db: &TestDb, groups: &[GenGroup]) -> DbSnapshot {
    let mut client = db.client();
    write_groups(&mut client, groups).unwrap();
    snapshot(&mut client)
}

enum Apply {
    Commit,
    SqlFile,
}

fn compress(db: &TestDb, levels: &str, apply: Apply) -> DbSnapshot {
    match apply {
        Apply::Commit => {
            compress_ok(db.url(), &["-r", ROOM, "-l", levels, "-c"]);
        }
        Apply::SqlFile => {
            let sql = TempPath::new("shapes", "sql");
            compress_ok(
                db.url(),
                &["-r", ROOM, "-l", levels, "-o", sql.as_str(), "-t"],
            );
            check::apply_sql(db.url(), sql.path());
        }
    }
    snapshot(&mut db.client())
}

/// Asserts the exact tree: each group's edge is `prevs[id]`, a snapshot's
/// rows are its full state, a delta's rows exactly the entries of its state
/// that differ from its prev's state; every row carries the room id.
fn assert_tree(
    after: &DbSnapshot,
    full: &BTreeMap<i64, StateMap>,
    prevs: &BTreeMap<i64, Option<i64>>,
) {
    assert_eq!(
        after.structure.keys().collect::<Vec<_>>(),
        prevs.keys().collect::<Vec<_>>()
    );
    for (id, info) in &after.structure {
        let expected_prev = prevs[id];
        assert_eq!(
            info.prevs,
            expected_prev.into_iter().collect::<Vec<_>>(),
            "edges of group {id}"
        );
        let expected_rows: StateMap = match expected_prev {
            None => full[id].clone(),
            Some(p) => full[id]
                .iter()
                .filter(|(k, e)| full[&p].get(*k) != Some(*e))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        };
        let mut rows: Vec<StateRow> = expected_rows
            .iter()
            .map(|((t, k), e)| StateRow {
                room_id: ROOM.to_string(),
                event_type: t.clone(),
                state_key: k.clone(),
                event_id: e.clone(),
            })
            .collect();
        rows.sort_unstable();
        assert_eq!(info.rows, rows, "rows of group {id}");
    }
}

fn check_against_model(before: &DbSnapshot, after: &DbSnapshot, levels: &[usize]) {
    let all: BTreeSet<i64> = before.structure.keys().copied().collect();
    let outcome =
        check::assert_matches_model(&before.structure, &after.structure, ROOM, &all, levels);
    assert_eq!(outcome.writes(), Some(true));
}

/// The worked example for levels 3,3.
fn prevs_3_3() -> BTreeMap<i64, Option<i64>> {
    BTreeMap::from([
        (0, None),
        (1, Some(0)),
        (2, Some(1)),
        (3, None),
        (4, Some(3)),
        (5, Some(4)),
        (6, Some(3)),
        (7, Some(6)),
        (8, Some(7)),
        (9, Some(6)),
        (10, Some(9)),
        (11, Some(10)),
        (12, None),
        (13, Some(12)),
        (14, Some(13)),
    ])
}

#[test]
fn chain_with_levels_3_3_committed() {
    let db = TestDb::create("chain33c");
    let groups = chain13_with_snapshot_tail();
    let before = load(&db, &groups);
    let after = compress(&db, "3,3", Apply::Commit);
    check::assert_same_states(&before.states, &after.states, "levels 3,3 (-c)");
    assert_tree(&after, &states(&groups), &prevs_3_3());
    check_against_model(&before, &after, &[3, 3]);
    assert_eq!(before.tables, after.tables);
}

#[test]
fn chain_with_levels_3_3_sql_file() {
    let db = TestDb::create("chain33o");
    let groups = chain13_with_snapshot_tail();
    let before = load(&db, &groups);
    let after = compress(&db, "3,3", Apply::SqlFile);
    check::assert_same_states(&before.states, &after.states, "levels 3,3 (-o -t)");
    assert_tree(&after, &states(&groups), &prevs_3_3());
}

#[test]
fn chain_with_single_level_3() {
    // One level of 3: chains of three groups, every third group a snapshot.
    let db = TestDb::create("chain3");
    let groups = chain13_with_snapshot_tail();
    let before = load(&db, &groups);
    let after = compress(&db, "3", Apply::Commit);
    check::assert_same_states(&before.states, &after.states, "level 3");
    let prevs: BTreeMap<i64, Option<i64>> = (0..=14)
        .map(|id| (id, if id % 3 == 0 { None } else { Some(id - 1) }))
        .collect();
    assert_tree(&after, &states(&groups), &prevs);
    check_against_model(&before, &after, &[3]);
}

#[test]
fn pure_delta_chain_is_left_alone_when_rows_would_grow() {
    // Levels 3,3 would add snapshots (groups 3 and 12) to a chain of one-row
    // deltas: more rows, so nothing may be written.
    let db = TestDb::create("chaingrow");
    let before = load(&db, &chain13());
    let after = compress(&db, "3,3", Apply::Commit);
    assert_eq!(
        before, after,
        "the tree changed although it would have grown"
    );
    let all: BTreeSet<i64> = before.structure.keys().copied().collect();
    assert_eq!(
        level_model::compress(&before.structure, &all, &[3, 3]).writes(),
        Some(false)
    );
}

/// F: ten members every state here has.
fn filler() -> StateMap {
    (0..10)
        .map(|j| {
            (
                key("m.room.member", &format!("@m{j}:example.org")),
                format!("$m{j}"),
            )
        })
        .collect()
}

fn with(base: &StateMap, extra: &[&str]) -> StateMap {
    let mut s = base.clone();
    for k in extra {
        s.insert(key("org.example.key", k), format!("${k}"));
    }
    s
}

fn only(extra: &[&str]) -> StateMap {
    with(&StateMap::new(), extra)
}

#[test]
fn bases_lacking_keys_walk_up_or_reset() {
    // Original tree (F = ten members):
    //   0: snapshot F+{A}          1: on 0 +B        2: on 1 +C
    //   3: snapshot F+{A,B,C,D}    4: on 3 +E        5: on 3 +F' (a fork)
    //   6: snapshot F+{A,B}        (lacks C, D: a state reset)
    //   7: on 6 +G                 8: snapshot F+{A,B,C,D,F',H}
    // Levels 3,3:
    //   5's candidate 4 has E, which 5 lacks: walk up to 4's prev, 3.
    //   6's candidate 3 has C and D: walk up from 3 finds nothing: snapshot.
    //   8's candidate 7 has G, which 8 lacks: walk up to 6: delta {C,D,F',H}.
    let f = filler();
    let groups = vec![
        new_group(0, None, with(&f, &["A"])),
        new_group(1, Some(0), only(&["B"])),
        new_group(2, Some(1), only(&["C"])),
        new_group(3, None, with(&f, &["A", "B", "C", "D"])),
        new_group(4, Some(3), only(&["E"])),
        new_group(5, Some(3), only(&["F'"])),
        new_group(6, None, with(&f, &["A", "B"])),
        new_group(7, Some(6), only(&["G"])),
        new_group(8, None, with(&f, &["A", "B", "C", "D", "F'", "H"])),
    ];
    let db = TestDb::create("lacking");
    let before = load(&db, &groups);
    let after = compress(&db, "3,3", Apply::Commit);
    check::assert_same_states(&before.states, &after.states, "lacking keys");
    let prevs = BTreeMap::from([
        (0, None),
        (1, Some(0)),
        (2, Some(1)),
        (3, None),
        (4, Some(3)),
        (5, Some(3)),
        (6, None),
        (7, Some(6)),
        (8, Some(6)),
    ]);
    assert_tree(&after, &states(&groups), &prevs);
    assert_eq!(after.structure[&8].rows.len(), 4);
    check_against_model(&before, &after, &[3, 3]);
    let all: BTreeSet<i64> = before.structure.keys().copied().collect();
    let outcome = level_model::compress(&before.structure, &all, &[3, 3]);
    assert_eq!(outcome.forced_resets, 1);
    assert_eq!((outcome.rows_before, outcome.rows_after), (58, 46));
}

#[test]
fn empty_deltas_and_compressing_twice() {
    // Groups with an empty delta (same state as their prev) survive, and a
    // second run over an already compressed room is still exact.
    let mut groups = chain13_with_snapshot_tail();
    for g in groups.iter_mut() {
        if g.id % 4 == 2 && g.prev.is_some() {
            g.delta.clear();
        }
    }
    let db = TestDb::create("twice");
    let before = load(&db, &groups);
    let once = compress(&db, "3,3", Apply::Commit);
    check::assert_same_states(&before.states, &once.states, "first run");
    check_against_model(&before, &once, &[3, 3]);
    let twice = compress(&db, "2,2", Apply::Commit);
    check::assert_same_states(&before.states, &twice.states, "second run");
    let all: BTreeSet<i64> = once.structure.keys().copied().collect();
    check::assert_matches_model(&once.structure, &twice.structure, ROOM, &all, &[2, 2]);
}

#[test]
fn min_saved_rows_and_skipped_verification() {
    // Levels 3,3 take the chain with its snapshot tail from 120 rows to 76:
    // 44 saved. `-m 45` must write nothing, `-m 44` must write; `-N` (no
    // verification) writes the very same tree.
    let groups = chain13_with_snapshot_tail();
    let all: BTreeSet<i64> = (0..=14).collect();

    let db = TestDb::create("minsaved");
    let before = load(&db, &groups);
    let outcome = level_model::compress(&before.structure, &all, &[3, 3]);
    assert_eq!((outcome.rows_before, outcome.rows_after), (120, 76));
    compress_ok(db.url(), &["-r", ROOM, "-l", "3,3", "-m", "45", "-c"]);
    assert_eq!(
        before,
        snapshot(&mut db.client()),
        "-m 45 must write nothing"
    );
    compress_ok(db.url(), &["-r", ROOM, "-l", "3,3", "-m", "44", "-c"]);
    let after = snapshot(&mut db.client());
    assert_tree(&after, &states(&groups), &prevs_3_3());

    let db = TestDb::create("noverify");
    load(&db, &groups);
    compress_ok(db.url(), &["-r", ROOM, "-l", "3,3", "-N", "-c"]);
    let unverified = snapshot(&mut db.client());
    assert_tree(&unverified, &states(&groups), &prevs_3_3());
}
