//! End-to-end checks shared by the integration tests: run the compressor on
//! a test database, apply its SQL with `psql`, and prove that nothing changed
//! that must not (every group's state as Synapse reads it, other rooms'
//! rows and edges, the invariants) and that the new tree is exactly the one
//! the default algorithm prescribes ([`crate::level_model`]).

use crate::level_model::{self, Outcome};
use crate::structure::{self, Structure};
use crate::synapse_state;
use crate::tools::{self, ToolRun};
use crate::StateMap;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};

/// The manual compressor binary's name.
pub const COMPRESSOR: &str = "synapse_compress_state";

/// The fenced ```sql block after the `<!-- grants:NAME -->` marker in
/// `docs/privileges.md`: the tests apply the GRANTs exactly as documented.
pub fn grants_block(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/privileges.md");
    let page = std::fs::read_to_string(path).expect("reading docs/privileges.md");
    let marker = format!("<!-- grants:{name} -->");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/privileges.md has no {marker}"))
        + marker.len();
    let body = page[at..]
        .trim_start()
        .strip_prefix("```sql\n")
        .unwrap_or_else(|| panic!("no ```sql block after {marker}"));
    body[..body.find("```").expect("the block's end")].to_string()
}

/// Everything observable about a database's state tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSnapshot {
    /// Stored groups, edges and rows (whole database).
    pub structure: Structure,
    /// Every group's resolved state, read with Synapse's query.
    pub states: BTreeMap<i64, StateMap>,
    /// Tables in the public schema.
    pub tables: Vec<String>,
}

/// Reads a [`DbSnapshot`]: invariants are checked first (a broken tree could
/// make the recursive readers loop), then the states are read.
pub fn snapshot(client: &mut Client) -> DbSnapshot {
    let structure = checked_structure(client);
    let states = synapse_state::all_states(client, None).expect("reading states");
    DbSnapshot {
        structure,
        states,
        tables: tables(client),
    }
}

/// Like [`snapshot`], but the states are resolved in memory from the stored
/// tree (Synapse's rule, see [`structure::resolve_all`]) instead of one
/// Synapse query per group: much faster on big databases, and equivalent
/// once the invariants (checked here too) hold. Use [`snapshot`] at least at
/// the start and the end of a test.
pub fn snapshot_in_memory(client: &mut Client) -> DbSnapshot {
    let structure = checked_structure(client);
    let states = structure::resolve_all(&structure);
    DbSnapshot {
        structure,
        states,
        tables: tables(client),
    }
}

/// The whole stored tree, after asserting its invariants.
fn checked_structure(client: &mut Client) -> Structure {
    let structure = structure::structure(client, None).expect("reading the structure");
    let problems = structure::violations(&structure);
    assert!(
        problems.is_empty(),
        "invariants broken:\n  {}",
        problems[..problems.len().min(30)].join("\n  ")
    );
    structure
}

/// Names of the tables in the public schema, sorted.
pub fn tables(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            &[],
        )
        .expect("listing tables")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Runs the compressor against `url` with `args` (after `-p URL`).
pub fn run_compressor(url: &str, args: &[&str]) -> ToolRun {
    let mut all = vec!["-p", url];
    all.extend_from_slice(args);
    tools::run_bin(COMPRESSOR, &all)
}

/// Runs the compressor and asserts it succeeded.
pub fn compress_ok(url: &str, args: &[&str]) -> ToolRun {
    let run = run_compressor(url, args);
    tools::assert_success(&run);
    run
}

/// Applies an SQL file the way the README says (`psql -v ON_ERROR_STOP=1`),
/// asserting success. The tool always leaves a file when given `-o` (one
/// that only says why, when it writes nothing), so a missing file fails.
pub fn apply_sql(url: &str, file: &std::path::Path) {
    assert!(
        file.exists(),
        "the tool left no SQL file at {}",
        file.display()
    );
    let run = tools::psql_file(url, file);
    tools::assert_success(&run);
}

/// Asserts that every group has exactly the same resolved state.
pub fn assert_same_states(
    before: &BTreeMap<i64, StateMap>,
    after: &BTreeMap<i64, StateMap>,
    context: &str,
) {
    if let Some(difference) = synapse_state::first_difference(before, after) {
        panic!("{context}: {difference}");
    }
}

/// Asserts that nothing outside `room` changed: groups, edges and rows of
/// every other room (and unowned ones) are identical.
pub fn assert_other_rooms_untouched(before: &Structure, after: &Structure, room: &str) {
    let outside = |s: &Structure| -> Structure {
        s.iter()
            .filter(|(_, g)| g.room_id.as_deref() != Some(room))
            .map(|(id, g)| (*id, g.clone()))
            .collect()
    };
    let (b, a) = (outside(before), outside(after));
    if b != a {
        let id = b
            .keys()
            .chain(a.keys())
            .find(|id| b.get(id) != a.get(id))
            .copied();
        panic!(
            "groups outside room {room:?} changed, first: {id:?}\nbefore: {:?}\nafter: {:?}",
            id.and_then(|id| b.get(&id)),
            id.and_then(|id| a.get(&id)),
        );
    }
}

