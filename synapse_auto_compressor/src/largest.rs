//! `--largest-rooms N`: which rooms to compress first, from an estimate
//! cheap enough for a database of a billion rows, in two steps:
//!
//! 1. each room's rows not yet compressed (after its saved position), from a
//!    sample of `state_groups_state` (`TABLESAMPLE SYSTEM`, about
//!    [`SAMPLE_ROWS`] rows, the whole table when it is smaller) scaled up:
//!    no row is counted one by one, which is what made the reference's
//!    first version of this mode too slow on big databases;
//! 2. for the [`candidates`] rooms with the most such rows, the share of
//!    rows a run saves, from a trial of the room's next chunk (loaded and
//!    compressed in memory as the survey does, nothing written): rows vary
//!    far less between rooms than what compressing them saves.
//!
//! A room's estimated saving is (1) times (2); the `N` rooms estimated to
//! save the most, and something, are picked. How close this comes to the
//! survey's figures is measured in docs/automatic.md ("Largest rooms first").

use log::info;
use postgres::Client;
use synapse_compress_state::db::Prepared;
use synapse_compress_state::{Error, Result};

use crate::config::AutoConfig;
use crate::survey::Trial;
use crate::{state_saving, survey};

/// Rows the sample aims for.
pub const SAMPLE_ROWS: f64 = 1_000_000.0;

/// A room the estimate picked, with its estimated saving.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    pub room_id: String,
    pub rows_saved: i64,
}

/// The percentage of `state_groups_state`'s pages to sample: about
/// [`SAMPLE_ROWS`] rows by the planner's row count (or the table's size,
/// if never analysed), everything for a small table.
fn sample_percent(client: &mut Client) -> Result<f64> {
    let rows: f64 = client
        .query_one(
            // Never analysed (-1): about 100 bytes a row.
            "SELECT COALESCE((SELECT CASE WHEN reltuples >= 0 THEN reltuples::float8 \
                                          ELSE pg_relation_size(oid) / 100.0 END \
                              FROM pg_class WHERE oid = to_regclass('state_groups_state')), 0)",
            &[],
        )
        .map_err(|e| Error::db("estimating the rooms' sizes", e))?
        .get(0);
    Ok(if rows <= SAMPLE_ROWS {
        100.0
    } else {
        (100.0 * SAMPLE_ROWS / rows).max(0.000_1)
    })
}

/// A room's rows after a run, from a trial of its first chunk: the start
/// of its new tree once, and the rest at the trial's rows per group.
fn rows_after(trial: &Trial, groups: i64) -> i64 {
    let start = usize::from(trial.start_rows > 0);
    let per_group =
        (trial.rows_after - trial.start_rows) as f64 / (trial.groups - start).max(1) as f64;
    trial.start_rows as i64 + (per_group * (groups - start as i64).max(0) as f64).round() as i64
}

/// The room's groups after its position (by `state_groups`' room index).
fn groups_left(client: &mut Client, room_id: &str, after: Option<i64>) -> Result<i64> {
    client
        .query_one(
            "SELECT count(*) FROM state_groups WHERE room_id = $1 \
             AND id > COALESCE($2::bigint, -1)",
            &[&room_id, &after],
        )
        .and_then(|row| row.try_get(0))
        .map_err(|e| Error::db("counting a room's groups", e))
}

/// How many rooms get a trial chunk when `n` are wanted.
pub fn candidates(n: i64) -> i64 {
    n.saturating_mul(4).max(20)
}

/// The `n` rooms estimated to save the most (those estimated to save
/// nothing are left out), most first. The progress tables exist (the run
/// made them).
pub fn largest_rooms(
    client: &mut Client,
    prepared: &mut Prepared,
    config: &AutoConfig,
    n: i64,
) -> Result<Vec<Estimate>> {
    let ctx = "estimating the rooms' sizes";
    let percent = sample_percent(client)?;
    let rows = client
        .query(
            "SELECT s.room_id, (count(*) * 100.0 / $1::float8)::bigint AS rows \
             FROM state_groups_state AS s TABLESAMPLE SYSTEM ($1::float8) \
             LEFT JOIN state_compressor_progress AS p ON p.room_id = s.room_id \
             WHERE s.room_id IS NOT NULL \
               AND s.state_group > COALESCE(p.last_compressed, -1) \
             GROUP BY s.room_id ORDER BY rows DESC, s.room_id LIMIT $2",
            &[&percent, &candidates(n)],
        )
        .map_err(|e| Error::db(ctx, e))?;
    let mut estimates = Vec::with_capacity(rows.len());
    for row in &rows {
        let room_id: String = row.try_get(0).map_err(|e| Error::db(ctx, e))?;
        let rows_now: i64 = row.try_get(1).map_err(|e| Error::db(ctx, e))?;
        let progress =
            state_saving::read_room_progress(client, prepared, &room_id, &config.default_levels)?;
        let groups = groups_left(client, &room_id, progress.last_compressed)?;
        // The trial: the chunk a run would do next.
        let (after, levels) = (progress.last_compressed, progress.levels);
        let trial = survey::trial_chunk(client, config, &room_id, after, levels)?;
        let Some(trial) = trial.filter(|t| t.groups > 0) else {
            continue;
        };
        estimates.push(Estimate {
            room_id,
            rows_saved: rows_now - rows_after(&trial, groups),
        });
    }
    estimates.retain(|e| e.rows_saved > 0);
    estimates.sort_by(|a, b| {
        b.rows_saved
            .cmp(&a.rows_saved)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    estimates.truncate(n as usize);
    for room in &estimates {
        info!(
            "Largest rooms: {} (estimated {} rows to save, from a {percent:.2}% sample and a trial chunk)",
            room.room_id, room.rows_saved
        );
    }
    Ok(estimates)
}
