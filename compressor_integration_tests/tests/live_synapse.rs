//! The tools beside a live Synapse: while they run (over and over, in small
//! chunks), another thread imitates Synapse 1.124+ on the same database
//! ([`synapse_imitation`]): it appends groups on top of existing ones (with
//! Synapse's `FOR KEY SHARE` lock and pending-deletion bump), marks groups
//! for deletion and deletes them with Synapse's protocol (lock `FOR UPDATE`,
//! re-check the sequence number and `state_groups_persisting`, de-delta the
//! survivors), purges a room, and reads states with Synapse's query,
//! comparing each with what it must be.
//!
//! Afterwards the database must hold exactly the groups that must exist,
//! each resolving (Synapse's query) to exactly its state, with the tree's
//! invariants intact. The imitator does a bounded number of operations and
//! is stopped through a channel; nothing waits on a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use compressor_integration_tests::check::{self, COMPRESSOR};
use compressor_integration_tests::generator::GenConfig;
use compressor_integration_tests::level_model;
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::synapse_imitation::{
    expectations_of, verify_database, Imitator, ImitatorConfig, ImitatorStats,
};
use compressor_integration_tests::tools::{self, ToolRun};

const AUTO: &str = "synapse_auto_compressor";

/// Most operations the imitator does in one test run.
const MAX_OPS: usize = 1_500;
/// Tool runs while the imitator works (it is stopped after these).
const RUNS_BESIDE: usize = 14;

