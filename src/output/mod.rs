//! What a run can write besides the database: the guarded SQL file (`-o`)
//! and the before/after graph files (`-g`).

pub mod graph;
pub mod sql;
