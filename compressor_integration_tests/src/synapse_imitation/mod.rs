//! A stand-in for a live Synapse (1.124+) working on the state tables while
//! a compressor runs beside it.
//!
//! [`Imitator`] does, one transaction at a time, what Synapse's storage layer
//! does to state groups (see docs/synapse-tables.md):
//!
//! - **appends** a group (`writer.rs`) on top of an existing one: locks the prev
//!   `FOR KEY SHARE`, gives up if it is gone, bumps its pending deletion
//!   (`sequence_number = DEFAULT`, `insertion_ts = now`), counts the prev's
//!   chain and stores a delta plus an edge while the chain is shorter than
//!   `max_delta_hops`, a full snapshot otherwise; the id comes from
//!   `state_group_id_seq`;
//! - **marks** groups for deletion (`deleter.rs`) (`state_groups_pending_deletion`), and
//!   sometimes as being persisted (`state_groups_persisting`);
//! - **deletes** marked groups: locks them `FOR UPDATE`, keeps only those
//!   whose `sequence_number` is still the one it read and that are not being
//!   persisted, rewrites every surviving group whose prev is deleted as a
//!   full snapshot ("de-delta": the state read with Synapse's query, then
//!   rows replaced and the edge removed), then deletes the groups' rows,
//!   edges, `state_groups` rows and pending entries;
//! - **purges** a whole room (`purger.rs`; edges, rows, then groups, in Synapse's order);
//! - **reads** a group's state with Synapse's query, as clients do, and
//!   compares it with what it must be.
//!
//! It tracks the state every group must have (the generated groups and the
//! ones it created; deleted and purged groups are forgotten), so that after
//! the compressor and the imitator are done, [`verify_database`] can prove
//! that every group that still exists resolves to exactly its state.
//!
//! Every operation is its own transaction; the expectations are updated only
//! once it committed. A deadlock reported by PostgreSQL rolls the operation
//! back and is counted (Synapse retries such transactions).
//!
//! This file holds what the three share: the expectations, the settings,
//! the statistics, the random choice of the next operation, the reads, and
//! the SQL helpers; `verify.rs` holds the final proof.

mod deleter;
mod purger;
mod verify;
mod writer;

pub use verify::{verify_database, Verification};

use crate::generator::Generated;
use crate::structure::resolve_all;
use crate::synapse_state;
use crate::StateMap;
use postgres::error::SqlState;
use postgres::{Client, GenericClient, Transaction};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a group must resolve to, and its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub room_id: String,
    pub state: StateMap,
}

/// Every live group's expected state, by id.
pub type Expectations = BTreeMap<i64, Expected>;

/// The expectations for freshly generated (and stored) data.
pub fn expectations_of(generated: &Generated) -> Expectations {
    let states = resolve_all(&generated.structure());
    generated
        .groups
        .iter()
        .map(|g| {
            (
                g.id,
                Expected {
                    room_id: g.room_id.clone(),
                    state: states[&g.id].clone(),
                },
            )
        })
        .collect()
}

/// How often each operation is picked (relative weights) and its limits.
#[derive(Clone, Debug)]
pub struct ImitatorConfig {
    pub seed: u64,
    /// Synapse's `MAX_STATE_DELTA_HOPS` (100); smaller makes more snapshots.
    pub max_delta_hops: usize,
    pub append_weight: u32,
    pub mark_weight: u32,
    pub delete_weight: u32,
    pub read_weight: u32,
    /// Rooms purged at most (each purge is picked with `purge_weight`).
    pub max_purges: usize,
    pub purge_weight: u32,
    /// Never purge a room while fewer than this many rooms are left.
    pub keep_rooms: usize,
    /// Delete groups that others are built on, de-deltaing those (as
    /// Synapse does). When off, a group that has children when it comes to
    /// deleting it is left alone, so no surviving group is ever rewritten.
    pub de_delta: bool,
}

impl Default for ImitatorConfig {
    fn default() -> Self {
        ImitatorConfig {
            seed: 1,
            max_delta_hops: 100,
            append_weight: 50,
            mark_weight: 12,
            delete_weight: 12,
            read_weight: 20,
            max_purges: 1,
            purge_weight: 1,
            keep_rooms: 2,
            de_delta: true,
        }
    }
}

/// What the imitator did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImitatorStats {
    pub operations: usize,
    pub appended_deltas: usize,
    pub appended_snapshots: usize,
    /// Appends abandoned because the prev was gone.
    pub append_prev_gone: usize,
    pub marked: usize,
    pub marked_persisting: usize,
    pub deleted: usize,
    /// Surviving groups rewritten as snapshots because their prev was deleted.
    pub de_deltas: usize,
    /// Deletions called off because the group's pending deletion was bumped
    /// (someone built on it meanwhile: us or the compressor).
    pub deletions_called_off_bumped: usize,
    /// Deletions called off because the group was being persisted.
    pub deletions_called_off_persisting: usize,
    /// Deletions called off because other groups are built on the group
    /// (only without `de_delta`).
    pub deletions_called_off_children: usize,
    pub purged_rooms: usize,
    pub purged_groups: usize,
    /// States read with Synapse's query while the compressor ran.
    pub reads: usize,
    /// Operations rolled back by a deadlock (and not retried).
    pub deadlocks: usize,
}

