//! The source database `bench_src`: generated once per preset (or reused
//! when it already holds the same data), described by a [`Source`], and
//! cloned for every run.

use crate::report::thousands;
use crate::{connect, count, literal, pg, say, Res};
use compressor_integration_tests::digest::{state_digest, Fnv128};
use compressor_integration_tests::generator::{write_mix, MixConfig};
use compressor_integration_tests::pg::{quote_ident, SCHEMA_SQL};
use compressor_integration_tests::synapse_state::for_each_state_synapse;
use postgres::Client;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// The generated database every run is cloned from.
pub const SRC_DB: &str = "bench_src";
/// The tables the generator fills (their indexes are built after loading).
pub const STATE_TABLES: &[&str] = &[
    "state_groups",
    "state_groups_state",
    "state_group_edges",
    "event_to_state_groups",
];

/// What is in `bench_src` (or in `bench_compressed`: see `nightly`).
#[derive(Clone)]
pub struct Source {
    /// The preset's short name (`200k`, `3m`, `20m`).
    pub preset: String,
    /// The database runs are cloned from.
    pub db: String,
    /// The first of the groups appended after compressing (`bench_compressed`).
    pub appended_from: Option<i64>,
    pub key: String,
    pub rooms: i64,
    pub groups: i64,
    pub rows: i64,
    pub snapshots: i64,
    pub biggest_room: String,
    pub biggest_groups: i64,
    pub biggest_rows: i64,
    /// Seconds: generating and copying, building indexes, vacuum+analyze
    /// (none when reused).
    pub build: Option<[f64; 3]>,
    /// Digest of the resolved state of each sampled group.
    pub sample: BTreeMap<i64, String>,
}

/// Makes (or, with `reuse`, reuses) `bench_src` for the preset `short` and
/// reads what is in it, with the states of `samples` sampled groups.
pub fn prepare_source(
    base: &str,
    short: &str,
    cfg: &MixConfig,
    reuse: bool,
    samples: usize,
) -> Res<Source> {
    let key = source_key(short, cfg);
    let build = if reuse && db_comment(base, SRC_DB)?.as_deref() == Some(key.as_str()) {
        say(&format!("reusing {SRC_DB} ({key})"));
        None
    } else {
        Some(build_source(base, &key, cfg)?)
    };
    let mut c = connect(base, SRC_DB)?;
    let biggest = pg(
        "finding the biggest room",
        c.query_one(
            "SELECT room_id, count(*) FROM state_groups_state GROUP BY room_id
             ORDER BY 2 DESC, 1 LIMIT 1",
            &[],
        ),
    )?;
    let biggest_room: String = biggest.get(0);
    let mut source = Source {
        preset: short.to_string(),
        db: SRC_DB.to_string(),
        appended_from: None,
        key,
        rooms: count(
            &mut c,
            "SELECT count(DISTINCT room_id) FROM state_groups",
            &[],
        )?,
        groups: count(&mut c, "SELECT count(*) FROM state_groups", &[])?,
        rows: count(&mut c, "SELECT count(*) FROM state_groups_state", &[])?,
        snapshots: count(
            &mut c,
            "SELECT count(*) FROM state_groups g
             WHERE NOT EXISTS (SELECT 1 FROM state_group_edges e WHERE e.state_group = g.id)",
            &[],
        )?,
        biggest_groups: count(
            &mut c,
            "SELECT count(*) FROM state_groups WHERE room_id = $1",
            &[&biggest_room],
        )?,
        biggest_rows: biggest.get(1),
        biggest_room,
        build,
        sample: BTreeMap::new(),
    };
    if samples > 0 {
        say(&format!("recording the state of {samples} sampled groups"));
        let ids = sample_groups(&mut c, &source.biggest_room, samples)?;
        source.sample = digests(&mut c, &ids)?;
    }
    Ok(source)
}

/// What `bench_src` holds, as its comment: the preset, the seed and a
/// digest of the whole configuration (so a changed preset is regenerated).
fn source_key(short: &str, cfg: &MixConfig) -> String {
    let mut h = Fnv128::default();
    h.write_str(&format!("{cfg:?}"));
    format!(
        "bench preset={short} seed={} config={:08x}",
        cfg.base.seed,
        h.finish() >> 96
    )
}

/// The comment of the database `db` (what it holds), if it exists.
pub fn db_comment(base: &str, db: &str) -> Res<Option<String>> {
    let mut admin = connect(base, "postgres")?;
    let row = pg(
        &format!("reading {db}'s comment"),
        admin.query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&db],
        ),
    )?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
}

