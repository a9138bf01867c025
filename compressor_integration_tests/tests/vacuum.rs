//! `--vacuum`: after a run that deleted rows, `state_groups_state`'s dead
//! rows (`pg_stat_user_tables.n_dead_tup`) are gone when the run vacuumed
//! and still there when it did not; a user who may not VACUUM the table is
//! refused before any work.

use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::{Role, TestDb};
use compressor_integration_tests::tools::{self, assert_user_error};
use postgres::Client;
use serde_json::Value;

const AUTO: &str = "synapse_auto_compressor";
const MANUAL: &str = "synapse_compress_state";

fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 3,
        groups_per_room: 300,
        members: 40,
        max_delta_hops: 8,
        nasty_strings: true,
        ..GenConfig::default()
    }
}

/// A generated database whose state table autovacuum leaves alone, so only
/// the tools' VACUUM removes dead rows.
fn database(hint: &str, seed: u64) -> (TestDb, Generated) {
    let (db, generated) = check::generated_db(hint, &config(seed));
    db.client()
        .batch_execute("ALTER TABLE state_groups_state SET (autovacuum_enabled = false)")
        .unwrap();
    (db, generated)
}

/// The table's dead rows as the statistics show them once every other
/// session of the database has ended (a session hands over its counts when
/// it ends), read in a fresh snapshot.
fn dead_rows(db: &TestDb) -> i64 {
    let mut client: Client = db.client();
    let mut waited = 0;
    loop {
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND backend_type = 'client backend'",
                &[],
            )
            .unwrap()
            .get(0);
        if others == 0 {
            break;
        }
        waited += 1;
        assert!(waited < 1000, "the tools' sessions did not end");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .unwrap();
    client
        .query_one(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'state_groups_state'",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn auto_vacuum_leaves_no_dead_rows() {
    let (db, _) = database("vacuum_auto", 41);
    let states = snapshot(&mut db.client()).states;

    // Without --vacuum the deleted rows stay dead (autovacuum is off here).
    let first = tools::json_summary(&tools::run_bin(
        AUTO,
        &["-p", db.url(), "-c", "100", "-n", "4", "--json"],
    ));
    let deleted = first["rows_deleted"].as_i64().unwrap();
    assert!(deleted > 0, "{first}");
    assert_eq!(first["vacuum_seconds"], Value::Null, "{first}");
    assert!(dead_rows(&db) >= deleted, "{first}");

    // With it, the rest of the database is compressed and vacuumed.
    let run = tools::run_bin(
        AUTO,
        &[
            "-p",
            db.url(),
            "-c",
            "100",
            "-n",
            "1000",
            "--json",
            "--vacuum",
        ],
    );
    let second = tools::json_summary(&run);
    assert!(second["rows_deleted"].as_i64().unwrap() > 0, "{second}");
    assert!(
        second["vacuum_seconds"].as_f64().unwrap() >= 0.0,
        "{second}"
    );
    assert!(second["table_bytes"].as_i64().unwrap() > 0, "{second}");
    let dead = dead_rows(&db);
    assert!(dead <= 5, "{dead} dead rows after --vacuum: {second}");
    assert!(run.stderr.contains("VACUUM FULL"), "{}", run.describe());
    assert_same_states(&states, &snapshot(&mut db.client()).states, "--vacuum");
}

#[test]
fn manual_vacuum_leaves_no_dead_rows() {
    let (db, generated) = database("vacuum_manual", 5);
    let room = &generated.rooms[1].room_id;
    let run = tools::run_bin(
        MANUAL,
        &["-p", db.url(), "-r", room, "-l", "10,5", "-c", "--vacuum"],
    );
    tools::assert_success(&run);
    assert!(
        run.stdout
            .contains("VACUUM (ANALYZE) state_groups_state took"),
        "{}",
        run.describe()
    );
    let dead = dead_rows(&db);
    assert!(
        dead <= 5,
        "{dead} dead rows after --vacuum\n{}",
        run.describe()
    );

    // --vacuum only means something with -c.
    let run = tools::run_bin(MANUAL, &["-p", db.url(), "-r", room, "--vacuum"]);
    assert!(!run.success(), "{}", run.describe());
}

#[test]
fn a_user_who_may_not_vacuum_is_refused_before_any_work() {
    let (db, generated) = database("vacuum_refused", 42);
    let role = Role::create(&db, "novac");
    db.client()
        .batch_execute(&format!(
            "GRANT SELECT, UPDATE ON state_groups TO {r}; \
             GRANT SELECT, INSERT, DELETE ON state_groups_state, state_group_edges TO {r}; \
             GRANT SELECT, UPDATE ON state_groups_pending_deletion TO {r}; \
             GRANT CREATE ON SCHEMA public TO {r};",
            r = role.ident()
        ))
        .unwrap();
    let before = snapshot(&mut db.client());
    let url = role.url();

    let run = tools::run_bin(AUTO, &["-p", &url, "-c", "100", "-n", "5", "--vacuum"]);
    assert_user_error(&run);
    let line = run.error_lines().join("\n");
    assert!(
        line.contains("--vacuum") && line.contains("state_groups_state"),
        "{}",
        run.describe()
    );
    let room = &generated.rooms[0].room_id;
    let manual = tools::run_bin(MANUAL, &["-p", &url, "-r", room, "-c", "--vacuum"]);
    assert_user_error(&manual);
    assert!(
        manual.error_lines().join("\n").contains("--vacuum"),
        "{}",
        manual.describe()
    );
    // Nothing was written, not even the progress tables.
    let after = snapshot(&mut db.client());
    assert_eq!(before.structure, after.structure);
    assert_eq!(before.tables, after.tables);

    // The same user without --vacuum compresses (the VACUUM is the only
    // thing it may not do).
    let run = tools::run_bin(AUTO, &["-p", &url, "-c", "100", "-n", "5"]);
    tools::assert_success(&run);
}
