//! Writing a new structure to the database, safely beside a live Synapse.
//!
//! Changed groups are written in batches: one transaction per batch, with
//! set-based deletes, one multi-row edge insert and a binary COPY of the new
//! rows. A batch commits whole or not at all, so a crash or a lost
//! connection never leaves a group without its rows or its edge, and the
//! batches go in ascending id order, as the design requires.
//!
//! Synapse (1.124+) deletes and de-deltas groups in the background, so each
//! transaction first does what Synapse's own writers do: it locks every
//! group it rewrites and every new base `FOR KEY SHARE` (so a concurrent
//! deletion waits for us or has already happened) and bumps the bases'
//! pending deletion. It then re-checks that each group still has the edge
//! and row count that were loaded. A group that is gone or changed is left
//! as Synapse has it (its state is unchanged, so groups built on it stay
//! right); a group whose new base is gone is left as it is too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::{Client, Transaction};

use crate::error::{Error, Result};
use crate::group::GroupMap;
use crate::state_map::Symbols;

/// Most groups in one write transaction.
const MAX_GROUPS_PER_BATCH: usize = 500;
/// A batch is closed once it holds this many new rows.
const MAX_ROWS_PER_BATCH: usize = 50_000;

/// What writing a set of groups did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Groups rewritten.
    pub written: usize,
    /// Groups left alone because Synapse deleted or rewrote them (or their
    /// new base) since they were loaded.
    pub skipped: usize,
    /// Rows removed (the rewritten groups' old rows).
    pub rows_deleted: u64,
    /// Rows written (the rewritten groups' new rows).
    pub rows_inserted: u64,
}

impl WriteReport {
    /// Adds the figures of another write.
    pub fn add(&mut self, other: WriteReport) {
        self.written += other.written;
        self.skipped += other.skipped;
        self.rows_deleted += other.rows_deleted;
        self.rows_inserted += other.rows_inserted;
    }
}

/// Writes `groups` (ascending ids whose entries in `new`, the rewritten
/// entries, differ from `original`) for `room_id`, one transaction per batch. `on_batch` is told
/// how many groups each committed batch held.
pub fn write_changes(
    client: &mut Client,
    room_id: &str,
    symbols: &Symbols,
    original: &GroupMap,
    new: &GroupMap,
    groups: &[i64],
    on_batch: &mut dyn FnMut(usize),
) -> Result<WriteReport> {
    let mut report = WriteReport::default();
    for batch in batches(new, groups) {
        let mut tx = client
            .transaction()
            .map_err(|e| Error::db("starting a write transaction", e))?;
        report.add(write_batch(
            &mut tx, room_id, symbols, original, new, batch,
        )?);
        tx.commit()
            .map_err(|e| Error::db("committing rewritten state groups", e))?;
        on_batch(batch.len());
    }
    Ok(report)
}

