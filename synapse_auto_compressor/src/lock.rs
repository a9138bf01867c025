//! One automatic run per database, enforced with a PostgreSQL session-level
//! advisory lock held for the whole run (released when the connection ends,
//! even if the process is killed).

use postgres::Client;
use synapse_compress_state::{Error, Result};

/// The advisory lock key: "SynCompr" as a big-endian 64-bit number.
pub const LOCK_KEY: i64 = i64::from_be_bytes(*b"SynCompr");

/// Takes the run lock on this connection, or says who holds it.
pub fn acquire(client: &mut Client) -> Result<()> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .map_err(|e| Error::db("taking the run lock", e))?
        .try_get(0)
        .map_err(|e| Error::db("taking the run lock", e))?;
    if got {
        return Ok(());
    }
    let holder: Option<i32> = client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = $1 LIMIT 1",
            &[&LOCK_KEY],
        )
        .ok()
        .flatten()
        // NULL when a prepared transaction holds it.
        .and_then(|row| row.try_get(0).ok().flatten());
    Err(Error::AlreadyRunning(match holder {
        Some(pid) => format!(
            "another synapse_auto_compressor holds advisory lock {LOCK_KEY} on this database (server process {pid})"
        ),
        None => format!("another synapse_auto_compressor holds advisory lock {LOCK_KEY} on this database"),
    }))
}

/// Releases the run lock (it would also go with the connection, but the
/// server may notice a closed connection only a moment later, and a run
/// started right after must not find the lock still held).
pub fn release(client: &mut Client) -> Result<()> {
    client
        .query_one("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .map_err(|e| Error::db("releasing the run lock", e))?;
    Ok(())
}
