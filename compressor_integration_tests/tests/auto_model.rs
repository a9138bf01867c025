//! The automatic tool against the independent model of its chunk loop
//! ([`auto_model`]): after every run of a sequence (several level lists,
//! chunk sizes below and above the first level, runs continued from saved
//! levels, a different chunk size later on), the tool's edges, rows, saved
//! progress and skipped chunks must be exactly the model's. The runs
//! compare with the model, not with each other, so a bug common to all
//! runs (saved levels ignored, chunks that grow written anyway) fails.
//!
//! Also the mixed-chunk sequence of the reference tool's own test on rooms
//! that lost some `state_groups` rows: like the reference, the tool must
//! rewrite such groups when they lie inside a chunk with a lower bound.

use std::collections::{BTreeMap, BTreeSet};

use compressor_integration_tests::auto_model::{self, AutoModel, RoomProgress};
use compressor_integration_tests::check::{self, assert_same_states, snapshot};
use compressor_integration_tests::generator::{generate, GenConfig, Generated};
use compressor_integration_tests::level_model::{empty_levels, Level};
use compressor_integration_tests::pg::TestDb;
use compressor_integration_tests::structure::{self, Structure};
use compressor_integration_tests::synapse_state;
use compressor_integration_tests::tools::{self, ToolRun};
use compressor_integration_tests::StateMap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const AUTO: &str = "synapse_auto_compressor";

/// Two rooms with short Synapse chains (a snapshot every 10 groups: they
/// compress well) and two with Synapse's 100 hops (long delta chains: small
/// levels make them grow), their groups interleaved by id.
fn mixed_rooms(seed: u64, groups_per_room: usize) -> Generated {
    let part = |seed, max_delta_hops| {
        generate(&GenConfig {
            seed,
            rooms: 2,
            groups_per_room,
            members: 30,
            max_delta_hops,
            ..GenConfig::default()
        })
    };
    let (short, long) = (part(seed, 10), part(seed + 1000, 100));
    // Short groups get odd ids, long ones even ids (order kept in each).
    let renumber = |generated: Generated, offset: i64| {
        let new = |id: i64| (id - 1) * 2 + 1 + offset;
        let mut generated = generated;
        for g in &mut generated.groups {
            g.id = new(g.id);
            g.prev = g.prev.map(new);
        }
        for room in &mut generated.rooms {
            room.group_ids.iter_mut().for_each(|id| *id = new(*id));
        }
        generated
    };
    let (mut all, long) = (renumber(short, 0), renumber(long, 1));
    all.rooms.extend(long.rooms);
    all.groups.extend(long.groups);
    all.groups.sort_by_key(|g| g.id);
    all
}

/// One invocation of the tool: `-c chunk -n number`, `repeat` times (or
/// until it reports nothing left, when `repeat` is `None`).
struct Step {
    chunk: usize,
    number: usize,
    repeat: Option<usize>,
}

fn step(chunk: usize, number: usize, repeat: Option<usize>) -> Step {
    Step {
        chunk,
        number,
        repeat,
    }
}

/// The last groups of the chunks the run says it skipped.
fn skipped_chunks(run: &ToolRun) -> BTreeSet<i64> {
    run.stderr
        .lines()
        .filter(|line| line.contains("would increase the rows"))
        .map(|line| {
            let tail = line
                .rsplit_once("compressing groups up to ")
                .expect("a skip line names its last group")
                .1;
            let number = tail.split(' ').next().unwrap();
            number.parse().expect("a group id")
        })
        .collect()
}

/// The saved progress, as the model keeps it.
fn saved_progress(db: &TestDb) -> (BTreeMap<String, RoomProgress>, i64) {
    let mut client = db.client();
    let mut rooms: BTreeMap<String, RoomProgress> = client
        .query(
            "SELECT room_id, last_compressed FROM state_compressor_progress",
            &[],
        )
        .expect("reading progress")
        .iter()
        .map(|r| {
            (
                r.get(0),
                RoomProgress {
                    last_compressed: r.get(1),
                    levels: Vec::new(),
                },
            )
        })
        .collect();
    for r in client
        .query(
            "SELECT room_id, max_size, current_length, current_head \
             FROM state_compressor_state ORDER BY room_id, level_num",
            &[],
        )
        .expect("reading levels")
    {
        let room: String = r.get(0);
        let progress = rooms.get_mut(&room).expect("levels without progress");
        progress.levels.push(Level {
            max_length: r.get::<_, i32>(1) as usize,
            current_length: r.get::<_, i32>(2) as usize,
            head: r.get(3),
        });
    }
    let scan: i64 = client
        .query_one(
            "SELECT lowest_uncompressed_group FROM state_compressor_total_progress",
            &[],
        )
        .expect("reading the scan position")
        .get(0);
    (rooms, scan)
}

