//! The automatic tool's bar measures the work, not `-n`: its length is
//! about the groups left past the scan position (estimated from the id
//! range and the table's row estimate, without scanning), or what `-n`
//! chunks of `-c` can do when that is less. The bar is hidden without a
//! terminal; the run logs the figures it is built from, checked here
//! against SQL counts.

use compressor_integration_tests::check;
use compressor_integration_tests::generator::{self, GenConfig};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::tools;

const AUTO: &str = "synapse_auto_compressor";

/// The (groups left, at most) of the run's "About N groups left" line.
fn work_line(stderr: &str) -> (i64, i64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("groups left to compress from group"))
        .unwrap_or_else(|| panic!("no work line in\n{stderr}"));
    let numbers: Vec<i64> = line
        .split(|c: char| !c.is_ascii_digit() && c != ',')
        .map(|w| w.replace(',', ""))
        .filter_map(|w| w.parse().ok())
        .collect();
    // "[date] INFO ] About L groups left to compress from group S; this
    // run does at most M (N chunks of C)": the last five numbers.
    let n = numbers.len();
    assert!(n >= 5, "{line}");
    (numbers[n - 5], numbers[n - 3])
}

/// Groups at or past the saved scan position, counted.
fn groups_past_scan(db: &TestDb) -> i64 {
    let mut client = db.client();
    client.batch_execute("ANALYZE state_groups").unwrap();
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('state_compressor_total_progress') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    let scan: i64 = match exists {
        true => client
            .query_one(
                "SELECT lowest_uncompressed_group FROM state_compressor_total_progress",
                &[],
            )
            .unwrap()
            .get(0),
        false => 0,
    };
    client
        .query_one("SELECT count(*) FROM state_groups WHERE id >= $1", &[&scan])
        .unwrap()
        .get(0)
}

#[test]
fn the_bar_counts_the_groups_left_not_the_chunks_asked_for() {
    let config = GenConfig {
        rooms: 3,
        groups_per_room: 300,
        ..GenConfig::default()
    };
    let (db, _) = check::generated_db("work_left", &config);
    db.client().batch_execute("ANALYZE state_groups").unwrap();
    // A run of `chunks` chunks of 100, checked against the groups left
    // before it (counted) and what it may do at most.
    let run = |chunks: &str, most: i64| {
        let expected = groups_past_scan(&db);
        let run = tools::run_bin(AUTO, &["-p", db.url(), "-c", "100", "-n", chunks]);
        tools::assert_success(&run);
        assert_eq!(work_line(&run.stderr), (expected, most), "{}", run.stderr);
        (run, expected)
    };

    // A first run of 2 chunks: 900 groups left, -n allows 200.
    let (_, left) = run("2", 200);
    assert_eq!(left, 900);
    // "Do everything": -n far beyond the work; the length is the groups
    // left past where the first run stopped, not -n × -c.
    let (all, left) = run("100000", 10_000_000);
    assert!(left < 900 && left > 0, "{left}");
    assert!(all.finished_all(), "{}", all.describe());
}

/// Ids with gaps (Synapse deletes groups nobody needs): the id range is
/// scaled by the share of ids in use.
#[test]
fn the_estimate_allows_for_gaps_in_the_ids() {
    let db = TestDb::create("work_left_gaps");
    let room = "!gaps:example.org";
    let groups: Vec<_> = (1..=300)
        .map(|n: i64| {
            let event = format!("$topic{n}");
            let prev = (n > 1).then(|| (n - 1) * 10);
            generator::group(n * 10, room, prev, &[("m.room.topic", "", &event)])
        })
        .collect();
    generator::write_groups(&mut db.client(), &groups).unwrap();
    let expected = groups_past_scan(&db);
    assert_eq!(expected, 300);
    let run = tools::run_bin(AUTO, &["-p", db.url(), "-c", "100", "-n", "1"]);
    tools::assert_success(&run);
    assert_eq!(work_line(&run.stderr), (300, 100), "{}", run.stderr);

    let expected = groups_past_scan(&db);
    let run = tools::run_bin(AUTO, &["-p", db.url(), "-c", "100", "-n", "10"]);
    tools::assert_success(&run);
    let (left, _) = work_line(&run.stderr);
    assert!((left - expected).abs() <= 1, "{left} vs {expected}");
}
