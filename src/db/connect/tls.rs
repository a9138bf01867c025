//! TLS as libpq's `sslmode` asks: the modes, the certificate settings
//! taken out of a connection string, and the OpenSSL connector that checks
//! the server's certificate (verify-ca) and host name (verify-full).

use std::str::FromStr;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

use crate::error::{Error, Result};

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

/// Fails with the operating system's reason (rather than OpenSSL's error
/// stack) when a certificate or key file named in the connection string
/// cannot be read.
fn check_readable(what: &str, path: &str) -> Result<()> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| Error::Tls(format!("cannot read {what} {path:?}: {e}")))
}

pub(super) fn make_connector(tls: &TlsSettings) -> Result<MakeTlsConnector> {
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
                let default = super::environment::home_directory()
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
