//! The progress tables, with exactly the reference tool's schema so a
//! database can be continued by either tool:
//!
//! - `state_compressor_state`: per room and level (numbered from 1), the
//!   level's max size, current length and head;
//! - `state_compressor_progress`: per room, the last group compressed;
//! - `state_compressor_total_progress`: one row, how far the scan of
//!   `state_groups` has got.
//!
//! Only missing tables are created: tables that exist (made by the owner
//! in advance, say) are used as they are, needing only rights on their rows.
//! Saved levels are validated when read; a bad save (NULLs included: the
//! tables may have been created by hand) is logged and that room continues
//! with fresh levels instead of stopping the run. No value read here is
//! trusted not to be NULL or of another type: nothing panics on them.

use std::collections::BTreeSet;

use postgres::types::Type;
use postgres::{Client, GenericClient, Row};
use synapse_compress_state::db::schema::{self, Need};
use synapse_compress_state::db::Prepared;
use synapse_compress_state::error::one_line;
use synapse_compress_state::{Error, Level, LevelSizes, Result};

/// The progress tables, in the order they are created.
pub const PROGRESS_TABLES: [&str; 3] = [
    "state_compressor_state",
    "state_compressor_progress",
    "state_compressor_total_progress",
];

/// Each progress table's DDL (the index goes with its table: creating an
/// index needs ownership, which an owner-made table does not give us).
const PROGRESS_DDL: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS state_compressor_state (
    room_id TEXT NOT NULL,
    level_num INT NOT NULL,
    max_size INT NOT NULL,
    current_length INT NOT NULL,
    current_head BIGINT,
    UNIQUE (room_id, level_num)
);
CREATE INDEX IF NOT EXISTS state_compressor_state_index
    ON state_compressor_state (room_id);",
    "CREATE TABLE IF NOT EXISTS state_compressor_progress (
    room_id TEXT PRIMARY KEY,
    last_compressed BIGINT NOT NULL
);",
    "CREATE TABLE IF NOT EXISTS state_compressor_total_progress (
    lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,
    lowest_uncompressed_group BIGINT NOT NULL,
    CHECK (Lock='X')
);",
];

/// The scan position's one row.
const TOTAL_PROGRESS_ROW: &str =
    "INSERT INTO state_compressor_total_progress (lowest_uncompressed_group) \
     VALUES (0) ON CONFLICT (lock) DO NOTHING";

/// What a run does to the progress tables (see the functions below).
const PROGRESS_NEEDS: [Need; 9] = [
    Need::new(
        "SELECT",
        "state_compressor_state",
        "needed to read saved levels",
    ),
    Need::new("INSERT", "state_compressor_state", "needed to save levels"),
    Need::new("UPDATE", "state_compressor_state", "needed to save levels"),
    Need::new(
        "DELETE",
        "state_compressor_state",
        "needed to drop levels no longer used",
    ),
    Need::new(
        "SELECT",
        "state_compressor_progress",
        "needed to read where rooms stopped",
    ),
    Need::new(
        "INSERT",
        "state_compressor_progress",
        "needed to save where rooms stopped",
    ),
    Need::new(
        "UPDATE",
        "state_compressor_progress",
        "needed to save where rooms stopped",
    ),
    Need::new(
        "SELECT",
        "state_compressor_total_progress",
        "needed to read the scan position",
    ),
    Need::new(
        "UPDATE",
        "state_compressor_total_progress",
        "needed to save the scan position",
    ),
];

/// The privileges the automatic tool uses on its progress tables, those
/// that exist (a missing one is created, see [`create_tables_if_needed`]).
/// INSERT on the scan position's table is needed only while its one row is
/// missing, which is looked up here when it can be.
pub fn progress_needs(client: &mut Client) -> Result<Vec<Need>> {
    let mut needs = PROGRESS_NEEDS.to_vec();
    if !total_progress_row_exists(client)?.unwrap_or(true) {
        needs.push(Need::new(
            "INSERT",
            "state_compressor_total_progress",
            "needed to add its missing row",
        ));
    }
    Ok(needs)
}

