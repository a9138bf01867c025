//! Checking that a new structure gives every group the same state as before.
//!
//! Every group is covered. A group whose entry (predecessor and rows) is
//! unchanged and whose predecessor is covered resolves to the same state in
//! both structures, by induction along its chain; the new structure keeps
//! every new edge pointing to a lower, loaded id, so the induction is
//! well-founded. Every rewritten group (a few percent of a room) is resolved
//! in both structures and compared entry by entry (in parallel when there
//! are many).

use rayon::prelude::*;

use crate::core::group::{changed_groups, GroupMap, Groups, Overlay};
use crate::core::resolve::Resolver;
use crate::error::{Error, Result};

/// States each verifying resolver keeps. The rewritten groups are compared
/// in id order, so the last state or two is what the next one reuses; the
/// resolvers run on every core, two each, and a state can be large.
const VERIFY_CACHE: usize = 2;

/// Fewer rewritten groups than this are compared on the calling thread.
/// Each part of a parallel comparison starts with empty resolvers (so from
/// its groups' snapshots), and the pool's threads spin a while for more
/// work after each call: the automatic tool verifies thousands of chunks
/// of about ten rewritten groups each, on threads that are busy anyway.
const PARALLEL_FROM: usize = 256;

/// What a verification looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Groups covered (all of them).
    pub groups: usize,
    /// Groups whose full state was resolved and compared directly.
    pub compared: usize,
}

/// Fails with [`Error::VerificationFailed`] if any group would resolve to a
/// different state with `changes` laid over `original`, or if a change
/// would not be a well-formed entry.
pub fn verify(original: &GroupMap, changes: &GroupMap) -> Result<Verified> {
    for (&group, entry) in changes {
        if !original.contains_key(&group) {
            return Err(Error::VerificationFailed(format!(
                "state group {group} would be written but was never loaded"
            )));
        }
        if let Some(prev) = entry.prev {
            if prev >= group || !original.contains_key(&prev) {
                return Err(Error::VerificationFailed(format!(
                    "state group {group} would point to {prev}, which is not an earlier loaded group"
                )));
            }
        }
    }

    let to_compare = changed_groups(original, changes);
    let new = Overlay { original, changes };
    let resolvers = || {
        (
            Resolver::keeping(original, VERIFY_CACHE),
            Resolver::keeping(&new, VERIFY_CACHE),
        )
    };
    if to_compare.len() < PARALLEL_FROM {
        let mut both = resolvers();
        for &group in &to_compare {
            compare(&mut both, group)?;
        }
    } else {
        to_compare
            .par_iter()
            .try_for_each_init(resolvers, |both, &group| compare(both, group))?;
    }

    Ok(Verified {
        groups: original.len(),
        compared: to_compare.len(),
    })
}

/// Resolves `group` before and after, and fails if the states differ.
fn compare<B: Groups, A: Groups>(
    (before, after): &mut (Resolver<'_, B>, Resolver<'_, A>),
    group: i64,
) -> Result<()> {
    let (before, after) = (before.state(group)?, after.state(group)?);
    if before == after {
        Ok(())
    } else {
        Err(Error::VerificationFailed(format!(
            "state group {group} would resolve to a different state ({} entries before, {} after)",
            before.len(),
            after.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::group::StateGroupEntry;
    use crate::core::state_map::{StateMap, Symbols};

    fn entry(sym: &mut Symbols, prev: Option<i64>, rows: &[(&str, &str)]) -> StateGroupEntry {
        let rows = rows
            .iter()
            .map(|(k, v)| (sym.key("t", k), sym.value(v)))
            .collect();
        StateGroupEntry {
            in_range: true,
            prev,
            delta: StateMap::from_unsorted(rows),
            missing_group_row: false,
            repeated_rows: 0,
        }
    }

    #[test]
    fn detects_a_changed_state_and_accepts_an_equal_one() {
        let mut sym = Symbols::new();
        let mut original = GroupMap::new();
        original.insert(1, entry(&mut sym, None, &[("a", "1")]));
        original.insert(2, entry(&mut sym, Some(1), &[("b", "2")]));
        original.insert(3, entry(&mut sym, Some(2), &[("c", "3")]));

        let good = GroupMap::from([(3, entry(&mut sym, Some(1), &[("b", "2"), ("c", "3")]))]);
        assert_eq!(verify(&original, &good).unwrap().compared, 1);

        let bad = GroupMap::from([(3, entry(&mut sym, Some(1), &[("c", "3")]))]);
        assert!(matches!(
            verify(&original, &bad),
            Err(Error::VerificationFailed(_))
        ));

        // A wrong group whose unchanged children are covered through it.
        let bad_root = GroupMap::from([(2, entry(&mut sym, Some(1), &[("b", "X")]))]);
        assert!(verify(&original, &bad_root).is_err());

        let forward = GroupMap::from([(2, entry(&mut sym, Some(3), &[]))]);
        assert!(verify(&original, &forward).is_err());
    }

    /// Enough rewritten groups to be compared in parallel: each group of a
    /// chain made a snapshot (right), then one of them given a wrong row.
    #[test]
    fn compares_many_groups_in_parallel_too() {
        let mut sym = Symbols::new();
        let mut original = GroupMap::new();
        let n = PARALLEL_FROM as i64 * 2;
        let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        for i in 0..n {
            let name = names[i as usize].as_str();
            let prev = (i > 0).then(|| i - 1);
            original.insert(i, entry(&mut sym, prev, &[(name, name)]));
        }
        let snapshots: GroupMap = (1..n)
            .map(|i| {
                let rows: Vec<(&str, &str)> = names[..=i as usize]
                    .iter()
                    .map(|name| (name.as_str(), name.as_str()))
                    .collect();
                (i, entry(&mut sym, None, &rows))
            })
            .collect();
        assert_eq!(
            verify(&original, &snapshots).unwrap().compared,
            n as usize - 1
        );

        let mut wrong = snapshots;
        let rows: Vec<(&str, &str)> = names[..300]
            .iter()
            .map(|name| (name.as_str(), "x"))
            .collect();
        wrong.insert(299, entry(&mut sym, None, &rows));
        assert!(matches!(
            verify(&original, &wrong),
            Err(Error::VerificationFailed(_))
        ));
    }
}
