//! The manual tool's windowed load, compression and verification, so that
//! its memory follows its output (the changes) rather than the room.
//!
//! The room's range is read in windows of consecutive group ids, all in
//! the one consistent read of the run. Each window is loaded with the
//! predecessor chains its groups need, compressed by the same
//! [`Compressor`] continuing its levels, verified against its original
//! groups, and dropped. What crosses a window boundary:
//!
//! - the changes (new entries of the groups that really change: they are
//!   the output, kept until the room-wide decision), with what the writers
//!   check them against ([`Kept`]: each one's edge, row count and rows'
//!   digest as loaded, not its rows);
//! - stand-ins for the groups the levels can still reach as bases (the
//!   level heads and their ancestors in the new structure, at most the sum
//!   of the level sizes): their entries in the new structure, so a base
//!   walk goes on from them as through the whole room, and they resolve to
//!   their new states, which verification found equal to the original ones
//!   (the compressor takes a base's state to be its original one);
//! - the original chains of the window's last groups, which the next
//!   window's groups mostly build on, so they are not read again;
//! - the figures (rows before and after, groups, predecessors without a
//!   `state_groups` row), counted once per group however often a group is
//!   read again as a predecessor.
//!
//! Verification per window is the whole-room check restricted to the
//! window's changes: each one's original state is resolved along its
//! original chain, its new state through the new structure as far as the
//! window holds it; an earlier group reached there, by its original entry
//! or a stand-in, had its new state checked before, so by induction on ids
//! every group keeps its state. (Should a window fail, the error is raised
//! only if the run goes on to write, as the whole-room path verifies only
//! then.)
//!
//! The windows are read on a thread of their own, one window ahead of the
//! compression ([`compress_room`]), so the server streams the next window
//! while this one is compressed and verified. Each window's rows come in
//! batches fetched on a further thread ([`load::load_groups_batched`]),
//! which costs the reading thread a third less CPU than taking them one by
//! one.
//!
//! One case is left to the whole-room path ([`Windowed::NeedsWholeRoom`]):
//! with a lower bound (`-b`), a predecessor without a `state_groups` row is
//! compressed in id order among the range's groups, so one found only by a
//! later window would come too late.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use indicatif::ProgressBar;
use log::{info, warn};
use postgres::Client;

use crate::core::chains::chain_hops;
use crate::core::compressor::{plant_wrong_delta_if_asked, Compressor, Stats};
use crate::core::group::{
    changed_groups, GroupMap, Loaded, LoadedGroups, Overlay, StateGroupEntry,
};
use crate::core::state_map::Symbols;
use crate::core::verify::{verify, Verified};
use crate::db::load;
use crate::error::{Error, Result};
use crate::manual::config::ManualConfig;
use crate::manual::summary::RoomFigures;
use crate::tool::args::NonNegative;
use crate::tool::progress;
use crate::tool::timings::Timings;

/// The test knob: groups per window (`0`: the whole room at once, the
/// path that keeps every group in memory).
pub const WINDOW_ENV: &str = "SYNAPSE_COMPRESS_STATE_WINDOW";

/// Groups per window unless [`WINDOW_ENV`] says otherwise. A window of a
/// thousand groups of the benchmark's biggest rooms (150 to 300 rows each)
/// holds a few MB of rows, less than what the run keeps anyway (symbols,
/// changes, resolved states); smaller windows pay more per-window queries
/// and verification starts for little less memory.
pub const DEFAULT_WINDOW: usize = 1_000;

/// Groups per window for this run: [`WINDOW_ENV`] if set to a number,
/// else [`DEFAULT_WINDOW`]; `0` means the whole room at once.
pub fn window_size() -> usize {
    std::env::var(WINDOW_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_WINDOW)
}

/// The last groups of a window whose original chains the next window gets
/// without reading them again: new groups mostly build on recent ones, so
/// their chains (up to a snapshot, at most about 100 groups in Synapse) are
/// what the next window's groups reach back into.
const RECENT_CHAINS: usize = 100;

/// The outcome of a windowed run.
pub enum Windowed {
    /// The room, compressed and (unless disabled) verified.
    Done(Box<WindowedRoom>),
    /// The range needs the whole-room path (see the module doc).
    NeedsWholeRoom,
}