#[derive(Clone, Copy, Debug)]
enum Tool {
    /// `synapse_auto_compressor -c CHUNK -n CHUNKS`, run repeatedly.
    Auto {
        chunk: &'static str,
        chunks: &'static str,
    },
    /// `synapse_compress_state -r ROOM -l LEVELS -c`, one room per run, in turn.
    Manual { levels: &'static str },
}

/// Six rooms that compress well.
fn config(seed: u64) -> GenConfig {
    GenConfig::compressible(seed, 6, 150)
}

/// Groups Synapse changed under the tool, as the tool reports them. A
/// conflict must never surface as a raw database error; the only place it
/// may be named is the warning of a write batch rolled back and tried
/// again, which is how the tool handles it.
fn live_skips(run: &ToolRun) -> usize {
    for line in run.stderr.lines() {
        for bad in ["duplicate key", "constraint", "deadlock"] {
            assert!(
                !line.contains(bad) || line.ends_with("; trying the batch again"),
                "{}",
                run.describe()
            );
        }
    }
    run.stderr
        .matches("since it was loaded; leaving it as it is")
        .count()
}

/// One run of `tool`; `turn` picks the room for the manual tool. Returns
/// the run, which must have succeeded (or, for the manual tool, failed only
/// because its room was purged meanwhile).
fn run_tool(db: &TestDb, tool: Tool, rooms: &[String], turn: usize) -> ToolRun {
    match tool {
        Tool::Auto { chunk, chunks } => {
            // The previous run's session (and so its advisory lock) can
            // outlive its process for a moment on a busy server: the tool
            // then exits 75. Reported; tolerated here, a bounded number of
            // times.
            for _ in 0..50 {
                // Debug lines say when a chunk continues from its room's
                // carried groups (counted in `carried_chunks`).
                let run = tools::run_bin_with_env(
                    AUTO,
                    &["-p", db.url(), "-c", chunk, "-n", chunks],
                    &[("RUST_LOG", "synapse_auto_compressor=debug")],
                );
                if run.status.code() == Some(75) {
                    eprintln!(
                        "exit 75 right after the previous run: {}",
                        run.stderr.trim()
                    );
                    continue;
                }
                tools::assert_success(&run);
                return run;
            }
            panic!("the run lock was never released");
        }
        Tool::Manual { levels } => {
            let room = &rooms[turn % rooms.len()];
            let run = tools::run_bin(
                COMPRESSOR,
                &["-p", db.url(), "-r", room, "-l", levels, "-c"],
            );
            if !run.success() {
                tools::assert_user_error(&run);
                assert!(
                    run.error_lines()[0].contains("has no state groups"),
                    "the manual tool failed beside Synapse\n{}",
                    run.describe()
                );
            }
            run
        }
    }
}

struct Outcome {
    stats: ImitatorStats,
    runs: usize,
    skipped_by_tool: usize,
    /// Chunks the automatic tool loaded with their room's carried groups
    /// (the new structure its chunk before left, kept in memory).
    carried_chunks: usize,
    groups_checked: usize,
    orphans: usize,
}

/// The lines of `logs` (run by run) that name a group some problem
/// names, at most 60.
fn lines_naming(logs: &[String], problems: &[String]) -> String {
    let groups: BTreeSet<String> = problems
        .iter()
        .flat_map(|p| p.split(|c: char| !c.is_ascii_digit()))
        .filter(|w| w.len() >= 2)
        .map(str::to_owned)
        .collect();
    let names = |line: &str| {
        line.split(|c: char| !c.is_ascii_digit())
            .any(|w| groups.contains(w))
    };
    logs.iter()
        .enumerate()
        .flat_map(|(run, log)| {
            log.lines()
                .filter(|l| names(l))
                .map(move |l| format!("run {run}: {l}"))
        })
        .take(60)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Chunks of `run` that continued from carried groups.
fn carried_chunks(run: &ToolRun) -> usize {
    run.stderr.matches("continues from the carried").count()
}

/// Runs `tool` beside the imitator (`de_delta`: whether it deletes groups
/// others are built on, rewriting those) and checks every group.
fn beside_synapse(seed: u64, tool: Tool, de_delta: bool) -> Outcome {
    let (db, generated) = check::generated_db(&format!("live_{seed}"), &config(seed));
    let rooms: Vec<String> = generated.rooms.iter().map(|r| r.room_id.clone()).collect();
    let imitator = Imitator::new(
        db.client(),
        expectations_of(&generated),
        ImitatorConfig {
            seed,
            max_delta_hops: 10,
            de_delta,
            ..ImitatorConfig::default()
        },
    );

    let (stop, stopped) = mpsc::channel::<()>();
    let synapse = thread::spawn(move || imitator.run(MAX_OPS, stopped));
    let mut runs = 0;
    let mut skipped_by_tool = 0;
    let mut carried = 0;
    // Every run's log, to show what the tool did with a group a failure
    // names.
    let mut logs: Vec<String> = Vec::new();
    while runs < RUNS_BESIDE && !synapse.is_finished() {
        let run = run_tool(&db, tool, &rooms, runs);
        skipped_by_tool += live_skips(&run);
        carried += carried_chunks(&run);
        logs.push(run.stderr);
        runs += 1;
    }
    let _ = stop.send(());
    let imitator = synapse
        .join()
        .expect("the imitator panicked")
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));

    // Synapse is quiet now: let the tool finish the database.
    let mut finished = false;
    for turn in 0..300 {
        let run = run_tool(&db, tool, &rooms, runs + turn);
        skipped_by_tool += live_skips(&run);
        carried += carried_chunks(&run);
        runs += 1;
        logs.push(run.stderr.clone());
        finished = match tool {
            Tool::Auto { .. } => run.finished_all(),
            Tool::Manual { .. } => turn + 1 >= rooms.len(),
        };
        if finished {
            break;
        }
    }
    assert!(finished, "seed {seed}: the tool never finished");

