//! Faults planted on purpose (the library's `failpoint` module, compiled
//! into the test binaries by `scripts/test.sh`), through both binaries:
//!
//! - a compressor that produces a wrong delta: verification refuses it and
//!   nothing is written;
//! - a process that dies in the middle of a write transaction, at each
//!   statement boundary that matters (after the deletes, before the new
//!   rows are copied, before the automatic tool saves its progress): every
//!   group keeps its state, nothing is half-written, and a new run ends
//!   exactly where an undisturbed one does.

use compressor_integration_tests::check::{self, assert_same_states, snapshot, DbSnapshot};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::tools::{self, ToolRun};
use synapse_compress_state::db::write::BATCH_ENV;

const MANUAL: &str = "synapse_compress_state";
const AUTO: &str = "synapse_auto_compressor";

fn db(hint: &str, seed: u64) -> (TestDb, String) {
    let (db, generated) = check::generated_db(hint, &GenConfig::compressible(seed, 3, 200));
    let room = generated.biggest_room().room_id.clone();
    (db, room)
}

/// Runs `tool` with `FAILPOINTS` set; `None` (after saying why) when the
/// binaries were built without fault injection, which fails under CI.
fn run_with_faults(tool: &str, args: &[&str], failpoints: &str) -> Option<ToolRun> {
    run_with_faults_and(tool, args, failpoints, None)
}

/// [`run_with_faults`], with one more variable in the tool's environment.
fn run_with_faults_and(
    tool: &str,
    args: &[&str],
    failpoints: &str,
    also: Option<(&str, &str)>,
) -> Option<ToolRun> {
    let env: Vec<(&str, &str)> = std::iter::once(("FAILPOINTS", failpoints))
        .chain(also)
        .collect();
    let run = tools::run_bin_with_env(tool, args, &env);
    if run.stderr.contains("fault injection is on") {
        Some(run)
    } else {
        tools::prerequisite_missing(
            "the binaries were built without the failpoints feature (scripts/test.sh builds them with it)",
        );
        None
    }
}

