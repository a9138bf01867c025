//! A realistic writer of Synapse-like state groups.
//!
//! It simulates rooms whose events change state (creation, joins, leaves,
//! re-joins, invites, kicks and bans, displayname/avatar changes, topic, name,
//! power levels, join rules, widgets, ...) and writes one state group per
//! state change the way Synapse does: as a delta on its predecessor plus an
//! edge while the predecessor's chain is shorter than
//! [`MAX_STATE_DELTA_HOPS`] groups, otherwise as a full snapshot.
//!
//! It also reproduces what a forked room DAG does to the tables:
//! - forks: a group built on an *older* group of the room (an event whose
//!   prev_events are not the latest), stored as a delta on that older group,
//!   so its key set may lack keys added in between;
//! - state resolution: a group merging two branches, stored (like Synapse's
//!   `_make_state_cache_entry`) as a delta on the branch whose keys are a
//!   subset of the result, or as a snapshot with no edge when resolution
//!   dropped keys of both;
//! - groups with an empty delta (same state as their prev);
//! - snapshots with no prev whose state lacks some keys (state resets).
//!
//! Rooms are interleaved and share one sequence of ids (like
//! `state_group_id_seq`). Everything is deterministic for a given
//! [`GenConfig`] (seeded `SmallRng`, no hash-order dependence). With
//! `nasty_strings`, room ids, types, state keys and event ids include quotes,
//! `$$`, `$tag$`, backslashes, `\.`, emoji, newlines, tabs, percent signs and
//! a 5,000-character state key.
//!
//! [`generate`] builds the groups in memory; [`Generated::write`] (or
//! [`write_groups`] for hand-made groups) stores them with binary `COPY`.

use crate::structure::{GroupInfo, StateRow, Structure};
use crate::StateMap;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::{Client, GenericClient};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

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
                fork_probability: 0.02,
                fork_continue_share: 0.02,
                resolve_probability: 0.03,
                resolve_drop_probability: 0.05,
                reset_probability: 0.001,
                ..base
            },
            "bench" => GenConfig {
                rooms: 4,
                groups_per_room: 10_000,
                members: 3_000,
                join_rate: 3.0,
                fork_probability: 0.02,
                fork_continue_share: 0.02,
                resolve_probability: 0.03,
                resolve_drop_probability: 0.05,
                reset_probability: 0.001,
                ..base
            },
            _ => return None,
        })
    }
}

/// One state group as written: its room, event, prev and rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenGroup {
    pub id: i64,
    pub room_id: String,
    pub event_id: String,
    /// The edge, if any.
    pub prev: Option<i64>,
    /// The rows: the delta on `prev`, or the full state when there is none.
    pub delta: StateMap,
}

/// A hand-made group, for tests that need exact shapes:
/// `group(5, "!r:x", Some(4), &[("m.room.topic", "", "$t2")])`.
pub fn group(id: i64, room_id: &str, prev: Option<i64>, rows: &[(&str, &str, &str)]) -> GenGroup {
    GenGroup {
        id,
        room_id: room_id.to_string(),
        event_id: format!("$group{id}"),
        prev,
        delta: rows
            .iter()
            .map(|(t, k, e)| ((t.to_string(), k.to_string()), e.to_string()))
            .collect(),
    }
}

/// A generated room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedRoom {
    pub room_id: String,
    /// Its group ids, ascending.
    pub group_ids: Vec<i64>,
}

/// The generated data (groups in ascending id order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub rooms: Vec<GeneratedRoom>,
    pub groups: Vec<GenGroup>,
}

impl Generated {
    /// Number of `state_groups_state` rows.
    pub fn row_count(&self) -> usize {
        self.groups.iter().map(|g| g.delta.len()).sum()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.groups.iter().filter(|g| g.prev.is_some()).count()
    }

    /// Number of groups stored without an edge.
    pub fn snapshot_count(&self) -> usize {
        self.groups.len() - self.edge_count()
    }

    /// Rows of one room.
    pub fn room_row_count(&self, room_id: &str) -> usize {
        self.groups
            .iter()
            .filter(|g| g.room_id == room_id)
            .map(|g| g.delta.len())
            .sum()
    }

    /// The room with the most groups (the first such).
    pub fn biggest_room(&self) -> &GeneratedRoom {
        let most = self.rooms.iter().map(|r| r.group_ids.len()).max();
        self.rooms
            .iter()
            .find(|r| Some(r.group_ids.len()) == most)
            .expect("no rooms generated")
    }

    /// What [`crate::structure::structure`] will read back once written.
    pub fn structure(&self) -> Structure {
        self.groups
            .iter()
            .map(|g| {
                let mut rows: Vec<StateRow> = g
                    .delta
                    .iter()
                    .map(|((t, k), e)| StateRow {
                        room_id: g.room_id.clone(),
                        event_type: t.clone(),
                        state_key: k.clone(),
                        event_id: e.clone(),
                    })
                    .collect();
                rows.sort_unstable();
                let info = GroupInfo {
                    room_id: Some(g.room_id.clone()),
                    event_id: Some(g.event_id.clone()),
                    prevs: g.prev.into_iter().collect(),
                    rows,
                };
                (g.id, info)
            })
            .collect()
    }

    /// Writes everything (state tables and `event_to_state_groups`) in one
    /// transaction, then analyzes the tables.
    pub fn write(&self, client: &mut Client) -> Result<(), postgres::Error> {
        write_all(client, &self.groups, true)
    }
}

/// Writes hand-made groups (`state_groups`, edges, rows) in one transaction.
pub fn write_groups(client: &mut Client, groups: &[GenGroup]) -> Result<(), postgres::Error> {
    write_all(client, groups, false)
}

