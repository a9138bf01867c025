//! The nightly case: the playbooks' `synapse_auto_compressor -c 500 -n 100`
//! on a database that is mostly compressed already, where a reader that
//! pays for going through the whole table would make every night slower.
//!
//! Once per preset, untimed, this makes `bench_compressed`: a copy of
//! `bench_src` compressed to completion by the automatic tool (the runs'
//! `-c`, `-n` enough to finish, its default reader), checked as a run is,
//! vacuumed (as autovacuum would have done since), and then about 2% more
//! groups appended after the highest id, as a day of Synapse adds them:
//!
//! - about 1% in the existing rooms: each room gets 1% of its groups (at
//!   least one, at most [`MOST_PER_ROOM`]), each one new member's join on
//!   top of the room's previous group, the rooms' new groups interleaved in
//!   id order, and stored as a snapshot instead where Synapse's 100-hop
//!   rule says so (the compressor's chains are often that long already).
//! - about 1% in new rooms of 200 groups, made by the generator (another
//!   seed, ids after the others).
//!
//! The new rows go where VACUUM freed space, wherever PostgreSQL puts
//! them, as on a real server. Each nightly run is a clone of it, as the
//! other runs are of `bench_src`.

use crate::checks::check_after;
use crate::launcher::Launcher;
use crate::report::thousands;
use crate::run::{clone_db, finished, invocation, run_tool, Job, RunSettings, Tool};
use crate::source::{db_comment, digests, Source, STATE_TABLES};
use crate::{connect, count, literal, pg, say, Res};
use compressor_integration_tests::generator::{
    write_mix, GenConfig, MixConfig, RoomClass, MAX_STATE_DELTA_HOPS,
};
use compressor_integration_tests::pg::db_url;
use postgres::Client;

/// The compressed database the nightly runs are cloned from.
pub const COMPRESSED_DB: &str = "bench_compressed";
/// Share of the groups appended to existing rooms, and again as new rooms.
const SHARE: f64 = 0.01;
/// Most groups appended to one existing room (a day of a busy room).
const MOST_PER_ROOM: i64 = 50;
/// Groups of each new room (the generator's small rooms).
const NEW_ROOM_GROUPS: usize = 200;

/// Makes (or, with `reuse`, reuses) `bench_compressed` from `source`, the
/// preset `cfg`'s `bench_src`; returns what the nightly runs start from
/// (its sample: `source`'s and some appended groups) and its header line.
pub fn prepare_compressed(
    settings: &RunSettings,
    launcher: &mut Launcher,
    source: &Source,
    cfg: &MixConfig,
    reuse: bool,
    samples: usize,
) -> Res<(Source, String)> {
    let key = format!("{} compressed -c {}", source.key, settings.chunk_size);
    let appended_from = {
        let mut c = connect(&settings.base, &source.db)?;
        count(&mut c, "SELECT COALESCE(max(id), 0) FROM state_groups", &[])? + 1
    };
    let built = if reuse && db_comment(&settings.base, COMPRESSED_DB)?.as_deref() == Some(&key) {
        say(&format!("reusing {COMPRESSED_DB}"));
        "reused".to_string()
    } else {
        build(settings, launcher, source, cfg, appended_from, &key)?
    };

    let mut c = connect(&settings.base, COMPRESSED_DB)?;
    let mut nightly = source.clone();
    nightly.db = COMPRESSED_DB.to_string();
    nightly.appended_from = Some(appended_from);
    nightly.groups = count(&mut c, "SELECT count(*) FROM state_groups", &[])?;
    nightly.rooms = count(
        &mut c,
        "SELECT count(DISTINCT room_id) FROM state_groups",
        &[],
    )?;
    nightly.rows = count(&mut c, "SELECT count(*) FROM state_groups_state", &[])?;
    let appended = count(
        &mut c,
        "SELECT count(*) FROM state_groups WHERE id >= $1",
        &[&appended_from],
    )?;
    if samples > 0 {
        let ids = appended_sample(&mut c, appended_from, samples / 2)?;
        nightly.sample.extend(digests(&mut c, &ids)?);
    }
    let line = format!(
        "nightly data {}: {COMPRESSED_DB} = {} compressed to completion, then {} groups ({:.1}%) appended from id {appended_from}; {built}; now {} rooms, {} groups, {} rows",
        source.preset,
        source.db,
        thousands(appended),
        100.0 * appended as f64 / source.groups.max(1) as f64,
        thousands(nightly.rooms),
        thousands(nightly.groups),
        thousands(nightly.rows),
    );
    Ok((nightly, line))
}

