//! Damaged rows and loading that must never hang, against a real
//! PostgreSQL.
//!
//! - A NULL (possible only in a damaged or hand-altered database: the test
//!   drops the column's NOT NULL first) in any column the tools read, or
//!   text that is not UTF-8 (an `SQL_ASCII` database), makes the manual
//!   tool exit with one `error:` line naming the room, the group and the
//!   column, and change nothing.
//! - The automatic tool with such a room neither panics nor hangs, leaves
//!   that room alone and compresses the others.
//! - Rows that repeat another row of their group exactly are compressed
//!   with their group (both tools, both readers, the SQL file); the same
//!   key with two events in one group is damage.
//! - A loading connection of the automatic tool killed by the server in the
//!   middle of a run: the run ends by itself, every state is unchanged, the
//!   result is that of an undisturbed run, and the next run can start.
//!
//! The harness's own readers (`check::snapshot`, `structure`) expect
//! Synapse's NOT NULL columns, so damaged rooms are compared here as raw,
//! NULL-safe text of their rows ([`raw_tables`]).

use compressor_integration_tests::check::{self, assert_same_states, run_compressor, snapshot};
use compressor_integration_tests::generator::{generate_into, GenConfig, Generated};
use compressor_integration_tests::pg::{self, TestDb};
use compressor_integration_tests::synapse_state;
use compressor_integration_tests::tools::{self, assert_user_error, ToolRun};
use compressor_integration_tests::StateMap;
use postgres::Client;
use serde_json::Value;
use std::collections::BTreeMap;

const AUTO: &str = "synapse_auto_compressor";
/// The automatic tool's run lock ("SynCompr", big-endian).
const LOCK_KEY: i64 = i64::from_be_bytes(*b"SynCompr");

/// The columns that are NOT NULL in Synapse's schema and that the tools
/// read: (table, column).
const READ_COLUMNS: [(&str, &str); 4] = [
    ("state_groups_state", "type"),
    ("state_groups_state", "state_key"),
    ("state_groups_state", "event_id"),
    ("state_group_edges", "prev_state_group"),
];

/// Rooms that compress well; plain strings, so the room id appears
/// unescaped in messages.
fn config(seed: u64, rooms: usize, groups: usize) -> GenConfig {
    GenConfig {
        nasty_strings: false,
        ..GenConfig::compressible(seed, rooms, groups)
    }
}

/// Every row of the three state tables for `room` (or the whole database),
/// as NULL-safe text (strings as md5, so bytes that are not UTF-8 compare
/// too), sorted.
fn raw_tables(client: &mut Client, room: Option<&str>) -> Vec<String> {
    let text = |column: &str| format!("coalesce(md5({column}), 'NULL')");
    let sql = format!(
        "WITH g AS (SELECT id FROM state_groups WHERE $1::text IS NULL OR room_id = $1::text) \
         SELECT line FROM ( \
             SELECT concat_ws(' ', 'group', id, {room}, {event}) AS line \
             FROM state_groups WHERE id IN (SELECT id FROM g) \
             UNION ALL \
             SELECT concat_ws(' ', 'edge', state_group, coalesce(prev_state_group::text, 'NULL')) \
             FROM state_group_edges WHERE state_group IN (SELECT id FROM g) \
             UNION ALL \
             SELECT concat_ws(' ', 'row', state_group, {room}, {ty}, {key}, {event}) \
             FROM state_groups_state WHERE state_group IN (SELECT id FROM g) \
         ) AS t ORDER BY line",
        room = text("room_id"),
        event = text("event_id"),
        ty = text("type"),
        key = text("state_key"),
    );
    client
        .query(&sql, &[&room])
        .expect("reading the raw tables")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The groups of `room` that have rows and an edge, ascending.
fn groups_with_rows_and_edge(client: &mut Client, room: &str) -> Vec<i64> {
    client
        .query(
            "SELECT g.id FROM state_groups AS g WHERE g.room_id = $1 \
             AND EXISTS (SELECT 1 FROM state_group_edges AS e WHERE e.state_group = g.id) \
             AND EXISTS (SELECT 1 FROM state_groups_state AS s WHERE s.state_group = g.id) \
             ORDER BY g.id",
            &[&room],
        )
        .expect("finding groups")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Drops `column`'s NOT NULL and sets it to NULL in one row of `group`.
fn put_null(client: &mut Client, table: &str, column: &str, group: i64) {
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL"
        ))
        .expect("dropping NOT NULL");
    let changed = client
        .execute(
            &format!(
                "UPDATE {table} SET {column} = NULL WHERE ctid = \
                 (SELECT ctid FROM {table} WHERE state_group = $1 LIMIT 1)"
            ),
            &[&group],
        )
        .expect("putting a NULL");
    assert_eq!(changed, 1, "no row of group {group} in {table}");
}

