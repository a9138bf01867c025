//! Figures about `state_groups_state` as a whole, for the summaries: the
//! rows of the rooms a run touched, the table's size on disk and an
//! estimate of the space the run's deletions left free inside it, and the
//! optional `VACUUM (ANALYZE)` at the end of a run (`--vacuum`), which
//! needs the right to vacuum the table, checked before any work.

use std::fmt;
use std::time::{Duration, Instant};

use postgres::{Client, GenericClient};

use crate::error::{Error, Result};

/// The table whose rows a compression deletes.
pub const TABLE: &str = "state_groups_state";

/// The rows of `state_groups_state` that belong to `room`'s groups (those
/// listed in `state_groups` for the room).
///
/// Why this query: the table has no index on `room_id`, so counting by it
/// always reads the whole table (hours on a table of 10^9 rows). Going
/// through the room's groups (`state_groups_room_id_idx`) lets PostgreSQL
/// count a small room with the `(state_group, type, state_key)` index
/// alone, and read the whole table only when the room is a large share of
/// it and that is cheaper. Rows of a group that lost its `state_groups` row
/// (a damaged database) are not counted. This is an exact count, unlike
/// `pg_class.reltuples`, which is an estimate as of the last ANALYZE.
pub fn room_rows(client: &mut impl GenericClient, room: &str) -> Result<u64> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM state_groups_state \
             WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = $1)",
            &[&room],
        )
        .map_err(|e| Error::db("counting the room's rows", e))?
        .get(0);
    Ok(n as u64)
}

/// A room's groups left out of [`rooms_rows_outside`]'s count: those with
/// `after < id <= last`.
#[derive(Clone, Copy, Debug)]
pub struct Span<'a> {
    room: &'a str,
    after: i64,
    last: i64,
}

impl<'a> Span<'a> {
    /// Leaves out `room`'s groups after `after` (all when `None`) up to
    /// `last` (all when `None`).
    pub fn covering(room: &'a str, after: Option<i64>, last: Option<i64>) -> Self {
        Span {
            room,
            after: after.unwrap_or(i64::MIN),
            last: last.unwrap_or(i64::MAX),
        }
    }

    /// Leaves none of `room`'s groups out.
    pub fn none(room: &'a str) -> Self {
        Span {
            room,
            after: i64::MAX,
            last: i64::MAX,
        }
    }

    /// Whether it leaves out every group of its room.
    fn whole(&self) -> bool {
        self.after == i64::MIN && self.last == i64::MAX
    }
}

/// The rows of the spans' rooms in `state_groups_state`, counted as
/// [`room_rows`] counts, but only for the groups each span does not cover.
/// Rooms covered whole are not looked at, so after a run that did whole
/// rooms nothing is read (a query that visited every group of those rooms
/// only to find none took 43 s on `20m` with the server in 256 MiB).
pub fn rooms_rows_outside(client: &mut impl GenericClient, spans: &[Span<'_>]) -> Result<u64> {
    let spans: Vec<&Span> = spans.iter().filter(|s| !s.whole()).collect();
    if spans.is_empty() {
        return Ok(0);
    }
    let rooms: Vec<&str> = spans.iter().map(|s| s.room).collect();
    let afters: Vec<i64> = spans.iter().map(|s| s.after).collect();
    let lasts: Vec<i64> = spans.iter().map(|s| s.last).collect();
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM state_groups_state WHERE state_group IN ( \
                 SELECT g.id FROM state_groups AS g \
                 JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS s(room, after, last) \
                 ON g.room_id = s.room WHERE NOT (g.id > s.after AND g.id <= s.last))",
            &[&rooms, &afters, &lasts],
        )
        .map_err(|e| Error::db("counting the rooms' rows", e))?
        .get(0);
    Ok(n as u64)
}

/// A group a run rewrote: its id, the edge written (none for a group
/// given its full state) and the number of rows written.
pub type Written = (i64, Option<i64>, i64);

/// [`room_rows`] right after a run rewrote `written` groups of `room`.
///
/// Counting the rewritten groups' rows again would walk every row the run
/// deleted (their index entries stay until VACUUM, and each one's heap
/// tuple is visited to find it dead: on the benchmark's biggest room that
/// took longer than the run's own reading). So a rewritten group that is
/// still in the room with exactly the edge written counts with the rows
/// written: only Synapse changes a group's rows once it exists, and it
/// does so by deleting the group or by replacing its edge with full state
/// (when its predecessor is deleted). The other rewritten groups, and the
/// rest of the room, are counted in the table.
pub fn room_rows_after_rewrite(
    client: &mut impl GenericClient,
    room: &str,
    written: &[Written],
) -> Result<u64> {
    let ids: Vec<i64> = written.iter().map(|w| w.0).collect();
    let prevs: Vec<Option<i64>> = written.iter().map(|w| w.1).collect();
    let rows: Vec<i64> = written.iter().map(|w| w.2).collect();
    let n: i64 = client
        .query_one(
            "WITH written(id, prev, n) AS ( \
                 SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) \
             ), kept AS ( \
                 SELECT w.id, w.n FROM written AS w \
                 JOIN state_groups AS g ON g.id = w.id AND g.room_id = $1 \
                 WHERE array(SELECT e.prev_state_group FROM state_group_edges AS e \
                             WHERE e.state_group = w.id ORDER BY 1) \
                       = array_remove(ARRAY[w.prev], NULL) \
             ) SELECT ((SELECT count(*) FROM state_groups_state WHERE state_group IN ( \
                          SELECT id FROM state_groups \
                          WHERE room_id = $1 AND id NOT IN (SELECT id FROM kept))) \
                       + (SELECT coalesce(sum(n), 0) FROM kept))::bigint",
            &[&room, &ids, &prevs, &rows],
        )
        .map_err(|e| Error::db("counting the room's rows", e))?
        .get(0);
    Ok(n as u64)
}

