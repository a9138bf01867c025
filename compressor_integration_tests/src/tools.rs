//! Running programs: the workspace's binaries (found next to the test
//! executable, in `target/<profile>/`) and PostgreSQL's `psql`.
//!
//! Every run has a time limit (default 600 s, `SYNAPSE_TEST_TOOL_TIMEOUT`
//! seconds to change it): a hung tool is killed and fails its test instead of
//! stalling the suite.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Path of the workspace binary `name`, built in the same profile as the
/// running test (…/target/debug/deps/test-abc → …/target/debug/name).
///
/// # Panics
/// When it does not exist: build the binaries first (`scripts/test.sh` does).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the running executable");
    let mut dir = exe
        .parent()
        .expect("the running executable has no directory")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {} not found: build the workspace's binaries first \
             (`cargo build --workspace --bins`; scripts/test.sh does this before testing)",
            path.display()
        );
    }
    path
}

/// The `psql` to use: `$PG_BIN/psql`, else `psql` on PATH, else the newest
/// `/usr/lib/postgresql/*/bin/psql`.
pub fn psql_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Path::new(&dir).join("psql");
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("psql");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let psql = entry.path().join("bin/psql");
            psql.is_file().then_some((version, psql))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, path)| path)
        .expect("psql not found: install postgresql-client or set PG_BIN")
}

/// The outcome of running a program.
#[derive(Debug)]
pub struct ToolRun {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolRun {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Whether the automatic tool reported that no room has work left.
    pub fn finished_all(&self) -> bool {
        self.stderr.contains("nothing left to do")
    }

    /// The command, its status and its output, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }

    /// The automatic tool's pass: the chunks it did and the rooms that went
    /// over its memory budget, from its last line (`None`: no pass ran).
    pub fn pass_chunks(&self) -> Option<(u64, u64)> {
        let line = self.stderr.lines().find(|l| l.contains("The pass did "))?;
        let tail = &line[line.find("The pass did ").unwrap()..];
        let numbers: Vec<u64> = tail
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(numbers.len() >= 2, "{line}");
        Some((numbers[0], numbers[1]))
    }

