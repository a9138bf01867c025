//! The summaries' figures against SQL counts taken by the test: the rows
//! of the rooms touched in `state_groups_state` before and after, rows
//! saved, the longest chain (a recursive walk of `state_group_edges`) before
//! and after, and the table's size; for the automatic tool over a whole
//! database, over runs that stop part-way (and continue) and over a room
//! whose skipped chunks are followed by written ones, and for the manual
//! tool.

use std::collections::BTreeMap;

use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::{self, GenConfig};
use compressor_integration_tests::pg::{self, TestDb};
use compressor_integration_tests::tools;
use postgres::Client;
use serde_json::Value;

const AUTO: &str = "synapse_auto_compressor";

fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 3,
        groups_per_room: 300,
        members: 40,
        max_delta_hops: 30,
        ..GenConfig::default()
    }
}

fn int(json: &Value, key: &str) -> i64 {
    json[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not a number in {json}"))
}

/// The two columns of `sql`'s rows, as a map.
fn pairs<K, V>(client: &mut Client, sql: &str) -> BTreeMap<K, V>
where
    K: Ord + for<'a> postgres::types::FromSql<'a>,
    V: for<'a> postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Rows of `state_groups_state` per room, counted by the rows' own room_id.
fn rows_per_room(client: &mut Client) -> BTreeMap<String, i64> {
    pairs(
        client,
        "SELECT room_id, count(*) FROM state_groups_state GROUP BY room_id",
    )
}

/// Rows per group.
fn rows_per_group(client: &mut Client) -> BTreeMap<i64, i64> {
    pairs(
        client,
        "SELECT state_group, count(*) FROM state_groups_state GROUP BY state_group",
    )
}

/// Every group's chain length: the edges a walk of `state_group_edges`
/// follows from it until a group with no edge, as Synapse's read does.
fn hops_per_group(client: &mut Client) -> BTreeMap<i64, i64> {
    pairs(
        client,
        "WITH RECURSIVE walk(start, current, hops) AS ( \
             SELECT id, id, 0 FROM state_groups \
             UNION ALL \
             SELECT w.start, e.prev_state_group, w.hops + 1 \
             FROM walk w JOIN state_group_edges e ON e.state_group = w.current \
         ) SELECT start, max(hops)::bigint FROM walk GROUP BY start",
    )
}

/// Each room's saved position (the last group compressed so far; none
/// before the first run creates the table).
fn positions(client: &mut Client) -> BTreeMap<String, i64> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('state_compressor_progress') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    if !exists {
        return BTreeMap::new();
    }
    pairs(
        client,
        "SELECT room_id, last_compressed FROM state_compressor_progress",
    )
}

/// The groups of each room with `after < id <= until`.
fn groups_between(
    client: &mut Client,
    after: &BTreeMap<String, i64>,
    until: &BTreeMap<String, i64>,
) -> Vec<i64> {
    let mut ids = Vec::new();
    for (room, &last) in until {
        let first = after.get(room).copied().unwrap_or(-1);
        for row in client
            .query(
                "SELECT id FROM state_groups WHERE room_id = $1 AND id > $2 AND id <= $3",
                &[room, &first, &last],
            )
            .unwrap()
        {
            ids.push(row.get(0));
        }
    }
    ids
}

struct Before {
    rooms: BTreeMap<String, i64>,
    groups: BTreeMap<i64, i64>,
    hops: BTreeMap<i64, i64>,
    positions: BTreeMap<String, i64>,
}

fn before(client: &mut Client) -> Before {
    Before {
        rooms: rows_per_room(client),
        groups: rows_per_group(client),
        hops: hops_per_group(client),
        positions: positions(client),
    }
}

fn longest(hops: &BTreeMap<i64, i64>, ids: &[i64]) -> i64 {
    ids.iter().map(|id| hops[id]).max().unwrap_or(0)
}

/// Runs the automatic tool once and checks every figure against the
/// counts taken before and after it.
fn auto_run_matches_sql(db: &TestDb, args: &[&str]) -> Value {
    auto_run_matches_sql_logged(db, args).0
}