/// Builds `bench_compressed` (see the module's doc); returns how it went,
/// for the header line.
fn build(
    settings: &RunSettings,
    launcher: &mut Launcher,
    source: &Source,
    cfg: &MixConfig,
    appended_from: i64,
    key: &str,
) -> Res<String> {
    say(&format!(
        "{}: making {COMPRESSED_DB} (compressing {} to completion, untimed)",
        source.preset, source.db
    ));
    clone_db(&settings.base, &source.db, COMPRESSED_DB)?;
    let url = db_url(&settings.base, COMPRESSED_DB);
    let mut c = connect(&settings.base, COMPRESSED_DB)?;
    let job = Job {
        tool: Tool::Auto,
        jobs: 1,
        reader: None,
    };
    let all = invocation(job, &url, source, settings.chunk_size, &mut c)?;
    let name = format!("{}-compress-all", source.preset);
    let (child, _) = run_tool(settings, launcher, &name, &all)?;
    if !finished(&child.stderr) {
        return Err(format!(
            "{COMPRESSED_DB}: the automatic tool did not finish the database (see its output {name})"
        ));
    }
    let check = check_after(&mut c, source)?;
    if check.starts_with("FAILED") {
        return Err(format!(
            "{COMPRESSED_DB}: compressing to completion changed the data: {check}"
        ));
    }
    let compressed_rows = count(&mut c, "SELECT count(*) FROM state_groups_state", &[])?;
    vacuum(&mut c)?;

    say(&format!(
        "{}: appending about 2% more groups",
        source.preset
    ));
    let [continued, rooms, snapshots] = append_to_rooms(&mut c, appended_from)?;
    let new_rooms = ((source.groups as f64 * SHARE) / NEW_ROOM_GROUPS as f64).round() as usize;
    let new_rooms = new_rooms.max(1);
    let more = MixConfig {
        base: GenConfig {
            seed: cfg.base.seed ^ 0x006e_6967_6874_6c79,
            first_group_id: appended_from + continued,
            ..cfg.base.clone()
        },
        classes: vec![RoomClass {
            rooms: new_rooms,
            groups_per_room: NEW_ROOM_GROUPS,
            members: 30,
            initial_members: 0,
        }],
    };
    pg("writing the new rooms", write_mix(&mut c, &more, false))?;
    vacuum(&mut c)?;
    pg(
        "COMMENT",
        c.batch_execute(&format!(
            "COMMENT ON DATABASE {COMPRESSED_DB} IS {}",
            literal(key)
        )),
    )?;
    Ok(format!(
        "compressing took {:.1}s untimed ({} rows left), {} groups appended to {} rooms ({} of them snapshots by Synapse's 100-hop rule) and {} in {new_rooms} new rooms",
        child.wall,
        thousands(compressed_rows),
        thousands(continued),
        thousands(rooms),
        thousands(snapshots),
        thousands((new_rooms * NEW_ROOM_GROUPS) as i64),
    ))
}

