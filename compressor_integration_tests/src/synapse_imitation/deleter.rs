//! The imitation of Synapse's background deletion: groups marked pending
//! deletion (sometimes pinned as being persisted), read as a collection,
//! then deleted, de-deltaing the groups built on them (see
//! docs/synapse-tables.md#background-deletion-and-de-delta).

use super::{insert_rows, now_ms, read_state, Imitator};
use crate::StateMap;
use postgres::{GenericClient, Transaction};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

impl Imitator {
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

    /// The random operation: marks up to four groups for deletion.
    pub(super) fn mark_some(&mut self) -> Result<(), postgres::Error> {
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

    /// The random operation: deletes the collection read last time and
    /// reads the next one.
    pub(super) fn delete_some(&mut self) -> Result<(), postgres::Error> {
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
        sequence_numbers(&mut self.client, groups)
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
        let de_delta = self.config.de_delta;
        let mut tx = self.client.transaction()?;
        if !first.is_empty() {
            tx.batch_execute(first)?;
        }
        let doomed = lock_doomed(&mut tx, sequence, de_delta)?;
        let survivors = read_survivors(&mut tx, &doomed.groups)?;
        // Everything is read and locked; nothing is written yet.
        if !gate() {
            tx.rollback()?;
            return Ok(false);
        }
        de_delta_survivors(&mut tx, &survivors)?;
        delete_groups(&mut tx, &doomed.groups)?;
        tx.commit()?;
        self.record_deletion(sequence, &doomed, &survivors);
        Ok(true)
    }

    /// Once a deletion committed: its statistics, the survivors' states as
    /// read, and the groups we are done with.
    fn record_deletion(
        &mut self,
        sequence: &BTreeMap<i64, i64>,
        doomed: &Doomed,
        survivors: &[(i64, StateMap)],
    ) {
        self.stats.deletions_called_off_bumped += doomed.bumped;
        self.stats.deletions_called_off_persisting += doomed.pinned;
        self.stats.deletions_called_off_children += doomed.has_children;
        self.stats.deleted += doomed.groups.len();
        self.stats.de_deltas += survivors.len();
        for (g, state) in survivors {
            self.check(*g, state, "read while de-deltaing it");
        }
        for g in sequence.keys() {
            if !doomed.persisting.contains(g) {
                // Bumped or deleted: either way we are done with it.
                self.pending.remove(g);
            }
        }
        for g in &doomed.groups {
            self.forget(*g);
        }
    }
}

/// The pending deletion's sequence number of each of `groups` that has one.
fn sequence_numbers(
    client: &mut impl GenericClient,
    groups: &[i64],
) -> Result<BTreeMap<i64, i64>, postgres::Error> {
    Ok(client
        .query(
            "SELECT state_group, sequence_number FROM state_groups_pending_deletion \
             WHERE state_group = ANY($1)",
            &[&groups],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// What a deletion decided once its collection was locked.
struct Doomed {
    /// The groups to delete, ascending.
    groups: Vec<i64>,
    /// Groups of the collection being persisted.
    persisting: BTreeSet<i64>,
    /// Groups called off because their pending deletion was bumped.
    bumped: usize,
    /// Groups called off because they were being persisted.
    pinned: usize,
    /// Groups called off because others are built on them (only without
    /// de-delta).
    has_children: usize,
}

/// Locks the collection's groups `FOR UPDATE` and keeps those still there
/// whose sequence number is the one read earlier and that are not being
/// persisted; without `de_delta`, also only those nothing is built on.
fn lock_doomed(
    tx: &mut Transaction<'_>,
    sequence: &BTreeMap<i64, i64>,
    de_delta: bool,
) -> Result<Doomed, postgres::Error> {
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
    let now = sequence_numbers(tx, &ids)?;
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
    let groups: Vec<i64> = if de_delta {
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
    Ok(Doomed {
        groups,
        persisting,
        bumped,
        pinned,
        has_children,
    })
}

/// The surviving groups built on a doomed one, with their full states read
/// with Synapse's query (as Synapse does before de-deltaing them).
fn read_survivors(
    tx: &mut Transaction<'_>,
    doomed: &[i64],
) -> Result<Vec<(i64, StateMap)>, postgres::Error> {
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
    let mut with_states = Vec::with_capacity(survivors.len());
    for g in survivors {
        with_states.push((g, read_state(tx, g)?));
    }
    tx.batch_execute("SET LOCAL enable_seqscan = on")?;
    Ok(with_states)
}

/// Rewrites each survivor as a snapshot of its full state: rows replaced,
/// edge removed.
fn de_delta_survivors(
    tx: &mut Transaction<'_>,
    survivors: &[(i64, StateMap)],
) -> Result<(), postgres::Error> {
    for (g, state) in survivors {
        let room: String = tx
            .query_one("SELECT room_id FROM state_groups WHERE id = $1", &[g])?
            .get(0);
        tx.execute(
            "DELETE FROM state_groups_state WHERE state_group = $1",
            &[g],
        )?;
        tx.execute("DELETE FROM state_group_edges WHERE state_group = $1", &[g])?;
        insert_rows(tx, *g, &room, state)?;
    }
    Ok(())
}

/// Deletes the groups' rows, edges, `state_groups` rows and pending
/// entries.
fn delete_groups(tx: &mut Transaction<'_>, doomed: &[i64]) -> Result<(), postgres::Error> {
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
    Ok(())
}