/// [`auto_run_matches_sql`], with the run's stderr.
fn auto_run_matches_sql_logged(db: &TestDb, args: &[&str]) -> (Value, String) {
    let mut client = db.client();
    let was = before(&mut client);
    let mut full_args = vec!["-p", db.url(), "--json"];
    full_args.extend_from_slice(args);
    let run = tools::run_bin(AUTO, &full_args);
    let json = tools::json_summary(&run);
    let now = before(&mut client);

    // The rooms this run touched: those whose position moved.
    let touched: Vec<&String> = now
        .positions
        .iter()
        .filter(|(room, last)| was.positions.get(*room) != Some(last))
        .map(|(room, _)| room)
        .collect();
    assert_eq!(int(&json, "rooms_touched"), touched.len() as i64, "{json}");
    let sum = |rooms: &BTreeMap<String, i64>| -> i64 {
        touched
            .iter()
            .map(|r| rooms.get(*r).copied().unwrap_or(0))
            .sum()
    };
    assert_eq!(int(&json, "table_rows_before"), sum(&was.rooms), "{json}");
    assert_eq!(int(&json, "table_rows_after"), sum(&now.rooms), "{json}");
    let total = |rooms: &BTreeMap<String, i64>| rooms.values().sum::<i64>();
    assert_eq!(
        int(&json, "rows_saved"),
        total(&was.rooms) - total(&now.rooms),
        "{json}"
    );
    assert!(int(&json, "rows_saved") > 0, "{json}");

    // The groups of this run's chunks, and their rows and chains.
    let touched_positions: BTreeMap<String, i64> = touched
        .iter()
        .map(|r| ((*r).clone(), now.positions[*r]))
        .collect();
    let ids = groups_between(&mut client, &was.positions, &touched_positions);
    assert_eq!(int(&json, "groups"), ids.len() as i64, "{json}");
    let rows = |groups: &BTreeMap<i64, i64>| -> i64 {
        ids.iter()
            .map(|id| groups.get(id).copied().unwrap_or(0))
            .sum()
    };
    assert_eq!(int(&json, "rows_before"), rows(&was.groups), "{json}");
    assert_eq!(int(&json, "rows_after"), rows(&now.groups), "{json}");
    assert_eq!(
        int(&json, "longest_chain_before"),
        longest(&was.hops, &ids),
        "{json}"
    );
    assert_eq!(
        int(&json, "longest_chain_after"),
        longest(&now.hops, &ids),
        "{json}"
    );

    // The table's size, and an estimate of the space freed within it.
    let bytes: i64 = client
        .query_one("SELECT pg_total_relation_size('state_groups_state')", &[])
        .unwrap()
        .get(0);
    // Autovacuum may have added the free-space map or cut empty pages
    // since: a few pages either way.
    let reported = int(&json, "table_bytes");
    assert!(
        (reported - bytes).abs() <= bytes / 10,
        "{bytes} bytes; {json}"
    );
    let free = int(&json, "estimated_free_bytes");
    assert!(free > 0 && free < bytes, "{json}");
    assert_eq!(json["vacuum_seconds"], Value::Null, "{json}");
    (json, run.stderr)
}

#[test]
fn auto_figures_over_a_whole_database_match_sql() {
    let (db, _) = check::generated_db("figures_whole", &config(31));
    let states = snapshot(&mut db.client()).states;
    let rows_before: i64 = rows_per_room(&mut db.client()).values().sum();
    let json = auto_run_matches_sql(&db, &["-c", "100", "-n", "1000"]);
    // Every group was compressed: the rows of the groups compressed are
    // the whole table's.
    assert_eq!(int(&json, "table_rows_before"), rows_before, "{json}");
    assert_eq!(int(&json, "rows_before"), rows_before, "{json}");
    assert_eq!(int(&json, "rooms_finished"), 3, "{json}");
    assert_same_states(&states, &snapshot(&mut db.client()).states, "whole run");
}

/// The same with the pass writing on two connections, and with rooms read
/// one by one: the rooms' rows after come from what each chunk loaded and
/// wrote, whichever worker did it.
#[test]
fn auto_figures_of_whole_runs_by_every_reader_and_two_writers_match_sql() {
    for reader in ["pass", "rooms"] {
        let (db, _) = check::generated_db(&format!("figures_whole_{reader}"), &config(31));
        let rows_before: i64 = rows_per_room(&mut db.client()).values().sum();
        let json = auto_run_matches_sql(
            &db,
            &["-c", "100", "-n", "1000", "--jobs", "2", "--reader", reader],
        );
        assert_eq!(int(&json, "table_rows_before"), rows_before, "{json}");
        assert_eq!(int(&json, "rooms_finished"), 3, "{json}");
    }
}