fn write_all(
    client: &mut Client,
    groups: &[GenGroup],
    event_map: bool,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    {
        let sink =
            tx.copy_in("COPY state_groups (id, room_id, event_id) FROM STDIN (FORMAT binary)")?;
        let mut w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT, Type::TEXT]);
        for g in groups {
            w.write(&[&g.id, &g.room_id, &g.event_id])?;
        }
        w.finish()?;
    }
    {
        let sink = tx.copy_in(
            "COPY state_group_edges (state_group, prev_state_group) FROM STDIN (FORMAT binary)",
        )?;
        let mut w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8]);
        for g in groups {
            if let Some(prev) = &g.prev {
                w.write(&[&g.id, prev])?;
            }
        }
        w.finish()?;
    }
    {
        let sink = tx.copy_in(
            "COPY state_groups_state (state_group, room_id, type, state_key, event_id) \
             FROM STDIN (FORMAT binary)",
        )?;
        let mut w = BinaryCopyInWriter::new(
            sink,
            &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT],
        );
        for g in groups {
            for ((event_type, state_key), event_id) in &g.delta {
                w.write(&[&g.id, &g.room_id, event_type, state_key, event_id])?;
            }
        }
        w.finish()?;
    }
    if event_map {
        let sink = tx.copy_in(
            "COPY event_to_state_groups (event_id, state_group) FROM STDIN (FORMAT binary)",
        )?;
        let mut w = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8]);
        for g in groups {
            w.write(&[&g.event_id, &g.id])?;
        }
        w.finish()?;
    }
    tx.batch_execute(
        "SELECT setval('state_group_id_seq', GREATEST((SELECT max(id) FROM state_groups), 1))",
    )?;
    tx.commit()?;
    client.batch_execute("ANALYZE state_groups, state_group_edges, state_groups_state")
}

// ---------------------------------------------------------------------------
// Strings

/// Hostile fragments for nasty mode (no NUL: PostgreSQL text cannot hold it).
const NASTY: &[&str] = &[
    "it's",
    "\"double\"",
    "$$",
    "$tag$",
    "$x$ $$ $tag$ $",
    "back\\slash",
    "two\\\\backslashes",
    "\\",
    "\\.",
    "\\N",
    "\\x41\\u0041",
    "🎉🦀",
    "new\nline",
    "\\.\nafter",
    "tab\there",
    "cr\r\nlf",
    "100%_done",
    "'); DROP TABLE state_groups; --",
    "E'\\''",
    "e\u{301}\u{200d}\u{202e}rtl",
    "Ω≈ç√∫ 日本語",
    "NULL",
    "",
    " spaced ",
    ",;|",
];

/// A 5,000-character state key, repetitive enough to fit in a btree index
/// entry once PostgreSQL compresses it.
pub fn long_state_key() -> String {
    "long'key\"$$\\%🎉\t".chars().cycle().take(5_000).collect()
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The simulation's strings: leaked, so that the states of busy rooms (tens
/// of thousands of entries, one copy per group) clone and drop as plain
/// memory, without touching a reference count per string. Only what a
/// generation creates is leaked (one event id per state event, one user id
/// per user, a few room keys): a few megabytes for the test data, about a
/// hundred for the benchmark's largest data set.
type Str = &'static str;
type SimKey = (Str, Str);

fn leak(s: String) -> Str {
    Box::leak(s.into_boxed_str())
}

/// [`long_state_key`], leaked once.
fn long_state_key_str() -> Str {
    static LONG: std::sync::OnceLock<Str> = std::sync::OnceLock::new();
    LONG.get_or_init(|| leak(long_state_key()))
}
type SimState = BTreeMap<SimKey, Str>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Membership {
    Joined,
    Left,
    Invited,
    Banned,
}

struct Strings {
    rng: SmallRng,
    nasty: bool,
    counter: u64,
}

impl Strings {
    fn random_chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[self.rng.random_range(0..alphabet.len())] as char)
            .collect()
    }

    fn nasty_fragment(&mut self) -> &'static str {
        NASTY[self.rng.random_range(0..NASTY.len())]
    }

    /// `$` + 43 base64url characters, like a v4 room event id; in nasty mode
    /// sometimes a hostile (but unique) one.
    fn event_id(&mut self) -> Str {
        self.counter += 1;
        if self.nasty && self.rng.random_bool(0.15) {
            let fragment = self.nasty_fragment();
            return leak(format!("${fragment}{}", self.counter));
        }
        leak(format!("${}", self.random_chars(BASE64URL, 43)))
    }

    fn room_id(&mut self, index: usize) -> String {
        let letters =
            self.random_chars(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 18);
        if self.nasty {
            let a = self.nasty_fragment();
            let b = self.nasty_fragment();
            format!("!{a}{index}'$$\\{b}\n🎉%{letters}:example.org")
        } else {
            format!("!{letters}:example.org")
        }
    }

    fn user_id(&mut self, n: usize) -> Str {
        if self.nasty && n % 5 == 0 {
            let fragment = self.nasty_fragment();
            leak(format!("@{fragment}{n}:example.org"))
        } else {
            leak(format!("@user{n}:example.org"))
        }
    }
}

// ---------------------------------------------------------------------------
// Simulation

/// How many recent groups of a room stay available as fork points.
const FORK_WINDOW: usize = 24;
/// At most this many unmerged side branches per room.
const MAX_TIPS: usize = 4;

struct RoomSim {
    room_id: Str,
    target_groups: usize,
    target_members: usize,
    group_ids: Vec<i64>,
    latest: Option<i64>,
    /// Heads of side branches, waiting to be merged.
    tips: Vec<i64>,
    /// Full states of the groups still reachable as parents.
    states: HashMap<i64, Rc<SimState>>,
    /// Number of groups in each group's chain (1 for a snapshot).
    chain: HashMap<i64, usize>,
    users: Vec<(Str, Membership)>,
    joined: usize,
    /// Synapse's snapshot rule (see [`GenConfig::max_delta_hops`]).
    max_hops: usize,
    join_rate: f64,
    fork_continue_share: f64,
    resolve_drop_probability: f64,
    /// Creation events still to send (type, state key).
    creation: Vec<SimKey>,
}