    let stats = imitator.stats.clone();
    assert!(
        imitator.problems.is_empty(),
        "seed {seed}: Synapse read wrong states while the tool ran ({} cases):\n{}\n{stats:?}",
        imitator.problems.len(),
        imitator.problems[..imitator.problems.len().min(5)].join("\n")
    );
    let verification = verify_database(&mut db.client(), imitator.expected(), imitator.removed())
        .expect("verifying the database");
    assert!(
        verification.problems.is_empty(),
        "seed {seed}: {} problem(s) after compressing beside Synapse:\n{}\n{stats:?}\n\
         the tool's lines naming those groups:\n{}",
        verification.problems.len(),
        verification.problems[..verification.problems.len().min(10)].join("\n"),
        lines_naming(&logs, &verification.problems)
    );
    assert_eq!(verification.groups_checked, imitator.expected().len());
    if !verification.orphaned_groups.is_empty() {
        eprintln!(
            "seed {seed}: rows or edges left for {} purged group(s): {:?}",
            verification.orphaned_groups.len(),
            &verification.orphaned_groups[..verification.orphaned_groups.len().min(10)]
        );
    }
    // The run must have done real work on both sides.
    assert!(
        stats.appended_deltas + stats.appended_snapshots > 20,
        "seed {seed}: {stats:?}"
    );
    assert!(stats.deleted > 0, "seed {seed}: {stats:?}");
    assert_eq!(stats.de_deltas > 0, de_delta, "seed {seed}: {stats:?}");
    eprintln!(
        "seed {seed} {tool:?}: {runs} tool runs, {skipped_by_tool} groups left alone by the tool, \
         {carried} chunks continued from carried groups, {} groups checked; imitator: {stats:?}",
        verification.groups_checked
    );
    Outcome {
        stats,
        runs,
        skipped_by_tool,
        carried_chunks: carried,
        groups_checked: verification.groups_checked,
        orphans: verification.orphaned_groups.len(),
    }
}

fn report(name: &str, outcomes: &[Outcome]) {
    let sum = |f: &dyn Fn(&Outcome) -> usize| outcomes.iter().map(f).sum::<usize>();
    eprintln!(
        "{name}: {} seeds, {} tool runs, {} groups checked, {} appended, {} deleted, \
         {} de-deltas, {} deletions called off by a bump, {} purged groups, {} reads, \
         {} groups left alone by the tool, {} chunks continued from carried groups, \
         {} orphaned purged groups",
        outcomes.len(),
        sum(&|o| o.runs),
        sum(&|o| o.groups_checked),
        sum(&|o| o.stats.appended_deltas + o.stats.appended_snapshots),
        sum(&|o| o.stats.deleted),
        sum(&|o| o.stats.de_deltas),
        sum(&|o| o.stats.deletions_called_off_bumped),
        sum(&|o| o.stats.purged_groups),
        sum(&|o| o.stats.reads),
        sum(&|o| o.skipped_by_tool),
        sum(&|o| o.carried_chunks),
        sum(&|o| o.orphans),
    );
}

const AUTO_SMALL_CHUNKS: Tool = Tool::Auto {
    chunk: "30",
    chunks: "2",
};
const AUTO_LONG_RUNS: Tool = Tool::Auto {
    chunk: "30",
    chunks: "12",
};
const MANUAL: Tool = Tool::Manual { levels: "10,10" };

/// Runs `tool` beside the imitator for each seed and reports the outcomes
/// under `title`.
fn beside_synapse_for(
    seeds: std::ops::RangeInclusive<u64>,
    tool: Tool,
    de_delta: bool,
    title: &str,
) -> Vec<Outcome> {
    let outcomes: Vec<Outcome> = seeds
        .map(|seed| beside_synapse(seed, tool, de_delta))
        .collect();
    report(title, &outcomes);
    outcomes
}

#[test]
fn auto_tool_beside_a_live_synapse() {
    beside_synapse_for(
        1..=3,
        AUTO_SMALL_CHUNKS,
        false,
        "auto tool beside Synapse (deleting leaves)",
    );
}

/// Runs of many chunks: a room's later chunks in a run continue from the
/// groups its chunk before left (`carry`), while Synapse deletes and
/// de-deltas groups, those carried included, between them.
#[test]
fn auto_tool_beside_a_live_synapse_over_long_runs() {
    let outcomes = beside_synapse_for(
        5..=7,
        AUTO_LONG_RUNS,
        true,
        "auto tool beside Synapse (de-deltaing), 12 chunks a run",
    );
    let carried: usize = outcomes.iter().map(|o| o.carried_chunks).sum();
    assert!(carried > 0, "no chunk continued from carried groups");
}

