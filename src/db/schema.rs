//! Checks that the database has Synapse's state tables and that this
//! session holds every privilege the run will use, so a wrong database or
//! user fails before any work, with one message naming everything missing,
//! instead of halfway through a run.

use postgres::Client;

use crate::error::{Error, Result};

/// Synapse's three state tables.
pub const STATE_TABLES: [&str; 3] = ["state_groups", "state_groups_state", "state_group_edges"];

/// Synapse's queue of groups to delete (1.124+); may be absent.
pub const PENDING_DELETION_TABLE: &str = "state_groups_pending_deletion";

/// Fails with [`Error::MissingTable`] naming the first missing table.
pub fn require_state_tables(client: &mut Client) -> Result<()> {
    let exists = tables_exist(client, &STATE_TABLES)?;
    match STATE_TABLES.iter().zip(exists).find(|(_, exists)| !exists) {
        Some((table, _)) => Err(Error::MissingTable((*table).to_owned())),
        None => Ok(()),
    }
}

/// Whether each of `tables` exists (as the search path finds it), in one
/// round trip.
pub fn tables_exist(client: &mut Client, tables: &[&str]) -> Result<Vec<bool>> {
    Ok(client
        .query_one(
            "SELECT array(SELECT to_regclass(t) IS NOT NULL \
                          FROM unnest($1::text[]) WITH ORDINALITY AS n(t, i) ORDER BY i)",
            &[&tables],
        )
        .map_err(|e| Error::db("checking which tables exist", e))?
        .get(0))
}

/// One table privilege a run uses, and what for (the message says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub privilege: &'static str,
    pub table: &'static str,
    pub why: &'static str,
}

impl Need {
    pub const fn new(privilege: &'static str, table: &'static str, why: &'static str) -> Need {
        Need {
            privilege,
            table,
            why,
        }
    }
}

/// What a run does to Synapse's state tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A dry run or `-o FILE`: reads only.
    Read,
    /// `-c` and the automatic tool: rewrites groups.
    Write,
}

/// Reading a room's groups, edges and rows.
const READ_NEEDS: [Need; 3] = [
    Need::new("SELECT", "state_groups", "needed to list the room's groups"),
    Need::new(
        "SELECT",
        "state_groups_state",
        "needed to read the groups' rows",
    ),
    Need::new(
        "SELECT",
        "state_group_edges",
        "needed to read the groups' edges",
    ),
];

/// Rewriting groups, as `db::write` does. Needs on the pending-deletion
/// table apply only where Synapse has it.
const WRITE_NEEDS: [Need; 7] = [
    Need::new(
        "UPDATE",
        "state_groups",
        "needed to lock groups while rewriting them",
    ),
    Need::new("DELETE", "state_groups_state", "needed to remove old rows"),
    Need::new("INSERT", "state_groups_state", "needed to write new rows"),
    Need::new("DELETE", "state_group_edges", "needed to remove old edges"),
    Need::new("INSERT", "state_group_edges", "needed to write new edges"),
    Need::new(
        "UPDATE",
        PENDING_DELETION_TABLE,
        "needed to keep new bases from being deleted",
    ),
    Need::new(
        "SELECT",
        PENDING_DELETION_TABLE,
        "needed to find new bases queued for deletion",
    ),
];

/// The privileges on Synapse's tables that a run with `access` uses.
pub fn state_table_needs(access: Access) -> Vec<Need> {
    let mut needs = READ_NEEDS.to_vec();
    if access == Access::Write {
        needs.extend_from_slice(&WRITE_NEEDS);
    }
    needs
}

/// Fails with [`Error::PermissionDenied`] unless this session holds every
/// privilege of [`state_table_needs`] for `access` and every one of
/// `extra`. A need on a table that does not exist is skipped; if that table
/// is one of `created_if_missing`, CREATE on the schema it will go in is
/// needed instead. A session that must write is also refused when it is
/// read-only. One round trip.
pub fn require_privileges(
    client: &mut Client,
    access: Access,
    extra: &[Need],
    created_if_missing: &[&str],
) -> Result<()> {
    let mut needs = state_table_needs(access);
    needs.extend_from_slice(extra);
    let tables: Vec<&str> = needs.iter().map(|n| n.table).collect();
    let privileges: Vec<&str> = needs.iter().map(|n| n.privilege).collect();
    let row = client
        .query_one(
            "SELECT current_setting('transaction_read_only') = 'on', \
                    current_schema()::text, \
                    COALESCE(has_schema_privilege(current_schema(), 'CREATE'), false), \
                    array(SELECT to_regclass(t) IS NOT NULL \
                          FROM unnest($3::text[]) WITH ORDINALITY AS n(t, i) ORDER BY i), \
                    array(SELECT COALESCE(has_table_privilege(to_regclass(t), p), false) \
                          FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(t, p, i) \
                          ORDER BY i), \
                    array(SELECT to_regclass(t) IS NOT NULL \
                          FROM unnest($1::text[]) WITH ORDINALITY AS n(t, i) ORDER BY i)",
            &[&tables, &privileges, &created_if_missing],
        )
        .map_err(|e| Error::db("checking privileges", e))?;
    let read_only: bool = row.get(0);
    if access == Access::Write && read_only {
        return Err(Error::PermissionDenied(
            "the database session is read-only (a standby, or default_transaction_read_only is on)"
                .to_owned(),
        ));
    }
    let schema: Option<String> = row.get(1);
    let may_create: bool = row.get(2);
    let creatable_exists: Vec<bool> = row.get(3);
    let granted: Vec<bool> = row.get(4);
    let exists: Vec<bool> = row.get(5);

    let mut missing: Vec<String> = needs
        .iter()
        .zip(granted.iter().zip(&exists))
        .filter(|(_, (&granted, &exists))| exists && !granted)
        .map(|(need, _)| format!("{} on {} ({})", need.privilege, need.table, need.why))
        .collect();
    let to_create: Vec<&str> = created_if_missing
        .iter()
        .zip(&creatable_exists)
        .filter(|(_, &exists)| !exists)
        .map(|(table, _)| *table)
        .collect();
    if !to_create.is_empty() {
        let what = format!("needed to create {}", to_create.join(", "));
        match schema {
            Some(schema) if !may_create => {
                missing.push(format!("CREATE on schema {schema} ({what})"));
            }
            Some(_) => {}
            None => missing.push(format!(
                "a schema to create tables in (none of the search_path exists; {what})"
            )),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "missing privileges: {}; docs/privileges.md lists the GRANTs",
        missing.join(", ")
    )))
}