impl RoomSim {
    fn new(room_id: String, cfg: &GenConfig, strings: &mut Strings) -> RoomSim {
        let creator = strings.user_id(0);
        let mut creation: Vec<SimKey> = [
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.name",
            "m.room.topic",
        ]
        .iter()
        .map(|t| {
            let key: Str = if *t == "m.room.member" { creator } else { "" };
            (*t, key)
        })
        .collect();
        creation.reverse(); // popped from the end
        RoomSim {
            room_id: leak(room_id),
            target_groups: cfg.groups_per_room,
            target_members: cfg.members.max(1),
            group_ids: Vec::new(),
            latest: None,
            tips: Vec::new(),
            states: HashMap::new(),
            chain: HashMap::new(),
            users: vec![(creator, Membership::Joined)],
            joined: 1,
            max_hops: cfg.max_delta_hops.max(1),
            join_rate: cfg.join_rate.max(0.0),
            fork_continue_share: cfg.fork_continue_share.clamp(0.0, 1.0),
            resolve_drop_probability: cfg.resolve_drop_probability.clamp(0.0, 1.0),
            creation,
        }
    }

    fn remaining(&self) -> usize {
        self.target_groups - self.group_ids.len()
    }

    fn state(&self, group: i64) -> Rc<SimState> {
        self.states[&group].clone()
    }

    /// A random user with the given membership, if one is found quickly.
    fn pick_user(&self, rng: &mut SmallRng, membership: Membership) -> Option<usize> {
        for _ in 0..16 {
            let i = rng.random_range(0..self.users.len());
            if self.users[i].1 == membership {
                return Some(i);
            }
        }
        self.users.iter().position(|u| u.1 == membership)
    }

    fn set_membership(&mut self, i: usize, membership: Membership) -> SimKey {
        let was_joined = self.users[i].1 == Membership::Joined;
        let is_joined = membership == Membership::Joined;
        if was_joined && !is_joined {
            self.joined -= 1;
        } else if !was_joined && is_joined {
            self.joined += 1;
        }
        self.users[i].1 = membership;
        ("m.room.member", self.users[i].0)
    }

    fn new_user(&mut self, strings: &mut Strings, membership: Membership) -> SimKey {
        let user = strings.user_id(self.users.len());
        self.users.push((user, Membership::Left));
        let i = self.users.len() - 1;
        self.set_membership(i, membership)
    }

    /// One random state change (the key it overwrites or adds).
    fn random_change(&mut self, strings: &mut Strings) -> SimKey {
        let missing = self.target_members.saturating_sub(self.joined) as f64;
        let join_chance = (self.join_rate * missing / self.remaining().max(1) as f64).min(0.9);
        if strings.rng.random_bool(join_chance) {
            return self.new_user(strings, Membership::Joined);
        }
        let nasty = strings.nasty;
        // (weight, kind)
        let kinds: &[(u32, Str)] = &[
            (14, "leave"),
            (24, "profile"),
            (8, "rejoin"),
            (4, "invite"),
            (3, "ban"),
            (5, "m.room.topic"),
            (3, "m.room.name"),
            (2, "m.room.avatar"),
            (7, "m.room.power_levels"),
            (2, "m.room.join_rules"),
            (1, "m.room.history_visibility"),
            (1, "m.room.guest_access"),
            (3, "m.room.pinned_events"),
            (2, "m.room.canonical_alias"),
            (1, "m.room.server_acl"),
            (3, "im.vector.modular.widgets"),
            (2, "m.space.child"),
            (if nasty { 8 } else { 0 }, "nasty"),
            (if nasty { 1 } else { 0 }, "long"),
        ];
        let total: u32 = kinds.iter().map(|k| k.0).sum();
        let mut roll = strings.rng.random_range(0..total);
        let kind = kinds
            .iter()
            .find(|(weight, _)| {
                if roll < *weight {
                    true
                } else {
                    roll -= weight;
                    false
                }
            })
            .map(|k| k.1)
            .unwrap_or("m.room.topic");
        match kind {
            "leave" if self.joined > 1 => {
                match self.pick_user(&mut strings.rng, Membership::Joined) {
                    Some(i) => self.set_membership(i, Membership::Left),
                    None => self.new_user(strings, Membership::Joined),
                }
            }
            "profile" => match self.pick_user(&mut strings.rng, Membership::Joined) {
                // A displayname or avatar change overwrites the member event.
                Some(i) => self.set_membership(i, Membership::Joined),
                None => self.new_user(strings, Membership::Joined),
            },
            "rejoin" => match self.pick_user(&mut strings.rng, Membership::Left) {
                Some(i) => self.set_membership(i, Membership::Joined),
                None => self.new_user(strings, Membership::Joined),
            },
            "invite" => self.new_user(strings, Membership::Invited),
            "ban" => match self.pick_user(&mut strings.rng, Membership::Joined) {
                Some(i) if self.joined > 1 => {
                    let m = if strings.rng.random_bool(0.5) {
                        Membership::Banned
                    } else {
                        Membership::Left // a kick
                    };
                    self.set_membership(i, m)
                }
                _ => match self.pick_user(&mut strings.rng, Membership::Invited) {
                    Some(i) => self.set_membership(i, Membership::Joined),
                    None => self.new_user(strings, Membership::Joined),
                },
            },
            "im.vector.modular.widgets" => {
                let key = format!("widget_{}", strings.rng.random_range(0..40u32));
                (kind, leak(key))
            }
            "m.space.child" => {
                let key = format!("!space{}:example.org", strings.rng.random_range(0..20u32));
                (kind, leak(key))
            }
            "nasty" => {
                let t = loop {
                    let t = strings.nasty_fragment();
                    if !t.is_empty() {
                        break t;
                    }
                };
                let event_type = if strings.rng.random_bool(0.5) {
                    leak(format!("org.example.{t}"))
                } else {
                    t
                };
                let key = strings.nasty_fragment();
                (event_type, key)
            }
            "long" => ("org.example.long", long_state_key_str()),
            "leave" => self.new_user(strings, Membership::Joined),
            _ => (kind, ""),
        }
    }