#[test]
fn manual_tool_beside_a_live_synapse() {
    beside_synapse_for(
        11..=12,
        MANUAL,
        false,
        "manual tool beside Synapse (deleting leaves)",
    );
}

#[test]
fn auto_tool_beside_a_live_synapse_that_de_deltas() {
    beside_synapse_for(
        1..=4,
        AUTO_SMALL_CHUNKS,
        true,
        "auto tool beside Synapse (de-deltaing)",
    );
}

#[test]
fn manual_tool_beside_a_live_synapse_that_de_deltas() {
    beside_synapse_for(
        11..=13,
        MANUAL,
        true,
        "manual tool beside Synapse (de-deltaing)",
    );
}

// ---------------------------------------------------------------------------
// Interleavings pinned down with locks: the test holds a lock the tool's
// next statement needs, waits until the tool waits for it, then lets
// Synapse's change commit.

/// The tool's connection name in `pg_stat_activity`, one per test: the
/// tests run in parallel, and the automatic tool opens two connections.
fn victim(test: &str) -> String {
    format!("race_victim_{test}")
}

/// Whether one of the tool's connections (named `name`) waits for a lock in
/// a statement `wanted` accepts.
fn victim_waits(watcher: &mut postgres::Client, name: &str, wanted: &dyn Fn(&str) -> bool) -> bool {
    watcher
        .query(
            "SELECT query FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'active' AND wait_event_type = 'Lock'",
            &[&name],
        )
        .expect("reading pg_stat_activity")
        .iter()
        .any(|row| wanted(row.get(0)))
}

/// Starts the tool and waits (bounded polling of `pg_stat_activity`, no
/// clock) until it waits for a lock in a statement `wanted` accepts: with
/// the test holding that lock, this pins the tool at that statement while
/// Synapse's change goes through. The flag is false if the tool ended (or
/// never blocked) first.
fn start_and_wait_until_blocked(
    command: &mut Command,
    watcher: &mut postgres::Client,
    name: &str,
    wanted: &dyn Fn(&str) -> bool,
) -> (Child, bool) {
    let mut tool = command.spawn().expect("starting the tool");
    for _ in 0..200_000 {
        if tool.try_wait().expect("polling the tool").is_some() {
            return (tool, false);
        }
        if victim_waits(watcher, name, wanted) {
            return (tool, true);
        }
    }
    (tool, false)
}

/// Synapse's deletion of `collection` (its transaction starting with
/// `first`), with the tool started inside it and the deletion going on once
/// the tool (connection name `name`) waits as `wanted` says. Whether the
/// deletion went through at that moment, and the tool's output.
fn delete_while_tool_waits(
    imitator: &mut Imitator,
    collection: &BTreeMap<i64, i64>,
    first: &str,
    command: &mut Command,
    name: &str,
    wanted: impl Fn(&str) -> bool,
    watcher: &mut postgres::Client,
) -> (bool, std::process::Output) {
    let mut tool = None;
    let mut gate = || {
        let (child, blocked) = start_and_wait_until_blocked(command, watcher, name, &wanted);
        tool = Some(child);
        blocked
    };
    let deleted = imitator
        .delete_collection_gated(collection, first, &mut gate)
        .expect("deleting");
    let output = tool
        .expect("the tool was started")
        .wait_with_output()
        .expect("waiting for the tool");
    (deleted, output)
}

