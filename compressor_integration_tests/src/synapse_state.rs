//! Reading state groups' resolved state back from PostgreSQL, exactly as
//! Synapse reads it.
//!
//! [`state_of_group`] runs Synapse's own recursive query (the text in
//! docs/synapse-tables.md#how-synapse-reads-a-state, with `$1` for
//! Synapse's `?` placeholder) after `SET LOCAL enable_seqscan = off`, inside
//! a transaction, like Synapse's `_get_state_groups_from_groups_txn`. Whatever the compressor writes, this
//! is the reader whose answers must not change.
//!
//! [`all_states_batched`] / [`for_each_state_batched`] compute the same thing
//! for many groups in one recursive query (carrying the origin group), for
//! databases too big for one query per group; the tests check that both
//! readers agree.

use crate::StateMap;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, GenericClient};
use std::collections::BTreeMap;

/// Synapse's query for the full state of one group (PostgreSQL branch).
pub const SYNAPSE_STATE_QUERY: &str = r#"
WITH RECURSIVE sgs(state_group) AS (
    VALUES($1::bigint)
    UNION ALL
    SELECT prev_state_group FROM state_group_edges e, sgs s
    WHERE s.state_group = e.state_group
)
SELECT DISTINCT ON (type, state_key) type, state_key, event_id
FROM state_groups_state
WHERE state_group IN (SELECT state_group FROM sgs)
ORDER BY type, state_key, state_group DESC
"#;

/// The same resolution for every group of a room (`$1`), or of the whole
/// database when `$1` is NULL, in one query. Rows come ordered by origin
/// group, then state key.
const BATCHED_STATE_QUERY: &str = r#"
WITH RECURSIVE sgs(origin, state_group) AS (
    SELECT id, id FROM state_groups WHERE $1::text IS NULL OR room_id = $1::text
    UNION ALL
    SELECT s.origin, e.prev_state_group
    FROM state_group_edges e, sgs s
    WHERE s.state_group = e.state_group
)
SELECT DISTINCT ON (s.origin, r.type, r.state_key) s.origin, r.type, r.state_key, r.event_id
FROM sgs s
JOIN state_groups_state r ON r.state_group = s.state_group
ORDER BY s.origin, r.type, r.state_key, r.state_group DESC
"#;

/// Which reader to use for many groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Synapse's query, once per group (exact, slower).
    Synapse,
    /// One recursive query for all groups (same answers, faster).
    Batched,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "synapse" => Ok(Method::Synapse),
            "batched" => Ok(Method::Batched),
            _ => Err(format!(
                "unknown method {s:?} (expected synapse or batched)"
            )),
        }
    }
}

/// The full state of `group`, read with Synapse's own query.
pub fn state_of_group(client: &mut Client, group: i64) -> Result<StateMap, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL enable_seqscan = off")?;
    let state = read_one(&mut tx, group)?;
    tx.commit()?;
    Ok(state)
}

fn read_one(client: &mut impl GenericClient, group: i64) -> Result<StateMap, postgres::Error> {
    let rows = client.query(SYNAPSE_STATE_QUERY, &[&group])?;
    Ok(rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect())
}

/// Every group id in `room` (or in the whole database), ascending.
pub fn group_ids(client: &mut Client, room: Option<&str>) -> Result<Vec<i64>, postgres::Error> {
    let rows = client.query(
        "SELECT id FROM state_groups WHERE $1::text IS NULL OR room_id = $1::text ORDER BY id",
        &[&room],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Every room id that has state groups, sorted.
pub fn room_ids(client: &mut Client) -> Result<Vec<String>, postgres::Error> {
    let rows = client.query(
        "SELECT DISTINCT room_id FROM state_groups ORDER BY room_id",
        &[],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Calls `f(group, state)` for each of `groups`, read with Synapse's query,
/// in transactions of 100 groups (as Synapse batches them).
pub fn for_each_state_synapse(
    client: &mut Client,
    groups: &[i64],
    mut f: impl FnMut(i64, StateMap),
) -> Result<(), postgres::Error> {
    for chunk in groups.chunks(100) {
        let mut tx = client.transaction()?;
        tx.batch_execute("SET LOCAL enable_seqscan = off")?;
        for &group in chunk {
            let state = read_one(&mut tx, group)?;
            f(group, state);
        }
        tx.commit()?;
    }
    Ok(())
}

/// Resolved state of every group in `room` (or in the whole database), one
/// Synapse query per group. Groups with an empty state are included.
pub fn all_states(
    client: &mut Client,
    room: Option<&str>,
) -> Result<BTreeMap<i64, StateMap>, postgres::Error> {
    let groups = group_ids(client, room)?;
    let mut states = BTreeMap::new();
    for_each_state_synapse(client, &groups, |group, state| {
        states.insert(group, state);
    })?;
    Ok(states)
}

/// Streams the resolved state of every group in `room` (or in the whole
/// database) from one batched query: `f(group, state)` is called once per
/// group that has at least one entry, in ascending group order. Memory is
/// bounded by one group's state.
pub fn for_each_state_batched(
    client: &mut Client,
    room: Option<&str>,
    mut f: impl FnMut(i64, StateMap),
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    // The sort can be large; let it use memory rather than disk.
    tx.batch_execute("SET LOCAL work_mem = '256MB'")?;
    let params: [&(dyn ToSql + Sync); 1] = [&room];
    let mut rows = tx.query_raw(BATCHED_STATE_QUERY, params)?;
    let mut current: Option<(i64, StateMap)> = None;
    while let Some(row) = rows.next()? {
        let origin: i64 = row.get(0);
        let entry: ((String, String), String) = ((row.get(1), row.get(2)), row.get(3));
        match &mut current {
            Some((group, state)) if *group == origin => {
                state.insert(entry.0, entry.1);
            }
            _ => {
                if let Some((group, state)) = current.take() {
                    f(group, state);
                }
                current = Some((origin, StateMap::from([entry])));
            }
        }
    }
    if let Some((group, state)) = current {
        f(group, state);
    }
    drop(rows);
    tx.commit()
}

/// Same answers as [`all_states`], from one batched query.
pub fn all_states_batched(
    client: &mut Client,
    room: Option<&str>,
) -> Result<BTreeMap<i64, StateMap>, postgres::Error> {
    let mut states: BTreeMap<i64, StateMap> = group_ids(client, room)?
        .into_iter()
        .map(|group| (group, StateMap::new()))
        .collect();
    for_each_state_batched(client, room, |group, state| {
        states.insert(group, state);
    })?;
    Ok(states)
}

/// Describes the first difference between two sets of resolved states, or
/// `None` when they are identical.
pub fn first_difference(
    before: &BTreeMap<i64, StateMap>,
    after: &BTreeMap<i64, StateMap>,
) -> Option<String> {
    for (group, old) in before {
        let Some(new) = after.get(group) else {
            return Some(format!("group {group} disappeared"));
        };
        if old != new {
            let mut lines = vec![format!("state of group {group} changed:")];
            for (key, event) in old {
                match new.get(key) {
                    None => lines.push(format!("  lost {key:?} = {event:?}")),
                    Some(other) if other != event => {
                        lines.push(format!("  {key:?}: {event:?} became {other:?}"))
                    }
                    Some(_) => {}
                }
            }
            for (key, event) in new {
                if !old.contains_key(key) {
                    lines.push(format!("  gained {key:?} = {event:?}"));
                }
            }
            lines.truncate(21);
            return Some(lines.join("\n"));
        }
    }
    after
        .keys()
        .find(|group| !before.contains_key(group))
        .map(|group| format!("group {group} appeared"))
}