    /// Synapse's storage decision for a new group with state `new` built on
    /// `parent`: a delta and an edge if the parent's chain is short enough
    /// (and its keys are a subset), else a snapshot.
    fn store(&self, parent: Option<i64>, new: &SimState) -> (Option<i64>, SimState) {
        if let Some(p) = parent {
            if self.chain[&p] < self.max_hops {
                if let Some(delta) = delta_if_subset(&self.states[&p], new) {
                    return (Some(p), delta);
                }
            }
        }
        (None, new.clone())
    }

    /// Records a new group: its state becomes available as a parent; keeps
    /// only the states of recent groups, tips and the latest.
    fn record(&mut self, id: i64, prev: Option<i64>, state: Rc<SimState>) {
        let chain = prev.map_or(1, |p| self.chain[&p] + 1);
        self.chain.insert(id, chain);
        self.states.insert(id, state);
        self.group_ids.push(id);
        while self.tips.len() > MAX_TIPS {
            let dropped = self.tips.remove(0);
            self.forget_if_unused(dropped);
        }
        if self.group_ids.len() > FORK_WINDOW {
            let old = self.group_ids[self.group_ids.len() - FORK_WINDOW - 1];
            self.forget_if_unused(old);
        }
    }

    fn forget_if_unused(&mut self, group: i64) {
        let n = self.group_ids.len();
        let recent = self.group_ids[n.saturating_sub(FORK_WINDOW)..].contains(&group);
        if !recent && self.latest != Some(group) && !self.tips.contains(&group) {
            self.states.remove(&group);
        }
    }

    /// Produces the room's next group, with id `id`.
    fn step(&mut self, id: i64, cfg: &GenConfig, strings: &mut Strings) -> GenGroup {
        let Some(latest) = self.latest else {
            // The room's first group: just the create event.
            let key = self.creation.pop().expect("creation events");
            let event = strings.event_id();
            let state: SimState = BTreeMap::from([(key, event)]);
            return self.finish(id, None, Rc::new(state), event, Role::Latest);
        };
        if let Some(key) = self.creation.pop() {
            let event = strings.event_id();
            let mut state = (*self.state(latest)).clone();
            state.insert(key, event);
            return self.finish(id, Some(latest), Rc::new(state), event, Role::Latest);
        }

        let roll: f64 = strings.rng.random();
        let mut threshold = cfg.fork_probability;
        if roll < threshold && self.group_ids.len() > 2 {
            return self.fork(id, strings);
        }
        threshold += cfg.resolve_probability;
        if roll < threshold && !self.tips.is_empty() {
            return self.resolve(id, latest, strings);
        }
        threshold += cfg.empty_delta_probability;
        if roll < threshold {
            let event = strings.event_id();
            let state = self.state(latest);
            return self.finish(id, Some(latest), state, event, Role::Latest);
        }
        threshold += cfg.reset_probability;
        if roll < threshold {
            return self.reset(id, latest, strings);
        }

        // The common case: one state event (sometimes a few) on the latest.
        let mut state = (*self.state(latest)).clone();
        let changes = if strings.rng.random_bool(0.1) {
            strings.rng.random_range(2..=4)
        } else {
            1
        };
        let event = self.apply_changes(&mut state, changes, strings);
        self.finish(id, Some(latest), Rc::new(state), event, Role::Latest)
    }

    /// Applies `n` (at least one) random state events to `state`; returns
    /// the last event's id.
    fn apply_changes(&mut self, state: &mut SimState, n: usize, strings: &mut Strings) -> Str {
        let mut last = None;
        for _ in 0..n.max(1) {
            let key = self.random_change(strings);
            let event = strings.event_id();
            state.insert(key, event);
            last = Some(event);
        }
        last.expect("at least one change")
    }

    /// An event whose prev_events are old: built on an older group.
    fn fork(&mut self, id: i64, strings: &mut Strings) -> GenGroup {
        let n = self.group_ids.len();
        let window = &self.group_ids[n.saturating_sub(FORK_WINDOW)..n - 1];
        let parent = window[strings.rng.random_range(0..window.len())];
        let mut state = (*self.state(parent)).clone();
        let changes = strings.rng.random_range(1..=2);
        let event = self.apply_changes(&mut state, changes, strings);
        let role = if strings.rng.random_bool(self.fork_continue_share) {
            Role::LatestFork
        } else {
            Role::Tip
        };
        self.finish(id, Some(parent), Rc::new(state), event, role)
    }

