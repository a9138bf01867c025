//! The simulation's strings: event, room and user ids, plain or hostile
//! (`nasty_strings`), leaked so that big states clone cheaply.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Hostile fragments for nasty mode (no NUL: PostgreSQL text cannot hold it).
const NASTY: &[&str] = &[
    "it's",
    "\"double\"",
    "$$",
    "$tag$",
    "$x$ $$ $tag$ $",
    "back\\slash",
    "two\\\\backslashes",
    "\\",
    "\\.",
    "\\N",
    "\\x41\\u0041",
    "🎉🦀",
    "new\nline",
    "\\.\nafter",
    "tab\there",
    "cr\r\nlf",
    "100%_done",
    "'); DROP TABLE state_groups; --",
    "E'\\''",
    "e\u{301}\u{200d}\u{202e}rtl",
    "Ω≈ç√∫ 日本語",
    "NULL",
    "",
    " spaced ",
    ",;|",
];

/// A 5,000-character state key, repetitive enough to fit in a btree index
/// entry once PostgreSQL compresses it.
pub fn long_state_key() -> String {
    "long'key\"$$\\%🎉\t".chars().cycle().take(5_000).collect()
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The simulation's strings: leaked, so that the states of busy rooms (tens
/// of thousands of entries, one copy per group) clone and drop as plain
/// memory, without touching a reference count per string. Only what a
/// generation creates is leaked (one event id per state event, one user id
/// per user, a few room keys): a few megabytes for the test data, about a
/// hundred for the benchmark's largest data set.
pub(super) type Str = &'static str;
pub(super) type SimKey = (Str, Str);

pub(super) fn leak(s: String) -> Str {
    Box::leak(s.into_boxed_str())
}

/// [`long_state_key`], leaked once.
pub(super) fn long_state_key_str() -> Str {
    static LONG: std::sync::OnceLock<Str> = std::sync::OnceLock::new();
    LONG.get_or_init(|| leak(long_state_key()))
}
/// A room's (or a whole generation's) source of strings, and of the random
/// numbers the simulation draws.
pub(super) struct Strings {
    pub(super) rng: SmallRng,
    /// Hostile strings wanted ([`super::GenConfig::nasty_strings`]).
    pub(super) nasty: bool,
    /// Makes hostile event ids unique.
    counter: u64,
}

impl Strings {
    pub(super) fn new(seed: u64, nasty: bool) -> Strings {
        Strings {
            rng: SmallRng::seed_from_u64(seed),
            nasty,
            counter: 0,
        }
    }

    fn random_chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[self.rng.random_range(0..alphabet.len())] as char)
            .collect()
    }

    pub(super) fn nasty_fragment(&mut self) -> &'static str {
        NASTY[self.rng.random_range(0..NASTY.len())]
    }

    /// `$` + 43 base64url characters, like a v4 room event id; in nasty mode
    /// sometimes a hostile (but unique) one.
    pub(super) fn event_id(&mut self) -> Str {
        self.counter += 1;
        if self.nasty && self.rng.random_bool(0.15) {
            let fragment = self.nasty_fragment();
            return leak(format!("${fragment}{}", self.counter));
        }
        leak(format!("${}", self.random_chars(BASE64URL, 43)))
    }

    pub(super) fn room_id(&mut self, index: usize) -> String {
        let letters =
            self.random_chars(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 18);
        if self.nasty {
            let a = self.nasty_fragment();
            let b = self.nasty_fragment();
            format!("!{a}{index}'$$\\{b}\n🎉%{letters}:example.org")
        } else {
            format!("!{letters}:example.org")
        }
    }

    pub(super) fn user_id(&mut self, n: usize) -> Str {
        if self.nasty && n % 5 == 0 {
            let fragment = self.nasty_fragment();
            leak(format!("@{fragment}{n}:example.org"))
        } else {
            leak(format!("@user{n}:example.org"))
        }
    }
}
