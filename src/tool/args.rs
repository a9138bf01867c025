//! What both command lines and the Python functions share about their
//! arguments: whole numbers with a lower bound as types (so a setting can
//! never hold a value the parser would refuse), and the way a refused
//! command line is reported. Nothing here ends the process: each `main`
//! decides its exit status.

use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;

use clap::Parser;

use crate::error::Error;

/// A whole number of at least `MIN`: see [`NonNegative`] and [`Positive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AtLeast<const MIN: i64>(i64);

/// Group ids and counts that may be 0.
pub type NonNegative = AtLeast<0>;
/// Counts that must be at least 1 (chunk sizes, numbers of groups or chunks).
pub type Positive = AtLeast<1>;

impl<const MIN: i64> AtLeast<MIN> {
    /// `value`, or why it is refused ("must be at least 1"), in the words
    /// both command lines and the Python functions use.
    pub fn new(value: i64) -> Result<Self, String> {
        if value >= MIN {
            Ok(Self(value))
        } else {
            Err(format!("must be at least {MIN}"))
        }
    }

    /// [`AtLeast::new`] for a named argument of a library call, worded like
    /// the command line's refusal ("invalid value 0 for chunk_size: must be
    /// at least 1").
    pub fn named(name: &str, value: i64) -> Result<Self, Error> {
        Self::new(value).map_err(|why| {
            Error::InvalidArgument(format!("invalid value {value} for {name}: {why}"))
        })
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl<const MIN: i64> FromStr for AtLeast<MIN> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let value = text
            .parse::<i64>()
            .map_err(|e| format!("not a whole number ({e})"))?;
        Self::new(value)
    }
}

impl<const MIN: i64> fmt::Display for AtLeast<MIN> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An amount of memory: a whole number with `KiB`, `MiB` or `GiB` (or
/// `K`, `M`, `G`); a bare number is MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemorySize(u64);

impl MemorySize {
    pub const fn mib(mib: u64) -> Self {
        Self(mib << 20)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for MemorySize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let bad = || format!("{text:?} is not a memory size (e.g. 256MiB, 512KiB or 1GiB)");
        let n: u64 = digits.trim().parse().map_err(|_| bad())?;
        let shift = match text[digits.len()..].to_ascii_lowercase().as_str() {
            "k" | "kib" => 10,
            "" | "m" | "mib" => 20,
            "g" | "gib" => 30,
            _ => return Err(bad()),
        };
        n.checked_mul(1 << shift)
            .map(Self)
            .ok_or_else(|| format!("{text:?} is more memory than this machine can count"))
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b % (1 << 30) == 0 && b > 0 => write!(f, "{}GiB", b >> 30),
            b if b % (1 << 20) == 0 => write!(f, "{}MiB", b >> 20),
            b if b % (1 << 10) == 0 => write!(f, "{}KiB", b >> 10),
            b => write!(f, "{b} bytes"),
        }
    }
}

/// The `-p` option both tools share.
#[derive(Clone, Debug, clap::Args)]
pub struct Connection {
    /// PostgreSQL connection: "postgresql://user@host/db" or
    /// "user=... dbname=... host=..." (sslmode and sslrootcert are honoured).
    /// Optional when PGHOST, PGPORT, PGUSER or PGDATABASE say where to
    /// connect; what it leaves out comes from libpq's environment variables
    /// and password file (~/.pgpass), as for psql.
    #[arg(
        short = 'p',
        long = "postgres-url",
        value_name = "POSTGRES_LOCATION",
        required = false
    )]
    pub postgres_url: Option<String>,
}

impl Connection {
    /// The connection string; empty when everything comes from the
    /// environment.
    pub fn into_string(self) -> String {
        self.postgres_url.unwrap_or_default()
    }
}

/// The commit this was built from, when built from a git checkout of this
/// repository (recorded by `build.rs`).
pub const GIT_COMMIT: Option<&str> = option_env!("SYNAPSE_COMPRESS_GIT_COMMIT");

/// `--version` text of a binary whose package version is `version`:
/// "0.1.0 (git 1a2b3c4d)", or just "0.1.0" when built from a tarball.
/// Called once per process, when clap builds the command, so the string is
/// kept for the process's lifetime as clap wants.
pub fn version_text(version: &'static str) -> &'static str {
    match GIT_COMMIT {
        Some(commit) => Box::leak(format!("{version} (git {commit})").into_boxed_str()),
        None => version,
    }
}

/// Parses the process arguments as `T`. When clap has something to say
/// instead (`--help`, `--version`, or a usage error reduced to its first
/// line, which names the problem), it is printed and the exit status to end
/// with is returned: 0 after help or version, 2 after an error.
pub fn parse<T: Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|err| report_clap_error(&err))
}

/// Prints a clap error the way our binaries report errors; the exit status
/// that goes with it.
fn report_clap_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let rendered = err.render().to_string();
    let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
    let first = lines.next().unwrap_or("error: invalid arguments");
    let mut line = if first.starts_with("error:") {
        first.to_owned()
    } else {
        format!("error: {first}")
    };
    // "...were not provided:" lists the arguments on the next, indented
    // lines: keep them on the one line.
    if line.ends_with(':') {
        for item in lines.take_while(|l| l.starts_with(' ')) {
            line.push(' ');
            line.push_str(item.trim());
        }
    }
    super::say::err(&format!("{line} (see --help)"));
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked_the_same_way_for_clap_and_library_callers() {
        assert_eq!("0".parse::<NonNegative>().map(NonNegative::get), Ok(0));
        assert_eq!("1".parse::<Positive>().map(Positive::get), Ok(1));
        assert_eq!("256".parse::<MemorySize>(), Ok(MemorySize::mib(256)));
        assert_eq!(
            "64KiB".parse::<MemorySize>().map(MemorySize::bytes),
            Ok(64 << 10)
        );
        assert_eq!(
            "1G".parse::<MemorySize>().map(|m| m.to_string()),
            Ok("1GiB".into())
        );
        assert!("lots".parse::<MemorySize>().is_err());
        assert!("5TB".parse::<MemorySize>().is_err());
        assert_eq!(
            "0".parse::<Positive>(),
            Err("must be at least 1".to_owned())
        );
        assert_eq!(
            "-1".parse::<NonNegative>(),
            Err("must be at least 0".to_owned())
        );
        assert!("x"
            .parse::<Positive>()
            .unwrap_err()
            .starts_with("not a whole number"));
        assert_eq!(Positive::named("chunk_size", 5).unwrap().get(), 5);
        assert_eq!(
            Positive::named("chunk_size", 0).unwrap_err().to_string(),
            "invalid value 0 for chunk_size: must be at least 1"
        );
    }
}
