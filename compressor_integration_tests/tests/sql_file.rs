//! The SQL file (`-o`) as admins use it: applied with `psql -v
//! ON_ERROR_STOP=1` long after it was made, beside a Synapse that deletes and
//! de-deltas groups meanwhile, applied twice, piped straight into psql
//! (`-o -`), with and without Synapse's pending-deletion table.
//!
//! Each group's block must check at apply time that the group still has the
//! edge and rows it was computed from and that its new base exists, and skip
//! the group whole (with a NOTICE naming it) otherwise. Every test proves
//! with Synapse's query that every remaining group keeps its state, and with
//! the tree's invariants that no edge points at a missing group. Two tests
//! pin the file against Synapse's deletion with row locks, each side
//! waiting for the other in turn.
//!
//! Which groups a file rewrites, and onto which new bases, is learnt from a
//! twin database (same generator seed) compressed with `-c`, not from the
//! file's text.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::process::{Child, Command, Stdio};

use compressor_integration_tests::check::{
    self, compress_ok, run_compressor, snapshot, DbSnapshot, COMPRESSOR,
};
use compressor_integration_tests::generator::{group, write_groups, GenConfig, GenGroup};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::Structure;
use compressor_integration_tests::synapse_imitation::{expectations_of, Imitator, ImitatorConfig};
use compressor_integration_tests::synapse_state;
use compressor_integration_tests::tools::{self, TempPath, ToolRun};
use postgres::Client;

const LEVELS: &str = "10,5";

/// Rooms with short Synapse chains: many snapshots, so the compressor
/// rewrites many groups, and the group before each snapshot is a leaf that
/// becomes a new base.
fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 2,
        groups_per_room: 250,
        members: 30,
        max_delta_hops: 5,
        nasty_strings: true,
        ..GenConfig::default()
    }
}

/// A generated database and the room the tests compress.
struct Fixture {
    db: TestDb,
    room: String,
    generated: compressor_integration_tests::generator::Generated,
}

fn fixture(hint: &str, seed: u64) -> Fixture {
    let (db, generated) = check::generated_db(hint, &config(seed));
    let room = generated.rooms[0].room_id.clone();
    Fixture {
        db,
        room,
        generated,
    }
}

/// What `-c` makes of the fixture's room: each rewritten group with its new
/// prev (from a twin database).
fn plan(seed: u64) -> (Structure, BTreeMap<i64, Option<i64>>) {
    let twin = fixture("sqlplan", seed);
    let before = snapshot(&mut twin.db.client()).structure;
    compress_ok(twin.db.url(), &["-r", &twin.room, "-l", LEVELS, "-c"]);
    let after = snapshot(&mut twin.db.client()).structure;
    let rewritten = before
        .iter()
        .filter(|(id, g)| after.get(id) != Some(g))
        .map(|(&id, _)| (id, after[&id].prev()))
        .collect();
    (after, rewritten)
}

/// Writes the SQL file for the fixture's room (`-o FILE`, `-t` if asked)
/// and returns the tool's --json figures.
fn write_file(fx: &Fixture, file: &TempPath, transactions: bool) -> serde_json::Value {
    let mut args = vec!["-r", &fx.room, "-l", LEVELS, "-o", file.as_str(), "--json"];
    if transactions {
        args.push("-t");
    }
    let run = compress_ok(fx.db.url(), &args);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("bad JSON ({e})\n{}", run.describe()));
    assert!(
        json["outcome"] == "done" && json["groups_written"].as_u64() > Some(20),
        "the file would rewrite too little to test anything: {json}"
    );
    json
}

/// A fixture whose SQL file is written but not applied yet.
struct Pending {
    fx: Fixture,
    /// The database when the file was made.
    before: DbSnapshot,
    file: TempPath,
    /// The whole tree `-c` makes (on a twin database).
    expected: Structure,
    /// Each group the file rewrites, with its new prev.
    rewritten: BTreeMap<i64, Option<i64>>,
}

fn file_for(hint: &str, seed: u64, transactions: bool) -> Pending {
    let (expected, rewritten) = plan(seed);
    let fx = fixture(hint, seed);
    let before = snapshot(&mut fx.db.client());
    let file = TempPath::new(hint, "sql");
    write_file(&fx, &file, transactions);
    Pending {
        fx,
        before,
        file,
        expected,
        rewritten,
    }
}