/// The group in the middle of `room` among those with rows and an edge.
fn middle_group(client: &mut Client, room: &str) -> i64 {
    let groups = groups_with_rows_and_edge(client, room);
    assert!(groups.len() > 10, "room {room} has too few groups");
    groups[groups.len() / 2]
}

/// Asserts the manual tool's refusal of a damaged room: one `error:` line
/// naming the room and containing `why`, and nothing changed.
fn assert_refused(run: &ToolRun, room: &str, why: &str) {
    assert_user_error(run);
    let line = run.error_lines()[0];
    let expected_start = format!("error: room {room} is damaged: ");
    assert!(
        line.starts_with(&expected_start)
            && line.contains(why)
            && line.ends_with("it was left alone"),
        "expected {expected_start:?}...{why:?}...\n{}",
        run.describe()
    );
    eprintln!("{line}");
}

/// Runs the manual tool on `url` with `args` (room `room`) and asserts
/// its refusal ([`assert_refused`]) and that the database did not change.
fn refuses(client: &mut Client, url: &str, room: &str, args: &[&str], why: &str) -> ToolRun {
    let before = raw_tables(client, None);
    let mut all = vec!["-r", room];
    all.extend_from_slice(args);
    let run = run_compressor(url, &all);
    assert_refused(&run, room, why);
    assert_eq!(before, raw_tables(client, None), "the database changed");
    run
}

#[test]
fn a_null_in_a_rooms_rows_or_edges_is_one_error_line_and_changes_nothing() {
    for (i, (table, column)) in READ_COLUMNS.into_iter().enumerate() {
        let db = TestDb::create(&format!("damaged_manual_{column}"));
        let generated =
            generate_into(&mut db.client(), &config(70 + i as u64, 2, 150)).expect("generating");
        let room = generated.rooms[1].room_id.as_str();
        let group = middle_group(&mut db.client(), room);
        let mut client = db.client();
        put_null(&mut client, table, column, group);
        let before = raw_tables(&mut client, None);

        let why = format!("state group {group} has a NULL {column} in {table}");
        // Writing to the database, and writing an SQL file.
        refuses(&mut client, db.url(), room, &["-c"], &why);
        let file = tools::TempPath::new("damaged", "sql");
        refuses(&mut client, db.url(), room, &["-o", file.as_str()], &why);

        // The other room is not damaged and compresses as usual.
        let other = generated.rooms[0].room_id.as_str();
        let states = synapse_state::all_states(&mut db.client(), Some(other)).expect("states");
        tools::assert_success(&run_compressor(db.url(), &["-r", other, "-c"]));
        let after = synapse_state::all_states(&mut db.client(), Some(other)).expect("states");
        assert_same_states(&states, &after, "the undamaged room");
        assert_eq!(
            raw_tables(&mut db.client(), Some(room)),
            before_room(&before, &mut db.client(), room),
            "the damaged room changed"
        );
    }
}

/// The raw lines of `room` in a whole-database dump taken earlier (the
/// room's groups are the same, so its lines are those of its groups).
fn before_room(before: &[String], client: &mut Client, room: &str) -> Vec<String> {
    let ids: Vec<String> = synapse_state::group_ids(client, Some(room))
        .expect("group ids")
        .iter()
        .map(i64::to_string)
        .collect();
    let ids: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    before
        .iter()
        .filter(|line| line.split(' ').nth(1).is_some_and(|id| ids.contains(id)))
        .cloned()
        .collect()
}

