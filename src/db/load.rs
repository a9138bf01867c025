//! Loading groups from the database.
//!
//! A room's groups in a range are read with three streaming queries (ids,
//! edges, rows) instead of one wide join, then every predecessor they need
//! is loaded in rounds (a predecessor may itself have a predecessor we lack),
//! found through `state_group_edges` as well as `state_groups`. Loaded
//! predecessors and level heads are marked not in range: never rewritten,
//! except predecessors without a `state_groups` row inside a range that has
//! a lower bound, which the reference tool rewrites too
//! ([`include_groups_without_row`]).
//!
//! Callers run all of a load inside one [`snapshot`] transaction: Synapse
//! deletes and de-deltas groups in the background, and reading a group's
//! edge in one statement and its predecessor's rows in another could mix two
//! versions of a chain.
//!
//! Nothing read here may panic: a NULL or undecodable value (possible only
//! in a damaged or hand-altered database) is an [`Error::Damaged`] naming
//! the group, the column and the table, so callers can leave the room alone.

use std::collections::{BTreeMap, BTreeSet};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, ToSql, Type};
use postgres::{GenericClient, Row};

use crate::core::group::{GroupMap, StateGroupEntry};
use crate::core::state_map::{Echo, KeyId, StateMap, Symbols, ValueId};
use crate::error::{Error, Result};

/// What a load found besides the groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Groups in range (to be compressed).
    pub in_range: usize,
    /// Groups loaded only as predecessors or level heads.
    pub out_of_range: usize,
    /// Predecessors with no `state_groups` row (purged or damaged); they are
    /// read as Synapse reads them: whatever rows and edge they still have.
    /// Those inside a bounded range may then be put in range with
    /// [`include_groups_without_row`].
    pub missing_predecessors: Vec<i64>,
    /// Rows that repeat another row of their group exactly: left out of
    /// the deltas, counted in the groups' rows (`repeated_rows`).
    pub repeated_rows_read: usize,
}

/// Starts the read-only, repeatable-read transaction a load runs in, so
/// every query of it sees the same committed state.
pub fn snapshot(client: &mut postgres::Client) -> Result<postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| Error::db("starting a consistent read", e))
}

/// The ids of the room's groups with `min_exclusive < id <= max_inclusive`,
/// ascending, at most `limit` of them: the groups a run compresses.
pub fn range_ids(
    client: &mut impl GenericClient,
    room_id: &str,
    min_exclusive: Option<i64>,
    max_inclusive: Option<i64>,
    limit: Option<i64>,
) -> Result<Vec<i64>> {
    let min = min_exclusive.unwrap_or(i64::MIN);
    let max = max_inclusive.unwrap_or(i64::MAX);
    let rows = client
        .query_typed(
            "SELECT id FROM state_groups WHERE room_id = $1 AND id > $2 AND id <= $3 \
             ORDER BY id LIMIT $4",
            &[
                (&room_id, Type::TEXT),
                (&min, Type::INT8),
                (&max, Type::INT8),
                (&limit, Type::INT8),
            ],
        )
        .map_err(|e| Error::db("finding the state groups to compress", e))?;
    rows.iter()
        .map(|r| column(r, 0, "state_groups", "id"))
        .collect()
}

/// True when the room has at least one state group.
pub fn room_has_groups(client: &mut impl GenericClient, room_id: &str) -> Result<bool> {
    client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM state_groups WHERE room_id = $1)",
            &[(&room_id, Type::TEXT)],
        )
        .map_err(|e| Error::db("looking up the room", e))
        .and_then(|r| column(&r, 0, "state_groups", "EXISTS"))
}

