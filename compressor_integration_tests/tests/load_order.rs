//! The loader asks for rows without an order (an `ORDER BY` made the run's
//! reads slower) and must give the same groups whatever order PostgreSQL
//! returns them in, also when a group's rows are stored apart and so come
//! in several parts.

use compressor_integration_tests::check::small_db;
use postgres::Client;
use synapse_compress_state::core::state_map::Symbols;
use synapse_compress_state::db::{self, load};

/// Rewrites the rows of every group of `room` with more than one row so
/// that each group's rows are stored in two parts, the second half after
/// every group's first half.
fn store_groups_in_two_parts(client: &mut Client, room: &str) {
    let mut tx = client.transaction().unwrap();
    tx.batch_execute(
        "CREATE TEMP TABLE moved ON COMMIT DROP AS \
         SELECT state_group, room_id, type, state_key, event_id, \
                row_number() OVER (PARTITION BY state_group ORDER BY type, state_key) AS n, \
                count(*) OVER (PARTITION BY state_group) AS rows \
         FROM state_groups_state",
    )
    .unwrap();
    tx.execute(
        "DELETE FROM state_groups_state WHERE room_id = $1",
        &[&room],
    )
    .unwrap();
    for half in ["n <= rows / 2", "n > rows / 2"] {
        tx.execute(
            &format!(
                "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
                 SELECT state_group, room_id, type, state_key, event_id FROM moved \
                 WHERE room_id = $1 AND {half} ORDER BY state_group, n"
            ),
            &[&room],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// How many runs of consecutive rows of one group a sequential scan of
/// `room`'s rows gives, and how many groups have rows.
fn runs_in_storage_order(client: &mut Client, room: &str) -> (usize, usize) {
    let groups: Vec<i64> = client
        .query(
            "SELECT state_group FROM state_groups_state WHERE room_id = $1 ORDER BY ctid",
            &[&room],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let runs = 1 + groups.windows(2).filter(|w| w[0] != w[1]).count();
    let mut distinct = groups.clone();
    distinct.sort_unstable();
    distinct.dedup();
    (runs, distinct.len())
}

#[test]
fn groups_stored_in_parts_load_as_when_read_in_index_order() {
    let (db, room) = small_db("load_order", 150);
    let mut client = db::connect(db.url()).expect("connecting");
    store_groups_in_two_parts(&mut client, &room);
    let (runs, groups) = runs_in_storage_order(&mut client, &room);
    assert!(
        runs > groups,
        "the rows of some group must be stored apart ({runs} runs for {groups} groups)"
    );

    let ids = load::range_ids(&mut client, &room, None, None, None).expect("ids");
    // One symbol table for both loads, so equal strings get equal ids.
    let mut symbols = Symbols::new();
    // Index order (each group's rows together), then storage order (what a
    // sequential or bitmap scan returns), each checked from the plan.
    let mut load_with = |settings: &str, scan: &str| {
        client.batch_execute(settings).unwrap();
        let plan: String = client
            .query(
                "EXPLAIN SELECT state_group, type, state_key, event_id \
                 FROM state_groups_state WHERE state_group = ANY($1)",
                &[&ids],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        assert!(plan.contains(scan), "{plan}");
        load::load_groups(&mut client, &mut symbols, &room, &ids, &[], &mut |_| {}).expect(scan)
    };
    let by_index = load_with(
        "SET enable_seqscan = off; SET enable_bitmapscan = off",
        "Index Scan",
    );
    let by_storage = load_with(
        "RESET enable_seqscan; SET enable_indexscan = off",
        "Seq Scan",
    );

    assert_eq!(by_index.0.len(), ids.len());
    assert!(by_index.0 == by_storage.0, "the groups differ");
    assert_eq!(by_index.1, by_storage.1, "the load reports differ");
}