/// Appends groups to the existing rooms, ids from `first` (see the
/// module's doc); returns how many groups, in how many rooms, and how many
/// of them Synapse's rule made snapshots.
fn append_to_rooms(c: &mut Client, first: i64) -> Res<[i64; 3]> {
    // Each room's new groups take random places among the new ids (md5 of
    // room and number: the same every time), then chain in id order, from
    // the room's last group. Synapse stores a group as a snapshot when its
    // prev's chain has MAX_STATE_DELTA_HOPS groups: after the room's last
    // group has a chain of `len` (walked up to that many), its `k`-th new
    // group is the one (a room gets fewer new groups than the rule's
    // length, so at most one).
    let hops = MAX_STATE_DELTA_HOPS;
    pg(
        "appending groups to the rooms",
        c.batch_execute(&format!(
            "CREATE TEMP TABLE bench_more AS
             WITH RECURSIVE rooms AS (
                 SELECT room_id, count(*) AS n, max(id) AS last FROM state_groups GROUP BY room_id
             ), chain (room_id, g, len) AS (
                 SELECT room_id, last, 1 FROM rooms
                 UNION ALL
                 SELECT c.room_id, e.prev_state_group, c.len + 1
                 FROM chain c JOIN state_group_edges e ON e.state_group = c.g
                 WHERE c.len < {hops}
             ), wanted AS (
                 SELECT room_id, last, len, k
                 FROM rooms JOIN (SELECT room_id, max(len) AS len FROM chain GROUP BY room_id) l
                      USING (room_id),
                      generate_series(1, least({MOST_PER_ROOM}, ceil(n * {SHARE}))::int) AS k
             ), placed AS (
                 SELECT room_id, last, len,
                        {first} - 1 + row_number() OVER (ORDER BY md5(room_id || ':' || k)) AS id
                 FROM wanted
             ), ranked AS (
                 SELECT room_id, last, len, id,
                        lag(id) OVER (PARTITION BY room_id ORDER BY id) AS prev_new,
                        row_number() OVER (PARTITION BY room_id ORDER BY id) AS k
                 FROM placed
             )
             SELECT room_id, id, COALESCE(prev_new, last) AS prev,
                    k = greatest(1, {hops} + 1 - len) AS snapshot
             FROM ranked;
             INSERT INTO state_groups (id, room_id, event_id)
                 SELECT id, room_id, '$nightly' || id FROM bench_more ORDER BY id;
             INSERT INTO state_group_edges (state_group, prev_state_group)
                 SELECT id, prev FROM bench_more ORDER BY id;
             INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
                 SELECT id, room_id, 'm.room.member', '@nightly' || id || ':example.org',
                        '$nightly' || id
                 FROM bench_more ORDER BY id;
             INSERT INTO event_to_state_groups (event_id, state_group)
                 SELECT '$nightly' || id, id FROM bench_more ORDER BY id;
             -- The snapshots: their prev's whole state (the nearest row of
             -- each key along its chain) joins their own row, and the edge goes.
             INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
                 WITH RECURSIVE chain (root, room_id, g, depth) AS (
                     SELECT id, room_id, prev, 1 FROM bench_more WHERE snapshot
                     UNION ALL
                     SELECT c.root, c.room_id, e.prev_state_group, c.depth + 1
                     FROM chain c JOIN state_group_edges e ON e.state_group = c.g
                 )
                 SELECT DISTINCT ON (c.root, s.type, s.state_key)
                        c.root, c.room_id, s.type, s.state_key, s.event_id
                 FROM chain c JOIN state_groups_state s ON s.state_group = c.g
                 ORDER BY c.root, s.type, s.state_key, c.depth;
             DELETE FROM state_group_edges e USING bench_more m
                 WHERE m.snapshot AND e.state_group = m.id;"
        )),
    )?;
    let row = pg(
        "counting the appended groups",
        c.query_one(
            "SELECT count(*), count(DISTINCT room_id), count(*) FILTER (WHERE snapshot)
             FROM bench_more",
            &[],
        ),
    )?;
    pg("DROP", c.batch_execute("DROP TABLE bench_more"))?;
    Ok([row.get(0), row.get(1), row.get(2)])
}

/// `VACUUM (ANALYZE)` of the state tables, then a checkpoint.
fn vacuum(c: &mut Client) -> Res<()> {
    // Two statements: VACUUM cannot run inside the implicit transaction of
    // a multi-statement query.
    pg(
        "VACUUM ANALYZE",
        c.batch_execute(&format!("VACUUM (ANALYZE) {}", STATE_TABLES.join(", "))),
    )?;
    pg("CHECKPOINT", c.batch_execute("CHECKPOINT"))
}

/// Up to `n` of the appended groups, evenly spread over their ids.
fn appended_sample(c: &mut Client, first: i64, n: usize) -> Res<Vec<i64>> {
    let rows = pg(
        "reading the appended groups",
        c.query(
            "SELECT id FROM state_groups WHERE id >= $1 ORDER BY id",
            &[&first],
        ),
    )?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    if n == 0 || ids.is_empty() {
        return Ok(Vec::new());
    }
    let step = ids.len().div_ceil(n);
    Ok(ids.into_iter().step_by(step).collect())
}
