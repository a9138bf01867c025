//! A realistic writer of Synapse-like state groups.
//!
//! It simulates rooms whose events change state (creation, joins, leaves,
//! re-joins, invites, kicks and bans, displayname/avatar changes, topic, name,
//! power levels, join rules, widgets, ...) and writes one state group per
//! state change the way Synapse does: as a delta on its predecessor plus an
//! edge while the predecessor's chain is shorter than
//! [`MAX_STATE_DELTA_HOPS`] groups, otherwise as a full snapshot.
//!
//! It also reproduces what a forked room DAG does to the tables:
//! - forks: a group built on an *older* group of the room (an event whose
//!   prev_events are not the latest), stored as a delta on that older group,
//!   so its key set may lack keys added in between;
//! - state resolution: a group merging two branches, stored (like Synapse's
//!   `_make_state_cache_entry`) as a delta on the branch whose keys are a
//!   subset of the result, or as a snapshot with no edge when resolution
//!   dropped keys of both;
//! - groups with an empty delta (same state as their prev);
//! - snapshots with no prev whose state lacks some keys (state resets).
//!
//! Rooms are interleaved and share one sequence of ids (like
//! `state_group_id_seq`). Everything is deterministic for a given
//! [`GenConfig`] (seeded `SmallRng`, no hash-order dependence). With
//! `nasty_strings`, room ids, types, state keys and event ids include quotes,
//! `$$`, `$tag$`, backslashes, `\.`, emoji, newlines, tabs, percent signs and
//! a 5,000-character state key.
//!
//! [`generate`] builds the groups in memory; [`Generated::write`] (or
//! [`write_groups`] for hand-made groups) stores them with binary `COPY`;
//! [`generate_mix`] and [`write_mix`] do the same for the benchmark's
//! database of many rooms, streamed.
//!
//! This file holds the generated data and the tests' writer; the folder:
//! - `settings`: what to generate ([`GenConfig`], [`MixConfig`]) and the
//!   named presets;
//! - `strings`: event, room and user ids, plain or hostile;
//! - `room`: the simulation of one room;
//! - `mix`: the benchmark's many-room database;
//! - `copy`: binary `COPY` into the four tables, for both writers.

mod copy;
mod mix;
mod room;
mod settings;
mod strings;
#[cfg(test)]
mod tests;

pub use mix::{generate_mix, write_mix, MixRoom};
pub use settings::{GenConfig, MixConfig, RoomClass, MAX_STATE_DELTA_HOPS};
pub use strings::long_state_key;

use crate::structure::{GroupInfo, StateRow, Structure};
use crate::StateMap;
use copy::{GroupHead, Table};
use postgres::Client;
use rand::Rng;
use room::RoomSim;
use std::collections::BTreeSet;
use strings::Strings;

/// One state group as written: its room, event, prev and rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenGroup {
    pub id: i64,
    pub room_id: String,
    pub event_id: String,
    /// The edge, if any.
    pub prev: Option<i64>,
    /// The rows: the delta on `prev`, or the full state when there is none.
    pub delta: StateMap,
}

/// A hand-made group, for tests that need exact shapes:
/// `group(5, "!r:x", Some(4), &[("m.room.topic", "", "$t2")])`.
pub fn group(id: i64, room_id: &str, prev: Option<i64>, rows: &[(&str, &str, &str)]) -> GenGroup {
    GenGroup {
        id,
        room_id: room_id.to_string(),
        event_id: format!("$group{id}"),
        prev,
        delta: rows
            .iter()
            .map(|(t, k, e)| ((t.to_string(), k.to_string()), e.to_string()))
            .collect(),
    }
}

/// A generated room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedRoom {
    pub room_id: String,
    /// Its group ids, ascending.
    pub group_ids: Vec<i64>,
}

/// The generated data (groups in ascending id order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub rooms: Vec<GeneratedRoom>,
    pub groups: Vec<GenGroup>,
}

impl Generated {
    /// Number of `state_groups_state` rows.
    pub fn row_count(&self) -> usize {
        self.groups.iter().map(|g| g.delta.len()).sum()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.groups.iter().filter(|g| g.prev.is_some()).count()
    }

    /// Number of groups stored without an edge.
    pub fn snapshot_count(&self) -> usize {
        self.groups.len() - self.edge_count()
    }

