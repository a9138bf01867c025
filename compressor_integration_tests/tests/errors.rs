//! User errors: each must end with a non-zero exit code, exactly one stderr
//! line starting with `error: `, no panic, and the database unchanged.

use compressor_integration_tests::check::{self, run_compressor, snapshot};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::tools::{assert_user_error, TempPath, ToolRun};

/// A small generated database and one of its room ids.
fn small_db(hint: &str) -> (TestDb, String) {
    compressor_integration_tests::check::small_db(hint, 120)
}

/// Runs the compressor against `db` with `args` (after `-p URL`) and asserts
/// a clean user error that left the database as it was.
fn assert_rejected(db: &TestDb, args: &[&str]) -> ToolRun {
    let mut client = db.client();
    let before = snapshot(&mut client);
    let run = run_compressor(db.url(), args);
    assert_user_error(&run);
    let after = snapshot(&mut client);
    assert!(before == after, "the database changed\n{}", run.describe());
    run
}

#[test]
fn unparsable_url() {
    let (db, room) = small_db("badurl");
    let before = snapshot(&mut db.client());
    for url in [
        "postgresql://postgres@127.0.0.1:notaport/db",
        "this is not a url",
        "postgresql://[::1/db",
    ] {
        let run = check::run_compressor(url, &["-r", &room, "-c"]);
        assert_user_error(&run);
    }
    assert!(before == snapshot(&mut db.client()));
}

#[test]
fn unreachable_server() {
    let url = compressor_integration_tests::pg::refused_url();
    let run = run_compressor(&url, &["-r", "!room:example.org", "-c"]);
    assert_user_error(&run);
}

#[test]
fn unknown_room() {
    let (db, _) = small_db("noroom");
    assert_rejected(&db, &["-r", "!nosuchroom:example.org", "-c"]);
    assert_rejected(&db, &["-r", "", "-c"]);
}

#[test]
fn bad_level_lists() {
    let (db, room) = small_db("badlevels");
    for levels in ["", "0", "10,0", "a,b", "-5", "100,,25", "1.5"] {
        let run = assert_rejected(&db, &["-r", &room, "-l", levels, "-c"]);
        eprintln!("levels {levels:?}: {}", run.error_lines()[0]);
    }
}

#[test]
fn missing_tables() {
    // A database without Synapse's tables; it must stay without any table.
    let db = TestDb::create_empty("notables");
    let sql = TempPath::new("notables", "sql");
    for args in [
        vec!["-r", "!room:example.org", "-c"],
        vec!["-r", "!room:example.org", "-o", sql.as_str()],
    ] {
        let run = run_compressor(db.url(), &args);
        assert_user_error(&run);
        eprintln!("{}", run.error_lines()[0]);
        assert!(
            check::tables(&mut db.client()).is_empty(),
            "tables appeared\n{}",
            run.describe()
        );
    }
}

#[test]
fn output_file_in_missing_directory() {
    let (db, room) = small_db("badout");
    let dir = std::env::temp_dir()
        .join(format!("sct-missing-dir-{}", std::process::id()))
        .join("nested");
    let file = dir.join("out.sql");
    let file = file.to_str().unwrap();
    assert_rejected(&db, &["-r", &room, "-l", "3,3", "-o", file]);
    assert!(!dir.exists());
}

#[test]
fn zero_groups_to_compress() {
    let (db, room) = small_db("zerogroups");
    assert_rejected(&db, &["-r", &room, "-n", "0", "-c"]);
    let first = db
        .client()
        .query_one(
            "SELECT min(id) FROM state_groups WHERE room_id = $1",
            &[&room],
        )
        .unwrap()
        .get::<_, i64>(0)
        .to_string();
    assert_rejected(&db, &["-r", &room, "-b", &first, "-n", "0", "-c"]);
}
