//! SQL text output (`-o`): a file that turns the original structure into the
//! new one, one guarded block per group, for `psql -v ON_ERROR_STOP=1`.
//!
//! Such a file may be applied long after it was made, beside a running
//! Synapse that deletes and de-deltas groups in the background. So each
//! group's change is one PL/pgSQL `DO` block that, when applied, takes the
//! row locks `-c` takes, checks that the group still has exactly the edge
//! and rows it was computed from (row count and an md5 digest of the rows,
//! computed by the server) and that its new base exists, bumps the base's
//! pending deletion as Synapse's own writers do, and only then rewrites the
//! group. A group that fails a check is skipped whole with a `NOTICE`;
//! applying the same file twice skips every group the second time.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use md5::{Digest, Md5};

use crate::core::group::{GroupMap, Loaded, LoadedGroups, StateGroupEntry};
use crate::core::state_map::{StateMap, Symbols};

/// The `-o` value that means standard output.
pub const STDOUT: &str = "-";

/// True when `path` asks for the SQL on standard output (`-o -`).
pub fn is_stdout(path: &Path) -> bool {
    path == Path::new(STDOUT)
}

/// Quotes `text` as a PostgreSQL string literal that reads back exactly.
///
/// Text with a backslash becomes an `E'...'` literal with backslashes
/// doubled, so the result does not depend on `standard_conforming_strings`;
/// quotes are doubled in both forms. Dollar signs, newlines and any unicode
/// need no escaping inside a quoted literal.
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The server-side twin of [`rows_digest`]: md5 over a group's distinct
/// rows in byte order, each text column prefixed with its length in bytes,
/// so no two different sets of rows encode alike. (Over distinct rows: a
/// row that repeats another exactly is not part of the delta, see
/// `StateMap::from_rows`; the row count still counts it.)
const SQL_ROWS_DIGEST: &str = "md5(coalesce(string_agg(\
octet_length(type)::text || ':' || type || \
octet_length(state_key)::text || ':' || state_key || \
octet_length(event_id)::text || ':' || event_id, '' \
ORDER BY type COLLATE \"C\", state_key COLLATE \"C\", event_id COLLATE \"C\"), ''))";