/// The NULL is in a predecessor outside the range (`-b` after it): it is
/// loaded to resolve states, and named all the same.
#[test]
fn a_null_in_a_predecessor_outside_the_range_is_named_too() {
    let (db, generated) = check::generated_db("damaged_predecessor", &config(77, 1, 200));
    let room = generated.rooms[0].room_id.as_str();
    let mut client = db.client();
    // A group with an edge that is itself the predecessor of a later group.
    let group: i64 = client
        .query_one(
            "SELECT e.prev_state_group FROM state_group_edges AS e \
             JOIN state_group_edges AS p ON p.state_group = e.prev_state_group \
             ORDER BY e.prev_state_group LIMIT 1 OFFSET 20",
            &[],
        )
        .expect("finding a predecessor")
        .get(0);
    put_null(&mut client, "state_group_edges", "prev_state_group", group);

    let why = format!("state group {group} has a NULL prev_state_group in state_group_edges");
    let after = group.to_string();
    refuses(&mut client, db.url(), room, &["-b", &after, "-c"], &why);
}

/// Synapse's schema has `state_groups_state.room_id` NOT NULL, but the
/// tools never read it (a group's room is `state_groups.room_id`): a NULL
/// there changes nothing about a run.
/// An edge into another room (Synapse never makes one) is damage too: the
/// walk up the new structure could otherwise make a group of one room the
/// base of another's.
#[test]
fn an_edge_into_another_room_is_named() {
    let (db, generated) = check::generated_db("damaged_cross_room", &config(77, 2, 150));
    let (room, other) = (&generated.rooms[0].room_id, &generated.rooms[1].room_id);
    let mut client = db.client();
    let group = middle_group(&mut client, room);
    check::edge_into_other_room(&mut client, group, other);
    // The lowest group of the foreign chain is named (the walk finds them
    // all at once).
    let why = format!("a predecessor in this room's chains, belongs to room {other}");
    refuses(&mut client, db.url(), room, &["-c"], &why);

    let run = auto(db.url(), "30", "10000", &["--json"]);
    tools::assert_success(&run);
    assert!(
        json(&run)["rooms_damaged"].as_u64() >= Some(1),
        "{}",
        run.describe()
    );
    assert!(run.stderr.contains(&why), "{}", run.describe());
}

#[test]
fn a_null_room_id_in_the_rows_is_not_read() {
    let (db, generated) = check::generated_db("damaged_rows_room_id", &config(78, 1, 150));
    let room = generated.rooms[0].room_id.as_str();
    let group = middle_group(&mut db.client(), room);
    put_null(&mut db.client(), "state_groups_state", "room_id", group);
    let before = synapse_state::all_states(&mut db.client(), None).expect("states");

    tools::assert_success(&run_compressor(db.url(), &["-r", room, "-c"]));
    let after = synapse_state::all_states(&mut db.client(), None).expect("states");
    assert_same_states(&before, &after, "after compressing");
}

/// A database in `SQL_ASCII`, where text may hold any bytes: the
/// workspace's test databases are UTF8, so this one is made here.
struct AsciiDb {
    name: String,
    url: String,
}

impl AsciiDb {
    fn create(hint: &str) -> AsciiDb {
        let name = format!("t_{}_{hint}", std::process::id());
        let mut admin = pg::admin_client();
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'SQL_ASCII' \
                 LC_COLLATE 'C' LC_CTYPE 'C'",
                pg::quote_ident(&name)
            ))
            .expect("creating an SQL_ASCII database");
        let url = pg::db_url(&pg::base_url(), &name);
        pg::connect(&url)
            .batch_execute(pg::SCHEMA_SQL)
            .expect("loading the schema");
        AsciiDb { name, url }
    }
}

impl Drop for AsciiDb {
    fn drop(&mut self) {
        let _ = pg::admin_client().batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            pg::quote_ident(&self.name)
        ));
    }
}

#[test]
fn text_that_is_not_utf8_is_named_like_a_null() {
    let db = AsciiDb::create("damaged_ascii");
    let mut client = pg::connect(&db.url);
    let generated = generate_into(&mut client, &config(79, 2, 120)).expect("generating");
    let room = generated.rooms[0].room_id.as_str();
    let group = middle_group(&mut client, room);
    let changed = client
        .execute(
            "UPDATE state_groups_state SET state_key = E'bad \\xff byte' WHERE ctid = \
             (SELECT ctid FROM state_groups_state WHERE state_group = $1 LIMIT 1)",
            &[&group],
        )
        .expect("storing a byte that is not UTF-8");
    assert_eq!(changed, 1);

    // The server refuses to send the row as UTF-8 and does not say which
    // row it was: the line names the room, the table and the groups read.
    let why = "a row of state_groups_state of state groups ";
    let run = refuses(&mut client, &db.url, room, &["-c"], why);
    assert!(run.stderr.contains("not valid UTF-8"), "{}", run.describe());
}