/// Whether the scan position's row exists; `None` when the table is
/// missing or unreadable (the privilege check then says so).
fn total_progress_row_exists(client: &mut Client) -> Result<Option<bool>> {
    let ctx = "reading the scan position";
    let readable: bool = client
        .query_one(
            "SELECT COALESCE(has_table_privilege( \
                 to_regclass('state_compressor_total_progress'), 'SELECT'), false)",
            &[],
        )
        .map_err(|e| Error::db(ctx, e))?
        .get(0);
    if !readable {
        return Ok(None);
    }
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM state_compressor_total_progress)",
            &[],
        )
        .map_err(|e| Error::db(ctx, e))?
        .get(0);
    Ok(Some(exists))
}

/// Creates the progress tables that do not exist yet, and the scan
/// position's row if it is missing. Tables that exist are used as they are,
/// whoever owns them: nothing is asked of them but their rows.
pub fn create_tables_if_needed(client: &mut Client) -> Result<()> {
    let ctx = "creating the progress tables";
    let exists = schema::tables_exist(client, &PROGRESS_TABLES)?;
    let missing: Vec<&str> = PROGRESS_DDL
        .iter()
        .zip(&exists)
        .filter(|(_, &exists)| !exists)
        .map(|(ddl, _)| *ddl)
        .collect();
    if !missing.is_empty() {
        client
            .batch_execute(&format!(
                "SET client_min_messages = warning; {} RESET client_min_messages;",
                missing.join("\n")
            ))
            .map_err(|e| Error::db(ctx, e))?;
    }
    if total_progress_row_exists(client)? != Some(true) {
        client
            .execute(TOTAL_PROGRESS_ROW, &[])
            .map_err(|e| Error::db(ctx, e))?;
    }
    Ok(())
}

/// Where a room's compression continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomProgress {
    /// The last group compressed (exclusive start of the next chunk).
    pub last_compressed: Option<i64>,
    /// The levels to continue with.
    pub levels: Vec<Level>,
    /// Set when the saved state was unusable and the levels were reset.
    pub reset_reason: Option<String>,
}

/// Reads and validates a room's saved progress. Unusable saves (gaps in
/// the levels, a length above the maximum, a missing head, levels without
/// progress) give fresh `default_levels` and a reason, never an error.
pub fn read_room_progress(
    client: &mut Client,
    prepared: &mut Prepared,
    room_id: &str,
    default_levels: &LevelSizes,
) -> Result<RoomProgress> {
    let ctx = "reading saved progress";
    // One round trip: the position (repeated on every row) and the levels
    // (a single row of NULLs when the room has none).
    let rows = prepared
        .query(
            client,
            "SELECT (SELECT last_compressed FROM state_compressor_progress WHERE room_id = $1), \
                    s.level_num, s.max_size, s.current_length, s.current_head \
             FROM (SELECT 1) AS one \
             LEFT JOIN state_compressor_state AS s ON s.room_id = $1 \
             ORDER BY s.level_num",
            &[Type::TEXT],
            &[&room_id],
        )
        .map_err(|e| Error::db(ctx, e))?;
    let last_compressed: Option<i64> = match rows.first() {
        Some(row) => row.try_get(0).map_err(|e| Error::db(ctx, e))?,
        None => None,
    };
    let saved: Result<Vec<SavedLevel>, String> = rows
        .iter()
        .filter_map(|r| saved_level(r).transpose())
        .collect();

    let fresh = |last_compressed, reason: Option<String>| RoomProgress {
        last_compressed,
        levels: default_levels.empty_levels(),
        reset_reason: reason,
    };
    let saved = match saved {
        Ok(saved) => saved,
        Err(why) => {
            return Ok(fresh(
                last_compressed,
                Some(format!(
                    "saved levels are unreadable ({why}); resetting its levels"
                )),
            ))
        }
    };
    if saved.is_empty() {
        return Ok(fresh(last_compressed, None));
    }
    let Some(last) = last_compressed else {
        return Ok(fresh(
            None,
            Some("saved levels but no saved progress; starting the room again".to_owned()),
        ));
    };
    match validate_levels(&saved, last) {
        Ok(levels) => {
            let heads: Vec<i64> = levels.iter().filter_map(Level::head).collect();
            let found = heads_in_room(client, prepared, room_id, &heads)?;
            if let Some(missing) = heads.iter().find(|h| !found.contains(h)) {
                return Ok(fresh(
                    Some(last),
                    Some(format!(
                        "saved level head {missing} no longer exists in this room; resetting its levels"
                    )),
                ));
            }
            Ok(RoomProgress {
                last_compressed: Some(last),
                levels,
                reset_reason: None,
            })
        }
        Err(why) => Ok(fresh(
            Some(last),
            Some(format!(
                "saved levels are invalid ({why}); resetting its levels"
            )),
        )),
    }
}