    /// State resolution of the latest group and a side branch.
    fn resolve(&mut self, id: i64, latest: i64, strings: &mut Strings) -> GenGroup {
        let tip = self
            .tips
            .remove(strings.rng.random_range(0..self.tips.len()));
        let (a, b) = (self.state(latest), self.state(tip));
        let mut resolved: SimState = (*a).clone();
        // One ordered walk over both: keys only `a` has, keys only `b` has
        // (added), and keys both have with different events (`b` wins half
        // of the time, decided in `b`'s key order).
        let mut one_sided: Vec<SimKey> = Vec::new();
        let mut a_entries = a.iter().peekable();
        for (k, v) in b.iter() {
            while let Some((a_key, _)) = a_entries.next_if(|(a_key, _)| *a_key < k) {
                one_sided.push(*a_key);
            }
            match a_entries.next_if(|(a_key, _)| *a_key == k) {
                None => {
                    resolved.insert(*k, *v);
                    one_sided.push(*k);
                }
                Some((_, mine)) if mine != v && strings.rng.random_bool(0.5) => {
                    resolved.insert(*k, *v);
                }
                Some(_) => {}
            }
        }
        one_sided.extend(a_entries.map(|(a_key, _)| *a_key));
        // Sometimes resolution rejects events that only one side had.
        one_sided.retain(|k| k.0 != "m.room.create");
        one_sided.sort();
        if !one_sided.is_empty() && strings.rng.random_bool(self.resolve_drop_probability) {
            for _ in 0..strings.rng.random_range(1..=3usize) {
                if one_sided.is_empty() {
                    break;
                }
                let i = strings.rng.random_range(0..one_sided.len());
                resolved.remove(&one_sided.swap_remove(i));
            }
        }
        // Synapse: prev group = the input group with the smallest delta among
        // those whose keys are a subset of the result.
        let mut best: Option<(usize, i64)> = None;
        for candidate in [latest, tip] {
            if let Some(delta) = delta_if_subset(&self.state(candidate), &resolved) {
                let delta = delta.len();
                if !matches!(best, Some((smallest, _)) if smallest <= delta) {
                    best = Some((delta, candidate));
                }
            }
        }
        let event = strings.event_id();
        let group = self.finish(
            id,
            best.map(|b| b.1),
            Rc::new(resolved),
            event,
            Role::Latest,
        );
        // The merged branch's state is not needed any more (unless it is
        // still a fork point).
        self.forget_if_unused(tip);
        group
    }

    /// A snapshot with no prev that lacks a few keys of the latest state.
    fn reset(&mut self, id: i64, latest: i64, strings: &mut Strings) -> GenGroup {
        let mut state = (*self.state(latest)).clone();
        let mut keys: Vec<SimKey> = state
            .keys()
            .filter(|k| k.0 != "m.room.create")
            .cloned()
            .collect();
        for _ in 0..strings.rng.random_range(1..=3usize) {
            if keys.is_empty() {
                break;
            }
            let i = strings.rng.random_range(0..keys.len());
            state.remove(&keys.swap_remove(i));
        }
        let event = strings.event_id();
        let full = state.clone();
        self.commit(id, None, Rc::new(state), full, event, Role::Latest)
    }

    fn finish(
        &mut self,
        id: i64,
        parent: Option<i64>,
        state: Rc<SimState>,
        event: Str,
        role: Role,
    ) -> GenGroup {
        let (prev, delta) = self.store(parent, &state);
        self.commit(id, prev, state, delta, event, role)
    }

    fn commit(
        &mut self,
        id: i64,
        prev: Option<i64>,
        state: Rc<SimState>,
        delta: SimState,
        event: Str,
        role: Role,
    ) -> GenGroup {
        let mut replaced = None;
        match role {
            Role::Latest => replaced = self.latest.replace(id),
            Role::LatestFork => {
                if let Some(old) = self.latest.replace(id) {
                    if !self.tips.contains(&old) {
                        self.tips.push(old);
                    }
                }
            }
            Role::Tip => self.tips.push(id),
        }
        self.record(id, prev, state);
        // A former latest that is no longer a fork point: its state is not
        // needed any more.
        if let Some(old) = replaced.filter(|&old| old != id) {
            self.forget_if_unused(old);
        }
        GenGroup {
            id,
            room_id: self.room_id.to_string(),
            event_id: event.to_string(),
            prev,
            delta: delta
                .into_iter()
                .map(|((t, k), e)| ((t.to_string(), k.to_string()), e.to_string()))
                .collect(),
        }
    }
}

