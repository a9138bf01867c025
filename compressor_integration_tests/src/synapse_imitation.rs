//! A stand-in for a live Synapse (1.124+) working on the state tables while
//! a compressor runs beside it.
//!
//! [`Imitator`] does, one transaction at a time, what Synapse's storage layer
//! does to state groups (see `synapse-schema.md`):
//!
//! - **appends** a group on top of an existing one: locks the prev
//!   `FOR KEY SHARE`, gives up if it is gone, bumps its pending deletion
//!   (`sequence_number = DEFAULT`, `insertion_ts = now`), counts the prev's
//!   chain and stores a delta plus an edge while the chain is shorter than
//!   `max_delta_hops`, a full snapshot otherwise; the id comes from
//!   `state_group_id_seq`;
//! - **marks** groups for deletion (`state_groups_pending_deletion`), and
//!   sometimes as being persisted (`state_groups_persisting`);
//! - **deletes** marked groups: locks them `FOR UPDATE`, keeps only those
//!   whose `sequence_number` is still the one it read and that are not being
//!   persisted, rewrites every surviving group whose prev is deleted as a
//!   full snapshot ("de-delta": the state read with Synapse's query, then
//!   rows replaced and the edge removed), then deletes the groups' rows,
//!   edges, `state_groups` rows and pending entries;
//! - **purges** a whole room (edges, rows, then groups, in Synapse's order);
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

