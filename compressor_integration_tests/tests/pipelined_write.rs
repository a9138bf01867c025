//! The manual tool's writes on two connections (`Rewrite::write_pipelined`
//! in `src/db/write.rs`): while one batch's transaction works on the
//! server, the next batch's runs on the other connection, and the batches
//! still commit one at a time in ascending order.
//!
//! A batch is made to fail on the server (a trigger refuses one of its new
//! rows, at the end of its transaction) while the batch before it commits
//! and the one after it is under way: every group keeps its state as
//! Synapse reads it, what was written is exactly the groups of the batches
//! before the failing one (a prefix in id order, as one connection leaves
//! it), and a rerun ends where an undisturbed run does.

use compressor_integration_tests::check::{self, assert_same_states, snapshot, DbSnapshot};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::pg::{self, TestDb};
use compressor_integration_tests::structure::Structure;
use compressor_integration_tests::tools;
use std::collections::BTreeSet;

const MANUAL: &str = "synapse_compress_state";

/// A database with one room of short Synapse chains (many snapshots), so
/// that with short levels most groups get a new predecessor, and the room.
fn db(hint: &str) -> (TestDb, String) {
    let config = GenConfig {
        seed: 91,
        rooms: 1,
        groups_per_room: 1_500,
        members: 40,
        join_rate: 3.0,
        max_delta_hops: 10,
        ..GenConfig::rare_forks()
    };
    let (db, generated) = check::generated_db(hint, &config);
    let room = generated.biggest_room().room_id.clone();
    (db, room)
}

/// The advisory lock the refusing trigger waits for.
const GATE: i64 = 4_242;

/// Polls the server until, in database `db`, one session waits for the
/// test's advisory lock (the failing batch, in its last statement) and
/// another is idle in its transaction after copying its new rows (the next
/// batch, done with its work and waiting for its turn to commit). A next
/// batch that commits before the failing one never waits like that.
fn wait_for_next_batch_to_wait(watcher: &mut postgres::Client, db: &str) {
    pg::poll_until(
        watcher,
        "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'advisory') = 1 \
            AND count(*) FILTER (WHERE state = 'idle in transaction' \
                                 AND query LIKE 'COPY state_groups_state%') = 1 \
         FROM pg_stat_activity WHERE datname = $1",
        &[&db],
        "the batch after the failing one never waited for its turn to commit",
    );
}

/// The manual tool's arguments for `room` of the database at `url`: short
/// levels, writing.
fn args(url: &str, room: &str) -> Vec<String> {
    [
        "-p",
        url,
        "-r",
        room,
        "-l",
        "2,2,2,2",
        "-c",
        "--no-progress",
    ]
    .map(String::from)
    .to_vec()
}

/// A second copy of the data with the room compressed by an undisturbed
/// run: what the tool writes.
fn db_pair_reference(room: &str) -> (TestDb, String) {
    let (clean, clean_room) = db("pipelined_clean");
    assert_eq!(clean_room, room, "the two copies differ");
    tools::assert_success(&tools::run_bin(MANUAL, &args(clean.url(), room)));
    (clean, clean_room)
}

/// A copy of the data and what an undisturbed run rewrites there: the
/// database, the room, its snapshot before, the snapshot after an
/// undisturbed run (on another copy) and the groups it rewrote, ascending
/// (more than 750, so at least four batches).
fn prepared(hint: &str) -> (TestDb, String, DbSnapshot, DbSnapshot, Vec<i64>) {
    let (db, room) = db(hint);
    let (clean, _) = db_pair_reference(&room);
    let original = snapshot(&mut db.client());
    let reference = snapshot(&mut clean.client());
    let rewritten = changed(&original.structure, &reference.structure);
    assert!(
        rewritten.len() > 750,
        "too few groups rewritten for several batches: {}",
        rewritten.len()
    );
    (db, room, original, reference, rewritten)
}

/// The groups whose edge or rows differ between `before` and `after`,
/// ascending.
fn changed(before: &Structure, after: &Structure) -> Vec<i64> {
    before
        .iter()
        .filter(|(id, info)| after.get(id) != Some(info))
        .map(|(id, _)| *id)
        .collect()
}