/// A room compressed window by window: what the decision and the writers
/// need.
pub struct WindowedRoom {
    pub symbols: Symbols,
    /// The room's rows in the read's snapshot, when the range is the whole
    /// room and no row was dropped as a duplicate: counted as they were
    /// read, so no count of the room is needed before the run.
    pub room_rows: Option<u64>,
    /// How the changed groups and the groups without a `state_groups` row
    /// (possible bases) were loaded, as the writers check them.
    pub kept: Kept,
    /// New entries of the groups that really change, by id.
    pub changes: GroupMap,
    pub figures: RoomFigures,
    pub stats: Stats,
    /// The verification's result, raised only if the run goes on to
    /// write (as the whole-room path verifies only then); `None` when
    /// disabled.
    pub verified: Option<Result<Verified>>,
    pub timings: Timings,
    /// The longest chain of the range's groups before and after (as the
    /// whole-room path counts it).
    pub longest_chains: (u32, u32),
}

/// What the writers check a windowed run's changes against (the loaded
/// entries themselves are gone): how each changed group and each group
/// without a `state_groups` row was loaded, and, when an SQL file is
/// written, the digest of a changed group's rows.
#[derive(Default)]
pub struct Kept(BTreeMap<i64, (Loaded, Option<String>)>);

impl LoadedGroups for Kept {
    fn loaded(&self, id: i64) -> Option<Loaded> {
        self.0.get(&id).map(|(loaded, _)| *loaded)
    }
    fn rows_digest(&self, id: i64, _symbols: &Symbols) -> Option<String> {
        self.0.get(&id).and_then(|(_, digest)| digest.clone())
    }
}

