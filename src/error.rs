//! The error type shared by the library and both binaries.
//!
//! Every failure a user can cause (bad arguments, unreachable database, unknown
//! room, missing tables, permissions) is a variant here with a one-line message,
//! so the binaries can print it and exit non-zero instead of panicking.

use std::path::PathBuf;

/// Anything that can stop a compression run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or a configuration value is invalid.
    #[error("{0}")]
    InvalidArgument(String),

    /// The connection string could not be understood.
    #[error("invalid connection string: {0}")]
    BadConnectionString(String),

    /// TLS could not be set up as the connection string asks.
    #[error("TLS setup failed: {0}")]
    Tls(String),

    /// The server could not be reached or refused us; the text starts with
    /// what was tried (`host:port: reason` or `socket PATH: reason`).
    #[error("could not connect to the database at {0}")]
    Connect(String),

    /// One of Synapse's state tables is missing from the database.
    #[error("table {0} does not exist in this database: is this Synapse's state database?")]
    MissingTable(String),

    /// The database user lacks a privilege we need.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// Any other database error, with what we were doing at the time.
    #[error("database error while {context}: {message}")]
    Database {
        context: String,
        message: String,
        /// The server's SQLSTATE, when it gave one.
        code: Option<postgres::error::SqlState>,
    },

    /// The room has no state groups at all (unknown or purged room).
    #[error("room {} has no state groups in this database (is the room id right?)", printable(.0))]
    UnknownRoom(String),

    /// The room has state groups, but none in the requested range.
    #[error("room {} has no state groups in the requested range", printable(.0))]
    EmptyRange(String),

    /// The stored structure cannot be read safely (cycle, forward edge,
    /// a NULL or undecodable value...).
    #[error("damaged state group structure: {0}")]
    Damaged(String),

    /// A [`Error::Damaged`] found while reading or compressing one room,
    /// before anything was written to it.
    #[error("room {} is damaged: {why}; it was left alone", printable(.room))]
    DamagedRoom { room: String, why: String },

    /// A bug caught at run time (say a panic in a loading thread), reported
    /// instead of taking the whole process down.
    #[error("internal error: {0}")]
    Internal(String),

    /// Verification found a group whose state would change. This is a bug.
    #[error("verification failed, nothing was written: {0}")]
    VerificationFailed(String),

    /// Another automatic run holds the database's run lock.
    #[error("{0}")]
    AlreadyRunning(String),

    /// A signal came while the run waited for the state tables in the
    /// middle of a chunk: the chunk is given up, nothing of it written.
    #[error("interrupted by {0} while waiting for the state tables")]
    Interrupted(crate::tool::interrupt::Signal),

    /// Another compressor holds the room's lock (see `db::room_lock`).
    #[error("room {} is being compressed by {holder}; try again when it has finished", printable(.room))]
    RoomBusy { room: String, holder: String },

    /// A file could not be written.
    #[error("cannot write {}: {source}", printable(&path.display().to_string()))]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classifies a `postgres` error, giving permission and missing-table
    /// problems their own messages.
    pub fn db(context: impl Into<String>, err: postgres::Error) -> Error {
        use postgres::error::SqlState;
        let context = context.into();
        if let Some(db) = err.as_db_error() {
            let code = db.code();
            if *code == SqlState::UNDEFINED_TABLE {
                let table = extract_quoted(db.message()).unwrap_or_else(|| db.message().to_owned());
                return Error::MissingTable(table);
            }
            if *code == SqlState::INSUFFICIENT_PRIVILEGE {
                return Error::PermissionDenied(format!("{} (while {context})", db.message()));
            }
            if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
                return Error::PermissionDenied(format!("{} (while {context})", db.message()));
            }
            return Error::Database {
                context,
                message: db.message().to_owned(),
                code: Some(code.clone()),
            };
        }
        if err.is_closed() {
            return Error::Database {
                context,
                message: "the connection to the server was lost".to_owned(),
                code: None,
            };
        }
        Error::Database {
            context,
            message: one_line(&err),
            code: None,
        }
    }

    /// The SQLSTATE of a database error.
    pub fn sqlstate(&self) -> Option<&postgres::error::SqlState> {
        match self {
            Error::Database { code, .. } => code.as_ref(),
            _ => None,
        }
    }

    /// True for the failures that mean "someone else is working, try
    /// later".
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::AlreadyRunning(_) | Error::RoomBusy { .. })
    }

    /// The exit status a binary ends with after this error: 75 (sysexits.h
    /// EX_TEMPFAIL, which cron wrappers and systemd can treat as "try
    /// later") when another run or compressor is at work, the signal's
    /// status (130, 143) for a stop, else 1.
    pub fn exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::from(self.exit_status())
    }

    /// [`Error::exit_code`] as a number (for the automatic tool's metrics).
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::Interrupted(signal) => signal.exit_status(),
            _ if self.is_busy() => 75,
            _ => 1,
        }
    }

    /// A [`Error::Damaged`] of `room` becomes [`Error::DamagedRoom`]; other
    /// errors pass through.
    pub fn in_room(self, room: &str) -> Error {
        match self {
            Error::Damaged(why) => Error::DamagedRoom {
                room: room.to_owned(),
                why: printable(&why).into_owned(),
            },
            other => other,
        }
    }

    /// Wraps an I/O error on `path`.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::File {
            path: path.into(),
            source,
        }
    }
}

/// The first double-quoted word of a message (Postgres names relations so).
fn extract_quoted(message: &str) -> Option<String> {
    let start = message.find('"')? + 1;
    let len = message[start..].find('"')?;
    Some(message[start..start + len].to_owned())
}

/// `text` with control characters (newlines, tabs...) escaped, so that a
/// room id or path holding them still makes a one-line message.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// An error and its causes on one line.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}