/// The progress tables' contents (empty when they do not exist).
fn progress(db: &TestDb) -> Vec<String> {
    let mut client = db.client();
    if client
        .query_one("SELECT to_regclass('state_compressor_state') IS NULL", &[])
        .unwrap()
        .get(0)
    {
        return Vec::new();
    }
    client
        .query(
            "SELECT format('%s %s %s %s %s', room_id, level_num, max_size, current_length, current_head) \
             FROM state_compressor_state UNION ALL \
             SELECT format('%s %s', room_id, last_compressed) FROM state_compressor_progress \
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn assert_refused_by_verification(run: &ToolRun) {
    tools::assert_user_error(run);
    assert!(
        run.error_lines()[0].contains("verification failed, nothing was written"),
        "{}",
        run.describe()
    );
}

#[test]
fn verification_refuses_a_wrong_delta_through_both_binaries() {
    let (db, room) = db("faults_wrong_delta", 61);
    let before = snapshot(&mut db.client());
    let fault = "compress::wrong-delta=return";

    let manual = ["-p", db.url(), "-r", room.as_str(), "-c"];
    let Some(run) = run_with_faults(MANUAL, &manual, fault) else {
        return;
    };
    assert_refused_by_verification(&run);
    assert_eq!(before, snapshot(&mut db.client()), "the manual tool wrote");

    let sql = tools::TempPath::new("wrong_delta", "sql");
    let to_file = ["-p", db.url(), "-r", room.as_str(), "-o", sql.as_str()];
    let run = run_with_faults(MANUAL, &to_file, fault).expect("checked above");
    assert_refused_by_verification(&run);
    let written = std::fs::read_to_string(sql.path()).unwrap_or_default();
    assert!(
        !written.contains("INSERT") && !written.contains("DELETE"),
        "a refused run wrote SQL:\n{written}"
    );

    let auto = ["-p", db.url(), "-c", "50", "-n", "100"];
    let run = run_with_faults(AUTO, &auto, fault).expect("checked above");
    assert_refused_by_verification(&run);
    let after = snapshot(&mut db.client());
    assert_eq!(
        before.structure, after.structure,
        "the automatic tool wrote"
    );
    assert!(
        progress(&db).is_empty(),
        "progress saved: {:?}",
        progress(&db)
    );

    // Without the fault the same runs work: the fault was what stopped them.
    tools::assert_success(&tools::run_bin(AUTO, &auto));
    assert_same_states(
        &before.states,
        &snapshot(&mut db.client()).states,
        "clean run",
    );
}

/// Asserts the run died at the planted abort, and that the database is
/// consistent: invariants (checked by `snapshot`) and every state.
fn assert_aborted_cleanly(run: &ToolRun, point: &str, db: &TestDb, original: &DbSnapshot) {
    assert!(
        run.status.code().is_none() && run.stderr.contains(&format!("failpoint {point}: aborting")),
        "expected an abort at {point}\n{}",
        run.describe()
    );
    let now = snapshot(&mut db.client());
    assert_same_states(
        &original.states,
        &now.states,
        &format!("after an abort at {point}"),
    );
}

#[test]
fn a_manual_write_stopped_mid_transaction_leaves_nothing_half_done() {
    for (i, point) in ["write::after-deletes", "write::before-copy"]
        .iter()
        .enumerate()
    {
        let seed = 70 + i as u64;
        let (stopped, room) = db("faults_manual_stop", seed);
        let (clean, _) = db("faults_manual_clean", seed);
        let original = snapshot(&mut stopped.client());
        let args = ["-p", stopped.url(), "-r", room.as_str(), "-c"];
        let Some(run) = run_with_faults(MANUAL, &args, &format!("{point}=return(abort)")) else {
            return;
        };
        assert_aborted_cleanly(&run, point, &stopped, &original);
        assert_eq!(
            original.structure,
            snapshot(&mut stopped.client()).structure,
            "the first write transaction was cut short, so nothing may have changed"
        );

        tools::assert_success(&tools::run_bin(MANUAL, &args));
        tools::assert_success(&tools::run_bin(
            MANUAL,
            &["-p", clean.url(), "-r", room.as_str(), "-c"],
        ));
        assert_eq!(
            snapshot(&mut stopped.client()).structure,
            snapshot(&mut clean.client()).structure,
            "a run after the abort ends elsewhere than an undisturbed run ({point})"
        );
    }
}

#[test]
fn an_automatic_write_stopped_mid_transaction_resumes_exactly() {
    let points = [
        ("write::after-deletes", "2*off->return(abort)"),
        ("write::before-copy", "return(abort)"),
        ("auto::before-progress-save", "3*off->return(abort)"),
    ];
    for (i, (point, actions)) in points.iter().enumerate() {
        let seed = 80 + i as u64;
        let (stopped, _) = db("faults_auto_stop", seed);
        let (clean, _) = db("faults_auto_clean", seed);
        let original = snapshot(&mut stopped.client());
        let args = ["-p", stopped.url(), "-c", "50", "-n", "1000"];
        // The pass writes its chunks together in sweeps: batches of 20
        // groups, so the points are met as many times as chunk by chunk.
        let fault = format!("{point}={actions}");
        let Some(run) = run_with_faults_and(AUTO, &args, &fault, Some((BATCH_ENV, "20"))) else {
            return;
        };
        assert_aborted_cleanly(&run, point, &stopped, &original);

        tools::assert_success(&tools::run_bin(AUTO, &args));
        tools::assert_success(&tools::run_bin(
            AUTO,
            &["-p", clean.url(), "-c", "50", "-n", "1000"],
        ));
        assert_eq!(
            snapshot(&mut stopped.client()).structure,
            snapshot(&mut clean.client()).structure,
            "a run after the abort ends elsewhere than an undisturbed run ({point})"
        );
        assert_eq!(
            progress(&stopped),
            progress(&clean),
            "progress differs ({point})"
        );
    }
}
