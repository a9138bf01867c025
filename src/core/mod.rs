//! The algorithm and its data, with no I/O: interned state maps, groups,
//! the level tree, resolving a group's state, the compressor itself and
//! the verification that no group's state changes. `docs/algorithm.md`
//! explains the level tree.

pub mod chains;
pub mod compressor;
pub mod group;
pub mod levels;
pub mod resolve;
pub mod state_map;
pub mod verify;
