//! Connecting with TLS as `sslmode` asks, against a dedicated throwaway
//! server whose TCP port accepts only TLS (`hostssl`) and whose certificate,
//! signed by a test authority made here with `openssl`, names only
//! `localhost`; and connecting over a Unix socket.
//!
//! Every mode is tried with both tools and with both connection-string
//! forms (URL and key=value). Refusals must be one `error:` line naming the
//! reason, with nothing changed.

use compressor_integration_tests::check::{self, COMPRESSOR};
use compressor_integration_tests::generator::{generate, GenConfig, Generated};
use compressor_integration_tests::pg;
use compressor_integration_tests::structure::{self, resolve_all, Structure};
use compressor_integration_tests::synapse_state;
use compressor_integration_tests::tls_server::{TestCa, TlsServer, Unavailable};
use compressor_integration_tests::tools::{self, ToolRun};

const AUTO: &str = "synapse_auto_compressor";
const DB: &str = "tls_synapse";

fn data() -> Generated {
    generate(&GenConfig {
        rooms: 2,
        groups_per_room: 150,
        max_delta_hops: 10,
        ..GenConfig::default()
    })
}

/// How to reach the server: URL or key=value, host, sslmode, root cert.
struct Target<'a> {
    url_form: bool,
    host: &'a str,
    port: u16,
    sslmode: Option<&'a str>,
    root: Option<&'a std::path::Path>,
}

impl Target<'_> {
    fn conninfo(&self) -> String {
        let root = self.root.map(|p| p.to_str().expect("UTF-8 path"));
        if self.url_form {
            let mut query = Vec::new();
            if let Some(mode) = self.sslmode {
                query.push(format!("sslmode={mode}"));
            }
            if let Some(root) = root {
                query.push(format!("sslrootcert={root}"));
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            format!(
                "postgresql://postgres@{}:{}/{DB}{query}",
                self.host, self.port
            )
        } else {
            let mut s = format!(
                "host={} port={} user=postgres dbname={DB}",
                self.host, self.port
            );
            if let Some(mode) = self.sslmode {
                s.push_str(&format!(" sslmode={mode}"));
            }
            if let Some(root) = root {
                s.push_str(&format!(" sslrootcert='{root}'"));
            }
            s
        }
    }
}

/// Runs the manual tool (dry run, or `-c`) or the automatic tool.
fn run(conninfo: &str, tool: &str, room: &str, commit: bool) -> ToolRun {
    if tool == AUTO {
        tools::run_bin(AUTO, &["-p", conninfo, "-c", "60", "-n", "100"])
    } else if commit {
        tools::run_bin(COMPRESSOR, &["-p", conninfo, "-r", room, "-c"])
    } else {
        tools::run_bin(COMPRESSOR, &["-p", conninfo, "-r", room])
    }
}

fn stored(client: &mut postgres::Client) -> Structure {
    structure::structure(client, None).expect("reading the structure")
}

