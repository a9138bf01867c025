//! Writing a new structure to the database, safely beside a live Synapse.
//!
//! Changed groups are written in batches: one transaction per batch, with
//! set-based deletes, one multi-row edge insert and a binary COPY of the new
//! rows. A batch commits whole or not at all, so a crash or a lost
//! connection never leaves a group without its rows or its edge, and the
//! batches go in ascending id order (`docs/safety.md`, "The write
//! transaction", explains each lock and check).
//!
//! Synapse (1.124+) deletes and de-deltas groups in the background, and
//! another compressor may be at work, so each transaction first locks: the
//! groups it rewrites `FOR NO KEY UPDATE`, every new base and current
//! predecessor `FOR KEY SHARE` as Synapse's own writers do (so a concurrent
//! deletion waits for us or has already happened), and bumps the bases'
//! pending deletion. It then re-checks that each group still has the edge
//! that was loaded, and the delete that its groups still had the rows they
//! were loaded with, in all (when they do not add up, the batch starts
//! again, counting each group's first). A group that is gone or changed is left
//! as the other writer (Synapse, another compressor) has it: its state is
//! unchanged, so groups built on it stay right. A group whose new base is
//! gone is left as it is too. The warning says what was seen, not who did
//! it: the tool cannot know. A group loaded without a `state_groups` row
//! (rewritten when it lies inside the range, as the reference does) cannot
//! be row-locked: it counts as present while it still has its edge and rows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::channel;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use postgres::types::Type;
use postgres::{Client, Transaction};

use crate::core::group::{GroupMap, Loaded, LoadedGroups};
use crate::core::state_map::Symbols;
use crate::db::copy_rows::RowCopy;
use crate::error::{Error, Result};

/// Most groups in one write transaction.
const MAX_GROUPS_PER_BATCH: usize = 500;
/// The test knob: most groups in one write transaction, instead of
/// [`MAX_GROUPS_PER_BATCH`] (small batches let a test stop a write between
/// two of them on small data).
pub const BATCH_ENV: &str = "SYNAPSE_COMPRESS_STATE_BATCH";

/// Most groups in one write transaction for this run.
fn max_groups_per_batch() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var(BATCH_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(MAX_GROUPS_PER_BATCH)
    })
}
/// A batch is closed once it holds this many new rows.
const MAX_ROWS_PER_BATCH: usize = 50_000;

/// A batch of a pipelined write ([`Rewrite::write_pipelined`]) holds at
/// most this many groups, and is closed before it reaches this many old
/// rows to delete (most of a batch's time on the server goes to deleting
/// them): smaller batches of about the same time keep both connections
/// busy, where a last long batch would run alone.
const PIPELINED_GROUPS: usize = 250;
const PIPELINED_OLD_ROWS: usize = 200_000;

/// What writing a set of groups did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Groups rewritten.
    pub written: usize,
    /// Groups left alone because Synapse deleted or rewrote them (or their
    /// new base) since they were loaded.
    pub skipped: usize,
    /// Rows removed (the rewritten groups' old rows).
    pub rows_deleted: u64,
    /// Rows written (the rewritten groups' new rows).
    pub rows_inserted: u64,
}

impl WriteReport {
    /// Adds the figures of another write.
    pub fn add(&mut self, other: WriteReport) {
        self.written += other.written;
        self.skipped += other.skipped;
        self.rows_deleted += other.rows_deleted;
        self.rows_inserted += other.rows_inserted;
    }
}

/// Work done in the last write transaction of [`Rewrite::write`], so it
/// commits together with the last groups (the automatic tool saves its
/// progress there).
pub type LastTransaction<'f> = &'f mut dyn FnMut(&mut Transaction<'_>) -> Result<()>;

/// How often a batch is tried before its error is reported.
const MAX_ATTEMPTS: usize = 5;

/// A room's new structure, ready to be written: the entries in `new` (the
/// rewritten entries) replace those of `original` (as loaded).
#[derive(Clone, Copy)]
pub struct Rewrite<'a> {
    pub room_id: &'a str,
    /// The room of each group, when the groups are of several rooms
    /// (`room_id` is then not used).
    pub room_of: Option<&'a dyn RoomOf>,
    pub symbols: &'a Symbols,
    pub original: &'a (dyn LoadedGroups + Sync),
    pub new: &'a GroupMap,
}

