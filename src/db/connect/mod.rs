//! Connecting to PostgreSQL the way libpq does: from a URL or key=value
//! connection string, completed by libpq's environment variables and
//! password file, with TLS as `sslmode` asks.
//!
//! Precedence is libpq's: a value in the connection string wins, then the
//! environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`,
//! `PGCONNECT_TIMEOUT`, `PGAPPNAME`), then the defaults: the Unix socket in
//! [`DEFAULT_SOCKET_DIR`], port 5432, the operating-system user, a database
//! named like the user, and the tool's name as `application_name`. A
//! password still missing is looked up per host in the password file
//! ([`super::pgpass`]). Each host is tried in turn, and a failure names
//! every host or socket tried.
//!
//! The `postgres` crate only knows `sslmode` disable, prefer and require and
//! ignores certificates, so `sslmode`, `sslrootcert`, `sslcert` and `sslkey`
//! are taken out of the string here and turned into an OpenSSL connector that
//! checks the server's certificate (verify-ca) and host name (verify-full)
//! the way libpq does.
//!
//! Parts: `text` reads the connection string, `environment` what the process
//! gives (variables, user), `tls` the modes and the connector; this file
//! combines them by libpq's precedence and connects.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use postgres::config::{Host, SslMode as PgSslMode};
use postgres::{Client, Config};
use postgres_openssl::MakeTlsConnector;

use super::pgpass;
use environment::Environment;
use text::{split_key_values, split_url};
use tls::make_connector;
pub use tls::{SslMode, TlsSettings};

mod environment;
#[cfg(test)]
mod tests;
mod text;
mod tls;
use crate::error::{one_line, Error, Result};

/// Where libpq looks for the server's socket when no host is given (as
/// built by Debian and Ubuntu, where Synapse's PostgreSQL usually runs).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// PostgreSQL's port when none is given.
pub const DEFAULT_PORT: u16 = 5432;

/// The `application_name` of the manual tool's connections (and of any
/// connection made with [`connect`]).
pub const DEFAULT_APPLICATION_NAME: &str = "synapse_compress_state";

/// How long to wait for a server when neither the connection string nor
/// `PGCONNECT_TIMEOUT` say (libpq would wait forever: a cron job should not).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection string completed by the environment and the defaults.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// Every host, user, database... to use (the password may be missing).
    pub config: Config,
    pub tls: TlsSettings,
    /// The password file consulted for hosts without a password.
    pub passfile: Option<PathBuf>,
    /// The limit on each server's whole connection start-up
    /// (`connect_timeout`), if any.
    pub timeout: Option<Duration>,
}

/// One server to try: a host (or socket directory) and its port.
#[derive(Clone, Debug)]
pub struct Target {
    /// The settings for this server alone.
    pub config: Config,
    /// What was tried, for messages: `host:port` or `socket PATH`.
    pub description: String,
    /// The host name the password file is searched for.
    passfile_host: String,
}

/// The keys handled here rather than by the `postgres` crate.
pub(super) const OWN_KEYS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
];

impl FromStr for ConnectionSettings {
    type Err = Error;

    /// Parses `text` completed by this process's environment.
    fn from_str(text: &str) -> Result<Self> {
        ConnectionSettings::resolve(text, DEFAULT_APPLICATION_NAME, &Environment::current())
    }
}

