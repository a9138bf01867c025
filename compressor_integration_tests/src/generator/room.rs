//! The simulation of one room: its members and state events, forks, state
//! resolution, resets, and Synapse's choice between a delta and a snapshot
//! for each new group.

use super::strings::{leak, long_state_key_str, SimKey, Str, Strings};
use super::{GenConfig, GenGroup};
use rand::rngs::SmallRng;
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// A room's resolved state, as the simulation keeps it.
type SimState = BTreeMap<SimKey, Str>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Membership {
    Joined,
    Left,
    Invited,
    Banned,
}

/// How many recent groups of a room stay available as fork points.
const FORK_WINDOW: usize = 24;
/// At most this many unmerged side branches per room.
const MAX_TIPS: usize = 4;

/// One room being simulated: its members, its recent states and the
/// branches still to merge.
pub(super) struct RoomSim {
    pub(super) room_id: Str,
    target_groups: usize,
    target_members: usize,
    pub(super) group_ids: Vec<i64>,
    pub(super) latest: Option<i64>,
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
    pub(super) fn new(room_id: String, cfg: &GenConfig, strings: &mut Strings) -> RoomSim {
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

    pub(super) fn remaining(&self) -> usize {
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
        let kind = pick_kind(strings);
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
    pub(super) fn step(&mut self, id: i64, cfg: &GenConfig, strings: &mut Strings) -> GenGroup {
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

    /// The room's first group when this server joined an existing room over
    /// federation: the whole state at the join as one snapshot.
    pub(super) fn joined_over_federation(
        &mut self,
        id: i64,
        users: usize,
        strings: &mut Strings,
    ) -> GenGroup {
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

/// The kind of the next state change, by weight: a membership change
/// (`leave`, `profile`, `rejoin`, `invite`, `ban`), an event type, or with
/// hostile strings a `nasty` or `long` key.
fn pick_kind(strings: &mut Strings) -> Str {
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
    kinds
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
        .unwrap_or("m.room.topic")
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
