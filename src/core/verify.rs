//! Checking that a new structure gives every group the same state as before.
//!
//! Every group is covered. A group whose entry (predecessor and rows) is
//! unchanged and whose predecessor is covered resolves to the same state in
//! both structures, by induction along its chain; the new structure keeps
//! every new edge pointing to a lower, loaded id, so the induction is
//! well-founded. Every rewritten group (a few percent of a room) is resolved
//! in both structures and compared entry by entry, in parallel.

use rayon::prelude::*;

use crate::core::group::{changed_groups, GroupMap, Overlay};
use crate::core::resolve::Resolver;
use crate::error::{Error, Result};

/// States each verifying resolver keeps. The rewritten groups are compared
/// in id order, so the last state or two is what the next one reuses; the
/// resolvers run on every core, two each, and a state can be large.
const VERIFY_CACHE: usize = 2;

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
    to_compare.par_iter().try_for_each_init(
        || (Resolver::keeping(original, VERIFY_CACHE), Resolver::keeping(&new, VERIFY_CACHE)),
        |(before_resolver, after_resolver), &group| {
            let before = before_resolver.state(group)?;
            let after = after_resolver.state(group)?;
            if before == after {
                Ok(())
            } else {
                Err(Error::VerificationFailed(format!(
                    "state group {group} would resolve to a different state ({} entries before, {} after)",
                    before.len(),
                    after.len()
                )))
            }
        },
    )?;

    Ok(Verified {
        groups: original.len(),
        compared: to_compare.len(),
    })
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
            delta: StateMap::from_unsorted(rows).0,
            missing_group_row: false,
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
}