/// Loads the groups `ids` of `room_id` (in range: to be compressed, as
/// found by [`range_ids`]), plus `extra` groups (level heads of an earlier
/// run, not in range), plus every predecessor all of these need. A
/// predecessor of another room (Synapse never makes one) marks the room
/// as damaged.
pub fn load_groups(
    client: &mut (impl GenericClient + Send),
    symbols: &mut Symbols,
    room_id: &str,
    ids: &[i64],
    extra: &[i64],
    on_rows: &mut dyn FnMut(u64),
) -> Result<(GroupMap, LoadReport)> {
    load_groups_after(
        client,
        symbols,
        room_id,
        ids,
        extra,
        GroupMap::new(),
        on_rows,
    )
}

/// [`load_groups`], given groups already loaded (in the same read, with
/// the same `symbols`) that are not read again: `known`, which must hold
/// the predecessors of each of its groups, and comes back with the others,
/// not in range. A windowed load passes the chains the next window's
/// groups will most likely build on.
pub fn load_groups_after(
    client: &mut (impl GenericClient + Send),
    symbols: &mut Symbols,
    room_id: &str,
    ids: &[i64],
    extra: &[i64],
    known: GroupMap,
    on_rows: &mut dyn FnMut(u64),
) -> Result<(GroupMap, LoadReport)> {
    Builder::with_known(symbols, known).load(client, room_id, ids, extra, on_rows)
}

/// [`load_groups_after`] with the rows taken in batches on a thread of
/// their own ([`Fetch::Batched`]): for a reader with a core to spare for
/// filing them while the next batch comes.
pub fn load_groups_batched(
    client: &mut (impl GenericClient + Send),
    symbols: &mut Symbols,
    room_id: &str,
    ids: &[i64],
    known: GroupMap,
    on_rows: &mut dyn FnMut(u64),
) -> Result<(GroupMap, LoadReport)> {
    let mut builder = Builder::with_known(symbols, known);
    builder.fetch = Fetch::Batched;
    builder.load(client, room_id, ids, &[], on_rows)
}

/// [`load_groups_after`] for groups whose edges and rows were read already
/// (the automatic tool's pass over the table, `in_range` in `symbols`' ids):
/// only what they need besides, `extra` and every predecessor, is loaded.
/// `later` are groups to take from the caller wherever the load meets them.
pub fn complete_groups(
    client: &mut (impl GenericClient + Send),
    symbols: &mut Symbols,
    room_id: &str,
    read: ReadGroups,
    extra: &[i64],
    known: GroupMap,
    later: Option<&dyn LaterGroups>,
) -> Result<(GroupMap, LoadReport)> {
    let mut builder = Builder::with_known(symbols, known);
    builder.repeated_rows_read = read.repeated_rows_read;
    for (id, entry) in read.groups {
        builder.add_known(id, entry);
        builder.groups.entry(id).or_default().in_range = true;
    }
    builder.load_predecessors(client, room_id, extra, later, &mut |_| {})?;
    builder.finish()
}

/// Groups in range whose edges and rows a caller read already.
pub struct ReadGroups {
    pub groups: GroupMap,
    /// What that read found repeated exactly, for the report.
    pub repeated_rows_read: usize,
}

/// Most of a [`LaterGroups`]' ids (the highest, nearest the groups loaded)
/// the recursive walk of the chains is told to stop at.
const MAX_STOPS: usize = 2_000;

/// Groups a load takes from its caller instead of the database wherever
/// it meets them: the caller has decided their new entries and not written
/// them yet (the automatic tool's sweep), so the database still shows them
/// as they were, and the load must see them as they will be. Only the ones
/// the load reaches are asked for, so a room with many of them waiting
/// costs each load only what it walks through.
pub trait LaterGroups {
    /// Their ids, ascending.
    fn ids(&self) -> &[i64];
    /// Group `id`'s entry as it will be written, its strings put in
    /// `symbols`; `None` if `id` is not one of them.
    fn entry(&self, id: i64, symbols: &mut Symbols) -> Option<StateGroupEntry>;
}

