//! Connecting the way libpq does: passwords from `PGPASSWORD` or a password
//! file, where to connect from `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE`,
//! `-p` winning over the environment, and `application_name` in
//! `pg_stat_activity`.
//!
//! The password cases run against a dedicated throwaway server whose TCP
//! port, and Unix socket for every role but `postgres`, demand a password
//! (`scram-sha-256`), so a missing or wrong password really fails. Every
//! run of a tool gets an environment without the caller's `PG*` variables
//! and an empty `HOME`, so only what a case sets can help it connect.

mod libpq_support;

use std::path::Path;
use std::time::{Duration, Instant};

use compressor_integration_tests::check::COMPRESSOR;
use compressor_integration_tests::pg;
use compressor_integration_tests::structure::resolve_all;
use compressor_integration_tests::synapse_state;
use compressor_integration_tests::tools;

use libpq_support::*;

#[test]
fn passwords_and_places_from_the_environment_and_the_password_file() {
    let server = match PasswordServer::start() {
        Ok(server) => server,
        Err(Unavailable::MissingTools(why)) => {
            tools::prerequisite_missing(&format!("no PostgreSQL server binaries ({why})"));
            return;
        }
        Err(Unavailable::Failed(why)) => panic!("{why}"),
    };
    server
        .admin("postgres")
        .batch_execute(&format!(
            "CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'; \
             CREATE ROLE {PEER_ROLE} LOGIN"
        ))
        .expect("creating the role");
    server
        .admin("postgres")
        .batch_execute(&format!("CREATE DATABASE {DB} TEMPLATE synapse_template"))
        .expect("creating the database");
    let generated = data();
    let mut client = server.admin(DB);
    generated.write(&mut client).expect("writing the groups");
    let original = resolve_all(&generated.structure());
    let room = generated.rooms[0].room_id.as_str();
    let port = server.port();
    let port_text = port.to_string();
    let wrong_port = closed_port();
    let wrong_port_text = wrong_port.to_string();
    let socket_dir = server.socket_dir();
    let socket_dir = socket_dir.to_str().expect("UTF-8 path");

    let home = TempDir::new("libpq-home");
    let files = TempDir::new("libpq-files");
    let nowhere = files.path().join("no-such-passfile");
    let nowhere = nowhere.to_str().unwrap();
    // Lines that must not be used come around the right one: another
    // port, another database, and a catch-all after it.
    let passfile_text = format!(
        "# hostname:port:database:username:password\n\
         \n\
         127.0.0.1:{wrong_port}:*:{ROLE}:wrong-port\n\
         127.0.0.1:{port}:other_db:{ROLE}:wrong-db\n\
         localhost:{port}:{DB}:{ROLE}:{PASSWORD_ESCAPED}\n\
         127.0.0.1:*:*:{ROLE}:{PASSWORD_ESCAPED}\n\
         *:*:*:*:catch-all\n"
    );
    let passfile = files.path().join("pgpass");
    let passfile_str = passfile.to_str().unwrap();
    let bad_passfile = files.path().join("pgpass-wrong");
    write_passfile(&bad_passfile, "*:*:*:*:not-the-password\n", 0o600);
    let bad_passfile = bad_passfile.to_str().unwrap();

    let tcp = format!("host=127.0.0.1 port={port} user={ROLE} dbname={DB}");
    let socket = format!("host={socket_dir} port={port} user={ROLE} dbname={DB}");
    let at_tcp = format!("at 127.0.0.1:{port}:");
    let at_socket = format!("at socket {socket_dir}/.s.PGSQL.{port}:");
    let at_wrong = format!("at 127.0.0.1:{wrong_port}:");
    let password_in_p = format!("{tcp} password='{}'", PASSWORD.replace('\\', r"\\"));
    let port_in_p = format!("port={port}");
    let url_port_in_p = format!("postgresql://127.0.0.1:{port}");
    let env = |pairs: &[(&'static str, &str)]| -> Env {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };
    let place = |port: &str, more: &[(&'static str, &str)]| -> Env {
        let mut all = env(&[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", port),
            ("PGUSER", ROLE),
            ("PGDATABASE", DB),
        ]);
        all.extend(env(more));
        all
    };
    let no_password: Vec<&str> = vec![&at_tcp, "password"];
    let wrong_password: Vec<&str> = vec![&at_tcp, "password authentication failed", ROLE];
    let cases: Vec<Case> = vec![
        (
            "no password anywhere",
            Some(&tcp),
            env(&[("PGPASSFILE", nowhere)]),
            Some(no_password.clone()),
        ),
        (
            "password only in PGPASSWORD",
            Some(&tcp),
            env(&[("PGPASSFILE", nowhere), ("PGPASSWORD", PASSWORD)]),
            None,
        ),
        (
            "a wrong PGPASSWORD",
            Some(&tcp),
            env(&[("PGPASSFILE", nowhere), ("PGPASSWORD", "nope")]),
            Some(wrong_password.clone()),
        ),
        (
            "password only in PGPASSFILE (mode 0600)",
            Some(&tcp),
            env(&[("PGPASSFILE", passfile_str)]),
            None,
        ),
        (
            "a wrong password in PGPASSFILE",
            Some(&tcp),
            env(&[("PGPASSFILE", bad_passfile)]),
            Some(vec![
                &at_tcp,
                "password authentication failed",
                "password file",
            ]),
        ),
        (
            "-p's password wins over PGPASSWORD",
            Some(&password_in_p),
            env(&[("PGPASSFILE", nowhere), ("PGPASSWORD", "nope")]),
            None,
        ),
        (
            "socket, password file entry for localhost",
            Some(&socket),
            env(&[("PGPASSFILE", passfile_str)]),
            None,
        ),
        (
            "socket, no password",
            Some(&socket),
            env(&[("PGPASSFILE", nowhere)]),
            Some(vec![&at_socket, "password"]),
        ),
        (
            "place only in the environment, no -p",
            None,
            place(
                &port_text,
                &[("PGPASSWORD", PASSWORD), ("PGPASSFILE", nowhere)],
            ),
            None,
        ),
        (
            "place from the environment, password from the file, no -p",
            None,
            place(&port_text, &[("PGPASSFILE", passfile_str)]),
            None,
        ),
        (
            "a wrong PGPORT alone",
            None,
            place(
                &wrong_port_text,
                &[("PGPASSWORD", PASSWORD), ("PGPASSFILE", nowhere)],
            ),
            Some(vec![&at_wrong, "refused"]),
        ),
        (
            "-p's port wins over a wrong PGPORT",
            Some(&port_in_p),
            place(
                &wrong_port_text,
                &[("PGPASSWORD", PASSWORD), ("PGPASSFILE", nowhere)],
            ),
            None,
        ),
        (
            "-p's URL port wins over a wrong PGPORT",
            Some(&url_port_in_p),
            place(
                &wrong_port_text,
                &[("PGPASSWORD", PASSWORD), ("PGPASSFILE", nowhere)],
            ),
            None,
        ),
    ];

    let mut failures = Vec::new();
    let mut check = |name: String, ok: bool, detail: &dyn Fn() -> String| {
        eprintln!("{} {name}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures.push(format!("{name}\n{}", detail()));
        }
    };

    for tool in [COMPRESSOR, AUTO] {
        write_passfile(&passfile, &passfile_text, 0o600);
        for (what, conninfo, env, refusal) in &cases {
            let run = run(tool, *conninfo, room, env, home.path());
            let ok = match refusal {
                None => run.success(),
                Some(expected) => refused(&run, expected),
            };
            check(format!("{tool}: {what}"), ok, &|| run.describe());
            if let (true, Some(_)) = (ok, refusal) {
                eprintln!("      {}", run.error_lines()[0]);
            }
        }

        // ~/.pgpass when PGPASSFILE is unset.
        let default_file = home.path().join(".pgpass");
        write_passfile(&default_file, &passfile_text, 0o600);
        let run_home = run(tool, Some(&tcp), room, &Env::new(), home.path());
        check(
            format!("{tool}: password from ~/.pgpass"),
            run_home.success(),
            &|| run_home.describe(),
        );
        std::fs::remove_file(&default_file).expect("removing ~/.pgpass");

        // HOME unset: ~/.pgpass in the home directory the user database
        // gives, as libpq finds it.
        write_passfile(&home.path().join(".pgpass"), &passfile_text, 0o600);
        let mut args = vec!["-p", &tcp];
        args.extend(if tool == AUTO {
            vec!["-c", "60", "-n", "100"]
        } else {
            vec!["-r", room]
        });
        match run_without_home(tool, &args, home.path()) {
            Some(run_no_home) => check(
                format!("{tool}: password from ~/.pgpass with HOME unset"),
                run_no_home.success(),
                &|| run_no_home.describe(),
            ),
            None => tools::prerequisite_missing("unshare -m (a mount namespace) is not allowed"),
        }
        std::fs::remove_file(home.path().join(".pgpass")).expect("removing ~/.pgpass");

        // Peer authentication asks for no password: a failure is not the
        // password file's, though it has a line for every host.
        let peer = format!("host={socket_dir} port={port} user={PEER_ROLE} dbname={DB}");
        let run_peer = run(
            tool,
            Some(&peer),
            room,
            &env(&[("PGPASSFILE", passfile_str)]),
            home.path(),
        );
        check(
            format!("{tool}: a peer authentication failure does not blame the password file"),
            refused(
                &run_peer,
                &[&at_socket, "Peer authentication failed", PEER_ROLE],
            ) && !run_peer.stderr.contains("password file"),
            &|| run_peer.describe(),
        );

        // A file others may read is ignored, with one warning per run.
        write_passfile(&passfile, &passfile_text, 0o644);
        let run_open = run(
            tool,
            Some(&tcp),
            room,
            &env(&[("PGPASSFILE", passfile_str)]),
            home.path(),
        );
        let warnings = run_open
            .stderr
            .lines()
            .filter(|l| {
                l.contains("group or world access")
                    && l.contains(passfile_str)
                    && l.contains("0600")
            })
            .count();
        check(
            format!("{tool}: a password file with mode 0644 is refused with a warning"),
            refused(&run_open, &no_password) && warnings == 1,
            &|| run_open.describe(),
        );
        if warnings == 1 {
            let line = run_open
                .stderr
                .lines()
                .find(|l| l.contains("group or world"))
                .unwrap();
            eprintln!("      {line}");
        }
    }

    let states = synapse_state::all_states(&mut client, None).expect("reading states");
    check(
        "every group kept its state".to_string(),
        synapse_state::first_difference(&original, &states).is_none(),
        &|| synapse_state::first_difference(&original, &states).unwrap_or_default(),
    );
    let progress: i64 = client
        .query_one("SELECT count(*) FROM state_compressor_progress", &[])
        .map(|r| r.get(0))
        .unwrap_or(0);
    check(
        "the automatic tool ran and saved its progress".to_string(),
        progress == generated.rooms.len() as i64,
        &|| format!("{progress} rooms"),
    );
    drop(client);
    drop(server);
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn without_p_or_environment_the_tools_say_how_to_connect() {
    let home = TempDir::new("libpq-nothing");
    for tool in [COMPRESSOR, AUTO] {
        let run = run(tool, None, "!room:example.org", &Env::new(), home.path());
        tools::assert_user_error(&run);
        let line = run.error_lines()[0];
        assert!(
            line.contains("-p") && line.contains("PGHOST") && line.contains("PGDATABASE"),
            "{}",
            run.describe()
        );
        // An empty -p means the same as none.
        let run = self::run(
            tool,
            Some(""),
            "!room:example.org",
            &Env::new(),
            home.path(),
        );
        tools::assert_user_error(&run);
        assert!(
            run.error_lines()[0].contains("PGHOST"),
            "{}",
            run.describe()
        );
    }
}

#[test]
fn an_unreachable_socket_is_named() {
    let home = TempDir::new("libpq-socket");
    let dir = home.path().join("no-server-here");
    for tool in [COMPRESSOR, AUTO] {
        let conninfo = format!("host={} port=6543 dbname=x", dir.display());
        let run = run(
            tool,
            Some(&conninfo),
            "!room:example.org",
            &Env::new(),
            home.path(),
        );
        tools::assert_user_error(&run);
        let expected = format!(
            "could not connect to the database at socket {}/.s.PGSQL.6543: No such file or directory",
            dir.display()
        );
        assert!(
            run.error_lines()[0].contains(&expected),
            "{}",
            run.describe()
        );
    }
}

/// Runs `tool` while the test holds an exclusive lock on
/// `state_groups_state`, and returns the `application_name` of its session
/// that waits for the lock.
fn name_seen_while_waiting(
    db: &pg::TestDb,
    tool: &str,
    conninfo: &str,
    room: &str,
    env: &[(&str, &str)],
    home: &Path,
) -> String {
    let mut holder = db.client();
    holder
        .batch_execute("BEGIN; LOCK TABLE state_groups_state IN ACCESS EXCLUSIVE MODE")
        .expect("locking state_groups_state");
    let mut watcher = db.client();
    let (mut cmd, text) = command(tool, Some(conninfo), room, env, home);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {text}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let name = loop {
        let row = watcher
            .query_opt(
                "SELECT application_name FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND pid <> pg_backend_pid()",
                &[],
            )
            .expect("reading pg_stat_activity");
        if let Some(row) = row {
            break row.get::<_, String>(0);
        }
        if let Some(status) = child.try_wait().expect("checking the tool") {
            let run = finish(child, text);
            panic!(
                "the tool ended ({status}) without waiting for the lock\n{}",
                run.describe()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{text}: no session waited for the lock within two minutes");
        }
    };
    holder
        .batch_execute("ROLLBACK")
        .expect("releasing the lock");
    let run = finish(child, text);
    tools::assert_success(&run);
    name
}

#[test]
fn sessions_carry_the_tool_name_unless_told_otherwise() {
    let generated = data();
    let room = generated.rooms[0].room_id.as_str();
    let home = TempDir::new("libpq-appname");
    let cases: [NameCase; 6] = [
        (COMPRESSOR, false, &[], "synapse_compress_state"),
        (AUTO, false, &[], "synapse_auto_compressor"),
        (COMPRESSOR, false, &[("PGAPPNAME", "nightly")], "nightly"),
        (AUTO, false, &[("PGAPPNAME", "nightly")], "nightly"),
        (COMPRESSOR, true, &[("PGAPPNAME", "nightly")], "from-p"),
        (AUTO, true, &[], "from-p"),
    ];
    for (tool, name_in_p, env, expected) in cases {
        // A fresh database each time: where an earlier run finished, the
        // automatic tool has nothing to read.
        let db = pg::TestDb::create("libpq_appname");
        generated
            .write(&mut db.client())
            .expect("writing the groups");
        let conninfo = match (name_in_p, db.url().contains('?')) {
            (false, _) => db.url().to_string(),
            (true, false) => format!("{}?application_name=from-p", db.url()),
            (true, true) => format!("{}&application_name=from-p", db.url()),
        };
        let seen = name_seen_while_waiting(&db, tool, &conninfo, room, env, home.path());
        eprintln!("{tool} {env:?} {conninfo}: application_name {seen:?}");
        assert_eq!(seen, expected, "{tool} with {conninfo} and {env:?}");
    }
}