/// The tool loads groups `> b` of a room with `-b b`; Synapse deletes
/// group `p = b` (the predecessor of `b + 1`, out of the range) and de-deltas
/// the groups built on it after the tool's load has taken its snapshot (with
/// the range's ids) and before it reads any edge or row. The tool then works
/// on the structure as it was, and writes after Synapse has removed p and
/// rewritten p's children. Every group must keep its state.
///
/// (Before loads ran in one snapshot, the deletion landed between the
/// range's rows and the predecessors' and gave wrong states; a snapshot
/// makes that window the same as this one.)
fn deletion_between_range_and_predecessors(seed: u64, auto: bool) {
    let (db, generated) = check::generated_db(
        &format!("race_load_{seed}"),
        &GenConfig {
            seed,
            rooms: 1,
            groups_per_room: 1_200,
            members: 150,
            max_delta_hops: 10,
            ..GenConfig::default()
        },
    );
    let room = generated.rooms[0].room_id.clone();
    let mut client = db.client();
    // The first group after the middle that is a delta on its predecessor.
    let (g, p): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT state_group, prev_state_group FROM state_group_edges \
                 WHERE state_group > 600 AND prev_state_group = state_group - 1 \
                 ORDER BY state_group LIMIT 1",
                &[],
            )
            .expect("finding a delta");
        (row.get(0), row.get(1))
    };
    let mut imitator = Imitator::new(
        db.client(),
        expectations_of(&generated),
        ImitatorConfig::default(),
    );
    imitator.mark_for_deletion(&[p], false).unwrap();
    let collection = imitator.collect_for_deletion(&[p]).unwrap();

    let name = victim(if auto { "auto_load" } else { "manual_load" });
    let url = format!("{}?application_name={name}", db.url());
    let b = p.to_string();
    let mut command = if auto {
        // Levels saved as if an earlier run compressed the room up to p,
        // with a head that is not p (so p is only a predecessor).
        client
            .batch_execute(&format!(
                "CREATE TABLE state_compressor_state (room_id TEXT NOT NULL, level_num INT NOT NULL,
                     max_size INT NOT NULL, current_length INT NOT NULL, current_head BIGINT,
                     UNIQUE (room_id, level_num));
                 CREATE TABLE state_compressor_progress (room_id TEXT PRIMARY KEY,
                     last_compressed BIGINT NOT NULL);
                 CREATE TABLE state_compressor_total_progress (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,
                     lowest_uncompressed_group BIGINT NOT NULL, CHECK (Lock='X'));
                 INSERT INTO state_compressor_total_progress (lowest_uncompressed_group) VALUES ({p});"
            ))
            .unwrap();
        client
            .execute(
                "INSERT INTO state_compressor_progress VALUES ($1, $2)",
                &[&room, &p],
            )
            .unwrap();
        let mut command = Command::new(tools::bin_path(AUTO));
        command.args(["-p", &url, "-c", "600", "-n", "1"]);
        command
    } else {
        let mut command = Command::new(tools::bin_path(COMPRESSOR));
        command.args(["-p", &url, "-r", &room, "-b", &b, "-c"]);
        command
    };
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Synapse's deletion holds the edges table from the start of its
    // transaction; the tool is started then, takes its snapshot with its
    // first read (the range's ids) and waits at its first read of edges.
    // The tool's check that the tables are free is skipped: it would wait
    // before reading anything, where the race is with a lock taken just
    // after that check.
    command.env("FAILPOINTS", "lock-wait::skip=return");
    // Synapse then deletes p and de-deltas its children, and commits: the
    // tool goes on reading the structure as it was before the deletion.
    let (caught, output) = delete_while_tool_waits(
        &mut imitator,
        &collection,
        "LOCK TABLE state_group_edges IN ACCESS EXCLUSIVE MODE",
        &mut command,
        &name,
        |q| q.contains("FROM state_group_edges"),
        &mut db.client(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        caught,
        "the tool never waited at its read of edges\n{stderr}"
    );
    assert!(output.status.success(), "{stderr}");
    assert_eq!(imitator.stats.deleted, 1, "{:?}", imitator.stats);
    assert!(imitator.stats.de_deltas >= 1, "{:?}", imitator.stats);
    let verification =
        verify_database(&mut client, imitator.expected(), imitator.removed()).expect("verifying");
    assert!(
        verification.problems.is_empty(),
        "group {p} (predecessor of {g}) deleted while the tool loaded groups > {p}: {} group(s) \
         wrong afterwards:\n{}\n--- tool stderr ---\n{stderr}",
        verification.problems.len(),
        verification.problems[..verification.problems.len().min(4)].join("\n")
    );
}

#[test]
fn manual_tool_predecessor_deleted_while_loading() {
    deletion_between_range_and_predecessors(5, false);
}