/// The table's size on disk and what a run's deletions left free in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskSpace {
    /// `pg_total_relation_size`: the table with its indexes and TOAST.
    pub table_bytes: u64,
    /// An estimate of the bytes the run's deleted rows (and their index
    /// entries) occupied: free for new rows once vacuumed, still counted
    /// in `table_bytes`.
    pub estimated_free_bytes: u64,
    /// How long `--vacuum`'s VACUUM took, if it ran.
    pub vacuum: Option<Duration>,
}

impl DiskSpace {
    /// The figures as JSON fields, added to `object` (null when no row was
    /// deleted and no VACUUM ran: the table was not measured).
    pub fn add_json(space: Option<&DiskSpace>, object: &mut serde_json::Value) {
        let object = object.as_object_mut().expect("a JSON object");
        object.insert("table_bytes".into(), space.map(|s| s.table_bytes).into());
        object.insert(
            "estimated_free_bytes".into(),
            space.map(|s| s.estimated_free_bytes).into(),
        );
        object.insert(
            "vacuum_seconds".into(),
            space.and_then(|s| s.vacuum).map(|d| d.as_secs_f64()).into(),
        );
    }
}

impl fmt::Display for DiskSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Disk: {TABLE} takes {} with its indexes; about {} of it held the deleted rows (an estimate)",
            human_bytes(self.table_bytes),
            human_bytes(self.estimated_free_bytes)
        )?;
        match self.vacuum.map(|d| d.as_secs_f64()) {
            Some(seconds) => writeln!(
                f,
                "VACUUM (ANALYZE) {TABLE} took {seconds:.2}s: that space is now reused for new rows. \
                 To return it to the operating system, stop Synapse and run VACUUM FULL {TABLE} \
                 (locks the table exclusively; see the README, \"Getting the disk space back\")."
            ),
            None => writeln!(
                f,
                "Nothing to do: PostgreSQL reuses that space for new rows after the next VACUUM or \
                 autovacuum (or run with --vacuum). To return it to the operating system, stop \
                 Synapse and run VACUUM FULL {TABLE} (locks the table exclusively; see the README, \
                 \"Getting the disk space back\")."
            ),
        }
    }
}

/// `bytes` for a person: B, KiB, MiB, GiB or TiB with one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What a run does at its end about the table's space: measure it when rows
/// were deleted, and VACUUM it when asked (`--vacuum`, whether or not this
/// run deleted rows: an earlier run may have). None when neither applies.
/// The size and the estimate are taken before the VACUUM, which does not
/// shrink the table but makes the space reusable; the size again after it,
/// as it may cut empty pages off the table's end.
pub fn after_run(
    client: &mut Client,
    rows_deleted: u64,
    vacuum: bool,
) -> Result<Option<DiskSpace>> {
    if rows_deleted == 0 && !vacuum {
        return Ok(None);
    }
    let size = measure(client)?;
    let mut space = DiskSpace {
        table_bytes: size.total,
        estimated_free_bytes: size.estimate_for(rows_deleted),
        vacuum: None,
    };
    if vacuum {
        if let Some(signal) = crate::db::lock_wait::wait_before_vacuum(client)? {
            log::warn!(
                "--vacuum skipped: {signal} came while waiting for the table; autovacuum or the next --vacuum run will do it"
            );
            return Ok(Some(space));
        }
        let started = Instant::now();
        run_vacuum(client)?;
        space.vacuum = Some(started.elapsed());
        space.table_bytes = measure(client)?.total;
    }
    Ok(Some(space))
}

/// The table's sizes, and the average width of its live rows.
struct Size {
    /// With indexes and TOAST (`pg_total_relation_size`).
    total: u64,
    /// The table's own pages (`pg_relation_size`).
    heap: u64,
    /// Average bytes of a live row as stored (`pg_column_size` of the whole
    /// row), over a sample of pages; None for an empty sample.
    row_width: Option<f64>,
}

