//! Loading the next chunks while the current one is being written.
//!
//! A chunk's load keeps PostgreSQL busy finding and sending rows and this
//! process busy parsing them; its write is mostly PostgreSQL deleting and
//! indexing. One after the other on one connection, each side idles half
//! the time, and a load takes longer than a write. So while the main
//! connection works on chunk N, two read-only connections load the chunks
//! most likely to come next: N+1, predicted from where chunk N ends, and
//! N+2, predicted from where N+1 ends (its reader reports the chunk's last
//! group as soon as it has read the ids, before the rows).
//! The main loop uses a load only when its chunk is exactly the one that
//! comes (same room, start, level heads and size); otherwise it is dropped
//! and the chunk is loaded as usual.
//!
//! Nothing that happens in a reader may leave the main thread waiting: a
//! load's error or panic is reported as that load's result (the chunk is
//! then loaded again on the main connection), a reader whose connection is
//! closed says so and stops, and once every reader is gone every wait ends
//! at once.
//!
//! Why a load taken before the chunks ahead of it commit is still right: it
//! is one consistent snapshot; a chunk only rewrites groups of its own room,
//! and every load under way is of another room than the chunks before it;
//! and no chunk changes any group's state, which is all the compressor
//! takes from predecessors. A load may take its room's carried groups
//! (`crate::carry`): those of a chunk that has committed. Groups that
//! Synapse changes meanwhile are caught by the write's re-check, as for any
//! load.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use log::{debug, warn};
use postgres::Client;
use synapse_compress_state::core::state_map::Symbols;
use synapse_compress_state::db::load::{self, LoadReport};
use synapse_compress_state::tool::spawn_named;
use synapse_compress_state::{Error, GroupMap, Result};

use crate::carry::CarryRef;
use crate::room_ids::RoomIds;

/// Which chunk to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    pub room_id: String,
    /// Exclusive start (the room's saved position).
    pub after: Option<i64>,
    /// Heads of the saved levels (loaded, never rewritten).
    pub heads: Vec<i64>,
    pub chunk_size: i64,
    /// The heads' groups as the room's chunk before left them, if this run
    /// wrote it: taken as loaded instead of read again.
    pub carried: Option<CarryRef>,
}

/// A loaded chunk.
pub struct LoadedChunk {
    /// The chunk's group ids, ascending.
    pub ids: Vec<i64>,
    /// The room has groups after the chunk.
    pub more: bool,
    pub symbols: Symbols,
    /// The groups, or why they could not be read; `None` when the room has
    /// no groups after the start any more.
    pub groups: Option<Result<(GroupMap, LoadReport)>>,
}

/// Loads a chunk's groups and everything they need, in one consistent
/// snapshot (Synapse may be deleting and de-deltaing groups meanwhile).
/// `on_end` hears where the chunk ends as soon as its ids are read.
pub fn load_chunk(
    client: &mut Client,
    request: &ChunkRequest,
    room_ids: &RoomIds,
    on_end: &mut dyn FnMut(i64),
) -> Result<LoadedChunk> {
    // A carry comes with the strings of its rows: the load goes on from
    // them, so the carried groups need no translating.
    let (mut symbols, known) = match &request.carried {
        Some(carry) => carry.lay_out(),
        None => (Symbols::new(), GroupMap::new()),
    };
    let mut snapshot = load::snapshot(client)?;
    // One id more than the chunk tells whether the room goes on.
    let (mut ids, read_ahead) = room_ids.chunk_ids(
        &mut snapshot,
        &request.room_id,
        request.after,
        request.chunk_size,
    )?;
    let mut more = ids.len() as i64 > request.chunk_size;
    ids.truncate(request.chunk_size as usize);
    on_end(end_position(request, &ids));
    let load = |snapshot: &mut postgres::Transaction<'_>,
                symbols: &mut Symbols,
                ids: &[i64],
                known: GroupMap| {
        (!ids.is_empty()).then(|| {
            load::load_groups_after(
                snapshot,
                symbols,
                &request.room_id,
                ids,
                &request.heads,
                known,
                &mut |_| {},
            )
        })
    };
    let mut groups = load(&mut snapshot, &mut symbols, &ids, known);
    if read_ahead && has_vanished_group(&groups) {
        ids = room_ids.read_again(
            &mut snapshot,
            &request.room_id,
            request.after,
            request.chunk_size,
        )?;
        more = ids.len() as i64 > request.chunk_size;
        ids.truncate(request.chunk_size as usize);
        // The carry laid out again: its ids are those of `symbols`' start.
        let known = request
            .carried
            .as_ref()
            .map_or_else(GroupMap::new, |carry| carry.lay_out().1);
        groups = load(&mut snapshot, &mut symbols, &ids, known);
    }
    if !matches!(groups, Some(Err(_))) {
        snapshot
            .commit()
            .map_err(|e| Error::db("finishing the read", e))?;
    }
    Ok(LoadedChunk {
        ids,
        more,
        symbols,
        groups,
    })
}

