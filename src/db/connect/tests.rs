//! Connection strings, the environment and the defaults, read without a
//! server.

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
