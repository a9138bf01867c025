//! libpq's password file (`PGPASSFILE`, else `~/.pgpass`): where a cron job
//! keeps its database password instead of the command line.
//!
//! Each line is `hostname:port:database:username:password`. The first four
//! fields are either `*` (anything) or a literal compared exactly, where
//! `\:` and `\\` stand for a colon and a backslash; the first matching line
//! gives the password (its escapes removed too). Lines starting with `#`
//! and lines with fewer than five fields are skipped. As libpq does, a file
//! that is not a plain file, or that group or others may read, is ignored
//! with a warning, and a missing file is silently ignored. Unlike libpq, a
//! file that exists but cannot be read is ignored with a warning too.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::warn;

/// One of the four matching fields of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    Any,
    Exact(String),
}

impl Field {
    fn matches(&self, value: &str) -> bool {
        match self {
            Field::Any => true,
            Field::Exact(text) => text == value,
        }
    }
}

/// A usable line of a password file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    host: Field,
    port: Field,
    database: Field,
    user: Field,
    password: String,
}

/// What a connection looks for in the file.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    /// The host name as given, or `localhost` for a Unix socket.
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

impl Entry {
    fn matches(&self, wanted: &Wanted) -> bool {
        self.host.matches(wanted.host)
            && self.port.matches(&wanted.port.to_string())
            && self.database.matches(wanted.database)
            && self.user.matches(wanted.user)
    }
}

/// Reads one line; `None` for comments, blank lines and lines with fewer
/// than five fields.
fn parse_line(line: &str) -> Option<Entry> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = Vec::with_capacity(4);
    let mut current = String::new();
    // True while the field so far is exactly one unescaped `*`.
    let mut star = false;
    let mut chars = line.chars();
    while fields.len() < 4 {
        match chars.next()? {
            ':' => {
                fields.push(if star && current == "*" {
                    Field::Any
                } else {
                    Field::Exact(std::mem::take(&mut current))
                });
                current.clear();
                star = false;
            }
            '\\' => {
                // A backslash at the very end stands for itself, as in libpq.
                current.push(chars.next().unwrap_or('\\'));
                star = false;
            }
            '*' if current.is_empty() => {
                current.push('*');
                star = true;
            }
            c => {
                current.push(c);
                star = false;
            }
        }
    }
    let mut password = String::new();
    while let Some(c) = chars.next() {
        password.push(if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        });
    }
    let [host, port, database, user]: [Field; 4] = fields.try_into().ok()?;
    Some(Entry {
        host,
        port,
        database,
        user,
        password,
    })
}

/// The usable lines of a password file's text, in order.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter_map(parse_line)
        .collect()
}

/// The password of the first entry matching `wanted`.
pub fn find<'a>(entries: &'a [Entry], wanted: &Wanted) -> Option<&'a str> {
    entries
        .iter()
        .find(|entry| entry.matches(wanted))
        .map(|entry| entry.password.as_str())
}

/// The password file libpq would use: `PGPASSFILE`, else `.pgpass` in the
/// home directory.
pub fn default_path(pgpassfile: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match (pgpassfile, home) {
        (Some(file), _) => Some(PathBuf::from(file)),
        (None, Some(home)) => Some(Path::new(home).join(".pgpass")),
        (None, None) => None,
    }
}

/// Says once per process and file why a password file is ignored (a run
/// opens several connections).
fn warn_once(path: &Path, why: &str) {
    static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.iter().any(|p| p == path) {
        warned.push(path.to_owned());
        warn!("ignoring password file \"{}\": {why}", path.display());
    }
}

/// Why libpq would refuse this file, if it would.
fn refusal(metadata: &std::fs::Metadata) -> Option<&'static str> {
    if !metadata.is_file() {
        return Some("it is not a plain file");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Some("it has group or world access; permissions should be u=rw (0600) or less");
        }
    }
    None
}

/// The password `path` holds for `wanted`, following libpq's rules.
pub fn lookup(path: &Path, wanted: &Wanted) -> Option<String> {
    let metadata = std::fs::metadata(path).ok()?;
    if let Some(why) = refusal(&metadata) {
        warn_once(path, why);
        return None;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            warn_once(path, &unreadable(&metadata, &err));
            return None;
        }
    };
    find(&parse(&text), wanted).map(str::to_owned)
}

