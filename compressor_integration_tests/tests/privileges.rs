//! The `GRANT` blocks of docs/privileges.md, read from the page itself,
//! against a real PostgreSQL: a role holding exactly one block's privileges
//! runs both tools to completion with every group's state unchanged
//! (Synapse's query), and a role missing any one of them is refused before
//! any work, by one `error:` line naming that privilege, with nothing
//! changed (groups, edges, rows, progress tables).

use compressor_integration_tests::check::{
    self, assert_same_states, run_compressor, snapshot, snapshot_in_memory, DbSnapshot,
};
use compressor_integration_tests::generator::{GenConfig, Generated};
use compressor_integration_tests::pg::{Role, TestDb};
use compressor_integration_tests::tools::{self, assert_user_error, TempPath, ToolRun};

const AUTO: &str = "synapse_auto_compressor";
/// The role name the documented blocks grant to.
const DOC_ROLE: &str = "synapse_compressor";
const PROGRESS_TABLES: [&str; 3] = [
    "state_compressor_state",
    "state_compressor_progress",
    "state_compressor_total_progress",
];

/// One privilege a block grants: `("UPDATE", "state_groups")` or
/// `("CREATE", "schema public")`, as the tools' messages name them.
type Privilege = (String, String);

/// Every (privilege, object) pair of the block's GRANT statements.
fn granted(block: &str) -> Vec<Privilege> {
    let mut pairs = Vec::new();
    for statement in block.split(';').map(str::trim) {
        let Some(rest) = statement.strip_prefix("GRANT ") else {
            continue;
        };
        let (privileges, rest) = rest.split_once(" ON ").expect("GRANT ... ON");
        let (objects, _) = rest.split_once(" TO ").expect("GRANT ... TO");
        let (kind, objects) = match objects.strip_prefix("SCHEMA ") {
            Some(schemas) => ("schema ", schemas),
            None => ("", objects),
        };
        for object in objects.split(',').map(str::trim) {
            for privilege in privileges.split(',').map(str::trim) {
                pairs.push((privilege.to_string(), format!("{kind}{object}")));
            }
        }
    }
    assert!(!pairs.is_empty(), "no GRANT in block:\n{block}");
    pairs
}

/// Applies a documented block as the owner, granting to `role`.
fn apply_block(db: &TestDb, block: &str, role: &Role) {
    db.client()
        .batch_execute(&block.replace(DOC_ROLE, &role.ident()))
        .unwrap_or_else(|e| panic!("applying the documented block as the owner: {e}\n{block}"));
}