impl Size {
    /// An estimate of the bytes `rows` deleted rows hold: each row's heap
    /// tuple (its width rounded up to 8 bytes, plus its 4-byte line pointer),
    /// scaled by the table's total size over its heap's for the rows'
    /// index entries. It leaves out page headers and the gaps at page ends,
    /// and rows differ in width: an estimate, capped at the table's size.
    fn estimate_for(&self, rows: u64) -> u64 {
        let Some(width) = self.row_width else {
            return 0;
        };
        let tuple = (width / 8.0).ceil() * 8.0 + 4.0;
        let with_indexes = tuple * self.total as f64 / self.heap.max(1) as f64;
        ((rows as f64 * with_indexes) as u64).min(self.total)
    }
}

/// Pages a width sample reads at most (8 MiB with 8 KiB pages): the
/// sample's cost stays the same on a table of any size.
const SAMPLE_PAGES: f64 = 1000.0;

/// The table's sizes and a sample of its rows' widths.
///
/// Why a sample: counting the rows that occupy the table needs either a
/// full scan or `pg_stat_user_tables`, whose counters lag and drift (a
/// session's counts reach them up to a second after, or when it ends, and
/// an ANALYZE resets them to its own estimate), so bytes over rows can be
/// off by a factor of two on a freshly loaded table. The widths of the live
/// rows in a few random pages are a steadier measure of what a deleted row
/// held.
fn measure(client: &mut Client) -> Result<Size> {
    let context = "measuring state_groups_state";
    let row = client
        .query_one(
            "SELECT pg_total_relation_size(to_regclass($1)), pg_relation_size(to_regclass($1)), \
                    current_setting('block_size')::bigint",
            &[&TABLE],
        )
        .map_err(|e| Error::db(context, e))?;
    let (total, heap, block): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let pages = (heap / block.max(1)).max(1) as f64;
    let percent = (100.0 * SAMPLE_PAGES / pages).min(100.0);
    let row_width: Option<f64> = client
        .query_one(
            "SELECT avg(pg_column_size(s.*))::float8 \
             FROM state_groups_state s TABLESAMPLE SYSTEM ($1)",
            &[&(percent as f32)],
        )
        .map_err(|e| Error::db(context, e))?
        .get(0);
    Ok(Size {
        total: total as u64,
        heap: heap as u64,
        row_width,
    })
}

/// `VACUUM (ANALYZE) state_groups_state`: marks the space of deleted rows
/// reusable and refreshes the planner's statistics, without blocking
/// Synapse's reads or writes. It cannot run inside a transaction, so it is
/// sent on its own.
///
/// This session's own counts of the rows it deleted are first handed to the
/// statistics (PostgreSQL 15+ keeps them pending for up to a second):
/// handed over after the VACUUM, they would add the rows it just cleaned up
/// to `pg_stat_user_tables.n_dead_tup` again.
fn run_vacuum(client: &mut Client) -> Result<()> {
    log::info!("Running VACUUM (ANALYZE) {TABLE}...");
    let context = "vacuuming state_groups_state";
    client
        .batch_execute(
            "DO $$ BEGIN \
               IF current_setting('server_version_num')::int >= 150000 THEN \
                 PERFORM pg_stat_force_next_flush(); \
               END IF; \
             END $$",
        )
        .map_err(|e| Error::db(context, e))?;
    client
        .batch_execute("VACUUM (ANALYZE) state_groups_state")
        .map_err(|e| Error::db(context, e))
}

/// Fails with [`Error::PermissionDenied`] unless this session may VACUUM
/// the table. PostgreSQL does not fail a VACUUM it may not do: it warns
/// and skips the table, which would look like a success; so `--vacuum`
/// checks before any work. The table's owner, the database's owner (or a
/// member of either) and superusers may; from PostgreSQL 17 also whoever
/// holds MAINTAIN on the table (directly or through `pg_maintain`).
pub fn require_vacuum_right(client: &mut Client) -> Result<()> {
    let context = "checking the right to VACUUM state_groups_state";
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
                    c.relowner::regrole::text, \
                    pg_has_role(c.relowner, 'USAGE') \
                      OR pg_has_role((SELECT datdba FROM pg_database \
                                      WHERE datname = current_database()), 'USAGE') \
                      OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&TABLE],
        )
        .map_err(|e| Error::db(context, e))?;
    let (version, owner, owner_or_super): (i32, String, bool) =
        (row.get(0), row.get(1), row.get(2));
    let allowed = owner_or_super
        || (version >= 170000
            && client
                .query_one(
                    "SELECT has_table_privilege(to_regclass($1), 'MAINTAIN')",
                    &[&TABLE],
                )
                .map_err(|e| Error::db(context, e))?
                .get::<_, bool>(0));
    if allowed {
        return Ok(());
    }
    let mut who = format!("being its owner ({owner}), the database's owner or a superuser");
    if version >= 170000 {
        who += &format!(", or the MAINTAIN privilege on it (GRANT MAINTAIN ON {TABLE} TO ...)");
    }
    Err(Error::PermissionDenied(format!(
        "--vacuum: this user may not VACUUM {TABLE}: that needs {who}; run without --vacuum \
         (autovacuum will reclaim the space) or as the table's owner"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_a_person_reads_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(59 * 1024 * 1024 * 1024), "59.0 GiB");
    }
}
