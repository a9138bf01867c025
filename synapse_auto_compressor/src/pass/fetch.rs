//! The pass's reading connection: each range's ids, edges and rows, read in
//! one snapshot on a thread of its own and handed to the assembler
//! ([`super::assemble`]) as they come, so the server reads the next rows
//! while the assembler files the last ones.
//!
//! Each statement's rows come back in one call: the `postgres` crate enters
//! its runtime once per call, and streaming a result row by row entered it
//! once per row, a third of the reader's CPU. The rows are asked for in
//! slices of the range's ids, so what is held at once stays small.

use std::collections::HashMap;
use std::sync::mpsc::SyncSender;

use log::debug;
use postgres::types::{ToSql, Type};
use postgres::{Client, Row, Transaction};
use synapse_compress_state::db::load;
use synapse_compress_state::db::lock_wait::stop_requested;
use synapse_compress_state::db::schema::Access;
use synapse_compress_state::{Error, Result};

use super::assemble::LeftPass;
use super::plan::Plan;

/// What the reading connection hands the assembler, range by range.
pub(super) enum Fetched {
    /// The range's groups that join a planned chunk, ascending, with it.
    Groups(Vec<(i64, u32)>),
    /// The range's edges (`state_group`, `prev_state_group`).
    Edges(Vec<Row>),
    /// The rows of a slice of the range (`state_group`, `type`,
    /// `state_key`, `event_id`), all of each group's.
    Rows(Vec<Row>),
    /// The range below `to` is read, in one snapshot.
    Done { to: i64 },
    /// The range from `from` met a lock: what came of it is to be
    /// forgotten; it comes again once the lock is gone.
    Again { from: i64 },
}

/// Slices per range for the rows: a slice's rows are held at once (about
/// ten thousand on the benchmark's data, a few MiB).
const ROW_SLICES: i64 = 32;

/// Which planned chunk each group read joins.
pub(super) struct Fetcher<'p> {
    plan: &'p Plan,
    left: &'p LeftPass,
    room_index: HashMap<&'p str, u32>,
    /// Per room: its chunk the next group may belong to (index into the
    /// room's chunk list).
    next: Vec<usize>,
    range_ids: i64,
}

impl<'p> Fetcher<'p> {
    pub(super) fn new(plan: &'p Plan, left: &'p LeftPass, range_ids: i64) -> Self {
        Self {
            plan,
            left,
            room_index: plan
                .rooms
                .iter()
                .enumerate()
                .map(|(i, r)| (r.room_id.as_str(), i as u32))
                .collect(),
            next: vec![0; plan.rooms.len()],
            range_ids,
        }
    }

    /// Reads the plan's groups range by range on `client`, sending what it
    /// reads. Ends when all is read, when the assembler stops listening,
    /// or at a signal (the run sees it too).
    pub(super) fn run(mut self, client: &mut Client, out: &SyncSender<Result<Fetched>>) {
        if let Err(e) = self.read_all(client, out) {
            let _ = out.send(Err(e));
        }
    }

    fn read_all(&mut self, client: &mut Client, out: &SyncSender<Result<Fetched>>) -> Result<()> {
        let (Some(first), Some(end)) = (self.plan.chunks.first(), self.plan.end()) else {
            return Ok(());
        };
        let mut from = first.first;
        while from <= end {
            let to = from
                .saturating_add(self.range_ids)
                .min(end.saturating_add(1));
            // Waits visibly while the tables are held.
            if stop_requested(client, Access::Read)?.is_some() {
                return Ok(());
            }
            let mut snapshot = load::snapshot(client)?;
            match self.read_range(&mut snapshot, from, to, out) {
                Ok(true) => snapshot
                    .commit()
                    .map_err(|e| Error::db("finishing a range of the pass", e))?,
                Ok(false) => return Ok(()),
                Err(e) if is_lock_timeout(&e) => {
                    // A lock taken just after the check: the range's groups
                    // are forgotten and read again once the lock is gone.
                    drop(snapshot);
                    debug!("range {from}..{to} met a lock; reading it again");
                    if out.send(Ok(Fetched::Again { from })).is_err() {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            if out.send(Ok(Fetched::Done { to })).is_err() {
                return Ok(());
            }
            from = to;
        }
        Ok(())
    }

    /// Reads the ids, edges and rows of `[from, to)`, sending each. False
    /// once the assembler has stopped listening.
    fn read_range(
        &mut self,
        tx: &mut Transaction<'_>,
        from: i64,
        to: i64,
        out: &SyncSender<Result<Fetched>>,
    ) -> Result<bool> {
        let ctx = "reading a range of state groups";
        let groups = in_range(
            tx,
            "SELECT id, room_id FROM state_groups \
             WHERE id >= $1 AND id < $2 AND room_id IS NOT NULL ORDER BY id",
            (from, to),
            ctx,
        )?;
        let mut members = Vec::new();
        for row in &groups {
            let id: i64 = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
            let room: &str = row.try_get(1).map_err(|e| Error::db(ctx, e))?;
            if let Some(chunk) = self.chunk_of(id, room) {
                members.push((id, chunk));
            }
        }
        drop(groups);
        if members.is_empty() {
            return Ok(true);
        }
        if out.send(Ok(Fetched::Groups(members))).is_err() {
            return Ok(false);
        }
        let edges = in_range(
            tx,
            "SELECT state_group, prev_state_group FROM state_group_edges \
             WHERE state_group >= $1 AND state_group < $2",
            (from, to),
            "reading a range of state group edges",
        )?;
        if out.send(Ok(Fetched::Edges(edges))).is_err() {
            return Ok(false);
        }
        let slice = (self.range_ids / ROW_SLICES).max(1);
        let mut start = from;
        while start < to {
            let stop = start.saturating_add(slice).min(to);
            let rows = in_range(
                tx,
                "SELECT state_group, type, state_key, event_id FROM state_groups_state \
                 WHERE state_group >= $1 AND state_group < $2",
                (start, stop),
                "reading a range of state rows",
            )?;
            if out.send(Ok(Fetched::Rows(rows))).is_err() {
                return Ok(false);
            }
            start = stop;
        }
        Ok(true)
    }

    /// The planned chunk group `id` of `room` belongs to, if any.
    fn chunk_of(&mut self, id: i64, room: &str) -> Option<u32> {
        let &room = self.room_index.get(room)?;
        if self.left.has_left(room) {
            return None;
        }
        let chunks = &self.plan.rooms[room as usize].chunks;
        let next = &mut self.next[room as usize];
        while *next < chunks.len() && self.plan.chunks[chunks[*next] as usize].last < id {
            *next += 1;
        }
        let &chunk = chunks.get(*next)?;
        (self.plan.chunks[chunk as usize].first <= id).then_some(chunk)
    }
}

/// `sql`'s rows for the range `[from, to)` (its `$1` and `$2`).
fn in_range(
    tx: &mut Transaction<'_>,
    sql: &str,
    (from, to): (i64, i64),
    ctx: &str,
) -> Result<Vec<Row>> {
    tx.query_typed(
        sql,
        &[
            (&from as &(dyn ToSql + Sync), Type::INT8),
            (&to, Type::INT8),
        ],
    )
    .map_err(|e| Error::db(ctx, e))
}

/// Whether a statement failed on `lock_timeout`.
fn is_lock_timeout(e: &Error) -> bool {
    e.sqlstate() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}
