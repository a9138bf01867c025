//! Bad input not covered by `errors.rs` and `auto.rs`: each case checks the
//! exit code, the one `error: ` line and its text, and that the database is
//! exactly as it was (tables, groups, edges, rows, and so states; the stored
//! tree is compared, which is cheaper than reading every state).

use compressor_integration_tests::check::{self, run_compressor, snapshot_in_memory, DbSnapshot};
use compressor_integration_tests::pg::{self, Role, TestDb};
use compressor_integration_tests::tools::{self, assert_user_error, ToolRun};

const AUTO: &str = "synapse_auto_compressor";

/// A small generated database (2 rooms of 80 groups that compress well)
/// and its first room.
fn small_db(hint: &str) -> (TestDb, String) {
    compressor_integration_tests::check::small_db(hint, 80)
}

fn auto(url: &str, args: &[&str]) -> ToolRun {
    let mut all = vec!["-p", url];
    all.extend_from_slice(args);
    tools::run_bin(AUTO, &all)
}

/// Asserts a user error with exit `code` whose one `error:` line contains
/// every piece of `expected`; returns that line.
fn assert_error(run: &ToolRun, code: i32, expected: &[&str]) -> String {
    assert_user_error(run);
    assert_eq!(run.status.code(), Some(code), "{}", run.describe());
    let line = run.error_lines()[0].to_string();
    for piece in expected {
        assert!(
            line.contains(piece),
            "expected {piece:?} in the error line {line:?}\n{}",
            run.describe()
        );
    }
    line
}

fn assert_unchanged(before: &DbSnapshot, db: &TestDb, run: &ToolRun) {
    let after = snapshot_in_memory(&mut db.client());
    assert!(before == &after, "the database changed\n{}", run.describe());
}

// ---------------------------------------------------------------------------
// Numbers

#[test]
fn negative_numbers_for_the_manual_tool() {
    let (db, room) = small_db("neg_manual");
    let before = snapshot_in_memory(&mut db.client());
    for (short, long) in [
        ("-b", "--min-state-group"),
        ("-s", "--max-state-group"),
        ("-n", "--groups-to-compress"),
        ("-m", "--min-saved-rows"),
    ] {
        // `-b -1`: clap sees "-1" as an unknown flag; the line names it.
        let run = run_compressor(db.url(), &["-r", &room, short, "-1", "-c"]);
        let line = assert_error(&run, 2, &["'-1'"]);
        eprintln!("{short} -1: {line}");
        assert_unchanged(&before, &db, &run);
        // `--option=-1`: the value reaches the range check, which names the option.
        let arg = format!("{long}=-1");
        let run = run_compressor(db.url(), &["-r", &room, &arg, "-c"]);
        let line = assert_error(&run, 2, &["-1", long]);
        eprintln!("{arg}: {line}");
        assert_unchanged(&before, &db, &run);
    }
}

#[test]
fn negative_numbers_for_the_automatic_tool() {
    let (db, _) = small_db("neg_auto");
    let before = snapshot_in_memory(&mut db.client());
    for args in [
        ["-c", "-5", "-n", "1"],
        ["-c", "10", "-n", "-1"],
        ["--chunk-size=-5", "-n", "1", "--no-progress"],
        ["-c", "10", "--chunks-to-compress=-1", "--no-progress"],
    ] {
        let run = auto(db.url(), &args);
        let line = assert_error(&run, 2, &["-"]);
        assert!(line.contains("-5") || line.contains("-1"), "{line}");
        eprintln!("{args:?}: {line}");
        assert_unchanged(&before, &db, &run);
    }
    // Nothing was created either.
    assert!(!check::tables(&mut db.client()).contains(&"state_compressor_state".to_string()));
}

// ---------------------------------------------------------------------------
// Ranges and rooms

