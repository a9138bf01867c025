//! Handing a chunk the pass put together to the chunk code
//! (`crate::chunk`), in place of a load: what it needs beyond its own groups
//! is read then, by index, after checking that the groups leading to it are
//! unchanged (docs/reading.md, "Snapshots").

use std::collections::HashMap;

use log::debug;
use postgres::types::Type;
use postgres::Client;
use synapse_compress_state::db::load::{self, LaterGroups};
use synapse_compress_state::{Error, Result};

use super::assemble::Assembled;
use crate::chunk::GivenChunk;
use crate::prefetch::{ChunkRequest, LoadedChunk};

/// A chunk the pass put together, given to the chunk code in place of a
/// load.
pub(crate) struct Given {
    pub(crate) assembled: Box<Assembled>,
    /// Where the plan has it start, and whether its room goes on.
    pub(crate) after: Option<i64>,
    pub(crate) more: bool,
}

impl Given {
    /// The chunk as a load of `request` would give it, reading only what
    /// it needs beyond its own groups. `None` when the request is not the
    /// one planned (another compressor moved the room), or when one of the
    /// groups that lead outside the chunk changed since it was read: the
    /// chunk is then loaded as usual.
    ///
    /// `later` are the room's groups decided and not written yet (the
    /// pass's sweep): the database still shows them as they were, and the
    /// chunk must see them as they will be, as it would had they been
    /// written first.
    pub(crate) fn into_loaded(
        self,
        client: &mut Client,
        request: &ChunkRequest,
        later: Option<&dyn LaterGroups>,
    ) -> Result<Option<LoadedChunk>> {
        if request.after != self.after {
            debug!(
                "Room {}: planned from {:?}, saved at {:?}; loading the chunk again",
                request.room_id, self.after, request.after
            );
            return Ok(None);
        }
        let Assembled {
            ids,
            mut symbols,
            groups,
            repeated_rows_read,
            damaged,
            ..
        } = *self.assembled;
        let more = self.more;
        if ids.is_empty() {
            return Ok(Some(LoadedChunk {
                ids,
                more,
                symbols,
                groups: None,
            }));
        }
        if let Some(why) = damaged {
            return Ok(Some(LoadedChunk {
                ids,
                more,
                symbols,
                groups: Some(Err(Error::Damaged(why))),
            }));
        }
        let known = request
            .carried
            .as_ref()
            .map(|carry| carry.lay_out_into(&mut symbols))
            .unwrap_or_default();
        // The groups whose predecessor is outside the chunk: their
        // predecessors are read now, in a later snapshot than the groups.
        // If Synapse has changed one of them since (it rewrites a group
        // when it deletes the group's predecessor), the chunk is read
        // again as a whole, in one snapshot.
        let leads: Vec<(i64, i64)> = groups
            .iter()
            .filter_map(|(&id, g)| g.prev.filter(|p| !groups.contains_key(p)).map(|p| (id, p)))
            .collect();
        let mut snapshot = load::snapshot(client)?;
        if !edges_unchanged(&mut snapshot, &leads)? {
            debug!(
                "Room {}: a group of the chunk changed since the pass read it; loading the chunk again",
                request.room_id
            );
            return Ok(None);
        }
        let loaded = load::complete_groups(
            &mut snapshot,
            &mut symbols,
            &request.room_id,
            load::ReadGroups {
                groups,
                repeated_rows_read,
            },
            &request.heads,
            known,
            later,
        );
        if loaded.is_ok() {
            snapshot
                .commit()
                .map_err(|e| Error::db("finishing the read", e))?;
        }
        Ok(Some(LoadedChunk {
            ids,
            more,
            symbols,
            groups: Some(loaded),
        }))
    }
}

/// Whether each `(group, prev)` is still the group's edge.
fn edges_unchanged(
    client: &mut impl postgres::GenericClient,
    leads: &[(i64, i64)],
) -> Result<bool> {
    if leads.is_empty() {
        return Ok(true);
    }
    let ids: Vec<i64> = leads.iter().map(|(id, _)| *id).collect();
    let rows = client
        .query_typed(
            "SELECT state_group, prev_state_group FROM state_group_edges \
             WHERE state_group = ANY($1)",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .map_err(|e| Error::db("checking the chunk's edges", e))?;
    let leads: HashMap<i64, i64> = leads.iter().copied().collect();
    let mut found = 0;
    for row in rows {
        let group: i64 = row
            .try_get(0)
            .map_err(|e| Error::db("checking the chunk's edges", e))?;
        let prev: Option<i64> = row
            .try_get(1)
            .map_err(|e| Error::db("checking the chunk's edges", e))?;
        if prev.is_none() || leads.get(&group) != prev.as_ref() {
            return Ok(false);
        }
        found += 1;
    }
    Ok(found == leads.len())
}

impl GivenChunk for Given {
    fn into_loaded(
        self: Box<Self>,
        client: &mut Client,
        request: &ChunkRequest,
        later: Option<&dyn LaterGroups>,
    ) -> Result<Option<LoadedChunk>> {
        Given::into_loaded(*self, client, request, later)
    }
}