/// A column the tool cannot decode (here a hand-altered type) is named
/// with the group whose row could not be read.
#[test]
fn a_column_that_cannot_be_decoded_is_named() {
    let (db, generated) = check::generated_db("damaged_bytea", &config(76, 1, 100));
    let room = generated.rooms[0].room_id.as_str();
    let mut client = db.client();
    client
        .batch_execute(
            "ALTER TABLE state_groups_state ALTER COLUMN event_id TYPE bytea \
             USING convert_to(event_id, 'UTF8')",
        )
        .expect("altering the column");
    let first: i64 = client
        .query_one("SELECT min(state_group) FROM state_groups_state", &[])
        .expect("first group")
        .get(0);

    let why = format!("state group {first} has an unreadable event_id in state_groups_state");
    refuses(&mut client, db.url(), room, &["-c"], &why);
}

// ---------------------------------------------------------------------------
// The automatic tool

fn auto(url: &str, chunk: &str, chunks: &str, extra: &[&str]) -> ToolRun {
    let mut args = vec!["-p", url, "-c", chunk, "-n", chunks];
    args.extend_from_slice(extra);
    tools::run_bin(AUTO, &args)
}

/// The one JSON object a `--json` run printed.
fn json(run: &ToolRun) -> Value {
    let line = run
        .stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no JSON on stdout\n{}", run.describe()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"))
}

/// An automatic run over a generated database (three rooms) with a NULL
/// `column` in the middle group of its second room, after which the other
/// rooms' states are checked, and what there is to know about it.
struct DamagedRun {
    db: TestDb,
    generated: Generated,
    room: String,
    group: i64,
    /// The damaged room's raw rows before the run.
    room_before: Vec<String>,
    run: ToolRun,
}

fn auto_on_a_damaged_room(hint: &str, seed: u64, table: &str, column: &str) -> DamagedRun {
    let (db, generated) = check::generated_db(hint, &config(seed, 3, 200));
    let room = generated.rooms[1].room_id.clone();
    let mut client = db.client();
    let group = middle_group(&mut client, &room);
    put_null(&mut client, table, column, group);
    let before = other_states(&mut client, &generated, &room);
    let room_before = raw_tables(&mut client, Some(&room));

    // Many chunks, loaded ahead on the reader connections.
    let run = auto(db.url(), "30", "10000", &["--json"]);
    tools::assert_success(&run);
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    let after = other_states(&mut client, &generated, &room);
    assert_same_states(&before, &after, "the undamaged rooms");
    DamagedRun {
        db,
        generated,
        room,
        group,
        room_before,
        run,
    }
}

/// States of every group of the rooms other than `damaged`, with Synapse's
/// query.
fn other_states(
    client: &mut Client,
    generated: &Generated,
    damaged: &str,
) -> BTreeMap<i64, StateMap> {
    let mut states = BTreeMap::new();
    for room in generated.rooms.iter().filter(|r| r.room_id != damaged) {
        states.extend(synapse_state::all_states(client, Some(&room.room_id)).expect("states"));
    }
    states
}

fn room_rows(client: &mut Client, room: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM state_groups_state WHERE state_group IN \
             (SELECT id FROM state_groups WHERE room_id = $1)",
            &[&room],
        )
        .expect("counting rows")
        .get(0)
}

/// Whatever the automatic tool decides about a damaged room, it must not
/// panic or hang, must name the damage, must keep every other room's
/// states and the damaged group's rows, and must leave the run lock free.
#[test]
fn the_automatic_tool_neither_panics_nor_hangs_on_a_damaged_room() {
    for (i, (table, column)) in READ_COLUMNS.into_iter().enumerate() {
        let hint = format!("damaged_auto_{column}");
        let done = auto_on_a_damaged_room(&hint, 80 + i as u64, table, column);
        let (group, run) = (done.group, &done.run);
        let why = format!("state group {group} has a NULL {column} in {table}");
        assert!(
            run.stderr.contains(&why),
            "expected {why:?}\n{}",
            run.describe()
        );

        let now = raw_tables(&mut done.db.client(), Some(&done.room));
        let id = group.to_string();
        for line in done
            .room_before
            .iter()
            .filter(|l| l.split(' ').nth(1) == Some(&id))
        {
            assert!(
                now.contains(line),
                "group {group}'s rows changed: {line} is gone"
            );
        }
        // A new run can take the lock.
        tools::assert_success(&auto(done.db.url(), "30", "10000", &[]));
    }
}