/// The rooms of the groups of a [`Rewrite`] of several rooms.
pub trait RoomOf: Sync {
    fn room_of(&self, group: i64) -> &str;
}

/// Work done in a batch's transaction, after its writes: told the batch's
/// groups and those rewritten (the others are left as another writer has
/// them). It commits with the batch.
pub type InTransaction<'f> = &'f mut dyn FnMut(&mut Transaction<'_>, &[i64], &[i64]) -> Result<()>;

/// What [`Rewrite::write_each`] does around each batch.
pub struct BatchHooks<'f> {
    /// Before the batch's transaction, on the connection: whether to go on
    /// (the batches written so far are complete).
    pub before: &'f mut dyn FnMut(&mut Client) -> Result<bool>,
    /// In the batch's transaction, after its writes.
    pub in_transaction: InTransaction<'f>,
}

/// How a batch makes sure its groups still have the rows they were loaded
/// with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowCheck {
    /// The delete's own count: the rows it removes must add up to those
    /// the groups were loaded with, or the batch rolls back and starts
    /// again with [`RowCheck::EachGroup`]. Counting each group first read
    /// every row once more before the delete (2.1 s of the server's 12 s
    /// of writes on `20m`), for a change that all but never comes.
    Total,
    /// Each group's rows counted before the delete, so a group that
    /// changed is told and left alone.
    EachGroup,
}

/// What the locks of a batch found.
struct Locked {
    /// Groups that exist (or, for groups without a `state_groups` row,
    /// count as present).
    existing: BTreeSet<i64>,
    /// The groups' new bases.
    bases: BTreeSet<i64>,
}

/// Where the batches of a pipelined write stand
/// ([`Rewrite::write_pipelined`]). Batch k takes its locks only once the
/// batches before it hold theirs (or have committed), and commits only
/// once they have committed. So a lock that two batches both need (a
/// shared base's pending-deletion row) goes to the earlier one first, and
/// the later one waits on the server for a transaction that never waits
/// for it. Should an earlier batch let its locks go to try again, every
/// later batch not yet committed rolls back and starts over after it, so
/// the earlier one never waits on the server for a later one that waits
/// for it here.
#[derive(Default)]
struct Turns {
    /// Batches `0..locked` hold their locks or have committed.
    locked: usize,
    /// Batches `0..committed` have committed.
    committed: usize,
    /// Batches from this one on do not commit: one of them failed, or
    /// the caller stopped after the one before.
    closed_from: Option<usize>,
}

impl Turns {
    /// Whether batch `index` may still commit.
    fn open(&self, index: usize) -> bool {
        self.closed_from.is_none_or(|closed| index < closed)
    }
}

/// [`Turns`], shared by the connections of a pipelined write.
#[derive(Default)]
struct Pipeline {
    turns: Mutex<Turns>,
    changed: Condvar,
}

/// What a batch that has taken its locks does next.
enum Turn {
    Go,
    Again,
    Closed,
}

impl Pipeline {
    /// The turns, locked, with the condition to tell of a change.
    fn take(&self) -> (MutexGuard<'_, Turns>, &Condvar) {
        let turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        (turns, &self.changed)
    }

    /// Waits until `ready` holds (true) or batch `index` may no longer
    /// commit (false).
    fn wait_for(&self, index: usize, ready: impl Fn(&Turns) -> bool) -> bool {
        let mut turns = self.take().0;
        while turns.open(index) && !ready(&turns) {
            turns = self
                .changed
                .wait(turns)
                .unwrap_or_else(PoisonError::into_inner);
        }
        turns.open(index)
    }

