//! The imitation of Synapse's writer: a new group on top of an existing
//! one, as a delta plus an edge or as a snapshot (see
//! docs/synapse-tables.md#how-synapse-writes-a-group).

use super::{insert_rows, now_ms, Expected, Imitator};
use crate::StateMap;
use rand::Rng;

impl Imitator {
    /// The random operation: appends to a random group.
    pub(super) fn append_somewhere(&mut self) -> Result<(), postgres::Error> {
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
}