/// When every key of `old` is in `new`: the entries of `new` that `old`
/// lacks or maps to another event. One ordered walk over both maps (the
/// states of busy rooms have tens of thousands of keys, so looking each one
/// up would dominate generating them).
fn delta_if_subset(old: &SimState, new: &SimState) -> Option<SimState> {
    let same_key =
        |a: &SimKey, b: &SimKey| (std::ptr::eq(a.0, b.0) && std::ptr::eq(a.1, b.1)) || a == b;
    let mut olds = old.iter();
    let mut next_old = olds.next();
    let mut delta = Vec::new();
    for (key, event) in new {
        match next_old {
            Some((old_key, old_event)) if same_key(old_key, key) => {
                if !std::ptr::eq(*old_event, *event) && old_event != event {
                    delta.push((*key, *event));
                }
                next_old = olds.next();
            }
            // A key of `old` that `new` lacks.
            Some((old_key, _)) if old_key < key => return None,
            _ => delta.push((*key, *event)),
        }
    }
    match next_old {
        Some(_) => None,
        None => Some(delta.into_iter().collect()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The group becomes the room's latest.
    Latest,
    /// A fork that becomes the latest: the old latest becomes a side branch
    /// to merge later.
    LatestFork,
    /// The group is a side branch.
    Tip,
}

/// Generates the groups described by `cfg` (nothing is written).
pub fn generate(cfg: &GenConfig) -> Generated {
    let mut strings = Strings {
        rng: SmallRng::seed_from_u64(cfg.seed),
        nasty: cfg.nasty_strings,
        counter: 0,
    };
    let mut rooms: Vec<RoomSim> = (0..cfg.rooms)
        .map(|i| {
            let room_id = strings.room_id(i);
            RoomSim::new(room_id, cfg, &mut strings)
        })
        .collect();
    let mut seen_ids = BTreeSet::new();
    for room in &rooms {
        assert!(seen_ids.insert(room.room_id), "duplicate room id");
    }

    let mut groups = Vec::with_capacity(cfg.rooms * cfg.groups_per_room);
    let mut next_id = cfg.first_group_id;
    loop {
        let remaining: usize = rooms.iter().map(RoomSim::remaining).sum();
        if remaining == 0 {
            break;
        }
        // Interleave rooms, weighted by how much each has left.
        let mut pick = strings.rng.random_range(0..remaining);
        let room = rooms
            .iter_mut()
            .find(|r| {
                if pick < r.remaining() {
                    true
                } else {
                    pick -= r.remaining();
                    false
                }
            })
            .expect("a room with groups left");
        groups.push(room.step(next_id, cfg, &mut strings));
        next_id += 1;
    }

    Generated {
        rooms: rooms
            .iter()
            .map(|r| GeneratedRoom {
                room_id: r.room_id.to_string(),
                group_ids: r.group_ids.clone(),
            })
            .collect(),
        groups,
    }
}

/// Generates with `cfg` and writes the result into the database.
pub fn generate_into(client: &mut Client, cfg: &GenConfig) -> Result<Generated, postgres::Error> {
    let generated = generate(cfg);
    generated.write(client)?;
    Ok(generated)
}

// ---------------------------------------------------------------------------
// Benchmark data: many rooms of mixed sizes, streamed

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
/// Unlike [`generate`], [`generate_mix`] streams the groups (memory is
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

/// What [`generate_mix`] produced for one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixRoom {
    pub room_id: String,
    pub groups: usize,
    /// Its `state_groups_state` rows.
    pub rows: usize,
    /// Its groups stored without an edge.
    pub snapshots: usize,
}

/// A seed per room, derived from the configuration's seed (SplitMix64).
fn room_seed(seed: u64, room: usize) -> u64 {
    let mut z = seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul((room as u64).wrapping_add(1)))
        .wrapping_add(0xB5AD_4ECE_DA1C_E2A9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl RoomSim {
    /// The room's first group when this server joined an existing room over
    /// federation: the whole state at the join as one snapshot.
    fn joined_over_federation(&mut self, id: i64, users: usize, strings: &mut Strings) -> GenGroup {
        let mut state = SimState::new();
        let mut last = None;
        while let Some(key) = self.creation.pop() {
            let event = strings.event_id();
            state.insert(key, event);
            last = Some(event);
        }
        // The creator is already in; about one in seven of the others left.
        for n in 1..users {
            let membership = if n % 7 == 3 {
                Membership::Left
            } else {
                Membership::Joined
            };
            let key = self.new_user(strings, membership);
            let event = strings.event_id();
            state.insert(key, event);
            last = Some(event);
        }
        let event = last.expect("the creation events");
        self.finish(id, None, Rc::new(state), event, Role::Latest)
    }
}

/// Generates the rooms of `cfg` and hands each group, in ascending id order
/// (ids from `cfg.base.first_group_id`, without gaps), to `sink`; stops at
/// the first error of `sink`. Returns what each room got, in room order.
///
/// Rooms are simulated on a few threads (each room has its own random
/// generator, so the result does not depend on how they are spread) and
/// handed to `sink` on the calling thread. Deterministic for a given
/// configuration.
pub fn generate_mix<E>(
    cfg: &MixConfig,
    mut sink: impl FnMut(GenGroup) -> Result<(), E>,
) -> Result<Vec<MixRoom>, E> {
    struct Room {
        room_id: String,
        strings: Strings,
        cfg: GenConfig,
        initial_members: usize,
    }
    let base = &cfg.base;
    let mut rooms: Vec<Room> = Vec::with_capacity(cfg.room_count());
    let mut seen_ids = BTreeSet::new();
    for class in &cfg.classes {
        for _ in 0..class.rooms {
            let index = rooms.len();
            let mut strings = Strings {
                rng: SmallRng::seed_from_u64(room_seed(base.seed, index)),
                nasty: base.nasty_strings,
                counter: 0,
            };
            let room_id = strings.room_id(index);
            assert!(seen_ids.insert(room_id.clone()), "duplicate room id");
            rooms.push(Room {
                room_id,
                strings,
                cfg: GenConfig {
                    groups_per_room: class.groups_per_room,
                    members: class.members,
                    ..base.clone()
                },
                initial_members: class.initial_members,
            });
        }
    }
    // Which room gets each id: every room's groups, shuffled (the same as
    // picking a room weighted by how much it has left, at every step).
    let mut schedule: Vec<u32> = Vec::with_capacity(cfg.group_count());
    for (index, room) in rooms.iter().enumerate() {
        schedule.extend(std::iter::repeat_n(index as u32, room.cfg.groups_per_room));
    }
    let mut rng = SmallRng::seed_from_u64(room_seed(base.seed, usize::MAX));
    for i in (1..schedule.len()).rev() {
        let j = rng.random_range(0..=i);
        schedule.swap(i, j);
    }

    // Spread the rooms over the workers by their cost (groups times state
    // size), heaviest first, each to the least loaded worker.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let mut order: Vec<usize> = (0..rooms.len()).collect();
    let cost = |r: &Room| r.cfg.groups_per_room * (r.cfg.members + r.initial_members + 16);
    order.sort_by_key(|&i| std::cmp::Reverse(cost(&rooms[i])));
    let mut load = vec![0usize; workers];
    let mut worker_of = vec![0usize; rooms.len()];
    for i in order {
        let w = (0..workers).min_by_key(|&w| load[w]).unwrap_or(0);
        load[w] += cost(&rooms[i]);
        worker_of[i] = w;
    }
    let mut per_worker: Vec<Vec<(usize, Room)>> = (0..workers).map(|_| Vec::new()).collect();
    for (index, room) in rooms.into_iter().enumerate() {
        per_worker[worker_of[index]].push((index, room));
    }

    let mut report: Vec<MixRoom> = Vec::new();
    let schedule = &schedule;
    let first_id = base.first_group_id;
    let result = std::thread::scope(|scope| {
        let mut receivers = Vec::with_capacity(workers);
        for mine in per_worker {
            let (tx, rx) = std::sync::mpsc::sync_channel::<GenGroup>(256);
            receivers.push(rx);
            scope.spawn(move || {
                // Local index of each of this worker's rooms.
                let mut local: HashMap<usize, usize> = HashMap::new();
                let mut sims: Vec<(RoomSim, Strings, usize, GenConfig)> = Vec::new();
                for (index, room) in mine {
                    let mut strings = room.strings;
                    let sim = RoomSim::new(room.room_id, &room.cfg, &mut strings);
                    local.insert(index, sims.len());
                    sims.push((sim, strings, room.initial_members, room.cfg));
                }
                for (position, &index) in schedule.iter().enumerate() {
                    let Some(&l) = local.get(&(index as usize)) else {
                        continue;
                    };
                    let (sim, strings, initial_members, room_cfg) = &mut sims[l];
                    let id = first_id + position as i64;
                    let group = if sim.latest.is_none() && *initial_members > 1 {
                        sim.joined_over_federation(id, *initial_members, strings)
                    } else {
                        sim.step(id, room_cfg, strings)
                    };
                    if sim.remaining() == 0 {
                        // Done: free its states now.
                        let empty = GenConfig {
                            groups_per_room: 0,
                            ..room_cfg.clone()
                        };
                        *sim = RoomSim::new(String::new(), &empty, strings);
                    }
                    if tx.send(group).is_err() {
                        return; // the consumer stopped
                    }
                }
            });
        }
        let mut by_room: BTreeMap<usize, MixRoom> = BTreeMap::new();
        for &index in schedule {
            let index = index as usize;
            let group = receivers[worker_of[index]]
                .recv()
                .expect("a generator thread stopped early");
            let entry = by_room.entry(index).or_insert_with(|| MixRoom {
                room_id: group.room_id.clone(),
                groups: 0,
                rows: 0,
                snapshots: 0,
            });
            entry.groups += 1;
            entry.rows += group.delta.len();
            entry.snapshots += usize::from(group.prev.is_none());
            if let Err(e) = sink(group) {
                // Dropping the receivers stops the workers.
                drop(receivers);
                return Err(e);
            }
        }
        report = by_room.into_values().collect();
        Ok(())
    });
    result.map(|()| report)
}

/// Writes the groups of `cfg` into the database the fastest way there is:
/// `state_groups_state` streamed with one binary `COPY` as the rows are
/// generated, then `state_groups`, `state_group_edges` and
/// `event_to_state_groups` (kept in memory meanwhile: a few dozen bytes per
/// group). No `ANALYZE`: meant for a database made for the purpose (the
/// benchmark drops the indexes first and builds them afterwards). With
/// `freeze`, every `COPY` has the `FREEZE` option, which PostgreSQL accepts
/// only inside a transaction that created or truncated the tables; the rows
/// are then stored frozen, as if vacuumed. Returns what each room got.
pub fn write_mix(
    client: &mut impl GenericClient,
    cfg: &MixConfig,
    freeze: bool,
) -> Result<Vec<MixRoom>, postgres::Error> {
    let options = if freeze {
        "(FORMAT binary, FREEZE)"
    } else {
        "(FORMAT binary)"
    };
    struct Meta {
        id: i64,
        room: u32,
        event_id: String,
        prev: Option<i64>,
    }
    let mut metas: Vec<Meta> = Vec::with_capacity(cfg.group_count());
    let mut room_index: HashMap<String, u32> = HashMap::new();
    let report = {
        let sink = client.copy_in(&format!(
            "COPY state_groups_state (state_group, room_id, type, state_key, event_id) \
             FROM STDIN {options}"
        ))?;
        let mut w = BinaryCopyInWriter::new(
            sink,
            &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT],
        );
        let report = generate_mix(cfg, |g| {
            for ((event_type, state_key), event_id) in &g.delta {
                w.write(&[&g.id, &g.room_id, event_type, state_key, event_id])?;
            }
            let next = room_index.len() as u32;
            let room = *room_index.entry(g.room_id).or_insert(next);
            metas.push(Meta {
                id: g.id,
                room,
                event_id: g.event_id,
                prev: g.prev,
            });
            Ok(())
        })?;
        w.finish()?;
        report
    };
    let mut room_ids = vec![String::new(); room_index.len()];
    for (room_id, index) in room_index {
        room_ids[index as usize] = room_id;
    }
    {
        let sink = client.copy_in(&format!(
            "COPY state_groups (id, room_id, event_id) FROM STDIN {options}"
        ))?;
        let mut w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT, Type::TEXT]);
        for m in &metas {
            w.write(&[&m.id, &room_ids[m.room as usize], &m.event_id])?;
        }
        w.finish()?;
    }
    {
        let sink = client.copy_in(&format!(
            "COPY state_group_edges (state_group, prev_state_group) FROM STDIN {options}"
        ))?;
        let mut w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8]);
        for m in &metas {
            if let Some(prev) = &m.prev {
                w.write(&[&m.id, prev])?;
            }
        }
        w.finish()?;
    }
    {
        let sink = client.copy_in(&format!(
            "COPY event_to_state_groups (event_id, state_group) FROM STDIN {options}"
        ))?;
        let mut w = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8]);
        for m in &metas {
            w.write(&[&m.event_id, &m.id])?;
        }
        w.finish()?;
    }
    client.batch_execute(
        "SELECT setval('state_group_id_seq', GREATEST((SELECT max(id) FROM state_groups), 1))",
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structure::{resolve_all, violations};

    #[test]
    fn deterministic_per_seed() {
        let cfg = GenConfig {
            nasty_strings: true,
            ..GenConfig::default()
        };
        assert_eq!(generate(&cfg), generate(&cfg));
        let other = GenConfig { seed: 2, ..cfg };
        assert_ne!(generate(&other).groups, generate(&cfg).groups);
    }

    #[test]
    fn synapse_shapes_appear_and_invariants_hold() {
        let cfg = GenConfig {
            rooms: 3,
            groups_per_room: 400,
            members: 60,
            fork_probability: 0.1,
            resolve_probability: 0.08,
            empty_delta_probability: 0.03,
            reset_probability: 0.02,
            max_delta_hops: 30,
            nasty_strings: true,
            ..GenConfig::default()
        };
        let generated = generate(&cfg);
        assert_eq!(generated.groups.len(), 1200);
        let ids: Vec<i64> = generated.groups.iter().map(|g| g.id).collect();
        assert_eq!(ids, (1..=1200).collect::<Vec<_>>());
        let structure = generated.structure();
        assert!(
            violations(&structure).is_empty(),
            "{:?}",
            violations(&structure)
        );
        let states = resolve_all(&structure);

        // Rooms interleave.
        let first_room_ids = &generated.rooms[0].group_ids;
        assert!(first_room_ids.windows(2).any(|w| w[1] - w[0] > 1));
        // Empty deltas, forks (prev not the room's previous group), deltas
        // whose prev is older, snapshots lacking keys of the group before.
        let mut empty = 0;
        let mut forks = 0;
        let mut lacking_snapshots = 0;
        for room in &generated.rooms {
            for pair in room.group_ids.windows(2) {
                let (before, g) = (pair[0], pair[1]);
                let group = &generated.groups[(g - 1) as usize];
                if group.prev.is_some() && group.delta.is_empty() {
                    empty += 1;
                }
                if group.prev.is_some_and(|p| p != before) {
                    forks += 1;
                }
                if states[&before].keys().any(|k| !states[&g].contains_key(k)) {
                    lacking_snapshots += usize::from(group.prev.is_none());
                }
            }
        }
        assert!(
            empty > 0 && forks > 10 && lacking_snapshots > 0,
            "{empty} {forks} {lacking_snapshots}"
        );
        // The snapshot rule: no chain longer than max_delta_hops groups.
        let mut chain: BTreeMap<i64, usize> = BTreeMap::new();
        for g in &generated.groups {
            let n = g.prev.map_or(1, |p| chain[&p] + 1);
            assert!(n <= 30, "group {} has a chain of {n}", g.id);
            chain.insert(g.id, n);
        }
        // Members grow towards the target.
        let last = generated.rooms[0].group_ids.last().unwrap();
        let members = states[last]
            .keys()
            .filter(|k| k.0 == "m.room.member")
            .count();
        assert!(members >= 30, "{members}");
        // Nasty strings are present.
        let all_text: String = generated
            .groups
            .iter()
            .flat_map(|g| g.delta.iter().map(|((t, k), e)| format!("{t}{k}{e}")))
            .collect();
        for needle in ["$$", "'", "\\", "\n", "🎉", "%", "\t"] {
            assert!(all_text.contains(needle), "no {needle:?}");
        }
        assert!(generated.rooms.iter().all(|r| r.room_id.contains('\'')));
        assert!(generated
            .groups
            .iter()
            .any(|g| g.delta.keys().any(|k| k.1.chars().count() == 5_000)));
    }

    #[test]
    fn demo_preset_has_synapse_like_volume() {
        let generated = generate(&GenConfig::preset("demo").unwrap());
        assert_eq!(generated.groups.len(), 3_000);
        assert!(generated.row_count() > 40_000, "{}", generated.row_count());
    }

    #[test]
    fn mixed_rooms_stream_in_id_order_deterministically() {
        let cfg = MixConfig {
            base: GenConfig {
                first_group_id: 10,
                max_delta_hops: 20,
                ..GenConfig::default()
            },
            classes: vec![
                RoomClass {
                    rooms: 1,
                    groups_per_room: 150,
                    members: 90,
                    initial_members: 60,
                },
                RoomClass {
                    rooms: 5,
                    groups_per_room: 40,
                    members: 10,
                    initial_members: 0,
                },
            ],
        };
        let collect = || {
            let mut groups = Vec::new();
            let rooms = generate_mix(&cfg, |g| {
                groups.push(g);
                Ok::<(), ()>(())
            })
            .unwrap();
            (groups, rooms)
        };
        let (groups, rooms) = collect();
        assert_eq!((groups.clone(), rooms.clone()), collect());
        let ids: Vec<i64> = groups.iter().map(|g| g.id).collect();
        assert_eq!(ids, (10..10 + 350).collect::<Vec<_>>());
        assert_eq!(rooms.len(), 6);
        assert_eq!(rooms[0].groups, 150);
        assert!(rooms[1..].iter().all(|r| r.groups == 40));
        assert_eq!(
            rooms.iter().map(|r| r.rows).sum::<usize>(),
            groups.iter().map(|g| g.delta.len()).sum::<usize>()
        );
        // The federated room starts with the whole state at the join.
        let first = groups
            .iter()
            .find(|g| g.room_id == rooms[0].room_id)
            .unwrap();
        assert_eq!(first.prev, None);
        let members = first
            .delta
            .keys()
            .filter(|k| k.0 == "m.room.member")
            .count();
        assert_eq!(members, 60);
        // Rooms interleave, and the structure is a valid Synapse one.
        let generated = Generated {
            rooms: Vec::new(),
            groups,
        };
        let structure = generated.structure();
        assert!(violations(&structure).is_empty());
        let chain_max = {
            let mut chain: BTreeMap<i64, usize> = BTreeMap::new();
            for g in &generated.groups {
                chain.insert(g.id, g.prev.map_or(1, |p| chain[&p] + 1));
            }
            chain.into_values().max().unwrap()
        };
        assert!(chain_max <= 20, "{chain_max}");
        assert!(generated
            .groups
            .windows(2)
            .any(|w| w[0].room_id != w[1].room_id));
    }

    #[test]
    fn bench_presets_exist() {
        for name in MixConfig::PRESETS {
            let cfg = MixConfig::preset(name).unwrap();
            assert!(
                cfg.room_count() > 50 && cfg.group_count() > 10_000,
                "{name}"
            );
        }
        assert!(MixConfig::preset("nope").is_none());
    }
}
