//! Loading the next chunk while the current one is being written.
//!
//! A chunk's load keeps PostgreSQL busy finding and sending rows and this
//! process busy parsing them; its write is mostly PostgreSQL deleting and
//! indexing. One after the other on one connection, each side idles half
//! the time. So while the main connection writes chunk N, a second,
//! read-only connection loads the chunk most likely to come next (predicted
//! from the progress chunk N is about to save). The main loop uses that load
//! only when the next chunk is exactly the one predicted (same room, start,
//! level heads and size); otherwise it is dropped and the chunk is loaded as
//! usual.
//!
//! Why a load taken before chunk N commits is still right: it is one
//! consistent snapshot; chunk N only rewrites groups of its own room up to
//! its last group, never the next chunk's groups; and it changes no group's
//! state, which is all the compressor takes from predecessors and level
//! heads. Groups that Synapse changes meanwhile are caught by the write's
//! re-check, as for any load.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::Scope;

use log::debug;
use postgres::Client;
use synapse_compress_state::db::load::{self, LoadReport};
use synapse_compress_state::state_map::Symbols;
use synapse_compress_state::{Error, GroupMap, Result};

/// Which chunk to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    pub room_id: String,
    /// Exclusive start (the room's saved position).
    pub after: Option<i64>,
    /// Heads of the saved levels (loaded, never rewritten).
    pub heads: Vec<i64>,
    pub chunk_size: i64,
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
pub fn load_chunk(client: &mut Client, request: &ChunkRequest) -> Result<LoadedChunk> {
    let mut symbols = Symbols::new();
    let mut snapshot = load::snapshot(client)?;
    // One id more than the chunk tells whether the room goes on.
    let mut ids = load::range_ids(
        &mut snapshot,
        &request.room_id,
        request.after,
        None,
        Some(request.chunk_size.saturating_add(1)),
    )?;
    let more = ids.len() as i64 > request.chunk_size;
    ids.truncate(request.chunk_size as usize);
    let groups = (!ids.is_empty()).then(|| {
        load::load_groups(
            &mut snapshot,
            &mut symbols,
            &ids,
            &request.heads,
            &mut |_| {},
        )
    });
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

type Done = (ChunkRequest, Result<LoadedChunk>);

/// A reader thread with its own connection, loading one chunk at a time.
pub struct Prefetcher {
    requests: Sender<ChunkRequest>,
    results: Receiver<Done>,
    pending: Option<ChunkRequest>,
    /// Prefetched loads used and dropped.
    pub used: usize,
    pub dropped: usize,
}

impl Prefetcher {
    /// Starts the reader thread in `scope` on `client`. The thread ends when
    /// the prefetcher is dropped (after finishing a load under way).
    pub fn spawn<'scope>(scope: &'scope Scope<'scope, '_>, mut client: Client) -> Self {
        let (requests, inbox) = channel::<ChunkRequest>();
        let (outbox, results) = channel::<Done>();
        scope.spawn(move || {
            for request in inbox {
                let loaded = load_chunk(&mut client, &request);
                if outbox.send((request, loaded)).is_err() {
                    break;
                }
            }
        });
        Self {
            requests,
            results,
            pending: None,
            used: 0,
            dropped: 0,
        }
    }

    /// Starts loading `request` in the background (unless a load is under
    /// way already: there is only one reader).
    pub fn start(&mut self, request: ChunkRequest) {
        if self.pending.is_none() && self.requests.send(request.clone()).is_ok() {
            self.pending = Some(request);
        }
    }

    /// The background load of `request`, waiting for it to finish, if that
    /// is what was started. A load of anything else is waited for and
    /// dropped; a load that failed is dropped too (the caller loads again on
    /// its own connection and reports any error from there).
    pub fn take(&mut self, request: &ChunkRequest) -> Option<LoadedChunk> {
        self.pending.take()?;
        let (loaded_request, loaded) = self.results.recv().ok()?;
        match loaded {
            Ok(chunk) if &loaded_request == request => {
                self.used += 1;
                Some(chunk)
            }
            Ok(_) => {
                debug!(
                    "prefetched chunk of {} after {:?} not needed",
                    loaded_request.room_id, loaded_request.after
                );
                self.dropped += 1;
                None
            }
            Err(e) => {
                debug!("prefetching a chunk failed ({e}); loading it again");
                self.dropped += 1;
                None
            }
        }
    }
}
