//! The write's re-checks, driven through the library so that the database
//! can be changed between loading and writing, at exactly that moment.

use std::str::FromStr;

use compressor_integration_tests::check::{self, assert_same_states, small_db, snapshot};
use compressor_integration_tests::synapse_state::state_of_group;
use synapse_compress_state::core::group::changed_groups;
use synapse_compress_state::core::state_map::Symbols;
use synapse_compress_state::db::{self, load, write};
use synapse_compress_state::{compress, Compressed, GroupMap, Level, LevelSizes};

/// A room's groups loaded and compressed as the tools do, to be written
/// once the test has changed the database under them.
struct Case {
    room: String,
    symbols: Symbols,
    original: GroupMap,
    report: load::LoadReport,
    compressed: Compressed,
    /// The groups the compression changed.
    changed: Vec<i64>,
}

impl Case {
    /// Loads `ids` of `room` (and the heads `extra`) and compresses them
    /// on top of `levels`.
    fn new(
        client: &mut postgres::Client,
        room: &str,
        ids: &[i64],
        extra: &[i64],
        levels: Vec<Level>,
    ) -> Self {
        let mut symbols = Symbols::new();
        let (original, report) =
            load::load_groups(client, &mut symbols, room, ids, extra, &mut |_| {}).expect("load");
        let compressed = compress(&original, levels).expect("compress");
        let changed = changed_groups(&original, &compressed.changes);
        Self {
            room: room.to_owned(),
            symbols,
            original,
            report,
            compressed,
            changed,
        }
    }

    fn rewrite(&self) -> write::Rewrite<'_> {
        write::Rewrite {
            room_id: &self.room,
            room_of: None,
            symbols: &self.symbols,
            original: &self.original,
            new: &self.compressed.changes,
        }
    }

    /// Writes the changed groups as the tools do.
    fn write(&self, client: &mut postgres::Client) -> write::WriteReport {
        self.rewrite()
            .write(client, &self.changed, &mut |_| true, None)
            .expect("writing")
    }

    /// Writes the changed groups as the manual tool does by default, on two
    /// connections with a batch in flight on each.
    fn write_pipelined(&self, url: &str, client: &mut postgres::Client) -> write::WriteReport {
        let mut second = db::connect(url).expect("connecting");
        self.rewrite()
            .write_pipelined(&mut [client, &mut second], &self.changed, &mut |_, _| true)
            .expect("writing")
    }
}

/// A group whose rows Synapse rewrote without touching its edge (here: its
/// delta replaced by its full state, which keeps its state) must be left as
/// it is, and every other group written, with all states unchanged. The
/// write counts the rows it deletes; here they do not add up, so the batch
/// is rolled back and written again counting each group's. On one
/// connection, and on two with the victim in a later batch (so the batch
/// after it is in flight when it rolls back).
#[test]
fn a_group_whose_rows_changed_but_not_its_edge_is_left_alone() {
    rows_changed_but_not_the_edge("write_recheck_rows", 120, false);
}

#[test]
fn a_group_whose_rows_changed_is_left_alone_by_a_pipelined_write() {
    rows_changed_but_not_the_edge("write_recheck_rows_pipe", 4000, true);
}

