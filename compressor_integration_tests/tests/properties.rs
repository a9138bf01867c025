//! Property tests over many generated databases: for every seed, record
//! every group's state (Synapse's query), compress one room, and check that
//! - every group of every room still has exactly the same state,
//! - the invariants hold (one edge at most, edges to lower ids of the same
//!   room, rows carry their group's room id, no duplicate keys),
//! - nothing outside the chosen room changed (groups, edges, rows, tables),
//! - the room's new tree is exactly the default algorithm's
//!   (`level_model`), or unchanged when that would add rows.
//!
//! Seeds vary the shape (1-3 interleaved rooms of 50-400 groups, members,
//! forks, state resolutions, resets, Synapse's snapshot rule), the level
//! sizes and hostile strings. About half the seeds give a room the
//! compressor rewrites; in the others it must refuse, as rewriting would add
//! rows. Each run prints its seed first (shown on failure).

use compressor_integration_tests::check::{self, compress_ok, snapshot};
use compressor_integration_tests::generator::{generate_into, GenConfig};
use compressor_integration_tests::level_model::{self, Outcome};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::tools::TempPath;
use property_rooms::{config, levels_of};
use std::collections::BTreeSet;

mod property_rooms;

#[derive(Clone, Copy, Debug)]
enum Apply {
    /// `-c`
    Commit,
    /// `-o FILE` (with `-t` when true), then `psql -v ON_ERROR_STOP=1`.
    SqlFile(bool),
}

fn parse_levels(text: &str) -> Vec<usize> {
    text.split(',').map(|n| n.parse().unwrap()).collect()
}

/// Compresses `room` of `db` with `args` (besides -p/-r) in the given mode.
fn run_tool(db: &TestDb, room: &str, args: &[&str], apply: Apply) {
    let mut all = vec!["-r", room];
    all.extend_from_slice(args);
    match apply {
        Apply::Commit => {
            all.push("-c");
            compress_ok(db.url(), &all);
        }
        Apply::SqlFile(transactions) => {
            let sql = TempPath::new("prop", "sql");
            all.extend_from_slice(&["-o", sql.as_str()]);
            if transactions {
                all.push("-t");
            }
            compress_ok(db.url(), &all);
            check::apply_sql(db.url(), sql.path());
        }
    }
}

/// One seed, whole room. Returns the model's outcome.
fn run_seed(seed: u64, apply: Apply) -> Outcome {
    let cfg = config(seed);
    let levels_text = levels_of(seed);
    eprintln!("seed {seed}: {apply:?}, levels {levels_text}, {cfg:?}");
    let db = TestDb::create(&format!("prop{seed}"));
    let mut client = db.client();
    let generated = generate_into(&mut client, &cfg).unwrap();
    let room = generated.rooms[seed as usize % generated.rooms.len()]
        .room_id
        .clone();
    let before = snapshot(&mut client);

    run_tool(&db, &room, &["-l", levels_text], apply);

    let after = snapshot(&mut client);
    let context = format!("seed {seed}, levels {levels_text}, {apply:?}");
    check::assert_same_states(&before.states, &after.states, &context);
    check::assert_other_rooms_untouched(&before.structure, &after.structure, &room);
    assert_eq!(before.tables, after.tables, "{context}: tables changed");
    let in_range: BTreeSet<i64> = check::room_part(&before.structure, &room)
        .keys()
        .copied()
        .collect();
    check::assert_matches_model(
        &before.structure,
        &after.structure,
        &room,
        &in_range,
        &parse_levels(levels_text),
    )
}

/// Runs `seeds`; asserts that some of them really rewrote their room.
fn run_seeds(seeds: std::ops::Range<u64>, apply: impl Fn(u64) -> Apply) {
    let total = seeds.end - seeds.start;
    let mut wrote = 0;
    for seed in seeds {
        if run_seed(seed, apply(seed)).writes() == Some(true) {
            wrote += 1;
        }
    }
    assert!(
        wrote * 4 >= total,
        "only {wrote} of {total} seeds rewrote anything: the property tests lost their teeth"
    );
}

#[test]
fn sql_file_seeds_0_to_9() {
    run_seeds(0..10, |seed| Apply::SqlFile(seed % 3 != 0));
}

#[test]
fn sql_file_seeds_10_to_19() {
    run_seeds(10..20, |seed| Apply::SqlFile(seed % 3 != 0));
}

#[test]
fn sql_file_seeds_20_to_29() {
    run_seeds(20..30, |seed| Apply::SqlFile(seed % 3 != 0));
}

#[test]
fn commit_seeds_0_to_9() {
    run_seeds(0..10, |_| Apply::Commit);
}

#[test]
fn commit_seeds_10_to_19() {
    run_seeds(10..20, |_| Apply::Commit);
}

