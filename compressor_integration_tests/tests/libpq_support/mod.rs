//! What the libpq tests share: the throwaway server that demands
//! passwords, password files, and running the tools with an environment of
//! the test's choosing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use compressor_integration_tests::generator::{generate, GenConfig, Generated};
use compressor_integration_tests::tls_server::ThrowawayServer;
pub use compressor_integration_tests::tls_server::Unavailable;
use compressor_integration_tests::tools::{self, ToolRun};

pub const AUTO: &str = "synapse_auto_compressor";
pub const DB: &str = "libpq_synapse";
pub const ROLE: &str = "compressor";
/// A role the socket admits by peer authentication only (the tests' OS
/// user is never this one, so it always fails).
pub const PEER_ROLE: &str = "peer_only";
/// Holds the characters the password file must escape.
pub const PASSWORD: &str = r"pa:ss\word";
/// The same password as a password-file field.
pub const PASSWORD_ESCAPED: &str = r"pa\:ss\\word";

pub fn data() -> Generated {
    generate(&GenConfig {
        rooms: 2,
        groups_per_room: 120,
        max_delta_hops: 10,
        ..GenConfig::default()
    })
}

/// A fresh directory under the temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(hint: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sct-{hint}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a password file with `mode`.
pub fn write_passfile(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("writing the password file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("setting the password file's mode");
}

/// A port nothing listens on (bound once by us, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    listener.local_addr().expect("local address").port()
}

/// A throwaway cluster that asks every role but `postgres` on the socket
/// for a password; stopped and deleted on drop.
/// A throwaway cluster whose TCP port, and Unix socket for every role but
/// `postgres`, demand a password.
pub struct PasswordServer {
    server: ThrowawayServer,
}

impl PasswordServer {
    pub fn start() -> Result<PasswordServer, Unavailable> {
        let server = PasswordServer {
            server: ThrowawayServer::start("libpq-pg", &[])?,
        };
        server.require_passwords();
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Replaces the cluster's trust-everyone rules and waits until the
    /// server applies the new ones (a password-less TCP login fails).
    pub fn require_passwords(&self) {
        std::fs::write(
            self.server.dir().join("data/pg_hba.conf"),
            "# libpq.rs: passwords everywhere but for postgres on the socket\n\
             # (and peer authentication, never a password, for PEER_ROLE)\n\
             local all postgres            trust\n\
             local all peer_only           peer\n\
             local all all                 scram-sha-256\n\
             host  all all 127.0.0.1/32    scram-sha-256\n",
        )
        .expect("writing pg_hba.conf");
        self.admin("postgres")
            .batch_execute("SELECT pg_reload_conf()")
            .expect("reloading the configuration");
        let tcp = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while postgres::Client::connect(&tcp, postgres::NoTls).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the server still lets postgres in without a password after reloading pg_hba.conf"
            );
        }
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.server.socket_dir()
    }

    /// A connection as `postgres` over the socket, for setting up and checking.
    pub fn admin(&self, dbname: &str) -> postgres::Client {
        self.server.socket_client(dbname)
    }
}

/// Environment variables for one run.
pub type Env = Vec<(&'static str, String)>;

/// What a run is, its `-p`, its environment, and the pieces its error line
/// must hold (`None`: it must succeed).
pub type Case<'a> = (&'a str, Option<&'a str>, Env, Option<Vec<&'a str>>);

/// A tool, whether `-p` names the session, `PGAPPNAME`, the name expected.
pub type NameCase<'a> = (&'a str, bool, &'a [(&'a str, &'a str)], &'a str);

/// A tool's command line: `-p` only when given, in an environment holding
/// only `env` of the libpq variables and `home` as `HOME`.
pub fn command<V: AsRef<str>>(
    tool: &str,
    conninfo: Option<&str>,
    room: &str,
    env: &[(&str, V)],
    home: &Path,
) -> (Command, String) {
    let mut args: Vec<String> = Vec::new();
    if let Some(conninfo) = conninfo {
        args.extend(["-p".to_string(), conninfo.to_string()]);
    }
    if tool == AUTO {
        args.extend(["-c", "60", "-n", "100"].map(String::from));
    } else {
        args.extend(["-r".to_string(), room.to_string()]);
    }
    let mut cmd = Command::new(tools::bin_path(tool));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    cmd.env("HOME", home)
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v.as_ref())))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown_env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_ref()))
        .collect();
    let text = format!("{} {tool} {}", shown_env.join(" "), args.join(" "));
    (cmd, text)
}

pub fn finish(child: Child, command: String) -> ToolRun {
    let out = child.wait_with_output().expect("waiting for the tool");
    ToolRun {
        command,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn run<V: AsRef<str>>(
    tool: &str,
    conninfo: Option<&str>,
    room: &str,
    env: &[(&str, V)],
    home: &Path,
) -> ToolRun {
    let (mut cmd, text) = command(tool, conninfo, room, env, home);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {text}: {e}"));
    finish(child, text)
}

/// True when `run` failed as a user error whose one line holds every
/// piece of `expected`.
pub fn refused(run: &ToolRun, expected: &[&str]) -> bool {
    let lines = run.error_lines();
    run.status.code() == Some(1)
        && lines.len() == 1
        && expected.iter().all(|e| lines[0].contains(e))
        && !run.stderr.contains("panicked")
}

/// Runs `tool` with `args` and no environment at all (`env -i`, so no
/// `HOME`), in a mount namespace of its own where `home` is mounted over
/// the user's home directory from the user database. `None` when this
/// process may not make such a namespace (needs root).
pub fn run_without_home(tool: &str, args: &[&str], home: &Path) -> Option<ToolRun> {
    let allowed = Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !allowed {
        return None;
    }
    let script = "home=$(getent passwd \"$(id -u)\" | cut -d: -f6) && \
                  mount --bind \"$0\" \"$home\" && exec env -i \"$@\"";
    let bin = tools::bin_path(tool);
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script])
        .arg(home)
        .arg(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let text = format!("env -i {} {}", bin.display(), args.join(" "));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {text}: {e}"));
    Some(finish(child, text))
}
