//! Writing a new structure to the database.
//!
//! Changed groups are written in batches: one transaction per batch, with
//! set-based deletes, one multi-row edge insert and a binary COPY of the new
//! rows. A batch commits whole or not at all, so a crash or a lost
//! connection never leaves a group without its rows or its edge, and the
//! batches go in ascending id order, as the design requires.

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::{Client, Transaction};

use crate::error::{Error, Result};
use crate::group::GroupMap;

/// Most groups in one write transaction.
const MAX_GROUPS_PER_BATCH: usize = 500;
/// A batch is closed once it holds this many new rows.
const MAX_ROWS_PER_BATCH: usize = 50_000;

/// Writes `groups` (ascending) from `new` for `room_id`. `on_batch` is told
/// how many groups each committed batch held. Returns the groups written.
pub fn write_changes(
    client: &mut Client,
    room_id: &str,
    new: &GroupMap,
    groups: &[i64],
    on_batch: &mut dyn FnMut(usize),
) -> Result<usize> {
    for batch in batches(new, groups) {
        let mut tx = client
            .transaction()
            .map_err(|e| Error::db("starting a write transaction", e))?;
        write_batch(&mut tx, room_id, new, batch)?;
        tx.commit()
            .map_err(|e| Error::db("committing rewritten state groups", e))?;
        on_batch(batch.len());
    }
    Ok(groups.len())
}

/// Writes one batch inside an open transaction (the caller commits, and may
/// add its own statements, e.g. saving progress, to the same transaction).
pub fn write_batch(
    tx: &mut Transaction<'_>,
    room_id: &str,
    new: &GroupMap,
    batch: &[i64],
) -> Result<()> {
    let ctx = "rewriting state groups";
    let (from, to): (Vec<i64>, Vec<i64>) = batch
        .iter()
        .filter_map(|g| new[g].prev.map(|p| (*g, p)))
        .unzip();
    tx.execute(
        "DELETE FROM state_group_edges WHERE state_group = ANY($1)",
        &[&batch],
    )
    .map_err(|e| Error::db(ctx, e))?;
    if !from.is_empty() {
        tx.execute(
            "INSERT INTO state_group_edges (state_group, prev_state_group) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[])",
            &[&from, &to],
        )
        .map_err(|e| Error::db(ctx, e))?;
    }
    tx.execute(
        "DELETE FROM state_groups_state WHERE state_group = ANY($1)",
        &[&batch],
    )
    .map_err(|e| Error::db(ctx, e))?;

    let sink = tx
        .copy_in(
            "COPY state_groups_state (state_group, room_id, type, state_key, event_id) \
             FROM STDIN (FORMAT binary)",
        )
        .map_err(|e| Error::db(ctx, e))?;
    let mut writer = BinaryCopyInWriter::new(
        sink,
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT],
    );
    for group in batch {
        for ((ty, state_key), event_id) in new[group].delta.iter() {
            writer
                .write(&[group, &room_id, &&**ty, &&**state_key, &&**event_id])
                .map_err(|e| Error::db(ctx, e))?;
        }
    }
    writer.finish().map_err(|e| Error::db(ctx, e))?;
    Ok(())
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
