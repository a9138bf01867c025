//! Checks that the database has Synapse's state tables and that we may
//! write to them, so a wrong database or user fails early with a clear
//! message instead of halfway through.

use postgres::Client;

use crate::error::{Error, Result};

/// Synapse's three state tables.
pub const STATE_TABLES: [&str; 3] = ["state_groups", "state_groups_state", "state_group_edges"];

/// Fails with [`Error::MissingTable`] naming the first missing table.
pub fn require_state_tables(client: &mut Client) -> Result<()> {
    for table in STATE_TABLES {
        let row = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .map_err(|e| Error::db("checking the state tables", e))?;
        if !row.get::<_, bool>(0) {
            return Err(Error::MissingTable(table.to_owned()));
        }
    }
    Ok(())
}

/// Fails with [`Error::PermissionDenied`] unless this session can rewrite
/// edges and rows (needed before committing anything).
pub fn require_write_access(client: &mut Client) -> Result<()> {
    let read_only: String = client
        .query_one("SHOW transaction_read_only", &[])
        .map_err(|e| Error::db("checking write access", e))?
        .get(0);
    if read_only == "on" {
        return Err(Error::PermissionDenied(
            "the database session is read-only (a standby, or default_transaction_read_only is on)"
                .to_owned(),
        ));
    }
    for table in ["state_groups_state", "state_group_edges"] {
        for privilege in ["SELECT", "INSERT", "DELETE"] {
            let allowed: bool = client
                .query_one("SELECT has_table_privilege($1, $2)", &[&table, &privilege])
                .map_err(|e| Error::db("checking write access", e))?
                .get(0);
            if !allowed {
                return Err(Error::PermissionDenied(format!(
                    "this database user lacks {privilege} on {table}"
                )));
            }
        }
    }
    Ok(())
}