#[test]
fn auto_figures_of_runs_that_stop_part_way_match_sql() {
    let (db, _) = check::generated_db("figures_part", &config(32));
    let states = snapshot(&mut db.client()).states;
    // Small chunks, so a room's chains run through earlier chunks' groups
    // (rewritten by this run, then by the run before).
    auto_run_matches_sql(&db, &["-c", "40", "-n", "5"]);
    auto_run_matches_sql(&db, &["-c", "40", "-n", "7"]);
    assert_same_states(&states, &snapshot(&mut db.client()).states, "two runs");
}

/// A room whose chains are longer than a chunk: the longest chain before
/// the run belongs to a late chunk's group and runs back through groups of
/// earlier chunks, which the run has rewritten by then (their lengths are
/// kept for it, `chain_lengths`). Each group restates the same 20 rows on
/// its predecessor (redundant, as Synapse may write them), so every chunk
/// compresses and is written.
#[test]
fn auto_longest_chain_before_runs_through_earlier_chunks() {
    let db = TestDb::create("figures_deep");
    deep_room(&db, 300);
    let json = auto_run_matches_sql(&db, &["-c", "50", "-n", "100", "-l", "10,10"]);
    assert_eq!(int(&json, "longest_chain_before"), 299, "{json}");
    assert_eq!(int(&json, "chunks_skipped"), 0, "{json}");
}

/// Writes one room of `groups` groups in one chain (`!deep:example.org`),
/// each restating the same 20 rows on its predecessor (redundant, as
/// Synapse may write them), so every chunk compresses and is written.
fn deep_room(db: &TestDb, groups: i64) -> &'static str {
    let room = "!deep:example.org";
    let members: Vec<(String, String)> = (0..20)
        .map(|m| (format!("@u{m}:example.org"), format!("$join{m}")))
        .collect();
    let groups: Vec<_> = (1..=groups)
        .map(|id: i64| {
            let topic = format!("$topic{id}");
            let mut rows: Vec<(&str, &str, &str)> = members
                .iter()
                .map(|(user, event)| ("m.room.member", user.as_str(), event.as_str()))
                .collect();
            rows.push(("m.room.topic", "", &topic));
            generator::group(id, room, (id > 1).then_some(id - 1), &rows)
        })
        .collect();
    generator::write_groups(&mut db.client(), &groups).unwrap();
    room
}

/// The warning for levels that let chains grow far beyond Synapse's 100.
const LONG_CHAINS: &str = "far beyond Synapse's own 100";

/// One room of `groups` groups as Synapse writes a busy one: each group
/// changes the topic (a one-row delta on the group before), and every
/// 30th is a snapshot of the whole state (20 members and the topic).
fn short_chains_room(db: &TestDb, groups: i64) -> (&'static str, Vec<i64>) {
    let room = "!short:example.org";
    let members: Vec<(String, String)> = (0..20)
        .map(|m| (format!("@u{m}:example.org"), format!("$join{m}")))
        .collect();
    let written: Vec<_> = (1..=groups)
        .map(|id: i64| {
            let topic = format!("$topic{id}");
            let mut rows = vec![("m.room.topic", "", topic.as_str())];
            let snapshot = (id - 1) % 30 == 0;
            if snapshot {
                rows.extend(
                    members
                        .iter()
                        .map(|(user, event)| ("m.room.member", user.as_str(), event.as_str())),
                );
            }
            generator::group(id, room, (!snapshot).then_some(id - 1), &rows)
        })
        .collect();
    generator::write_groups(&mut db.client(), &written).unwrap();
    (room, (1..=groups).collect())
}

/// Levels of 800 over a room whose chains Synapse keeps short (30 hops)
/// make chains of hundreds of hops (as a recursive walk of the edges
/// counts them), and both tools say so; the default levels do not warn.
#[test]
fn long_levels_make_long_chains_and_both_tools_warn() {
    let db = TestDb::create("figures_long_auto");
    short_chains_room(&db, 900);
    let (json, stderr) = auto_run_matches_sql_logged(&db, &["-c", "1000", "-n", "10", "-l", "800"]);
    assert!(int(&json, "longest_chain_before") < 30, "{json}");
    assert!(int(&json, "longest_chain_after") > 300, "{json}");
    assert!(stderr.contains(LONG_CHAINS), "{stderr}");

    let db = TestDb::create("figures_long_manual");
    let (room, ids) = short_chains_room(&db, 900);
    let run = tools::run_bin(
        "synapse_compress_state",
        &["-p", db.url(), "-r", room, "-l", "800", "-c", "--json"],
    );
    let json = tools::json_summary(&run);
    let hops = hops_per_group(&mut db.client());
    assert_eq!(
        int(&json, "longest_chain_after"),
        longest(&hops, &ids),
        "{json}"
    );
    assert!(longest(&hops, &ids) > 300, "{json}");
    assert!(run.stderr.contains(LONG_CHAINS), "{}", run.describe());

    let run = tools::run_bin("synapse_compress_state", &["-p", db.url(), "-r", room]);
    tools::assert_success(&run);
    assert!(!run.stderr.contains(LONG_CHAINS), "{}", run.describe());
}

