//! SQL text output (`-o`): statements that turn the original structure into
//! the new one, one group at a time, for `psql -v ON_ERROR_STOP=1`.

use std::io::{self, Write};

use crate::group::GroupMap;
use crate::state_map::Symbols;

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

/// Writes the statements that apply `groups` (ascending ids whose entries
/// differ between `original` and `new`) for `room_id`.
///
/// With `transactions`, each group's statements are wrapped in
/// `BEGIN; ... COMMIT;` so a live Synapse never sees a half-rewritten group.
pub fn write_changes(
    out: &mut dyn Write,
    room_id: &str,
    symbols: &Symbols,
    new: &GroupMap,
    groups: &[i64],
    transactions: bool,
) -> io::Result<()> {
    let room = quote_literal(room_id);
    writeln!(
        out,
        "-- Written by synapse_compress_state {}.",
        env!("CARGO_PKG_VERSION")
    )?;
    writeln!(
        out,
        "-- Apply with: psql -v ON_ERROR_STOP=1 <database> < <this file>"
    )?;
    writeln!(out, "SET client_encoding = 'UTF8';")?;
    for &group in groups {
        let entry = &new[&group];
        if transactions {
            writeln!(out, "BEGIN;")?;
        }
        writeln!(
            out,
            "DELETE FROM state_group_edges WHERE state_group = {group};"
        )?;
        if let Some(prev) = entry.prev {
            writeln!(
                out,
                "INSERT INTO state_group_edges (state_group, prev_state_group) VALUES ({group}, {prev});"
            )?;
        }
        writeln!(
            out,
            "DELETE FROM state_groups_state WHERE state_group = {group};"
        )?;
        if !entry.delta.is_empty() {
            writeln!(
                out,
                "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) VALUES"
            )?;
            let last = entry.delta.len() - 1;
            for (i, (key, value)) in entry.delta.iter().enumerate() {
                let (ty, state_key) = symbols.key_str(key);
                let event_id = symbols.value_str(value);
                writeln!(
                    out,
                    "    ({group}, {room}, {}, {}, {}){}",
                    quote_literal(ty),
                    quote_literal(state_key),
                    quote_literal(event_id),
                    if i == last { ";" } else { "," }
                )?;
            }
        }
        if transactions {
            writeln!(out, "COMMIT;")?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::quote_literal;

    #[test]
    fn quotes_awkward_text() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'"), r"E'a\\b'''");
        assert_eq!(quote_literal("$$ x $tag$"), "'$$ x $tag$'");
        assert_eq!(quote_literal("😀\n"), "'😀\n'");
    }
}