/// (first, last) group id of `room`.
fn room_bounds(db: &TestDb, room: &str) -> (i64, i64) {
    let row = db
        .client()
        .query_one(
            "SELECT min(id), max(id) FROM state_groups WHERE room_id = $1",
            &[&room],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn ranges_that_hold_no_group_of_the_room() {
    let (db, room) = small_db("empty_ranges");
    let before = snapshot_in_memory(&mut db.client());
    let (first, last) = room_bounds(&db, &room);
    let (last_s, before_first, first_s) =
        (last.to_string(), (first - 1).to_string(), first.to_string());
    let beyond = (last + 1_000_000).to_string();
    for args in [
        // -b at or above the room's last group.
        vec!["-b", last_s.as_str()],
        vec!["-b", beyond.as_str()],
        // -s below the room's first group.
        vec!["-s", before_first.as_str()],
        // -b not below -s.
        vec!["-b", first_s.as_str(), "-s", first_s.as_str()],
    ] {
        let mut all = vec!["-r", room.as_str()];
        all.extend(&args);
        all.push("-c");
        let run = run_compressor(db.url(), &all);
        let line = assert_error(
            &run,
            1,
            &["has no state groups in the requested range", &room],
        );
        eprintln!("{args:?}: {line}");
        assert_unchanged(&before, &db, &run);
    }
}

#[test]
fn a_purged_room_has_no_groups() {
    let (db, room) = small_db("purged_room");
    // Synapse's purge_room_state: edges, rows, groups.
    db.client()
        .batch_execute(&format!(
            "DELETE FROM state_group_edges WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = '{room}');
             DELETE FROM state_groups_state WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = '{room}');
             DELETE FROM state_groups WHERE room_id = '{room}';"
        ))
        .unwrap();
    let before = snapshot_in_memory(&mut db.client());
    for output in [None, Some(tools::TempPath::new("purged", "sql"))] {
        let mut args = vec!["-r", room.as_str(), "-c"];
        if let Some(file) = &output {
            args.extend(["-o", file.as_str()]);
        }
        let run = run_compressor(db.url(), &args);
        let line = assert_error(&run, 1, &["has no state groups in this database", &room]);
        eprintln!("{line}");
        assert_unchanged(&before, &db, &run);
    }
}

#[test]
fn a_room_id_with_a_newline_still_makes_one_error_line() {
    let (db, _) = small_db("newline_room");
    let before = snapshot_in_memory(&mut db.client());
    let run = run_compressor(db.url(), &["-r", "!no\nsuch\troom:example.org", "-c"]);
    let line = assert_error(&run, 1, &["has no state groups in this database"]);
    assert!(line.contains(r"!no\nsuch\troom:example.org"), "{line}");
    assert_unchanged(&before, &db, &run);
}

// ---------------------------------------------------------------------------
// Permissions

#[test]
fn a_read_only_user_changes_nothing() {
    let (db, room) = small_db("read_only");
    let role = Role::create(&db, "ro");
    db.client()
        .batch_execute(&format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {0};
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
            role.ident()
        ))
        .unwrap();
    let url = role.url();
    let before = snapshot_in_memory(&mut db.client());

    // A dry run only reads: allowed.
    let run = run_compressor(&url, &["-r", &room]);
    tools::assert_success(&run);
    assert_unchanged(&before, &db, &run);

    // Committing is refused before anything is written.
    let run = run_compressor(&url, &["-r", &room, "-c"]);
    let line = assert_error(
        &run,
        1,
        &["missing privileges", "INSERT on state_groups_state ("],
    );
    eprintln!("manual -c: {line}");
    assert_unchanged(&before, &db, &run);

    // The automatic tool can neither write groups nor create its tables.
    let run = auto(&url, &["-c", "50", "-n", "5"]);
    let line = assert_error(
        &run,
        1,
        &["missing privileges", "CREATE on schema public ("],
    );
    eprintln!("auto: {line}");
    assert_unchanged(&before, &db, &run);

    // Nor when its tables exist (made by the owner) and it may only read them.
    auto(db.url(), &["-c", "50", "-n", "1"]);
    db.client()
        .batch_execute(&format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {};",
            role.ident()
        ))
        .unwrap();
    let before = snapshot_in_memory(&mut db.client());
    let progress = progress(&db);
    let run = auto(&url, &["-c", "50", "-n", "5"]);
    let line = assert_error(
        &run,
        1,
        &[
            "missing privileges",
            "UPDATE on state_compressor_progress (",
        ],
    );
    eprintln!("auto, tables made by the owner: {line}");
    assert_unchanged(&before, &db, &run);
    assert_eq!(progress, self::progress(&db), "progress changed");
}

#[test]
fn a_user_who_may_write_groups_but_not_create_tables() {
    let (db, _) = small_db("no_create");
    let role = Role::create(&db, "nc");
    db.client()
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA public TO {0};
             GRANT UPDATE ON state_groups_pending_deletion TO {0};
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
            role.ident()
        ))
        .unwrap();
    let before = snapshot_in_memory(&mut db.client());
    let run = auto(&role.url(), &["-c", "50", "-n", "5"]);
    let line = assert_error(
        &run,
        1,
        &["UPDATE on state_groups (", "CREATE on schema public ("],
    );
    eprintln!("{line}");
    assert_unchanged(&before, &db, &run);
}

