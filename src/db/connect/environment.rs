//! What libpq takes from the process: its `PG*` environment variables and
//! the operating-system user, as one value that tests can make up.

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