/// Panics naming the first group whose edges or rows differ.
fn assert_same_structure(tool: &Structure, model: &Structure, context: &str) {
    if tool == model {
        return;
    }
    let id = tool
        .keys()
        .chain(model.keys())
        .find(|id| tool.get(id) != model.get(id))
        .copied();
    let show = |s: &Structure| {
        id.and_then(|id| s.get(&id)).map(|g| {
            (
                g.prevs.clone(),
                g.rows.len(),
                g.rows.iter().take(4).cloned().collect::<Vec<_>>(),
            )
        })
    };
    panic!(
        "{context}: the tool's tree differs from the model's, first at group {id:?}\n\
         tool (prevs, row count, first rows): {:?}\nmodel: {:?}",
        show(tool),
        show(model)
    );
}

/// Runs `steps` with `levels` on `db` and after every run asserts that the
/// tool left exactly the model's tree, progress and skipped chunks.
/// Returns the model (its chunks tell what happened).
fn run_against_model(db: &TestDb, levels: &str, steps: &[Step]) -> AutoModel {
    let mut model = AutoModel::new(structure::structure(&mut db.client(), None).unwrap());
    continue_against_model(db, &mut model, levels, steps);
    model
}

/// [`run_against_model`] from where `model` (in step with `db`) stands.
fn continue_against_model(db: &TestDb, model: &mut AutoModel, levels: &str, steps: &[Step]) {
    let sizes: Vec<usize> = levels.split(',').map(|s| s.parse().unwrap()).collect();
    let mut runs = 0;
    for s in steps {
        for _ in 0..s.repeat.unwrap_or(500) {
            let (chunk, number) = (s.chunk.to_string(), s.number.to_string());
            let run = tools::run_bin(
                AUTO,
                &["-p", db.url(), "-l", levels, "-c", &chunk, "-n", &number],
            );
            tools::assert_success(&run);
            runs += 1;
            let context = format!("levels {levels}, run {runs} (-c {chunk} -n {number})");
            let first_chunk = model.chunks.len();
            let model_done = model.run(&sizes, s.chunk, s.number);
            let tool_done = run.finished_all();

            let tool_tree = structure::structure(&mut db.client(), None).unwrap();
            assert_same_structure(&tool_tree, &model.structure, &context);
            assert!(
                !run.stderr.contains("resetting its levels"),
                "{context}: saved levels were reset\n{}",
                run.describe()
            );
            assert_eq!(
                skipped_chunks(&run),
                model.skipped_since(first_chunk),
                "{context}: skipped chunks (by last group) differ from the model's\n{}",
                run.describe()
            );
            let (rooms, scan) = saved_progress(db);
            assert_eq!(rooms, model.rooms, "{context}: saved progress differs");
            assert_eq!(
                scan, model.lowest_uncompressed_group,
                "{context}: scan position"
            );
            assert_eq!(tool_done, model_done, "{context}: finished?");
            if model_done {
                break;
            }
        }
    }
}

/// Asserts the sequence exercised both outcomes of a chunk.
fn assert_skips_and_writes(model: &AutoModel, context: &str) {
    let skipped = model.chunks.iter().filter(|c| c.skipped).count();
    let written = model.chunks.iter().filter(|c| !c.skipped).count();
    assert!(
        skipped > 0 && written > 0,
        "{context}: expected skipped and written chunks, got {skipped} skipped, {written} written"
    );
}

/// Generates `mixed_rooms(seed)`, runs the steps against the model, and
/// checks every group's state with Synapse's query at the start and end.
fn model_case(name: &str, seed: u64, groups: usize, levels: &str, steps: &[Step]) -> AutoModel {
    let db = TestDb::create(name);
    mixed_rooms(seed, groups)
        .write(&mut db.client())
        .expect("writing the rooms");
    let before = snapshot(&mut db.client());
    let model = run_against_model(&db, levels, steps);
    let after = snapshot(&mut db.client());
    assert_same_states(&before.states, &after.states, name);
    model
}

#[test]
fn default_levels_with_chunks_below_and_above_the_first_level() {
    let model = model_case(
        "automodel_default",
        41,
        130,
        "100,50,25",
        &[step(7, 3, Some(4)), step(40, 3, None)],
    );
    assert!(model.chunks.iter().any(|c| !c.skipped));
}

