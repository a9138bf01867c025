//! Reading a connection string: a `postgresql://` URL (percent-decoded)
//! or libpq's `key=value` pairs (quoted values, backslash escapes), as a
//! base string for the `postgres` crate and the keys handled here.

use super::OWN_KEYS;
use crate::error::{Error, Result};

/// Splits the parameters handled here (TLS, `connect_timeout`) out of a
/// URL's query string.
pub(super) fn split_url(url: &str) -> Result<(String, Vec<(String, String)>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if OWN_KEYS.contains(&key) {
            tls.push((key.to_owned(), percent_decode(value)?));
        } else {
            kept.push(part);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::BadConnectionString(format!("bad percent-encoding in {text:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::BadConnectionString(format!("{text:?} is not UTF-8 once decoded")))
}

/// Splits the parameters handled here out of a `key=value key='quoted value'` string,
/// keeping the other pairs byte for byte.
pub(super) fn split_key_values(text: &str) -> Result<(String, Vec<(String, String)>)> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut kept = String::new();
    let mut tls = Vec::new();
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(Error::BadConnectionString(format!(
                "expected key=value pairs or a postgresql:// URL, found {key:?} without a value"
            )));
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(Error::BadConnectionString(format!(
                            "unterminated quoted value for {key:?}"
                        )))
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        if OWN_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            kept.extend(&chars[start..i]);
            kept.push(' ');
        }
    }
    Ok((kept.trim_end().to_owned(), tls))
}