/// Whether a loaded chunk holds a group with neither rows nor an edge: one
/// Synapse deleted after its id was read ahead (or, rarely, a group of
/// empty state, which reading the ids again keeps).
fn has_vanished_group(groups: &Option<Result<(GroupMap, LoadReport)>>) -> bool {
    let Some(Ok((groups, _))) = groups else {
        return false;
    };
    groups
        .values()
        .any(|g| g.in_range && g.prev.is_none() && g.delta.is_empty())
}

/// The room position a chunk leaves behind: its last group, or (no groups
/// left) where it started, which excludes the same groups.
fn end_position(request: &ChunkRequest, ids: &[i64]) -> i64 {
    ids.last().copied().or(request.after).unwrap_or(i64::MIN)
}

/// What a reader reports about a load (by its place in the queue).
enum Report {
    /// Where the chunk ends (its ids are read; its rows come next).
    End(u64, i64),
    /// The load is finished (boxed: a chunk is large, an end is not).
    Done(u64, Box<Result<LoadedChunk>>),
    /// The reader stopped for good (its connection is closed, or it
    /// panicked): it takes no more loads.
    Gone,
}

/// A load started ahead of time.
struct Pending {
    ticket: u64,
    request: ChunkRequest,
    /// Where this chunk ends, once its reader has said, so the chunk after
    /// it can be predicted too.
    end: Option<i64>,
}

/// Reader threads, each with its own connection, loading the chunks
/// predicted to come next, in parallel: one load keeps a reader connection
/// and about half a core busy, and a chunk's write is shorter than its load.
pub struct Prefetcher {
    requests: Sender<(u64, ChunkRequest)>,
    results: Receiver<Report>,
    /// Loads started, in the order their chunks are expected.
    pending: VecDeque<Pending>,
    /// Results that came in before they were asked for.
    arrived: HashMap<u64, Result<LoadedChunk>>,
    next_ticket: u64,
    readers: usize,
    /// Prefetched loads used and dropped.
    pub used: usize,
    pub dropped: usize,
}

