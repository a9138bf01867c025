//! How the benchmark starts the tools and measures them: a small launcher
//! process (a second copy of this program) that runs each tool and reports
//! its exit status, wall time and peak RSS from `wait4`.

use crate::Res;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// A finished child process.
pub struct ChildRun {
    pub command: String,
    /// Exit code, or None when killed by a signal.
    pub code: Option<i32>,
    pub wall: f64,
    /// ru_maxrss: peak resident set, KiB.
    pub max_rss_kib: i64,
    pub stdout: String,
    pub stderr: String,
}

/// The first argument that makes this program a [`Launcher`].
pub const LAUNCHER_ARG: &str = "--internal-launcher";

/// Starts the tools on the benchmark's behalf, from a process that stays
/// small.
///
/// Linux charges a new program with the resident set of the process it was
/// forked from (exec records the old address space's size in `ru_maxrss`),
/// so a tool started directly by this process, after it has generated
/// millions of rows, would be reported as at least as big as this process.
/// The launcher is a second copy of this program, started before anything
/// else while it is a few MiB; it starts each tool, waits for it with
/// `wait4` and reports its exit status, wall time and peak RSS.
///
/// Protocol, over its stdin and stdout: a request is a line with the number
/// of fields, then each field as a line with its length in bytes followed by
/// the bytes: program, stdout file, stderr file, arguments. The answer is a
/// line `ok CODE MAX_RSS_KIB WALL_SECONDS` (CODE -1 for a signal) or
/// `error MESSAGE`.
pub struct Launcher {
    child: std::process::Child,
    to: Option<std::process::ChildStdin>,
    from: std::io::BufReader<std::process::ChildStdout>,
    /// The launcher's own peak RSS, KiB (the most a tool can be charged
    /// for it).
    pub own_rss_kib: i64,
}

impl Launcher {
    pub fn start() -> Res<Launcher> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this program to start its launcher: {e}"))?;
        let mut child = Command::new(exe)
            .arg(LAUNCHER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the launcher: {e}"))?;
        let to = child.stdin.take().ok_or("the launcher has no stdin")?;
        let from =
            std::io::BufReader::new(child.stdout.take().ok_or("the launcher has no stdout")?);
        let mut launcher = Launcher {
            child,
            to: Some(to),
            from,
            own_rss_kib: 0,
        };
        // A no-op request: once it is answered the launcher is fully up.
        launcher.run(
            Path::new("true"),
            &[],
            Path::new("/dev/null"),
            Path::new("/dev/null"),
        )?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", launcher.child.id()))
            .unwrap_or_default();
        launcher.own_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Ok(launcher)
    }

    /// Runs `program args` with stdout and stderr into the given files;
    /// returns (exit code or None for a signal, wall seconds, peak RSS KiB).
    fn run(
        &mut self,
        program: &Path,
        args: &[String],
        stdout: &Path,
        stderr: &Path,
    ) -> Res<(Option<i32>, f64, i64)> {
        use std::os::unix::ffi::OsStrExt;
        let mut fields: Vec<Vec<u8>> = vec![
            program.as_os_str().as_bytes().to_vec(),
            stdout.as_os_str().as_bytes().to_vec(),
            stderr.as_os_str().as_bytes().to_vec(),
        ];
        fields.extend(args.iter().map(|a| a.as_bytes().to_vec()));
        let mut request = format!("{}\n", fields.len()).into_bytes();
        for field in &fields {
            request.extend_from_slice(format!("{}\n", field.len()).as_bytes());
            request.extend_from_slice(field);
        }
        let lost = |e: std::io::Error| format!("lost the launcher: {e}");
        let to = self.to.as_mut().ok_or("the launcher is closed")?;
        to.write_all(&request).map_err(lost)?;
        to.flush().map_err(lost)?;
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut self.from, &mut answer).map_err(lost)?;
        let words: Vec<&str> = answer.split_whitespace().collect();
        match words.as_slice() {
            ["ok", code, rss, wall] => {
                let bad = || format!("bad answer from the launcher: {answer:?}");
                let code: i32 = code.parse().map_err(|_| bad())?;
                Ok((
                    (code >= 0).then_some(code),
                    wall.parse().map_err(|_| bad())?,
                    rss.parse().map_err(|_| bad())?,
                ))
            }
            [] => Err("the launcher stopped".to_string()),
            _ => Err(answer.trim().trim_start_matches("error ").to_string()),
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing its stdin ends it.
        drop(self.to.take());
        let _ = self.child.wait();
    }
}

/// The launcher's side (this program started with [`LAUNCHER_ARG`]).
pub fn launcher_main() -> ExitCode {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    while let Some(fields) = read_request(&mut input) {
        let answer = match launch(&fields) {
            Ok((code, rss, wall)) => format!("ok {code} {rss} {wall}\n"),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        if output
            .write_all(answer.as_bytes())
            .and_then(|()| output.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// One request (None at the end of the input).
fn read_request(input: &mut impl std::io::BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if input.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n: usize = line.trim().parse().ok()?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        input.read_line(&mut line).ok()?;
        let mut field = vec![0; line.trim().parse().ok()?];
        input.read_exact(&mut field).ok()?;
        fields.push(field);
    }
    Some(fields)
}

/// Runs one request's program; (exit code or -1 for a signal, peak RSS KiB,
/// wall seconds).
fn launch(fields: &[Vec<u8>]) -> Res<(i32, i64, f64)> {
    use std::os::unix::ffi::OsStrExt;
    let os = |bytes: &Vec<u8>| std::ffi::OsStr::from_bytes(bytes).to_os_string();
    let [program, stdout, stderr, args @ ..] = fields else {
        return Err("a request needs a program and two files".to_string());
    };
    let file = |path: &Vec<u8>| {
        std::fs::File::create(os(path))
            .map_err(|e| format!("cannot create {}: {e}", String::from_utf8_lossy(path)))
    };
    let started = Instant::now();
    let child = Command::new(os(program))
        .args(args.iter().map(os))
        .stdin(Stdio::null())
        .stdout(file(stdout)?)
        .stderr(file(stderr)?)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
        )
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", String::from_utf8_lossy(program)))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (`Child::wait` is never
        // called); both pointers are to live, writable locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!(
                "waiting for {}: {e}",
                String::from_utf8_lossy(program)
            ));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // Reaped already: dropping the handle neither waits nor kills.
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss, wall))
}

/// Runs `program args` through the launcher, its output into
/// `<log_dir>/<name>.stdout` and `.stderr` (or temporary files).
pub fn run_measured(
    launcher: &mut Launcher,
    log_dir: Option<&Path>,
    name: &str,
    program: &Path,
    args: &[String],
) -> Res<ChildRun> {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let (dir, keep) = match log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            (dir.to_path_buf(), true)
        }
        None => (std::env::temp_dir(), false),
    };
    let prefix = if keep {
        name.to_string()
    } else {
        format!("bench-{}-{name}", std::process::id())
    };
    let out_path = dir.join(format!("{prefix}.stdout"));
    let err_path = dir.join(format!("{prefix}.stderr"));
    let (code, wall, max_rss_kib) = launcher.run(program, args, &out_path, &err_path)?;
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap_or_default();
        if !keep {
            let _ = std::fs::remove_file(path);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(ChildRun {
        command,
        code,
        wall,
        max_rss_kib,
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}
