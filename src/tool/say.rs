//! Printing the binaries' last words (summaries, JSON, errors) without
//! `println!`, which panics when the other end of a pipe is gone: an admin's
//! `| tee run.log` dies with the same Ctrl-C that asks the tool to stop, and
//! the tool, having finished its safe point, then exited 101 instead of 130
//! with a panic no one saw. What cannot be printed is dropped; the exit
//! status still says how the run ended.

use std::io::Write;

/// `text` and a newline on stdout, if it can be printed.
pub fn out(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// `text` as is on stdout, if it can be printed.
pub fn out_raw(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

/// `text` and a newline on stderr, if it can be printed.
pub fn err(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