/// A damaged room is left alone for the rest of the run from its damaged
/// chunk on (nothing written, no progress saved past it), counted as
/// `rooms_damaged`, and every other room is compressed.
#[test]
fn the_automatic_tool_leaves_a_damaged_room_alone_and_counts_it() {
    for (i, (table, column)) in READ_COLUMNS.into_iter().enumerate() {
        let hint = format!("damaged_alone_{column}");
        let done = auto_on_a_damaged_room(&hint, 90 + i as u64, table, column);
        let (room, run) = (done.room.as_str(), &done.run);
        let figures = json(run);
        assert!(
            figures["rooms_damaged"].as_u64().is_some_and(|n| n >= 1),
            "expected rooms_damaged >= 1: {figures}\n{}",
            run.describe()
        );

        // Chunks of the room before the damaged one may have been
        // compressed; from the damaged chunk on, nothing was written and
        // no progress saved.
        let mut client = done.db.client();
        let progress: Option<i64> = client
            .query_opt(
                "SELECT last_compressed FROM state_compressor_progress WHERE room_id = $1",
                &[&room],
            )
            .expect("reading progress")
            .map(|row| row.get(0));
        assert!(
            progress.is_none_or(|last| last < done.group),
            "progress {progress:?} was saved past the damaged group {}",
            done.group
        );
        let from_damaged_chunk = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .filter(|l| {
                    let id: i64 = l
                        .split(' ')
                        .nth(1)
                        .and_then(|id| id.parse().ok())
                        .unwrap_or(i64::MAX);
                    progress.is_none_or(|last| id > last)
                })
                .cloned()
                .collect()
        };
        assert_eq!(
            from_damaged_chunk(&done.room_before),
            from_damaged_chunk(&raw_tables(&mut client, Some(room))),
            "the damaged room was changed from its damaged chunk on"
        );
        for other in done.generated.rooms.iter().filter(|r| r.room_id != room) {
            let generated_rows = done.generated.room_row_count(&other.room_id) as i64;
            let rows = room_rows(&mut client, &other.room_id);
            assert!(
                rows < generated_rows,
                "room {} was not compressed ({rows} rows)",
                other.room_id
            );
        }
    }
}

// ---------------------------------------------------------------------------
// A loading connection killed by the server

/// Terminates one of the run's reader connections (named `app`, not
/// holding the run lock while another of them does, not among `$3`, the
/// ones already terminated) that is running a query; its pid, if there
/// was one.
const KILL_A_READER: &str = "\
    WITH run AS (SELECT pid FROM pg_stat_activity WHERE application_name = $1), \
    holder AS ( \
        SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
        AND ((classid::bigint << 32) | objid::bigint) = $2 AND pid IN (SELECT pid FROM run) \
    ), victim AS ( \
        SELECT a.pid FROM pg_stat_activity AS a \
        WHERE a.application_name = $1 AND a.state = 'active' \
        AND EXISTS (SELECT 1 FROM holder) AND a.pid NOT IN (SELECT pid FROM holder) \
        AND a.pid <> ALL($3) \
        LIMIT 1 \
    ) SELECT pid, pg_terminate_backend(pid) FROM victim";

/// Starts a run on `db` with `extra` options and kills up to `readers` of
/// its reading connections (the loading ones, or the pass's), each while it
/// reads. The run's output and how many were killed (the run may end
/// first).
fn run_and_kill_readers(
    db: &TestDb,
    app: &str,
    readers: usize,
    extra: &'static [&'static str],
) -> (ToolRun, usize) {
    let url = format!("{}?application_name={app}", db.url());
    let tool = std::thread::spawn(move || auto(&url, "50", "100000", extra));
    let mut watcher = db.client();
    let mut killed: Vec<i32> = Vec::new();
    while killed.len() < readers && !tool.is_finished() {
        let victim = watcher
            .query_opt(KILL_A_READER, &[&app, &LOCK_KEY, &killed])
            .expect("looking for a reader");
        if let Some(row) = victim {
            let pid: i32 = row.get(0);
            assert!(row.get::<_, bool>(1), "could not terminate reader {pid}");
            killed.push(pid);
        }
    }
    let run = tool
        .join()
        .expect("the run's thread panicked (a hung tool?)");
    (run, killed.len())
}