/// Creates `bench_src` with Synapse's schema and the preset's data; returns
/// the seconds spent generating and copying, building indexes, and
/// vacuuming.
fn build_source(base: &str, key: &str, cfg: &MixConfig) -> Res<[f64; 3]> {
    let mut c = create_empty(base)?;
    // Loading is much faster without indexes: note their definitions, drop
    // them, and build them again once the rows are in.
    let rebuild = drop_indexes(&mut c)?;

    say(&format!(
        "generating {} rooms, {} state groups into {SRC_DB}",
        thousands(cfg.room_count() as i64),
        thousands(cfg.group_count() as i64)
    ));
    let started = Instant::now();
    let mut tx = pg("BEGIN", c.transaction())?;
    // Truncating in the loading transaction lets COPY store the rows frozen.
    pg(
        "TRUNCATE",
        tx.batch_execute(&format!("TRUNCATE {}", STATE_TABLES.join(", "))),
    )?;
    pg(
        "writing the generated groups",
        write_mix(&mut tx, cfg, true),
    )?;
    pg("COMMIT", tx.commit())?;
    let generated = started.elapsed().as_secs_f64();

    say("building indexes");
    let started = Instant::now();
    pg(
        "SET",
        c.batch_execute(
            "SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 2",
        ),
    )?;
    for statement in &rebuild {
        pg(statement, c.batch_execute(statement))?;
    }
    let indexed = started.elapsed().as_secs_f64();
    let started = Instant::now();
    pg(
        "VACUUM ANALYZE",
        c.batch_execute(&format!("VACUUM (ANALYZE) {}", STATE_TABLES.join(", "))),
    )?;
    let analyzed = started.elapsed().as_secs_f64();
    pg(
        "COMMENT",
        c.batch_execute(&format!("COMMENT ON DATABASE {SRC_DB} IS {}", literal(key))),
    )?;
    Ok([generated, indexed, analyzed])
}

/// A new, empty `bench_src` with Synapse's schema (any old one dropped).
fn create_empty(base: &str) -> Res<Client> {
    let mut admin = connect(base, "postgres")?;
    pg(
        "dropping bench_src",
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {SRC_DB} WITH (FORCE)")),
    )?;
    pg(
        "creating bench_src",
        admin.batch_execute(&format!(
            "CREATE DATABASE {SRC_DB} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )),
    )?;
    let mut c = connect(base, SRC_DB)?;
    pg("loading Synapse's schema", c.batch_execute(SCHEMA_SQL))?;
    Ok(c)
}

/// Drops the state tables' unique constraints and indexes; returns the
/// statements that build them again.
fn drop_indexes(c: &mut Client) -> Res<Vec<String>> {
    let tables: Vec<String> = STATE_TABLES.iter().map(|t| t.to_string()).collect();
    let constraints = pg(
        "reading constraints",
        c.query(
            "SELECT t.relname::text, k.conname::text, pg_get_constraintdef(k.oid)
             FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
             WHERE t.relname = ANY($1) AND k.contype IN ('p', 'u')",
            &[&tables],
        ),
    )?;
    let indexes = pg(
        "reading indexes",
        c.query(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
             WHERE t.relname = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
            &[&tables],
        ),
    )?;
    let mut rebuild = Vec::new();
    for row in &constraints {
        let (table, name, def): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        pg(
            "dropping a constraint",
            c.batch_execute(&format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                quote_ident(&table),
                quote_ident(&name)
            )),
        )?;
        rebuild.push(format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {def}",
            quote_ident(&table),
            quote_ident(&name)
        ));
    }
    for row in &indexes {
        let (name, def): (String, String) = (row.get(0), row.get(1));
        pg(
            "dropping an index",
            c.batch_execute(&format!("DROP INDEX {name}")),
        )?;
        rebuild.push(def);
    }
    Ok(rebuild)
}

/// A third of the sample from the biggest room, the rest from anywhere;
/// deterministic.
fn sample_groups(c: &mut Client, biggest_room: &str, n: usize) -> Res<Vec<i64>> {
    let ids = |c: &mut Client, room: Option<&str>| -> Res<Vec<i64>> {
        let rows = pg(
            "reading group ids",
            c.query(
                "SELECT id FROM state_groups WHERE $1::text IS NULL OR room_id = $1 ORDER BY id",
                &[&room],
            ),
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    };
    let mut rng = SmallRng::seed_from_u64(7);
    let mut chosen = BTreeSet::new();
    let big = ids(c, Some(biggest_room))?;
    let all = ids(c, None)?;
    for (pool, want) in [(&big, n / 3), (&all, n - n / 3)] {
        let target = (chosen.len() + want).min(all.len());
        let mut tries = 0;
        while chosen.len() < target && !pool.is_empty() && tries < 100 * n {
            chosen.insert(pool[rng.random_range(0..pool.len())]);
            tries += 1;
        }
    }
    Ok(chosen.into_iter().collect())
}

/// The digest of each group's resolved state, read with Synapse's query.
pub fn digests(c: &mut Client, ids: &[i64]) -> Res<BTreeMap<i64, String>> {
    let mut out = BTreeMap::new();
    pg(
        "reading states with Synapse's query",
        for_each_state_synapse(c, ids, |group, state| {
            out.insert(group, state_digest(&state));
        }),
    )?;
    Ok(out)
}
