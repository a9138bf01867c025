//! The harness itself, against a real PostgreSQL: the generator writes what
//! it says, both state readers agree with each other and with an in-memory
//! resolution, invariant checks catch broken trees, test databases come and
//! go, and the `generate` / `state-digest` binaries work.

use compressor_integration_tests::generator::{self, generate_into, write_groups, GenConfig};
use compressor_integration_tests::pg::{self, TestDb};
use compressor_integration_tests::structure::{self, resolve_all, violations};
use compressor_integration_tests::synapse_state::{self, first_difference};
use compressor_integration_tests::tools::{self, assert_success, TempPath};
use compressor_integration_tests::StateMap;
use std::path::Path;

fn forked_nasty_config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        rooms: 3,
        groups_per_room: 150,
        members: 30,
        fork_probability: 0.12,
        resolve_probability: 0.08,
        empty_delta_probability: 0.03,
        reset_probability: 0.02,
        max_delta_hops: 20,
        nasty_strings: true,
        ..GenConfig::default()
    }
}

#[test]
fn generated_groups_round_trip_exactly() {
    let db = TestDb::create("roundtrip");
    let mut client = db.client();
    let generated = generate_into(&mut client, &forked_nasty_config(7)).unwrap();

    let stored = structure::structure(&mut client, None).unwrap();
    assert!(
        stored == generated.structure(),
        "stored tree differs from the generated one"
    );
    assert!(violations(&stored).is_empty(), "{:?}", violations(&stored));

    let mut count = |sql: &str| -> i64 { client.query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(count("SELECT count(*) FROM state_groups"), 450);
    assert_eq!(
        count("SELECT count(*) FROM state_groups_state") as usize,
        generated.row_count()
    );
    assert_eq!(
        count("SELECT count(*) FROM state_group_edges") as usize,
        generated.edge_count()
    );
    assert_eq!(count("SELECT count(*) FROM event_to_state_groups"), 450);
    assert_eq!(count("SELECT last_value FROM state_group_id_seq"), 450);
    // The 5,000-character key made it through the index.
    let long = generator::long_state_key();
    let hits = client
        .query(
            "SELECT count(*) FROM state_groups_state WHERE state_key = $1",
            &[&long],
        )
        .unwrap()[0]
        .get::<_, i64>(0);
    assert!(hits > 0, "no 5,000-character state key stored");
    // Room ids are the hostile ones.
    let rooms = synapse_state::room_ids(&mut client).unwrap();
    assert_eq!(rooms.len(), 3);
    assert!(rooms
        .iter()
        .all(|r| r.contains("'$$\\") && r.contains('\n')));
}

#[test]
fn synapse_query_batched_query_and_model_agree() {
    let db = TestDb::create("readers");
    let mut client = db.client();
    let generated = generate_into(&mut client, &forked_nasty_config(11)).unwrap();

    let model = resolve_all(&generated.structure());
    let synapse = synapse_state::all_states(&mut client, None).unwrap();
    let batched = synapse_state::all_states_batched(&mut client, None).unwrap();
    assert_eq!(synapse.len(), 450);
    if let Some(d) = first_difference(&model, &synapse) {
        panic!("Synapse's query disagrees with the model: {d}");
    }
    if let Some(d) = first_difference(&synapse, &batched) {
        panic!("the batched query disagrees with Synapse's: {d}");
    }
    // Per room and per group too.
    for room in &generated.rooms {
        let per_room = synapse_state::all_states(&mut client, Some(&room.room_id)).unwrap();
        let batched_room =
            synapse_state::all_states_batched(&mut client, Some(&room.room_id)).unwrap();
        assert_eq!(
            per_room.keys().copied().collect::<Vec<_>>(),
            room.group_ids,
            "groups of room {:?}",
            room.room_id
        );
        assert!(per_room == batched_room);
        for (group, state) in &per_room {
            assert_eq!(state, &synapse[group]);
        }
    }
    let last = generated.groups.last().unwrap().id;
    assert_eq!(
        synapse_state::state_of_group(&mut client, last).unwrap(),
        model[&last]
    );
    // A group that does not exist has an empty state (Synapse's reading).
    assert!(synapse_state::state_of_group(&mut client, 999_999)
        .unwrap()
        .is_empty());
}

#[test]
fn chains_end_at_a_group_with_no_rows_and_no_edge() {
    let db = TestDb::create("purged");
    let mut client = db.client();
    let room = "!purged:example.org";
    // Group 2's prev (1) lost its rows and edge, as after a purge.
    let groups = vec![
        generator::group(1, room, None, &[]),
        generator::group(2, room, Some(1), &[("m.room.topic", "", "$t2")]),
        generator::group(3, room, Some(2), &[("m.room.name", "", "$n3")]),
    ];
    write_groups(&mut client, &groups).unwrap();
    let states = synapse_state::all_states(&mut client, Some(room)).unwrap();
    let expected: StateMap = [
        (("m.room.name".into(), "".into()), "$n3".into()),
        (("m.room.topic".into(), "".into()), "$t2".into()),
    ]
    .into_iter()
    .collect();
    assert_eq!(states[&3], expected);
    assert!(states[&1].is_empty());
    assert!(states == synapse_state::all_states_batched(&mut client, Some(room)).unwrap());
}

#[test]
fn invariant_checks_catch_broken_trees() {
    let db = TestDb::create("violations");
    let mut client = db.client();
    let groups = vec![
        generator::group(1, "!a:x", None, &[("t", "k", "$1")]),
        generator::group(2, "!a:x", Some(1), &[("t", "k2", "$2")]),
        generator::group(3, "!b:x", None, &[("t", "k", "$3")]),
    ];
    write_groups(&mut client, &groups).unwrap();
    assert!(violations(&structure::structure(&mut client, None).unwrap()).is_empty());

    client
        .batch_execute(
            "INSERT INTO state_group_edges VALUES (2, 3);
             INSERT INTO state_group_edges VALUES (1, 2);
             INSERT INTO state_groups_state VALUES (3, '!a:x', 't', 'k', '$x');
             INSERT INTO state_groups_state VALUES (1, '!a:x', 't', 'k', '$y');
             INSERT INTO state_groups_state VALUES (9, '!a:x', 't', 'k', '$z');",
        )
        .unwrap();
    let problems = violations(&structure::structure(&mut client, None).unwrap());
    let text = problems.join("\n");
    for expected in [
        "group 2 has 2 edges",
        "group 2 has an edge to 3, which is not a lower id",
        "of room \"!b:x\"",
        "group 1 has an edge to 2, which is not a lower id",
        "group 3 of room \"!b:x\" has a row with room_id \"!a:x\"",
        "group 1 has two rows",
        "group 9 has 0 edge(s) and 1 row(s) but no state_groups row",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Per room, an edge into another room shows as a missing group.
    let room_a = violations(&structure::structure(&mut client, Some("!a:x")).unwrap());
    assert!(room_a
        .iter()
        .any(|p| p.contains("does not exist (or is in another room)")));
}

#[test]
fn test_databases_are_isolated_and_dropped() {
    let name;
    {
        // Declared first, dropped last: still open when `a` is dropped.
        let mut ca;
        let a = TestDb::create("iso_a");
        let b = TestDb::create("iso_b");
        assert_ne!(a.name(), b.name());
        ca = a.client();
        write_groups(&mut ca, &[generator::group(1, "!r:x", None, &[])]).unwrap();
        let n: i64 = b
            .client()
            .query_one("SELECT count(*) FROM state_groups", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        name = a.name().to_string();
        let empty = TestDb::create_empty("iso_empty");
        let tables: i64 = empty
            .client()
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(tables, 0);
    }
    if std::env::var_os("SYNAPSE_TEST_KEEP_DB").is_none() {
        let mut admin = pg::admin_client();
        let left = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .unwrap();
        assert!(left.is_none(), "database {name} was not dropped");
    }
}

fn own_bin(name: &str) -> &'static Path {
    match name {
        "generate" => Path::new(env!("CARGO_BIN_EXE_generate")),
        "state-digest" => Path::new(env!("CARGO_BIN_EXE_state-digest")),
        _ => unreachable!(),
    }
}

#[test]
fn generate_and_state_digest_binaries() {
    let db = TestDb::create("bins");
    let run = tools::run(
        own_bin("generate"),
        &[
            "--url",
            db.url(),
            "--preset",
            "tiny",
            "--rooms",
            "2",
            "--nasty",
        ],
    );
    assert_success(&run);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("room\t!") && lines[0].contains("\tgroups=30\t"));
    assert!(lines[2].starts_with("total\tgroups=60\trows="));
    // A second run continues the ids.
    assert_success(&tools::run(
        own_bin("generate"),
        &["--url", db.url(), "--preset", "tiny", "--seed", "9"],
    ));
    let mut client = db.client();
    let ids = synapse_state::group_ids(&mut client, None).unwrap();
    assert_eq!(ids, (1..=90).collect::<Vec<i64>>());

    let recording = TempPath::new("digest", "txt");
    let digest = |args: &[&str]| {
        let mut all = vec!["--url", db.url()];
        all.extend_from_slice(args);
        tools::run(own_bin("state-digest"), &all)
    };
    assert_success(&digest(&["--out", recording.as_str()]));
    let text = std::fs::read_to_string(recording.path()).unwrap();
    assert_eq!(text.lines().count(), 90);
    // Both methods print the same digests.
    let synapse = digest(&[]);
    let batched = digest(&["--method", "batched"]);
    assert_success(&synapse);
    assert_eq!(synapse.stdout, text);
    assert_eq!(batched.stdout, text);
    let one_room = synapse_state::room_ids(&mut client).unwrap()[0].clone();
    let room_run = digest(&["--room", &one_room]);
    assert_success(&room_run);
    assert!(room_run.stdout.lines().count() < 90);

    let same = digest(&["--compare", recording.as_str()]);
    assert_success(&same);
    assert!(same
        .stdout
        .contains("all 90 state groups have identical state"));

    // Change one group's state: the comparison fails, naming the group.
    client
        .execute(
            "UPDATE state_groups_state SET event_id = event_id || 'x' \
             WHERE state_group = (SELECT min(state_group) FROM state_groups_state)",
            &[],
        )
        .unwrap();
    let changed = digest(&["--compare", recording.as_str()]);
    assert!(!changed.success(), "{}", changed.describe());
    assert!(
        changed
            .stderr
            .starts_with("error: state of group 1 differs"),
        "{}",
        changed.describe()
    );
}
