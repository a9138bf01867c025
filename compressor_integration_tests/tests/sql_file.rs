//! The SQL file (`-o`) as admins use it: applied with `psql -v
//! ON_ERROR_STOP=1` long after it was made, beside a Synapse that deletes and
//! de-deltas groups meanwhile, applied twice, piped straight into psql
//! (`-o -`), with and without Synapse's pending-deletion table.
//!
//! Each group's block must check at apply time that the group still has the
//! edge and rows it was computed from and that its new base exists, and skip
//! the group whole (with a NOTICE naming it) otherwise. Every test proves
//! with Synapse's query that every remaining group keeps its state, and with
//! the tree's invariants that no edge points at a missing group.
//! `sql_file_races.rs` pins the file against Synapse's deletion with row
//! locks, each side waiting for the other in turn.
//!
//! Which groups a file rewrites, and onto which new bases, is learnt from a
//! twin database (same generator seed) compressed with `-c`, not from the
//! file's text.

mod sql_file_support;

use std::collections::BTreeSet;
use std::fs::File;
use std::process::{Command, Stdio};

use compressor_integration_tests::check::{
    self, compress_ok, run_compressor, snapshot, COMPRESSOR,
};
use compressor_integration_tests::generator::{group, write_groups, GenGroup};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::synapse_imitation::{expectations_of, Imitator, ImitatorConfig};
use compressor_integration_tests::tools::{self, TempPath};
use postgres::Client;
use sql_file_support::*;

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