/// Chunks smaller than the first level: a warning, once, and most chunks
/// skipped as they would grow; no warning with chunks of several level-1
/// chains.
#[test]
fn chunks_smaller_than_the_first_level_warn() {
    let (db, _) = check::generated_db("figures_small_chunks", &config(33));
    let warning = "is smaller than the first level size (100)";
    let run = tools::run_bin(AUTO, &["-p", db.url(), "-c", "50", "-n", "20", "--json"]);
    let small = tools::json_summary(&run);
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.describe());
    // What the warning says: most chunks are skipped.
    assert!(
        2 * int(&small, "chunks_skipped") > int(&small, "chunks"),
        "{small}"
    );
    let (db, _) = check::generated_db("figures_big_chunks", &config(33));
    let run = tools::run_bin(AUTO, &["-p", db.url(), "-c", "500", "-n", "2", "--json"]);
    let big = tools::json_summary(&run);
    assert!(!run.stderr.contains(warning), "{}", run.describe());
    eprintln!(
        "rows saved over 900 groups: {} with -c 50 ({} of {} chunks skipped), {} with -c 500",
        small["rows_saved"], small["chunks_skipped"], small["chunks"], big["rows_saved"]
    );
}

/// Groups `ids` of `room`, a chain: each restates the room's whole state
/// so far on its predecessor (redundant rows, so its chunk compresses)
/// when `restating`, or adds just one new member (one row, so its chunk
/// would grow compressed: a level's first group repeats the rows of those
/// it skips). `members` is the room's state so far; the room's first
/// group is `first`.
fn chain_groups(
    room: &str,
    first: i64,
    ids: std::ops::RangeInclusive<i64>,
    restating: bool,
    members: &mut Vec<(String, String)>,
) -> Vec<generator::GenGroup> {
    ids.map(|id| {
        let prev = (id > first).then_some(id - 1);
        let topic = format!("$topic{id}");
        let rows: Vec<(String, String, String)> = if restating {
            members
                .iter()
                .map(|(user, event)| ("m.room.member".to_owned(), user.clone(), event.clone()))
                .chain([("m.room.topic".to_owned(), String::new(), topic)])
                .collect()
        } else {
            let user = format!("@u{id}:example.org");
            let event = format!("$join{id}");
            members.push((user.clone(), event.clone()));
            vec![("m.room.member".to_owned(), user, event)]
        };
        let rows: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|(t, k, e)| (t.as_str(), k.as_str(), e.as_str()))
            .collect();
        generator::group(id, room, prev, &rows)
    })
    .collect()
}

/// Skipped chunks followed by more chunks of their room: chunks of 30, the
/// room's second and third chunks would grow compressed (each group adds
/// one row), so they are skipped, their groups keep their long chain, and
/// the room goes on with written chunks; a second room is written
/// throughout. The longest chain after is the skipped chunks', through the
/// groups as they still are, never through a structure the run computed
/// and did not write.
#[test]
fn auto_longest_chain_after_a_skipped_chunk_matches_sql() {
    let db = TestDb::create("figures_skipped");
    let (room, other) = ("!skips:example.org", "!plain:example.org");
    let mut members: Vec<(String, String)> = (0..20)
        .map(|m| (format!("@m{m}:example.org"), format!("$first{m}")))
        .collect();
    let mut groups = Vec::new();
    for (ids, restating) in [
        (1..=30, true),
        (31..=60, false),
        (61..=90, false),
        (91..=120, true),
        (121..=150, true),
    ] {
        groups.extend(chain_groups(room, 1, ids, restating, &mut members));
    }
    let mut other_members = members[..20].to_vec();
    groups.extend(chain_groups(
        other,
        151,
        151..=210,
        true,
        &mut other_members,
    ));
    generator::write_groups(&mut db.client(), &groups).unwrap();
    let states = snapshot(&mut db.client()).states;
    let json = auto_run_matches_sql(&db, &["-c", "30", "-n", "100", "-l", "10,5"]);
    assert_eq!(int(&json, "chunks_skipped"), 2, "{json}");
    assert_eq!(int(&json, "chunks"), 7, "{json}");
    // Through both skipped chunks into the first one's new structure.
    assert!(int(&json, "longest_chain_after") > 60, "{json}");
    assert_same_states(&states, &snapshot(&mut db.client()).states, "skipped chunk");
}