/// Marks the loaded groups without a `state_groups` row whose id is in
/// `(min_exclusive, max_inclusive]` as in range, to be rewritten like the
/// others, as the reference tool does when a load has a lower bound (so
/// both leave the same structure). Without a lower bound they stay
/// predecessors only. Returns how many were marked.
pub fn include_groups_without_row(
    groups: &mut GroupMap,
    report: &mut LoadReport,
    min_exclusive: Option<i64>,
    max_inclusive: i64,
) -> usize {
    let Some(min) = min_exclusive else {
        return 0;
    };
    let mut marked = 0;
    for id in &report.missing_predecessors {
        if min < *id && *id <= max_inclusive {
            if let Some(entry) = groups.get_mut(id).filter(|e| !e.in_range) {
                entry.in_range = true;
                marked += 1;
            }
        }
    }
    report.in_range += marked;
    report.out_of_range -= marked;
    marked
}

/// `ids` and every group reachable from them through `state_group_edges`,
/// ascending, each with whether it has a `state_groups` row. `UNION` ends
/// the walk even on a damaged, looping structure. A NULL predecessor ends
/// the walk too: the group holding it is loaded, and [`Builder::read_edges`]
/// reports it by name.
fn ancestors(
    client: &mut impl GenericClient,
    ids: &[i64],
    room_id: &str,
    stops: &[i64],
) -> Result<Vec<(i64, bool)>> {
    let rows = client
        .query_typed(
            "WITH RECURSIVE chain(id) AS ( \
                 SELECT unnest($1::bigint[]) \
                 UNION \
                 SELECT e.prev_state_group FROM state_group_edges AS e \
                 JOIN chain AS c ON e.state_group = c.id \
                 WHERE e.prev_state_group IS NOT NULL AND c.id <> ALL($3::bigint[]) \
             ) SELECT c.id, g.id IS NOT NULL, \
                      CASE WHEN g.id IS NOT NULL AND g.room_id IS DISTINCT FROM $2 \
                           THEN coalesce(g.room_id, 'NULL') END \
             FROM chain AS c LEFT JOIN state_groups AS g ON g.id = c.id ORDER BY c.id",
            &[
                (&ids, Type::INT8_ARRAY),
                (&room_id, Type::TEXT),
                (&stops, Type::INT8_ARRAY),
            ],
        )
        .map_err(|e| Error::db("finding predecessor chains", e))?;
    rows.iter()
        .map(|r| {
            let id = column(r, 0, "state_group_edges", "prev_state_group")?;
            let other_room: Option<String> = r
                .try_get(2)
                .map_err(|e| unreadable(Some(id), "state_groups", "room_id", &e))?;
            if let Some(other) = other_room {
                return Err(Error::Damaged(format!(
                    "state group {id}, a predecessor in this room's chains, belongs to room {}",
                    crate::error::printable(&other)
                )));
            }
            Ok((id, column(r, 1, "state_groups", "EXISTS")?))
        })
        .collect()
}

/// Column `idx` of a row that names no group (ids, flags), or
/// [`Error::Damaged`] naming `table` and `name`.
#[inline]
fn column<'r, T: FromSql<'r>>(row: &'r Row, idx: usize, table: &str, name: &str) -> Result<T> {
    row.try_get::<_, Option<T>>(idx)
        .map_err(|e| unreadable(None, table, name, &e))?
        .ok_or_else(|| Error::Damaged(format!("a NULL {name} in {table}")))
}

/// Column `idx` (called `name`, of `table`) of a row of `group`. Inlined
/// into the row loop; the error paths are out of line and allocate only
/// when taken.
#[inline]
fn group_column<'r, T: FromSql<'r>>(
    row: &'r Row,
    idx: usize,
    group: i64,
    table: &'static str,
    name: &'static str,
) -> Result<T> {
    match row.try_get::<_, Option<T>>(idx) {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(null_in_group(group, table, name)),
        Err(e) => Err(unreadable(Some(group), table, name, &e)),
    }
}

