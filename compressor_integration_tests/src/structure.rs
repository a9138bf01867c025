//! The raw tree of state groups as stored: each group's edges and rows.
//!
//! Where [`crate::synapse_state`] answers "what is the state of group G",
//! this module answers "what exactly is stored": used to assert exact trees
//! (which group points where, which rows it holds), to prove that rows of
//! other rooms are untouched, and to check the invariants every writer of
//! these tables must keep ([`violations`]).

use crate::StateMap;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};

/// One `state_groups_state` row (without its group id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateRow {
    pub room_id: String,
    pub event_type: String,
    pub state_key: String,
    pub event_id: String,
}

/// What is stored for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// `state_groups.room_id`; `None` when the group has edges or rows but
    /// no `state_groups` row.
    pub room_id: Option<String>,
    /// `state_groups.event_id`.
    pub event_id: Option<String>,
    /// Every `prev_state_group` of its edges, sorted (at most one when sane).
    pub prevs: Vec<i64>,
    /// Its `state_groups_state` rows, sorted.
    pub rows: Vec<StateRow>,
}

impl GroupInfo {
    /// The group's predecessor (its first edge, if any).
    pub fn prev(&self) -> Option<i64> {
        self.prevs.first().copied()
    }

    /// The rows as a delta map (key to event id).
    pub fn delta(&self) -> StateMap {
        self.rows
            .iter()
            .map(|r| {
                (
                    (r.event_type.clone(), r.state_key.clone()),
                    r.event_id.clone(),
                )
            })
            .collect()
    }
}

/// Every group (with its edges and rows) by id.
pub type Structure = BTreeMap<i64, GroupInfo>;

/// Reads what is stored for every group of `room`, or of the whole database
/// (then also groups that only have edges or rows, with `room_id: None`).
pub fn structure(client: &mut Client, room: Option<&str>) -> Result<Structure, postgres::Error> {
    let mut groups = Structure::new();
    for row in client.query(
        "SELECT id, room_id, event_id FROM state_groups \
         WHERE $1::text IS NULL OR room_id = $1::text",
        &[&room],
    )? {
        groups.insert(
            row.get(0),
            GroupInfo {
                room_id: Some(row.get(1)),
                event_id: Some(row.get(2)),
                ..GroupInfo::default()
            },
        );
    }
    let scope = "$1::text IS NULL OR state_group IN \
                 (SELECT id FROM state_groups WHERE room_id = $1::text)";
    for row in client.query(
        &format!("SELECT state_group, prev_state_group FROM state_group_edges WHERE {scope}"),
        &[&room],
    )? {
        groups.entry(row.get(0)).or_default().prevs.push(row.get(1));
    }
    for row in client.query(
        &format!(
            "SELECT state_group, room_id, type, state_key, event_id FROM state_groups_state \
             WHERE {scope}"
        ),
        &[&room],
    )? {
        groups.entry(row.get(0)).or_default().rows.push(StateRow {
            room_id: row.get(1),
            event_type: row.get(2),
            state_key: row.get(3),
            event_id: row.get(4),
        });
    }
    for info in groups.values_mut() {
        info.prevs.sort_unstable();
        info.rows.sort_unstable();
    }
    Ok(groups)
}

/// Total number of `state_groups_state` rows in `structure`.
pub fn row_count(structure: &Structure) -> usize {
    structure.values().map(|g| g.rows.len()).sum()
}

/// Every broken invariant, one message each (empty when all hold):
/// every group has a `state_groups` row and at most one edge; edges point to
/// a lower id, to an existing group, of the same room (when the structure
/// covers that group); rows carry their group's room id; a group has at most
/// one row per state key.
pub fn violations(structure: &Structure) -> Vec<String> {
    let mut problems = Vec::new();
    for (&id, info) in structure {
        let Some(room) = &info.room_id else {
            problems.push(format!(
                "group {id} has {} edge(s) and {} row(s) but no state_groups row",
                info.prevs.len(),
                info.rows.len()
            ));
            continue;
        };
        if info.prevs.len() > 1 {
            problems.push(format!(
                "group {id} has {} edges: {:?}",
                info.prevs.len(),
                info.prevs
            ));
        }
        for &prev in &info.prevs {
            if prev >= id {
                problems.push(format!(
                    "group {id} has an edge to {prev}, which is not a lower id"
                ));
            }
            match structure.get(&prev) {
                None => problems.push(format!(
                    "group {id} has an edge to {prev}, which does not exist (or is in another room)"
                )),
                Some(p) if p.room_id.as_deref() != Some(room.as_str()) => problems.push(format!(
                    "group {id} (room {room:?}) has an edge to {prev} of room {:?}",
                    p.room_id.as_deref().unwrap_or("(none)")
                )),
                Some(_) => {}
            }
        }
        let mut keys = BTreeSet::new();
        for row in &info.rows {
            if &row.room_id != room {
                problems.push(format!(
                    "group {id} of room {room:?} has a row with room_id {:?}",
                    row.room_id
                ));
            }
            if !keys.insert((&row.event_type, &row.state_key)) {
                problems.push(format!(
                    "group {id} has two rows for ({:?}, {:?})",
                    row.event_type, row.state_key
                ));
            }
        }
    }
    problems
}

/// Resolves every group's state in memory from the stored tree, with
/// Synapse's rule (walk the edges; the row of the group nearest to G wins; a
/// missing predecessor ends the chain). An independent cross-check of the
/// SQL readers, and the input of [`crate::level_model`].
pub fn resolve_all(structure: &Structure) -> BTreeMap<i64, StateMap> {
    let mut states: BTreeMap<i64, StateMap> = BTreeMap::new();
    for &id in structure.keys() {
        let state = resolve_one(structure, &states, id);
        states.insert(id, state);
    }
    states
}

fn resolve_one(structure: &Structure, done: &BTreeMap<i64, StateMap>, id: i64) -> StateMap {
    // Walk up until a group already resolved (lower ids are) or the root.
    let mut chain = Vec::new();
    let mut seen = BTreeSet::new();
    let mut base = StateMap::new();
    let mut cursor = Some(id);
    while let Some(g) = cursor {
        if g != id {
            if let Some(state) = done.get(&g) {
                base = state.clone();
                break;
            }
        }
        if !seen.insert(g) {
            break; // a cycle: the database is broken; violations() reports it
        }
        let Some(info) = structure.get(&g) else { break };
        chain.push(g);
        cursor = info.prev();
    }
    for g in chain.iter().rev() {
        for row in &structure[g].rows {
            base.insert(
                (row.event_type.clone(), row.state_key.clone()),
                row.event_id.clone(),
            );
        }
    }
    base
}