#[test]
fn auto_tool_predecessor_deleted_while_loading() {
    deletion_between_range_and_predecessors(6, true);
}

// ---------------------------------------------------------------------------
// Another interleaving: Synapse de-deltas a group while the tool rewrites it.

/// Synapse deletes group `x` and so rewrites its child `g` as a snapshot,
/// while the manual tool rewrites `g` onto a new base: Synapse has locked
/// `x`, read `g`'s state and is about to write when the tool, having
/// re-checked `g` (still unchanged), deleted its rows and is copying the new
/// ones. Synapse's delete of `g`'s rows waits for the tool's transaction,
/// cannot see the rows the tool inserts, then removes the tool's new edge
/// and adds the full state: `g` keeps its state, but holds the tool's delta
/// rows twice (the tool never locked `x`, the group Synapse serialises on).
#[test]
fn manual_tool_rewrites_a_group_synapse_de_deltas() {
    let (db, generated) = check::generated_db(
        "race_de_delta",
        &GenConfig {
            seed: 8,
            rooms: 1,
            groups_per_room: 1_200,
            members: 150,
            max_delta_hops: 10,
            ..GenConfig::default()
        },
    );
    let room = generated.rooms[0].room_id.clone();
    let before = generated.structure();
    // What the tool will write (the first batch: the first 500 changes).
    let in_range: BTreeSet<i64> = generated.rooms[0].group_ids.iter().copied().collect();
    let outcome = level_model::compress(&before, &in_range, &[100, 50, 25]);
    let changed: Vec<i64> = outcome
        .new
        .iter()
        .filter(|(id, e)| before[id].prev() != e.prev || before[id].delta() != e.delta)
        .map(|(id, _)| *id)
        .collect();
    let first_batch: BTreeSet<i64> = changed.iter().take(500).copied().collect();
    let new_bases: BTreeSet<i64> = first_batch
        .iter()
        .filter_map(|id| outcome.new[id].prev)
        .collect();
    // g: rewritten in the first batch onto another base; x: its prev, which
    // the tool neither rewrites nor builds on there (it would wait for
    // Synapse's lock on x).
    let (g, x) = first_batch
        .iter()
        .filter_map(|&g| {
            let x = before[&g].prev()?;
            let movable = outcome.new[&g].prev != Some(x)
                && !first_batch.contains(&x)
                && !new_bases.contains(&x)
                && g > 100;
            movable.then_some((g, x))
        })
        .next()
        .expect("a group to race on");

    let mut imitator = Imitator::new(
        db.client(),
        expectations_of(&generated),
        ImitatorConfig::default(),
    );
    imitator.mark_for_deletion(&[x], false).unwrap();
    let collection = imitator.collect_for_deletion(&[x]).unwrap();

    let name = victim("de_delta");
    let url = format!("{}?application_name={name}", db.url());
    let mut command = Command::new(tools::bin_path(COMPRESSOR));
    command
        .args(["-p", &url, "-r", &room, "-c"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Synapse's deletion locks x (FOR UPDATE) and reads g's state; the tool
    // is started then, loads, and waits when its write locks the groups it
    // touches, x among them (g's current predecessor). Synapse then deletes
    // x, de-deltas g and commits; the tool must notice and leave g alone.
    let (deleted, output) = delete_while_tool_waits(
        &mut imitator,
        &collection,
        "",
        &mut command,
        &name,
        |q| q.contains("FOR KEY SHARE"),
        &mut db.client(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        deleted,
        "the tool never waited for Synapse's lock\n{stderr}"
    );
    assert!(output.status.success(), "{stderr}");
    assert!(imitator.stats.de_deltas >= 1, "{:?}", imitator.stats);
    let verification = verify_database(&mut db.client(), imitator.expected(), imitator.removed())
        .expect("verifying");
    assert!(
        verification.problems.is_empty(),
        "group {g} rewritten by the tool while Synapse deleted its prev {x}: {} problem(s):\n{}",
        verification.problems.len(),
        verification.problems[..verification.problems.len().min(6)].join("\n")
    );
}