/// Writes one batch inside an open transaction (the caller commits, and may
/// add its own statements, e.g. saving progress, to the same transaction).
pub fn write_batch(
    tx: &mut Transaction<'_>,
    room_id: &str,
    symbols: &Symbols,
    original: &GroupMap,
    new: &GroupMap,
    batch: &[i64],
) -> Result<WriteReport> {
    let ctx = "rewriting state groups";
    let db = |e| Error::db(ctx, e);

    let bases: BTreeSet<i64> = batch.iter().filter_map(|g| new[g].prev).collect();
    // Also lock each group's current predecessor: Synapse's deletion locks
    // the groups it deletes FOR UPDATE before de-deltaing their children, so
    // it waits for us instead of de-deltaing a group we are rewriting.
    let old_prevs = batch.iter().filter_map(|g| original[g].prev);
    let mut locked: Vec<i64> = batch
        .iter()
        .copied()
        .chain(bases.iter().copied())
        .chain(old_prevs)
        .collect();
    locked.sort_unstable();
    locked.dedup();
    debug!("write batch of {} groups: locking", batch.len());
    // One round trip: the locks, and whether Synapse's pending-deletion
    // table (1.124+) exists.
    let lock_row = tx
        .query_typed_one(
            "WITH locked AS ( \
                 SELECT id FROM state_groups WHERE id = ANY($1) ORDER BY id FOR KEY SHARE \
             ) SELECT array(SELECT id FROM locked), \
                      to_regclass('state_groups_pending_deletion') IS NOT NULL",
            &[(&locked, Type::INT8_ARRAY)],
        )
        .map_err(db)?;
    let existing: BTreeSet<i64> = lock_row.get::<_, Vec<i64>>(0).into_iter().collect();
    let has_pending_table: bool = lock_row.get(1);
    if has_pending_table && !bases.is_empty() {
        let bases: Vec<i64> = bases.iter().copied().collect();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        tx.execute_typed(
            "UPDATE state_groups_pending_deletion \
             SET sequence_number = DEFAULT, insertion_ts = $2 WHERE state_group = ANY($1)",
            &[(&bases, Type::INT8_ARRAY), (&now_ms, Type::INT8)],
        )
        .map_err(db)?;
    }

    debug!("write batch: re-checking the groups");
    // What each group looks like now (after taking the locks): its edge and
    // its row count, in one round trip.
    let mut now: BTreeMap<i64, (Option<i64>, i64)> = BTreeMap::new();
    for row in tx
        .query_typed(
            "SELECT g.id, e.prev_state_group, \
                    (SELECT count(*) FROM state_groups_state AS s WHERE s.state_group = g.id) \
             FROM unnest($1::bigint[]) AS g(id) \
             LEFT JOIN state_group_edges AS e ON e.state_group = g.id",
            &[(&batch, Type::INT8_ARRAY)],
        )
        .map_err(db)?
    {
        let group: i64 = row.get(0);
        let prev: Option<i64> = row.get(1);
        let entry = now.entry(group).or_insert((prev, row.get(2)));
        if entry.0 != prev {
            // Two edges: not the structure we loaded.
            entry.0 = None;
            entry.1 = -1;
        }
    }

    let mut ready = Vec::with_capacity(batch.len());
    for &group in batch {
        let loaded = &original[&group];
        let unchanged = existing.contains(&group)
            && now.get(&group) == Some(&(loaded.prev, loaded.delta.len() as i64));
        let base_ok = new[&group].prev.is_none_or(|b| existing.contains(&b));
        if unchanged && base_ok {
            ready.push(group);
        } else {
            warn!(
                "state group {group} was changed or deleted by Synapse since it was loaded{}; leaving it as it is",
                if base_ok { "" } else { " (or its new base was)" }
            );
        }
    }
    let mut report = WriteReport {
        written: ready.len(),
        skipped: batch.len() - ready.len(),
        ..WriteReport::default()
    };
    if ready.is_empty() {
        return Ok(report);
    }

    let (from, to): (Vec<i64>, Vec<i64>) = ready
        .iter()
        .filter_map(|g| new[g].prev.map(|p| (*g, p)))
        .unzip();
    debug!("write batch: replacing {} groups", ready.len());
    report.rows_deleted = tx
        .execute_typed(
            "WITH edges AS (DELETE FROM state_group_edges WHERE state_group = ANY($1)) \
             DELETE FROM state_groups_state WHERE state_group = ANY($1)",
            &[(&ready, Type::INT8_ARRAY)],
        )
        .map_err(db)?;
    if !from.is_empty() {
        tx.execute_typed(
            "INSERT INTO state_group_edges (state_group, prev_state_group) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[])",
            &[(&from, Type::INT8_ARRAY), (&to, Type::INT8_ARRAY)],
        )
        .map_err(db)?;
    }

    debug!("write batch: copying the new rows");
    let sink = tx
        .copy_in(
            "COPY state_groups_state (state_group, room_id, type, state_key, event_id) \
             FROM STDIN (FORMAT binary)",
        )
        .map_err(db)?;
    let mut writer = BinaryCopyInWriter::new(
        sink,
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT],
    );
    for group in &ready {
        for (key, value) in new[group].delta.iter() {
            let (ty, state_key) = symbols.key_str(key);
            let event_id = symbols.value_str(value);
            writer
                .write(&[group, &room_id, &ty, &state_key, &event_id])
                .map_err(db)?;
        }
    }
    report.rows_inserted = writer.finish().map_err(db)?;
    Ok(report)
}

/// Splits `groups` into consecutive batches bounded in groups and rows.
pub fn batches<'a>(new: &'a GroupMap, groups: &'a [i64]) -> impl Iterator<Item = &'a [i64]> + 'a {
    let mut rest = groups;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut rows = 0;
        let mut len = 0;
        while len < rest.len() && len < MAX_GROUPS_PER_BATCH {
            rows += new[&rest[len]].delta.len();
            len += 1;
            if rows >= MAX_ROWS_PER_BATCH {
                break;
            }
        }
        let (batch, tail) = rest.split_at(len);
        rest = tail;
        Some(batch)
    })
}
