//! The imitation of Synapse's room purge (see
//! docs/synapse-tables.md#purges).

use super::Imitator;

impl Imitator {
    /// The random operation: purges a random room.
    pub(super) fn purge_some(&mut self) -> Result<(), postgres::Error> {
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
}
