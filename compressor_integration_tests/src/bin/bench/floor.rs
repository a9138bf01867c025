//! The honest I/O floor of a run, measured with PostgreSQL alone: what any
//! compressor producing the same result must at least do.
//!
//! - read: `COPY` out of the rows the run reads (on the run's own copy, just
//!   before the run);
//! - delete: `DELETE` of the old rows and edges of every group the run
//!   changed;
//! - insert: `COPY` of those groups' new rows (and edges) into the tables,
//!   with Synapse's index in place.
//!
//! Delete and insert are timed on a fresh copy of the source database (the
//! state the run started from), with the groups and new rows taken from the
//! run's result. A group counts as changed when its edge or its number of
//! rows differs after the run (a rewrite always changes one or the other:
//! the compressor only rewrites a group to give it another predecessor).

use crate::{pg, say, Res};
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

/// Records every group's edge and row count before the run (in the run's
/// database, table `bench_before`), to tell afterwards which groups it
/// changed.
pub fn record_before(c: &mut Client) -> Res<()> {
    pg(
        "recording the groups before the run",
        c.batch_execute(
            "DROP TABLE IF EXISTS bench_before;
             CREATE TABLE bench_before AS
                 SELECT g.id AS state_group, e.prev_state_group AS prev,
                        COALESCE(r.n, 0) AS n
                 FROM state_groups g
                 LEFT JOIN state_group_edges e ON e.state_group = g.id
                 LEFT JOIN (SELECT state_group, count(*) AS n FROM state_groups_state
                            GROUP BY state_group) r ON r.state_group = g.id;",
        ),
    )
}

/// What the run changed, as binary `COPY` data ready to load elsewhere.
pub struct Changes {
    /// Groups changed.
    pub groups: i64,
    /// Their new rows (`state_groups_state`, all five columns).
    pub new_rows: i64,
    ids: Vec<u8>,
    rows: Vec<u8>,
    edges: Vec<u8>,
}

/// Reads what the run changed from its database (after [`record_before`]
/// and the run), then drops `bench_before`.
pub fn changes_after(c: &mut Client) -> Res<Changes> {
    pg(
        "finding the groups the run changed",
        c.batch_execute(
            "CREATE TEMP TABLE bench_changed AS
                 SELECT b.state_group
                 FROM bench_before b
                 LEFT JOIN state_group_edges e ON e.state_group = b.state_group
                 LEFT JOIN (SELECT state_group, count(*) AS n FROM state_groups_state
                            GROUP BY state_group) r ON r.state_group = b.state_group
                 WHERE e.prev_state_group IS DISTINCT FROM b.prev
                    OR COALESCE(r.n, 0) <> b.n;
             DROP TABLE bench_before;",
        ),
    )?;
    let copy = |c: &mut Client, query: &str| -> Res<Vec<u8>> {
        let mut bytes = Vec::new();
        pg("COPY TO", c.copy_out(query))?
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{query}: {e}"))?;
        Ok(bytes)
    };
    let ids = copy(c, "COPY bench_changed TO STDOUT (FORMAT binary)")?;
    let rows = copy(
        c,
        "COPY (SELECT s.state_group, s.room_id, s.type, s.state_key, s.event_id
               FROM state_groups_state s JOIN bench_changed USING (state_group))
         TO STDOUT (FORMAT binary)",
    )?;
    let edges = copy(
        c,
        "COPY (SELECT e.state_group, e.prev_state_group
               FROM state_group_edges e JOIN bench_changed USING (state_group))
         TO STDOUT (FORMAT binary)",
    )?;
    let row = pg(
        "counting the changes",
        c.query_one(
            "SELECT (SELECT count(*) FROM bench_changed),
                    (SELECT count(*) FROM state_groups_state JOIN bench_changed USING (state_group))",
            &[],
        ),
    )?;
    pg(
        "dropping bench_changed",
        c.batch_execute("DROP TABLE bench_changed"),
    )?;
    Ok(Changes {
        groups: row.get(0),
        new_rows: row.get(1),
        ids,
        rows,
        edges,
    })
}

/// Seconds to delete the changed groups' old rows and edges, and to insert
/// their new ones, on `c`: a fresh copy of the database the run started
/// from. Returns (delete, insert).
pub fn write_floor(c: &mut Client, changes: &Changes) -> Res<(f64, f64)> {
    pg(
        "loading the changed groups",
        c.batch_execute("CREATE TEMP TABLE bench_changed (state_group BIGINT PRIMARY KEY)"),
    )?;
    copy_in(
        c,
        "COPY bench_changed FROM STDIN (FORMAT binary)",
        &changes.ids,
    )?;
    pg(
        "preparing the floor",
        c.batch_execute("ANALYZE bench_changed; CHECKPOINT"),
    )?;
    say(&format!(
        "floor: deleting {} groups' rows and edges, inserting {} rows",
        changes.groups, changes.new_rows
    ));
    let started = Instant::now();
    pg(
        "deleting the old rows",
        c.batch_execute(
            "DELETE FROM state_groups_state s USING bench_changed c
                 WHERE s.state_group = c.state_group;
             DELETE FROM state_group_edges e USING bench_changed c
                 WHERE e.state_group = c.state_group;",
        ),
    )?;
    let delete = started.elapsed().as_secs_f64();
    let started = Instant::now();
    copy_in(
        c,
        "COPY state_groups_state (state_group, room_id, type, state_key, event_id) \
         FROM STDIN (FORMAT binary)",
        &changes.rows,
    )?;
    copy_in(
        c,
        "COPY state_group_edges (state_group, prev_state_group) FROM STDIN (FORMAT binary)",
        &changes.edges,
    )?;
    Ok((delete, started.elapsed().as_secs_f64()))
}

fn copy_in(c: &mut Client, query: &str, bytes: &[u8]) -> Res<()> {
    let mut writer = pg("COPY FROM", c.copy_in(query))?;
    writer
        .write_all(bytes)
        .map_err(|e| format!("{query}: {e}"))?;
    pg("finishing COPY FROM", writer.finish()).map(|_| ())
}