/// Room by room, one loading connection killed: its chunk is loaded again
/// on the main connection; both killed: the run goes on loading every
/// chunk itself. With the pass (read in many small ranges, so it is
/// reading most of the time), its connection killed: the chunks it has not
/// handed over are done room by room.
#[test]
fn a_loading_connection_killed_mid_run_never_hangs_the_run() {
    let cfg = config(95, 4, 800);
    // The result of an undisturbed run on the same data.
    let (reference, _) = check::generated_db("damaged_kill_reference", &cfg);
    tools::assert_success(&auto(reference.url(), "50", "100000", &[]));
    let expected = snapshot(&mut reference.client()).structure;

    const ROOMS: &[&str] = &["--reader", "rooms"];
    const PASS: &[&str] = &["--reader", "pass", "--pass-range", "10"];
    for (readers, extra) in [(1, ROOMS), (2, ROOMS), (1, PASS)] {
        let (db, _) = check::generated_db(&format!("damaged_kill_{readers}_{}", extra[1]), &cfg);
        let before = snapshot(&mut db.client());
        let (run, killed) =
            run_and_kill_readers(&db, &format!("{}_tool", db.name()), readers, extra);
        eprintln!("killed {killed} of {readers} reader(s) asked");
        assert!(
            killed >= 1,
            "no reader was ever caught loading\n{}",
            run.describe()
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.describe());
        // The main connection loads the chunk again: the run completes.
        tools::assert_finished_all(&run);
        let after = snapshot(&mut db.client());
        assert_same_states(&before.states, &after.states, "after killed readers");
        assert_eq!(
            after.structure, expected,
            "killed readers must not change the result"
        );
        // The run lock was released: the next run starts and has nothing to do.
        let next = auto(db.url(), "50", "100000", &[]);
        tools::assert_finished_all(&next);
    }
}

// ---------------------------------------------------------------------------
// Rows that repeat (the table has no unique constraint)

/// How many rows of `group` repeat another of its rows exactly.
fn repeats(client: &mut Client, group: i64) -> i64 {
    client
        .query_one(
            "SELECT count(*) - count(DISTINCT (type, state_key, event_id)) \
             FROM state_groups_state WHERE state_group = $1",
            &[&group],
        )
        .expect("counting repeats")
        .get(0)
}

/// Every row of every seventh group of `room` with rows and an edge stored
/// a second time; the groups.
fn repeat_rows(client: &mut Client, room: &str) -> Vec<i64> {
    let groups: Vec<i64> = groups_with_rows_and_edge(client, room)
        .into_iter()
        .step_by(7)
        .collect();
    let added = client
        .execute(
            "INSERT INTO state_groups_state \
             SELECT * FROM state_groups_state WHERE state_group = ANY($1)",
            &[&groups],
        )
        .expect("repeating rows");
    assert!(added > 0);
    groups
}

