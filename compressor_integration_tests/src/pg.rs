//! Test databases.
//!
//! Every test gets its own database, cloned from `synapse_template` (Synapse's
//! state schema, see `sql/synapse_state_schema.sql`) on the server whose base
//! URL (`postgresql://user@host:port`, no database name) is in the
//! `SYNAPSE_TEST_PG` environment variable. `scripts/test.sh` starts such a
//! server and sets the variable. Names are unique per process and thread, so
//! tests run in parallel; the database is dropped when the [`TestDb`] goes
//! out of scope (set `SYNAPSE_TEST_KEEP_DB=1` to keep it for debugging).

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Environment variable holding the test server's base URL.
pub const ENV_VAR: &str = "SYNAPSE_TEST_PG";

/// The database every test database is cloned from.
pub const TEMPLATE_DB: &str = "synapse_template";

/// Synapse's state schema (the same file docker-compose and the scripts load).
pub const SCHEMA_SQL: &str = include_str!("../sql/synapse_state_schema.sql");

/// Statement timeout for the harness's own connections, so that a damaged
/// tree (say, an edge cycle) fails a test instead of hanging it.
const HARNESS_STATEMENT_TIMEOUT: &str = "300s";

/// The test server's base URL, from `SYNAPSE_TEST_PG`.
///
/// # Panics
/// When the variable is unset, with a message saying how to run the tests.
pub fn base_url() -> String {
    match std::env::var(ENV_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => panic!(
            "{ENV_VAR} is not set: these tests need a PostgreSQL server. Run them with \
             `scripts/test.sh` (it starts a throwaway server), or set {ENV_VAR} to a base URL \
             such as postgresql://postgres@127.0.0.1:5432 of a server where you may create \
             databases."
        ),
    }
}

/// `base` with its database replaced by `db` (keeps any `?query`).
pub fn db_url(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (base, None),
    };
    // Drop an existing database name: the path after the authority.
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let head = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{head}/{db}?{query}"),
        None => format!("{head}/{db}"),
    }
}

/// Connects to `url` without TLS.
///
/// # Panics
/// When the connection fails.
pub fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A connection to the server's `postgres` database.
pub fn admin_client() -> Client {
    connect(&db_url(&base_url(), "postgres"))
}

/// A URL of a port on this machine that nobody listens on (one bound, then
/// let go): connecting is refused at once.
pub fn refused_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding a free port")
        .port();
    format!("postgresql://postgres@127.0.0.1:{port}/synapse?connect_timeout=10")
}

/// Polls the server (bounded, no sleeping) until a session whose
/// `application_name` is `name` waits for a lock.
///
/// # Panics
/// When none does within the bound.
pub fn wait_for_lock_wait(watcher: &mut Client, name: &str) {
    poll_until(
        watcher,
        "SELECT count(*) > 0 FROM pg_stat_activity \
         WHERE application_name = $1 AND wait_event_type = 'Lock'",
        &[&name],
        &format!("no session named {name} waited for a lock"),
    );
}

/// Polls the server (bounded, no sleeping) until `query` (one boolean)
/// returns true.
///
/// # Panics
/// With `never` when it does not within the bound.
pub fn poll_until(
    watcher: &mut Client,
    query: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
    never: &str,
) {
    for _ in 0..200_000 {
        let done: bool = watcher
            .query_one(query, params)
            .expect("polling the server")
            .get(0);
        if done {
            return;
        }
    }
    panic!("{never}");
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates `synapse_template` if the server lacks it (for servers not started
/// by `scripts/pg-throwaway.sh`, e.g. docker-compose's). Once per process;
/// serialised across processes by an advisory lock.
fn ensure_template() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut admin = admin_client();
        admin
            .execute("SELECT pg_advisory_lock(7240117)", &[])
            .expect("advisory lock");
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&TEMPLATE_DB])
            .expect("looking for the template database")
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
                    quote_ident(TEMPLATE_DB)
                ))
                .expect("creating the template database");
            let mut template = connect(&db_url(&base_url(), TEMPLATE_DB));
            template
                .batch_execute(SCHEMA_SQL)
                .expect("loading the schema into the template database");
            template.close().expect("closing the template connection");
        }
        admin
            .execute("SELECT pg_advisory_unlock(7240117)", &[])
            .expect("advisory unlock");
    });
}

/// A unique database name: `t_<pid>_<counter>_<hint>`, at most 63 bytes.
fn unique_name(hint: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("t_{}_{}_", std::process::id(), n);
    for c in hint.chars() {
        if name.len() >= 63 {
            break;
        }
        name.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        });
    }
    name
}

