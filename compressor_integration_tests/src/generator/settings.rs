//! What the generator is asked for: [`GenConfig`] (rooms of one kind, for
//! the tests) and [`MixConfig`] (many rooms of mixed sizes, for the
//! benchmark), with their named presets.

/// Synapse's `MAX_STATE_DELTA_HOPS`: a group is stored as a delta only when
/// its prev's chain (the prev and its ancestors) has fewer groups than this.
pub const MAX_STATE_DELTA_HOPS: usize = 100;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    /// Seed of the random generator: same config, same data.
    pub seed: u64,
    /// Number of rooms (interleaved in id order).
    pub rooms: usize,
    /// State groups per room.
    pub groups_per_room: usize,
    /// Members each room grows to.
    pub members: usize,
    /// How early members join: 1.0 spreads the joins over the whole life of
    /// the room, 3.0 has them all in by about its first third.
    pub join_rate: f64,
    /// Chance that a group builds on an older group of the room.
    pub fork_probability: f64,
    /// Share of forks the room's main line continues from (the rest are
    /// side branches, merged later by state resolution). Continuing from a
    /// fork forgets what was added in between, like a state reset.
    pub fork_continue_share: f64,
    /// Chance that a group merges two branches (state resolution).
    pub resolve_probability: f64,
    /// Chance that a resolution drops 1-3 keys only one branch had (so that
    /// it may have no valid prev and is stored as a snapshot).
    pub resolve_drop_probability: f64,
    /// Chance of a group with the same state as its prev (empty delta).
    pub empty_delta_probability: f64,
    /// Chance of a snapshot with no prev that lacks some keys (state reset).
    pub reset_probability: f64,
    /// Synapse's snapshot rule (100 in Synapse; smaller to test more shapes).
    pub max_delta_hops: usize,
    /// Put hostile strings into room ids, types, state keys and event ids.
    pub nasty_strings: bool,
    /// Id of the first group (later ones follow without gaps).
    pub first_group_id: i64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            rooms: 1,
            groups_per_room: 200,
            members: 40,
            join_rate: 1.3,
            fork_probability: 0.06,
            fork_continue_share: 0.5,
            resolve_probability: 0.04,
            resolve_drop_probability: 0.4,
            empty_delta_probability: 0.02,
            reset_probability: 0.01,
            max_delta_hops: MAX_STATE_DELTA_HOPS,
            nasty_strings: false,
            first_group_id: 1,
        }
    }
}

impl GenConfig {
    /// `rooms` rooms of `groups` groups that compress well (30 members,
    /// Synapse's snapshots every 10 hops, so many snapshots to fold), with
    /// hostile strings for even seeds: the usual data of the tests.
    pub fn compressible(seed: u64, rooms: usize, groups: usize) -> GenConfig {
        GenConfig {
            seed,
            rooms,
            groups_per_room: groups,
            members: 30,
            max_delta_hops: 10,
            nasty_strings: seed % 2 == 0,
            ..GenConfig::default()
        }
    }

    /// The default with forks, state resolutions and resets as rare as in
    /// a quiet real room (mostly merged back, so it compresses well): the
    /// base of the `demo` and `bench` presets.
    pub fn rare_forks() -> GenConfig {
        GenConfig {
            fork_probability: 0.02,
            fork_continue_share: 0.02,
            resolve_probability: 0.03,
            resolve_drop_probability: 0.05,
            reset_probability: 0.001,
            ..GenConfig::default()
        }
    }

    /// Names accepted by [`GenConfig::preset`].
    pub const PRESETS: &'static [&'static str] =
        &["tiny", "small", "nasty", "multi", "medium", "demo", "bench"];

    /// A named configuration:
    /// - `tiny`: 1 room, 30 groups, 8 members;
    /// - `small`: 3 rooms × 200 groups, 40 members;
    /// - `nasty`: `small` with hostile strings;
    /// - `multi`: 12 rooms × 150 groups, 30 members, more forks;
    /// - `medium`: 4 rooms × 2,000 groups, 400 members;
    /// - `demo`: 1 room, 3,000 groups, 2,000 members joining in its first
    ///   half, a few forks (mostly merged back by state resolution): about
    ///   50,000 rows, as Synapse stores them (a snapshot every 100 groups);
    /// - `bench`: 4 rooms × 10,000 groups, 3,000 members, forks as in
    ///   `demo` (over a million rows).
    pub fn preset(name: &str) -> Option<GenConfig> {
        let base = GenConfig::default();
        Some(match name {
            "tiny" => GenConfig {
                groups_per_room: 30,
                members: 8,
                ..base
            },
            "small" => GenConfig { rooms: 3, ..base },
            "nasty" => GenConfig {
                rooms: 3,
                nasty_strings: true,
                ..base
            },
            "multi" => GenConfig {
                rooms: 12,
                groups_per_room: 150,
                members: 30,
                fork_probability: 0.1,
                resolve_probability: 0.06,
                ..base
            },
            "medium" => GenConfig {
                rooms: 4,
                groups_per_room: 2_000,
                members: 400,
                ..base
            },
            "demo" => GenConfig {
                groups_per_room: 3_000,
                members: 2_000,
                join_rate: 4.0,
                ..GenConfig::rare_forks()
            },
            "bench" => GenConfig {
                rooms: 4,
                groups_per_room: 10_000,
                members: 3_000,
                join_rate: 3.0,
                ..GenConfig::rare_forks()
            },
            _ => return None,
        })
    }
}