/// A row that repeats another of its group exactly says nothing new: the
/// group's state is the same, so it is compressed like any other, without
/// a warning or a batch tried again, and a group that is rewritten loses
/// its repeats. Both tools, the manual one also through an SQL file (whose
/// check of each group's rows counts them too); the automatic one with each
/// reader (the pass and the room-by-room loads gather rows apart).
#[test]
fn rows_that_repeat_exactly_are_compressed_with_their_group() {
    let runs: [(&str, &[&str]); 4] = [
        ("manual", &[]),
        ("sql", &[]),
        ("pass", &["--reader", "pass"]),
        ("rooms", &["--reader", "rooms"]),
    ];
    for (i, (how, args)) in runs.into_iter().enumerate() {
        let (db, generated) =
            check::generated_db(&format!("repeats_{how}"), &config(60 + i as u64, 2, 300));
        let room = generated.rooms[1].room_id.as_str();
        let mut client = db.client();
        let repeated = repeat_rows(&mut client, room);
        let before = synapse_state::all_states(&mut client, None).expect("states");

        let run = match how {
            "manual" => run_compressor(db.url(), &["-r", room, "-c"]),
            "sql" => {
                // The file's own check of each group's rows and digest.
                let file = tools::TempPath::new("repeats", "sql");
                tools::assert_success(&run_compressor(
                    db.url(),
                    &["-r", room, "-o", file.as_str()],
                ));
                tools::psql_file(db.url(), std::path::Path::new(file.as_str()))
            }
            _ => auto(db.url(), "100", "10000", args),
        };
        tools::assert_success(&run);
        for bad in [
            "rows changed",
            "trying the batch again",
            "is damaged",
            "left alone",
            "skipped:",
        ] {
            assert!(
                !run.stderr.contains(bad),
                "{how}: {bad:?} in the output\n{}",
                run.describe()
            );
        }
        let after = synapse_state::all_states(&mut client, None).expect("states");
        assert_same_states(&before, &after, how);
        // Each group keeps all its repeats (not rewritten) or loses them
        // all, and some were rewritten.
        let left: Vec<i64> = repeated.iter().map(|&g| repeats(&mut client, g)).collect();
        assert!(
            left.iter().zip(&repeated).all(|(&n, &g)| n == 0
                || n == client
                    .query_one(
                        "SELECT count(DISTINCT (type, state_key, event_id)) \
                         FROM state_groups_state WHERE state_group = $1",
                        &[&g],
                    )
                    .expect("counting rows")
                    .get::<_, i64>(0)),
            "{how}: a group lost some of its repeats: {left:?}"
        );
        assert!(
            left.contains(&0),
            "{how}: no group with repeats was rewritten: {left:?}\n{}",
            run.describe()
        );
    }
}

/// Two rows of one group for one key with different events: the group has
/// no one state (Synapse's read takes whichever comes first), so the room
/// is damaged. The manual tool refuses it in one line naming the group and
/// the key; the automatic tool leaves it alone, counts it, and compresses
/// the other room.
#[test]
fn a_key_with_two_events_in_one_group_is_damage() {
    let (db, generated) = check::generated_db("repeats_conflict", &config(66, 2, 200));
    let room = generated.rooms[1].room_id.as_str();
    let mut client = db.client();
    let group = middle_group(&mut client, room);
    // Two topics, neither of them in the group's state before.
    for event in ["$one", "$two"] {
        client
            .execute(
                "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
                 SELECT state_group, room_id, 'm.room.topic', '', $2 \
                 FROM state_groups_state WHERE state_group = $1 LIMIT 1",
                &[&group, &event],
            )
            .expect("adding a row");
    }
    let why = format!(
        "state group {group} has rows with different events for one key \
         (type \"m.room.topic\", state_key \"\")"
    );
    refuses(&mut client, db.url(), room, &["-c"], &why);

    // The room's chunks before the damaged one are compressed as usual:
    // the groups below it must keep their states, the damaged group its
    // rows.
    let id = group.to_string();
    let group_rows = |client: &mut Client| -> Vec<String> {
        raw_tables(client, Some(room))
            .into_iter()
            .filter(|l| l.split(' ').nth(1) == Some(id.as_str()))
            .collect()
    };
    let rows_before = group_rows(&mut client);
    let other = generated.rooms[0].room_id.as_str();
    let below = |client: &mut Client| -> BTreeMap<i64, StateMap> {
        let mut states = synapse_state::all_states(client, Some(room)).expect("states");
        states.retain(|&g, _| g < group);
        states.extend(synapse_state::all_states(client, Some(other)).expect("states"));
        states
    };
    let before = below(&mut client);
    for (reader, chunk) in [("pass", "40"), ("rooms", "40")] {
        let run = auto(db.url(), chunk, "10000", &["--json", "--reader", reader]);
        tools::assert_success(&run);
        assert!(
            json(&run)["rooms_damaged"].as_u64() >= Some(1),
            "{reader}: {}",
            run.describe()
        );
        assert!(run.stderr.contains(&why), "{reader}: {}", run.describe());
        assert!(
            group_rows(&mut client) == rows_before,
            "{reader}: the rows of group {group} changed"
        );
        assert_same_states(&before, &below(&mut client), reader);
        // The next reader starts from the same database.
        client
            .batch_execute(
                "DROP TABLE IF EXISTS state_compressor_state, state_compressor_progress, \
                 state_compressor_total_progress",
            )
            .expect("forgetting progress");
    }
}
