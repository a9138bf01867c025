//! A manual run without `-c` or `-o` is a dry run: it writes nothing, and
//! its summary ends by saying so and how to write. A run with `-N` says
//! that it did not verify.

use compressor_integration_tests::check::{run_compressor, small_db, snapshot};
use compressor_integration_tests::tools;

#[test]
fn a_dry_run_writes_nothing_and_says_how_to_write() {
    let (db, room) = small_db("dry_run", 150);
    let before = snapshot(&mut db.client());
    let run = run_compressor(db.url(), &["-r", &room]);
    tools::assert_success(&run);
    assert!(
        run.stdout.contains(
            "Nothing was written (a dry run): add -c to apply the changes, or -o FILE to write them as SQL."
        ),
        "{}",
        run.describe()
    );
    assert_eq!(before, snapshot(&mut db.client()), "a dry run wrote");

    // With -c the line is not there: something was written.
    let run = run_compressor(db.url(), &["-r", &room, "-c"]);
    tools::assert_success(&run);
    assert!(
        !run.stdout.contains("Nothing was written"),
        "{}",
        run.describe()
    );
}

#[test]
fn a_run_without_verification_says_so() {
    let (db, room) = small_db("no_verify", 150);
    let run = run_compressor(db.url(), &["-r", &room, "-c", "-N"]);
    tools::assert_success(&run);
    assert!(
        run.stdout.contains(
            "New state map NOT checked against the old one: verification was skipped (-N)"
        ) && run.stderr.contains("Verification is off (-N)"),
        "{}",
        run.describe()
    );
    // Checked, it says what was checked instead.
    let (db, room) = small_db("verify", 150);
    let run = run_compressor(db.url(), &["-r", &room, "-c"]);
    tools::assert_success(&run);
    assert!(
        run.stdout.contains("New state map matches old one") && !run.stdout.contains("-N"),
        "{}",
        run.describe()
    );
}
