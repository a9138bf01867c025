//! Synchronous PostgreSQL access: connecting, checking Synapse's tables,
//! loading a room's groups with everything they need, and writing changes.

pub mod connect;
pub mod load;
pub mod prepared;
pub mod schema;
pub mod write;

pub use connect::{connect, ConnectionSettings};
pub use prepared::Prepared;
