//! Unit tests of the generator: determinism, the shapes Synapse makes, the
//! benchmark's presets.

use super::*;
use crate::structure::{resolve_all, violations};
use std::collections::BTreeMap;

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
