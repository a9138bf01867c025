//! A room left for a later run (another compressor holds it, or its data
//! is damaged) at the lowest group ids: the saved scan position stays at it
//! so the next run comes back, but the run's own search for each next room
//! must not walk again over everything between that room and where the run
//! has got to (it did: one walk of `state_groups` per chunk, from the left
//! room on).
//!
//! The work is counted with PostgreSQL's per-transaction statistics
//! (`pg_stat_xact_user_tables`), which are exact for the session's own
//! transaction; no timing is asserted.

use compressor_integration_tests::check::{self, snapshot};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::{hold_room_lock, TestDb};
use compressor_integration_tests::tools::{self, ToolRun};
use postgres::Client;
use synapse_auto_compressor::state_saving::{self, LeftRooms};
use synapse_compress_state::db::Prepared;

const AUTO: &str = "synapse_auto_compressor";
const CHUNK: usize = 30;

fn generated_db(hint: &str) -> (TestDb, Generated) {
    check::generated_db(hint, &GenConfig::compressible(23, 8, 200))
}

/// The room holding the lowest group id, and that id.
fn lowest_room(generated: &Generated) -> (String, i64) {
    generated
        .rooms
        .iter()
        .map(|r| (r.room_id.clone(), r.group_ids[0]))
        .min_by_key(|(_, first)| *first)
        .expect("rooms were generated")
}