#[cold]
#[inline(never)]
fn null_in_group(group: i64, table: &str, name: &str) -> Error {
    Error::Damaged(format!("state group {group} has a NULL {name} in {table}"))
}

/// Why a group with two rows for one key and different events is damage:
/// it has no one state (Synapse's read takes whichever row comes first),
/// so no rewrite can be said to keep it.
#[cold]
#[inline(never)]
pub fn two_events(group: i64, (ty, state_key): (&str, &str)) -> String {
    format!(
        "state group {group} has rows with different events for one key \
         (type {:?}, state_key {:?})",
        crate::error::printable(ty),
        crate::error::printable(state_key)
    )
}

/// Tells of `count` rows that repeat another row of their group exactly,
/// if any: harmless (they say nothing new), and gone once their group is
/// rewritten.
pub fn log_repeated_rows(count: usize) {
    if count > 0 {
        log::info!(
            "{count} rows repeat another row of their group exactly (the table has no unique \
             constraint); a group that is rewritten loses its repeats"
        );
    }
}

/// The server's refusal to send text as UTF-8 (it was stored as other
/// bytes in an `SQL_ASCII` database) as [`Error::Damaged`]. The server does
/// not say which row, so this names the groups the query read.
#[cold]
#[inline(never)]
fn not_utf8(table: &str, ids: &[i64], err: postgres::Error) -> Result<Error, postgres::Error> {
    use postgres::error::SqlState;
    let code = err.code();
    if code != Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE)
        && code != Some(&SqlState::UNTRANSLATABLE_CHARACTER)
    {
        return Err(err);
    }
    let (first, last) = (ids.iter().min(), ids.iter().max());
    let message = err.as_db_error().map_or("", |db| db.message());
    Ok(Error::Damaged(format!(
        "a row of {table} of state groups {}..={} holds text that is not valid UTF-8 ({message})",
        first.unwrap_or(&0),
        last.unwrap_or(&0)
    )))
}

/// A value that is there but cannot be decoded (say text that is not
/// UTF-8, stored in an `SQL_ASCII` database).
#[cold]
#[inline(never)]
fn unreadable(group: Option<i64>, table: &str, name: &str, err: &postgres::Error) -> Error {
    let whose = group.map_or_else(|| "a row".to_owned(), |g| format!("state group {g}"));
    Error::Damaged(format!(
        "{whose} has an unreadable {name} in {table} ({})",
        crate::error::one_line(err)
    ))
}

/// Runs `sql` (its one parameter `ids`) through a portal and sends its
/// rows to `out`, [`ROWS_PER_FETCH`] at a time, until they are all sent or
/// `out` is gone (the filer failed). The portal lives in a transaction of
/// its own (a savepoint, inside the load's snapshot).
fn fetch_in_batches(
    client: &mut impl GenericClient,
    sql: &str,
    ids: &[i64],
    out: &std::sync::mpsc::SyncSender<Result<Vec<Row>, postgres::Error>>,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    let statement = tx.prepare_typed(sql, &[Type::INT8_ARRAY])?;
    let portal = tx.bind(&statement, &[&ids])?;
    loop {
        let rows = tx.query_portal(&portal, ROWS_PER_FETCH)?;
        let last = rows.len() < ROWS_PER_FETCH as usize;
        if out.send(Ok(rows)).is_err() || last {
            break;
        }
    }
    tx.commit()
}

const EDGES: &str = "state_group_edges";
const ROWS: &str = "state_groups_state";