/// The settings handled here rather than by the `postgres` crate (TLS and
/// the connect timeout): from the connection string, else the environment,
/// else the defaults.
fn own_settings(
    pairs: Vec<(String, String)>,
    env: &Environment,
) -> Result<(TlsSettings, Option<Duration>)> {
    let mut mode = None;
    let mut root_cert = None;
    let mut client_cert = None;
    let mut client_key = None;
    let mut timeout = None;
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => mode = Some(value.parse()?),
            "sslrootcert" => root_cert = Some(value),
            "sslcert" => client_cert = Some(value),
            "sslkey" => client_key = Some(value),
            "connect_timeout" => timeout = Some(parse_timeout(&value, "connect_timeout")?),
            _ => unreachable!("only our own keys are split out"),
        }
    }
    let env_owned = |name: &str| env.get(name).map(str::to_owned);
    let mode = match (mode, env.get("PGSSLMODE")) {
        (Some(mode), _) => mode,
        (None, Some(value)) => value
            .parse()
            .map_err(|e| Error::BadConnectionString(format!("PGSSLMODE: {e}")))?,
        (None, None) => SslMode::Prefer,
    };
    let tls = TlsSettings {
        mode,
        root_cert: root_cert.or_else(|| env_owned("PGSSLROOTCERT")),
        client_cert: client_cert.or_else(|| env_owned("PGSSLCERT")),
        client_key: client_key.or_else(|| env_owned("PGSSLKEY")),
    };
    let timeout = match (timeout, env.get("PGCONNECT_TIMEOUT")) {
        (Some(timeout), _) => timeout,
        (None, Some(value)) => parse_timeout(value, "PGCONNECT_TIMEOUT")?,
        (None, None) => Some(DEFAULT_CONNECT_TIMEOUT),
    };

    Ok((tls, timeout))
}

/// Fills in what the connection string left out, from libpq's environment
/// variables, then libpq's defaults (the socket directory, port 5432, the
/// operating-system user, a database named like the user, the tool's name).
fn from_environment(config: &mut Config, env: &Environment, application_name: &str) -> Result<()> {
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        match env.get("PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    if host.is_empty() {
                        config.host(DEFAULT_SOCKET_DIR);
                    } else {
                        config.host(host);
                    }
                }
            }
            None => {
                config.host(DEFAULT_SOCKET_DIR);
            }
        }
    }
    if config.get_ports().is_empty() {
        match env.get("PGPORT") {
            Some(ports) => {
                for port in ports.split(',') {
                    config.port(if port.is_empty() {
                        DEFAULT_PORT
                    } else {
                        port.trim().parse().map_err(|_| {
                            Error::BadConnectionString(format!(
                                "PGPORT must be a port number, not {port:?}"
                            ))
                        })?
                    });
                }
            }
            None => {
                config.port(DEFAULT_PORT);
            }
        }
    }
    if config.get_user().is_none() {
        if let Some(user) = env.get("PGUSER").or(env.os_user.as_deref()) {
            config.user(user);
        }
    }
    if config.get_password().is_none() {
        if let Some(password) = env.get("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_dbname().is_none() {
        let dbname = env
            .get("PGDATABASE")
            .or(config.get_user())
            .map(str::to_owned);
        if let Some(dbname) = dbname {
            config.dbname(&dbname);
        }
    }
    if config.get_application_name().is_none() {
        config.application_name(env.get("PGAPPNAME").unwrap_or(application_name));
    }
    Ok(())
}

/// libpq's reading of a `connect_timeout` value: zero or less is no limit,
/// and the shortest limit is two seconds.
fn parse_timeout(value: &str, origin: &str) -> Result<Option<Duration>> {
    let seconds: i64 = value.trim().parse().map_err(|_| {
        Error::BadConnectionString(format!(
            "{origin} must be a whole number of seconds, not {value:?}"
        ))
    })?;
    Ok((seconds > 0).then(|| Duration::from_secs(seconds.max(2) as u64)))
}

