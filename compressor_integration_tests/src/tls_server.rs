//! A throwaway PostgreSQL server that speaks TLS, for the TLS tests.
//!
//! [`TestCa::create`] makes, with the `openssl` command-line tool, a test
//! certificate authority, a server certificate it signed that names only
//! `localhost` (DNS, no IP address), and an unrelated second authority.
//! [`TlsServer::start`] starts a dedicated cluster with
//! `scripts/pg-throwaway.sh start DIR --ssl CERT KEY --hostssl-only`: TCP
//! connections must use TLS, the Unix socket (in `DIR/sock`) is open without.
//! The cluster is stopped and deleted when the [`TlsServer`] is dropped,
//! also when a test panics.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Files of the test certificate authorities, in a temporary directory
/// removed on drop.
pub struct TestCa {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A fresh directory under the temporary directory.
fn temp_dir(hint: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sct-{hint}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}

impl TestCa {
    /// Makes the authorities and the server certificate (P-256 keys, valid
    /// for two days). `Err` when `openssl` is missing or fails.
    pub fn create() -> Result<TestCa, String> {
        let dir = temp_dir("tls-ca");
        let ca = TestCa { dir };
        let d = &ca.dir;
        for (name, cn) in [("ca", "sct test CA"), ("other-ca", "sct unrelated CA")] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.crt"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            )?;
        }
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost\n",
        )
        .map_err(|e| e.to_string())?;
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        )?;
        Ok(ca)
    }

    /// The authority that signed the server's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// An authority that has nothing to do with the server.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why a server could not be had.
#[derive(Debug)]
pub enum Unavailable {
    /// No PostgreSQL server binaries or no `openssl` here: skip the test.
    MissingTools(String),
    /// Anything else: a real failure.
    Failed(String),
}

/// A running throwaway cluster (`scripts/pg-throwaway.sh`) of its own, for
/// tests that need server settings the shared test server cannot have;
/// stopped and deleted on drop.
pub struct ThrowawayServer {
    dir: PathBuf,
    script: PathBuf,
    port: u16,
}

/// Starts the throwaway clusters with TLS.
pub struct TlsServer;

impl TlsServer {
    /// Starts a cluster serving `ca`'s server certificate, TLS-only on TCP.
    pub fn start(ca: &TestCa) -> Result<ThrowawayServer, Unavailable> {
        let (cert, key) = (ca.server_cert(), ca.server_key());
        ThrowawayServer::start(
            "tls-pg",
            &[
                "--ssl".as_ref(),
                cert.as_os_str(),
                key.as_os_str(),
                "--hostssl-only".as_ref(),
            ],
        )
    }
}

impl ThrowawayServer {
    /// Starts a cluster with `pg-throwaway.sh start DIR OPTIONS...`.
    pub fn start(hint: &str, options: &[&std::ffi::OsStr]) -> Result<ThrowawayServer, Unavailable> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-throwaway.sh");
        let dir = temp_dir(hint);
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .args(options)
            .output()
            .map_err(|e| Unavailable::Failed(format!("cannot run {}: {e}", script.display())))?;
        // From here on the directory is the script's to delete.
        let mut server = ThrowawayServer {
            dir,
            script,
            port: 0,
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(if stderr.contains("no PostgreSQL server binaries") {
                Unavailable::MissingTools(stderr)
            } else {
                Unavailable::Failed(format!("pg-throwaway.sh start failed: {stderr}"))
            });
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        server.port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Unavailable::Failed(format!("unexpected output {url:?}")))?;
        Ok(server)
    }

    /// The cluster's directory (its data directory is `data` inside).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of its Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// A key=value connection string over the Unix socket (no TLS there).
    pub fn socket_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// A connection over the Unix socket (for setting up and checking).
    pub fn socket_client(&self, dbname: &str) -> postgres::Client {
        postgres::Client::connect(&self.socket_conninfo(dbname), postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect over {}: {e}", self.socket_dir().display()))
    }

    /// A new database with Synapse's schema (from `synapse_template`).
    pub fn create_database(&self, name: &str) -> postgres::Client {
        self.socket_client("postgres")
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE synapse_template",
                crate::pg::quote_ident(name)
            ))
            .expect("creating a database");
        self.socket_client(name)
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
        // If the script failed before making it a cluster directory.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
