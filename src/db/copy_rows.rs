//! The binary `COPY` of new `state_groups_state` rows, encoded here.
//!
//! The `postgres` crate's `BinaryCopyInWriter` type-checks and encodes
//! each value through `ToSql`, and sends whatever it holds to the server
//! every 4 KiB, entering the crate's runtime each time (about every 30
//! rows). Rewriting `20m` copies five million rows, and that encoding was
//! a fifth of the writers' CPU. The rows here are all of one shape (a
//! `bigint` and four `text`s), so they are encoded straight into a buffer
//! that is handed over in large pieces.
//!
//! The format is PostgreSQL's binary copy format: a signature, flags and
//! a header extension length, then per row the field count and each field
//! as a length and its bytes, and a trailer of -1.

use std::io::Write;

use postgres::{CopyInWriter, Transaction};

/// The `COPY` statement whose data [`RowCopy`] writes.
const STATEMENT: &str =
    "COPY state_groups_state (state_group, room_id, type, state_key, event_id) \
     FROM STDIN (FORMAT binary)";

/// The signature, the flags (none) and the header extension's length (0).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Bytes gathered before they are handed to the connection.
const SEND_AT: usize = 256 * 1024;

/// A binary `COPY` of state rows in progress.
pub struct RowCopy<'t> {
    sink: CopyInWriter<'t>,
    buf: Vec<u8>,
}

impl<'t> RowCopy<'t> {
    /// Starts the `COPY` in `tx`.
    pub fn start(tx: &'t mut Transaction<'_>) -> Result<Self, postgres::Error> {
        let sink = tx.copy_in(STATEMENT)?;
        let mut buf = Vec::with_capacity(SEND_AT + 4096);
        buf.extend_from_slice(HEADER);
        Ok(Self { sink, buf })
    }

    /// Adds one row.
    pub fn row(
        &mut self,
        group: i64,
        room_id: &str,
        ty: &str,
        state_key: &str,
        event_id: &str,
    ) -> Result<(), postgres::Error> {
        self.buf.extend_from_slice(&5i16.to_be_bytes());
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&group.to_be_bytes());
        for text in [room_id, ty, state_key, event_id] {
            self.text(text);
        }
        if self.buf.len() >= SEND_AT {
            self.send()?;
        }
        Ok(())
    }

    /// Ends the `COPY`, returning the rows the server took.
    pub fn finish(mut self) -> Result<u64, postgres::Error> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.send()?;
        self.sink.finish()
    }

    fn text(&mut self, text: &str) {
        // Every string written was read from a `text` column, and
        // PostgreSQL holds no field over 1 GB.
        let len = i32::try_from(text.len()).expect("a text read from PostgreSQL is under 2 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(text.as_bytes());
    }

    fn send(&mut self) -> Result<(), postgres::Error> {
        self.sink.write_all(&self.buf).map_err(from_io)?;
        self.buf.clear();
        Ok(())
    }
}

/// The connection's error inside the writer's: `CopyInWriter` fails only
/// with those.
fn from_io(e: std::io::Error) -> postgres::Error {
    match e
        .into_inner()
        .map(|inner| inner.downcast::<postgres::Error>())
    {
        Some(Ok(e)) => *e,
        _ => unreachable!("the copy writer fails only with the connection's errors"),
    }
}
