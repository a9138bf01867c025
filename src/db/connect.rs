//! Connecting to PostgreSQL from a URL or key=value connection string, with
//! TLS as `sslmode` asks.
//!
//! The `postgres` crate only knows `sslmode` disable, prefer and require and
//! ignores certificates, so `sslmode`, `sslrootcert`, `sslcert` and `sslkey`
//! are taken out of the string here and turned into an OpenSSL connector that
//! checks the server's certificate (verify-ca) and host name (verify-full)
//! the way libpq does.

use std::str::FromStr;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres::config::SslMode as PgSslMode;
use postgres::{Client, Config};
use postgres_openssl::MakeTlsConnector;

use crate::error::{one_line, Error, Result};

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

/// A parsed connection string: the `postgres` configuration plus TLS.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    pub config: Config,
    pub tls: TlsSettings,
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl FromStr for ConnectionSettings {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let (rest, pairs) = if text.starts_with("postgres://") || text.starts_with("postgresql://")
        {
            split_url(text)?
        } else {
            split_key_values(text)?
        };
        let mut tls = TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            client_key: None,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "sslmode" => tls.mode = value.parse()?,
                "sslrootcert" => tls.root_cert = Some(value),
                "sslcert" => tls.client_cert = Some(value),
                "sslkey" => tls.client_key = Some(value),
                _ => unreachable!("only TLS keys are split out"),
            }
        }
        let mut config = Config::from_str(&rest).map_err(|e| {
            // The postgres crate's message already starts with our prefix.
            let text = one_line(&e);
            let text = text
                .strip_prefix("invalid connection string: ")
                .unwrap_or(&text);
            Error::BadConnectionString(text.to_owned())
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::BadConnectionString(
                "no host given (add host=... or use postgresql://user@host/db)".to_owned(),
            ));
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        // libpq never negotiates TLS over a Unix socket, whatever sslmode
        // says (PostgreSQL does not offer it there); the postgres crate
        // would ask and fail.
        if only_unix_sockets(&config) {
            config.ssl_mode(PgSslMode::Disable);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(30));
        }
        if config.get_application_name().is_none() {
            config.application_name("synapse_compress_state");
        }
        Ok(ConnectionSettings { config, tls })
    }
}

/// True when every host of `config` is a Unix-socket directory.
fn only_unix_sockets(config: &Config) -> bool {
    #[cfg(unix)]
    {
        use postgres::config::Host;
        config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, Host::Unix(_)))
    }
    #[cfg(not(unix))]
    {
        let _ = config;
        false
    }
}

impl ConnectionSettings {
    /// Opens a connection.
    pub fn connect(&self) -> Result<Client> {
        let connector = make_connector(&self.tls)?;
        self.config
            .connect(connector)
            .map_err(|e| Error::Connect(one_line(&e)))
    }
}

/// Parses `text` and connects.
pub fn connect(text: &str) -> Result<Client> {
    text.parse::<ConnectionSettings>()?.connect()
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

/// Splits the TLS parameters out of a URL's query string.
fn split_url(url: &str) -> Result<(String, Vec<(String, String)>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if TLS_KEYS.contains(&key) {
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

/// Splits the TLS parameters out of a `key=value key='quoted value'` string,
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
        if TLS_KEYS.contains(&key.as_str()) {
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

    #[test]
    fn takes_tls_settings_out_of_urls() {
        let s: ConnectionSettings =
            "postgresql://u:p@db.example.org:5433/synapse?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"
                .parse()
                .unwrap();
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.tls.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(s.config.get_dbname(), Some("synapse"));
        assert_eq!(s.config.get_application_name(), Some("x"));
        assert_eq!(s.config.get_ssl_mode(), PgSslMode::Require);
    }

    #[test]
    fn takes_tls_settings_out_of_key_values() {
        let s: ConnectionSettings =
            "user=postgres dbname='my db' host=/var/run/postgresql sslmode=disable sslrootcert='/a b'"
                .parse()
                .unwrap();
        assert_eq!(s.tls.mode, SslMode::Disable);
        assert_eq!(s.tls.root_cert.as_deref(), Some("/a b"));
        assert_eq!(s.config.get_dbname(), Some("my db"));
        assert_eq!(s.config.get_ssl_mode(), PgSslMode::Disable);
    }

    #[test]
    fn never_asks_for_tls_over_a_unix_socket() {
        for mode in ["require", "verify-full"] {
            let s: ConnectionSettings = format!("host=/run/postgresql dbname=x sslmode={mode}")
                .parse()
                .unwrap();
            assert_eq!(s.config.get_ssl_mode(), PgSslMode::Disable, "{mode}");
        }
        let s: ConnectionSettings = "host=db.example.org,/run/postgresql sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(s.config.get_ssl_mode(), PgSslMode::Require);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "not a url",
            "host=x sslmode=sometimes",
            "host='x",
            "postgresql://h/db?sslmode=bogus",
        ] {
            assert!(bad.parse::<ConnectionSettings>().is_err(), "{bad}");
        }
    }
}