use crate::generator::Generated;
use crate::structure::{self, resolve_all};
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

    /// Removes our `state_groups_persisting` rows (as Synapse does once the
    /// events are persisted), so nothing is left pinned.
    pub fn settle(&mut self) -> Result<(), postgres::Error> {
        let ids: Vec<i64> = std::mem::take(&mut self.persisting).into_iter().collect();
        self.client.execute(
            "DELETE FROM state_groups_persisting WHERE state_group = ANY($1)",
            &[&ids],
        )?;
        Ok(())
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

    fn append_somewhere(&mut self) -> Result<(), postgres::Error> {
        // Mostly on a room's latest group (its forward extremity), sometimes
        // on an older one (an event whose prev_events are not the latest).
        let prev = if self.rng.random_bool(0.8) {
            let Some(room) = self.random_room() else {
                return Ok(());
            };
            self.rooms[&room].last().copied()
        } else {
            self.random_live_group()
        };
        match prev {
            Some(prev) => self.append(prev).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Stores a new group on top of `prev` the way Synapse does. Returns its
    /// id, or `None` when `prev` is gone.
    pub fn append(&mut self, prev: i64) -> Result<Option<i64>, postgres::Error> {
        let Some(base) = self.expected.get(&prev).cloned() else {
            return Ok(None);
        };
        let delta = self.random_delta(&base.state);
        let max_hops = self.config.max_delta_hops as i64;
        let mut tx = self.client.transaction()?;
        // Synapse's check_state_groups_and_bump_deletion.
        let found = tx.query(
            "SELECT id FROM state_groups WHERE id = ANY($1) FOR KEY SHARE",
            &[&vec![prev]],
        )?;
        if found.is_empty() {
            self.stats.append_prev_gone += 1;
            return Ok(None);
        }
        tx.execute(
            "UPDATE state_groups_pending_deletion SET sequence_number = DEFAULT, insertion_ts = $2 \
             WHERE state_group = ANY($1)",
            &[&vec![prev], &now_ms()],
        )?;
        let hops: i64 = tx
            .query_one(
                "WITH RECURSIVE chain(state_group) AS ( \
                     VALUES ($1::bigint) \
                     UNION ALL \
                     SELECT e.prev_state_group FROM state_group_edges e, chain c \
                     WHERE e.state_group = c.state_group) \
                 SELECT count(*) FROM chain",
                &[&prev],
            )?
            .get(0);
        let id: i64 = tx
            .query_one("SELECT nextval('state_group_id_seq')", &[])?
            .get(0);
        let as_delta = hops < max_hops;
        let mut state = base.state.clone();
        state.extend(delta.clone());
        let rows = if as_delta { &delta } else { &state };
        tx.execute(
            "INSERT INTO state_groups (id, room_id, event_id) VALUES ($1, $2, $3)",
            &[&id, &base.room_id, &format!("$imitated{id}")],
        )?;
        if as_delta {
            tx.execute(
                "INSERT INTO state_group_edges (state_group, prev_state_group) VALUES ($1, $2)",
                &[&id, &prev],
            )?;
        }
        insert_rows(&mut tx, id, &base.room_id, rows)?;
        tx.commit()?;
        if as_delta {
            self.stats.appended_deltas += 1;
        } else {
            self.stats.appended_snapshots += 1;
        }
        self.rooms
            .entry(base.room_id.clone())
            .or_default()
            .insert(id);
        self.expected.insert(
            id,
            Expected {
                room_id: base.room_id,
                state,
            },
        );
        Ok(Some(id))
    }

    /// 0 to 3 changes on `state`: joins of new members, changes of existing
    /// keys, topic changes. Keys are never removed (deltas cannot).
    fn random_delta(&mut self, state: &StateMap) -> StateMap {
        let mut delta = StateMap::new();
        let changes = self.rng.random_range(0..=3);
        for _ in 0..changes {
            self.counter += 1;
            let event = format!("$imitated_event_{}_{}", self.config.seed, self.counter);
            let roll = self.rng.random_range(0..10);
            let key = if roll < 5 || state.is_empty() {
                (
                    "m.room.member".to_string(),
                    format!("@imitated{}:example.org", self.counter),
                )
            } else if roll < 9 {
                let n = self.rng.random_range(0..state.len());
                state.keys().nth(n).cloned().expect("nth key")
            } else {
                ("m.room.topic".to_string(), String::new())
            };
            delta.insert(key, event);
        }
        delta
    }

    fn mark_some(&mut self) -> Result<(), postgres::Error> {
        let count = self.rng.random_range(1..=4);
        let mut groups = Vec::new();
        if self.config.de_delta {
            for _ in 0..count {
                if let Some(g) = self.random_live_group() {
                    groups.push(g);
                }
            }
        } else if let Some(room) = self.random_room() {
            // Groups nothing is built on (now).
            let leaves: Vec<i64> = self
                .client
                .query(
                    "SELECT id FROM state_groups g WHERE room_id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM state_group_edges e WHERE e.prev_state_group = g.id) \
                     ORDER BY id",
                    &[&room],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for _ in 0..count.min(leaves.len()) {
                groups.push(leaves[self.rng.random_range(0..leaves.len())]);
            }
            groups.sort_unstable();
            groups.dedup();
        }
        let persisting = self.rng.random_bool(0.1);
        self.mark_for_deletion(&groups, persisting)
    }

    /// Marks `groups` as pending deletion (and as being persisted, which
    /// must stop their deletion, when `persisting`).
    pub fn mark_for_deletion(
        &mut self,
        groups: &[i64],
        persisting: bool,
    ) -> Result<(), postgres::Error> {
        let mut tx = self.client.transaction()?;
        tx.execute(
            "INSERT INTO state_groups_pending_deletion (state_group, insertion_ts) \
             SELECT g, $2 FROM unnest($1::bigint[]) AS g \
             ON CONFLICT (state_group) DO NOTHING",
            &[&groups, &now_ms()],
        )?;
        if persisting {
            tx.execute(
                "INSERT INTO state_groups_persisting (state_group, instance_name) \
                 SELECT g, 'imitator' FROM unnest($1::bigint[]) AS g ON CONFLICT DO NOTHING",
                &[&groups],
            )?;
        }
        tx.commit()?;
        self.stats.marked += groups.len();
        self.pending.extend(groups);
        if persisting {
            self.stats.marked_persisting += groups.len();
            self.persisting.extend(groups);
        }
        Ok(())
    }

    fn delete_some(&mut self) -> Result<(), postgres::Error> {
        // Now and then, persisting finishes.
        if !self.persisting.is_empty() && self.rng.random_bool(0.3) {
            self.settle()?;
        }
        // Synapse reads a collection to delete (one room's groups with their
        // sequence numbers) and deletes it later: delete the collection read
        // last time, then read the next one.
        if let Some(collection) = self.collection.take() {
            self.delete_collection(&collection)?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.rng.random_range(0..self.pending.len());
        let first = *self.pending.iter().nth(n).expect("nth pending group");
        let Some(room) = self.expected.get(&first).map(|e| e.room_id.clone()) else {
            self.pending.remove(&first);
            return Ok(());
        };
        let groups: Vec<i64> = self
            .pending
            .iter()
            .copied()
            .filter(|g| self.expected.get(g).is_some_and(|e| e.room_id == room))
            .take(6)
            .collect();
        self.collection = Some(self.collect_for_deletion(&groups)?);
        Ok(())
    }

    /// Reads the sequence numbers of pending `groups`: what Synapse's
    /// `get_next_state_group_collection_to_delete` hands to the deletion.
    pub fn collect_for_deletion(
        &mut self,
        groups: &[i64],
    ) -> Result<BTreeMap<i64, i64>, postgres::Error> {
        Ok(self
            .client
            .query(
                "SELECT state_group, sequence_number FROM state_groups_pending_deletion \
                 WHERE state_group = ANY($1)",
                &[&groups],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Marks `groups` for deletion, reads them as a collection and deletes
    /// them at once (no time for anyone to bump them in between).
    pub fn delete_now(&mut self, groups: &[i64]) -> Result<(), postgres::Error> {
        self.mark_for_deletion(groups, false)?;
        let collection = self.collect_for_deletion(groups)?;
        self.delete_collection(&collection)
    }

    /// Runs Synapse's deletion of a collection read earlier (group to the
    /// sequence number it had then), all of one room.
    pub fn delete_collection(
        &mut self,
        sequence: &BTreeMap<i64, i64>,
    ) -> Result<(), postgres::Error> {
        self.delete_collection_gated(sequence, "", &mut || true)
            .map(|_| ())
    }

    /// [`Imitator::delete_collection`], running the statements `first` at
    /// the start of the deletion's transaction, and asking `gate` whether
    /// to go on once everything is locked and read, before the first write
    /// (if not, the transaction is rolled back and `false` returned). Tests
    /// use these to pin down an interleaving with the compressor.
    pub fn delete_collection_gated(
        &mut self,
        sequence: &BTreeMap<i64, i64>,
        first: &str,
        gate: &mut dyn FnMut() -> bool,
    ) -> Result<bool, postgres::Error> {
        let groups: Vec<i64> = sequence.keys().copied().collect();
        let mut tx = self.client.transaction()?;
        if !first.is_empty() {
            tx.batch_execute(first)?;
        }
        let mut ids: Vec<i64> = sequence.keys().copied().collect();
        ids.sort_unstable();
        let locked: BTreeSet<i64> = tx
            .query(
                "SELECT id FROM state_groups WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&ids],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let now: BTreeMap<i64, i64> = tx
            .query(
                "SELECT state_group, sequence_number FROM state_groups_pending_deletion \
                 WHERE state_group = ANY($1)",
                &[&ids],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let persisting: BTreeSet<i64> = tx
            .query(
                "SELECT state_group FROM state_groups_persisting WHERE state_group = ANY($1)",
                &[&ids],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut bumped = 0;
        let mut pinned = 0;
        let doomed: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|g| {
                if !locked.contains(g) {
                    false
                } else if now.get(g) != sequence.get(g) {
                    bumped += 1;
                    false
                } else if persisting.contains(g) {
                    pinned += 1;
                    false
                } else {
                    true
                }
            })
            .collect();

        let mut has_children = 0;
        let doomed: Vec<i64> = if self.config.de_delta {
            doomed
        } else {
            let parents: BTreeSet<i64> = tx
                .query(
                    "SELECT DISTINCT prev_state_group FROM state_group_edges \
                     WHERE prev_state_group = ANY($1)",
                    &[&doomed],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            has_children = parents.len();
            doomed
                .into_iter()
                .filter(|g| !parents.contains(g))
                .collect()
        };

        // De-delta the survivors built on a doomed group.
        let survivors: Vec<i64> = tx
            .query(
                "SELECT DISTINCT state_group FROM state_group_edges \
                 WHERE prev_state_group = ANY($1) AND NOT (state_group = ANY($1)) \
                 ORDER BY state_group",
                &[&doomed],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.batch_execute("SET LOCAL enable_seqscan = off")?;
        let mut full_states = Vec::with_capacity(survivors.len());
        for &g in &survivors {
            full_states.push(read_state(&mut tx, g)?);
        }
        tx.batch_execute("SET LOCAL enable_seqscan = on")?;
        // Everything is read and locked; nothing is written yet.
        if !gate() {
            tx.rollback()?;
            return Ok(false);
        }
        for (&g, state) in survivors.iter().zip(&full_states) {
            let room: String = tx
                .query_one("SELECT room_id FROM state_groups WHERE id = $1", &[&g])?
                .get(0);
            tx.execute(
                "DELETE FROM state_groups_state WHERE state_group = $1",
                &[&g],
            )?;
            tx.execute(
                "DELETE FROM state_group_edges WHERE state_group = $1",
                &[&g],
            )?;
            insert_rows(&mut tx, g, &room, state)?;
        }
        tx.execute(
            "DELETE FROM state_groups_state WHERE state_group = ANY($1)",
            &[&doomed],
        )?;
        tx.execute(
            "DELETE FROM state_group_edges WHERE state_group = ANY($1)",
            &[&doomed],
        )?;
        tx.execute("DELETE FROM state_groups WHERE id = ANY($1)", &[&doomed])?;
        tx.execute(
            "DELETE FROM state_groups_pending_deletion WHERE state_group = ANY($1)",
            &[&doomed],
        )?;
        tx.commit()?;

        self.stats.deletions_called_off_bumped += bumped;
        self.stats.deletions_called_off_persisting += pinned;
        self.stats.deletions_called_off_children += has_children;
        self.stats.deleted += doomed.len();
        self.stats.de_deltas += survivors.len();
        for (&g, state) in survivors.iter().zip(&full_states) {
            self.check(g, state, "read while de-deltaing it");
        }
        for g in &groups {
            if !persisting.contains(g) {
                // Bumped or deleted: either way we are done with it.
                self.pending.remove(g);
            }
        }
        for g in &doomed {
            self.forget(*g);
        }
        Ok(true)
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

    fn purge_some(&mut self) -> Result<(), postgres::Error> {
        match self.random_room() {
            Some(room) => self.purge_room(&room),
            None => Ok(()),
        }
    }

    /// Deletes a whole room's state the way Synapse's `purge_room_state`
    /// does: edges, rows, then groups.
    pub fn purge_room(&mut self, room: &str) -> Result<(), postgres::Error> {
        let mut tx = self.client.transaction()?;
        tx.execute(
            "DELETE FROM state_group_edges WHERE state_group IN \
             (SELECT id FROM state_groups WHERE room_id = $1)",
            &[&room],
        )?;
        tx.execute(
            "DELETE FROM state_groups_state WHERE state_group IN \
             (SELECT id FROM state_groups WHERE room_id = $1)",
            &[&room],
        )?;
        let purged = tx.execute("DELETE FROM state_groups WHERE room_id = $1", &[&room])?;
        tx.commit()?;
        self.stats.purged_rooms += 1;
        self.stats.purged_groups += purged as usize;
        let groups = self.rooms.remove(room).unwrap_or_default();
        for g in groups {
            self.forget(g);
        }
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

/// The outcome of [`verify_database`].
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// Groups whose state was read with Synapse's query and compared.
    pub groups_checked: usize,
    /// Rows or edges left behind for groups that no longer exist (a room
    /// purge racing with a writer leaves these; Synapse never reads them).
    pub orphaned_groups: Vec<i64>,
    /// Everything that is wrong.
    pub problems: Vec<String>,
}

/// Proves that the database holds exactly the `expected` groups (no more,
/// no fewer, each in its room), that each resolves (Synapse's query) to its
/// expected state, and that the stored tree keeps its invariants. Rows and
/// edges of `removed` groups that lost their `state_groups` row are
/// reported as orphans, not as problems.
pub fn verify_database(
    client: &mut Client,
    expected: &Expectations,
    removed: &BTreeSet<i64>,
) -> Result<Verification, postgres::Error> {
    let mut v = Verification::default();
    let stored = structure::structure(client, None)?;
    for problem in structure::violations(&stored) {
        v.problems.push(problem);
    }
    // Orphans of removed groups are tolerated; tell them apart.
    let orphan = |id: &i64| stored.get(id).is_some_and(|g| g.room_id.is_none());
    v.orphaned_groups = stored.keys().filter(|id| orphan(id)).copied().collect();
    v.problems.retain(|p| {
        !v.orphaned_groups
            .iter()
            .any(|id| removed.contains(id) && p.starts_with(&format!("group {id} has ")))
    });
    v.orphaned_groups.retain(|id| removed.contains(id));

    let rooms: BTreeMap<i64, String> = client
        .query("SELECT id, room_id FROM state_groups", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (id, room) in &rooms {
        match expected.get(id) {
            None => v.problems.push(format!(
                "group {id} (room {room:?}) exists but should not (deleted or never created)"
            )),
            Some(e) if &e.room_id != room => v.problems.push(format!(
                "group {id} is in room {room:?}, expected {:?}",
                e.room_id
            )),
            Some(_) => {}
        }
    }
    for id in expected.keys() {
        if !rooms.contains_key(id) {
            v.problems.push(format!("group {id} is missing"));
        }
    }
    if v.problems.iter().any(|p| p.contains("edge")) {
        // Broken edges could make the readers loop; states wait for a sane tree.
        return Ok(v);
    }
    let ids: Vec<i64> = rooms
        .keys()
        .copied()
        .filter(|id| expected.contains_key(id))
        .collect();
    let mut wrong = Vec::new();
    synapse_state::for_each_state_synapse(client, &ids, |g, state| {
        let want = &expected[&g].state;
        if want != &state {
            let before = BTreeMap::from([(g, want.clone())]);
            let after = BTreeMap::from([(g, state)]);
            wrong.push(synapse_state::first_difference(&before, &after).unwrap_or_default());
        }
    })?;
    v.groups_checked = ids.len();
    v.problems.extend(wrong);
    Ok(v)
}
