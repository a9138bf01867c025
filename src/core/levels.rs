//! Level sizes (what the user asks for) and levels (the compressor's running
//! position in each level of the tree).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A validated, non-empty list of level sizes, smallest level first.
///
/// Parsing rejects the empty list, zeros and anything that is not a number,
/// so a `LevelSizes` value can always drive the compressor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelSizes(Vec<usize>);

impl LevelSizes {
    /// The sizes, lowest level first.
    pub fn sizes(&self) -> &[usize] {
        &self.0
    }

    /// Fresh, empty levels of these sizes.
    pub fn empty_levels(&self) -> Vec<Level> {
        self.0.iter().map(|&size| Level::new(size)).collect()
    }

    /// Builds sizes from numbers, rejecting an empty list or a zero.
    pub fn new(sizes: Vec<usize>) -> Result<Self, Error> {
        if sizes.is_empty() {
            return Err(Error::InvalidArgument(
                "the level sizes list is empty".to_owned(),
            ));
        }
        if sizes.contains(&0) {
            return Err(Error::InvalidArgument(
                "level sizes must be at least 1 (found a 0)".to_owned(),
            ));
        }
        if sizes.iter().any(|&s| s > i32::MAX as usize) {
            return Err(Error::InvalidArgument(format!(
                "level sizes must be at most {}",
                i32::MAX
            )));
        }
        Ok(Self(sizes))
    }

    /// The longest chain these levels build: a read walks at most one
    /// chain per level (`docs/algorithm.md`). A skipped chunk keeps
    /// Synapse's own chains below a deep group, so a run can exceed it by
    /// up to Synapse's [`SYNAPSE_MAX_HOPS`].
    pub fn longest_chain(&self) -> usize {
        self.0.iter().fold(0, |sum, &size| sum.saturating_add(size))
    }

    /// A warning when these levels let chains grow far beyond Synapse's
    /// own (more than [`LONG_CHAIN_FACTOR`] times): every hop is one more
    /// step of the walk Synapse does each time it reads such a group's
    /// state, so reads get slower while the table gets smaller.
    pub fn long_chain_warning(&self) -> Option<String> {
        let hops = self.longest_chain();
        (hops > LONG_CHAIN_FACTOR * SYNAPSE_MAX_HOPS).then(|| {
            format!(
                "levels {self} let chains reach about {hops} hops, far beyond Synapse's own {SYNAPSE_MAX_HOPS}: \
                 each time Synapse reads the state of a group (cache misses, state resolution), it walks every hop \
                 of its chain (one more edge and its rows per hop), so those reads get slower; the default {} allows about {}",
                LevelSizes::default(),
                LevelSizes::default().longest_chain()
            )
        })
    }

    /// A warning when chunks of `chunk_size` groups are smaller than the
    /// first level: a chunk then holds less than one level-1 chain, too
    /// few groups to pay for the snapshot a room's fresh levels start
    /// with, so many chunks would grow and are skipped (and each skip
    /// starts the room's levels afresh again).
    pub fn small_chunk_warning(&self, chunk_size: i64) -> Option<String> {
        let first = self.0[0];
        (chunk_size < first as i64).then(|| {
            format!(
                "the chunk size ({chunk_size}) is smaller than the first level size ({first}): a chunk holds less than one \
                 level-1 chain, too few groups to pay for the snapshot a room's fresh levels start with, so many chunks \
                 would need more rows than they have and are skipped, so the run saves little; use a chunk size of several times \
                 {first} (-c 500 with the default levels)"
            )
        })
    }
}

/// Synapse's own longest chain: it stores a full snapshot instead of a
/// delta once a chain would be longer (`MAX_STATE_DELTA_HOPS`).
pub const SYNAPSE_MAX_HOPS: usize = 100;

/// Levels whose chains can be this many times longer than Synapse's own
/// get a warning (the default levels' 175 hops do not).
pub const LONG_CHAIN_FACTOR: usize = 3;

impl Default for LevelSizes {
    fn default() -> Self {
        Self(vec![100, 50, 25])
    }
}

impl FromStr for LevelSizes {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |why: String| {
            Error::InvalidArgument(format!(
                "invalid level sizes {text:?}: {why} (expected a comma-separated list of positive numbers such as \"100,50,25\")"
            ))
        };
        if text.trim().is_empty() {
            return Err(bad("the list is empty".to_owned()));
        }
        let mut sizes = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let size: usize = part
                .parse()
                .map_err(|_| bad(format!("{part:?} is not a positive whole number")))?;
            if size == 0 {
                return Err(bad("a level size of 0 is not allowed".to_owned()));
            }
            sizes.push(size);
        }
        LevelSizes::new(sizes).map_err(|e| bad(e.to_string()))
    }
}

impl fmt::Display for LevelSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|s| s.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// One level of the tree: how long its chain may get, how long it is, and
/// the group at its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    max_length: usize,
    current_length: usize,
    head: Option<i64>,
}

impl Level {
    /// An empty level of the given maximum length.
    pub fn new(max_length: usize) -> Self {
        Self {
            max_length,
            current_length: 0,
            head: None,
        }
    }

    /// A level restored from saved progress. The caller validates
    /// (`current_length <= max_length`, a head when the length is non-zero).
    pub fn restore(max_length: usize, current_length: usize, head: Option<i64>) -> Self {
        Self {
            max_length,
            current_length,
            head,
        }
    }

    /// The maximum chain length.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The current chain length.
    pub fn current_length(&self) -> usize {
        self.current_length
    }

    /// The group at the head of this level, if any.
    pub fn head(&self) -> Option<i64> {
        self.head
    }

    /// Whether another group can be appended to this level's chain.
    pub fn has_space(&self) -> bool {
        self.current_length < self.max_length
    }

    /// Appends `group` to the chain (requires space).
    pub(crate) fn extend(&mut self, group: i64) {
        debug_assert!(self.has_space());
        self.head = Some(group);
        self.current_length += 1;
    }

    /// Starts a new chain at `group`.
    pub(crate) fn restart(&mut self, group: i64) {
        self.head = Some(group);
        self.current_length = 1;
    }

    /// The heads of `levels` (the groups a room's next chunk builds on),
    /// lowest level first.
    pub fn heads(levels: &[Level]) -> Vec<i64> {
        levels.iter().filter_map(Level::head).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_lists() {
        assert_eq!(
            "100,50,25".parse::<LevelSizes>().unwrap().sizes(),
            &[100, 50, 25]
        );
        assert_eq!(" 3 , 3 ".parse::<LevelSizes>().unwrap().sizes(), &[3, 3]);
        assert_eq!("7".parse::<LevelSizes>().unwrap().to_string(), "7");
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            "",
            " ",
            "0",
            "10,0",
            "a,b",
            "-5",
            "1,,2",
            "1.5",
            "99999999999",
        ] {
            let err = bad.parse::<LevelSizes>().unwrap_err().to_string();
            assert!(err.contains("invalid level sizes"), "{bad:?}: {err}");
        }
    }
}