fn saved_position(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT lowest_uncompressed_group FROM state_compressor_total_progress",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Tuples the session's open transaction has read from `state_groups`,
/// by index and by sequential scan.
fn groups_read(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT COALESCE(idx_tup_fetch, 0) + COALESCE(seq_tup_read, 0)
             FROM pg_stat_xact_user_tables WHERE relname = 'state_groups'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Drives the run's scan as the chunk loop does, with `left` left out,
/// without compressing: each room picked is marked compressed up to the
/// end of its next chunk (`CHUNK` of its groups). Returns the rooms in the
/// order picked, and the `state_groups` tuples the scan read for them.
fn scan_through(
    client: &mut Client,
    generated: &Generated,
    left: &mut LeftRooms,
) -> (Vec<(String, i64)>, i64) {
    let mut prepared = Prepared::new();
    let mut picked = Vec::new();
    let mut predicted = None;
    client.batch_execute("BEGIN").unwrap();
    let before = groups_read(client);
    loop {
        let next = state_saving::next_room_to_compress(client, &mut prepared, left).unwrap();
        if let Some(predicted) = predicted.take() {
            assert_eq!(
                Some(&predicted),
                next.as_ref().map(|n| &n.room_id),
                "the prediction"
            );
        }
        let Some(next) = next else { break };
        left.scanned_to(next.group);
        let ids = &generated
            .rooms
            .iter()
            .find(|r| r.room_id == next.room_id)
            .expect("a generated room")
            .group_ids;
        let at = ids.iter().position(|&g| g == next.group).unwrap();
        let end = ids[(at + CHUNK - 1).min(ids.len() - 1)];
        // What the prefetcher asks before the chunk is written.
        predicted = state_saving::predict_next_room(
            client,
            &mut prepared,
            &[(next.room_id.as_str(), end)],
            left,
        )
        .unwrap();
        client
            .execute(
                "INSERT INTO state_compressor_progress (room_id, last_compressed)
                 VALUES ($1, $2)
                 ON CONFLICT (room_id) DO UPDATE SET last_compressed = $2",
                &[&next.room_id, &end],
            )
            .unwrap();
        picked.push((next.room_id, next.group));
        assert!(picked.len() < 10_000, "the scan does not end");
    }
    let read = groups_read(client) - before;
    client.batch_execute("COMMIT").unwrap();
    (picked, read)
}

/// The scan with the lowest room left out reads each group about once,
/// where it read the groups from the left room on again for every chunk;
/// it picks the same rooms in the same order as a scan that leaves nothing
/// out (less the left room), and the saved position stays at the left
/// room, which the next run's scan picks first.
#[test]
fn a_left_room_at_the_lowest_ids_does_not_make_every_pick_rescan() {
    let (db, generated) = generated_db("left_scan_query");
    let (free_db, _) = generated_db("left_scan_query_free");
    let (room, first) = lowest_room(&generated);
    let groups = generated.groups.len() as i64;
    let mut client = db.client();
    state_saving::create_tables_if_needed(&mut client).unwrap();
    let mut free = free_db.client();
    state_saving::create_tables_if_needed(&mut free).unwrap();

    let (free_picks, free_read) = scan_through(&mut free, &generated, &mut LeftRooms::default());
    let mut left = LeftRooms::default();
    left.leave(room.clone(), first);
    let (picks, read) = scan_through(&mut client, &generated, &mut left);

    let expected: Vec<(String, i64)> = free_picks
        .iter()
        .filter(|(r, _)| *r != room)
        .cloned()
        .collect();
    assert_eq!(picks, expected, "leaving the room changed the other picks");
    assert_eq!(
        saved_position(&mut client),
        first,
        "the scan moved past the left room"
    );
    // Each pick may read the groups from the last one on, and the
    // prediction as many again: about three reads a group at most, as
    // without the left room.
    assert!(
        read <= 3 * groups + 4 * picks.len() as i64,
        "{read} state_groups tuples read for {} picks over {groups} groups \
         (without the left room: {free_read})",
        picks.len()
    );

    // The next run comes back to the room first.
    let next = state_saving::next_room_to_compress(
        &mut client,
        &mut Prepared::new(),
        &LeftRooms::default(),
    )
    .unwrap()
    .expect("the left room is still to do");
    assert_eq!((next.room_id, next.group), (room, first));
}

fn auto_to_the_end(db: &TestDb, jobs: &str) -> ToolRun {
    let run = tools::run_bin(
        AUTO,
        &[
            "-p",
            db.url(),
            "-c",
            &CHUNK.to_string(),
            "-n",
            "100000",
            "--jobs",
            jobs,
        ],
    );
    tools::assert_success(&run);
    run
}

/// The progress tables, in a comparable form.
fn progress(client: &mut Client) -> Vec<String> {
    let mut rows: Vec<String> = client
        .query(
            "SELECT format('%s %s', room_id, last_compressed) FROM state_compressor_progress
             UNION ALL
             SELECT format('%s %s %s %s %s', room_id, level_num, max_size, current_length,
                           current_head)
             FROM state_compressor_state",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort();
    rows
}

/// Whole runs with the lowest room held by another session, one worker
/// and two: the room is left, the position saved at its first group, and
/// once it is free the next run finishes it; the database and the progress
/// tables end exactly as after runs that never met the lock.
#[test]
fn a_room_held_at_the_lowest_ids_is_revisited_and_the_result_is_unchanged() {
    for jobs in ["1", "2"] {
        let (db, generated) = generated_db(&format!("left_scan_run{jobs}"));
        let (free_db, _) = generated_db(&format!("left_scan_run_free{jobs}"));
        let (room, first) = lowest_room(&generated);
        let original = snapshot(&mut db.client());

        let holder = hold_room_lock(&db, &room);
        let run = auto_to_the_end(&db, jobs);
        assert!(
            run.stderr
                .contains(&format!("Room {room} is being compressed by")),
            "{}",
            run.describe()
        );
        assert_eq!(
            saved_position(&mut db.client()),
            first,
            "--jobs {jobs}: the saved position is not at the left room"
        );
        drop(holder);
        let second = auto_to_the_end(&db, jobs);
        assert!(
            !second.stderr.contains("is being compressed by"),
            "{}",
            second.describe()
        );
        auto_to_the_end(&free_db, jobs);

        let after = snapshot(&mut db.client());
        check::assert_same_states(&original.states, &after.states, "after both runs");
        assert_eq!(
            after.structure,
            snapshot(&mut free_db.client()).structure,
            "--jobs {jobs}: leaving the room for later changed the result"
        );
        assert_eq!(
            progress(&mut db.client()),
            progress(&mut free_db.client()),
            "--jobs {jobs}: leaving the room for later changed the progress tables"
        );
    }
}
