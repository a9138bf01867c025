//! Waiting on a lock is visible and interruptible: with another session
//! holding `ACCESS EXCLUSIVE` on `state_groups_state` (what `VACUUM FULL`
//! takes), both tools log a line naming who holds it (pid,
//! `application_name`, since when), keep waiting while it is held and go
//! on once it is released; one signal during the wait stops the run at
//! once with the right status, the automatic tool's saved progress exactly
//! that of its last chunk, and every group's state unchanged.
//!
//! A lock that stops only writes (`SHARE`, a plain `CREATE INDEX`) lets a
//! run load and compress, then wait the same way before it writes: a
//! signal then gives the chunk up with nothing of it written. A lock that
//! stops only `VACUUM` (another VACUUM or ANALYZE) keeps `--vacuum` waiting
//! the same way at the run's end; a signal then skips the VACUUM.
//!
//! Synchronised on the tools' log lines (read as they come) and on the
//! holder's own transaction; no sleeps.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use compressor_integration_tests::check::{self, COMPRESSOR};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure;
use compressor_integration_tests::synapse_state;
use compressor_integration_tests::tools;
use postgres::Client;

const AUTO: &str = "synapse_auto_compressor";
const WAITING: &str = "Waiting for a lock on the state tables";

/// A tool running with its stderr read line by line as it comes.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(tool: &str, args: &[&str]) -> Running {
        let mut child = Command::new(tools::bin_path(tool))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line from now on holding `text`; fails after a minute.
    fn wait_for_line(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no line with {text:?}; stderr:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) has no memory effects on this process.
        let done = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(done, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the end (killing the tool and failing after `limit`): the
    /// exit code and the whole stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "still running {limit:?} later; stderr:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::park_timeout(Duration::from_millis(50));
        };
        self.seen.extend(self.lines.iter());
        (status.code(), self.seen.join("\n"))
    }
}

/// A session named `lock_holder` holding `state_groups_state` in `mode`
/// until its transaction ends; and its pid.
fn hold_lock(db: &TestDb, mode: &str) -> (Client, i32) {
    let mut holder = db.client();
    holder
        .batch_execute(&format!(
            "SET application_name = 'lock_holder'; BEGIN; \
             LOCK TABLE state_groups_state IN {mode} MODE"
        ))
        .expect("taking the lock");
    let pid = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    (holder, pid)
}

/// Checks that the waiting line names the holder and its lock's `mode`.
fn assert_names_holder(line: &str, pid: i32, mode: &str) {
    assert!(
        line.contains(&format!("state_groups_state held by pid {pid} ({mode}, "))
            && line.contains("application_name \"lock_holder\"")
            && line.contains("since "),
        "{line}"
    );
}

#[test]
fn a_held_table_is_waited_for_visibly_and_a_signal_stops_the_wait() {
    let (db, room) = check::small_db("lock_wait", 300);
    let mut client = db.client();
    let original = synapse_state::all_states(&mut client, None).expect("reading states");
    let auto_args = ["-p", db.url(), "-c", "50", "-n", "3", "--no-progress"];

    // Some progress to keep: a first run of three chunks.
    tools::assert_success(&tools::run_bin(AUTO, &auto_args));
    let progress = check::saved_progress(&db);
    assert!(!progress.is_empty());

    // The automatic tool: one line naming the holder, then SIGTERM ends it.
    let (holder, pid) = hold_lock(&db, "ACCESS EXCLUSIVE");
    let mut auto = Running::start(AUTO, &auto_args);
    assert_names_holder(&auto.wait_for_line(WAITING), pid, "ACCESS EXCLUSIVE");
    let sent = Instant::now();
    auto.signal(libc::SIGTERM);
    let (code, stderr) = auto.finish(Duration::from_secs(20));
    eprintln!(
        "automatic tool: stopped {:.1?} after SIGTERM",
        sent.elapsed()
    );
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("Interrupted by SIGTERM"), "{stderr}");
    assert_eq!(check::saved_progress(&db), progress);

    // The manual tool: the same line; SIGINT ends it (nothing had begun).
    let manual_args = ["-p", db.url(), "-r", &room, "-l", "2,2,2", "-c"];
    let mut manual = Running::start(COMPRESSOR, &manual_args);
    assert_names_holder(&manual.wait_for_line(WAITING), pid, "ACCESS EXCLUSIVE");
    manual.signal(libc::SIGINT);
    let (code, stderr) = manual.finish(Duration::from_secs(20));
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("Interrupted by SIGINT"), "{stderr}");

    // Released while a run waits: it goes on and does its chunks.
    let mut waiting = Running::start(AUTO, &auto_args);
    waiting.wait_for_line(WAITING);
    drop(holder);
    waiting.wait_for_line("free again");
    let (code, stderr) = waiting.finish(Duration::from_secs(300));
    assert_eq!(code, Some(0), "{stderr}");
    assert_ne!(check::saved_progress(&db), progress, "{stderr}");

    let states = synapse_state::all_states(&mut client, None).expect("reading states");
    assert_eq!(synapse_state::first_difference(&original, &states), None);
}