#[test]
fn commit_seeds_20_to_29() {
    run_seeds(20..30, |_| Apply::Commit);
}

/// Which of -b / -n / -s to pass.
#[derive(Clone, Copy, Debug)]
struct Range {
    count: bool,
    max: bool,
}

/// Compresses the middle of a room: groups after its first quarter (`-b`,
/// exclusive), at most two thirds of the room's count of them (`-n`), up to
/// three quarters (`-s`, inclusive; with `-n` too, `-s` is the binding one).
fn run_range(seed: u64, range: Range, apply: Apply) {
    let cfg = GenConfig {
        seed,
        rooms: 3,
        groups_per_room: 300,
        members: 60,
        join_rate: 3.0,
        max_delta_hops: 5,
        reset_probability: 0.01,
        nasty_strings: seed % 2 == 1,
        ..GenConfig::default()
    };
    let levels_text = ["10,5", "100,50,25", "3,3"][seed as usize % 3];
    eprintln!("range seed {seed}: {range:?}, {apply:?}, levels {levels_text}");
    let db = TestDb::create(&format!("range{seed}"));
    let mut client = db.client();
    let generated = generate_into(&mut client, &cfg).unwrap();
    let room = &generated.rooms[seed as usize % 3];
    let ids = &room.group_ids;
    let min = ids[ids.len() / 4];
    let count = ids.len() * 2 / 3;
    let max = ids[ids.len() * 3 / 4];
    let before = snapshot(&mut client);

    let (min_s, count_s, max_s) = (min.to_string(), count.to_string(), max.to_string());
    let mut args = vec!["-l", levels_text, "-b", &min_s];
    if range.count {
        args.extend_from_slice(&["-n", &count_s]);
    }
    if range.max {
        args.extend_from_slice(&["-s", &max_s]);
    }
    run_tool(&db, &room.room_id, &args, apply);

    let after = snapshot(&mut client);
    let context = format!("range seed {seed}, {range:?}, {apply:?}");
    check::assert_same_states(&before.states, &after.states, &context);
    check::assert_other_rooms_untouched(&before.structure, &after.structure, &room.room_id);
    let in_range = level_model::in_range(
        ids.iter().copied(),
        Some(min),
        range.count.then_some(count),
        range.max.then_some(max),
    );
    // Everything outside the range is untouched (also checked by the model).
    for id in ids.iter().filter(|id| !in_range.contains(id)) {
        assert_eq!(
            before.structure[id], after.structure[id],
            "{context}: group {id} is outside the range but changed"
        );
    }
    check::assert_matches_model(
        &before.structure,
        &after.structure,
        &room.room_id,
        &in_range,
        &parse_levels(levels_text),
    );
}

/// `-n` alone, `-s` alone, both, and neither (the whole room after `-b`).
const RANGES: [Range; 4] = [
    Range {
        count: true,
        max: false,
    },
    Range {
        count: false,
        max: true,
    },
    Range {
        count: true,
        max: true,
    },
    Range {
        count: false,
        max: false,
    },
];

#[test]
fn ranges_committed() {
    for (i, range) in RANGES.into_iter().enumerate() {
        run_range(100 + i as u64, range, Apply::Commit);
    }
}

#[test]
fn ranges_sql_file() {
    for (i, range) in RANGES.into_iter().take(3).enumerate() {
        run_range(200 + i as u64, range, Apply::SqlFile(true));
    }
}

#[test]
fn many_rooms_one_after_another() {
    // Twelve interleaved rooms; compress three of them in turn. Each run
    // touches its room only, and every state stays the same throughout.
    let cfg = GenConfig {
        max_delta_hops: 4,
        join_rate: 3.0,
        ..GenConfig::preset("multi").unwrap()
    };
    let db = TestDb::create("multiroom");
    let mut client = db.client();
    let generated = generate_into(&mut client, &cfg).unwrap();
    let original = snapshot(&mut client);
    let mut previous = original.clone();
    for (n, (room_index, levels)) in [(0, "10,5"), (5, "3,3"), (11, "100,50,25")]
        .into_iter()
        .enumerate()
    {
        let room = &generated.rooms[room_index].room_id;
        let apply = if n == 1 {
            Apply::SqlFile(true)
        } else {
            Apply::Commit
        };
        run_tool(&db, room, &["-l", levels], apply);
        let now = snapshot(&mut client);
        check::assert_same_states(&original.states, &now.states, &format!("after room {n}"));
        check::assert_other_rooms_untouched(&previous.structure, &now.structure, room);
        let in_range: BTreeSet<i64> = generated.rooms[room_index]
            .group_ids
            .iter()
            .copied()
            .collect();
        check::assert_matches_model(
            &previous.structure,
            &now.structure,
            room,
            &in_range,
            &parse_levels(levels),
        );
        previous = now;
    }
}