/// One kind of room in a [`MixConfig`]: `rooms` rooms of `groups_per_room`
/// groups each, growing to `members` members.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomClass {
    pub rooms: usize,
    pub groups_per_room: usize,
    pub members: usize,
    /// Users already in the room when this server joined it over federation
    /// (0 for a room created here). The room's first group then holds the
    /// whole state at the join as one snapshot (the creation events plus
    /// these users, about one in seven of them having left since), the way
    /// Synapse stores the state of a `send_join` response. This is how a
    /// busy room gets thousands of keys in every one of Synapse's 100-hop
    /// snapshots from its first group on.
    pub initial_members: usize,
}

/// A database of many rooms of mixed sizes, for the benchmark.
///
/// Unlike [`generate`](super::generate),
/// [`generate_mix`](super::generate_mix) streams the groups (memory is
/// bounded by the rooms' recent states, not by the data set), gives every
/// room its own random generator, and interleaves the rooms with a shuffled
/// schedule, so tens of millions of rows take minutes.
#[derive(Clone, Debug, PartialEq)]
pub struct MixConfig {
    /// Seed, probabilities, snapshot rule and first group id for every room
    /// (its `rooms`, `groups_per_room` and `members` are not used).
    pub base: GenConfig,
    /// The rooms, by kind, in room order.
    pub classes: Vec<RoomClass>,
}

impl MixConfig {
    /// Names accepted by [`MixConfig::preset`].
    pub const PRESETS: &'static [&'static str] = &["bench200k", "bench3m", "bench20m"];

    /// A named benchmark configuration (row counts as measured with the
    /// default seed):
    /// - `bench200k`: one busy room (2,400 groups, joined over federation
    ///   with 1,800 users: 65,059 rows) and 65 small and medium rooms:
    ///   201,940 rows in all;
    /// - `bench3m`: one busy room (14,000 groups, joined with 10,200 users,
    ///   growing to 13,000 members: 2,051,394 rows, almost all of them in its
    ///   140 snapshots) and 600 other rooms (500 small, 90 medium, 10 large):
    ///   3,014,924 rows in all;
    /// - `bench20m`: one very busy room (40,000 groups, joined with 22,000
    ///   users, growing to 26,000 members: 12,005,100 rows) and 3,220 other
    ///   rooms: 19,931,585 rows in all.
    ///
    /// All with few forks and state resets (so they compress well, as most
    /// real rooms do) and Synapse's 100-hop rule. Small rooms have 200
    /// groups and 30 members, medium ones 1,200 and 250, large ones 3,500
    /// and 800.
    pub fn preset(name: &str) -> Option<MixConfig> {
        let base = GenConfig {
            seed: 1,
            join_rate: 3.0,
            fork_probability: 0.02,
            fork_continue_share: 0.01,
            resolve_probability: 0.03,
            resolve_drop_probability: 0.01,
            empty_delta_probability: 0.02,
            reset_probability: 0.0002,
            ..GenConfig::default()
        };
        let class = |rooms, groups_per_room, members, initial_members| RoomClass {
            rooms,
            groups_per_room,
            members,
            initial_members,
        };
        let classes = match name {
            "bench200k" => vec![
                class(1, 2_400, 2_200, 1_800),
                class(50, 200, 30, 0),
                class(14, 1_500, 250, 0),
                class(1, 3_000, 600, 0),
            ],
            "bench3m" => vec![
                class(1, 14_000, 13_000, 10_200),
                class(500, 200, 30, 0),
                class(90, 1_200, 250, 0),
                class(10, 3_500, 800, 0),
            ],
            "bench20m" => vec![
                class(1, 40_000, 26_000, 22_000),
                class(2_500, 200, 30, 0),
                class(600, 1_200, 250, 0),
                class(120, 3_500, 800, 0),
            ],
            _ => return None,
        };
        Some(MixConfig { base, classes })
    }

    /// Number of rooms.
    pub fn room_count(&self) -> usize {
        self.classes.iter().map(|c| c.rooms).sum()
    }

    /// Number of state groups.
    pub fn group_count(&self) -> usize {
        self.classes
            .iter()
            .map(|c| c.rooms * c.groups_per_room)
            .sum()
    }
}