/// `psql -v ON_ERROR_STOP=1 < FILE`, which must succeed.
fn apply(db: &TestDb, file: &TempPath) -> ToolRun {
    let run = tools::psql_file(db.url(), file.path());
    tools::assert_success(&run);
    run
}

/// Asserts two stored trees are identical, naming the first group that
/// differs (the whole trees are too big for a message).
fn assert_same_tree(found: &Structure, expected: &Structure, context: &str) {
    if let Some(id) = expected
        .keys()
        .chain(found.keys())
        .find(|id| found.get(id) != expected.get(id))
    {
        panic!(
            "{context}: group {id} differs\nexpected: {:?}\nfound: {:?}",
            expected.get(id),
            found.get(id)
        );
    }
}

/// The groups psql reported as skipped, with the reason given.
fn skipped(run: &ToolRun) -> BTreeMap<i64, String> {
    run.stderr
        .lines()
        .filter_map(|line| {
            let rest = line.split("NOTICE:  state group ").nth(1)?;
            let (id, why) = rest.split_once(" skipped: ")?;
            Some((id.parse().ok()?, why.to_owned()))
        })
        .collect()
}

/// Asserts that psql reported exactly one skipped group, `g`, for `why`.
fn assert_only_skip(run: &ToolRun, g: i64, why: &str) {
    let skips = skipped(run);
    assert_eq!(
        skips.keys().collect::<Vec<_>>(),
        vec![&g],
        "{}",
        run.describe()
    );
    assert!(skips[&g].starts_with(why), "{skips:?}");
}