/// Only the groups of `room` in `structure`.
pub fn room_part(structure: &Structure, room: &str) -> Structure {
    structure
        .iter()
        .filter(|(_, g)| g.room_id.as_deref() == Some(room))
        .map(|(id, g)| (*id, g.clone()))
        .collect()
}

/// Asserts that the room's stored tree after compressing `in_range` with
/// `levels` is exactly the one the default algorithm gives (or unchanged,
/// when the algorithm would have increased the row count). Returns the
/// model's outcome.
pub fn assert_matches_model(
    before: &Structure,
    after: &Structure,
    room: &str,
    in_range: &BTreeSet<i64>,
    levels: &[usize],
) -> Outcome {
    let before = room_part(before, room);
    let after = room_part(after, room);
    let outcome = level_model::compress(&before, in_range, levels);
    let unchanged = before == after;
    let expect_new = match outcome.writes() {
        Some(writes) => writes,
        // Equal row counts: either outcome is allowed.
        None => !unchanged,
    };
    if !expect_new {
        assert!(
            unchanged,
            "room {room:?}: compressing would add rows ({} -> {}), so nothing must be \
             written, but the tree changed",
            outcome.rows_before, outcome.rows_after
        );
        return outcome;
    }
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "room {room:?}: the set of groups changed"
    );
    for (id, old) in &before {
        let new = &after[id];
        assert_eq!(
            (&old.room_id, &old.event_id),
            (&new.room_id, &new.event_id),
            "group {id}: its state_groups row changed"
        );
        match outcome.new.get(id) {
            None => assert_eq!(old, new, "group {id} is out of range but changed"),
            Some(expected) => {
                assert_eq!(
                    new.prev(),
                    expected.prev,
                    "group {id}: expected prev {:?}, found {:?} (levels {levels:?})",
                    expected.prev,
                    new.prev()
                );
                assert!(
                    new.delta() == expected.delta,
                    "group {id}: rows differ from the model (levels {levels:?})\n\
                     expected {} rows: {:?}\nfound {} rows: {:?}",
                    expected.delta.len(),
                    expected.delta.keys().take(10).collect::<Vec<_>>(),
                    new.rows.len(),
                    new.rows.iter().take(10).collect::<Vec<_>>(),
                );
            }
        }
    }
    outcome
}

/// Damages a room as Synapse never would: `group`'s edge now points into
/// room `other` (at its last group before `group`), which is returned.
pub fn edge_into_other_room(client: &mut Client, group: i64, other: &str) -> i64 {
    let foreign: i64 = client
        .query_one(
            "SELECT max(id) FROM state_groups WHERE room_id = $1 AND id < $2",
            &[&other, &group],
        )
        .expect("finding a group of the other room")
        .get(0);
    client
        .execute(
            "UPDATE state_group_edges SET prev_state_group = $2 WHERE state_group = $1",
            &[&group, &foreign],
        )
        .expect("pointing the edge into the other room");
    foreign
}