    /// Rows of one room.
    pub fn room_row_count(&self, room_id: &str) -> usize {
        self.groups
            .iter()
            .filter(|g| g.room_id == room_id)
            .map(|g| g.delta.len())
            .sum()
    }

    /// The room with the most groups (the first such).
    pub fn biggest_room(&self) -> &GeneratedRoom {
        let most = self.rooms.iter().map(|r| r.group_ids.len()).max();
        self.rooms
            .iter()
            .find(|r| Some(r.group_ids.len()) == most)
            .expect("no rooms generated")
    }

    /// What [`crate::structure::structure`] will read back once written.
    pub fn structure(&self) -> Structure {
        self.groups
            .iter()
            .map(|g| {
                let mut rows: Vec<StateRow> = g
                    .delta
                    .iter()
                    .map(|((t, k), e)| StateRow {
                        room_id: g.room_id.clone(),
                        event_type: t.clone(),
                        state_key: k.clone(),
                        event_id: e.clone(),
                    })
                    .collect();
                rows.sort_unstable();
                let info = GroupInfo {
                    room_id: Some(g.room_id.clone()),
                    event_id: Some(g.event_id.clone()),
                    prevs: g.prev.into_iter().collect(),
                    rows,
                };
                (g.id, info)
            })
            .collect()
    }

    /// Writes everything (state tables and `event_to_state_groups`) in one
    /// transaction, then analyzes the tables.
    pub fn write(&self, client: &mut Client) -> Result<(), postgres::Error> {
        write_all(client, &self.groups, true)
    }
}

/// Writes hand-made groups (`state_groups`, edges, rows) in one transaction.
pub fn write_groups(client: &mut Client, groups: &[GenGroup]) -> Result<(), postgres::Error> {
    write_all(client, groups, false)
}

fn write_all(
    client: &mut Client,
    groups: &[GenGroup],
    event_map: bool,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    let heads = groups.iter().map(|g| GroupHead {
        id: g.id,
        room_id: &g.room_id,
        event_id: &g.event_id,
        prev: g.prev,
    });
    copy::copy_heads(&mut tx, heads, event_map, false)?;
    let mut w = copy::copy_in(&mut tx, Table::Rows, false)?;
    for g in groups {
        copy::write_rows(&mut w, g)?;
    }
    w.finish()?;
    copy::set_id_sequence(&mut tx)?;
    tx.commit()?;
    client.batch_execute("ANALYZE state_groups, state_group_edges, state_groups_state")
}

/// Generates the groups described by `cfg` (nothing is written).
pub fn generate(cfg: &GenConfig) -> Generated {
    let mut strings = Strings::new(cfg.seed, cfg.nasty_strings);
    let mut rooms: Vec<RoomSim> = (0..cfg.rooms)
        .map(|i| {
            let room_id = strings.room_id(i);
            RoomSim::new(room_id, cfg, &mut strings)
        })
        .collect();
    let mut seen_ids = BTreeSet::new();
    for room in &rooms {
        assert!(seen_ids.insert(room.room_id), "duplicate room id");
    }

    let mut groups = Vec::with_capacity(cfg.rooms * cfg.groups_per_room);
    let mut next_id = cfg.first_group_id;
    loop {
        let remaining: usize = rooms.iter().map(RoomSim::remaining).sum();
        if remaining == 0 {
            break;
        }
        // Interleave rooms, weighted by how much each has left.
        let mut pick = strings.rng.random_range(0..remaining);
        let room = rooms
            .iter_mut()
            .find(|r| {
                if pick < r.remaining() {
                    true
                } else {
                    pick -= r.remaining();
                    false
                }
            })
            .expect("a room with groups left");
        groups.push(room.step(next_id, cfg, &mut strings));
        next_id += 1;
    }

    Generated {
        rooms: rooms
            .iter()
            .map(|r| GeneratedRoom {
                room_id: r.room_id.to_string(),
                group_ids: r.group_ids.clone(),
            })
            .collect(),
        groups,
    }
}

/// Generates with `cfg` and writes the result into the database.
pub fn generate_into(client: &mut Client, cfg: &GenConfig) -> Result<Generated, postgres::Error> {
    let generated = generate(cfg);
    generated.write(client)?;
    Ok(generated)
}