impl ConnectionSettings {
    /// Parses `text` (a URL, key=value pairs, or empty) and completes it
    /// from `env` and the defaults, libpq's way; `application_name` is the
    /// default for that setting.
    pub fn resolve(
        text: &str,
        application_name: &str,
        env: &Environment,
    ) -> Result<ConnectionSettings> {
        if text.trim().is_empty() && !env.names_a_database() {
            return Err(Error::InvalidArgument(
                "no database to connect to: give -p/--postgres-url (\"postgresql://user@host/db\" \
                 or \"host=... dbname=...\"), or set PGHOST, PGPORT, PGUSER or PGDATABASE"
                    .to_owned(),
            ));
        }
        let (rest, pairs) = if text.starts_with("postgres://") || text.starts_with("postgresql://")
        {
            split_url(text)?
        } else {
            split_key_values(text)?
        };
        let (tls, timeout) = own_settings(pairs, env)?;
        let mut config = Config::from_str(&rest).map_err(|e| {
            // The postgres crate's message already starts with our prefix.
            let text = one_line(&e);
            let text = text
                .strip_prefix("invalid connection string: ")
                .unwrap_or(&text);
            Error::BadConnectionString(text.to_owned())
        })?;
        from_environment(&mut config, env, application_name)?;
        if let Some(timeout) = timeout {
            config.connect_timeout(timeout);
        }
        let targets = config.get_hosts().len().max(config.get_hostaddrs().len());
        let ports = config.get_ports().len();
        if ports != 1 && ports != targets {
            return Err(Error::BadConnectionString(format!(
                "{ports} ports for {targets} hosts (give one port, or one per host)"
            )));
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let passfile = pgpass::default_path(env.get("PGPASSFILE"), env.get("HOME"));
        Ok(ConnectionSettings {
            config,
            tls,
            passfile,
            timeout,
        })
    }

    /// The servers to try, in order, each with its own settings.
    pub fn targets(&self) -> Vec<Target> {
        let hosts = self.config.get_hosts();
        let addrs = self.config.get_hostaddrs();
        let ports = self.config.get_ports();
        (0..hosts.len().max(addrs.len()))
            .map(|i| {
                let host = hosts.get(i);
                let addr = addrs.get(i).copied();
                let port = ports
                    .get(i)
                    .or(ports.first())
                    .copied()
                    .unwrap_or(DEFAULT_PORT);
                target(&self.config, host, addr, port)
            })
            .collect()
    }

    /// Opens a connection to the first target that accepts one.
    pub fn connect(&self) -> Result<Client> {
        let connector = make_connector(&self.tls)?;
        let mut failures = Vec::new();
        for mut target in self.targets() {
            let mut password_file = None;
            if target.config.get_password().is_none() {
                if let Some(file) = &self.passfile {
                    let wanted = pgpass::Wanted {
                        host: &target.passfile_host,
                        port: target.config.get_ports()[0],
                        database: target.config.get_dbname().unwrap_or_default(),
                        user: target.config.get_user().unwrap_or_default(),
                    };
                    if let Some(password) = pgpass::lookup(file, &wanted) {
                        target.config.password(password);
                        password_file = Some(file);
                    }
                }
            }
            match connect_within(target.config, connector.clone(), self.timeout) {
                Ok(client) => return Ok(client),
                Err(Attempt::TimedOut) => {
                    failures.push(format!("{}: timeout expired", target.description));
                }
                Err(Attempt::NoThread(e)) => {
                    failures.push(format!(
                        "{}: cannot start a thread: {e}",
                        target.description
                    ));
                }
                Err(Attempt::Failed(e)) => {
                    let mut reason = failure_reason(&e);
                    // Only a refused password is the password file's doing
                    // (peer or ident failures, a missing pg_hba.conf line
                    // are not, though a password was found for the host).
                    let password_refused =
                        e.code() == Some(&postgres::error::SqlState::INVALID_PASSWORD);
                    if let (Some(file), true) = (password_file, password_refused) {
                        reason.push_str(&format!(
                            " (password taken from the password file \"{}\")",
                            file.display()
                        ));
                    }
                    failures.push(format!("{}: {reason}", target.description));
                }
            }
        }
        Err(Error::Connect(failures.join("; at ")))
    }
}

/// How one connection attempt ended without a connection.
enum Attempt {
    Failed(postgres::Error),
    /// The whole start-up took longer than the connect timeout.
    TimedOut,
    /// The thread that would have tried could not start.
    NoThread(std::io::Error),
}

/// Connects with `config` within `timeout` for the whole start-up (TCP,
/// TLS, authentication), as libpq's `connect_timeout` does: the
/// `postgres` crate's own timeout only bounds the TCP connect, and a
/// server that accepts and then says nothing (a dead backend behind a
/// proxy or tunnel) would hold the tool forever. The attempt runs on a
/// thread of its own; one that times out is left behind, blocked until
/// the server answers or closes (its connection, if one ever comes, is
/// dropped at once).
fn connect_within(
    config: Config,
    connector: MakeTlsConnector,
    timeout: Option<Duration>,
) -> std::result::Result<Client, Attempt> {
    let Some(limit) = timeout else {
        return config.connect(connector).map_err(Attempt::Failed);
    };
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("connect".to_owned())
        .spawn(move || {
            // The receiver is gone when the attempt timed out.
            let _ = sender.send(config.connect(connector));
        });
    if let Err(e) = spawned {
        return Err(Attempt::NoThread(e));
    }
    match receiver.recv_timeout(limit) {
        Ok(result) => result.map_err(Attempt::Failed),
        Err(_) => Err(Attempt::TimedOut),
    }
}

/// The settings of `base` for one host alone (the `postgres` crate cannot
/// remove hosts from a configuration, so the others are copied over).
fn target(base: &Config, host: Option<&Host>, addr: Option<IpAddr>, port: u16) -> Target {
    let mut config = Config::new();
    if let Some(user) = base.get_user() {
        config.user(user);
    }
    if let Some(password) = base.get_password() {
        config.password(password);
    }
    if let Some(dbname) = base.get_dbname() {
        config.dbname(dbname);
    }
    if let Some(options) = base.get_options() {
        config.options(options);
    }
    if let Some(name) = base.get_application_name() {
        config.application_name(name);
    }
    config.ssl_mode(base.get_ssl_mode());
    config.ssl_negotiation(base.get_ssl_negotiation());
    if let Some(timeout) = base.get_connect_timeout() {
        config.connect_timeout(*timeout);
    }
    if let Some(timeout) = base.get_tcp_user_timeout() {
        config.tcp_user_timeout(*timeout);
    }
    config.keepalives(base.get_keepalives());
    config.keepalives_idle(base.get_keepalives_idle());
    if let Some(interval) = base.get_keepalives_interval() {
        config.keepalives_interval(interval);
    }
    if let Some(retries) = base.get_keepalives_retries() {
        config.keepalives_retries(retries);
    }
    config.target_session_attrs(base.get_target_session_attrs());
    config.channel_binding(base.get_channel_binding());
    config.port(port);
    if let Some(addr) = addr {
        config.hostaddr(addr);
    }
    let addr_text = addr.map(|a| a.to_string());
    let (description, passfile_host) = match host {
        #[cfg(unix)]
        Some(Host::Unix(dir)) => {
            config.host_path(dir);
            // libpq never negotiates TLS over a Unix socket, whatever
            // sslmode says (PostgreSQL does not offer it there); the
            // postgres crate would ask and fail.
            config.ssl_mode(PgSslMode::Disable);
            (
                format!("socket {}", dir.join(format!(".s.PGSQL.{port}")).display()),
                // libpq looks up every socket connection as `localhost`.
                "localhost".to_owned(),
            )
        }
        Some(Host::Tcp(name)) => {
            config.host(name);
            let shown = match &addr_text {
                Some(addr) => format!("{name} ({addr})"),
                None => name.clone(),
            };
            (with_port(&shown, port), name.clone())
        }
        None => {
            let addr = addr_text.unwrap_or_default();
            (with_port(&addr, port), addr)
        }
    };
    Target {
        config,
        description,
        passfile_host,
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn with_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.contains(' ') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why connecting failed, in words for an admin: the server's message, or
/// the operating system's without its error number.
fn failure_reason(err: &postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_owned();
    }
    let text = one_line(err);
    if text.contains("password missing") {
        return "the server asks for a password and none was given (in -p, PGPASSWORD or \
                the password file)"
            .to_owned();
    }
    let text = text
        .strip_prefix("error connecting to server: ")
        .unwrap_or(&text);
    strip_os_error_numbers(text)
}

/// Removes ` (os error N)` from an I/O error's text.
fn strip_os_error_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (os error ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " (os error ".len()..];
        match after.find(')') {
            Some(end) if after[..end].chars().all(|c| c.is_ascii_digit()) => {
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(" (os error ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses `text` and connects, naming the connections after the manual tool
/// unless the string or `PGAPPNAME` name them.
pub fn connect(text: &str) -> Result<Client> {
    connect_as(text, DEFAULT_APPLICATION_NAME)
}

/// Parses `text`, completes it from the environment as libpq does and
/// connects; `application_name` is the name the server shows for the
/// session unless the string or `PGAPPNAME` give one.
pub fn connect_as(text: &str, application_name: &str) -> Result<Client> {
    ConnectionSettings::resolve(text, application_name, &Environment::current())?.connect()
}