#[test]
fn a_batch_failing_beside_the_others_leaves_a_prefix_written() {
    let (failing, room, original, reference, rewritten) = prepared("pipelined_fail");
    // Batches of a pipelined write hold at most 250 groups: the groups from
    // the 251st to the 500th are in the second batch (or later), and at
    // least one batch comes after them.
    let (first, last) = (rewritten[250], rewritten[499]);

    // The server refuses a new row of those groups: the batch holding them
    // fails at its last statement, after its deletes. Until this test lets
    // it, the refusal waits (on an advisory lock the test holds), so the
    // batch after it has time to do all of its work on the other
    // connection; it must then wait for its turn to commit.
    failing
        .client()
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_advisory_xact_lock({GATE}); \
             RAISE EXCEPTION 'refused by the test'; END $$; \
             CREATE TRIGGER refuse AFTER INSERT ON state_groups_state FOR EACH ROW \
             WHEN (NEW.state_group BETWEEN {first} AND {last}) EXECUTE FUNCTION refuse_row();"
        ))
        .expect("creating the trigger");
    let mut gate = failing.client();
    gate.execute("SELECT pg_advisory_lock($1)", &[&GATE])
        .expect("closing the gate");
    let started = tools::start_bin(MANUAL, &args(failing.url(), &room));
    wait_for_next_batch_to_wait(&mut failing.client(), failing.name());
    gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE])
        .expect("opening the gate");
    let run = started.wait();
    assert!(
        !run.status.success() && run.stderr.contains("refused by the test"),
        "the run should fail on the refused row\n{}",
        run.describe()
    );

    let after = snapshot(&mut failing.client());
    assert_same_states(&original.states, &after.states, "after the failed batch");
    let written = changed(&original.structure, &after.structure);
    assert!(
        !written.is_empty(),
        "the first batch, before the failing one, was not committed"
    );
    assert_eq!(
        written,
        rewritten[..written.len()],
        "what was written is not the first batches of an undisturbed run"
    );
    assert!(
        written.last() < Some(&first),
        "groups of the failing batch or after it were written: up to {:?}, failing from {first}",
        written.last()
    );
    for id in &written {
        assert_eq!(
            after.structure[id], reference.structure[id],
            "group {id} was written otherwise than by an undisturbed run"
        );
    }

    // Without the trigger a rerun finishes the room as one run does.
    failing
        .client()
        .batch_execute("DROP TRIGGER refuse ON state_groups_state")
        .expect("dropping the trigger");
    tools::assert_success(&tools::run_bin(MANUAL, &args(failing.url(), &room)));
    let finished = snapshot(&mut failing.client());
    assert_same_states(&original.states, &finished.states, "after the rerun");
    assert_eq!(
        finished.structure, reference.structure,
        "a rerun after the failure ends elsewhere than an undisturbed run"
    );
}

/// A batch that meets a conflict and is tried again while the next batch
/// holds a lock its new attempt needs (the pending-deletion row of a base
/// both batches build on): the next batch lets it go and starts over after
/// it, instead of waiting for its commit while it waits for that lock.
///
/// Another writer that takes no row locks rewrites a group of the second
/// batch exactly as the tool would (in an open transaction): the second
/// batch's deletes wait for it, and the third batch waits for the second
/// one's lock on the shared base. Once the other writer commits, the
/// second batch meets its duplicate edge, rolls back and tries again; the
/// third batch, which took the shared base's row meanwhile, must give it
/// back. The run then finishes with the tree of an undisturbed run.
#[test]
fn a_batch_tried_again_gets_the_locks_of_the_batch_after_it() {
    let (db, room, original, reference, rewritten) = prepared("pipelined_retry");
    // Batches of 250 groups: the second and the third.
    let bases = |groups: &[i64]| -> BTreeSet<i64> {
        groups
            .iter()
            .filter_map(|g| reference.structure[g].prev())
            .collect()
    };
    let (second, third) = (&rewritten[250..500], &rewritten[500..750]);
    let shared = *bases(second)
        .intersection(&bases(third))
        .next()
        .expect("a base that the second and third batches both build on");
    db.client()
        .execute(
            "INSERT INTO state_groups_pending_deletion (state_group, insertion_ts) VALUES ($1, 0)",
            &[&shared],
        )
        .expect("queueing the shared base for deletion");
    // A group of the second batch that gets a new edge, rewritten by the
    // other writer exactly as the tool will.
    let group = *second
        .iter()
        .find(|g| reference.structure[g].prev().is_some())
        .expect("a group of the second batch with a new edge");
    let new = &reference.structure[&group];

    let mut other = db.client();
    let mut tx = other.transaction().unwrap();
    tx.execute(
        "DELETE FROM state_group_edges WHERE state_group = $1",
        &[&group],
    )
    .unwrap();
    tx.execute(
        "DELETE FROM state_groups_state WHERE state_group = $1",
        &[&group],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO state_group_edges (state_group, prev_state_group) VALUES ($1, $2)",
        &[&group, &new.prev()],
    )
    .unwrap();
    for row in &new.rows {
        tx.execute(
            "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &group,
                &row.room_id,
                &row.event_type,
                &row.state_key,
                &row.event_id,
            ],
        )
        .unwrap();
    }
    let tool = tools::start_bin(MANUAL, &args(db.url(), &room));
    // The second batch waits for the other writer, the third for the
    // second batch's lock on the shared base.
    wait_for_lock_waits(&mut db.client(), db.name(), 2);
    tx.commit().unwrap();
    let run = tool.wait();
    tools::assert_success(&run);
    assert!(
        run.stderr.contains("trying the batch again"),
        "the second batch was not tried again\n{}",
        run.describe()
    );
    let after = snapshot(&mut db.client());
    assert_same_states(&original.states, &after.states, "after the run");
    assert_eq!(
        after.structure, reference.structure,
        "the run ended elsewhere than an undisturbed run"
    );
}

/// Polls the server until `n` sessions of database `db` wait for a lock.
fn wait_for_lock_waits(watcher: &mut postgres::Client, db: &str, n: i64) {
    pg::poll_until(
        watcher,
        "SELECT count(*) >= $2 FROM pg_stat_activity \
         WHERE datname = $1 AND wait_event_type = 'Lock'",
        &[&db, &n],
        &format!("fewer than {n} sessions ever waited for a lock"),
    );
}