#[test]
fn levels_3_3_with_tiny_chunks_then_bigger_ones() {
    let model = model_case(
        "automodel_3_3",
        42,
        60,
        "3,3",
        &[step(2, 3, Some(6)), step(10, 4, None)],
    );
    assert_skips_and_writes(&model, "levels 3,3");
}

#[test]
fn single_level_10_in_chunks_of_25() {
    let model = model_case("automodel_10", 43, 90, "10", &[step(25, 3, None)]);
    assert_skips_and_writes(&model, "levels 10");
}

#[test]
fn levels_5_2_2_with_chunk_sizes_changing_between_runs() {
    let model = model_case(
        "automodel_5_2_2",
        44,
        80,
        "5,2,2",
        &[step(7, 3, Some(3)), step(2, 4, Some(3)), step(500, 3, None)],
    );
    assert_skips_and_writes(&model, "levels 5,2,2");
}

// ---------------------------------------------------------------------------
// Groups without a `state_groups` row

/// `cfg`'s rooms, where every other room lost the `state_groups` row of
/// about one group in `one_in` (its rows and edge kept): what a partial
/// deletion leaves behind. Returns the groups that lost it.
fn partly_deleted(db: &TestDb, cfg: &GenConfig, one_in: u32) -> Vec<i64> {
    let generated = generate(cfg);
    generated
        .write(&mut db.client())
        .expect("writing the rooms");
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let victims: Vec<i64> = generated
        .rooms
        .iter()
        .step_by(2)
        .flat_map(|room| room.group_ids.iter().copied())
        .filter(|_| rng.random_range(0..one_in) == 0)
        .collect();
    db.client()
        .execute(
            "DELETE FROM event_to_state_groups WHERE state_group = ANY($1)",
            &[&victims],
        )
        .expect("dropping their events");
    db.client()
        .execute("DELETE FROM state_groups WHERE id = ANY($1)", &[&victims])
        .expect("dropping their state_groups rows");
    victims
}

/// Every group's state (those without a `state_groups` row too), read
/// with Synapse's query.
fn states_of_all(db: &TestDb) -> BTreeMap<i64, StateMap> {
    let mut client = db.client();
    let ids: Vec<i64> = structure::structure(&mut client, None)
        .unwrap()
        .into_keys()
        .collect();
    let mut states = BTreeMap::new();
    synapse_state::for_each_state_synapse(&mut client, &ids, |id, state| {
        states.insert(id, state);
    })
    .expect("reading states");
    states
}

/// Runs `steps` with `levels` on `cfg`'s rooms, partly deleted, against
/// the model; then checks every group's state with Synapse's query, and
/// that groups without a `state_groups` row were rewritten. Returns the
/// model and the groups that lost their row.
fn partly_deleted_case(
    name: &str,
    cfg: &GenConfig,
    one_in: u32,
    levels: &str,
    steps: &[Step],
) -> (AutoModel, BTreeSet<i64>) {
    let db = TestDb::create(name);
    let victims: BTreeSet<i64> = partly_deleted(&db, cfg, one_in).into_iter().collect();
    // Before: resolved in memory (Synapse's rule, from the stored tree),
    // as Synapse's query takes long on uncompressed chains; after:
    // Synapse's query, for every group.
    let before = structure::resolve_all(&structure::structure(&mut db.client(), None).unwrap());
    let model = run_against_model(&db, levels, steps);
    assert_same_states(&before, &states_of_all(&db), name);
    let rewritten = model
        .chunks
        .iter()
        .filter(|c| !c.skipped)
        .flat_map(|c| c.in_range.intersection(&victims))
        .count();
    assert!(
        rewritten > 0,
        "{name}: no group without a state_groups row was inside a written chunk"
    );
    (model, victims)
}

/// The reference tool's "continues where it left off with mixed chunk
/// sizes", on rooms that lost some `state_groups` rows (the runs after the
/// fifth find little or nothing left, as in the reference's scenario).
#[test]
fn mixed_chunk_sizes_on_partly_deleted_rooms_match_the_model() {
    let cfg = GenConfig {
        seed: 45,
        rooms: 40,
        groups_per_room: 70,
        members: 30,
        max_delta_hops: 40,
        ..GenConfig::default()
    };
    partly_deleted_case(
        "automodel_partly_deleted",
        &cfg,
        8,
        "100,50,25",
        &[
            step(8, 40, Some(1)),
            step(100, 30, Some(1)),
            step(1, 20, Some(1)),
            step(5, 50, Some(1)),
            step(50, 60, Some(1)),
            step(500, 100, None),
        ],
    );
}