    /// Lines of stderr starting with `error: `.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|line| line.starts_with("error: "))
            .collect()
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn timeout() -> Duration {
    let secs = std::env::var("SYNAPSE_TEST_TOOL_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

fn shell_words<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let mut words = vec![program.display().to_string()];
    for arg in args {
        let arg = arg.as_ref().to_string_lossy();
        if !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
        {
            words.push(arg.into_owned());
        } else {
            words.push(format!("'{}'", arg.replace('\'', "'\\''")));
        }
    }
    words.join(" ")
}

/// Waits for `child`, killing it after `limit`.
fn wait_limited(child: Child, command: String, limit: Duration) -> ToolRun {
    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            true
        } else {
            false
        }
    });
    let output = child.wait_with_output();
    let _ = done.send(());
    let killed = watchdog.join().unwrap_or(false);
    let output = output.unwrap_or_else(|e| panic!("waiting for `{command}`: {e}"));
    if killed {
        panic!(
            "`{command}` did not finish within {limit:?} and was killed\n--- stderr ---\n{}",
            tail(&String::from_utf8_lossy(&output.stderr), 4000)
        );
    }
    ToolRun {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `program args…` with no stdin and captured output.
pub fn run<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> ToolRun {
    run_with_stdin(program, args, Stdio::null())
}

/// Runs `program args…` with the given stdin and captured output.
pub fn run_with_stdin<S: AsRef<OsStr>>(program: &Path, args: &[S], stdin: Stdio) -> ToolRun {
    start(program, args, stdin).wait()
}

/// A program started with captured output, not yet waited for: several
/// can run at the same time.
pub struct Started {
    child: Child,
    command: String,
}

impl Started {
    /// The process id (to send it a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the program (within the time limit) and returns its run.
    pub fn wait(self) -> ToolRun {
        wait_limited(self.child, self.command, timeout())
    }

    /// Waits for the program, killing it (and failing) after `limit`.
    pub fn wait_within(self, limit: Duration) -> ToolRun {
        wait_limited(self.child, self.command, limit)
    }
}

/// Starts `program args…` with the given stdin and captured output.
pub fn start<S: AsRef<OsStr>>(program: &Path, args: &[S], stdin: Stdio) -> Started {
    start_with_env(program, args, stdin, &[])
}

/// [`start`] with extra environment variables.
pub fn start_with_env<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    stdin: Stdio,
    env: &[(&str, &str)],
) -> Started {
    let command = shell_words(program, args);
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    Started { child, command }
}

/// Runs the workspace binary `name` with `args` and extra environment
/// variables `env`.
pub fn run_bin_with_env<S: AsRef<OsStr>>(name: &str, args: &[S], env: &[(&str, &str)]) -> ToolRun {
    start_with_env(&bin_path(name), args, Stdio::null(), env).wait()
}

/// Starts the workspace binary `name` with `args` and no stdin.
pub fn start_bin<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Started {
    start(&bin_path(name), args, Stdio::null())
}

/// Runs the workspace binary `name` with `args`.
pub fn run_bin<S: AsRef<OsStr>>(name: &str, args: &[S]) -> ToolRun {
    run(&bin_path(name), args)
}

/// `psql -X -v ON_ERROR_STOP=1 URL < FILE`, as an operator applies the
/// compressor's SQL output.
pub fn psql_file(url: &str, file: &Path) -> ToolRun {
    let input = File::open(file).unwrap_or_else(|e| panic!("cannot open {}: {e}", file.display()));
    run_with_stdin(
        &psql_path(),
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", url],
        Stdio::from(input),
    )
}

/// `gzip -dc FILE | psql -X -v ON_ERROR_STOP=1 URL` (for dumps).
pub fn psql_gzip_file(url: &str, file: &Path) -> ToolRun {
    let mut gzip = Command::new("gzip")
        .arg("-dc")
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run gzip");
    let pipe = gzip.stdout.take().expect("gzip stdout");
    let run = run_with_stdin(
        &psql_path(),
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", url],
        Stdio::from(pipe),
    );
    let status = gzip.wait().expect("waiting for gzip");
    assert!(
        status.success(),
        "gzip -dc {} failed: {status}",
        file.display()
    );
    run
}

/// Panics with the full story unless `run` succeeded.
pub fn assert_success(run: &ToolRun) {
    assert!(run.success(), "expected success\n{}", run.describe());
}

/// The JSON object of a successful `--json` run: its one line of stdout
/// that starts with `{`.
pub fn json_summary(run: &ToolRun) -> serde_json::Value {
    assert_success(run);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line\n{}", run.describe()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"))
}

/// Asserts that an automatic run succeeded and reported that no room has
/// work left.
pub fn assert_finished_all(run: &ToolRun) {
    assert_success(run);
    assert!(run.finished_all(), "{}", run.describe());
}

/// Asserts the contract for user errors: a non-zero exit code (not a
/// signal), exactly one stderr line starting with `error: `, and no panic.
pub fn assert_user_error(run: &ToolRun) {
    assert!(
        run.status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit code\n{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("panicked") && !run.stdout.contains("panicked"),
        "the tool panicked\n{}",
        run.describe()
    );
    assert_eq!(
        run.error_lines().len(),
        1,
        "expected exactly one stderr line starting with `error: `\n{}",
        run.describe()
    );
}

/// A test cannot run here because `what` is missing (certificates, server
/// binaries, a socket). Outside CI it says so and the caller skips the
/// test; in CI (`CI` set to anything but `false`/`0`) a missing
/// prerequisite is a failure, so a broken CI machine cannot pass silently.
pub fn prerequisite_missing(what: &str) {
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if in_ci {
        panic!("prerequisite missing in CI: {what}");
    }
    eprintln!("NOTICE: {what}; skipping this test (it would fail under CI=true)");
}

/// The dump of state tables written by a real Synapse, kept in the
/// repository (`fixtures/README.md` says what it holds).
pub fn synapse_fixture() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/synapse-small-state.sql.gz");
    assert!(path.is_file(), "the fixture {} is missing", path.display());
    path
}

/// A path in the temporary directory, unique per process, removed (if it
/// exists) on drop.
pub struct TempPath(PathBuf);

impl TempPath {
    pub fn new(hint: &str, extension: &str) -> TempPath {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        TempPath(
            std::env::temp_dir().join(format!("sct-{}-{n}-{hint}.{extension}", std::process::id())),
        )
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as UTF-8 (temporary paths are).
    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("temporary path is not UTF-8")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
