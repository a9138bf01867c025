//! What libpq takes from the process: its `PG*` environment variables and
//! the operating-system user, as one value that tests can make up; and the
//! user's home directory, from `HOME` or else the system's user database.

use std::collections::BTreeMap;

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
    pub(super) os_user: Option<String>,
}

impl Environment {
    /// This process's environment. Empty variables count as unset.
    pub fn current() -> Environment {
        let vars = VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        let mut environment = Environment {
            vars,
            os_user: whoami::username().ok(),
        };
        if environment.get("HOME").is_none() {
            if let Some(home) = home_from_user_database() {
                environment.vars.insert("HOME".to_owned(), home);
            }
        }
        environment
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

    pub(super) fn get(&self, name: &str) -> Option<&str> {
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

/// This process's home directory: `HOME`, or when that is unset or empty
/// (`env -i`, some service managers), the user's entry in the system's user
/// database, as libpq looks for `~/.pgpass` and `~/.postgresql/`.
pub(super) fn home_directory() -> Option<String> {
    std::env::var("HOME")
        .ok()
        .filter(|home| !home.is_empty())
        .or_else(home_from_user_database)
}

/// The home directory of this process's user in the system's user database
/// (`getpwuid_r`), if it has one.
fn home_from_user_database() -> Option<String> {
    let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is to memory of the size given, owned here and
    // alive for the call; on success `found` points at `entry`, whose
    // strings live in `buffer`.
    let status = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            entry.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() {
        return None;
    }
    // SAFETY: `found` is non-null, so `entry` was filled in.
    let dir = unsafe { (*found).pw_dir };
    if dir.is_null() {
        return None;
    }
    // SAFETY: `pw_dir` is a NUL-terminated string inside `buffer`.
    let dir = unsafe { std::ffi::CStr::from_ptr(dir) };
    let dir = dir.to_str().ok()?;
    (!dir.is_empty()).then(|| dir.to_owned())
}
