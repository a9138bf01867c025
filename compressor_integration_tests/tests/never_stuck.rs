//! Never stuck before the work: a server that accepts the connection and
//! then says nothing (a dead backend behind a proxy, a tunnel, a pooler)
//! must not hold either tool forever.
//!
//! - `connect_timeout` (in the connection string, as a URL parameter, or
//!   `PGCONNECT_TIMEOUT`) bounds the whole start-up, not just the TCP
//!   connect, and the failure says "timeout expired" as psql does.
//! - Before any work has begun, one Ctrl-C or SIGTERM ends the process at
//!   once with 130 or 143, instead of waiting for a safe point that would
//!   come only once the server answers.
//!
//! - The same holds for every connection a run opens: the automatic tool's
//!   workers, behind a proxy that passes the run's first connection to the
//!   test server and leaves the next ones silent.
//!
//! The silent server is a `TcpListener` of the test's own that accepts and
//! never reads or writes; each accepted connection is reported on a
//! channel, so a test knows when a tool is waiting on it.

use std::io::copy;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use compressor_integration_tests::check::{self, COMPRESSOR};
use compressor_integration_tests::tools;

const AUTO: &str = "synapse_auto_compressor";

/// A listener that accepts connections and never answers, until dropped
/// with the test (its thread holds the accepted sockets open).
struct SilentServer {
    port: u16,
    accepted: mpsc::Receiver<()>,
}

impl SilentServer {
    fn start() -> SilentServer {
        SilentServer::forwarding_first(None)
    }

    /// Passes the first `forwarded.1` connections through to the server at
    /// `forwarded.0` (`host:port`), and leaves the later ones silent.
    fn forwarding_first(forwarded: Option<(String, usize)>) -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a local port");
        let port = listener.local_addr().expect("its address").port();
        let (sender, accepted) = mpsc::channel();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for (n, stream) in listener.incoming().flatten().enumerate() {
                match &forwarded {
                    Some((server, first)) if n < *first => forward(stream, server),
                    _ => held.push(stream),
                }
                if sender.send(()).is_err() {
                    return;
                }
            }
        });
        SilentServer { port, accepted }
    }

    /// Waits until a tool has connected (within a minute).
    fn wait_for_connection(&self) {
        self.accepted
            .recv_timeout(Duration::from_secs(60))
            .expect("the tool never connected to the silent server");
    }
}

/// Copies bytes both ways between `client` and a new connection to
/// `server`, each way on a thread of its own.
fn forward(client: TcpStream, server: &str) {
    let upstream = TcpStream::connect(server).expect("connecting to the test server");
    for (mut from, mut to) in [
        (
            client.try_clone().expect("clone"),
            upstream.try_clone().expect("clone"),
        ),
        (upstream, client),
    ] {
        std::thread::spawn(move || {
            let _ = copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

/// The arguments for `tool` connecting with `conninfo`.
fn args(tool: &str, conninfo: &str) -> Vec<String> {
    let mut args = vec!["-p".to_owned(), conninfo.to_owned()];
    if tool == COMPRESSOR {
        args.extend(["-r".to_owned(), "!room:example.org".to_owned()]);
    } else {
        args.extend(["-c", "10", "-n", "1"].map(str::to_owned));
    }
    args
}

/// What a case calls itself, its connection string, its environment.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn connect_timeout_bounds_the_whole_start_up() {
    let server = SilentServer::start();
    let port = server.port;
    let key_value = format!("host=127.0.0.1 port={port} user=x dbname=y connect_timeout=2");
    let url = format!("postgresql://x@127.0.0.1:{port}/y?connect_timeout=2");
    let plain = format!("host=127.0.0.1 port={port} user=x dbname=y");
    let cases: [Case; 3] = [
        ("connect_timeout=2 in key=value pairs", &key_value, &[]),
        ("connect_timeout=2 in a URL", &url, &[]),
        ("PGCONNECT_TIMEOUT=2", &plain, &[("PGCONNECT_TIMEOUT", "2")]),
    ];
    for tool in [COMPRESSOR, AUTO] {
        for (what, conninfo, env) in cases {
            let started = Instant::now();
            let run = tools::run_bin_with_env(tool, &args(tool, conninfo), env);
            let took = started.elapsed();
            assert_eq!(
                run.status.code(),
                Some(1),
                "{tool}, {what}\n{}",
                run.describe()
            );
            let errors = run.error_lines();
            assert_eq!(errors.len(), 1, "{tool}, {what}\n{}", run.describe());
            assert!(
                errors[0].contains(&format!("127.0.0.1:{port}: timeout expired")),
                "{tool}, {what}\n{}",
                run.describe()
            );
            // Two seconds, plus the start of a process; not the crate's
            // wait for an answer that never comes.
            assert!(
                took >= Duration::from_secs(2) && took < Duration::from_secs(20),
                "{tool}, {what}: took {took:?}\n{}",
                run.describe()
            );
            eprintln!("{tool}, {what}: gave up after {took:.1?}");
        }
    }
}

#[test]
fn one_signal_ends_a_run_that_has_not_begun() {
    let server = SilentServer::start();
    // No time limit at all: only the signal can end these runs.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=x dbname=y connect_timeout=0",
        server.port
    );
    for (tool, signal, status, name) in [
        (COMPRESSOR, libc::SIGTERM, 143, "SIGTERM"),
        (COMPRESSOR, libc::SIGINT, 130, "SIGINT"),
        (AUTO, libc::SIGTERM, 143, "SIGTERM"),
        (AUTO, libc::SIGINT, 130, "SIGINT"),
    ] {
        let started = tools::start_bin(tool, &args(tool, &conninfo));
        server.wait_for_connection();
        let sent = Instant::now();
        // SAFETY: kill(2) has no memory effects on this process.
        let done = unsafe { libc::kill(started.pid() as libc::pid_t, signal) };
        assert_eq!(done, 0, "kill: {}", std::io::Error::last_os_error());
        // One signal, never a second: a run still waiting after 20 s is
        // killed and the test fails.
        let run = started.wait_within(Duration::from_secs(20));
        let took = sent.elapsed();
        assert_eq!(
            run.status.code(),
            Some(status),
            "{tool}, {name}\n{}",
            run.describe()
        );
        assert!(
            run.stderr
                .contains(&format!("Interrupted by {name} before any work began")),
            "{tool}, {name}\n{}",
            run.describe()
        );
        eprintln!("{tool}, {name}: ended {took:.1?} after the signal");
    }
}

#[test]
fn a_worker_connection_to_a_silent_server_times_out_too() {
    let (db, _) = check::small_db("silent_worker", 100);
    let row = db
        .client()
        .query_one(
            "SELECT host(inet_server_addr()), inet_server_port(), current_user",
            &[],
        )
        .expect("the server's address");
    let (host, port, user): (String, i32, String) = (row.get(0), row.get(1), row.get(2));
    // The run's own connection gets through; its workers' meet silence.
    let proxy = SilentServer::forwarding_first(Some((format!("{host}:{port}"), 1)));
    let conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname={} connect_timeout=2",
        proxy.port,
        db.name()
    );
    let args = ["-p", &conninfo, "-c", "20", "-n", "10", "--jobs", "2"];
    let run = tools::start_bin(AUTO, &args).wait_within(Duration::from_secs(60));
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let errors = run.error_lines();
    assert!(
        errors.len() == 1 && errors[0].contains("timeout expired"),
        "{}",
        run.describe()
    );
}
