//! Synapse (1.124+) deletes groups queued in `state_groups_pending_deletion`
//! unless their sequence number changed since they were queued. A writer
//! that builds on a queued group must bump it, as Synapse's own writers do;
//! otherwise Synapse may delete a group that has just become a new base.
//!
//! Every group is queued here with a known sequence number and timestamp;
//! after a run, exactly the groups that became new bases of rewritten
//! groups are bumped (new sequence number, a current timestamp), and no
//! other. Without the table (Synapse before 1.124) the write works as well.

use std::collections::{BTreeMap, BTreeSet};

use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::tools;

/// A timestamp no bump can produce (1970): queued "long ago".
const OLD_TS: i64 = 1;

fn queued_db(hint: &str, seed: u64) -> (TestDb, String) {
    let (db, generated) = check::generated_db(hint, &GenConfig::compressible(seed, 3, 300));
    db.client()
        .execute(
            "INSERT INTO state_groups_pending_deletion (state_group, insertion_ts) \
             SELECT id, $1 FROM state_groups ORDER BY id",
            &[&OLD_TS],
        )
        .expect("queueing every group");
    (db, generated.rooms[0].room_id.clone())
}

fn queue(db: &TestDb) -> BTreeMap<i64, (i64, i64)> {
    db.client()
        .query(
            "SELECT state_group, sequence_number, insertion_ts FROM state_groups_pending_deletion",
            &[],
        )
        .expect("reading the queue")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// The new predecessors of the groups whose edge or rows the run rewrote.
fn new_bases(before: &Structure, after: &Structure) -> BTreeSet<i64> {
    after
        .iter()
        .filter(|(id, info)| before.get(id) != Some(*info))
        .filter_map(|(_, info)| info.prev())
        .collect()
}

fn assert_bumped_exactly(db: &TestDb, before: &Structure, queued: &BTreeMap<i64, (i64, i64)>) {
    let after = structure::structure(&mut db.client(), None).unwrap();
    let bases = new_bases(before, &after);
    assert!(!bases.is_empty(), "the run rewrote nothing onto a base");
    let now = queue(db);
    let started_ms = 1_700_000_000_000; // any bump happens after 2023
    for (group, (seq, ts)) in queued {
        let (new_seq, new_ts) = now[group];
        if bases.contains(group) {
            assert_ne!(new_seq, *seq, "new base {group} kept its sequence number");
            assert!(
                new_ts > started_ms,
                "new base {group} kept timestamp {new_ts}"
            );
        } else {
            assert_eq!((new_seq, new_ts), (*seq, *ts), "group {group} was bumped");
        }
    }
}

#[test]
fn the_manual_tool_bumps_exactly_its_new_bases() {
    let (db, room) = queued_db("pending_manual", 41);
    let before = snapshot(&mut db.client());
    let queued = queue(&db);
    tools::assert_success(&tools::run_bin(
        "synapse_compress_state",
        &["-p", db.url(), "-r", &room, "-c"],
    ));
    assert_bumped_exactly(&db, &before.structure, &queued);
    assert_same_states(
        &before.states,
        &snapshot(&mut db.client()).states,
        "after -c",
    );
}

#[test]
fn the_automatic_tool_bumps_exactly_its_new_bases() {
    let (db, _) = queued_db("pending_auto", 42);
    let before = snapshot(&mut db.client());
    let queued = queue(&db);
    tools::assert_success(&tools::run_bin(
        "synapse_auto_compressor",
        &["-p", db.url(), "-c", "50", "-n", "1000"],
    ));
    assert_bumped_exactly(&db, &before.structure, &queued);
    assert_same_states(
        &before.states,
        &snapshot(&mut db.client()).states,
        "after the run",
    );
}

#[test]
fn without_the_pending_deletion_table_both_tools_write() {
    let (db, room) = queued_db("pending_absent", 43);
    db.client()
        .batch_execute("DROP TABLE state_groups_pending_deletion")
        .unwrap();
    let before = snapshot(&mut db.client());
    tools::assert_success(&tools::run_bin(
        "synapse_compress_state",
        &["-p", db.url(), "-r", &room, "-c"],
    ));
    tools::assert_success(&tools::run_bin(
        "synapse_auto_compressor",
        &["-p", db.url(), "-c", "50", "-n", "1000"],
    ));
    let after = snapshot(&mut db.client());
    assert_ne!(before.structure, after.structure, "nothing was written");
    assert_same_states(&before.states, &after.states, "without the table");
}