/// Loads, compresses and verifies the range of `config` in windows of
/// `window` groups.
///
/// The windows are read on a thread of their own ([`read_windows`], which
/// takes the connection and the snapshot for the time of the load), one
/// window ahead: the server streams the next window's rows, and the
/// reader turns them into groups, while this thread compresses and
/// verifies the current one. At most two windows are in memory, the one
/// being compressed and the one read ahead. `load` in the timings is the
/// time spent waiting for a window.
pub fn compress_room(
    client: &mut Client,
    config: &ManualConfig,
    window: usize,
) -> Result<Windowed> {
    let room = config.room_id.as_str();
    let min = config.min_state_group.map(NonNegative::get);
    info!("Fetching state from DB for room '{room}' (in windows of {window} groups)...");
    let started = Instant::now();
    let mut snapshot = load::snapshot(client)?;
    let (ids, last_group) = crate::manual::run::range_ids(&mut snapshot, config)?;
    let mut timings = Timings {
        load: started.elapsed(),
        ..Timings::default()
    };

    let rows_bar = progress::counter("Rows read");
    let symbols = Mutex::new(Symbols::new());
    let mut run = Run {
        ids: &ids,
        min,
        verify: config.verify,
        symbols: &symbols,
        compressor: Compressor::new(config.level_sizes.empty_levels()),
        changes: GroupMap::new(),
        kept: Kept::default(),
        digests: config.output_file.is_some(),
        carried: GroupMap::new(),
        included: BTreeSet::new(),
        outside: BTreeSet::new(),
        missing: BTreeSet::new(),
        in_range: 0,
        rows_before: 0,
        rows_in_range: 0,
        rows_after_less_before: 0,
        repeated_rows_read: 0,
        compared: 0,
        verify_error: None,
        planted: false,
        chains_before: HashMap::new(),
        chains_after: HashMap::new(),
        longest_chains: (0, 0),
        timings: &mut timings,
    };
    let chunks = ids.chunks(window.max(1));
    let (done, rows_read) = std::thread::scope(|scope| -> Result<(bool, u64)> {
        // A rendezvous: the reader hands a window over only when this
        // thread takes it, so it is at most one window ahead.
        let (to_compressor, windows) = sync_channel(0);
        let reader = {
            let (ids, symbols, bar) = (&ids, &symbols, rows_bar.clone());
            crate::tool::spawn_named(scope, "read-windows", move || {
                read_windows(snapshot, room, ids, window, symbols, &bar, to_compressor)
            })
        };
        let mut previous_last: Option<i64> = None;
        let mut done = true;
        for chunk in chunks {
            let started = Instant::now();
            let received = windows.recv();
            run.timings.load += started.elapsed();
            // The reader hangs up early only when it panicked: the join
            // below passes its panic on.
            let Ok(loaded) = received else {
                break;
            };
            let (map, report) = loaded?;
            log::debug!(
                "window up to group {}: {} groups loaded ({} in range, {} predecessors and recent)",
                chunk.last().copied().unwrap_or_default(),
                map.len(),
                report.in_range,
                report.out_of_range
            );
            if !run.window(map, report, previous_last, chunk)? {
                done = false;
                break;
            }
            previous_last = chunk.last().copied();
        }
        // Stops a reader still at work: its next hand-over fails.
        drop(windows);
        let rows_read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok((done, rows_read))
    })?;
    rows_bar.finish_and_clear();
    if !done {
        return Ok(Windowed::NeedsWholeRoom);
    }
    let missing: Vec<i64> = run.missing.iter().copied().collect();
    if !missing.is_empty() {
        warn!(
            "{} predecessor group(s) have no state_groups row (purged?); reading them as Synapse does: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    // Counted per read: a group read again as a predecessor of a later
    // window counts again.
    crate::db::load::log_repeated_rows(run.repeated_rows_read);
    let groups = run.in_range + run.outside.len();
    log::debug!(
        "read {rows_read} rows for the {} rows of the groups loaded",
        run.rows_before
    );
    info!(
        "Loaded {groups} groups ({} to compress, up to group {last_group}) in {:.2}s",
        run.in_range,
        run.timings.load.as_secs_f64()
    );
    let figures = RoomFigures {
        groups,
        groups_in_range: run.in_range,
        last_group,
        rows_before: run.rows_before,
        rows_after: (run.rows_before as i64 + run.rows_after_less_before) as usize,
        missing_predecessors: missing.len(),
    };
    let verified = config.verify.then(|| match run.verify_error.take() {
        Some(e) => Err(e),
        None => Ok(Verified {
            groups,
            compared: run.compared,
        }),
    });
    // The range is the whole room and every row was taken as read: the
    // in-range rows are the room's rows in the snapshot, counted.
    let whole_room = config.min_state_group.is_none()
        && config.max_state_group.is_none()
        && config.groups_to_compress.is_none();
    let room_rows = whole_room.then_some(run.rows_in_range as u64);
    let stats = run.compressor.stats();
    let longest_chains = run.longest_chains;
    let (kept, changes) = (run.kept, run.changes);
    Ok(Windowed::Done(Box::new(WindowedRoom {
        symbols: symbols.into_inner().unwrap_or_else(PoisonError::into_inner),
        room_rows,
        kept,
        changes,
        figures,
        stats,
        verified,
        timings,
        longest_chains,
    })))
}

/// What a windowed run carries from one window to the next.
struct Run<'a> {
    /// The range's group ids, ascending.
    ids: &'a [i64],
    /// The range's lower bound (`-b`), exclusive.
    min: Option<i64>,
    verify: bool,
    /// Shared with the reader, which interns each window's strings.
    symbols: &'a Mutex<Symbols>,
    compressor: Compressor,
    /// New entries of the groups that really change (and, while a window
    /// is compressed, all of that window's new entries).
    changes: GroupMap,
    kept: Kept,
    /// Whether to keep the changed groups' digests (for the SQL file).
    digests: bool,
    /// Stand-ins for the groups the levels can reach (see the module doc).
    carried: GroupMap,
    /// Groups without a `state_groups` row put in range (with `-b`).
    included: BTreeSet<i64>,
    /// Groups loaded only as predecessors that are outside the range.
    outside: BTreeSet<i64>,
    /// Predecessors without a `state_groups` row.
    missing: BTreeSet<i64>,
    in_range: usize,
    rows_before: usize,
    /// The rows of the groups in range (`rows_before` less those of the
    /// groups outside it).
    rows_in_range: usize,
    rows_after_less_before: i64,
    repeated_rows_read: usize,
    compared: usize,
    verify_error: Option<Error>,
    /// The fault point was evaluated (once per run, as the whole room does).
    planted: bool,
    /// Each in-range group's chain length before and after, from the
    /// windows done (a few bytes a group): a later window's walks stop at
    /// them.
    chains_before: HashMap<i64, u32>,
    chains_after: HashMap<i64, u32>,
    /// The longest of those so far (before, after).
    longest_chains: (u32, u32),
    timings: &'a mut Timings,
}

impl Run<'_> {
    /// Compresses and verifies one window: the groups `chunk` loaded as
    /// `map`, after the window that ended at `previous_last`. False when
    /// the range needs the whole-room path.
    fn window(
        &mut self,
        mut map: GroupMap,
        mut report: load::LoadReport,
        previous_last: Option<i64>,
        chunk: &[i64],
    ) -> Result<bool> {
        let last = *chunk.last().expect("windows are not empty");
        // Groups without a row in (previous window, this one] are in range,
        // as the whole-room load puts those of (min, last] in range.
        let lower = self
            .min
            .map(|min| previous_last.map_or(min, |p| p.max(min)));
        load::include_groups_without_row(&mut map, &mut report, lower, last);
        if let (Some(min), Some(previous)) = (self.min, previous_last) {
            let late = report
                .missing_predecessors
                .iter()
                .any(|&id| min < id && id <= previous && !self.included.contains(&id));
            if late {
                info!("a predecessor without a state_groups row is in an earlier window: compressing the room at once");
                return Ok(false);
            }
        }
        self.missing.extend(&report.missing_predecessors);
        self.repeated_rows_read += report.repeated_rows_read;
        for (&id, entry) in &map {
            if entry.in_range {
                self.in_range += 1;
                self.rows_before += entry.rows();
                self.rows_in_range += entry.rows();
                if chunk.binary_search(&id).is_err() {
                    self.included.insert(id);
                }
            } else if self.ids.binary_search(&id).is_err()
                && !self.included.contains(&id)
                && self.outside.insert(id)
            {
                self.rows_before += entry.rows();
            }
            if entry.missing_group_row {
                self.kept.0.entry(id).or_insert((entry.loaded(), None));
            }
        }
        for (id, stand_in) in std::mem::take(&mut self.carried) {
            map.entry(id).or_insert(stand_in);
        }

        let started = Instant::now();
        self.compressor.add(&map, &mut self.changes)?;
        let first_new = previous_last.map_or(i64::MIN, |p| p + 1);
        let mut new = self.changes.split_off(&first_new);
        if !self.planted && new.values().any(|e| !e.delta.is_empty()) {
            plant_wrong_delta_if_asked(&mut new);
            self.planted = true;
        }
        for (id, entry) in &new {
            self.rows_after_less_before += entry.delta.len() as i64 - map[id].rows() as i64;
        }
        self.timings.compress += started.elapsed();
        self.count_chains(&map, &new);

        if self.verify && self.verify_error.is_none() {
            let started = Instant::now();
            match verify(&map, &new) {
                Ok(v) => self.compared += v.compared,
                Err(e) => self.verify_error = Some(e),
            }
            self.timings.verify += started.elapsed();
        }

        let started = Instant::now();
        // Only an SQL file needs the strings: then the reader may wait.
        let symbols = self
            .digests
            .then(|| self.symbols.lock().unwrap_or_else(PoisonError::into_inner));
        for id in changed_groups(&map, &new) {
            let original = &map[&id];
            let digest = symbols
                .as_ref()
                .map(|symbols| crate::output::sql::rows_digest(symbols, &original.delta));
            self.kept.0.insert(id, (original.loaded(), digest));
            let entry = new.remove(&id).expect("a changed group has a new entry");
            self.changes.insert(id, entry);
        }
        drop(symbols);
        self.carried = self.stand_ins(&map)?;
        self.timings.compress += started.elapsed();
        Ok(true)
    }

    /// Records the chain lengths of the window's groups (in `map`), before
    /// and with the window's new entries (`new`) laid over it. Walks that
    /// reach an earlier window's group stop there and add its recorded
    /// length, so the groups of earlier windows (stand-ins or loaded
    /// again, in either structure) are never walked through.
    fn count_chains(&mut self, map: &GroupMap, new: &GroupMap) {
        let ids: Vec<i64> = map
            .iter()
            .filter(|(_, e)| e.in_range)
            .map(|(&id, _)| id)
            .collect();
        let before = chain_hops(map, ids.iter().copied(), &self.chains_before);
        let overlay = Overlay {
            original: map,
            changes: new,
        };
        let after = chain_hops(&overlay, ids.iter().copied(), &self.chains_after);
        for id in ids {
            if let Some(&n) = before.get(&id) {
                self.chains_before.insert(id, n);
                self.longest_chains.0 = self.longest_chains.0.max(n);
            }
            if let Some(&n) = after.get(&id) {
                self.chains_after.insert(id, n);
                self.longest_chains.1 = self.longest_chains.1.max(n);
            }
        }
    }

    /// Stand-ins for the level heads and their ancestors in the new
    /// structure: their entries in it, from `map` (the window just
    /// compressed) with the changes laid over it.
    fn stand_ins(&self, map: &GroupMap) -> Result<GroupMap> {
        let mut carried = GroupMap::new();
        for head in self.compressor.levels().iter().filter_map(|l| l.head()) {
            let mut next = Some(head);
            while let Some(id) = next {
                if carried.contains_key(&id) {
                    break;
                }
                let entry = self
                    .changes
                    .get(&id)
                    .or_else(|| map.get(&id))
                    .ok_or_else(|| Error::Damaged(format!("level group {id} was not loaded")))?;
                next = entry.prev;
                carried.insert(
                    id,
                    StateGroupEntry {
                        in_range: false,
                        ..entry.clone()
                    },
                );
            }
        }
        Ok(carried)
    }
}