#[test]
fn manual_figures_match_sql() {
    let compressible = GenConfig {
        max_delta_hops: 8,
        nasty_strings: true,
        ..config(5)
    };
    let (db, generated) = check::generated_db("figures_manual", &compressible);
    let room = generated.rooms[1].room_id.clone();
    let mut client = db.client();
    let was = before(&mut client);
    let ids: Vec<i64> = generated.rooms[1].group_ids.clone();

    // A dry run says what the chains would become, and counts nothing.
    let dry = tools::json_summary(&tools::run_bin(
        "synapse_compress_state",
        &["-p", db.url(), "-r", &room, "-l", "10,5", "--json"],
    ));
    assert_eq!(dry["table_rows_before"], Value::Null, "{dry}");
    assert_eq!(dry["table_bytes"], Value::Null, "{dry}");
    assert_eq!(int(&dry, "longest_chain_before"), longest(&was.hops, &ids));

    let json = tools::json_summary(&tools::run_bin(
        "synapse_compress_state",
        &["-p", db.url(), "-r", &room, "-l", "10,5", "-c", "--json"],
    ));
    let now = before(&mut client);
    assert_eq!(int(&json, "table_rows_before"), was.rooms[&room], "{json}");
    assert_eq!(int(&json, "table_rows_after"), now.rooms[&room], "{json}");
    assert_eq!(
        int(&json, "rows_saved"),
        was.rooms[&room] - now.rooms[&room],
        "{json}"
    );
    assert_eq!(int(&json, "longest_chain_before"), longest(&was.hops, &ids));
    assert_eq!(int(&json, "longest_chain_after"), longest(&now.hops, &ids));
    assert_eq!(
        int(&dry, "longest_chain_after"),
        int(&json, "longest_chain_after")
    );
    assert!(int(&json, "groups_written") > 0, "{json}");
    assert_eq!(
        int(&json, "groups_written"),
        int(&dry, "groups_to_write"),
        "{json}"
    );
    assert!(int(&json, "estimated_free_bytes") > 0, "{json}");
}

/// A group Synapse rewrites while the automatic tool waits to write it (the
/// test holds the group's row lock, changes its rows to its full state and
/// commits once the tool waits): the group keeps Synapse's rows, and
/// `rows_saved` is exactly what the tool's own writes removed, while the
/// table's counts include Synapse's rows.
#[test]
fn auto_rows_saved_leaves_out_a_group_synapse_changed() {
    use compressor_integration_tests::level_model;
    use compressor_integration_tests::synapse_state::state_of_group;
    use std::collections::BTreeSet;

    let config = GenConfig {
        rooms: 1,
        max_delta_hops: 8,
        nasty_strings: true,
        ..config(5)
    };
    let (db, generated) = check::generated_db("figures_live", &config);
    let room = generated.rooms[0].room_id.clone();
    let states = snapshot(&mut db.client()).states;
    let structure = generated.structure();
    let in_range: BTreeSet<i64> = generated.rooms[0].group_ids.iter().copied().collect();
    let outcome = level_model::compress(&structure, &in_range, &[10, 5]);
    let victim = *outcome
        .new
        .iter()
        .filter(|(id, e)| {
            structure[id].prev().is_some()
                && (structure[id].prev() != e.prev || structure[id].delta() != e.delta)
        })
        .map(|(id, _)| id)
        .next_back()
        .expect("a group the tool rewrites");
    let count = |c: &mut Client| -> i64 {
        c.query_one("SELECT count(*) FROM state_groups_state", &[])
            .unwrap()
            .get(0)
    };
    let mut watcher = db.client();
    let rows_before = count(&mut watcher);

    // Synapse's de-delta of the victim, held open on the group's lock.
    let full = state_of_group(&mut db.client(), victim).unwrap();
    let mut synapse = db.client();
    let mut tx = synapse.transaction().unwrap();
    tx.execute(
        "SELECT id FROM state_groups WHERE id = $1 FOR UPDATE",
        &[&victim],
    )
    .unwrap();
    check::replace_rows(&mut tx, victim, &room, &full);
    let added = full.len() as i64 - structure[&victim].delta().len() as i64;

    let name = format!("figures_live_{}", std::process::id());
    let url = format!("{}?application_name={name}", db.url());
    let tool = tools::start_bin(
        AUTO,
        &["-p", &url, "-c", "1000", "-n", "1", "-l", "10,5", "--json"],
    );
    pg::wait_for_lock_wait(&mut watcher, &name);
    tx.commit().unwrap();
    let json = tools::json_summary(&tool.wait());
    let rows_after = count(&mut watcher);

    assert_eq!(int(&json, "groups_skipped_live"), 1, "{json}");
    assert_eq!(
        int(&json, "rows_saved"),
        rows_before + added - rows_after,
        "{json}"
    );
    assert_eq!(
        int(&json, "rows_before") - int(&json, "rows_after"),
        int(&json, "rows_saved")
    );
    // Counted at the end; before is that plus what the tool removed, so
    // Synapse's row is in both.
    assert_eq!(int(&json, "table_rows_after"), rows_after, "{json}");
    assert_eq!(
        int(&json, "table_rows_before"),
        rows_before + added,
        "{json}"
    );
    assert_same_states(&states, &snapshot(&mut watcher).states, "live change");
}

