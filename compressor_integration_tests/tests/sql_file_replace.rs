//! `-o FILE` over an existing file (an SQL file the admin reviewed): a run
//! that fails or is stopped must leave it byte for byte as it was, and
//! leave no partial or temporary file beside it; a run that completes
//! replaces it whole.
//!
//! Failures: an unknown room, a refused connection, a full disk (a small
//! tmpfs, so the write really fails with ENOSPC), and SIGTERM while the run
//! loads (held there by a lock on `state_groups_state`, so the signal
//! comes mid-load, as the server shows).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use compressor_integration_tests::check::{run_compressor, small_db, COMPRESSOR};
use compressor_integration_tests::{pg, tools};

const REVIEWED: &str = "-- reviewed by the admin on Monday\nSELECT 1;\n";

/// A fresh directory holding only `keep.sql` (the reviewed file); removed
/// on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(hint: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("sct-replace-{}-{hint}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let dir = Dir(dir);
        fs::write(dir.file(), REVIEWED).unwrap();
        dir
    }

    fn file(&self) -> PathBuf {
        self.0.join("keep.sql")
    }

    fn file_str(&self) -> String {
        self.file().to_str().unwrap().to_owned()
    }

    /// The reviewed file is as it was, alone in its directory.
    fn assert_untouched(&self, context: &str) {
        assert_eq!(
            fs::read(self.file()).map_err(|e| e.to_string()),
            Ok(REVIEWED.as_bytes().to_vec()),
            "{context}: the reviewed file changed"
        );
        assert_eq!(entries(&self.0), ["keep.sql"], "{context}: a file was left");
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_unknown_room_or_a_refused_connection_leaves_the_file_as_it_was() {
    let (db, room) = small_db("replace_fail", 120);
    let dir = Dir::new("fail");

    let run = run_compressor(
        db.url(),
        &["-r", "!nope:example.org", "-o", &dir.file_str()],
    );
    tools::assert_user_error(&run);
    dir.assert_untouched("unknown room");

    let url = pg::refused_url();
    let run = tools::run_bin(
        COMPRESSOR,
        &["-p", &url, "-r", &room, "-o", &dir.file_str()],
    );
    tools::assert_user_error(&run);
    dir.assert_untouched("refused connection");

    // A run that completes replaces it whole, leaving nothing beside it.
    let run = run_compressor(db.url(), &["-r", &room, "-o", &dir.file_str()]);
    tools::assert_success(&run);
    let written = fs::read_to_string(dir.file()).unwrap();
    assert!(written.starts_with("-- "), "{written:.200}");
    assert!(written.contains("\nDO "), "{written:.400}");
    assert_eq!(entries(&dir.0), ["keep.sql"]);
}

/// Mounts a tmpfs of `kib` KiB on `dir` (root only); unmounts on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: usize) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_the_file_as_it_was() {
    let (db, room) = small_db("replace_full", 400);
    let dir = Dir::new("full");
    fs::remove_file(dir.file()).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&dir.0, 64) else {
        tools::prerequisite_missing("mounting a small tmpfs (needs root)");
        return;
    };
    fs::write(dir.file(), REVIEWED).unwrap();

    let run = run_compressor(db.url(), &["-r", &room, "-o", &dir.file_str()]);
    tools::assert_user_error(&run);
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.describe()
    );
    dir.assert_untouched("full disk");

    // The SQL would have been larger than the disk: the failure is real.
    let run = run_compressor(db.url(), &["-r", &room, "-o", "-"]);
    tools::assert_success(&run);
    assert!(run.stdout.len() > 64 * 1024, "{} bytes", run.stdout.len());
}

#[test]
fn sigterm_while_loading_leaves_the_file_as_it_was() {
    let (db, room) = small_db("replace_signal", 120);
    let dir = Dir::new("signal");
    let name = format!("replace_signal_{}", std::process::id());
    let url = format!("{}?application_name={name}", db.url());

    // What VACUUM FULL takes: the run's load waits for it.
    let mut holder = db.client();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE state_groups_state IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let child = Command::new(tools::bin_path(COMPRESSOR))
        .args(["-p", &url, "-r", &room, "-o", &dir.file_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watcher = db.client();
    pg::wait_for_lock_wait(&mut watcher, &name);
    // SAFETY: kill(2) has no memory effects on this process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    tx.rollback().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    dir.assert_untouched("SIGTERM while loading");
    // Stopped at the safe point after the load, the summary says no file
    // was written (a tool that ends at once while it waits for the tables,
    // before its work begins, says nothing was changed).
    assert!(
        (stderr.contains("Interrupted by SIGTERM before the SQL file was complete")
            && stderr.contains("No SQL file was written (a file of that name is left as it was)"))
            || stderr.contains("before any work began"),
        "{stderr}"
    );
    assert!(!stderr.contains("0 of 0 groups"), "{stderr}");
}