fn rows_changed_but_not_the_edge(hint: &str, groups: usize, pipelined: bool) {
    let (db, room) = small_db(hint, groups);
    let before = snapshot(&mut db.client());

    let mut client = db::connect(db.url()).expect("connecting");
    let ids = load::range_ids(&mut client, &room, None, None, None).expect("ids");
    let levels = LevelSizes::from_str("10,10").unwrap().empty_levels();
    let case = Case::new(&mut client, &room, &ids, &[], levels);
    let (original, changed) = (&case.original, &case.changed);
    // Pipelined batches hold at most 250 groups: past the first two.
    let skip = if pipelined {
        assert!(changed.len() > 750, "{} groups change", changed.len());
        600
    } else {
        0
    };
    let victim = *changed
        .iter()
        .skip(skip)
        .find(|g| original[*g].prev.is_some() && original[*g].delta.len() < 10)
        .expect("a rewritten delta group");

    // Synapse-like change under the tool: same edge, same state, more rows.
    let full = state_of_group(&mut db.client(), victim).expect("victim's state");
    assert!(full.len() > original[&victim].delta.len());
    {
        let mut c = db.client();
        let mut tx = c.transaction().unwrap();
        check::replace_rows(&mut tx, victim, &room, &full);
        tx.commit().unwrap();
    }
    let victim_edge = |c: &mut postgres::Client| -> Option<i64> {
        c.query_opt(
            "SELECT prev_state_group FROM state_group_edges WHERE state_group = $1",
            &[&victim],
        )
        .unwrap()
        .map(|r| r.get(0))
    };
    let edge_before = victim_edge(&mut db.client());
    let rows_before_write = db.state_rows();

    let report = if pipelined {
        case.write_pipelined(db.url(), &mut client)
    } else {
        case.write(&mut client)
    };

    assert_eq!(report.skipped, 1, "{report:?}");
    assert_eq!(report.written, changed.len() - 1, "{report:?}");
    let mut c = db.client();
    assert_eq!(victim_edge(&mut c), edge_before, "the victim's edge moved");
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM state_groups_state WHERE state_group = $1",
            &[&victim],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, full.len(), "the victim's rows were touched");
    // The report's row counts (the tools' rows_saved) leave out the group
    // left alone: exactly what the table lost.
    assert_eq!(
        rows_before_write - db.state_rows(),
        report.rows_deleted as i64 - report.rows_inserted as i64,
        "{report:?}"
    );
    assert_same_states(&before.states, &snapshot(&mut c).states, "after the write");
}

/// A saved level head that Synapse deletes between the check of the run's
/// progress and the chunk's load is read as a group with no `state_groups`
/// row, no edge and no rows. The groups the compressor builds on it must be
/// left as they are: an edge to it would point at nothing (seen beside the
/// Synapse imitation in `live_synapse.rs`).
#[test]
fn groups_built_on_a_head_deleted_before_the_load_are_left_alone() {
    let (db, room) = small_db("write_head_deleted", 120);
    let mut client = db::connect(db.url()).expect("connecting");
    let ids = load::range_ids(&mut client, &room, None, None, None).expect("ids");
    let (first, rest) = ids.split_at(ids.len() / 2);
    // The head: the last group of the first half that nothing is built on,
    // deleted as Synapse deletes a group (all of it, in one transaction).
    let head: i64 = db
        .client()
        .query_one(
            "SELECT max(g.id) FROM state_groups AS g WHERE g.room_id = $1 AND g.id <= $2 \
             AND NOT EXISTS (SELECT 1 FROM state_group_edges AS e WHERE e.prev_state_group = g.id)",
            &[&room, first.last().unwrap()],
        )
        .unwrap()
        .get(0);
    {
        let mut c = db.client();
        let mut tx = c.transaction().unwrap();
        for table in ["state_groups_state", "state_group_edges"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE state_group = $1"),
                &[&head],
            )
            .unwrap();
        }
        tx.execute("DELETE FROM state_groups WHERE id = $1", &[&head])
            .unwrap();
        tx.commit().unwrap();
    }
    let before = snapshot(&mut db.client());

    let levels = vec![Level::restore(10, 1, Some(head)), Level::new(10)];
    let case = Case::new(&mut client, &room, rest, &[head], levels);
    assert_eq!(
        case.report.missing_predecessors,
        vec![head],
        "{:?}",
        case.report
    );
    let on_head: Vec<i64> = case
        .changed
        .iter()
        .copied()
        .filter(|g| case.compressed.changes[g].prev == Some(head))
        .collect();
    assert!(!on_head.is_empty(), "no group was built on the head");

    let report = case.write(&mut client);

    assert!(report.skipped >= on_head.len(), "{report:?}");
    let mut c = db.client();
    let edges_to_head: i64 = c
        .query_one(
            "SELECT count(*) FROM state_group_edges WHERE prev_state_group = $1",
            &[&head],
        )
        .unwrap()
        .get(0);
    assert_eq!(edges_to_head, 0, "an edge now points at the deleted head");
    assert_same_states(&before.states, &snapshot(&mut c).states, "after the write");
}