/// The manual tool counts a room's rows after its writes without walking
/// the rows it deleted (`stats::room_rows_after_rewrite`): a rewritten
/// group still as written counts with the rows written. Synapse may still
/// change one before the count: delete it, or replace its edge with its
/// full state (its predecessor deleted). Both are done here to groups the
/// run rewrote, and the count must still be the table's.
#[test]
fn manual_rows_after_count_what_synapse_changed_since_the_write() {
    use synapse_compress_state::db::stats;

    let compressible = GenConfig {
        max_delta_hops: 8,
        ..config(5)
    };
    let (db, generated) = check::generated_db("figures_manual_after", &compressible);
    let room = generated.rooms[1].room_id.clone();
    let mut client = db.client();
    let edges_sql = "SELECT state_group, prev_state_group FROM state_group_edges";
    let was: BTreeMap<i64, i64> = pairs(&mut client, edges_sql);
    let was_rows = rows_per_group(&mut client);
    let json = tools::json_summary(&tools::run_bin(
        "synapse_compress_state",
        &["-p", db.url(), "-r", &room, "-l", "10,5", "-c", "--json"],
    ));
    // What the run wrote: the room's groups whose edge or rows changed.
    let now = before(&mut client);
    let edges: BTreeMap<i64, i64> = pairs(&mut client, edges_sql);
    let written: Vec<stats::Written> = generated.rooms[1]
        .group_ids
        .iter()
        .filter(|id| was_rows.get(id) != now.groups.get(id) || was.get(id) != edges.get(id))
        .map(|&id| {
            let rows = now.groups.get(&id).copied().unwrap_or(0);
            (id, edges.get(&id).copied(), rows)
        })
        .collect();
    assert!(written.len() >= 3, "{json}");
    assert_eq!(
        stats::room_rows_after_rewrite(&mut client, &room, &written).unwrap(),
        stats::room_rows(&mut client, &room).unwrap(),
        "nothing changed since the write"
    );

    // Synapse deletes one rewritten group, and gives another, one written
    // with an edge, its full state in place of that edge (here: rows it
    // did not have, and no edge).
    let gone = written[0].0;
    let dedelta = written[1..]
        .iter()
        .find(|w| w.1.is_some())
        .expect("a group written with an edge")
        .0;
    client
        .batch_execute(&format!(
            "DELETE FROM state_groups_state WHERE state_group = {gone}; \
             DELETE FROM state_group_edges WHERE state_group = {gone}; \
             DELETE FROM state_groups WHERE id = {gone}; \
             DELETE FROM state_group_edges WHERE state_group = {dedelta}; \
             INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
             SELECT {dedelta}, room_id, 'm.test.full', g::text, '$full' || g \
             FROM state_groups, generate_series(1, 7) AS g WHERE id = {dedelta}"
        ))
        .unwrap();
    let counted = stats::room_rows(&mut client, &room).unwrap();
    assert_eq!(
        counted,
        (now.rooms[&room] - written[0].2 + 7) as u64,
        "the test's own changes"
    );
    assert_eq!(
        stats::room_rows_after_rewrite(&mut client, &room, &written).unwrap(),
        counted,
        "a group deleted and a group given its full state since the write"
    );
}
