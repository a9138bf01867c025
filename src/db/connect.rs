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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres::config::{Host, SslMode as PgSslMode};
use postgres::{Client, Config};
use postgres_openssl::MakeTlsConnector;

use super::pgpass;
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

/// The environment variables read, besides `HOME` for `~/.pgpass`.
const VARIABLES: [&str; 13] = [
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGCONNECT_TIMEOUT",
    "PGAPPNAME",
    "PGPASSFILE",
    "HOME",
];

/// What libpq takes from the process: its environment variables and the
/// operating-system user name. A value of its own so tests can give one.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    os_user: Option<String>,
}

impl Environment {
    /// This process's environment. Empty variables count as unset.
    pub fn current() -> Environment {
        let vars = VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        Environment {
            vars,
            os_user: whoami::username().ok(),
        }
    }

    /// An environment made of `vars` (for tests).
    pub fn from_vars(vars: &[(&str, &str)], os_user: Option<&str>) -> Environment {
        Environment {
            vars: vars
                .iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            os_user: os_user.map(str::to_owned),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// True when the environment says which server or database to use, so
    /// that an empty connection string is not a mistake.
    pub fn names_a_database(&self) -> bool {
        ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE"]
            .iter()
            .any(|name| self.get(name).is_some())
    }
}

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::BadConnectionString(format!(
                    "unknown sslmode {other:?} (expected disable, allow, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }
}

/// The TLS settings taken out of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// A connection string completed by the environment and the defaults.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// Every host, user, database... to use (the password may be missing).
    pub config: Config,
    pub tls: TlsSettings,
    /// The password file consulted for hosts without a password.
    pub passfile: Option<PathBuf>,
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
const OWN_KEYS: [&str; 5] = [
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

        let mut config = Config::from_str(&rest).map_err(|e| {
            // The postgres crate's message already starts with our prefix.
            let text = one_line(&e);
            let text = text
                .strip_prefix("invalid connection string: ")
                .unwrap_or(&text);
            Error::BadConnectionString(text.to_owned())
        })?;
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
            match target.config.connect(connector.clone()) {
                Ok(client) => return Ok(client),
                Err(e) => {
                    let mut reason = failure_reason(&e);
                    if let (Some(file), true) = (password_file, e.as_db_error().is_some()) {
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

/// Fails with the operating system's reason (rather than OpenSSL's error
/// stack) when a certificate or key file named in the connection string
/// cannot be read.
fn check_readable(what: &str, path: &str) -> Result<()> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| Error::Tls(format!("cannot read {what} {path:?}: {e}")))
}

fn make_connector(tls: &TlsSettings) -> Result<MakeTlsConnector> {
    for (what, path) in [
        ("sslrootcert", &tls.root_cert),
        ("sslcert", &tls.client_cert),
        ("sslkey", &tls.client_key),
    ] {
        // libpq ignores sslrootcert unless certificates are checked.
        let used =
            what != "sslrootcert" || matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull);
        if let (Some(path), true) = (path, used) {
            check_readable(what, path)?;
        }
    }
    let tls_err = |e: openssl::error::ErrorStack| Error::Tls(e.to_string());
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(tls_err)?;
    // Like libpq: `require` with an explicit root certificate checks the
    // chain as verify-ca does.
    let verify = matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        || (tls.mode == SslMode::Require && tls.root_cert.is_some());
    if verify {
        builder.set_verify(SslVerifyMode::PEER);
        match &tls.root_cert {
            Some(path) => builder
                .set_ca_file(path)
                .map_err(|e| Error::Tls(format!("cannot load sslrootcert {path:?}: {e}")))?,
            None => {
                let default = std::env::var_os("HOME")
                    .map(|home| std::path::Path::new(&home).join(".postgresql/root.crt"));
                match default.filter(|p| p.exists()) {
                    Some(path) => builder
                        .set_ca_file(&path)
                        .map_err(|e| Error::Tls(format!("cannot load {}: {e}", path.display())))?,
                    None => builder.set_default_verify_paths().map_err(tls_err)?,
                }
            }
        }
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    if let Some(cert) = &tls.client_cert {
        builder
            .set_certificate_chain_file(cert)
            .map_err(|e| Error::Tls(format!("cannot load sslcert {cert:?}: {e}")))?;
    }
    if let Some(key) = &tls.client_key {
        builder
            .set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| Error::Tls(format!("cannot load sslkey {key:?}: {e}")))?;
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    let check_host = tls.mode == SslMode::VerifyFull;
    connector.set_callback(move |config, _domain| {
        config.set_verify_hostname(check_host);
        Ok(())
    });
    Ok(connector)
}

/// Splits the parameters handled here (TLS, `connect_timeout`) out of a
/// URL's query string.
fn split_url(url: &str) -> Result<(String, Vec<(String, String)>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if OWN_KEYS.contains(&key) {
            tls.push((key.to_owned(), percent_decode(value)?));
        } else {
            kept.push(part);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::BadConnectionString(format!("bad percent-encoding in {text:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::BadConnectionString(format!("{text:?} is not UTF-8 once decoded")))
}

/// Splits the parameters handled here out of a `key=value key='quoted value'` string,
/// keeping the other pairs byte for byte.
fn split_key_values(text: &str) -> Result<(String, Vec<(String, String)>)> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut kept = String::new();
    let mut tls = Vec::new();
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(Error::BadConnectionString(format!(
                "expected key=value pairs or a postgresql:// URL, found {key:?} without a value"
            )));
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(Error::BadConnectionString(format!(
                            "unterminated quoted value for {key:?}"
                        )))
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        if OWN_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            kept.extend(&chars[start..i]);
            kept.push(' ');
        }
    }
    Ok((kept.trim_end().to_owned(), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with no environment at all, as user `me`.
    fn parse(text: &str) -> Result<ConnectionSettings> {
        parse_in(text, &[])
    }

    fn parse_in(text: &str, vars: &[(&str, &str)]) -> Result<ConnectionSettings> {
        ConnectionSettings::resolve(text, "tool", &Environment::from_vars(vars, Some("me")))
    }

    fn descriptions(s: &ConnectionSettings) -> Vec<String> {
        s.targets().into_iter().map(|t| t.description).collect()
    }

    #[test]
    fn takes_tls_settings_out_of_urls() {
        let s = parse(
            "postgresql://u:p@db.example.org:5433/synapse?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.tls.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(s.config.get_dbname(), Some("synapse"));
        assert_eq!(s.config.get_application_name(), Some("x"));
        assert_eq!(s.config.get_ssl_mode(), PgSslMode::Require);
        assert_eq!(descriptions(&s), ["db.example.org:5433"]);
    }

    #[test]
    fn takes_tls_settings_out_of_key_values() {
        let s = parse(
            "user=postgres dbname='my db' host=/var/run/postgresql sslmode=disable sslrootcert='/a b'",
        )
        .unwrap();
        assert_eq!(s.tls.mode, SslMode::Disable);
        assert_eq!(s.tls.root_cert.as_deref(), Some("/a b"));
        assert_eq!(s.config.get_dbname(), Some("my db"));
        assert_eq!(s.config.get_ssl_mode(), PgSslMode::Disable);
    }

    #[test]
    fn never_asks_for_tls_over_a_unix_socket() {
        for mode in ["require", "verify-full"] {
            let s = parse(&format!("host=/run/postgresql dbname=x sslmode={mode}")).unwrap();
            let modes: Vec<_> = s
                .targets()
                .iter()
                .map(|t| t.config.get_ssl_mode())
                .collect();
            assert_eq!(modes, [PgSslMode::Disable], "{mode}");
        }
        let s = parse("host=db.example.org,/run/postgresql sslmode=require").unwrap();
        let modes: Vec<_> = s
            .targets()
            .iter()
            .map(|t| t.config.get_ssl_mode())
            .collect();
        assert_eq!(modes, [PgSslMode::Require, PgSslMode::Disable]);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "not a url",
            "host=x sslmode=sometimes",
            "host='x",
            "postgresql://h/db?sslmode=bogus",
            "host=a,b,c port=1,2",
            "host=x connect_timeout=soon",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        for (name, value) in [
            ("PGPORT", "fifty"),
            ("PGSSLMODE", "sometimes"),
            ("PGCONNECT_TIMEOUT", "x"),
        ] {
            assert!(
                parse_in("", &[("PGHOST", "h"), (name, value)]).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn libpq_defaults_fill_what_is_missing() {
        let s = parse("dbname=synapse").unwrap();
        assert_eq!(
            descriptions(&s),
            ["socket /var/run/postgresql/.s.PGSQL.5432"]
        );
        assert_eq!(s.config.get_user(), Some("me"));
        assert_eq!(s.config.get_application_name(), Some("tool"));
        assert_eq!(s.config.get_password(), None);
        assert_eq!(s.tls.mode, SslMode::Prefer);
        assert_eq!(
            s.config.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        // The database defaults to the user name.
        let s = parse("user=synapse").unwrap();
        assert_eq!(s.config.get_dbname(), Some("synapse"));
        let s = parse("postgresql:///synapse").unwrap();
        assert_eq!(s.config.get_dbname(), Some("synapse"));
        assert_eq!(
            descriptions(&s),
            ["socket /var/run/postgresql/.s.PGSQL.5432"]
        );
    }

    #[test]
    fn the_environment_fills_what_the_string_leaves_out() {
        let env = [
            ("PGHOST", "db.example.org"),
            ("PGPORT", "5433"),
            ("PGUSER", "synapse"),
            ("PGPASSWORD", "secret"),
            ("PGDATABASE", "matrix"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/etc/ca.pem"),
            ("PGSSLCERT", "/etc/client.pem"),
            ("PGSSLKEY", "/etc/client.key"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGAPPNAME", "nightly"),
            ("PGPASSFILE", "/etc/pgpass"),
            ("HOME", "/home/me"),
        ];
        let s = parse_in("", &env).unwrap();
        assert_eq!(descriptions(&s), ["db.example.org:5433"]);
        assert_eq!(s.config.get_user(), Some("synapse"));
        assert_eq!(s.config.get_password(), Some(&b"secret"[..]));
        assert_eq!(s.config.get_dbname(), Some("matrix"));
        assert_eq!(s.config.get_application_name(), Some("nightly"));
        assert_eq!(
            s.config.get_connect_timeout(),
            Some(&Duration::from_secs(7))
        );
        assert_eq!(
            s.tls,
            TlsSettings {
                mode: SslMode::VerifyFull,
                root_cert: Some("/etc/ca.pem".into()),
                client_cert: Some("/etc/client.pem".into()),
                client_key: Some("/etc/client.key".into()),
            }
        );
        assert_eq!(s.passfile, Some(PathBuf::from("/etc/pgpass")));

        // Everything given in the string wins over the environment.
        for text in [
            "host=other port=6000 user=u password=p dbname=d sslmode=disable sslrootcert=/r \
             sslcert=/c sslkey=/k connect_timeout=0 application_name=a",
            "postgresql://u:p@other:6000/d?sslmode=disable&sslrootcert=/r&sslcert=/c&sslkey=/k\
             &connect_timeout=0&application_name=a",
        ] {
            let s = parse_in(text, &env).unwrap();
            assert_eq!(descriptions(&s), ["other:6000"], "{text}");
            assert_eq!(s.config.get_user(), Some("u"));
            assert_eq!(s.config.get_password(), Some(&b"p"[..]));
            assert_eq!(s.config.get_dbname(), Some("d"));
            assert_eq!(s.config.get_application_name(), Some("a"));
            assert_eq!(s.config.get_connect_timeout(), None, "0 is no limit");
            assert_eq!(
                s.tls,
                TlsSettings {
                    mode: SslMode::Disable,
                    root_cert: Some("/r".into()),
                    client_cert: Some("/c".into()),
                    client_key: Some("/k".into()),
                }
            );
        }
        // Part given: the rest still comes from the environment.
        let s = parse_in("port=6000", &env).unwrap();
        assert_eq!(descriptions(&s), ["db.example.org:6000"]);
        assert_eq!(s.config.get_dbname(), Some("matrix"));
        let s = parse_in("host=/run/pg", &env).unwrap();
        assert_eq!(descriptions(&s), ["socket /run/pg/.s.PGSQL.5433"]);
    }

    #[test]
    fn several_hosts_are_tried_in_order() {
        let s = parse_in("", &[("PGHOST", "a,/tmp,::1"), ("PGPORT", "1,2,3")]).unwrap();
        assert_eq!(
            descriptions(&s),
            ["a:1", "socket /tmp/.s.PGSQL.2", "[::1]:3"]
        );
        let s = parse("host=a,b port=7").unwrap();
        assert_eq!(descriptions(&s), ["a:7", "b:7"]);
        let s = parse("hostaddr=127.0.0.1").unwrap();
        assert_eq!(descriptions(&s), ["127.0.0.1:5432"]);
        let s = parse("host=db hostaddr=127.0.0.1").unwrap();
        assert_eq!(descriptions(&s), ["db (127.0.0.1):5432"]);
        // Each target keeps the rest of the settings.
        let s = parse("host=a,b user=u options='-c x=1' keepalives_idle=9").unwrap();
        for t in s.targets() {
            assert_eq!(t.config.get_user(), Some("u"));
            assert_eq!(t.config.get_options(), Some("-c x=1"));
            assert_eq!(t.config.get_keepalives_idle(), Duration::from_secs(9));
            assert_eq!(t.config.get_hosts().len(), 1);
        }
    }

    #[test]
    fn libpq_connect_timeout_rules() {
        assert_eq!(parse_timeout("0", "t").unwrap(), None);
        assert_eq!(parse_timeout("-3", "t").unwrap(), None);
        assert_eq!(
            parse_timeout("1", "t").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_timeout("10", "t").unwrap(),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn an_empty_string_needs_the_environment() {
        let err = parse("").unwrap_err().to_string();
        assert!(err.contains("-p") && err.contains("PGHOST"), "{err}");
        assert!(!err.contains('\n'));
        assert!(parse_in(" ", &[("PGDATABASE", "synapse")]).is_ok());
        // A password alone does not say where to connect.
        assert!(parse_in("", &[("PGPASSWORD", "x")]).is_err());
    }

    #[test]
    fn os_error_numbers_are_dropped() {
        assert_eq!(
            strip_os_error_numbers("No such file or directory (os error 2)"),
            "No such file or directory"
        );
        assert_eq!(
            strip_os_error_numbers("odd (os error x)"),
            "odd (os error x)"
        );
    }
}