impl Prefetcher {
    /// Starts one reader thread per client in `scope`. The threads end when
    /// the prefetcher is dropped (after finishing the loads under way).
    pub fn spawn<'scope>(
        scope: &'scope Scope<'scope, '_>,
        clients: Vec<Client>,
        room_ids: &'scope RoomIds,
    ) -> Self {
        let (requests, inbox) = channel::<(u64, ChunkRequest)>();
        let inbox = Arc::new(Mutex::new(inbox));
        let (outbox, results) = channel::<Report>();
        let readers = clients.len();
        for mut client in clients {
            let inbox = Arc::clone(&inbox);
            let outbox = outbox.clone();
            spawn_named(scope, "prefetch", move || {
                loop {
                    // The lock is held only while waiting for the next request.
                    let next = match inbox.lock() {
                        Ok(inbox) => inbox.recv(),
                        Err(_) => break,
                    };
                    let Ok((ticket, request)) = next else { break };
                    let (loaded, usable) =
                        load_caught(&mut client, &request, room_ids, ticket, &outbox);
                    if outbox.send(Report::Done(ticket, Box::new(loaded))).is_err() || !usable {
                        break;
                    }
                }
                let _ = outbox.send(Report::Gone);
            });
        }
        Self {
            requests,
            results,
            pending: VecDeque::new(),
            arrived: HashMap::new(),
            next_ticket: 0,
            readers,
            used: 0,
            dropped: 0,
        }
    }

    /// How many loads are under way (or done and not yet taken).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether a reader is free for one more load ahead.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.readers
    }

    /// The rooms of the loads under way with where each chunk ends, in the
    /// order the chunks should come, waiting for readers to report ends
    /// they have not yet (a load reports its end right after its first
    /// query). `None` if a load ended without saying (it failed).
    pub fn expected_ends(&mut self) -> Option<Vec<(String, i64)>> {
        for i in 0..self.pending.len() {
            while self.pending[i].end.is_none() {
                let ticket = self.pending[i].ticket;
                if self.arrived.contains_key(&ticket) {
                    return None;
                }
                self.receive()?;
            }
        }
        Some(
            self.pending
                .iter()
                .filter_map(|p| Some((p.request.room_id.clone(), p.end?)))
                .collect(),
        )
    }

    /// Starts loading `request` in the background, unless every reader is
    /// busy. When no reader is left to take it, there is no room any more
    /// ([`Prefetcher::has_room`] is false from then on, so callers that
    /// start loads while there is room stop).
    pub fn start(&mut self, request: ChunkRequest) {
        if !self.has_room() {
            return;
        }
        let ticket = self.next_ticket;
        if self.requests.send((ticket, request.clone())).is_err() {
            debug!("no reader left; loading every chunk on the main connection");
            self.readers = 0;
            return;
        }
        self.next_ticket += 1;
        self.pending.push_back(Pending {
            ticket,
            request,
            end: None,
        });
    }

    /// The background load of `request`, waiting for it to finish, if it is
    /// the next one started. Otherwise the predictions went wrong from their
    /// first step and none of the loads under way is needed: they are waited
    /// for and dropped. A load that failed, wholly or in its groups, is
    /// dropped too (the caller loads again on its own connection and
    /// reports any error from there).
    pub fn take(&mut self, request: &ChunkRequest) -> Option<LoadedChunk> {
        let first = self.pending.pop_front()?;
        if &first.request != request {
            debug!(
                "prefetched chunk of {} after {:?} not needed (and {} after it)",
                first.request.room_id,
                first.request.after,
                self.pending.len()
            );
            let stale: Vec<u64> = std::iter::once(first.ticket)
                .chain(self.pending.drain(..).map(|p| p.ticket))
                .collect();
            for ticket in stale {
                self.wait_for(ticket);
                self.dropped += 1;
            }
            return None;
        }
        // A load fails as a whole (no snapshot, no ids) or in its groups;
        // either way the chunk is loaded again on the main connection, which
        // reports the error if it is not the reader's own.
        match self.wait_for(first.ticket)? {
            Ok(LoadedChunk {
                groups: Some(Err(e)),
                ..
            })
            | Err(e) => {
                debug!("prefetching a chunk failed ({e}); loading it again");
                self.dropped += 1;
                None
            }
            Ok(chunk) => {
                self.used += 1;
                Some(chunk)
            }
        }
    }

    /// The result of the load `ticket`, keeping what comes first about
    /// other loads. `None` if the readers are gone.
    fn wait_for(&mut self, ticket: u64) -> Option<Result<LoadedChunk>> {
        loop {
            if let Some(done) = self.arrived.remove(&ticket) {
                return Some(done);
            }
            self.receive()?;
        }
    }

    /// Takes in one report: an end goes to its pending load, a result is
    /// kept until asked for. `None` if the readers are gone (every reader
    /// sends its last report before its sender is dropped, so nothing is
    /// left to wait for then).
    fn receive(&mut self) -> Option<()> {
        match self.results.recv().ok()? {
            Report::Gone => {
                self.readers = self.readers.saturating_sub(1);
                debug!("a reader stopped; {} left", self.readers);
            }
            Report::End(ticket, end) => {
                if let Some(p) = self.pending.iter_mut().find(|p| p.ticket == ticket) {
                    p.end = Some(end);
                }
            }
            Report::Done(ticket, done) => {
                self.arrived.insert(ticket, *done);
            }
        }
        Some(())
    }
}

/// Runs one load in a reader thread, turning a panic into that load's
/// error. Also says whether the reader's connection can take another load
/// (not after a panic, which may have left it mid-transaction, nor once the
/// server closed it).
fn load_caught(
    client: &mut Client,
    request: &ChunkRequest,
    room_ids: &RoomIds,
    ticket: u64,
    outbox: &Sender<Report>,
) -> (Result<LoadedChunk>, bool) {
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        load_chunk(client, request, room_ids, &mut |end| {
            let _ = outbox.send(Report::End(ticket, end));
        })
    }));
    match loaded {
        Ok(loaded) => {
            let usable = !client.is_closed();
            if !usable {
                warn!("A loading connection was closed; loading on the others");
            }
            (loaded, usable)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            let e = Error::Internal(format!(
                "loading a chunk of room {} ahead panicked: {what}",
                request.room_id
            ));
            warn!("{e}; loading it again on the main connection");
            (Err(e), false)
        }
    }
}
