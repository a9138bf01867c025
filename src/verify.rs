//! Checking that a new structure gives every group the same state as before.
//!
//! Every group is covered. A group whose entry (predecessor and rows) is
//! unchanged and whose predecessor is covered resolves to the same state in
//! both structures, by induction along its chain; the new structure keeps
//! every edge pointing to a lower id, so the induction is well-founded. Every
//! other group (the rewritten ones, a few percent of a room) is resolved in
//! both structures and compared entry by entry, in parallel.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::group::GroupMap;
use crate::resolve::full_state;

/// What a verification looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Groups covered (all of them).
    pub groups: usize,
    /// Groups whose full state was resolved and compared directly.
    pub compared: usize,
}

/// Fails with [`Error::VerificationFailed`] if any group's resolved state in
/// `new` differs from `original`, or if `new` is not a well-formed structure.
pub fn verify(original: &GroupMap, new: &GroupMap) -> Result<Verified> {
    if original.len() != new.len() || original.keys().ne(new.keys()) {
        return Err(Error::VerificationFailed(
            "the new structure does not hold the same state groups".to_owned(),
        ));
    }

    let mut to_compare = Vec::new();
    for (&group, new_entry) in new {
        if let Some(prev) = new_entry.prev {
            if prev >= group || !new.contains_key(&prev) {
                return Err(Error::VerificationFailed(format!(
                    "state group {group} would point to {prev}, which is not an earlier loaded group"
                )));
            }
        }
        if original[&group] != *new_entry {
            to_compare.push(group);
        }
    }

    to_compare.par_iter().try_for_each(|&group| {
        let before = full_state(original, group)?;
        let after = full_state(new, group)?;
        if before == after {
            Ok(())
        } else {
            Err(Error::VerificationFailed(format!(
                "state group {group} would resolve to a different state ({} entries before, {} after)",
                before.len(),
                after.len()
            )))
        }
    })?;

    Ok(Verified {
        groups: new.len(),
        compared: to_compare.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::StateGroupEntry;
    use crate::state_map::{key, Atom, StateMap};

    fn entry(prev: Option<i64>, rows: &[(&str, &str)]) -> StateGroupEntry {
        StateGroupEntry {
            in_range: true,
            prev,
            delta: StateMap::from_unsorted(
                rows.iter()
                    .map(|(k, v)| (key("t", k), Atom::from(*v)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn detects_a_changed_state_and_accepts_an_equal_one() {
        let mut original = GroupMap::new();
        original.insert(1, entry(None, &[("a", "1")]));
        original.insert(2, entry(Some(1), &[("b", "2")]));
        original.insert(3, entry(Some(2), &[("c", "3")]));

        let mut good = original.clone();
        good.insert(3, entry(Some(1), &[("b", "2"), ("c", "3")]));
        assert_eq!(verify(&original, &good).unwrap().compared, 1);

        let mut bad = original.clone();
        bad.insert(3, entry(Some(1), &[("c", "3")]));
        assert!(matches!(
            verify(&original, &bad),
            Err(Error::VerificationFailed(_))
        ));

        // A wrong root propagates to unchanged children: 2 itself is compared.
        let mut bad_root = original.clone();
        bad_root.insert(2, entry(Some(1), &[("b", "X")]));
        assert!(verify(&original, &bad_root).is_err());

        let mut forward = original.clone();
        forward.insert(2, entry(Some(3), &[]));
        assert!(verify(&original, &forward).is_err());
    }
}
