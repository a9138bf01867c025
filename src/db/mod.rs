//! Synchronous PostgreSQL access: connecting, checking Synapse's tables,
//! loading a room's groups with everything they need, one compressor per
//! room, waiting for the state tables, writing changes, and the table's
//! figures (rows, size, VACUUM).

pub mod connect;
pub mod copy_rows;
pub mod load;
pub mod lock_wait;
pub mod pgpass;
pub mod prepared;
pub mod room_lock;
pub mod schema;
pub mod stats;
pub mod write;

pub use connect::{connect, connect_as, ConnectionSettings};
pub use prepared::Prepared;
pub use room_lock::RoomLock;