/// A saved level row: `(level_num, max_size, current_length, head)`.
type SavedLevel = (i32, i32, i32, Option<i64>);

/// One row of the levels query: `None` for the row of NULLs a room without
/// levels gives, an error naming the column for a NULL or unreadable value.
fn saved_level(row: &Row) -> Result<Option<SavedLevel>, String> {
    let read = |idx: usize, name: &str| -> Result<Option<i32>, String> {
        row.try_get(idx)
            .map_err(|e| format!("{name}: {}", one_line(&e)))
    };
    let Some(num) = read(1, "level_num")? else {
        return Ok(None);
    };
    let required = |idx: usize, name: &str| {
        read(idx, name)?.ok_or_else(|| format!("level {num} has a NULL {name}"))
    };
    let head: Option<i64> = row
        .try_get(4)
        .map_err(|e| format!("current_head: {}", one_line(&e)))?;
    Ok(Some((
        num,
        required(2, "max_size")?,
        required(3, "current_length")?,
        head,
    )))
}

/// Checks saved level rows `(level_num, max_size, current_length, head)`.
fn validate_levels(saved: &[SavedLevel], last_compressed: i64) -> Result<Vec<Level>, String> {
    let mut levels = Vec::with_capacity(saved.len());
    for (i, &(num, max, len, head)) in saved.iter().enumerate() {
        let expected = i as i32 + 1;
        if num != expected {
            return Err(format!("expected level {expected}, found level {num}"));
        }
        if max < 1 {
            return Err(format!("level {num} has max size {max}"));
        }
        if len < 0 || len > max {
            return Err(format!("level {num} has length {len} but max size {max}"));
        }
        match head {
            None if len > 0 => return Err(format!("level {num} has length {len} but no head")),
            Some(h) if h > last_compressed => {
                return Err(format!(
                    "level {num}'s head {h} is after the last compressed group {last_compressed}"
                ))
            }
            _ => {}
        }
        levels.push(Level::restore(max as usize, len as usize, head));
    }
    Ok(levels)
}

/// The heads that exist for this room: in `state_groups`, or (having lost
/// that row) still with an edge or with rows of this room, which is how
/// Synapse reads them and how the load takes them.
fn heads_in_room(
    client: &mut Client,
    prepared: &mut Prepared,
    room_id: &str,
    heads: &[i64],
) -> Result<BTreeSet<i64>> {
    if heads.is_empty() {
        return Ok(BTreeSet::new());
    }
    let ctx = "checking saved level heads";
    let rows = prepared
        .query(
            client,
            "SELECT id FROM state_groups WHERE id = ANY($1) AND room_id = $2 \
             UNION ALL \
             SELECT h FROM unnest($1::bigint[]) AS h \
             WHERE NOT EXISTS (SELECT 1 FROM state_groups AS g WHERE g.id = h) \
               AND (EXISTS (SELECT 1 FROM state_group_edges AS e WHERE e.state_group = h) \
                    OR EXISTS (SELECT 1 FROM state_groups_state AS s \
                               WHERE s.state_group = h AND s.room_id = $2))",
            &[Type::INT8_ARRAY, Type::TEXT],
            &[&heads, &room_id],
        )
        .map_err(|e| Error::db(ctx, e))?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(|e| Error::db(ctx, e)))
        .collect()
}

