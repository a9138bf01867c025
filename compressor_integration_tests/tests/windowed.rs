//! The manual tool reads a room in windows of groups (to bound its memory);
//! its whole-room path (window `0`, the test knob
//! `SYNAPSE_COMPRESS_STATE_WINDOW`) is the reference. On the property
//! tests' rooms, with windows small enough that many boundaries fall inside
//! predecessor chains and level runs, the `-o` SQL must be byte-identical
//! and the printed figures the same, for whole rooms, bounded ranges,
//! predecessors without a `state_groups` row and the room-wide decisions
//! (`-m`, "would grow").

use compressor_integration_tests::check::COMPRESSOR;
use compressor_integration_tests::generator::generate_into;
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::tools::{assert_success, run_bin_with_env, TempPath};

mod property_rooms;

const WINDOW_ENV: &str = "SYNAPSE_COMPRESS_STATE_WINDOW";

/// Whole room, then windows of 1 group, a few groups and more.
const WINDOWS: &[&str] = &["0", "1", "7", "40"];

/// The SQL file and the printed figures (without the `Time:` line) of one
/// run with windows of `window` groups.
fn run_with_window(db: &TestDb, room: &str, args: &[&str], window: &str) -> (String, String) {
    let sql = TempPath::new("window", "sql");
    let mut all = vec!["-p", db.url(), "-r", room, "-o", sql.as_str()];
    all.extend_from_slice(args);
    let run = run_bin_with_env(COMPRESSOR, &all, &[(WINDOW_ENV, window)]);
    assert_success(&run);
    let figures = run
        .stdout
        .lines()
        .filter(|line| !line.starts_with("Time:"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = std::fs::read_to_string(sql.path()).expect("reading the SQL file");
    (text, figures)
}

/// Asserts every window size gives the whole-room path's output; returns
/// whether that output changes anything.
fn assert_same_for_all_windows(db: &TestDb, room: &str, args: &[&str], context: &str) -> bool {
    let (sql, figures) = run_with_window(db, room, args, WINDOWS[0]);
    for window in &WINDOWS[1..] {
        let (w_sql, w_figures) = run_with_window(db, room, args, window);
        assert_eq!(
            figures, w_figures,
            "{context}, {args:?}: figures differ with windows of {window}"
        );
        assert!(
            sql == w_sql,
            "{context}, {args:?}: the SQL differs with windows of {window} ({} bytes whole, {} windowed)",
            sql.len(),
            w_sql.len()
        );
    }
    sql.contains("INSERT INTO state_group")
}

/// Every room of seeds `seeds`, with the seed's levels, with and without
/// `-t`, and with a `-m` above and below what is saved.
fn run_seeds(seeds: std::ops::Range<u64>) {
    let mut wrote = 0;
    for seed in seeds {
        let cfg = property_rooms::config(seed);
        let levels = property_rooms::levels_of(seed);
        eprintln!("seed {seed}: levels {levels}, {cfg:?}");
        let db = TestDb::create(&format!("window{seed}"));
        let generated = generate_into(&mut db.client(), &cfg).unwrap();
        for room in &generated.rooms {
            let context = format!("seed {seed}, room {}", room.room_id);
            let mut args = vec!["-l", levels];
            if seed % 2 == 0 {
                args.push("-t");
            }
            if assert_same_for_all_windows(&db, &room.room_id, &args, &context) {
                wrote += 1;
            }
            for minimum in ["1", "100000000"] {
                let args = ["-l", levels, "-m", minimum];
                assert_same_for_all_windows(&db, &room.room_id, &args, &context);
            }
        }
    }
    assert!(
        wrote > 0,
        "no room was rewritten: the comparison lost its teeth"
    );
}

#[test]
fn whole_rooms_seeds_0_to_5() {
    run_seeds(0..6);
}

#[test]
fn whole_rooms_seeds_6_to_11() {
    run_seeds(6..12);
}

/// Bounded ranges (`-b`, `-n`, `-s`), and predecessors whose
/// `state_groups` row is gone: outside the range without `-b`, compressed
/// in id order inside a `-b` range (which the windowed path hands to the
/// whole-room one when a later window finds them).
#[test]
fn ranges_and_predecessors_without_a_row() {
    for seed in [3_u64, 8] {
        let mut cfg = property_rooms::config(seed);
        cfg.max_delta_hops = 5;
        let db = TestDb::create(&format!("windowrange{seed}"));
        let mut client = db.client();
        let generated = generate_into(&mut client, &cfg).unwrap();
        let room = &generated.rooms[0];
        let ids = &room.group_ids;
        let (quarter, half) = (
            ids[ids.len() / 4].to_string(),
            ids[ids.len() / 2].to_string(),
        );
        let count = (ids.len() / 3).to_string();
        let context = format!("range seed {seed}");
        for args in [
            vec!["-l", "3,3", "-b", &quarter],
            vec!["-l", "10,5", "-b", &quarter, "-n", &count],
            vec!["-l", "4,4,4", "-s", &half],
        ] {
            assert_same_for_all_windows(&db, &room.room_id, &args, &context);
        }

        // Drop the state_groups rows of a few predecessors: one with another
        // group of the room before its first successor (so a window after
        // its own finds it), and some whose successor is the room's next
        // group.
        let far: Vec<(i64, i64)> = client
            .query(
                "SELECT e.prev_state_group, e.state_group FROM state_group_edges AS e \
                 JOIN state_groups AS g ON g.id = e.state_group WHERE g.room_id = $1 \
                 AND EXISTS (SELECT 1 FROM state_groups AS o WHERE o.room_id = $1 \
                             AND o.id > e.prev_state_group AND o.id < e.state_group) \
                 AND e.state_group = (SELECT min(f.state_group) FROM state_group_edges AS f \
                                      WHERE f.prev_state_group = e.prev_state_group) \
                 ORDER BY 1 LIMIT 1",
                &[&room.room_id],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(
            !far.is_empty(),
            "{context}: no predecessor far from its successor"
        );
        // Past the far one's successor, so none of these is between them.
        let near: Vec<i64> = client
            .query(
                "SELECT e.prev_state_group FROM state_group_edges AS e \
                 JOIN state_groups AS g ON g.id = e.state_group WHERE g.room_id = $1 \
                 AND e.prev_state_group > $2 \
                 AND NOT EXISTS (SELECT 1 FROM state_groups AS o WHERE o.room_id = $1 \
                                 AND o.id > e.prev_state_group AND o.id < e.state_group) \
                 ORDER BY 1 LIMIT 3",
                &[&room.room_id, &far[0].1],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut gone: Vec<i64> = far.iter().map(|f| f.0).chain(near).collect();
        gone.sort_unstable();
        client
            .execute("DELETE FROM state_groups WHERE id = ANY($1)", &[&gone])
            .unwrap();
        let context = format!("range seed {seed}, without the rows of {gone:?}");
        let before_first = (gone[0] - 1).to_string();
        for args in [
            vec!["-l", "3,3"],
            vec!["-l", "3,3", "-b", &before_first],
            vec!["-l", "10,5", "-b", &quarter],
        ] {
            assert_same_for_all_windows(&db, &room.room_id, &args, &context);
        }
        // The case the windows hand to the whole-room path was met.
        let args = ["-p", db.url(), "-r", &room.room_id, "-b", &before_first];
        let run = run_bin_with_env(COMPRESSOR, &args, &[(WINDOW_ENV, "1")]);
        assert_success(&run);
        assert!(
            run.stderr.contains("compressing the room at once"),
            "{context}: the windows did not hand over to the whole-room path\n{}",
            run.describe()
        );
    }
}