/// Collects what the queries return. The rows are asked for in no order:
/// an `ORDER BY state_group` made the automatic tool about 7% slower on the
/// benchmark's `3m` data (docs/performance.md). A group's rows are
/// stored together and so mostly come together: one scratch vector is
/// filled per group and turned into an exactly-sized delta when another
/// group's row comes; a group whose rows come in several parts (stored
/// apart, returned by a sequential or bitmap scan) is merged.
struct Builder<'s> {
    symbols: &'s mut Symbols,
    groups: GroupMap,
    edges: BTreeMap<i64, i64>,
    deltas: BTreeMap<i64, StateMap>,
    /// Groups with rows that repeat one of their rows exactly, and how many.
    repeats: BTreeMap<i64, u32>,
    scratch: Vec<(KeyId, ValueId)>,
    scratch_group: Option<i64>,
    /// Finds most rows' ids from the last snapshot's.
    echo: Echo,
    repeated_rows_read: usize,
    missing: Vec<i64>,
    fetch: Fetch,
}

/// How a load takes the rows of `state_groups_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetch {
    /// As they stream in: the `postgres` crate enters its runtime once per
    /// row, which costs about as much as filing the row.
    Streamed,
    /// [`ROWS_PER_FETCH`] at a time through a portal, each batch in one
    /// call on a thread of its own while the previous batch is filed: a
    /// third less CPU for the reader, for a few more round trips.
    Batched,
}

/// Rows per batch of [`Fetch::Batched`]: a few hundred KiB held per batch,
/// two batches at most.
const ROWS_PER_FETCH: i32 = 2_000;

impl<'s> Builder<'s> {
    fn new(symbols: &'s mut Symbols) -> Self {
        Self {
            symbols,
            groups: GroupMap::new(),
            edges: BTreeMap::new(),
            deltas: BTreeMap::new(),
            repeats: BTreeMap::new(),
            scratch: Vec::new(),
            scratch_group: None,
            echo: Echo::default(),
            repeated_rows_read: 0,
            missing: Vec::new(),
            fetch: Fetch::Streamed,
        }
    }

    /// A builder that starts from `known` groups (kept not in range).
    fn with_known(symbols: &'s mut Symbols, known: GroupMap) -> Self {
        let mut builder = Self::new(symbols);
        for (id, entry) in known {
            builder.add_known(id, entry);
        }
        builder
    }

    /// Loads `ids` (in range), `extra` and every predecessor they need.
    fn load(
        mut self,
        client: &mut (impl GenericClient + Send),
        room_id: &str,
        ids: &[i64],
        extra: &[i64],
        on_rows: &mut dyn FnMut(u64),
    ) -> Result<(GroupMap, LoadReport)> {
        for &id in ids {
            self.groups.entry(id).or_default().in_range = true;
        }
        // Edges and rows by explicit ids: an index lookup per group. (A
        // join on room_id lets the planner pick a merge join over the whole
        // rows index, which costs the whole table for every chunk.)
        self.read_by_ids(client, ids, on_rows)?;
        self.load_predecessors(client, room_id, extra, None, on_rows)?;
        self.finish()
    }

    /// Takes a group already read: its edge, delta and row flag.
    fn add_known(&mut self, id: i64, entry: crate::core::group::StateGroupEntry) {
        if let Some(prev) = entry.prev {
            self.edges.insert(id, prev);
        }
        self.deltas.insert(id, entry.delta);
        if entry.repeated_rows > 0 {
            self.repeats.insert(id, entry.repeated_rows);
        }
        self.groups.insert(
            id,
            crate::core::group::StateGroupEntry {
                missing_group_row: entry.missing_group_row,
                ..Default::default()
            },
        );
    }