/// Why a password file that exists cannot be read. libpq says nothing here,
/// but a secret mounted for another user than the run's (common in
/// containers) would then fail the connection with no hint at the file.
fn unreadable(metadata: &std::fs::Metadata, err: &std::io::Error) -> String {
    #[cfg(unix)]
    if err.kind() == std::io::ErrorKind::PermissionDenied {
        use std::os::unix::fs::MetadataExt;
        return format!(
            "this user may not read it (it belongs to uid {}, gid {}, mode {:04o})",
            metadata.uid(),
            metadata.gid(),
            metadata.mode() & 0o7777
        );
    }
    format!("it cannot be read: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted<'a>(host: &'a str, port: u16, database: &'a str, user: &'a str) -> Wanted<'a> {
        Wanted {
            host,
            port,
            database,
            user,
        }
    }

    #[test]
    fn first_matching_line_wins() {
        let entries = parse(
            "db.example.org:5432:synapse:synapse:first\n\
             *:*:*:synapse:second\n\
             *:*:*:*:third\n",
        );
        assert_eq!(entries.len(), 3);
        let find_pw = |w: Wanted| find(&entries, &w).map(str::to_owned);
        assert_eq!(
            find_pw(wanted("db.example.org", 5432, "synapse", "synapse")).as_deref(),
            Some("first")
        );
        // Another port: the specific line no longer matches.
        assert_eq!(
            find_pw(wanted("db.example.org", 5433, "synapse", "synapse")).as_deref(),
            Some("second")
        );
        assert_eq!(
            find_pw(wanted("localhost", 5432, "other", "postgres")).as_deref(),
            Some("third")
        );
        // A wildcard line first hides every later line.
        let entries = parse("*:*:*:*:any\nh:1:d:u:specific\n");
        assert_eq!(find(&entries, &wanted("h", 1, "d", "u")), Some("any"));
    }

    #[test]
    fn skips_comments_blank_and_short_lines() {
        let entries = parse(
            "# hostname:port:database:username:password\n\
             \n\
             localhost:5432:synapse\n\
             \t\n\
             localhost:5432:synapse:synapse:pw\r\n",
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(
            find(&entries, &wanted("localhost", 5432, "synapse", "synapse")),
            Some("pw")
        );
        // A `#` further on is data, not a comment.
        let entries = parse("h:1:d:u:pass#word\n");
        assert_eq!(find(&entries, &wanted("h", 1, "d", "u")), Some("pass#word"));
    }

    #[test]
    fn backslash_escapes_colons_and_backslashes() {
        // Field values "a:b" and "c\d", password "p:w\x".
        let entries = parse(r"a\:b:5432:c\\d:user:p\:w\\x");
        assert_eq!(
            find(&entries, &wanted("a:b", 5432, r"c\d", "user")),
            Some(r"p:w\x")
        );
        assert_eq!(find(&entries, &wanted("a", 5432, r"c\d", "user")), None);
        // An unescaped colon in the password is kept: it is the last field.
        let entries = parse("h:1:d:u:pa:ss");
        assert_eq!(find(&entries, &wanted("h", 1, "d", "u")), Some("pa:ss"));
    }

    #[test]
    fn only_a_lone_unescaped_star_is_a_wildcard() {
        let entries = parse("\\*:*:*:*:escaped\nh*:*:*:*:prefix\n*:*:*:*:any\n");
        // `\*` is a literal star.
        assert_eq!(find(&entries, &wanted("*", 1, "d", "u")), Some("escaped"));
        assert_eq!(find(&entries, &wanted("h*", 1, "d", "u")), Some("prefix"));
        // `h*` is not a pattern.
        assert_eq!(find(&entries, &wanted("host", 1, "d", "u")), Some("any"));
        let entries = parse("h*:*:*:*:prefix\n");
        assert_eq!(find(&entries, &wanted("host", 1, "d", "u")), None);
    }

    #[test]
    fn ports_compare_as_written() {
        let entries = parse("h:5433:d:u:pw\n");
        assert_eq!(find(&entries, &wanted("h", 5433, "d", "u")), Some("pw"));
        assert_eq!(find(&entries, &wanted("h", 5432, "d", "u")), None);
    }

    #[test]
    fn pgpassfile_wins_over_home() {
        assert_eq!(
            default_path(Some("/etc/pw"), Some("/home/u")),
            Some(PathBuf::from("/etc/pw"))
        );
        assert_eq!(
            default_path(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.pgpass"))
        );
        assert_eq!(default_path(None, None), None);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_files_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("sct-pgpass-unit-{}", std::process::id()));
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let w = wanted("localhost", 5432, "d", "u");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, &w).as_deref(), Some("secret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(lookup(&path, &w).as_deref(), Some("secret"));
        for mode in [0o640, 0o604, 0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(lookup(&path, &w), None, "mode {mode:o}");
        }
        std::fs::remove_file(&path).unwrap();
        // Missing: nothing, silently.
        assert_eq!(lookup(&path, &w), None);
        // A directory is not a password file.
        assert_eq!(lookup(&std::env::temp_dir(), &w), None);
    }
}