    /// Batch `index` holds its locks: whether it goes on.
    fn locked(&self, index: usize) -> Turn {
        let (mut turns, changed) = self.take();
        if !turns.open(index) {
            return Turn::Closed;
        }
        if turns.locked < index {
            return Turn::Again;
        }
        turns.locked = index + 1;
        changed.notify_all();
        Turn::Go
    }

    /// Batch `index` let its locks go (to try again): the later ones start
    /// over.
    fn let_go(&self, index: usize) {
        let (mut turns, changed) = self.take();
        turns.locked = turns.locked.min(index);
        changed.notify_all();
    }

    /// Batches from `index` on do not commit.
    fn close_from(&self, index: usize) {
        let (mut turns, changed) = self.take();
        turns.closed_from = Some(turns.closed_from.map_or(index, |c| c.min(index)));
        changed.notify_all();
    }
}

impl Rewrite<'_> {
    /// How `group`, one this rewrite writes or builds on, was loaded.
    fn loaded(&self, group: i64) -> Loaded {
        self.original
            .loaded(group)
            .expect("the groups written were loaded")
    }

    /// Writes `groups` (ascending ids whose new entries differ from the
    /// loaded ones), one transaction per batch. `on_batch` is told how many
    /// groups each committed batch held, and returns whether to go on: the
    /// write stops after any batch it says no to (the manual tool does when
    /// asked to stop), leaving every group right, since each batch is a
    /// whole rewrite of its groups onto bases that exist and keep their
    /// state. `last`, if given, runs in the last transaction (in a
    /// transaction of its own when there is nothing to write); a caller
    /// that stops early gives it up.
    ///
    /// A batch that meets a deadlock, a serialization failure or a
    /// duplicate edge (another writer that takes no locks rewrote one of
    /// its groups at the same moment) is rolled back and tried again: its
    /// re-check then sees what the other writer committed and leaves those
    /// groups alone.
    pub fn write(
        &self,
        client: &mut Client,
        groups: &[i64],
        on_batch: &mut dyn FnMut(usize) -> bool,
        last: Option<LastTransaction<'_>>,
    ) -> Result<WriteReport> {
        self.write_listing(client, groups, &mut |batch, _| on_batch(batch.len()), last)
    }

    /// [`Rewrite::write`], telling `on_batch` each committed batch's groups
    /// and, of them, those it rewrote (the others are left as another
    /// writer has them).
    pub fn write_listing(
        &self,
        client: &mut Client,
        groups: &[i64],
        on_batch: &mut dyn FnMut(&[i64], &[i64]) -> bool,
        mut last: Option<LastTransaction<'_>>,
    ) -> Result<WriteReport> {
        let count = batches(self.new, groups).count();
        let at_least_one = last.is_some();
        let mut i = 0;
        let mut in_transaction = |tx: &mut Transaction<'_>, _: &[i64], _: &[i64]| {
            i += 1;
            match last.as_mut() {
                Some(last) if i >= count => last(tx),
                _ => Ok(()),
            }
        };
        let go_on = std::cell::Cell::new(true);
        self.write_batches(
            client,
            groups,
            at_least_one,
            &mut |_| Ok(go_on.get()),
            &mut in_transaction,
            &mut |batch, rewritten| go_on.set(on_batch(batch, rewritten)),
        )
    }

    /// Writes `groups` (ascending) batch after batch, with `hooks` around
    /// each; there is always at least one transaction, so the hooks' work
    /// is done even when there is nothing to write.
    pub fn write_each(
        &self,
        client: &mut Client,
        groups: &[i64],
        hooks: BatchHooks<'_>,
    ) -> Result<WriteReport> {
        self.write_batches(
            client,
            groups,
            true,
            hooks.before,
            hooks.in_transaction,
            &mut |_, _| {},
        )
    }

    fn write_batches(
        &self,
        client: &mut Client,
        groups: &[i64],
        at_least_one: bool,
        before: &mut dyn FnMut(&mut Client) -> Result<bool>,
        in_transaction: InTransaction<'_>,
        after: &mut dyn FnMut(&[i64], &[i64]),
    ) -> Result<WriteReport> {
        let mut all: Vec<&[i64]> = batches(self.new, groups).collect();
        if all.is_empty() && at_least_one {
            all.push(&[]);
        }
        let mut report = WriteReport::default();
        for batch in all {
            if !before(client)? {
                break;
            }
            let (written, ready) = self.commit_batch(client, batch, in_transaction)?;
            report.add(written);
            after(batch, &ready);
        }
        Ok(report)
    }

    /// [`Rewrite::write_listing`] on several connections at once (one
    /// batch in flight on each), with the same outcome as on one: the
    /// batches still commit one at a time in ascending order, so what is
    /// committed at any instant is a prefix of the batches, as on one
    /// connection ([`Turns`] says how). While batch k's transaction works
    /// on the server, batch k+1's locks, re-check, deletes and copy run on
    /// the next connection; it commits right after batch k.
    ///
    /// `on_batch` is told of each committed batch in order; once it says no,
    /// the batches not yet committed are rolled back (one may have
    /// committed meanwhile: it is told too). An error in a batch
    /// rolls back the later ones and is returned once every connection is
    /// done (the earlier batches commit or roll back as they would alone).
    pub fn write_pipelined(
        &self,
        clients: &mut [&mut Client],
        groups: &[i64],
        on_batch: &mut dyn FnMut(&[i64], &[i64]) -> bool,
    ) -> Result<WriteReport> {
        let all: Vec<&[i64]> = batches(self.new, groups)
            .flat_map(|batch| self.split_for_pipeline(batch))
            .collect();
        if clients.len() < 2 || all.len() < 2 {
            let client = clients.first_mut().expect("a connection to write on");
            return self.write_listing(client, groups, on_batch, None);
        }
        let turns = Pipeline::default();
        let (to_caller, committed) = channel();
        let width = clients.len();
        let mut report = WriteReport::default();
        let mut going_on = true;
        let failures: Vec<Error> = std::thread::scope(|scope| {
            let workers: Vec<_> = clients
                .iter_mut()
                .enumerate()
                .map(|(first, client)| {
                    let (turns, to_caller, all) = (&turns, to_caller.clone(), &all);
                    crate::tool::spawn_named(scope, "write-batches", move || -> Result<()> {
                        for index in (first..all.len()).step_by(width) {
                            let batch = all[index];
                            let tell = |(written, ready)| {
                                let _ = to_caller.send((index, written, batch, ready));
                            };
                            match self.pipelined_batch(client, index, batch, turns, tell) {
                                Ok(true) => {}
                                Ok(false) => return Ok(()),
                                Err(e) => {
                                    turns.close_from(index);
                                    return Err(e);
                                }
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            drop(to_caller);
            // Every committed batch is told, also one that committed
            // while the caller was saying no to the one before.
            for (index, written, batch, ready) in committed {
                report.add(written);
                if !on_batch(batch, &ready) && going_on {
                    going_on = false;
                    turns.close_from(index + 1);
                }
            }
            workers
                .into_iter()
                .filter_map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                        .err()
                })
                .collect()
        });
        match failures.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// `batch` in parts of at most [`PIPELINED_GROUPS`] groups and
    /// [`PIPELINED_OLD_ROWS`] old rows (a group with more is a part alone),
    /// so that the parts of a pipelined write take about the same time on
    /// the server.
    fn split_for_pipeline<'b>(&self, batch: &'b [i64]) -> Vec<&'b [i64]> {
        let mut parts = Vec::new();
        let (mut start, mut rows) = (0, 0);
        for (i, &group) in batch.iter().enumerate() {
            let old = self.loaded(group).rows;
            if i > start && (rows + old > PIPELINED_OLD_ROWS || i - start == PIPELINED_GROUPS) {
                parts.push(&batch[start..i]);
                (start, rows) = (i, 0);
            }
            rows += old;
        }
        parts.push(&batch[start..]);
        parts
    }

    /// Batch `index` of a pipelined write on `client`: its transaction
    /// taken in turn ([`Turns`]), tried again after a conflict; once
    /// committed, `tell` is given its figures and groups rewritten, still
    /// in turn (so batches are told in order). False when the write was
    /// closed (an error elsewhere, or the caller stopped) before this batch
    /// committed: it is rolled back.
    fn pipelined_batch(
        &self,
        client: &mut Client,
        index: usize,
        batch: &[i64],
        turns: &Pipeline,
        tell: impl FnOnce((WriteReport, Vec<i64>)),
    ) -> Result<bool> {
        let mut attempt = 1;
        let mut check = RowCheck::Total;
        loop {
            if !turns.wait_for(index, |t| t.locked >= index) {
                return Ok(false);
            }
            let mut tx = client
                .transaction()
                .map_err(|e| Error::db("starting a write transaction", e))?;
            let step = match self.lock(&mut tx, batch) {
                Ok(locked) => match turns.locked(index) {
                    Turn::Closed => return Ok(false),
                    // An earlier batch let its locks go to try again: ours
                    // may be in its way, so this one starts over after it.
                    Turn::Again => {
                        drop(tx);
                        continue;
                    }
                    Turn::Go => self.finish_batch(&mut tx, batch, locked, check),
                },
                Err(e) => Err(e),
            };
            match step {
                Ok(None) => {
                    // Rows moved: again, counting each group's.
                    drop(tx);
                    turns.let_go(index);
                    check = RowCheck::EachGroup;
                }
                Ok(Some(written)) => {
                    if !turns.wait_for(index, |t| t.committed == index || t.locked <= index) {
                        return Ok(false);
                    }
                    let (mut held, changed) = turns.take();
                    if held.locked <= index {
                        // As above: an earlier batch is trying again.
                        drop(held);
                        drop(tx);
                        continue;
                    }
                    tx.commit()
                        .map_err(|e| Error::db("committing rewritten state groups", e))?;
                    held.committed = index + 1;
                    tell(written);
                    changed.notify_all();
                    return Ok(true);
                }
                Err(e) if attempt < MAX_ATTEMPTS && worth_retrying(&e) => {
                    drop(tx);
                    turns.let_go(index);
                    warn_retry(batch, &e);
                    attempt += 1;
                }
                Err(e) => return Err(Error::db("rewriting state groups", e)),
            }
        }
    }

    /// One batch in its own transaction, tried again after a conflict.
    fn commit_batch(
        &self,
        client: &mut Client,
        batch: &[i64],
        in_transaction: InTransaction<'_>,
    ) -> Result<(WriteReport, Vec<i64>)> {
        let mut attempt = 1;
        let mut check = RowCheck::Total;
        loop {
            let mut tx = client
                .transaction()
                .map_err(|e| Error::db("starting a write transaction", e))?;
            match self.write_batch(&mut tx, batch, check) {
                // Rows moved: again, counting each group's.
                Ok(None) => check = RowCheck::EachGroup,
                Ok(Some((written, ready))) => {
                    in_transaction(&mut tx, batch, &ready)?;
                    tx.commit()
                        .map_err(|e| Error::db("committing rewritten state groups", e))?;
                    return Ok((written, ready));
                }
                Err(e) if attempt < MAX_ATTEMPTS && worth_retrying(&e) => {
                    warn_retry(batch, &e);
                    attempt += 1;
                }
                Err(e) => return Err(Error::db("rewriting state groups", e)),
            }
        }
    }

    /// Writes one batch inside an open transaction (the caller commits):
    /// lock, re-check, replace. Returns the figures and the groups
    /// rewritten, or nothing when the rows deleted did not add up (with
    /// [`RowCheck::Total`]: the caller rolls back and tries again counting
    /// each group's). Errors are PostgreSQL's own, so the caller can tell a
    /// conflict worth retrying from a real failure.
    fn write_batch(
        &self,
        tx: &mut Transaction<'_>,
        batch: &[i64],
        check: RowCheck,
    ) -> Result<Option<(WriteReport, Vec<i64>)>, postgres::Error> {
        if batch.is_empty() {
            return Ok(Some((WriteReport::default(), Vec::new())));
        }
        let locked = self.lock(tx, batch)?;
        self.finish_batch(tx, batch, locked, check)
    }

    /// The rest of [`Rewrite::write_batch`] once the batch is locked:
    /// re-check, replace.
    fn finish_batch(
        &self,
        tx: &mut Transaction<'_>,
        batch: &[i64],
        mut locked: Locked,
        check: RowCheck,
    ) -> Result<Option<(WriteReport, Vec<i64>)>, postgres::Error> {
        let ready = self.recheck(tx, batch, &mut locked, check)?;
        let mut report = WriteReport {
            written: ready.len(),
            skipped: batch.len() - ready.len(),
            ..WriteReport::default()
        };
        if !ready.is_empty() {
            let expected = (check == RowCheck::Total)
                .then(|| ready.iter().map(|&g| self.loaded(g).rows as u64).sum());
            match self.replace(tx, &ready, expected)? {
                Some(figures) => (report.rows_deleted, report.rows_inserted) = figures,
                None => return Ok(None),
            }
        }
        Ok(Some((report, ready)))
    }

    /// Locks the batch's groups and bases and bumps the bases' pending
    /// deletion.
    ///
    /// The groups rewritten are locked FOR NO KEY UPDATE: another compressor
    /// rewriting them waits for this transaction and then sees our result in
    /// its re-check, and Synapse's deletion (FOR UPDATE) waits too, while
    /// Synapse's writers (FOR KEY SHARE) can still build on them. New bases
    /// and current predecessors are locked FOR KEY SHARE, as Synapse's own
    /// writers lock the groups they build on: a base cannot be deleted under
    /// us, and Synapse's deletion, which locks the groups it deletes before
    /// de-deltaing their children, waits instead of de-deltaing a group we
    /// are rewriting.
    fn lock(&self, tx: &mut Transaction<'_>, batch: &[i64]) -> Result<Locked, postgres::Error> {
        let bases: BTreeSet<i64> = batch.iter().filter_map(|g| self.new[g].prev).collect();
        let rewritten: BTreeSet<i64> = batch.iter().copied().collect();
        let shared: Vec<i64> = bases
            .iter()
            .copied()
            .chain(batch.iter().filter_map(|&g| self.loaded(g).prev))
            .filter(|g| !rewritten.contains(g))
            .collect::<BTreeSet<i64>>()
            .into_iter()
            .collect();
        debug!("write batch of {} groups: locking", batch.len());
        // One round trip: the locks, and whether Synapse's pending-deletion
        // table (1.124+) exists.
        let lock_row = tx.query_typed_one(
            "WITH rewritten AS ( \
                 SELECT id FROM state_groups WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE \
             ), shared AS ( \
                 SELECT id FROM state_groups WHERE id = ANY($2) ORDER BY id FOR KEY SHARE \
             ) SELECT array(SELECT id FROM rewritten), array(SELECT id FROM shared), \
                      to_regclass('state_groups_pending_deletion') IS NOT NULL",
            &[(&batch, Type::INT8_ARRAY), (&shared, Type::INT8_ARRAY)],
        )?;
        let existing: BTreeSet<i64> = lock_row
            .try_get::<_, Vec<i64>>(0)?
            .into_iter()
            .chain(lock_row.try_get::<_, Vec<i64>>(1)?)
            .collect();
        let has_pending_table: bool = lock_row.try_get(2)?;
        if has_pending_table && !bases.is_empty() {
            let bases: Vec<i64> = bases.iter().copied().collect();
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            tx.execute_typed(
                "UPDATE state_groups_pending_deletion \
                 SET sequence_number = DEFAULT, insertion_ts = $2 WHERE state_group = ANY($1)",
                &[(&bases, Type::INT8_ARRAY), (&now_ms, Type::INT8)],
            )?;
        }
        Ok(Locked { existing, bases })
    }

    /// The groups of the batch that are still as they were loaded, with an
    /// existing new base; a warning for each other one, saying what was seen.
    ///
    /// Runs after the locks, so this new statement sees everything committed
    /// while we waited for them. Groups loaded without a `state_groups` row
    /// cannot be locked: one that still has none counts as present as long
    /// as its edge and rows are there (checked here for the rewritten ones; a
    /// base outside the batch must still have an edge or a row).
    fn recheck(
        &self,
        tx: &mut Transaction<'_>,
        batch: &[i64],
        locked: &mut Locked,
        check: RowCheck,
    ) -> Result<Vec<i64>, postgres::Error> {
        debug!("write batch: re-checking the groups");
        let original = self.original;
        let unlockable: Vec<i64> = locked
            .bases
            .iter()
            .filter(|b| !batch.contains(b) && !locked.existing.contains(b))
            .copied()
            .filter(|&b| original.loaded(b).is_some_and(|e| e.missing_group_row))
            .collect();
        let checked: Vec<i64> = batch.iter().chain(&unlockable).copied().collect();
        // The unlockable bases' rows are always counted; the batch's only
        // with `RowCheck::EachGroup` (else the delete adds them up).
        let counted: Vec<bool> = batch
            .iter()
            .map(|_| check == RowCheck::EachGroup)
            .chain(unlockable.iter().map(|_| true))
            .collect();
        // Each group's edges and row count, in one round trip.
        let mut now: BTreeMap<i64, (Vec<i64>, Option<i64>)> = BTreeMap::new();
        for row in tx.query_typed(
            "SELECT g.id, \
                    array(SELECT e.prev_state_group FROM state_group_edges AS e \
                          WHERE e.state_group = g.id ORDER BY 1), \
                    CASE WHEN g.counted THEN \
                        (SELECT count(*) FROM state_groups_state AS s WHERE s.state_group = g.id) \
                    END \
             FROM unnest($1::bigint[], $2::boolean[]) AS g(id, counted)",
            &[(&checked, Type::INT8_ARRAY), (&counted, Type::BOOL_ARRAY)],
        )? {
            now.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
        }
        let existing = &mut locked.existing;
        existing.extend(batch.iter().filter(|&&g| self.loaded(g).missing_group_row));
        // A base with no row, no edge and no rows is nothing at all now:
        // whether it was loaded that way or not, it cannot be told from a
        // group deleted since (a saved level head Synapse deleted between
        // the check of the run's progress and the load), and an edge to it
        // would point at nothing.
        existing.extend(unlockable.iter().copied().filter(|b| {
            let (edges, rows) = &now[b];
            !edges.is_empty() || rows.is_some_and(|n| n > 0)
        }));

        let mut ready = Vec::with_capacity(batch.len());
        for &group in batch {
            let loaded = self.loaded(group);
            let (edges, rows) = now.get(&group).cloned().unwrap_or_default();
            let conflict = if !existing.contains(&group) {
                Some(Conflict::Gone)
            } else if edges.as_slice() != loaded.prev.as_slice() {
                Some(Conflict::EdgeChanged {
                    loaded: loaded.prev,
                    now: edges,
                })
            } else if let Some(rows) = rows.filter(|&n| n != loaded.rows as i64) {
                Some(Conflict::RowsChanged {
                    loaded: loaded.rows,
                    now: rows,
                })
            } else {
                self.new[&group]
                    .prev
                    .filter(|b| !existing.contains(b))
                    .map(Conflict::BaseGone)
            };
            match conflict {
                None => ready.push(group),
                Some(why) => {
                    warn!("state group {group}: {why} since it was loaded; leaving it as it is")
                }
            }
        }
        Ok(ready)
    }

    /// Replaces the edges and rows of `ready`: set-based deletes, one
    /// multi-row edge insert, a binary COPY of the new rows. Returns the
    /// rows deleted and inserted, or nothing (and stops after the delete)
    /// when the delete did not remove the `expected` rows.
    fn replace(
        &self,
        tx: &mut Transaction<'_>,
        ready: &[i64],
        expected: Option<u64>,
    ) -> Result<Option<(u64, u64)>, postgres::Error> {
        let (from, to): (Vec<i64>, Vec<i64>) = ready
            .iter()
            .filter_map(|g| self.new[g].prev.map(|p| (*g, p)))
            .unzip();
        debug!("write batch: replacing {} groups", ready.len());
        let deleted = tx.execute_typed(
            "WITH edges AS (DELETE FROM state_group_edges WHERE state_group = ANY($1)) \
             DELETE FROM state_groups_state WHERE state_group = ANY($1)",
            &[(&ready, Type::INT8_ARRAY)],
        )?;
        if let Some(expected) = expected.filter(|&rows| rows != deleted) {
            warn!(
                "writing state groups {}..={}: the delete found {deleted} rows where {expected} \
                 were loaded; trying the batch again, counting each group's rows",
                ready[0],
                ready[ready.len() - 1],
            );
            return Ok(None);
        }
        crate::tool::failpoint::stop_here("write::after-deletes");
        if !from.is_empty() {
            tx.execute_typed(
                "INSERT INTO state_group_edges (state_group, prev_state_group) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[])",
                &[(&from, Type::INT8_ARRAY), (&to, Type::INT8_ARRAY)],
            )?;
        }

        crate::tool::failpoint::stop_here("write::before-copy");
        debug!("write batch: copying the new rows");
        let mut writer = RowCopy::start(tx)?;
        for &group in ready {
            let room_id = self.room_of.map_or(self.room_id, |r| r.room_of(group));
            for (key, value) in self.new[&group].delta.iter() {
                let (ty, state_key) = self.symbols.key_str(key);
                writer.row(group, room_id, ty, state_key, self.symbols.value_str(value))?;
            }
        }
        Ok(Some((deleted, writer.finish()?)))
    }
}

/// Says that `batch` met `err` and is tried again.
fn warn_retry(batch: &[i64], err: &postgres::Error) {
    warn!(
        "writing state groups {}..={}: {}; trying the batch again",
        batch[0],
        batch[batch.len() - 1],
        err.as_db_error().map_or("conflict", |d| d.message())
    );
}

/// Errors that come from another writer's timing, not from us: the batch
/// is rolled back and can be tried again.
fn worth_retrying(err: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    err.code().is_some_and(|code| {
        [
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::UNIQUE_VIOLATION,
        ]
        .contains(code)
    })
}

/// Why a loaded group is not rewritten after all.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Conflict {
    Gone,
    EdgeChanged { loaded: Option<i64>, now: Vec<i64> },
    RowsChanged { loaded: usize, now: i64 },
    BaseGone(i64),
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let edge = |prev: Option<i64>| prev.map_or("none".to_owned(), |p| format!("to {p}"));
        match self {
            Conflict::Gone => write!(f, "it no longer exists"),
            Conflict::EdgeChanged { loaded, now } => write!(
                f,
                "its edge changed (loaded: {}, now: {})",
                edge(*loaded),
                match now.as_slice() {
                    [] => "none".to_owned(),
                    [one] => edge(Some(*one)),
                    many => format!("{} edges", many.len()),
                }
            ),
            Conflict::RowsChanged { loaded, now } => {
                write!(f, "its rows changed (loaded {loaded}, now {now})")
            }
            Conflict::BaseGone(base) => write!(f, "its new base {base} no longer exists"),
        }
    }
}

/// Splits `groups` into consecutive batches bounded in groups and rows.
pub fn batches<'a>(new: &'a GroupMap, groups: &'a [i64]) -> impl Iterator<Item = &'a [i64]> + 'a {
    let mut rest = groups;
    let max_groups = max_groups_per_batch();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut rows = 0;
        let mut len = 0;
        while len < rest.len() && len < max_groups {
            rows += new[&rest[len]].delta.len();
            len += 1;
            if rows >= MAX_ROWS_PER_BATCH {
                break;
            }
        }
        let (batch, tail) = rest.split_at(len);
        rest = tail;
        Some(batch)
    })
}
