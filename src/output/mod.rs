//! What a run can write besides the database: the guarded SQL file (`-o`),
//! the before/after graph files (`-g`), and the helper that makes a file
//! appear whole or not at all (`-o`, the automatic tool's metrics file).

pub mod atomic;
pub mod graph;
pub mod sql;
