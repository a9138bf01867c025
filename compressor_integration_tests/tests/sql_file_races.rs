//! The SQL file applied while Synapse's deletion runs, the interleavings
//! pinned with row locks: the test waits (bounded polling of
//! `pg_stat_activity`, no clock) until one side waits for the other's lock.
//! Each side must leave every group with its state: a deletion holding a
//! new base makes the file skip its users, and a file holding a new base
//! calls Synapse's deletion off.

mod sql_file_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::process::{Child, Command, Stdio};

use compressor_integration_tests::check::{self, snapshot};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::synapse_imitation::{expectations_of, Imitator, ImitatorConfig};
use compressor_integration_tests::tools::{self, TempPath, ToolRun};
use postgres::Client;
use sql_file_support::*;

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