/// Saves a room's levels and last compressed group. Runs on whatever
/// transaction the caller passes, so it commits together with the chunk.
pub fn write_room_progress(
    tx: &mut impl GenericClient,
    prepared: &mut Prepared,
    room_id: &str,
    levels: &[Level],
    last_compressed: i64,
) -> Result<()> {
    let ctx = "saving progress";
    let mut nums = Vec::with_capacity(levels.len());
    let mut maxes = Vec::with_capacity(levels.len());
    let mut lengths = Vec::with_capacity(levels.len());
    let mut heads = Vec::with_capacity(levels.len());
    for (i, level) in levels.iter().enumerate() {
        nums.push(i as i32 + 1);
        maxes.push(level.max_length() as i32);
        lengths.push(level.current_length() as i32);
        heads.push(level.head());
    }
    // One statement (one round trip): upsert the levels, drop levels beyond
    // them (the level list got shorter), and save the position.
    prepared
        .execute(
            tx,
            "WITH upserted AS ( \
                 INSERT INTO state_compressor_state \
                     (room_id, level_num, max_size, current_length, current_head) \
                 SELECT $1, * FROM unnest($2::int[], $3::int[], $4::int[], $5::bigint[]) \
                 ON CONFLICT (room_id, level_num) DO UPDATE SET \
                     max_size = excluded.max_size, \
                     current_length = excluded.current_length, \
                     current_head = excluded.current_head \
             ), dropped AS ( \
                 DELETE FROM state_compressor_state \
                 WHERE room_id = $1 AND level_num > cardinality($2::int[]) \
             ) \
             INSERT INTO state_compressor_progress (room_id, last_compressed) VALUES ($1, $6) \
             ON CONFLICT (room_id) DO UPDATE SET last_compressed = excluded.last_compressed",
            &[
                Type::TEXT,
                Type::INT4_ARRAY,
                Type::INT4_ARRAY,
                Type::INT4_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
            ],
            &[&room_id, &nums, &maxes, &lengths, &heads, &last_compressed],
        )
        .map_err(|e| Error::db(ctx, e))?;
    Ok(())
}

/// Rooms this run leaves for a later run (another compressor has them, or
/// their data is damaged), the scan position they hold back, and where
/// this run's scan has really got to.
///
/// The saved position stays at a left room so the next run comes back to
/// it; this run's queries for the next room start at `scanned` instead when
/// it is further on. Every group below `scanned` is compressed, has no
/// room, or belongs to a left room (the scan found none other there), and
/// the queries leave those out anyway, so they find the same room as from
/// the saved position, without walking again over every group from a room
/// left near the start (which made each chunk's query read most of
/// `state_groups`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeftRooms {
    rooms: Vec<String>,
    /// The lowest group of those rooms that is still to compress: the saved
    /// scan position never moves past it, so the next run comes back.
    hold: Option<i64>,
    /// Where the scan has got to in this run (0: not yet anywhere).
    scanned: i64,
}

impl LeftRooms {
    /// Leaves `room`, whose next group to compress is `next_group`.
    pub fn leave(&mut self, room: String, next_group: i64) {
        self.hold = Some(self.hold.map_or(next_group, |h| h.min(next_group)));
        self.rooms.push(room);
    }

    pub fn rooms(&self) -> &[String] {
        &self.rooms
    }

    /// The lowest group a left room holds back (the scan never passes it).
    pub fn hold(&self) -> Option<i64> {
        self.hold
    }

    /// Records that the scan, leaving out these rooms, found `group` as the
    /// lowest group still to compress: the next queries start there. (With
    /// `--jobs`, the scan leaves out the other workers' rooms too, which
    /// are not left for good: pass the lowest of `group` and their next
    /// groups.)
    pub fn scanned_to(&mut self, group: i64) {
        self.scanned = self.scanned.max(group);
    }

    /// These rooms and `busy` ones (room, next group): rooms other workers
    /// of this run are compressing (`--jobs`) are left out of the scan,
    /// and hold it back, just as left rooms do.
    pub fn with<'a>(&self, busy: impl IntoIterator<Item = (&'a String, &'a i64)>) -> LeftRooms {
        let mut all = self.clone();
        for (room, next) in busy {
            all.leave(room.clone(), *next);
        }
        all
    }
}

/// The next chunk's room, and the group that made it next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextRoom {
    pub room_id: String,
    pub group: i64,
}

impl NextRoom {
    /// A `(room_id, id)` row.
    fn from_row(row: &Row, ctx: &str) -> Result<NextRoom> {
        Ok(NextRoom {
            room_id: row.try_get(0).map_err(|e| Error::db(ctx, e))?,
            group: row.try_get(1).map_err(|e| Error::db(ctx, e))?,
        })
    }
}

