//! How many more connections a run may open: the server's free slots
//! (`max_connections`, less the slots kept for superusers and for roles
//! with `pg_use_reserved_connections`, less the client sessions open now)
//! less a reserve left for Synapse (`--reserve-connections`).
//!
//! Synapse opens a pool of connections per process (up to `cp_max`, 10 by
//! default) and fails requests when it cannot: a compressor that took the
//! last free slots would break the homeserver it is meant to help. The
//! count is read once, after the run's own connection is up (so that one
//! is already counted); sessions opened later by others are not foreseen,
//! which is what the reserve is for.

use log::warn;
use postgres::Client;
use synapse_compress_state::db;
use synapse_compress_state::{Error, Result};

/// Connections left free for Synapse unless `--reserve-connections` says
/// otherwise: one process's default pool (`cp_max`).
pub const DEFAULT_RESERVE: u32 = 10;

/// The server's free connection slots as this run sees them.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Slots a new ordinary session could take now.
    pub free: i64,
    /// Slots to leave to Synapse.
    pub reserve: i64,
}

impl Budget {
    /// Reads the server's settings and open sessions.
    pub fn read(client: &mut Client, reserve: u32) -> Result<Budget> {
        // `reserved_connections` exists from PostgreSQL 16 on. A role
        // without pg_read_all_stats sees other roles' sessions without
        // their type: those with a user are counted as clients (a
        // background worker among them only makes the count careful).
        let row = client
            .query_one(
                "SELECT current_setting('max_connections')::int \
                      - current_setting('superuser_reserved_connections')::int \
                      - coalesce(current_setting('reserved_connections', true)::int, 0) \
                      - (SELECT count(*) FROM pg_stat_activity \
                         WHERE backend_type = 'client backend' \
                            OR (backend_type IS NULL AND usesysid IS NOT NULL))::int",
                &[],
            )
            .map_err(|e| Error::db("counting the server's free connections", e))?;
        Ok(Budget {
            free: i64::from(row.get::<_, i32>(0)).max(0),
            reserve: i64::from(reserve),
        })
    }

    /// How many more connections the run may open.
    pub fn spare(&self) -> usize {
        (self.free - self.reserve).max(0) as usize
    }

    /// How many of `wanted` more connections the run may open, saying in
    /// one line when that is fewer (`what` names them, as in "workers").
    pub fn allow(&self, wanted: usize, what: &str) -> usize {
        let spare = self.spare();
        if spare < wanted {
            warn!(
                "{wanted} {what} wanted, {spare} possible: the server has {} free connection(s) \
                 and {} are kept for Synapse (--reserve-connections)",
                self.free, self.reserve
            );
        }
        spare.min(wanted)
    }
}

/// One more connection for the run (loading ahead, the pass's reading),
/// set up with `setup` (its `lock_timeout`, say). Failing to set it up is
/// an error like failing to connect: the callers do without it (a server
/// that drops the new session at once must not end the run).
pub fn open(url: &str, setup: &str) -> Result<Client> {
    let mut client = db::connect_as(url, "synapse_auto_compressor")?;
    if !setup.is_empty() {
        client
            .batch_execute(setup)
            .map_err(|e| Error::db("setting up a connection", e))?;
    }
    Ok(client)
}

/// Up to `wanted` more connections, each [`open`]ed with `setup`; fewer
/// when one fails, said in one line made by `fewer` from how many were
/// opened and the error.
pub fn open_up_to(
    url: &str,
    setup: &str,
    wanted: usize,
    fewer: impl Fn(usize, &Error) -> String,
) -> Vec<Client> {
    let mut opened = Vec::with_capacity(wanted);
    while opened.len() < wanted {
        match open(url, setup) {
            Ok(client) => opened.push(client),
            Err(e) => {
                warn!("{}", fewer(opened.len(), &e));
                break;
            }
        }
    }
    opened
}
