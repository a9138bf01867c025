//! Both tools finish their work and exit as they would when whatever read
//! their output is gone: an admin's `| tee run.log` or `| head` dies with
//! the Ctrl-C that asks the tool to stop, or earlier. The tools used to
//! panic on their last `println!` (exit 101, after the work was saved);
//! now what cannot be printed is dropped and the exit status is the run's.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::tools;

fn config() -> GenConfig {
    GenConfig {
        seed: 11,
        rooms: 2,
        groups_per_room: 200,
        members: 30,
        max_delta_hops: 8,
        ..GenConfig::default()
    }
}

/// Runs `name args` with stdout and stderr pipes whose reading ends are
/// closed at once; its exit code.
fn run_with_closed_pipes(name: &str, args: &[&str]) -> i32 {
    let mut child = Command::new(tools::bin_path(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the tool");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("waiting for the tool");
    assert!(
        status.signal().is_none(),
        "{name} was killed by signal {:?}",
        status.signal()
    );
    status.code().expect("an exit code")
}

#[test]
fn both_tools_finish_and_exit_0_when_their_output_is_gone() {
    let (db, generated) = check::generated_db("closed_pipes", &config());
    let before = snapshot(&mut db.client());
    let rows_before = db.state_rows();
    let room = generated.rooms[0].room_id.as_str();
    let code = run_with_closed_pipes(
        "synapse_compress_state",
        &["-p", db.url(), "-r", room, "-c", "-l", "10,5"],
    );
    assert_eq!(code, 0, "the manual tool");
    let after_manual = db.state_rows();
    assert!(after_manual < rows_before, "the manual tool wrote nothing");
    let code = run_with_closed_pipes(
        "synapse_auto_compressor",
        &[
            "-p",
            db.url(),
            "-c",
            "50",
            "-n",
            "100",
            "-l",
            "10,5",
            "--json",
        ],
    );
    assert_eq!(code, 0, "the automatic tool");
    assert!(
        db.state_rows() < after_manual,
        "the automatic tool wrote nothing"
    );
    assert_same_states(
        &before.states,
        &snapshot(&mut db.client()).states,
        "closed pipes",
    );
}