/// Finds the room of the lowest group at or above the saved scan position
/// that is past that room's progress, leaving out the rooms `left`, and
/// saves that group as the new scan position (never past a left room's
/// next group). `None` when every group has been compressed. A group
/// without a room (NULL `room_id`, a damaged row) belongs to no room.
/// The search starts where this run's scan got to when that is further
/// (see [`LeftRooms`]): the same room, found without a walk from the
/// saved position.
pub fn next_room_to_compress(
    client: &mut Client,
    prepared: &mut Prepared,
    left: &LeftRooms,
) -> Result<Option<NextRoom>> {
    let ctx = "finding the next room to compress";
    // One statement: find the group and move the scan position to it.
    let row = prepared
        .query_opt(
            client,
            "WITH next AS ( \
                 SELECT g.room_id, g.id FROM state_groups AS g \
                 LEFT JOIN state_compressor_progress AS p USING (room_id) \
                 WHERE g.id >= GREATEST((SELECT lowest_uncompressed_group \
                                         FROM state_compressor_total_progress), $3) \
                   AND g.room_id IS NOT NULL \
                   AND (p.last_compressed IS NULL OR g.id > p.last_compressed) \
                   AND g.room_id <> ALL($1) \
                 ORDER BY g.id LIMIT 1 \
             ), moved AS ( \
                 UPDATE state_compressor_total_progress \
                 SET lowest_uncompressed_group = LEAST(next.id, $2) FROM next \
             ) SELECT room_id, id FROM next",
            &[Type::TEXT_ARRAY, Type::INT8, Type::INT8],
            &[&left.rooms, &left.hold, &left.scanned],
        )
        .map_err(|e| Error::db(ctx, e))?;
    row.map(|row| NextRoom::from_row(&row, ctx)).transpose()
}

/// The room [`next_room_to_compress`] will pick once each room in
/// `positions` has been compressed up to its group (other rooms as saved).
/// Reads only: used to load chunks ahead of time. Starts where the scan
/// got to, as that does.
pub fn predict_next_room(
    client: &mut Client,
    prepared: &mut Prepared,
    positions: &[(&str, i64)],
    left: &LeftRooms,
) -> Result<Option<String>> {
    let (rooms, lasts): (Vec<&str>, Vec<i64>) = positions.iter().copied().unzip();
    let ctx = "predicting the next room";
    let row = prepared
        .query_opt(
            client,
            "SELECT g.room_id FROM state_groups AS g \
             LEFT JOIN state_compressor_progress AS p USING (room_id) \
             LEFT JOIN unnest($1::text[], $2::bigint[]) AS o(room_id, last) \
                 ON o.room_id = g.room_id \
             WHERE g.id >= GREATEST((SELECT lowest_uncompressed_group \
                                     FROM state_compressor_total_progress), $4) \
               AND g.room_id IS NOT NULL \
               AND (COALESCE(o.last, p.last_compressed) IS NULL \
                    OR g.id > COALESCE(o.last, p.last_compressed)) \
               AND g.room_id <> ALL($3) \
             ORDER BY g.id LIMIT 1",
            &[
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT8,
            ],
            &[&rooms, &lasts, &left.rooms, &left.scanned],
        )
        .map_err(|e| Error::db(ctx, e))?;
    row.map(|row| row.try_get(0).map_err(|e| Error::db(ctx, e)))
        .transpose()
}

/// The saved scan position and about how many groups are left at or past
/// it (see [`groups_left_from`]).
pub fn groups_left_estimate(client: &mut Client) -> Result<(i64, u64)> {
    let scan = read_scan_position(client, true)?;
    Ok((scan, groups_left_from(client, scan)?))
}

/// About how many groups are left at or past the scan position `scan`,
/// without scanning: the ids from there to the highest, times the share of
/// the id range in use (the table's row estimate from ANALYZE; all of it
/// before the first ANALYZE). Rooms compressed further than the scan
/// position (`--largest-rooms`) are counted as left. Reads only
/// `state_groups` and the catalog (the survey has no progress tables to
/// read on a first run).
pub fn groups_left_from(client: &mut Client, scan: i64) -> Result<u64> {
    let ctx = "estimating the groups left";
    let row = client
        .query_one(
            "SELECT (SELECT min(id) FROM state_groups), \
                    (SELECT max(id) FROM state_groups), \
                    (SELECT reltuples::float8 FROM pg_class \
                     WHERE oid = 'state_groups'::regclass)",
            &[],
        )
        .map_err(|e| Error::db(ctx, e))?;
    let get = |i| {
        row.try_get::<_, Option<i64>>(i)
            .map_err(|e| Error::db(ctx, e))
    };
    let (min, max) = (get(0)?, get(1)?);
    let rows: Option<f64> = row.try_get(2).map_err(|e| Error::db(ctx, e))?;
    let (Some(min), Some(max)) = (min, max) else {
        return Ok(0);
    };
    let ids_left = (max - scan.max(min) + 1).max(0) as f64;
    let density = match rows {
        Some(rows) if rows >= 0.0 => (rows / (max - min + 1) as f64).min(1.0),
        _ => 1.0,
    };
    Ok((ids_left * density).round() as u64)
}

