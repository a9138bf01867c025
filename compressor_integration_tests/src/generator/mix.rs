//! The benchmark's database: many rooms of mixed sizes ([`MixConfig`]),
//! simulated on a few threads and streamed in id order ([`generate_mix`]),
//! and written the fastest way there is ([`write_mix`]).

use super::copy::{self, GroupHead, Table};
use super::room::RoomSim;
use super::strings::Strings;
use super::{GenConfig, GenGroup, MixConfig};
use postgres::GenericClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::SyncSender;

/// What [`generate_mix`] produced for one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixRoom {
    pub room_id: String,
    pub groups: usize,
    /// Its `state_groups_state` rows.
    pub rows: usize,
    /// Its groups stored without an edge.
    pub snapshots: usize,
}

/// A seed per room, derived from the configuration's seed (SplitMix64).
fn room_seed(seed: u64, room: usize) -> u64 {
    let mut z = seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul((room as u64).wrapping_add(1)))
        .wrapping_add(0xB5AD_4ECE_DA1C_E2A9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Generates the rooms of `cfg` and hands each group, in ascending id order
/// (ids from `cfg.base.first_group_id`, without gaps), to `sink`; stops at
/// the first error of `sink`. Returns what each room got, in room order.
///
/// Rooms are simulated on a few threads (each room has its own random
/// generator, so the result does not depend on how they are spread) and
/// handed to `sink` on the calling thread. Deterministic for a given
/// configuration.
pub fn generate_mix<E>(
    cfg: &MixConfig,
    mut sink: impl FnMut(GenGroup) -> Result<(), E>,
) -> Result<Vec<MixRoom>, E> {
    let rooms = plan_rooms(cfg);
    let schedule = shuffled_schedule(cfg, &rooms);
    let (worker_of, per_worker) = spread_over_workers(rooms);
    let schedule = &schedule;
    let first_id = cfg.base.first_group_id;
    std::thread::scope(|scope| {
        let mut receivers = Vec::with_capacity(per_worker.len());
        for mine in per_worker {
            let (tx, rx) = std::sync::mpsc::sync_channel::<GenGroup>(256);
            receivers.push(rx);
            scope.spawn(move || simulate_rooms(mine, schedule, first_id, tx));
        }
        let mut by_room: BTreeMap<usize, MixRoom> = BTreeMap::new();
        for &index in schedule {
            let index = index as usize;
            let group = receivers[worker_of[index]]
                .recv()
                .expect("a generator thread stopped early");
            let entry = by_room.entry(index).or_insert_with(|| MixRoom {
                room_id: group.room_id.clone(),
                groups: 0,
                rows: 0,
                snapshots: 0,
            });
            entry.groups += 1;
            entry.rows += group.delta.len();
            entry.snapshots += usize::from(group.prev.is_none());
            if let Err(e) = sink(group) {
                // Dropping the receivers stops the workers.
                drop(receivers);
                return Err(e);
            }
        }
        Ok(by_room.into_values().collect())
    })
}

/// A room of the mix before its simulation starts: its id and random
/// generator (drawn in room order) and its own settings.
struct PlannedRoom {
    room_id: String,
    strings: Strings,
    cfg: GenConfig,
    initial_members: usize,
}

/// Every room of `cfg`, class after class.
fn plan_rooms(cfg: &MixConfig) -> Vec<PlannedRoom> {
    let base = &cfg.base;
    let mut rooms: Vec<PlannedRoom> = Vec::with_capacity(cfg.room_count());
    let mut seen_ids = BTreeSet::new();
    for class in &cfg.classes {
        for _ in 0..class.rooms {
            let index = rooms.len();
            let mut strings = Strings::new(room_seed(base.seed, index), base.nasty_strings);
            let room_id = strings.room_id(index);
            assert!(seen_ids.insert(room_id.clone()), "duplicate room id");
            rooms.push(PlannedRoom {
                room_id,
                strings,
                cfg: GenConfig {
                    groups_per_room: class.groups_per_room,
                    members: class.members,
                    ..base.clone()
                },
                initial_members: class.initial_members,
            });
        }
    }
    rooms
}

/// Which room gets each id: every room's groups, shuffled (the same as
/// picking a room weighted by how much it has left, at every step).
fn shuffled_schedule(cfg: &MixConfig, rooms: &[PlannedRoom]) -> Vec<u32> {
    let mut schedule: Vec<u32> = Vec::with_capacity(cfg.group_count());
    for (index, room) in rooms.iter().enumerate() {
        schedule.extend(std::iter::repeat_n(index as u32, room.cfg.groups_per_room));
    }
    let mut rng = SmallRng::seed_from_u64(room_seed(cfg.base.seed, usize::MAX));
    for i in (1..schedule.len()).rev() {
        let j = rng.random_range(0..=i);
        schedule.swap(i, j);
    }
    schedule
}

/// Spreads the rooms over a few workers by their cost (groups times state
/// size), heaviest first, each to the least loaded worker. Returns each
/// room's worker and each worker's rooms (with their indexes).
#[allow(clippy::type_complexity)]
fn spread_over_workers(rooms: Vec<PlannedRoom>) -> (Vec<usize>, Vec<Vec<(usize, PlannedRoom)>>) {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let mut order: Vec<usize> = (0..rooms.len()).collect();
    let cost = |r: &PlannedRoom| r.cfg.groups_per_room * (r.cfg.members + r.initial_members + 16);
    order.sort_by_key(|&i| std::cmp::Reverse(cost(&rooms[i])));
    let mut load = vec![0usize; workers];
    let mut worker_of = vec![0usize; rooms.len()];
    for i in order {
        let w = (0..workers).min_by_key(|&w| load[w]).unwrap_or(0);
        load[w] += cost(&rooms[i]);
        worker_of[i] = w;
    }
    let mut per_worker: Vec<Vec<(usize, PlannedRoom)>> = (0..workers).map(|_| Vec::new()).collect();
    for (index, room) in rooms.into_iter().enumerate() {
        per_worker[worker_of[index]].push((index, room));
    }
    (worker_of, per_worker)
}

/// A worker: simulates its rooms, following the schedule, and sends their
/// groups in id order to `tx`, until the schedule ends or the consumer
/// stops.
fn simulate_rooms(
    mine: Vec<(usize, PlannedRoom)>,
    schedule: &[u32],
    first_id: i64,
    tx: SyncSender<GenGroup>,
) {
    // Local index of each of this worker's rooms.
    let mut local: HashMap<usize, usize> = HashMap::new();
    let mut sims: Vec<(RoomSim, Strings, usize, GenConfig)> = Vec::new();
    for (index, room) in mine {
        let mut strings = room.strings;
        let sim = RoomSim::new(room.room_id, &room.cfg, &mut strings);
        local.insert(index, sims.len());
        sims.push((sim, strings, room.initial_members, room.cfg));
    }
    for (position, &index) in schedule.iter().enumerate() {
        let Some(&l) = local.get(&(index as usize)) else {
            continue;
        };
        let (sim, strings, initial_members, room_cfg) = &mut sims[l];
        let id = first_id + position as i64;
        let group = if sim.latest.is_none() && *initial_members > 1 {
            sim.joined_over_federation(id, *initial_members, strings)
        } else {
            sim.step(id, room_cfg, strings)
        };
        if sim.remaining() == 0 {
            // Done: free its states now.
            let empty = GenConfig {
                groups_per_room: 0,
                ..room_cfg.clone()
            };
            *sim = RoomSim::new(String::new(), &empty, strings);
        }
        if tx.send(group).is_err() {
            return; // the consumer stopped
        }
    }
}

/// Writes the groups of `cfg` into the database the fastest way there is:
/// `state_groups_state` streamed with one binary `COPY` as the rows are
/// generated, then `state_groups`, `state_group_edges` and
/// `event_to_state_groups` (kept in memory meanwhile: a few dozen bytes per
/// group). No `ANALYZE`: meant for a database made for the purpose (the
/// benchmark drops the indexes first and builds them afterwards). With
/// `freeze`, every `COPY` has the `FREEZE` option, which PostgreSQL accepts
/// only inside a transaction that created or truncated the tables; the rows
/// are then stored frozen, as if vacuumed. Returns what each room got.
pub fn write_mix(
    client: &mut impl GenericClient,
    cfg: &MixConfig,
    freeze: bool,
) -> Result<Vec<MixRoom>, postgres::Error> {
    /// A written group, without its rows (its room as an index into the
    /// rooms seen).
    struct Meta {
        id: i64,
        room: u32,
        event_id: String,
        prev: Option<i64>,
    }
    let mut metas: Vec<Meta> = Vec::with_capacity(cfg.group_count());
    let mut room_index: HashMap<String, u32> = HashMap::new();
    let mut w = copy::copy_in(client, Table::Rows, freeze)?;
    let report = generate_mix(cfg, |g| {
        copy::write_rows(&mut w, &g)?;
        let next = room_index.len() as u32;
        let room = *room_index.entry(g.room_id).or_insert(next);
        metas.push(Meta {
            id: g.id,
            room,
            event_id: g.event_id,
            prev: g.prev,
        });
        Ok(())
    })?;
    w.finish()?;
    let mut room_ids = vec![String::new(); room_index.len()];
    for (room_id, index) in room_index {
        room_ids[index as usize] = room_id;
    }
    let heads = metas.iter().map(|m| GroupHead {
        id: m.id,
        room_id: &room_ids[m.room as usize],
        event_id: &m.event_id,
        prev: m.prev,
    });
    copy::copy_heads(client, heads, true, freeze)?;
    copy::set_id_sequence(client)?;
    Ok(report)
}