#[test]
fn a_lock_that_stops_writes_is_waited_for_before_writing() {
    let (db, room) = check::small_db("lock_wait_write", 300);
    let mut client = db.client();
    let original = synapse_state::all_states(&mut client, None).expect("reading states");
    let tree = structure::structure(&mut client, None).expect("reading the tree");

    // SHARE lets reads through. The manual tool loads and compresses the
    // room, then waits before writing; SIGINT stops it there.
    let (holder, pid) = hold_lock(&db, "SHARE");
    let manual_args = ["-p", db.url(), "-r", &room, "-c"];
    let mut manual = Running::start(COMPRESSOR, &manual_args);
    assert_names_holder(&manual.wait_for_line(WAITING), pid, "SHARE");
    manual.signal(libc::SIGINT);
    let (code, stderr) = manual.finish(Duration::from_secs(20));
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("Interrupted by SIGINT before the run was done"),
        "{stderr}"
    );
    drop(holder);
    let unwritten = structure::structure(&mut client, None).expect("reading the tree");
    assert!(unwritten == tree, "the manual run wrote\n{stderr}");

    // The automatic tool loads its chunk, then waits before writing it;
    // SIGTERM gives the chunk up.
    let auto_args = ["-p", db.url(), "-c", "50", "-n", "3", "--no-progress"];
    tools::assert_success(&tools::run_bin(AUTO, &auto_args));
    let progress = check::saved_progress(&db);
    let (holder, pid) = hold_lock(&db, "SHARE");
    let mut auto = Running::start(AUTO, &auto_args);
    assert_names_holder(&auto.wait_for_line(WAITING), pid, "SHARE");
    auto.signal(libc::SIGTERM);
    let (code, stderr) = auto.finish(Duration::from_secs(20));
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("Interrupted by SIGTERM"), "{stderr}");
    drop(holder);
    // The given-up chunk wrote nothing: every room's levels and progress
    // are as before. Its choice of room moved the scan position up to its
    // first group, as the start of every chunk does (the reference's
    // order); it must still be at or below every group left to compress.
    let rooms_only = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .filter(|row| !row.starts_with("state_compressor_total_progress"))
            .collect()
    };
    assert_eq!(rooms_only(check::saved_progress(&db)), rooms_only(progress));
    let (scan, lowest_left): (i64, Option<i64>) = {
        let row = client
            .query_one(
                "SELECT (SELECT lowest_uncompressed_group FROM state_compressor_total_progress), \
                        (SELECT min(g.id) FROM state_groups g \
                         LEFT JOIN state_compressor_progress p USING (room_id) \
                         WHERE p.last_compressed IS NULL OR g.id > p.last_compressed)",
                &[],
            )
            .expect("reading the scan position");
        (row.get(0), row.get(1))
    };
    assert!(
        lowest_left.is_some_and(|lowest| scan <= lowest),
        "scan position {scan} passed the lowest group left, {lowest_left:?}\n{stderr}"
    );

    let states = synapse_state::all_states(&mut client, None).expect("reading states");
    assert_eq!(synapse_state::first_difference(&original, &states), None);
}

#[test]
fn vacuum_waits_visibly_for_the_table_and_a_signal_skips_it() {
    let (db, _room) = check::small_db("lock_wait_vacuum", 300);
    let mut client = db.client();
    let original = synapse_state::all_states(&mut client, None).expect("reading states");
    let auto_args = [
        "-p",
        db.url(),
        "-c",
        "50",
        "-n",
        "2",
        "--vacuum",
        "--no-progress",
    ];

    // SHARE UPDATE EXCLUSIVE (another VACUUM, ANALYZE, autovacuum) lets
    // the chunks be read and written, then keeps --vacuum waiting: one
    // line names the holder, and SIGTERM skips the VACUUM at once (the run
    // is otherwise done, so it ends as a finished run does).
    let (holder, pid) = hold_lock(&db, "SHARE UPDATE EXCLUSIVE");
    let mut auto = Running::start(AUTO, &auto_args);
    assert_names_holder(&auto.wait_for_line(WAITING), pid, "SHARE UPDATE EXCLUSIVE");
    let progress = check::saved_progress(&db);
    assert!(
        progress
            .iter()
            .any(|row| row.starts_with("state_compressor_progress")),
        "the chunks were not saved before the VACUUM: {progress:?}"
    );
    auto.signal(libc::SIGTERM);
    let (code, stderr) = auto.finish(Duration::from_secs(20));
    // Every chunk asked for is done and saved: only the VACUUM is left out.
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("--vacuum skipped: SIGTERM"), "{stderr}");
    assert!(
        !stderr.contains("VACUUM (ANALYZE) state_groups_state took"),
        "{stderr}"
    );
    assert_eq!(check::saved_progress(&db), progress);

    // Released while the next run waits: the VACUUM runs.
    let mut waiting = Running::start(AUTO, &auto_args);
    waiting.wait_for_line(WAITING);
    drop(holder);
    waiting.wait_for_line("VACUUM (ANALYZE) state_groups_state took");
    let (code, stderr) = waiting.finish(Duration::from_secs(300));
    assert_eq!(code, Some(0), "{stderr}");

    let states = synapse_state::all_states(&mut client, None).expect("reading states");
    assert_eq!(synapse_state::first_difference(&original, &states), None);
}