/// Rewrites `g` as Synapse's de-delta does: its full state (Synapse's query)
/// as its rows, its edge removed.
fn de_delta(client: &mut Client, g: i64) {
    let state = synapse_state::state_of_group(client, g).expect("reading a state");
    let mut tx = client.transaction().unwrap();
    let room: String = tx
        .query_one("SELECT room_id FROM state_groups WHERE id = $1", &[&g])
        .unwrap()
        .get(0);
    tx.execute(
        "DELETE FROM state_groups_state WHERE state_group = $1",
        &[&g],
    )
    .unwrap();
    tx.execute(
        "DELETE FROM state_group_edges WHERE state_group = $1",
        &[&g],
    )
    .unwrap();
    for ((ty, key), event) in &state {
        tx.execute(
            "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&g, &room, ty, key, event],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// An unreferenced leaf (no group builds on it) that the file makes a new
/// base, which Synapse's cleanup may delete before or while the file is
/// applied; and the groups the file builds on it.
fn leaf_base(before: &Structure, rewritten: &BTreeMap<i64, Option<i64>>) -> (i64, BTreeSet<i64>) {
    let children: BTreeSet<i64> = before.values().filter_map(|g| g.prev()).collect();
    let victim = rewritten
        .values()
        .flatten()
        .copied()
        .find(|b| !children.contains(b))
        .expect("no leaf group became a new base: pick another seed");
    let users = rewritten
        .iter()
        .filter(|(_, base)| **base == Some(victim))
        .map(|(&g, _)| g)
        .collect();
    (victim, users)
}

#[test]
fn a_stale_file_skips_a_group_whose_new_base_synapse_deleted() {
    let Pending {
        fx,
        before,
        file,
        rewritten,
        ..
    } = file_for("sqlstale", 11, true);

    let (victim, users) = leaf_base(&before.structure, &rewritten);
    let mut synapse = Imitator::new(
        fx.db.client(),
        expectations_of(&fx.generated),
        ImitatorConfig::default(),
    );
    synapse.delete_now(&[victim]).expect("deleting the leaf");
    assert!(synapse.removed().contains(&victim));

    let run = apply(&fx.db, &file);
    // snapshot() also asserts the invariants: no edge to a missing group.
    let after = snapshot(&mut fx.db.client());
    let mut expected = before.states.clone();
    expected.remove(&victim);
    check::assert_same_states(&expected, &after.states, "stale file");
    let skips = skipped(&run);
    for g in &users {
        assert_eq!(
            skips.get(g).map(String::as_str),
            Some(format!("new base {victim} gone").as_str()),
            "group {g} (built on {victim} by the file) was not reported\n{}",
            run.describe()
        );
        assert_eq!(after.structure[g], before.structure[g], "group {g} changed");
    }
    // Everything else was applied.
    let mut expected_skips = users.len();
    if rewritten.contains_key(&victim) {
        assert_eq!(skips.get(&victim).map(String::as_str), Some("group gone"));
        expected_skips += 1;
    }
    assert_eq!(skips.len(), expected_skips, "{skips:?}");
}

#[test]
fn a_stale_file_skips_a_group_synapse_rewrote_meanwhile() {
    let Pending {
        fx,
        before,
        file,
        rewritten,
        ..
    } = file_for("sqldedelta", 12, true);

    // A group the file rewrites that is a delta now; Synapse makes it a
    // full snapshot (its old prev was being deleted, say).
    let target = *rewritten
        .keys()
        .find(|g| before.structure[g].prev().is_some() && !before.structure[g].rows.is_empty())
        .expect("no rewritten delta");
    de_delta(&mut fx.db.client(), target);
    let rewritten_by_synapse = snapshot(&mut fx.db.client());
    check::assert_same_states(&before.states, &rewritten_by_synapse.states, "de-delta");

    let run = apply(&fx.db, &file);
    let after = snapshot(&mut fx.db.client());
    check::assert_same_states(&before.states, &after.states, "file after a de-delta");
    assert_only_skip(&run, target, "edge changed");
    assert_eq!(
        after.structure[&target], rewritten_by_synapse.structure[&target],
        "the de-deltaed group must stay as Synapse wrote it"
    );
}

#[test]
fn the_digest_catches_rows_changed_with_the_same_count() {
    let Pending {
        fx,
        before,
        file,
        rewritten,
        ..
    } = file_for("sqldigest", 13, false);
    let before = before.structure;
    let target = *rewritten
        .keys()
        .find(|g| !before[g].rows.is_empty())
        .expect("no rewritten group with rows");
    // Same edge, same number of rows, one event id different.
    let changed = fx
        .db
        .client()
        .execute(
            "UPDATE state_groups_state SET event_id = event_id || 'x' WHERE ctid = \
             (SELECT ctid FROM state_groups_state WHERE state_group = $1 LIMIT 1)",
            &[&target],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let tampered = snapshot(&mut fx.db.client()).structure;

    let run = apply(&fx.db, &file);
    assert_only_skip(&run, target, "rows changed");
    let after = snapshot(&mut fx.db.client()).structure;
    assert_eq!(after[&target], tampered[&target]);
}

#[test]
fn applying_a_file_twice_changes_nothing_the_second_time() {
    for transactions in [true, false] {
        let fx = fixture("sqltwice", 14);
        let before = snapshot(&mut fx.db.client());
        let file = TempPath::new("twice", "sql");
        let json = write_file(&fx, &file, transactions);
        let written = json["groups_written"].as_u64().unwrap() as usize;

        let first = apply(&fx.db, &file);
        assert!(skipped(&first).is_empty(), "{}", first.describe());
        let once = snapshot(&mut fx.db.client());
        check::assert_same_states(&before.states, &once.states, "applied once");
        assert!(
            before.structure != once.structure,
            "applying changed nothing"
        );

        let second = apply(&fx.db, &file);
        let twice = snapshot(&mut fx.db.client());
        assert_same_tree(&twice.structure, &once.structure, "applied twice");
        let skips = skipped(&second);
        assert_eq!(skips.len(), written, "-t {transactions}: {skips:?}");
        assert!(skips
            .values()
            .all(|why| why.starts_with("edge changed") || why.starts_with("rows changed")));
    }
}

/// `synapse_compress_state -p URL -r ROOM -l LEVELS -o - [extra] | psql -v
/// ON_ERROR_STOP=1 URL`, through a real pipe. Returns the compressor's
/// stderr; both must succeed.
fn piped(db: &TestDb, room: &str, extra: &[&str]) -> String {
    let log = TempPath::new("pipe", "log");
    let mut args = vec!["-p", db.url(), "-r", room, "-l", LEVELS, "-o", "-"];
    args.extend_from_slice(extra);
    let mut compressor = Command::new(tools::bin_path(COMPRESSOR))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(log.path()).unwrap())
        .spawn()
        .expect("starting the compressor");
    let pipe = compressor.stdout.take().unwrap();
    let psql = tools::run_with_stdin(
        &tools::psql_path(),
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", db.url()],
        Stdio::from(pipe),
    );
    let status = compressor.wait().unwrap();
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    assert!(status.success(), "compressor failed: {status}\n{stderr}");
    tools::assert_success(&psql);
    assert!(skipped(&psql).is_empty(), "{}", psql.describe());
    stderr
}

#[test]
fn piping_into_psql_gives_what_commit_gives() {
    let seed = 15;
    let committed = fixture("sqlpipec", seed);
    let before = snapshot(&mut committed.db.client());
    compress_ok(
        committed.db.url(),
        &["-r", &committed.room, "-l", LEVELS, "-c"],
    );
    let expected = snapshot(&mut committed.db.client());
    assert!(before.structure != expected.structure, "-c changed nothing");

    // -t, text summary: it goes to stderr, stdout is only SQL.
    let with_t = fixture("sqlpipet", seed);
    let stderr = piped(&with_t.db, &with_t.room, &["-t"]);
    assert!(stderr.contains("Number of state groups:"), "{stderr}");
    let found = snapshot(&mut with_t.db.client());
    assert_same_tree(&found.structure, &expected.structure, "-o - -t | psql");

    // No -t, --json: the JSON object goes to stderr too.
    let plain = fixture("sqlpipe", seed);
    let stderr = piped(&plain.db, &plain.room, &["--json"]);
    let json: serde_json::Value = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no JSON on stderr:\n{stderr}"));
    assert_eq!(json["outcome"], "done");
    let found = snapshot(&mut plain.db.client());
    assert_same_tree(&found.structure, &expected.structure, "-o - | psql");
}

/// Sequence number and insertion time of `g`'s pending deletion.
fn pending(client: &mut Client, g: i64) -> Option<(i64, i64)> {
    client
        .query_opt(
            "SELECT sequence_number, insertion_ts FROM state_groups_pending_deletion \
             WHERE state_group = $1",
            &[&g],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

#[test]
fn applying_bumps_pending_deletions_only_where_the_table_exists() {
    let seed = 16;
    let Pending {
        fx,
        file,
        expected,
        rewritten,
        ..
    } = file_for("sqlpending", seed, true);

    // A new base and, for comparison, a group the file does not build on.
    let bases: BTreeSet<i64> = rewritten.values().flatten().copied().collect();
    let base = *bases.iter().next().expect("no new base");
    let other = *expected
        .keys()
        .find(|g| !bases.contains(g) && !rewritten.contains_key(g))
        .unwrap();
    let mut client = fx.db.client();
    client
        .execute(
            "INSERT INTO state_groups_pending_deletion (state_group, insertion_ts) \
             VALUES ($1, 1), ($2, 1)",
            &[&base, &other],
        )
        .unwrap();
    let (base_seq, _) = pending(&mut client, base).unwrap();
    let other_before = pending(&mut client, other).unwrap();

    apply(&fx.db, &file);
    let (seq, ts) = pending(&mut client, base).unwrap();
    assert_ne!(
        seq, base_seq,
        "the new base's pending deletion was not bumped"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - 600_000..=now_ms + 600_000).contains(&ts),
        "insertion_ts {ts} is not the time of applying (now {now_ms})"
    );
    assert_eq!(pending(&mut client, other), Some(other_before));
    assert_same_tree(
        &snapshot(&mut client).structure,
        &expected,
        "with the table",
    );

    // The same file on a database without the table (Synapse before 1.124).
    let old = fixture("sqlnopending", seed);
    old.db
        .client()
        .batch_execute("DROP TABLE state_groups_pending_deletion")
        .unwrap();
    let run = apply(&old.db, &file);
    assert!(skipped(&run).is_empty(), "{}", run.describe());
    assert_same_tree(
        &snapshot(&mut old.db.client()).structure,
        &expected,
        "without the table",
    );
}

#[test]
fn transactions_without_an_output_file_is_a_usage_error() {
    let run = tools::run_bin(
        COMPRESSOR,
        &["-p", "postgresql://localhost/x", "-r", "!r:x", "-t"],
    );
    tools::assert_user_error(&run);
    assert_eq!(run.status.code(), Some(2), "{}", run.describe());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());
    assert!(run.stderr.contains("--output-file"), "{}", run.describe());
}

/// The file of a run that writes nothing holds one comment saying why, and
/// applying it changes nothing.
fn assert_comment_only(db: &TestDb, file: &TempPath, why: &str) {
    let text = std::fs::read_to_string(file.path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].starts_with("-- ") && lines[0].contains(why),
        "{text}"
    );
    let before = snapshot(&mut db.client());
    apply(db, file);
    assert_same_tree(
        &snapshot(&mut db.client()).structure,
        &before.structure,
        why,
    );
}

/// A chain of one-row deltas: levels 3,3 would add snapshots, so more rows.
fn delta_chain(room: &str) -> Vec<GenGroup> {
    let members: Vec<String> = (0..13).map(|i| format!("@u{i}:x")).collect();
    (0..13)
        .map(|i| {
            group(
                i + 1,
                room,
                (i > 0).then_some(i),
                &[("m.room.member", members[i as usize].as_str(), "$join")],
            )
        })
        .collect()
}

#[test]
fn a_run_that_writes_nothing_leaves_a_comment() {
    let room = "!grow:example.org";
    let db = TestDb::create("sqlgrow");
    write_groups(&mut db.client(), &delta_chain(room)).unwrap();
    let file = TempPath::new("grow", "sql");
    let run = compress_ok(
        db.url(),
        &["-r", room, "-l", "3,3", "-o", file.as_str(), "-t"],
    );
    assert!(
        run.stdout.contains("would not remove any rows"),
        "{}",
        run.describe()
    );
    assert_comment_only(&db, &file, "would need more rows");

    let fx = fixture("sqlminimum", 17);
    let file = TempPath::new("minimum", "sql");
    compress_ok(
        fx.db.url(),
        &["-r", &fx.room, "-o", file.as_str(), "-m", "1000000000"],
    );
    assert_comment_only(&fx.db, &file, "fewer than the minimum");

    // Compressed already: the same levels change no group.
    compress_ok(fx.db.url(), &["-r", &fx.room, "-l", LEVELS, "-c"]);
    let file = TempPath::new("nochange", "sql");
    let run = run_compressor(
        fx.db.url(),
        &["-r", &fx.room, "-l", LEVELS, "-o", file.as_str(), "--json"],
    );
    tools::assert_success(&run);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(json["outcome"], "done", "{json}");
    assert_eq!(json["groups_written"], 0, "{json}");
    assert_comment_only(&fx.db, &file, "no state group needs changing");
}

// ---------------------------------------------------------------------------
// The file applied while Synapse's deletion runs, the interleavings pinned
// with row locks: the test waits (bounded polling of pg_stat_activity, no
// clock) until one side waits for the other's lock.

/// Starts `psql -v ON_ERROR_STOP=1 < FILE` on `db`, named `name` in
/// `pg_stat_activity`.
fn start_psql(db: &TestDb, file: &TempPath, name: &str) -> Child {
    Command::new(tools::psql_path())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", db.url()])
        .env("PGAPPNAME", name)
        .stdin(File::open(file.path()).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting psql")
}

/// Waits until a backend whose application name is `name` (or, with an
/// empty name, whose query starts with `query`) waits for a lock. False if
/// `child` ended first.
fn wait_for_lock_wait(
    watcher: &mut Client,
    name: &str,
    query: &str,
    mut child: Option<&mut Child>,
) -> bool {
    for _ in 0..200_000 {
        if let Some(child) = child.as_mut() {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
        }
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND (application_name = $1 OR ($1 = '' AND starts_with(query, $2)))",
                &[&name, &query],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            return true;
        }
    }
    panic!("nobody waited for a lock (name {name:?}, query {query:?})");
}

/// psql's outcome, which must be a success.
fn finish_psql(psql: Child) -> ToolRun {
    let output = psql.wait_with_output().unwrap();
    let run = ToolRun {
        command: "psql -v ON_ERROR_STOP=1 < file".to_owned(),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    tools::assert_success(&run);
    run
}

/// An imitation of Synapse on `fx`'s database that has read `victim` as
/// a collection to delete (marked, with its sequence number).
fn deletion_of(fx: &Fixture, victim: i64) -> (Imitator, BTreeMap<i64, i64>) {
    let mut synapse = Imitator::new(
        fx.db.client(),
        expectations_of(&fx.generated),
        ImitatorConfig::default(),
    );
    synapse.mark_for_deletion(&[victim], false).unwrap();
    let collection = synapse.collect_for_deletion(&[victim]).unwrap();
    (synapse, collection)
}

#[test]
fn a_deletion_holding_the_new_base_makes_the_file_skip_its_users() {
    let Pending {
        fx,
        before,
        file,
        rewritten,
        ..
    } = file_for("sqlracedel", 18, true);
    let (victim, users) = leaf_base(&before.structure, &rewritten);
    let (mut synapse, collection) = deletion_of(&fx, victim);

    // Synapse's deletion has locked the victim FOR UPDATE; the file is
    // applied and waits for it at the first group it builds on the victim;
    // then the deletion commits.
    let name = "sqlfile_behind_deletion";
    let mut watcher = fx.db.client();
    let mut psql = None;
    let deleted = synapse
        .delete_collection_gated(&collection, "", &mut || {
            let mut child = start_psql(&fx.db, &file, name);
            let blocked = wait_for_lock_wait(&mut watcher, name, "", Some(&mut child));
            psql = Some(child);
            blocked
        })
        .unwrap();
    assert!(deleted, "psql never waited for the deletion's lock");
    let run = finish_psql(psql.unwrap());

    let after = snapshot(&mut fx.db.client());
    let mut expected = before.states.clone();
    expected.remove(&victim);
    check::assert_same_states(&expected, &after.states, "file behind a deletion");
    let reported: BTreeSet<i64> = skipped(&run).keys().copied().collect();
    assert_eq!(reported, users, "{}", run.describe());
}

#[test]
fn a_file_holding_the_new_base_calls_off_synapses_deletion() {
    let Pending {
        fx,
        before,
        file,
        rewritten,
        ..
    } = file_for("sqlracebump", 19, false);
    let (victim, users) = leaf_base(&before.structure, &rewritten);
    let user = *users.first().unwrap();
    let (mut synapse, collection) = deletion_of(&fx, victim);

    // The test holds the first group built on the victim, so psql stops
    // there, with the victim locked FOR KEY SHARE.
    let mut holder = fx.db.client();
    let mut hold = holder.transaction().unwrap();
    hold.execute(
        "SELECT 1 FROM state_groups WHERE id = $1 FOR UPDATE",
        &[&user],
    )
    .unwrap();
    let name = "sqlfile_before_deletion";
    let mut watcher = fx.db.client();
    let mut psql = start_psql(&fx.db, &file, name);
    assert!(
        wait_for_lock_wait(&mut watcher, name, "", Some(&mut psql)),
        "psql never waited for group {user}"
    );
    // Synapse's deletion of the victim now waits for psql, which bumps the
    // victim's pending deletion once it goes on.
    let deletion = std::thread::spawn(move || {
        synapse.delete_collection(&collection).unwrap();
        synapse
    });
    assert!(wait_for_lock_wait(
        &mut watcher,
        "",
        "SELECT id FROM state_groups WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        None,
    ));
    hold.commit().unwrap();
    let run = finish_psql(psql);
    let synapse = deletion.join().unwrap();

    assert!(skipped(&run).is_empty(), "{}", run.describe());
    assert_eq!(synapse.stats.deleted, 0, "{:?}", synapse.stats);
    assert_eq!(
        synapse.stats.deletions_called_off_bumped, 1,
        "{:?}",
        synapse.stats
    );
    let after = snapshot(&mut fx.db.client());
    check::assert_same_states(&before.states, &after.states, "file before a deletion");
    assert_eq!(after.structure[&user].prev(), Some(victim));
}