    /// Loads `extra` and every predecessor the groups so far need, in
    /// rounds (a predecessor may itself have a predecessor we lack).
    fn load_predecessors(
        &mut self,
        client: &mut (impl GenericClient + Send),
        room_id: &str,
        extra: &[i64],
        later: Option<&dyn LaterGroups>,
        on_rows: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut wanted: BTreeSet<i64> = extra
            .iter()
            .copied()
            .filter(|id| !self.groups.contains_key(id))
            .collect();
        // The walk by SQL stops at them (a bound on how many are named: one
        // it walks through only costs reading what it leads to).
        let stops = later.map_or(&[][..], |l| {
            let ids = l.ids();
            &ids[ids.len().saturating_sub(MAX_STOPS)..]
        });
        loop {
            wanted.extend(
                self.edges
                    .values()
                    .copied()
                    .filter(|prev| !self.groups.contains_key(prev)),
            );
            if let Some(later) = later {
                let before = wanted.len();
                wanted.retain(|&id| !self.take_later(later, id));
                if wanted.len() < before {
                    // What those lead to is wanted in turn.
                    continue;
                }
            }
            if wanted.is_empty() {
                return Ok(());
            }
            // All their ancestors at once (one recursive query, as Synapse
            // reads a chain), rather than one generation per round trip;
            // the walk stops at the groups taken from `later`, whose edges
            // in the database are not the ones they will have.
            let start: Vec<i64> = std::mem::take(&mut wanted).into_iter().collect();
            let mut found = Vec::new();
            for (id, exists) in ancestors(client, &start, room_id, stops)? {
                if !self.groups.contains_key(&id) && !later.is_some_and(|l| self.take_later(l, id))
                {
                    found.push((id, exists));
                }
            }
            self.load_out_of_range(client, &found, on_rows)?;
        }
    }

    /// Takes group `id` from `later` if it is one of them (its
    /// predecessor is then wanted in the next round). Whether it was.
    fn take_later(&mut self, later: &dyn LaterGroups, id: i64) -> bool {
        match later.entry(id, self.symbols) {
            Some(entry) => {
                self.add_known(id, entry);
                true
            }
            None => false,
        }
    }

    /// Turns the scratch rows into the delta of their group.
    fn flush(&mut self) -> Result<()> {
        let Some(group) = self.scratch_group.take() else {
            return Ok(());
        };
        let mut rows = std::mem::take(&mut self.scratch);
        if let Some(earlier) = self.deltas.remove(&group) {
            // The rows of a group came in several parts (stored apart).
            let mut all: Vec<_> = earlier.iter().collect();
            all.append(&mut rows);
            rows = all;
        }
        let (delta, repeats) = StateMap::from_rows(rows)
            .map_err(|key| Error::Damaged(two_events(group, self.symbols.key_str(key))))?;
        if repeats > 0 {
            self.repeated_rows_read += repeats;
            *self.repeats.entry(group).or_default() += repeats as u32;
        }
        self.deltas.insert(group, delta);
        Ok(())
    }

    fn read_edges(
        &mut self,
        client: &mut impl GenericClient,
        sql: &str,
        ids: &[i64],
    ) -> Result<()> {
        let ctx = "loading state group edges";
        let mut rows = client
            .query_typed_raw(sql, [(&ids as &(dyn ToSql + Sync), Type::INT8_ARRAY)])
            .map_err(|e| Error::db(ctx, e))?;
        while let Some(row) = rows.next().map_err(|e| Error::db(ctx, e))? {
            let group: i64 = column(&row, 0, EDGES, "state_group")?;
            let prev: i64 = group_column(&row, 1, group, EDGES, "prev_state_group")?;
            if let Some(other) = self.edges.insert(group, prev) {
                if other != prev {
                    return Err(Error::Damaged(format!(
                        "state group {group} has two predecessors ({other} and {prev})"
                    )));
                }
            }
            if prev >= group {
                return Err(Error::Damaged(format!(
                    "state group {group}'s predecessor {prev} does not have a lower id"
                )));
            }
        }
        Ok(())
    }