fn set_grant(db: &TestDb, (privilege, object): &Privilege, role: &Role, grant: bool) {
    let sql = if grant {
        format!("GRANT {privilege} ON {object} TO {}", role.ident())
    } else {
        format!("REVOKE {privilege} ON {object} FROM {}", role.ident())
    };
    db.client()
        .batch_execute(&sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A generated database (see [`generated_db`]) where nobody but the owner
/// may create tables, and a role holding the documented block `name`'s grants.
fn setup(hint: &str, seed: u64, name: &str) -> (TestDb, Generated, Role, String) {
    let (db, generated) = generated_db(hint, seed);
    let role = Role::create(&db, "comp");
    db.client()
        .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .unwrap();
    let block = check::grants_block(name);
    apply_block(&db, &block, &role);
    (db, generated, role, block)
}

/// A generated database whose groups are all queued for deletion (as if
/// Synapse's cleanup had found them unreferenced), so that every new base
/// has a pending deletion to bump.
fn generated_db(hint: &str, seed: u64) -> (TestDb, Generated) {
    let (db, generated) = check::generated_db(hint, &GenConfig::compressible(seed, 3, 150));
    db.client()
        .batch_execute(
            "INSERT INTO state_groups_pending_deletion (state_group, insertion_ts)
             SELECT id, 0 FROM state_groups",
        )
        .expect("queueing groups for deletion");
    (db, generated)
}

fn auto(url: &str, chunks: &str) -> ToolRun {
    tools::run_bin(AUTO, &["-p", url, "-c", "40", "-n", chunks])
}

/// The progress tables' rows (as text), or `None` for a missing table.
fn progress_tables(db: &TestDb) -> Vec<Option<Vec<String>>> {
    let mut client = db.client();
    PROGRESS_TABLES
        .iter()
        .map(|table| {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
                .unwrap()
                .get(0);
            exists.then(|| {
                client
                    .query(&format!("SELECT t::text FROM {table} AS t ORDER BY 1"), &[])
                    .unwrap()
                    .iter()
                    .map(|row| row.get(0))
                    .collect()
            })
        })
        .collect()
}

/// Everything a refused run must leave alone.
fn observable(db: &TestDb) -> (DbSnapshot, Vec<Option<Vec<String>>>) {
    (snapshot_in_memory(&mut db.client()), progress_tables(db))
}

/// Asserts a refusal: one `error:` line naming `missing` and no other
/// privilege of `all`, a non-zero exit, and `db` as it was.
fn assert_refused(
    run: &ToolRun,
    missing: &[&Privilege],
    all: &[Privilege],
    db: &TestDb,
    before: &(DbSnapshot, Vec<Option<Vec<String>>>),
) {
    assert_user_error(run);
    let line = run.error_lines()[0];
    assert!(
        line.starts_with("error: permission denied: missing privileges: "),
        "{}",
        run.describe()
    );
    for pair @ (privilege, object) in all {
        let named = line.contains(&format!("{privilege} on {object} ("));
        assert_eq!(
            named,
            missing.contains(&pair),
            "{privilege} on {object}: named = {named}\n{}",
            run.describe()
        );
    }
    assert!(
        &observable(db) == before,
        "the database changed\n{}",
        run.describe()
    );
}

/// The pairs on Synapse's own tables (what the manual tool's `-c` uses).
fn on_synapse_tables(pair: &Privilege) -> bool {
    !pair.1.starts_with("schema ") && !pair.1.starts_with("state_compressor_")
}

/// Revokes each privilege of `pairs` in turn: each tool that uses it must
/// refuse to start, naming it alone. Then, with every grant back, runs the
/// manual tool (`-c`, one room) and the automatic tool to completion as
/// the role, and checks every group's state.
fn exercise(db: &TestDb, generated: &Generated, role: &Role, pairs: &[Privilege]) {
    let url = role.url();
    let room = generated.rooms[1].room_id.as_str();
    let before = observable(db);
    for pair in pairs {
        set_grant(db, pair, role, false);
        let run = auto(&url, "5");
        assert_refused(&run, &[pair], pairs, db, &before);
        eprintln!(
            "auto without {} on {}: {}",
            pair.0,
            pair.1,
            run.error_lines()[0]
        );
        if on_synapse_tables(pair) {
            let run = run_compressor(&url, &["-r", room, "-c"]);
            assert_refused(&run, &[pair], pairs, db, &before);
        }
        set_grant(db, pair, role, true);
    }

    let states = snapshot(&mut db.client()).states;
    let run = run_compressor(&url, &["-r", room, "-c"]);
    tools::assert_success(&run);
    let after_manual = snapshot(&mut db.client());
    assert_same_states(&states, &after_manual.states, "manual -c as the role");
    assert!(
        after_manual.structure != before.0.structure,
        "the manual run changed nothing"
    );
    let run = auto(&url, "1000");
    tools::assert_finished_all(&run);
    let after = snapshot(&mut db.client());
    assert_same_states(&states, &after.states, "the automatic tool as the role");
    assert!(
        after.structure != after_manual.structure,
        "the automatic run changed nothing"
    );
    let progress = progress_tables(db);
    assert!(
        progress[1]
            .as_ref()
            .is_some_and(|rows| rows.len() == generated.rooms.len()),
        "every room's progress should be saved: {progress:?}"
    );
    let bumped: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM state_groups_pending_deletion WHERE insertion_ts <> 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(bumped > 0, "no new base's pending deletion was bumped");
}

#[test]
fn the_documented_grants_when_the_tool_creates_its_tables() {
    let (db, generated, role, block) = setup("privs_auto_creates", 3, "auto-creates-tables");
    let pairs = granted(&block);
    assert!(pairs.contains(&("CREATE".into(), "schema public".into())));
    exercise(&db, &generated, &role, &pairs);
    // The role made the tables, so it owns them.
    let owners: Vec<String> = db
        .client()
        .query(
            "SELECT DISTINCT tableowner::text FROM pg_tables WHERE tablename LIKE 'state_compressor%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(owners, [role.ident().trim_matches('"').to_string()]);
}

#[test]
fn the_documented_grants_when_the_owner_creates_the_tables() {
    let (db, generated, role, block) = setup("privs_owner_creates", 4, "owner-creates-tables");
    let pairs = granted(&block);
    for table in PROGRESS_TABLES {
        assert!(pairs.iter().any(|(_, object)| object == table), "{table}");
    }
    exercise(&db, &generated, &role, &pairs);
}

/// The documented DDL is exactly what the tool creates: same columns,
/// constraints and indexes.
#[test]
fn the_documented_tables_are_the_tools_tables() {
    let describe = |db: &TestDb| -> Vec<String> {
        db.client()
            .query(
                "SELECT format('%s.%s %s %s %s', c.table_name, c.column_name, c.data_type,
                               c.is_nullable, c.column_default)
                 FROM information_schema.columns AS c
                 WHERE c.table_name LIKE 'state_compressor%'
                 UNION ALL
                 SELECT format('%s %s', conrelid::regclass, pg_get_constraintdef(oid))
                 FROM pg_constraint WHERE conrelid::regclass::text LIKE 'state_compressor%'
                 UNION ALL
                 SELECT indexdef FROM pg_indexes WHERE tablename LIKE 'state_compressor%'
                 ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let by_tool = TestDb::create("privs_ddl_tool");
    tools::assert_success(&auto(by_tool.url(), "1"));
    let by_docs = TestDb::create("privs_ddl_docs");
    let block = check::grants_block("owner-creates-tables");
    by_docs
        .client()
        .batch_execute(&block[..block.find("GRANT").unwrap()])
        .unwrap();
    let tool = describe(&by_tool);
    assert!(tool.len() > 10, "{tool:?}");
    assert_eq!(tool, describe(&by_docs));
    assert_eq!(progress_tables(&by_tool), progress_tables(&by_docs));
}

#[test]
fn the_documented_grants_for_reading_only() {
    let (db, generated, role, block) = setup("privs_read_only", 5, "manual-read-only");
    let pairs = granted(&block);
    let url = role.url();
    let room = generated.rooms[0].room_id.as_str();
    let before = observable(&db);

    let out = TempPath::new("privs_read_only", "sql");
    tools::assert_success(&run_compressor(&url, &["-r", room]));
    tools::assert_success(&run_compressor(&url, &["-r", room, "-o", out.as_str()]));
    assert!(out.path().exists());
    assert!(
        observable(&db) == before,
        "a read-only run changed the database"
    );

    for pair in &pairs {
        set_grant(&db, pair, &role, false);
        for args in [&["-r", room][..], &["-r", room, "-o", out.as_str()]] {
            let run = run_compressor(&url, args);
            assert_refused(&run, &[pair], &pairs, &db, &before);
        }
        set_grant(&db, pair, &role, true);
    }

    // Writing needs everything in the first block but CREATE, all named at once.
    let write = granted(&check::grants_block("auto-creates-tables"));
    let lacking: Vec<&Privilege> = write
        .iter()
        .filter(|pair| on_synapse_tables(pair) && !pairs.contains(pair))
        .collect();
    assert!(lacking.len() >= 6, "{lacking:?}");
    let run = run_compressor(&url, &["-r", room, "-c"]);
    assert_refused(&run, &lacking, &write, &db, &before);
    // The automatic tool also needs to create its tables.
    let mut auto_lacking = lacking.clone();
    let create = ("CREATE".to_string(), "schema public".to_string());
    auto_lacking.push(&create);
    let run = auto(&url, "5");
    assert_refused(&run, &auto_lacking, &write, &db, &before);
}

/// A scan-position table without its row needs INSERT once, to add it.
#[test]
fn a_missing_scan_position_row_needs_insert() {
    let (db, _, role, block) = setup("privs_no_total_row", 6, "owner-creates-tables");
    db.client()
        .batch_execute("DELETE FROM state_compressor_total_progress")
        .unwrap();
    let before = observable(&db);
    let mut pairs = granted(&block);
    let insert = (
        "INSERT".to_string(),
        "state_compressor_total_progress".to_string(),
    );
    pairs.push(insert.clone());
    let run = auto(&role.url(), "5");
    assert_refused(&run, &[&insert], &pairs, &db, &before);
    assert!(
        run.error_lines()[0].contains("missing row"),
        "{}",
        run.describe()
    );

    set_grant(&db, &insert, &role, true);
    tools::assert_success(&auto(&role.url(), "1"));
    assert_eq!(progress_tables(&db)[2].as_ref().map(Vec::len), Some(1));
}

/// A read-only session is refused before any privilege matters.
#[test]
fn a_read_only_session_is_refused() {
    let (db, generated, role, _) = setup("privs_read_only_session", 7, "owner-creates-tables");
    db.client()
        .batch_execute(&format!(
            "ALTER ROLE {} SET default_transaction_read_only = on",
            role.ident()
        ))
        .unwrap();
    let before = observable(&db);
    let room = generated.rooms[0].room_id.as_str();
    for run in [
        run_compressor(&role.url(), &["-r", room, "-c"]),
        auto(&role.url(), "5"),
    ] {
        assert_user_error(&run);
        assert!(
            run.error_lines()[0].contains("the database session is read-only"),
            "{}",
            run.describe()
        );
        assert!(
            observable(&db) == before,
            "the database changed\n{}",
            run.describe()
        );
    }
    // Reading is still fine.
    tools::assert_success(&run_compressor(&role.url(), &["-r", room]));
}
