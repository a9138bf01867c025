//! What the automatic tool keeps from one chunk of a room for the next
//! (`synapse_auto_compressor::room_ids`: the ids of the room's next chunks;
//! `carry`: the groups its level heads reach) against Synapse deleting
//! groups in between. These drive the tool's loader directly, so the
//! deletion lands exactly between two chunks' loads; whole runs beside a
//! Synapse imitation are in `live_synapse.rs`.

use compressor_integration_tests::check;
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::synapse_imitation::{expectations_of, Imitator, ImitatorConfig};
use synapse_auto_compressor::prefetch::{load_chunk, ChunkRequest, LoadedChunk};
use synapse_auto_compressor::room_ids::RoomIds;

const CHUNK: i64 = 100;

fn request(room: &str, after: Option<i64>) -> ChunkRequest {
    ChunkRequest {
        room_id: room.to_owned(),
        after,
        heads: Vec::new(),
        chunk_size: CHUNK,
        carried: None,
    }
}

/// Each loaded group's id, predecessor and row count.
fn shape(chunk: &LoadedChunk) -> Vec<(i64, bool, Option<i64>, usize)> {
    let (groups, _) = chunk
        .groups
        .as_ref()
        .expect("the chunk has groups")
        .as_ref()
        .expect("the chunk loads");
    groups
        .iter()
        .map(|(id, g)| (*id, g.in_range, g.prev, g.delta.len()))
        .collect()
}

/// Loads `room`'s chunk after `after` through `ids` (what was read ahead)
/// and asserts it is the chunk a fresh read loads: same ids, same `more`,
/// same groups.
fn load_as_fresh(
    client: &mut postgres::Client,
    room: &str,
    after: Option<i64>,
    ids: &RoomIds,
) -> LoadedChunk {
    let kept = load_chunk(client, &request(room, after), ids, &mut |_| {}).unwrap();
    let fresh = load_chunk(
        client,
        &request(room, after),
        &RoomIds::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(kept.ids, fresh.ids, "chunk after {after:?}");
    assert_eq!(kept.more, fresh.more, "chunk after {after:?}");
    assert_eq!(shape(&kept), shape(&fresh), "chunk after {after:?}");
    kept
}

/// Synapse deletes a group of a room's second chunk (de-deltaing the
/// groups built on it) after the first chunk's load read the second
/// chunk's ids ahead: the second chunk must be loaded as a fresh read
/// would load it, without the deleted group.
#[test]
fn a_group_deleted_after_its_id_was_read_ahead_is_not_loaded() {
    let (db, generated) = check::generated_db(
        "read_ahead_deleted",
        &GenConfig {
            seed: 21,
            rooms: 2,
            groups_per_room: 600,
            members: 60,
            max_delta_hops: 10,
            ..GenConfig::default()
        },
    );
    let room = generated.rooms[0].room_id.clone();
    let mut client = db.client();
    let ids = RoomIds::default();

    let first = load_chunk(&mut client, &request(&room, None), &ids, &mut |_| {}).unwrap();
    assert_eq!(first.ids.len() as i64, CHUNK);
    assert!(first.more);
    assert!(
        ids.len() > 2 * CHUNK as usize,
        "the room's next chunks were not read ahead"
    );
    let last = *first.ids.last().unwrap();
    let after = Some(last);

    // A group in the middle of the next chunk that other groups are built
    // on, so Synapse rewrites those as it deletes it.
    let victim: i64 = client
        .query_one(
            "SELECT g.id FROM state_groups AS g \
             WHERE g.room_id = $1 AND g.id > $2 \
               AND EXISTS (SELECT 1 FROM state_group_edges AS e WHERE e.prev_state_group = g.id) \
             ORDER BY g.id OFFSET 20 LIMIT 1",
            &[&room, &last],
        )
        .unwrap()
        .get(0);
    let mut imitator = Imitator::new(
        db.client(),
        expectations_of(&generated),
        ImitatorConfig {
            de_delta: true,
            ..ImitatorConfig::default()
        },
    );
    imitator.delete_now(&[victim]).unwrap();
    assert_eq!(imitator.stats.deleted, 1, "{:?}", imitator.stats);
    assert!(imitator.stats.de_deltas >= 1, "{:?}", imitator.stats);

    let second = load_as_fresh(&mut client, &room, after, &ids);
    assert!(!second.ids.contains(&victim), "{:?}", second.ids);
}

/// Without deletions, every chunk of a room loaded through the ids read
/// ahead is the chunk a fresh read gives, to the room's end (the last one
/// is always read afresh, so groups added meanwhile are found).
#[test]
fn chunks_from_ids_read_ahead_are_the_chunks_of_a_fresh_read() {
    let (db, generated) = check::generated_db(
        "read_ahead_same",
        &GenConfig {
            seed: 22,
            rooms: 3,
            groups_per_room: 450,
            members: 40,
            ..GenConfig::default()
        },
    );
    let room = generated.rooms[1].room_id.clone();
    let mut client = db.client();
    let ids = RoomIds::default();
    let mut after = None;
    let mut chunks = 0;
    loop {
        let kept = load_as_fresh(&mut client, &room, after, &ids);
        chunks += 1;
        if !kept.more {
            break;
        }
        // Synapse adds a group to the room before its last chunk.
        if chunks == 4 {
            let last: i64 = client
                .query_one(
                    "SELECT max(id) FROM state_groups WHERE room_id = $1",
                    &[&room],
                )
                .unwrap()
                .get(0);
            let new: i64 = client
                .query_one("SELECT max(id) + 1 FROM state_groups", &[])
                .unwrap()
                .get(0);
            client
                .execute(
                    "INSERT INTO state_groups (id, room_id, event_id) VALUES ($1, $2, '$new')",
                    &[&new, &room],
                )
                .unwrap();
            client
                .execute(
                    "INSERT INTO state_group_edges (state_group, prev_state_group) VALUES ($1, $2)",
                    &[&new, &last],
                )
                .unwrap();
        }
        after = kept.ids.last().copied();
    }
    assert_eq!(chunks, 5, "451 groups in chunks of 100");
}
