//! One compressor per room at a time, across processes and across both
//! tools (and the Python functions).
//!
//! Two compressors rewriting the same groups would each delete the other's
//! new edge and rows under their own snapshot; row locks in the write make
//! the second one wait and re-check, but the second run would still have
//! spent its whole load and compression on a structure that is about to
//! change. So a run takes a session-level PostgreSQL advisory lock for the
//! room before it loads anything and keeps it until the room's writes are
//! committed. It needs no privilege, and the server drops it when the
//! connection ends, so a killed run never leaves a room locked.
//!
//! The lock is the two-key form `(ROOM_LOCK_CLASS, hashtext(room_id))`, so
//! room locks are told apart from the automatic tool's run lock and from
//! other programs' advisory locks in `pg_locks` (`classid` is the class,
//! `objsubid` is 2). Two rooms whose ids hash alike share a lock; that only
//! makes one of them wait for a later run.

use postgres::types::Type;
use postgres::Client;

use crate::error::{Error, Result};

/// First key of every room lock: "SCrm" as a big-endian 32-bit number.
pub const ROOM_LOCK_CLASS: i32 = i32::from_be_bytes(*b"SCrm");

/// A room lock held by this session. Released with [`RoomLock::release`]
/// (or when the connection closes).
#[derive(Debug)]
#[must_use = "the room stays locked until released"]
pub struct RoomLock {
    room_id: String,
}

impl RoomLock {
    /// Takes `room_id`'s lock on `client`'s session, or fails with
    /// [`Error::RoomBusy`] naming the session that holds it. Never waits.
    pub fn try_acquire(client: &mut Client, room_id: &str) -> Result<RoomLock> {
        let ctx = "taking the room lock";
        let got: bool = client
            .query_typed_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[(&ROOM_LOCK_CLASS, Type::INT4), (&room_id, Type::TEXT)],
            )
            .map_err(|e| Error::db(ctx, e))?
            .try_get(0)
            .map_err(|e| Error::db(ctx, e))?;
        if got {
            return Ok(RoomLock {
                room_id: room_id.to_owned(),
            });
        }
        Err(Error::RoomBusy {
            room: room_id.to_owned(),
            holder: holder(client, room_id),
        })
    }

    /// The room this lock is for.
    pub fn room_id(&self) -> &str {
        &self.room_id
    }

    /// Releases the lock.
    pub fn release(self, client: &mut Client) -> Result<()> {
        client
            .query_typed_one(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[(&ROOM_LOCK_CLASS, Type::INT4), (&self.room_id, Type::TEXT)],
            )
            .map_err(|e| Error::db("releasing the room lock", e))?;
        Ok(())
    }
}

/// Who holds `room_id`'s lock, as far as this session may see: the server
/// process, its application name and since when. Best effort: a holder
/// that just went away, or a server that hides other sessions, gives less.
fn holder(client: &mut Client, room_id: &str) -> String {
    let row = client
        .query_typed(
            "SELECT l.pid, a.application_name, to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS') \
             FROM pg_locks AS l LEFT JOIN pg_stat_activity AS a USING (pid) \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid::int8 = ($1::int8 & 4294967295) \
               AND l.objid::int8 = (hashtext($2)::int8 & 4294967295) \
             LIMIT 1",
            &[(&ROOM_LOCK_CLASS, Type::INT4), (&room_id, Type::TEXT)],
        )
        .ok()
        .and_then(|rows| rows.into_iter().next());
    let Some(row) = row else {
        return "another compressor".to_owned();
    };
    let pid: Option<i32> = row.try_get(0).ok().flatten();
    let app: Option<String> = row.try_get(1).ok().flatten();
    let since: Option<String> = row.try_get(2).ok().flatten();
    let mut text = match app.filter(|a| !a.is_empty()) {
        Some(app) => format!("{app} (server process"),
        None => "another session (server process".to_owned(),
    };
    match pid {
        Some(pid) => text.push_str(&format!(" {pid}")),
        None => text.push_str(" unknown"),
    }
    if let Some(since) = since {
        text.push_str(&format!(", connected since {since}"));
    }
    text.push(')');
    text
}