/// A saved level head that then loses its `state_groups` row (rows and
/// edge kept) is still read as Synapse reads it: the room continues from
/// its saved levels, as the reference tool does, instead of resetting them.
#[test]
fn a_level_head_without_a_state_groups_row_is_continued_from() {
    let db = TestDb::create("automodel_rowless_head");
    mixed_rooms(48, 60)
        .write(&mut db.client())
        .expect("writing the rooms");
    let mut model = AutoModel::new(structure::structure(&mut db.client(), None).unwrap());
    continue_against_model(&db, &mut model, "10,5", &[step(25, 1, Some(1))]);
    let chunk = model.chunks[0].clone();
    assert!(!chunk.skipped, "the first chunk should be written");
    let progress = &model.rooms[&chunk.room_id];
    let head = progress.levels[0].head.expect("a level head");
    db.client()
        .batch_execute(&format!(
            "DELETE FROM event_to_state_groups WHERE state_group = {head}; \
             DELETE FROM state_groups WHERE id = {head};"
        ))
        .expect("dropping the head's state_groups row");
    let info = model.structure.get_mut(&head).unwrap();
    (info.room_id, info.event_id) = (None, None);

    continue_against_model(&db, &mut model, "10,5", &[step(25, 2, None)]);
    let next = model
        .chunks
        .iter()
        .find(|c| c.room_id == chunk.room_id && c.after == Some(chunk.last))
        .expect("the room's next chunk");
    assert!(next.levels_before[0].head == Some(head) && !next.skipped);
}

/// The manual tool with `-b` on such a room rewrites them too.
#[test]
fn manual_tool_with_a_lower_bound_on_a_partly_deleted_room_matches_the_model() {
    let db = TestDb::create("automodel_manual_partly");
    let cfg = GenConfig {
        seed: 46,
        rooms: 2,
        groups_per_room: 200,
        members: 30,
        max_delta_hops: 10,
        ..GenConfig::default()
    };
    let victims = partly_deleted(&db, &cfg, 8);
    let before = structure::structure(&mut db.client(), None).unwrap();
    let states = states_of_all(&db);
    let victim = victims.iter().find(|v| !before[v].rows.is_empty()).unwrap();
    let room = before[victim].rows[0].room_id.clone();
    let room_ids: Vec<i64> = before
        .iter()
        .filter(|(_, g)| g.room_id.as_deref() == Some(room.as_str()))
        .map(|(&id, _)| id)
        .collect();
    let min = room_ids[20];

    let mut levels = empty_levels(&[100, 50, 25]);
    let chunk = auto_model::plan_chunk(&before, &room, Some(min), 150, &mut levels).unwrap();
    assert!(
        !chunk.skipped,
        "the chunk should compress ({} -> {} rows)",
        chunk.outcome.rows_before, chunk.outcome.rows_after
    );
    assert!(
        chunk.in_range.iter().any(|id| before[id].room_id.is_none()),
        "no group without a state_groups row inside the range"
    );
    let mut expected = before.clone();
    auto_model::apply(&mut expected, &room, &chunk.outcome);

    let (min, count) = (min.to_string(), "150".to_string());
    check::compress_ok(db.url(), &["-r", &room, "-b", &min, "-n", &count, "-c"]);
    let after = structure::structure(&mut db.client(), None).unwrap();
    assert_same_structure(&after, &expected, "manual -b");
    assert_same_states(&states, &states_of_all(&db), "manual -b");

    // The guarded SQL file rewrites them too: such groups and bases cannot
    // be found in state_groups, so their blocks check edges and rows only.
    for transactions in [false, true] {
        let twin = TestDb::create("automodel_manual_partly_sql");
        assert_eq!(partly_deleted(&twin, &cfg, 8), victims);
        let sql = tools::TempPath::new("partly_deleted", "sql");
        let mut args = vec![
            "-r",
            room.as_str(),
            "-b",
            &min,
            "-n",
            &count,
            "-o",
            sql.as_str(),
        ];
        if transactions {
            args.push("-t");
        }
        check::compress_ok(twin.url(), &args);
        check::apply_sql(twin.url(), sql.path());
        let applied = structure::structure(&mut twin.client(), None).unwrap();
        assert_same_structure(
            &applied,
            &expected,
            &format!("manual -b -o (-t: {transactions})"),
        );
    }
}
