//! The automatic tool leaves connections for Synapse: `--jobs N` workers
//! and the one-worker run's loading connections are opened only while more
//! than `--reserve-connections` (10 by default) of the server's slots stay
//! free. Asking for more says so in one line and uses what is left; `--jobs`
//! with nothing left is refused.
//!
//! A throwaway server of its own with `max_connections = 24` (3 of them
//! kept for superusers), and four sessions held by the test (its own and
//! three standing for Synapse): with the tool's own connection, 24 - 3 - 5
//! = 16 slots are free when the tool counts, so 6 are spare over the
//! default reserve.

use std::time::{Duration, Instant};

use compressor_integration_tests::generator::{generate, GenConfig};
use compressor_integration_tests::tls_server::{ThrowawayServer, Unavailable};
use compressor_integration_tests::tools::{self, ToolRun};
use postgres::Client;

const AUTO: &str = "synapse_auto_compressor";
const DB: &str = "budget";

/// Client sessions open on the server now.
fn client_sessions(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .expect("counting sessions")
        .get(0)
}

/// Waits until the server counts exactly `expected` client sessions (a
/// closed session's backend leaves a moment after its client).
fn wait_for_sessions(client: &mut Client, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = client_sessions(client);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server still counts {now} sessions, not {expected}"
        );
    }
}

fn run(url: &str, extra: &[&str]) -> ToolRun {
    let mut args = vec!["-p", url, "-c", "20", "-n", "4", "--json", "--no-progress"];
    args.extend(extra);
    tools::run_bin(AUTO, &args)
}

#[test]
fn jobs_leave_connections_for_synapse() {
    let server = match ThrowawayServer::start(
        "conn-budget",
        &["--set".as_ref(), "max_connections=24".as_ref()],
    ) {
        Ok(server) => server,
        Err(Unavailable::MissingTools(why)) => {
            tools::prerequisite_missing(&format!("no PostgreSQL server binaries ({why})"));
            return;
        }
        Err(Unavailable::Failed(why)) => panic!("{why}"),
    };
    let mut client = server.create_database(DB);
    generate(&GenConfig {
        rooms: 8,
        groups_per_room: 60,
        max_delta_hops: 10,
        ..GenConfig::default()
    })
    .write(&mut client)
    .expect("writing the groups");
    let synapse: Vec<Client> = (0..3).map(|_| server.socket_client(DB)).collect();
    let url = format!("postgresql://postgres@127.0.0.1:{}/{DB}", server.port());

    // More workers than spare connections: one line, and the spare ones.
    wait_for_sessions(&mut client, 4);
    let asked = run(&url, &["--jobs", "8"]);
    let summary = tools::json_summary(&asked);
    assert_eq!(summary["workers"], 6, "{}", asked.describe());
    let said: Vec<&str> = asked
        .stderr
        .lines()
        .filter(|l| l.contains("8 workers wanted, 6 possible"))
        .collect();
    assert_eq!(said.len(), 1, "{}", asked.describe());
    assert!(
        said[0].contains("16 free") && said[0].contains("10 are kept for Synapse"),
        "{}",
        asked.describe()
    );

    // Within the budget: as many as asked, nothing said.
    wait_for_sessions(&mut client, 4);
    let within = run(&url, &["--jobs", "3"]);
    assert_eq!(tools::json_summary(&within)["workers"], 3);
    assert!(!within.stderr.contains("wanted"), "{}", within.describe());

    // A larger reserve leaves nothing: refused in one line.
    wait_for_sessions(&mut client, 4);
    let refused = run(&url, &["--jobs", "8", "--reserve-connections", "16"]);
    tools::assert_user_error(&refused);
    let line = refused.error_lines()[0];
    assert!(
        line.contains("--jobs 8") && line.contains("no connection to spare"),
        "{}",
        refused.describe()
    );

    // One worker loads ahead on two more connections, here on one.
    wait_for_sessions(&mut client, 4);
    let one = run(&url, &["--reserve-connections", "15"]);
    tools::assert_success(&one);
    assert!(
        one.stderr
            .contains("2 loading connections wanted, 1 possible"),
        "{}",
        one.describe()
    );
    drop(synapse);
}
