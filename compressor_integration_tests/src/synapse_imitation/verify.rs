//! The proof at the end of a run beside the imitator: the database holds
//! exactly the expected groups, each resolving to its expected state.

use super::Expectations;
use crate::{structure, synapse_state};
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};

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