/// Moves the saved scan position up to `group` (never down): the pass
/// (`crate::pass`) keeps it at the lowest first group of the run's chunks
/// not yet written, which every group below it is compressed or held for.
pub fn raise_scan_position(client: &mut Client, group: i64) -> Result<()> {
    client
        .execute(
            "UPDATE state_compressor_total_progress SET lowest_uncompressed_group = $1 \
             WHERE lowest_uncompressed_group IS NULL OR lowest_uncompressed_group < $1",
            &[&group],
        )
        .map_err(|e| Error::db("saving the scan position", e))?;
    Ok(())
}

/// The saved scan position, reading only: 0 (a first run's start) when
/// the table or its row is missing.
pub fn read_scan_position(client: &mut Client, tables_exist: bool) -> Result<i64> {
    if !tables_exist {
        return Ok(0);
    }
    let row = client
        .query_opt(
            "SELECT lowest_uncompressed_group FROM state_compressor_total_progress",
            &[],
        )
        .map_err(|e| Error::db("reading the scan position", e))?;
    Ok(match row {
        Some(row) => row
            .try_get::<_, Option<i64>>(0)
            .map_err(|e| Error::db("reading the scan position", e))?
            .unwrap_or(0),
        None => 0,
    })
}

/// What [`next_room_to_compress`] would find with the scan position at
/// `scan` and rooms compressed up to their `position` where it has one (other
/// rooms as saved, or from their start when `saved` is false: the progress
/// tables do not exist). Reads only: the survey keeps its progress in
/// memory. The positions in memory are at or past the saved ones (a room
/// only moves on), so the query leaves out what the saved ones exclude and
/// the rest is filtered here, a batch of groups at a time: passing them to
/// the query made each step slower as the survey went on.
pub fn peek_next_room(
    client: &mut Client,
    prepared: &mut Prepared,
    scan: i64,
    position: &dyn Fn(&str) -> Option<i64>,
    left: &LeftRooms,
    saved: bool,
) -> Result<Option<NextRoom>> {
    let ctx = "finding the next room to compress";
    // The same query with or without the saved positions (a `&'static`
    // text each, as prepared statements are kept by their text).
    macro_rules! next_groups_sql {
        ($join:literal, $saved_last:literal) => {
            concat!(
                "SELECT g.room_id, g.id FROM state_groups AS g ",
                $join,
                " WHERE g.id >= $1 AND g.room_id IS NOT NULL \
                   AND (",
                $saved_last,
                " IS NULL OR g.id > ",
                $saved_last,
                ") AND g.room_id <> ALL($2) \
                 ORDER BY g.id LIMIT 1000"
            )
        };
    }
    let sql = if saved {
        next_groups_sql!(
            "LEFT JOIN state_compressor_progress AS p USING (room_id)",
            "p.last_compressed"
        )
    } else {
        next_groups_sql!("", "NULL::bigint")
    };
    let mut from = scan;
    loop {
        let rows = prepared
            .query(
                client,
                sql,
                &[Type::INT8, Type::TEXT_ARRAY],
                &[&from, &left.rooms],
            )
            .map_err(|e| Error::db(ctx, e))?;
        for row in &rows {
            let next = NextRoom::from_row(row, ctx)?;
            if position(&next.room_id).is_none_or(|last| next.group > last) {
                return Ok(Some(next));
            }
            from = next.group + 1;
        }
        if rows.len() < 1000 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_levels;

    #[test]
    fn validation_rejects_bad_saves() {
        assert!(validate_levels(&[(1, 100, 3, Some(5)), (2, 50, 0, None)], 10).is_ok());
        assert!(validate_levels(&[(1, 100, 3, Some(5)), (3, 50, 0, None)], 10).is_err());
        assert!(validate_levels(&[(1, 3, 4, Some(5))], 10).is_err());
        assert!(validate_levels(&[(1, 3, 2, None)], 10).is_err());
        assert!(validate_levels(&[(1, 3, 2, Some(11))], 10).is_err());
        assert!(validate_levels(&[(1, 0, 0, None)], 10).is_err());
        assert!(validate_levels(&[(2, 3, 0, None)], 10).is_err());
    }
}
