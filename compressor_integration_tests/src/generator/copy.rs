//! Binary `COPY` into the four tables the generator fills, shared by the
//! tests' writer ([`super::Generated::write`]) and the benchmark's
//! ([`super::write_mix`]).

use super::GenGroup;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::GenericClient;

/// One of the tables the generator fills.
#[derive(Clone, Copy, Debug)]
pub(super) enum Table {
    Groups,
    Edges,
    Rows,
    EventMap,
}

impl Table {
    /// The table and the columns its `COPY` fills, in order.
    fn columns(self) -> &'static str {
        match self {
            Table::Groups => "state_groups (id, room_id, event_id)",
            Table::Edges => "state_group_edges (state_group, prev_state_group)",
            Table::Rows => "state_groups_state (state_group, room_id, type, state_key, event_id)",
            Table::EventMap => "event_to_state_groups (event_id, state_group)",
        }
    }

    fn types(self) -> Vec<Type> {
        match self {
            Table::Groups => vec![Type::INT8, Type::TEXT, Type::TEXT],
            Table::Edges => vec![Type::INT8, Type::INT8],
            Table::Rows => vec![Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT],
            Table::EventMap => vec![Type::TEXT, Type::INT8],
        }
    }
}

/// Starts a binary `COPY` into `table`. With `freeze`, the rows are stored
/// frozen, which PostgreSQL accepts only inside the transaction that
/// created or truncated the table.
pub(super) fn copy_in(
    client: &mut impl GenericClient,
    table: Table,
    freeze: bool,
) -> Result<BinaryCopyInWriter<'_>, postgres::Error> {
    let options = if freeze {
        "(FORMAT binary, FREEZE)"
    } else {
        "(FORMAT binary)"
    };
    let sink = client.copy_in(&format!("COPY {} FROM STDIN {options}", table.columns()))?;
    Ok(BinaryCopyInWriter::new(sink, &table.types()))
}

/// Writes `group`'s `state_groups_state` rows into a [`Table::Rows`] copy.
pub(super) fn write_rows(
    w: &mut BinaryCopyInWriter<'_>,
    group: &GenGroup,
) -> Result<(), postgres::Error> {
    for ((event_type, state_key), event_id) in &group.delta {
        w.write(&[&group.id, &group.room_id, event_type, state_key, event_id])?;
    }
    Ok(())
}

/// What a group stores besides its state rows: its `state_groups` row, its
/// edge and its event.
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupHead<'a> {
    pub id: i64,
    pub room_id: &'a str,
    pub event_id: &'a str,
    pub prev: Option<i64>,
}

/// Copies the `state_groups` rows and edges of `heads`, and with
/// `event_map` their `event_to_state_groups` rows.
pub(super) fn copy_heads<'a>(
    client: &mut impl GenericClient,
    heads: impl Iterator<Item = GroupHead<'a>> + Clone,
    event_map: bool,
    freeze: bool,
) -> Result<(), postgres::Error> {
    let mut w = copy_in(client, Table::Groups, freeze)?;
    for h in heads.clone() {
        w.write(&[&h.id, &h.room_id, &h.event_id])?;
    }
    w.finish()?;
    let mut w = copy_in(client, Table::Edges, freeze)?;
    for h in heads.clone() {
        if let Some(prev) = &h.prev {
            w.write(&[&h.id, prev])?;
        }
    }
    w.finish()?;
    if event_map {
        let mut w = copy_in(client, Table::EventMap, freeze)?;
        for h in heads {
            w.write(&[&h.event_id, &h.id])?;
        }
        w.finish()?;
    }
    Ok(())
}

/// Moves `state_group_id_seq` past the highest group, as Synapse's next
/// group must not collide with a generated one.
pub(super) fn set_id_sequence(client: &mut impl GenericClient) -> Result<(), postgres::Error> {
    client.batch_execute(
        "SELECT setval('state_group_id_seq', GREATEST((SELECT max(id) FROM state_groups), 1))",
    )
}