/// The automatic tool's saved position per room (none without its table).
pub fn saved_positions(client: &mut Client) -> BTreeMap<String, i64> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('state_compressor_progress') IS NOT NULL",
            &[],
        )
        .expect("looking for the progress table")
        .get(0);
    if !exists {
        return BTreeMap::new();
    }
    client
        .query(
            "SELECT room_id, last_compressed FROM state_compressor_progress",
            &[],
        )
        .expect("reading saved positions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A fresh database holding the data `config` generates.
pub fn generated_db(
    hint: &str,
    config: &crate::generator::GenConfig,
) -> (crate::pg::TestDb, crate::generator::Generated) {
    let db = crate::pg::TestDb::create(hint);
    let generated = crate::generator::generate_into(&mut db.client(), config)
        .expect("generating the test database");
    (db, generated)
}

/// Puts the generated data back as it was (and forgets the automatic
/// tool's progress).
pub fn restore(db: &crate::pg::TestDb, generated: &crate::generator::Generated) {
    let mut client = db.client();
    client
        .batch_execute(
            "DROP TABLE IF EXISTS state_compressor_state, state_compressor_progress, \
                 state_compressor_total_progress;
             TRUNCATE state_groups, state_group_edges, state_groups_state, event_to_state_groups, \
                 state_groups_pending_deletion;",
        )
        .expect("emptying the tables");
    generated
        .write(&mut client)
        .expect("writing the groups again");
}

/// A small generated database (two rooms of `groups_per_room` groups that
/// compress well) and its first room's id, for the bad-input tests.
pub fn small_db(hint: &str, groups_per_room: usize) -> (crate::pg::TestDb, String) {
    let db = crate::pg::TestDb::create(hint);
    let generated = crate::generator::generate_into(
        &mut db.client(),
        &crate::generator::GenConfig {
            rooms: 2,
            groups_per_room,
            max_delta_hops: 10,
            ..crate::generator::GenConfig::default()
        },
    )
    .expect("generating the test database");
    let room = generated.rooms[0].room_id.clone();
    (db, room)
}

/// Replaces `group`'s rows with `rows` (of `room`), leaving its edge: what
/// Synapse's de-delta does to a group's rows when given its full state.
pub fn replace_rows(
    client: &mut impl postgres::GenericClient,
    group: i64,
    room: &str,
    rows: &StateMap,
) {
    client
        .execute(
            "DELETE FROM state_groups_state WHERE state_group = $1",
            &[&group],
        )
        .unwrap();
    for ((ty, state_key), event_id) in rows {
        client
            .execute(
                "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&group, &room, ty, state_key, event_id],
            )
            .unwrap();
    }
}

/// The automatic tool's saved progress, as text, table by table (tables
/// that do not exist have no rows).
pub fn saved_progress(db: &crate::pg::TestDb) -> Vec<String> {
    let mut client = db.client();
    let mut rows = Vec::new();
    for table in [
        "state_compressor_state",
        "state_compressor_progress",
        "state_compressor_total_progress",
    ] {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .expect("looking for the table")
            .get(0);
        if exists {
            for row in client
                .query(&format!("SELECT t::text FROM {table} AS t ORDER BY 1"), &[])
                .expect("reading the progress")
            {
                rows.push(format!("{table}: {}", row.get::<_, String>(0)));
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    //! The checks must be able to fail.
    use super::*;
    use crate::generator::{generate, GenConfig};
    use crate::structure::resolve_all;

    fn data() -> (Structure, String) {
        let generated = generate(&GenConfig {
            rooms: 2,
            groups_per_room: 60,
            max_delta_hops: 3,
            ..GenConfig::default()
        });
        let room = generated.rooms[0].room_id.clone();
        (generated.structure(), room)
    }

    fn all_of(structure: &Structure, room: &str) -> BTreeSet<i64> {
        room_part(structure, room).keys().copied().collect()
    }

    /// The model's own result, applied to `before`.
    fn apply_model(before: &Structure, room: &str, levels: &[usize]) -> Structure {
        let outcome = level_model::compress(before, &all_of(before, room), levels);
        assert_eq!(outcome.writes(), Some(true));
        let mut after = before.clone();
        for (id, entry) in outcome.new {
            let info = after.get_mut(&id).unwrap();
            info.prevs = entry.prev.into_iter().collect();
            info.rows = entry
                .delta
                .into_iter()
                .map(|((t, k), e)| structure::StateRow {
                    room_id: room.to_string(),
                    event_type: t,
                    state_key: k,
                    event_id: e,
                })
                .collect();
            info.rows.sort_unstable();
        }
        after
    }

    #[test]
    fn the_model_result_passes_every_check() {
        let (before, room) = data();
        let after = apply_model(&before, &room, &[10, 5]);
        assert!(structure::violations(&after).is_empty());
        assert_same_states(&resolve_all(&before), &resolve_all(&after), "model");
        assert_other_rooms_untouched(&before, &after, &room);
        assert_matches_model(&before, &after, &room, &all_of(&before, &room), &[10, 5]);
    }

    #[test]
    #[should_panic(expected = "expected prev")]
    fn a_different_but_valid_tree_fails_the_model_check() {
        let (before, room) = data();
        // Valid and state-preserving, but not what levels 10,5 give.
        let after = apply_model(&before, &room, &[5, 10]);
        assert_same_states(&resolve_all(&before), &resolve_all(&after), "valid");
        assert_matches_model(&before, &after, &room, &all_of(&before, &room), &[10, 5]);
    }

    #[test]
    #[should_panic(expected = "changed")]
    fn a_lost_row_fails_the_state_check() {
        let (before, room) = data();
        let mut after = apply_model(&before, &room, &[10, 5]);
        let victim = *room_part(&after, &room)
            .iter()
            .find(|(_, g)| !g.rows.is_empty())
            .unwrap()
            .0;
        after.get_mut(&victim).unwrap().rows.pop();
        assert_same_states(&resolve_all(&before), &resolve_all(&after), "lost row");
    }

    #[test]
    #[should_panic(expected = "outside room")]
    fn touching_another_room_fails() {
        let (before, room) = data();
        let mut after = before.clone();
        let other = *after
            .iter()
            .find(|(_, g)| g.room_id.as_deref() != Some(room.as_str()))
            .unwrap()
            .0;
        after.get_mut(&other).unwrap().rows.reverse();
        after.get_mut(&other).unwrap().event_id = Some("$changed".into());
        assert_other_rooms_untouched(&before, &after, &room);
    }

    #[test]
    #[should_panic(expected = "nothing must be written")]
    fn writing_when_rows_would_grow_fails() {
        let (before, room) = data();
        // Levels of 1: every group a snapshot, far more rows.
        let all = all_of(&before, &room);
        let outcome = level_model::compress(&before, &all, &[1]);
        assert_eq!(outcome.writes(), Some(false));
        let after = apply_model(&before, &room, &[10, 5]);
        assert_matches_model(&before, &after, &room, &all, &[1]);
    }
}