/// The md5 (hex) the server computes with [`SQL_ROWS_DIGEST`] over the rows
/// of a group whose delta is `delta`.
pub fn rows_digest(symbols: &Symbols, delta: &StateMap) -> String {
    let rows = rows_in_byte_order(symbols, delta);
    let mut hasher = Md5::new();
    for row in &rows {
        for column in row {
            hasher.update(column.len().to_string().as_bytes());
            hasher.update(b":");
            hasher.update(column.as_bytes());
        }
    }
    hasher.finalize().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// The rows of `delta` as (type, state_key, event_id), in byte order (as
/// `COLLATE "C"` orders them, and as `str`'s `Ord` does).
fn rows_in_byte_order<'s>(symbols: &'s Symbols, delta: &StateMap) -> Vec<[&'s str; 3]> {
    let mut rows: Vec<[&str; 3]> = delta
        .iter()
        .map(|(key, value)| {
            let (ty, state_key) = symbols.key_str(key);
            [ty, state_key, symbols.value_str(value)]
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// Writes the file's opening comment and settings.
fn write_header(out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "-- Written by synapse_compress_state {}.",
        env!("CARGO_PKG_VERSION")
    )?;
    writeln!(
        out,
        "-- Apply with: psql -v ON_ERROR_STOP=1 <database> < <this file>"
    )?;
    writeln!(
        out,
        "-- Each group's change checks, when applied, that the group is still as it was read;"
    )?;
    writeln!(
        out,
        "-- a group that changed meanwhile is skipped whole with a NOTICE."
    )?;
    writeln!(out, "SET client_encoding = 'UTF8';")
}

/// Writes the file of a run that changes nothing: only a comment saying
/// why, so that applying it does nothing and a reader knows it is complete.
pub fn write_nothing(out: &mut dyn Write, room_id: &str, why: &str) -> io::Result<()> {
    // `{:?}` escapes line breaks, which would end the comment.
    writeln!(
        out,
        "-- Written by synapse_compress_state {}: nothing to apply for room {room_id:?}: {why}.",
        env!("CARGO_PKG_VERSION")
    )?;
    out.flush()
}

/// Writes the guarded blocks that apply `groups` (ascending ids whose
/// entries differ between `original`, as loaded, and `new`) for `room_id`.
///
/// With `transactions`, each block is wrapped in `BEGIN; ... COMMIT;` (a
/// `DO` block is atomic anyway; this keeps the reference tool's layout).
pub fn write_changes(
    out: &mut dyn Write,
    room_id: &str,
    symbols: &Symbols,
    original: &dyn LoadedGroups,
    new: &GroupMap,
    groups: &[i64],
    transactions: bool,
) -> io::Result<()> {
    let room = quote_literal(room_id);
    write_header(out)?;
    for &group in groups {
        let new_entry = &new[&group];
        let base_without_row = new_entry
            .prev
            .and_then(|b| original.loaded(b))
            .is_some_and(|b| b.missing_group_row);
        let old = original.loaded(group).expect("a changed group was loaded");
        let digest = original
            .rows_digest(group, symbols)
            .expect("a changed group was loaded");
        let body = guarded_block(
            &room,
            symbols,
            group,
            (old, &digest),
            new_entry,
            base_without_row,
        );
        let tag = dollar_tag(&body);
        if transactions {
            writeln!(out, "BEGIN;")?;
        }
        writeln!(out, "DO {tag}{body}{tag};")?;
        if transactions {
            writeln!(out, "COMMIT;")?;
        }
    }
    out.flush()
}

/// A dollar-quote tag that does not occur in `body` (state keys can hold
/// anything, `$$` and `$sc$` included). The body starts and ends with a line
/// break, so the tag cannot run into it either.
fn dollar_tag(body: &str) -> String {
    let mut tag = "$sc$".to_owned();
    let mut n = 0u64;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$sc{n}$");
    }
    tag
}

/// The PL/pgSQL body that rewrites `group` from `old` to `new`, or skips it
/// with a NOTICE when the database no longer holds `old`: locks, presence,
/// edge and rows checks, the pending-deletion bump, then the replacement.
///
/// Groups that had no `state_groups` row when loaded (rewritten as the
/// reference tool does) cannot be locked or found there: such a group is
/// present while its edge and rows are (checked anyway), and such a base
/// (`base_without_row`) while it still has an edge or a row.
fn guarded_block(
    room: &str,
    symbols: &Symbols,
    group: i64,
    (old, old_digest): (Loaded, &str),
    new: &StateGroupEntry,
    base_without_row: bool,
) -> String {
    let mut block = Block {
        b: String::with_capacity(1024 + new.delta.len() * 120),
        group,
    };
    block
        .b
        .push_str("\nDECLARE\n    base_found boolean := true;\n    edges bigint[];\n");
    block
        .b
        .push_str("    row_total bigint;\n    digest text;\nBEGIN\n");
    block.lock_and_find(old, new, base_without_row);
    block.check_edge(old.prev);
    block.check_rows(old.rows, old_digest);
    if let Some(base) = new.prev {
        block.bump_pending_deletion(base);
    }
    block.replace(room, symbols, new);
    block.b.push_str("END\n");
    block.b
}

/// A group's PL/pgSQL block being written.
struct Block {
    b: String,
    group: i64,
}

impl Block {
    /// `IF condition THEN` notice that the group is skipped, and why (with
    /// `args` for the `%` placeholders in `why`), and stop.
    fn skip_if(&mut self, condition: &str, why: &str, args: &str) {
        let _ = writeln!(
            self.b,
            "    IF {condition} THEN\n        \
             RAISE NOTICE 'state group {} skipped: {why}'{args};\n        RETURN;\n    END IF;",
            self.group
        );
    }

    /// Locks in ascending id order (bases and predecessors have lower ids):
    /// the old predecessor and the new base FOR KEY SHARE, as Synapse's
    /// writers lock what they build on (Synapse's deletion locks FOR
    /// UPDATE, so it cannot de-delta this group or delete its base
    /// meanwhile), then the group itself FOR NO KEY UPDATE (one rewriter at
    /// a time); skips the group when it or its new base is gone.
    fn lock_and_find(&mut self, old: Loaded, new: &StateGroupEntry, base_without_row: bool) {
        let mut shared: Vec<i64> = old.prev.into_iter().chain(new.prev).collect();
        shared.sort_unstable();
        shared.dedup();
        for id in shared {
            let _ = writeln!(
                self.b,
                "    PERFORM 1 FROM state_groups WHERE id = {id} FOR KEY SHARE;"
            );
            if Some(id) == new.prev {
                if base_without_row {
                    // A base with no row, edge or rows is nothing at all,
                    // however it was loaded: never build on it.
                    let _ = writeln!(
                        self.b,
                        "    base_found := EXISTS (SELECT 1 FROM state_group_edges WHERE state_group = {id}) \
                         OR EXISTS (SELECT 1 FROM state_groups_state WHERE state_group = {id});"
                    );
                } else {
                    self.b.push_str("    base_found := FOUND;\n");
                }
            }
        }
        if !old.missing_group_row {
            let _ = writeln!(
                self.b,
                "    PERFORM 1 FROM state_groups WHERE id = {} FOR NO KEY UPDATE;",
                self.group
            );
            self.skip_if("NOT FOUND", "group gone", "");
        }
        if let Some(base) = new.prev {
            self.skip_if("NOT base_found", &format!("new base {base} gone"), "");
        }
    }

    /// Skips the group unless it still has exactly the edge it was loaded
    /// with (or none).
    fn check_edge(&mut self, loaded: Option<i64>) {
        let _ = writeln!(
            self.b,
            "    SELECT array_agg(prev_state_group ORDER BY prev_state_group) INTO edges\n        \
             FROM state_group_edges WHERE state_group = {};",
            self.group
        );
        let expected = match loaded {
            Some(prev) => format!("'{{{prev}}}'::bigint[]"),
            None => "NULL".to_owned(),
        };
        let text = loaded.map_or("none".to_owned(), |p| p.to_string());
        self.skip_if(
            &format!("edges IS DISTINCT FROM {expected}"),
            &format!("edge changed (expected prev {text}, found %)"),
            ", coalesce(edges::text, 'none')",
        );
    }

    /// Skips the group unless its rows still have the loaded count and
    /// digest.
    fn check_rows(&mut self, rows: usize, digest: &str) {
        let _ = writeln!(
            self.b,
            "    SELECT coalesce(sum(n), 0), {SQL_ROWS_DIGEST} INTO row_total, digest\n        \
             FROM (SELECT type, state_key, event_id, count(*) AS n FROM state_groups_state\n        \
             WHERE state_group = {} GROUP BY type, state_key, event_id) AS r;",
            self.group
        );
        self.skip_if(
            &format!("row_total <> {rows} OR digest <> '{digest}'"),
            &format!("rows changed (expected {rows} rows, md5 {digest}; found % rows, md5 %)"),
            ", row_total, digest",
        );
    }

    /// Synapse's pending-deletion table exists from 1.124 on; whether it
    /// does is decided when the file is applied, and a static reference to
    /// a missing table would fail, hence EXECUTE.
    fn bump_pending_deletion(&mut self, base: i64) {
        let _ = writeln!(
            self.b,
            "    IF to_regclass('state_groups_pending_deletion') IS NOT NULL THEN\n        \
             EXECUTE 'UPDATE state_groups_pending_deletion SET sequence_number = DEFAULT, \
             insertion_ts = $1 WHERE state_group = $2'\n            \
             USING (extract(epoch FROM clock_timestamp()) * 1000)::bigint, {base}::bigint;\n    \
             END IF;"
        );
    }

    /// Replaces the group's edge and rows with `new`.
    fn replace(&mut self, room: &str, symbols: &Symbols, new: &StateGroupEntry) {
        let group = self.group;
        let b = &mut self.b;
        let _ = writeln!(
            b,
            "    DELETE FROM state_group_edges WHERE state_group = {group};"
        );
        if let Some(base) = new.prev {
            let _ = writeln!(
                b,
                "    INSERT INTO state_group_edges (state_group, prev_state_group) VALUES ({group}, {base});"
            );
        }
        let _ = writeln!(
            b,
            "    DELETE FROM state_groups_state WHERE state_group = {group};"
        );
        if new.delta.is_empty() {
            return;
        }
        b.push_str(
            "    INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) VALUES\n",
        );
        // In (type, state_key) byte order, not in key-id order: ids follow
        // the order rows were first read, which depends on how the room was
        // read (whole or in windows, and the server's plan).
        let rows = rows_in_byte_order(symbols, &new.delta);
        let last = rows.len() - 1;
        for (i, [ty, state_key, event_id]) in rows.into_iter().enumerate() {
            let _ = writeln!(
                b,
                "        ({group}, {room}, {}, {}, {}){}",
                quote_literal(ty),
                quote_literal(state_key),
                quote_literal(event_id),
                if i == last { ";" } else { "," }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_awkward_text() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'"), r"E'a\\b'''");
        assert_eq!(quote_literal("$$ x $tag$"), "'$$ x $tag$'");
        assert_eq!(quote_literal("😀\n"), "'😀\n'");
    }

    #[test]
    fn the_dollar_tag_never_occurs_in_the_body() {
        assert_eq!(dollar_tag("\nplain\n"), "$sc$");
        assert_eq!(dollar_tag("\n'$sc$'\n"), "$sc1$");
        assert_eq!(dollar_tag("\n'$sc$ $sc1$ $sc2$'\n"), "$sc3$");
    }

    #[test]
    fn digest_is_md5_of_length_prefixed_rows_in_byte_order() {
        let mut symbols = Symbols::new();
        assert_eq!(
            rows_digest(&symbols, &StateMap::new()),
            "d41d8cd98f00b204e9800998ecf8427e" // md5 of nothing
        );
        let delta = StateMap::from_unsorted(vec![
            (symbols.key("m.room.name", ""), symbols.value("$b")),
            (symbols.key("m.room.member", "@é:x"), symbols.value("$a")),
        ]);
        // "m.room.member" < "m.room.name"; "é" is two bytes.
        let text = "13:m.room.member5:@é:x2:$a11:m.room.name0:2:$b";
        let expected = Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert_eq!(rows_digest(&symbols, &delta), expected);
    }
}
