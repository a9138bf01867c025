//! Waiting, visibly and interruptibly, while another session holds
//! Synapse's state tables (`VACUUM FULL`, `CLUSTER`, `ALTER TABLE`,
//! `LOCK TABLE` take `ACCESS EXCLUSIVE`, which stops even reads).
//!
//! Without this a run would sit in its next statement, silent, until the
//! lock goes, and a Ctrl-C would wait as long. So a run first takes, and at
//! once gives back, the locks it is about to need, in one-second tries
//! (`lock_timeout`): the reads' (`ACCESS SHARE`, which only `ACCESS
//! EXCLUSIVE` stops) before its work and before each chunk of the automatic
//! tool, and the writes' (`ROW EXCLUSIVE`, which `SHARE` from a plain
//! `CREATE INDEX` and stronger stop) before the manual tool's first write
//! batch and each chunk's write, and `VACUUM`'s own (`SHARE UPDATE
//! EXCLUSIVE`) before `--vacuum`. While a try fails it logs who holds or
//! queues for the lock (pid, its mode, `application_name`, since when, what
//! it runs), once a minute, and looks for a signal between tries, so a stop
//! comes within a second: a chunk given up before its write
//! ([`crate::Error::Interrupted`]) has written nothing, and the saved
//! progress stays that of the chunks before. A lock taken between the try
//! and the statements is still waited for silently, but only for as long as
//! it is held.

use std::time::{Duration, Instant};

use log::{info, warn};
use postgres::error::SqlState;
use postgres::Client;

use crate::db::schema::{Access, STATE_TABLES};
use crate::error::{Error, Result};
use crate::tool::failpoint;
use crate::tool::interrupt::{self, Signal};

/// How long each try waits for the lock.
const TRY: &str = "1s";

/// How often a continuing wait is logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The tables a run writes (it reads `state_groups` too).
const WRITTEN: [&str; 2] = ["state_groups_state", "state_group_edges"];

/// The statements that take the locks of `access`, and the lock modes of
/// other sessions that keep it waiting: only `ACCESS EXCLUSIVE` stops a
/// read; `SHARE` (a plain `CREATE INDEX`) and stronger stop a write.
fn locks(access: Access) -> (String, &'static [&'static str]) {
    let read = format!(
        "LOCK TABLE {} IN ACCESS SHARE MODE",
        STATE_TABLES.join(", ")
    );
    match access {
        Access::Read => (read, &["AccessExclusiveLock"]),
        Access::Write => (
            format!(
                "{read}; LOCK TABLE {} IN ROW EXCLUSIVE MODE",
                WRITTEN.join(", ")
            ),
            &[
                "ShareLock",
                "ShareRowExclusiveLock",
                "ExclusiveLock",
                "AccessExclusiveLock",
            ],
        ),
    }
}

/// Waits until this session could read (or write, as `access` says)
/// Synapse's state tables. `None` once it can; the signal, if one asked
/// the run to stop meanwhile.
pub fn wait_for_state_tables(client: &mut Client, access: Access) -> Result<Option<Signal>> {
    let (statements, blocking) = locks(access);
    wait_for(client, &statements, blocking)
}

