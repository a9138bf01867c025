//! The property tests' rooms (shared by `properties.rs` and `windowed.rs`):
//! the generator settings of each seed and the level sizes tried.

use compressor_integration_tests::generator::GenConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Level sizes, one per seed in turn.
pub const LEVELS: &[&str] = &["3,3", "10,5", "100,50,25", "2", "7,7,7,7", "5,20", "4,4,4"];

/// The level sizes of `seed`.
pub fn levels_of(seed: u64) -> &'static str {
    LEVELS[seed as usize % LEVELS.len()]
}

/// The generator settings of `seed`.
pub fn config(seed: u64) -> GenConfig {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC0FFEE);
    GenConfig {
        seed,
        rooms: rng.random_range(1..=3),
        groups_per_room: rng.random_range(50..=400),
        members: rng.random_range(5..=80),
        join_rate: rng.random_range(2.0..4.0),
        fork_probability: rng.random_range(0.0..0.1),
        fork_continue_share: 0.5,
        resolve_probability: rng.random_range(0.0..0.06),
        resolve_drop_probability: 0.4,
        empty_delta_probability: 0.03,
        reset_probability: rng.random_range(0.0..0.02),
        // Short chains (many snapshots) make compressing worth it, long ones
        // make the compressor refuse (it would add rows): both get tested.
        max_delta_hops: [2, 3, 5, 8, 13, 30, 100][rng.random_range(0..7)],
        nasty_strings: seed % 2 == 0,
        first_group_id: rng.random_range(1..5_000),
    }
}
