//! The I/O floor of a run, measured with PostgreSQL alone on the same
//! database: the time to read the rows the run covers, and to write the
//! rows it leaves into a fresh table with Synapse's index.

use crate::{pg, Res};
use postgres::Client;
use std::io::{Read, Write};
use std::time::Instant;

/// Seconds to run `copy_query` (a `COPY ... TO STDOUT`) and drain its
/// output into a null sink; the best of `tries`.
pub fn read_floor(c: &mut Client, copy_query: &str, tries: usize) -> Res<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..tries.max(1) {
        let started = Instant::now();
        let mut reader = pg("COPY TO", c.copy_out(copy_query))?;
        std::io::copy(&mut reader, &mut std::io::sink())
            .map_err(|e| format!("reading {copy_query}: {e}"))?;
        drop(reader);
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Reads the rows selected by `where_clause` (binary COPY, all five
/// columns), then times copying them into a fresh table shaped like
/// `state_groups_state` with Synapse's index. Returns the seconds that took.
pub fn write_floor(c: &mut Client, where_clause: &str) -> Res<f64> {
    let mut bytes = Vec::new();
    {
        let mut reader = pg(
            "COPY TO",
            c.copy_out(&format!(
                "COPY (SELECT state_group, room_id, type, state_key, event_id \
                 FROM state_groups_state {where_clause}) TO STDOUT (FORMAT binary)"
            )),
        )?;
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the rows after the run: {e}"))?;
    }
    pg(
        "creating the floor table",
        c.batch_execute(
            "DROP TABLE IF EXISTS bench_floor;
             CREATE TABLE bench_floor (
                 state_group BIGINT NOT NULL,
                 room_id TEXT NOT NULL,
                 type TEXT NOT NULL,
                 state_key TEXT NOT NULL,
                 event_id TEXT NOT NULL
             );
             CREATE INDEX bench_floor_type_idx ON bench_floor (state_group, type, state_key);",
        ),
    )?;
    let started = Instant::now();
    let mut writer = pg(
        "COPY FROM",
        c.copy_in("COPY bench_floor FROM STDIN (FORMAT binary)"),
    )?;
    writer
        .write_all(&bytes)
        .map_err(|e| format!("writing the floor table: {e}"))?;
    pg("finishing COPY FROM", writer.finish())?;
    let secs = started.elapsed().as_secs_f64();
    pg(
        "dropping the floor table",
        c.batch_execute("DROP TABLE bench_floor"),
    )?;
    Ok(secs)
}