/// Waits until this session could `VACUUM state_groups_state` (`--vacuum`
/// at a run's end): its `SHARE UPDATE EXCLUSIVE` lock waits for another
/// VACUUM or ANALYZE of the table (autovacuum gives way to a waiting
/// session within a second or so), a `CREATE INDEX` and anything
/// stronger. `None` once it can; the signal, if one came meanwhile.
pub fn wait_before_vacuum(client: &mut Client) -> Result<Option<Signal>> {
    wait_for(
        client,
        "LOCK TABLE state_groups_state IN SHARE UPDATE EXCLUSIVE MODE",
        &[
            "ShareUpdateExclusiveLock",
            "ShareLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        ],
    )
}

/// Tries `statements` until they get their locks within [`TRY`], saying
/// who holds them (those holding one of the `blocking` modes) once a
/// minute, and giving up at a signal.
fn wait_for(client: &mut Client, statements: &str, blocking: &[&str]) -> Result<Option<Signal>> {
    // The tests' stand-in for a lock taken just after this check: the
    // statements then wait for it themselves.
    if failpoint::triggered("lock-wait::skip") {
        return Ok(None);
    }
    let started = Instant::now();
    let mut logged: Option<Instant> = None;
    loop {
        match try_lock(client, statements) {
            Ok(()) => {
                if logged.is_some() {
                    info!(
                        "The state tables are free again after {:.0}s; going on",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(None);
            }
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {}
            Err(e) => return Err(Error::db("waiting for the state tables", e)),
        }
        if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            warn!(
                "Waiting for a lock on the state tables ({:.0}s so far): {}",
                started.elapsed().as_secs_f64(),
                holders(client, blocking)?
            );
            logged = Some(Instant::now());
        }
        if let Some(signal) = interrupt::requested() {
            warn!("{signal} received while waiting for the state tables: stopping here");
            return Ok(Some(signal));
        }
    }
}

/// A safe point's question: the signal that asked the run to stop, if one
/// did; else, once the state tables can be used as `access` says, `None`
/// (a signal while waiting for them is returned too).
pub fn stop_requested(client: &mut Client, access: Access) -> Result<Option<Signal>> {
    match interrupt::requested() {
        Some(signal) => Ok(Some(signal)),
        None => wait_for_state_tables(client, access),
    }
}

/// One try: the locks `statements` take, within [`TRY`], given back at
/// once.
/// One round trip when the locks are free (this runs before every chunk);
/// a failed try leaves its transaction aborted, rolled back here.
fn try_lock(client: &mut Client, statements: &str) -> std::result::Result<(), postgres::Error> {
    let tried = client.batch_execute(&format!(
        "BEGIN; SET LOCAL lock_timeout = '{TRY}'; {statements}; ROLLBACK"
    ));
    if tried.is_err() {
        // Ends the aborted transaction; a connection that is gone reports
        // the first error.
        let _ = client.batch_execute("ROLLBACK");
    }
    tried
}

/// Who holds or waits for a lock of a `blocking` mode on the state tables,
/// in words: `state_groups_state held by pid 123 (ACCESS EXCLUSIVE,
/// application_name "psql", since 2026-12-05 09:50:01+00, running "VACUUM
/// FULL ...")`. A role that may not see other sessions' details gets the
/// pids and modes.
fn holders(client: &mut Client, blocking: &[&str]) -> Result<String> {
    let rows = client
        .query(
            "SELECT l.relation::regclass::text, l.granted, l.pid, a.application_name, l.mode, \
                    to_char(coalesce(a.xact_start, a.query_start), 'YYYY-MM-DD HH24:MI:SSOF'), \
                    left(regexp_replace(a.query, '\\s+', ' ', 'g'), 60) \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'relation' AND l.mode = ANY ($2) \
               AND l.pid <> pg_backend_pid() \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.relation = ANY (SELECT to_regclass(t)::oid FROM unnest($1::text[]) t) \
             ORDER BY l.granted DESC, l.pid",
            &[&STATE_TABLES.as_slice(), &blocking],
        )
        .map_err(|e| Error::db("finding who holds the state tables", e))?;
    if rows.is_empty() {
        return Ok("held by a session that has just let go".to_owned());
    }
    let described: Vec<String> = rows
        .iter()
        .map(|row| {
            let table: String = row.get(0);
            let granted: bool = row.get(1);
            let pid: i32 = row.get(2);
            let mut text = format!(
                "{table} {} by pid {pid}",
                if granted { "held" } else { "queued for" }
            );
            let name: Option<String> = row.get(3);
            let mode: String = row.get(4);
            let since: Option<String> = row.get(5);
            let query: Option<String> = row.get(6);
            let mut details = vec![sql_mode(&mode)];
            if let Some(name) = name {
                details.push(format!("application_name {name:?}"));
            }
            if let Some(since) = since {
                details.push(format!("since {since}"));
            }
            if let Some(query) = query.filter(|q| !q.starts_with('<')) {
                details.push(format!("running {query:?}"));
            }
            text.push_str(&format!(" ({})", details.join(", ")));
            text
        })
        .collect();
    Ok(described.join("; "))
}

/// `AccessExclusiveLock` as SQL says it: `ACCESS EXCLUSIVE`.
fn sql_mode(mode: &str) -> String {
    let mut words = String::new();
    for c in mode.trim_end_matches("Lock").chars() {
        if c.is_uppercase() && !words.is_empty() {
            words.push(' ');
        }
        words.push(c.to_ascii_uppercase());
    }
    words
}
