//! Digests of resolved states: one short hash per group, so that the state
//! of every group can be recorded before a compression and compared after it
//! (`state-digest`, `scripts/demo.sh`) without keeping the states around.
//!
//! The digest is a 128-bit FNV-1a over the entries in key order, each string
//! length-prefixed, so it depends on the exact bytes of every type, state key
//! and event id and on nothing else.

use crate::StateMap;
use std::collections::BTreeMap;

const FNV_OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
const FNV_PRIME: u128 = 0x0000000001000000000000000000013b;

/// Incremental 128-bit FNV-1a.
#[derive(Clone, Copy, Debug)]
pub struct Fnv128(u128);

impl Default for Fnv128 {
    fn default() -> Self {
        Fnv128(FNV_OFFSET)
    }
}

impl Fnv128 {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// Writes a length-prefixed string (so that ("ab","c") != ("a","bc")).
    pub fn write_str(&mut self, s: &str) {
        self.write(&(s.len() as u64).to_le_bytes());
        self.write(s.as_bytes());
    }

    pub fn finish(&self) -> u128 {
        self.0
    }
}

/// The digest of a resolved state, as 32 hex digits.
pub fn state_digest(state: &StateMap) -> String {
    let mut h = Fnv128::default();
    h.write(&(state.len() as u64).to_le_bytes());
    for ((event_type, state_key), event_id) in state {
        h.write_str(event_type);
        h.write_str(state_key);
        h.write_str(event_id);
    }
    format!("{:032x}", h.finish())
}

/// Formats digests as `id<TAB>digest` lines.
pub fn format_digests(digests: &BTreeMap<i64, String>) -> String {
    let mut out = String::with_capacity(digests.len() * 48);
    for (group, digest) in digests {
        out.push_str(&format!("{group}\t{digest}\n"));
    }
    out
}

/// Parses `id<TAB>digest` lines (blank lines ignored).
pub fn parse_digests(text: &str) -> Result<BTreeMap<i64, String>, String> {
    let mut digests = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (group, digest) = line
            .split_once('\t')
            .ok_or_else(|| format!("line {}: expected `id<TAB>digest`, got {line:?}", n + 1))?;
        let group: i64 = group
            .trim()
            .parse()
            .map_err(|_| format!("line {}: bad group id {group:?}", n + 1))?;
        if digests.insert(group, digest.trim().to_string()).is_some() {
            return Err(format!("line {}: group {group} listed twice", n + 1));
        }
    }
    Ok(digests)
}

/// The first difference between recorded and current digests, if any.
pub fn compare_digests(
    recorded: &BTreeMap<i64, String>,
    current: &BTreeMap<i64, String>,
) -> Option<String> {
    for (group, digest) in recorded {
        match current.get(group) {
            None => return Some(format!("state group {group} no longer exists")),
            Some(now) if now != digest => {
                return Some(format!(
                    "state of group {group} differs (recorded {digest}, now {now})"
                ))
            }
            Some(_) => {}
        }
    }
    current
        .keys()
        .find(|group| !recorded.contains_key(group))
        .map(|group| format!("state group {group} is new (not in the recording)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entries: &[(&str, &str, &str)]) -> StateMap {
        entries
            .iter()
            .map(|(t, k, e)| ((t.to_string(), k.to_string()), e.to_string()))
            .collect()
    }

    #[test]
    fn digest_depends_on_every_byte_and_boundary() {
        let a = state_digest(&state(&[("ab", "c", "$e")]));
        let b = state_digest(&state(&[("a", "bc", "$e")]));
        let c = state_digest(&state(&[("ab", "c", "$f")]));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, state_digest(&state(&[("ab", "c", "$e")])));
        assert_ne!(state_digest(&StateMap::new()), a);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn digests_round_trip_and_compare() {
        let digests = BTreeMap::from([(1, "aa".to_string()), (5, "bb".to_string())]);
        let parsed = parse_digests(&format_digests(&digests)).unwrap();
        assert_eq!(parsed, digests);
        assert_eq!(compare_digests(&digests, &parsed), None);
        let mut changed = parsed.clone();
        changed.insert(5, "cc".into());
        assert!(compare_digests(&digests, &changed)
            .unwrap()
            .contains("group 5"));
        changed.remove(&5);
        assert!(compare_digests(&digests, &changed)
            .unwrap()
            .contains("no longer"));
        assert!(parse_digests("x\ty").is_err());
    }
}