/// First key of the tools' room locks ("SCrm", big-endian); the second is
/// `hashtext(room_id)`.
pub const ROOM_LOCK_CLASS: i32 = i32::from_be_bytes(*b"SCrm");

/// Holds `room`'s lock on a session of its own (`room-lock-holder`), as
/// another compressor would, until the returned client is dropped.
pub fn hold_room_lock(db: &TestDb, room: &str) -> Client {
    let mut holder = db.client();
    holder
        .batch_execute("SET application_name = 'room-lock-holder'")
        .unwrap();
    holder
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&ROOM_LOCK_CLASS, &room],
        )
        .unwrap();
    holder
}

/// A database that exists for the lifetime of this value.
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// A fresh database with Synapse's state schema and no rows.
    pub fn create(name_hint: &str) -> TestDb {
        ensure_template();
        Self::create_with(name_hint, &format!("TEMPLATE {}", quote_ident(TEMPLATE_DB)))
    }

    /// A fresh database with no tables at all (UTF8, C collation, from
    /// `template0`), e.g. to load a dump that carries its own DDL.
    pub fn create_empty(name_hint: &str) -> TestDb {
        Self::create_with(
            name_hint,
            "TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'",
        )
    }

    fn create_with(name_hint: &str, options: &str) -> TestDb {
        let name = unique_name(name_hint);
        let mut admin = admin_client();
        admin
            .batch_execute(&format!("CREATE DATABASE {} {options}", quote_ident(&name)))
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let url = db_url(&base_url(), &name);
        TestDb { name, url }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL (what the binaries get as `-p`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the database (with a generous statement timeout).
    pub fn client(&self) -> Client {
        let mut client = connect(&self.url);
        client
            .batch_execute(&format!(
                "SET statement_timeout = '{HARNESS_STATEMENT_TIMEOUT}'"
            ))
            .expect("setting statement_timeout");
        client
    }

    /// How many rows `state_groups_state` holds now.
    pub fn state_rows(&self) -> i64 {
        self.client()
            .query_one("SELECT count(*) FROM state_groups_state", &[])
            .expect("counting state_groups_state")
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("SYNAPSE_TEST_KEEP_DB").is_some() {
            eprintln!("keeping test database {} ({})", self.name, self.url);
            return;
        }
        let drop_it = || -> Result<(), postgres::Error> {
            let mut admin = Client::connect(&db_url(&base_url(), "postgres"), NoTls)?;
            admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&self.name)
            ))
        };
        if let Err(e) = drop_it() {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// A login role that exists while this value lives (the server is shared:
/// its name is unique). Dropped with everything granted to it in `db`.
pub struct Role {
    name: String,
    db_url: String,
}

impl Role {
    pub fn create(db: &TestDb, hint: &str) -> Role {
        // Database names are unique and ASCII; roles have their own namespace.
        let name: String = format!("{}_{hint}", db.name()).chars().take(63).collect();
        admin_client()
            .batch_execute(&format!(
                "CREATE ROLE {} LOGIN PASSWORD 'readonly'",
                quote_ident(&name)
            ))
            .expect("creating a role");
        Role {
            name,
            db_url: db.url().to_string(),
        }
    }

    pub fn ident(&self) -> String {
        quote_ident(&self.name)
    }

    /// `db`'s URL, logging in as this role.
    pub fn url(&self) -> String {
        let (scheme, rest) = self.db_url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        format!("{scheme}://{}:readonly@{host}/{path}", self.name)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.db_url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP OWNED BY {}", self.ident()));
        }
        let _ = admin_client().batch_execute(&format!("DROP ROLE IF EXISTS {}", self.ident()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_url_replaces_or_appends_the_database() {
        assert_eq!(
            db_url("postgresql://postgres@127.0.0.1:5432", "x"),
            "postgresql://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            db_url("postgresql://u:p@h:1/old?sslmode=disable", "x"),
            "postgresql://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(db_url("postgresql://h/", "x"), "postgresql://h/x");
    }

    #[test]
    fn names_are_unique_and_valid() {
        let a = unique_name("Hello World! ünïcode and a very long hint that goes on and on and on");
        let b = unique_name("Hello World! ünïcode and a very long hint that goes on and on and on");
        assert_ne!(a, b);
        assert!(a.len() <= 63, "{a}");
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{a}"
        );
    }
}