fn progress(db: &TestDb) -> Vec<(String, i64)> {
    db.client()
        .query(
            "SELECT room_id, last_compressed FROM state_compressor_progress ORDER BY room_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

// ---------------------------------------------------------------------------
// Schema

#[test]
fn one_missing_table() {
    for table in ["state_group_edges", "state_groups_state", "state_groups"] {
        let (db, room) = small_db(&format!("missing_{table}"));
        db.client()
            .batch_execute(&format!("DROP TABLE {table}"))
            .unwrap();
        let tables = check::tables(&mut db.client());
        let run = run_compressor(db.url(), &["-r", &room, "-c"]);
        let line = assert_error(&run, 1, &[table, "does not exist"]);
        eprintln!("manual: {line}");
        let run = auto(db.url(), &["-c", "50", "-n", "5"]);
        let line = assert_error(&run, 1, &[table, "does not exist"]);
        eprintln!("auto: {line}");
        assert_eq!(
            tables,
            check::tables(&mut db.client()),
            "tables were created or dropped"
        );
    }
}

#[test]
fn output_file_that_cannot_be_written() {
    let (db, room) = small_db("bad_output");
    let before = snapshot_in_memory(&mut db.client());
    let missing = std::env::temp_dir()
        .join(format!("sct-nowhere-{}", std::process::id()))
        .join("out.sql");
    let directory = std::env::temp_dir();
    for path in [missing.to_str().unwrap(), directory.to_str().unwrap()] {
        let run = run_compressor(db.url(), &["-r", &room, "-l", "3,3", "-o", path]);
        let line = assert_error(&run, 1, &["cannot write", path]);
        eprintln!("{line}");
        assert_unchanged(&before, &db, &run);
    }
    assert!(!missing.parent().unwrap().exists());
}

// ---------------------------------------------------------------------------
// Connection strings

/// `host=... port=... user=... dbname=...` for `db`, with `extra` appended.
fn key_values(db: &TestDb, extra: &str) -> String {
    let base = pg::base_url();
    let (_, rest) = base.split_once("://").unwrap();
    let (user, host_port) = rest.split_once('@').unwrap_or(("postgres", rest));
    let (user, password) = match user.split_once(':') {
        Some((u, p)) => (u, format!(" password={p}")),
        None => (user, String::new()),
    };
    let host_port = host_port.split(['/', '?']).next().unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    format!(
        "host={host} port={port} user={user}{password} dbname={} {extra}",
        db.name()
    )
}

#[test]
fn bad_sslmode_values() {
    let (db, room) = small_db("bad_sslmode");
    let before = snapshot_in_memory(&mut db.client());
    for url in [
        format!("{}?sslmode=sometimes", db.url()),
        format!("{}?sslmode=VERIFY-FULL", db.url()),
        key_values(&db, "sslmode=sometimes"),
        key_values(&db, "sslmode=''"),
    ] {
        let run = run_compressor(&url, &["-r", &room, "-c"]);
        let line = assert_error(&run, 1, &["invalid connection string", "unknown sslmode"]);
        eprintln!("{url}: {line}");
        let run = auto(&url, &["-c", "50", "-n", "5"]);
        assert_error(&run, 1, &["invalid connection string", "unknown sslmode"]);
        assert_unchanged(&before, &db, &run);
    }
}

#[test]
fn unknown_connection_string_keys() {
    let (db, room) = small_db("unknown_key");
    let before = snapshot_in_memory(&mut db.client());
    for url in [
        format!("{}?sslmod=require", db.url()),
        key_values(&db, "colour=blue"),
    ] {
        for run in [
            run_compressor(&url, &["-r", &room, "-c"]),
            auto(&url, &["-c", "50", "-n", "5"]),
        ] {
            let line = assert_error(&run, 1, &["invalid connection string", "unknown option"]);
            assert!(
                line.matches("invalid connection string").count() == 1,
                "the prefix repeats: {line}"
            );
            eprintln!("{url}: {line}");
            assert_unchanged(&before, &db, &run);
        }
    }
}

#[test]
fn unreadable_certificate_files() {
    let (db, room) = small_db("bad_cert_files");
    let before = snapshot_in_memory(&mut db.client());
    let nowhere = "/nonexistent/sct/root.crt";
    for (url, what) in [
        (
            format!("{}?sslmode=verify-full&sslrootcert={nowhere}", db.url()),
            "sslrootcert",
        ),
        (
            key_values(&db, &format!("sslmode=require sslcert={nowhere}")),
            "sslcert",
        ),
        (
            key_values(&db, &format!("sslmode=require sslkey={nowhere}")),
            "sslkey",
        ),
    ] {
        let run = run_compressor(&url, &["-r", &room, "-c"]);
        let line = assert_error(&run, 1, &["cannot read", what, nowhere, "No such file"]);
        eprintln!("{line}");
        assert_unchanged(&before, &db, &run);
    }
}