#[test]
fn sslmodes_against_a_tls_only_server() {
    let ca = match TestCa::create() {
        Ok(ca) => ca,
        Err(e) => {
            tools::prerequisite_missing(&format!("cannot make test certificates ({e})"));
            return;
        }
    };
    let server = match TlsServer::start(&ca) {
        Ok(server) => server,
        Err(Unavailable::MissingTools(why)) => {
            tools::prerequisite_missing(&format!("no PostgreSQL server binaries ({why})"));
            return;
        }
        Err(Unavailable::Failed(why)) => panic!("{why}"),
    };
    let generated = data();
    let mut client = server.create_database(DB);
    generated.write(&mut client).expect("writing the groups");
    let original = resolve_all(&generated.structure());
    let rooms: Vec<&str> = generated.rooms.iter().map(|r| r.room_id.as_str()).collect();
    let port = server.port();
    let (ca_cert, other_ca) = (ca.ca_cert(), ca.other_ca_cert());

    let mut failures = Vec::new();
    let mut check = |name: String, ok: bool, detail: &dyn Fn() -> String| {
        eprintln!("{} {name}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures.push(format!("{name}\n{}", detail()));
        }
    };

    // Refused: one error line with the reason, exit 1, nothing changed.
    let refusals: Vec<(Target, &[&str])> = vec![
        // Another authority.
        (
            Target {
                url_form: true,
                host: "localhost",
                port,
                sslmode: Some("verify-full"),
                root: Some(&other_ca),
            },
            &[
                "certificate verify failed",
                "unable to get local issuer certificate",
            ],
        ),
        (
            Target {
                url_form: false,
                host: "localhost",
                port,
                sslmode: Some("verify-ca"),
                root: Some(&other_ca),
            },
            &[
                "certificate verify failed",
                "unable to get local issuer certificate",
            ],
        ),
        // The right authority, but the certificate does not name 127.0.0.1.
        (
            Target {
                url_form: true,
                host: "127.0.0.1",
                port,
                sslmode: Some("verify-full"),
                root: Some(&ca_cert),
            },
            &["certificate verify failed", "IP address mismatch"],
        ),
        (
            Target {
                url_form: false,
                host: "127.0.0.1",
                port,
                sslmode: Some("verify-full"),
                root: Some(&ca_cert),
            },
            &["certificate verify failed", "IP address mismatch"],
        ),
        // No TLS where the server demands it.
        (
            Target {
                url_form: true,
                host: "127.0.0.1",
                port,
                sslmode: Some("disable"),
                root: None,
            },
            &["could not connect", "no encryption"],
        ),
        (
            Target {
                url_form: false,
                host: "localhost",
                port,
                sslmode: Some("disable"),
                root: None,
            },
            &["could not connect", "no encryption"],
        ),
    ];
    let before = stored(&mut client);
    for (target, expected) in &refusals {
        let conninfo = target.conninfo();
        for tool in [COMPRESSOR, AUTO] {
            let run = run(&conninfo, tool, rooms[0], true);
            let lines = run.error_lines();
            let ok = run.status.code() == Some(1)
                && lines.len() == 1
                && expected.iter().all(|e| lines[0].contains(e))
                && !run.stderr.contains("panicked");
            check(
                format!("{tool} refuses {conninfo:?} with {expected:?}"),
                ok,
                &|| run.describe(),
            );
            if ok {
                eprintln!("      {}", lines[0]);
            }
        }
    }
    check(
        "refused runs changed nothing".to_string(),
        stored(&mut client) == before,
        &|| String::new(),
    );

    // Accepted (dry runs of the manual tool: connecting is the point).
    let accepted = [
        // The certificate is not checked.
        Target {
            url_form: true,
            host: "127.0.0.1",
            port,
            sslmode: Some("require"),
            root: None,
        },
        Target {
            url_form: false,
            host: "localhost",
            port,
            sslmode: Some("require"),
            root: None,
        },
        // TLS when the server offers it (the default is prefer).
        Target {
            url_form: true,
            host: "127.0.0.1",
            port,
            sslmode: Some("prefer"),
            root: None,
        },
        Target {
            url_form: false,
            host: "127.0.0.1",
            port,
            sslmode: Some("allow"),
            root: None,
        },
        Target {
            url_form: true,
            host: "127.0.0.1",
            port,
            sslmode: None,
            root: None,
        },
        // verify-ca checks the authority, not the name.
        Target {
            url_form: true,
            host: "127.0.0.1",
            port,
            sslmode: Some("verify-ca"),
            root: Some(&ca_cert),
        },
        Target {
            url_form: false,
            host: "127.0.0.1",
            port,
            sslmode: Some("verify-ca"),
            root: Some(&ca_cert),
        },
        Target {
            url_form: true,
            host: "localhost",
            port,
            sslmode: Some("verify-full"),
            root: Some(&ca_cert),
        },
    ];
    for target in &accepted {
        let conninfo = target.conninfo();
        let run = run(&conninfo, COMPRESSOR, rooms[0], false);
        let ok = run.success();
        check(format!("dry run over {conninfo:?}"), ok, &|| run.describe());
    }

    // verify-full with the right authority and name: both tools compress.
    let full_url = Target {
        url_form: true,
        host: "localhost",
        port,
        sslmode: Some("verify-full"),
        root: Some(&ca_cert),
    };
    let full_kv = Target {
        url_form: false,
        ..full_url
    };
    let manual = run(&full_url.conninfo(), COMPRESSOR, rooms[0], true);
    check(
        "manual -c over verify-full".to_string(),
        manual.success(),
        &|| manual.describe(),
    );
    let auto = run(&full_kv.conninfo(), AUTO, rooms[0], true);
    check(
        "auto over verify-full (key=value)".to_string(),
        auto.success(),
        &|| auto.describe(),
    );
    let after = stored(&mut client);
    check(
        "the compressed database is smaller".to_string(),
        structure::row_count(&after) < structure::row_count(&before),
        &|| String::new(),
    );
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
        "the automatic tool saved its progress".to_string(),
        progress == rooms.len() as i64,
        &|| format!("{progress} rooms"),
    );

    drop(client);
    drop(server);
    assert!(
        failures.is_empty(),
        "{} TLS case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The main test server's Unix socket directory and port, when the socket
/// is reachable from here (not, e.g., for a server in a container).
fn main_server_socket() -> Option<(String, String)> {
    let mut admin = pg::admin_client();
    let dirs: String = admin
        .query_one("SHOW unix_socket_directories", &[])
        .ok()?
        .get(0);
    let port: String = admin.query_one("SHOW port", &[]).ok()?.get(0);
    dirs.split(',')
        .map(str::trim)
        .find(|dir| {
            std::path::Path::new(dir)
                .join(format!(".s.PGSQL.{port}"))
                .exists()
        })
        .map(|dir| (dir.to_string(), port))
}

#[test]
fn unix_socket_connections_in_key_value_form() {
    let Some((socket_dir, port)) = main_server_socket() else {
        tools::prerequisite_missing("the test server's Unix socket is not reachable here");
        return;
    };
    let db = pg::TestDb::create("unix_socket");
    let generated = data();
    generated
        .write(&mut db.client())
        .expect("writing the groups");
    let before = check::snapshot(&mut db.client());
    let user: String = db
        .client()
        .query_one("SELECT current_user", &[])
        .unwrap()
        .get(0);
    let base = format!(
        "host={socket_dir} port={port} user={user} dbname={}",
        db.name()
    );
    let room = generated.rooms[0].room_id.as_str();

    // libpq never uses TLS over a socket, whatever sslmode says.
    for mode in [
        "",
        " sslmode=disable",
        " sslmode=require",
        " sslmode=verify-full",
    ] {
        let run = tools::run_bin(COMPRESSOR, &["-p", &format!("{base}{mode}"), "-r", room]);
        tools::assert_success(&run);
    }
    tools::assert_success(&tools::run_bin(
        COMPRESSOR,
        &["-p", &base, "-r", room, "-c"],
    ));
    let run = tools::run_bin(
        AUTO,
        &[
            "-p",
            &format!("{base} sslmode=require"),
            "-c",
            "60",
            "-n",
            "100",
        ],
    );
    tools::assert_finished_all(&run);
    let after = check::snapshot(&mut db.client());
    check::assert_same_states(&before.states, &after.states, "over the Unix socket");
    assert!(
        structure::row_count(&after.structure) < structure::row_count(&before.structure),
        "nothing was compressed"
    );
}