/// A window as read: its groups and what the load found.
type ReadWindow = Result<(GroupMap, load::LoadReport)>;

/// The reading side of [`compress_room`]: reads the windows of `ids` in
/// `snapshot`, each with the chains of the previous one's last groups
/// given as known ([`recent_chains`]), and hands them over to `out` in
/// order. Stops after handing over an error, or when the other side is
/// gone (it stopped early); finishes the read and returns the rows read
/// once every window is handed over.
fn read_windows(
    mut snapshot: postgres::Transaction<'_>,
    room: &str,
    ids: &[i64],
    window: usize,
    symbols: &Mutex<Symbols>,
    bar: &ProgressBar,
    out: SyncSender<ReadWindow>,
) -> Result<u64> {
    let mut rows_read = 0u64;
    let mut known = GroupMap::new();
    for chunk in ids.chunks(window.max(1)) {
        let loaded = {
            let mut symbols = symbols.lock().unwrap_or_else(PoisonError::into_inner);
            load::load_groups_batched(
                &mut snapshot,
                &mut symbols,
                room,
                chunk,
                std::mem::take(&mut known),
                &mut |n| {
                    bar.inc(n);
                    rows_read += n;
                },
            )
        };
        let failed = loaded.is_err();
        if let Ok((map, _)) = &loaded {
            known = recent_chains(map, chunk);
        }
        if out.send(loaded).is_err() || failed {
            return Ok(rows_read);
        }
    }
    snapshot
        .commit()
        .map_err(|e| Error::db("finishing the read", e))?;
    Ok(rows_read)
}

/// The original entries of the last [`RECENT_CHAINS`] groups of `chunk`
/// and of their predecessors, copied from `map` (the window's groups as
/// loaded: their chains are all there).
fn recent_chains(map: &GroupMap, chunk: &[i64]) -> GroupMap {
    let mut recent = GroupMap::new();
    for &last in chunk.iter().rev().take(RECENT_CHAINS) {
        let mut next = Some(last);
        while let Some(id) = next.filter(|id| !recent.contains_key(id)) {
            let Some(entry) = map.get(&id) else {
                break;
            };
            next = entry.prev;
            recent.insert(id, entry.clone());
        }
    }
    recent
}