    /// Reads the rows of `ids` with `sql`, as [`Builder::fetch`] says.
    fn read_rows(
        &mut self,
        client: &mut (impl GenericClient + Send),
        sql: &str,
        ids: &[i64],
        on_rows: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let ctx = "loading state rows";
        let db = |e| not_utf8(ROWS, ids, e).unwrap_or_else(|e| Error::db(ctx, e));
        let mut count = 0u64;
        match self.fetch {
            Fetch::Streamed => {
                let mut rows = client
                    .query_typed_raw(sql, [(&ids as &(dyn ToSql + Sync), Type::INT8_ARRAY)])
                    .map_err(db)?;
                while let Some(row) = rows.next().map_err(db)? {
                    self.take_row(&row)?;
                    count += 1;
                    if count % 65_536 == 0 {
                        on_rows(65_536);
                    }
                }
                on_rows(count % 65_536);
            }
            Fetch::Batched => std::thread::scope(|scope| -> Result<()> {
                // A rendezvous: a batch is handed over once the previous
                // one is filed, so at most two are held.
                let (to_filer, batches) = std::sync::mpsc::sync_channel(0);
                crate::tool::spawn_named(scope, "fetch-rows", move || {
                    if let Err(e) = fetch_in_batches(client, sql, ids, &to_filer) {
                        let _ = to_filer.send(Err(e));
                    }
                });
                for rows in batches {
                    let rows = rows.map_err(db)?;
                    for row in &rows {
                        self.take_row(row)?;
                    }
                    on_rows(rows.len() as u64);
                }
                Ok(())
            })?,
        }
        self.flush()
    }

    /// Files one row (`state_group`, `type`, `state_key`, `event_id`) with
    /// its group's.
    #[inline]
    fn take_row(&mut self, row: &Row) -> Result<()> {
        let group: i64 = column(row, 0, ROWS, "state_group")?;
        if self.scratch_group != Some(group) {
            self.flush()?;
            self.scratch_group = Some(group);
            self.echo.next_group();
        }
        let ids = self.echo.row(
            self.symbols,
            group_column(row, 1, group, ROWS, "type")?,
            group_column(row, 2, group, ROWS, "state_key")?,
            group_column(row, 3, group, ROWS, "event_id")?,
        );
        self.scratch.push(ids);
        Ok(())
    }

    /// Reads the edges and rows of `ids`.
    fn read_by_ids(
        &mut self,
        client: &mut (impl GenericClient + Send),
        ids: &[i64],
        on_rows: &mut dyn FnMut(u64),
    ) -> Result<()> {
        self.read_edges(
            client,
            "SELECT state_group, prev_state_group FROM state_group_edges \
             WHERE state_group = ANY($1)",
            ids,
        )?;
        self.read_rows(
            client,
            "SELECT state_group, type, state_key, event_id FROM state_groups_state \
             WHERE state_group = ANY($1)",
            ids,
            on_rows,
        )
    }

    /// Loads `found` (predecessors or level heads, each with whether it has
    /// a `state_groups` row) with their edges and rows.
    fn load_out_of_range(
        &mut self,
        client: &mut (impl GenericClient + Send),
        found: &[(i64, bool)],
        on_rows: &mut dyn FnMut(u64),
    ) -> Result<()> {
        self.missing
            .extend(found.iter().filter(|(_, exists)| !exists).map(|(id, _)| id));
        let ids: Vec<i64> = found.iter().map(|(id, _)| *id).collect();
        self.read_by_ids(client, &ids, on_rows)?;
        for &(id, exists) in found {
            self.groups.entry(id).or_default().missing_group_row = !exists;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(GroupMap, LoadReport)> {
        let mut report = LoadReport {
            repeated_rows_read: self.repeated_rows_read,
            ..LoadReport::default()
        };
        for (&id, entry) in self.groups.iter_mut() {
            entry.prev = self.edges.get(&id).copied();
            if let Some(delta) = self.deltas.remove(&id) {
                entry.delta = delta;
            }
            entry.repeated_rows = self.repeats.get(&id).copied().unwrap_or(0);
            if entry.in_range {
                report.in_range += 1;
            } else {
                report.out_of_range += 1;
            }
        }
        self.missing.sort_unstable();
        report.missing_predecessors = self.missing;
        Ok((self.groups, report))
    }
}