/// The imitation of a live Synapse. See the module documentation.
pub struct Imitator {
    client: Client,
    rng: SmallRng,
    config: ImitatorConfig,
    expected: Expectations,
    /// Live groups of each room.
    rooms: BTreeMap<String, BTreeSet<i64>>,
    /// Groups we marked for deletion.
    pending: BTreeSet<i64>,
    /// Groups we marked as being persisted.
    persisting: BTreeSet<i64>,
    /// The collection to delete next (group to sequence number).
    collection: Option<BTreeMap<i64, i64>>,
    /// Groups that were deleted or purged.
    removed: BTreeSet<i64>,
    counter: u64,
    pub stats: ImitatorStats,
    /// Wrong states seen while running (each a description).
    pub problems: Vec<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn is_deadlock(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
}

impl Imitator {
    /// An imitator working on the database behind `client`, whose groups
    /// must currently resolve to `expected`.
    pub fn new(client: Client, expected: Expectations, config: ImitatorConfig) -> Imitator {
        let mut rooms: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for (&id, e) in &expected {
            rooms.entry(e.room_id.clone()).or_default().insert(id);
        }
        Imitator {
            client,
            rng: SmallRng::seed_from_u64(config.seed ^ SEED_MIX),
            config,
            expected,
            rooms,
            pending: BTreeSet::new(),
            persisting: BTreeSet::new(),
            collection: None,
            removed: BTreeSet::new(),
            counter: 0,
            stats: ImitatorStats::default(),
            problems: Vec::new(),
        }
    }

    /// The groups that must exist now, with their states.
    pub fn expected(&self) -> &Expectations {
        &self.expected
    }

    /// Groups deleted or purged so far.
    pub fn removed(&self) -> &BTreeSet<i64> {
        &self.removed
    }

    /// Does up to `max_ops` random operations, stopping early when `stop`
    /// receives a message or is disconnected.
    pub fn run(mut self, max_ops: usize, stop: Receiver<()>) -> Result<Imitator, String> {
        for _ in 0..max_ops {
            match stop.try_recv() {
                Err(TryRecvError::Empty) => {}
                _ => break,
            }
            self.step()
                .map_err(|e| format!("imitator operation failed: {e}"))?;
        }
        self.settle()
            .map_err(|e| format!("imitator clean-up failed: {e}"))?;
        Ok(self)
    }

    /// One random operation.
    pub fn step(&mut self) -> Result<(), postgres::Error> {
        self.stats.operations += 1;
        let c = &self.config;
        let purge_weight =
            if self.stats.purged_rooms < c.max_purges && self.rooms.len() > c.keep_rooms {
                c.purge_weight
            } else {
                0
            };
        let weights = [
            c.append_weight,
            c.mark_weight,
            c.delete_weight,
            c.read_weight,
            purge_weight,
        ];
        let total: u32 = weights.iter().sum();
        let mut pick = self.rng.random_range(0..total.max(1));
        let mut op = 0;
        while op < weights.len() - 1 && pick >= weights[op] {
            pick -= weights[op];
            op += 1;
        }
        let outcome = match op {
            0 => self.append_somewhere(),
            1 => self.mark_some(),
            2 => self.delete_some(),
            3 => self.read_some(),
            _ => self.purge_some(),
        };
        match outcome {
            Err(e) if is_deadlock(&e) => {
                self.stats.deadlocks += 1;
                Ok(())
            }
            other => other,
        }
    }

    fn random_live_group(&mut self) -> Option<i64> {
        if self.expected.is_empty() {
            return None;
        }
        let n = self.rng.random_range(0..self.expected.len());
        self.expected.keys().nth(n).copied()
    }

    fn random_room(&mut self) -> Option<String> {
        if self.rooms.is_empty() {
            return None;
        }
        let n = self.rng.random_range(0..self.rooms.len());
        self.rooms.keys().nth(n).cloned()
    }

    fn read_some(&mut self) -> Result<(), postgres::Error> {
        let Some(g) = self.random_live_group() else {
            return Ok(());
        };
        let state = synapse_state::state_of_group(&mut self.client, g)?;
        self.stats.reads += 1;
        self.check(
            g,
            &state,
            "read with Synapse's query while the compressor ran",
        );
        Ok(())
    }

    fn forget(&mut self, g: i64) {
        if let Some(e) = self.expected.remove(&g) {
            if let Some(set) = self.rooms.get_mut(&e.room_id) {
                set.remove(&g);
                if set.is_empty() {
                    self.rooms.remove(&e.room_id);
                }
            }
        }
        self.pending.remove(&g);
        self.removed.insert(g);
    }

    fn check(&mut self, g: i64, found: &StateMap, when: &str) {
        let Some(expected) = self.expected.get(&g) else {
            return;
        };
        if &expected.state != found {
            let mut before = BTreeMap::new();
            before.insert(g, expected.state.clone());
            let mut after = BTreeMap::new();
            after.insert(g, found.clone());
            let diff = synapse_state::first_difference(&before, &after).unwrap_or_default();
            self.problems.push(format!("group {g}, {when}: {diff}"));
        }
    }
}

/// Mixed into the seed, so that the imitator's choices differ from the
/// generator's for the same seed.
const SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

fn read_state(client: &mut impl GenericClient, g: i64) -> Result<StateMap, postgres::Error> {
    Ok(client
        .query(synapse_state::SYNAPSE_STATE_QUERY, &[&g])?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

fn insert_rows(
    tx: &mut Transaction<'_>,
    group: i64,
    room: &str,
    rows: &StateMap,
) -> Result<(), postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (types, keys, events): (Vec<&str>, Vec<&str>, Vec<&str>) = {
        let mut t = Vec::with_capacity(rows.len());
        let mut k = Vec::with_capacity(rows.len());
        let mut e = Vec::with_capacity(rows.len());
        for ((ty, key), event) in rows {
            t.push(ty.as_str());
            k.push(key.as_str());
            e.push(event.as_str());
        }
        (t, k, e)
    };
    tx.execute(
        "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) \
         SELECT $1, $2, t, k, e FROM unnest($3::text[], $4::text[], $5::text[]) AS u(t, k, e)",
        &[&group, &room, &types, &keys, &events],
    )?;
    Ok(())
}
