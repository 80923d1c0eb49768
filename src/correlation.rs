//! Correlation: the request id and the W3C trace context of one chat-server request.
//!
//! The request id comes from `correlation.request_id_header` (`X-Request-Id` by default)
//! when the chat server sent a valid one (1 to 128 characters of `A-Z a-z 0-9 - _ . : / + = @`),
//! else it is made here (32 hex digits) when `correlation.generate` is on. It is logged, sent
//! to the CRM and echoed in the answer. A valid `traceparent` (version 00) is passed on to
//! the CRM as a child: the same trace id and flags, a new span id. Nothing that fails these
//! checks is used or logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::config::CorrelationSection;
use crate::h1::server::RequestView;

/// Longest request id taken from the chat server.
pub const MAX_ID: usize = 128;

/// What the CRM call and the answer carry for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Correlation {
    pub request_id: Option<String>,
    /// The `traceparent` to send to the CRM (a child of the chat server's).
    pub traceparent: Option<String>,
}

impl Correlation {
    /// Read (or make) the correlation of a request.
    pub fn of<R: RequestView>(req: &R, cfg: &CorrelationSection) -> Correlation {
        if cfg.request_id_header.is_empty() && !cfg.traceparent {
            return Correlation::default();
        }
        let request_id = if cfg.request_id_header.is_empty() {
            None
        } else {
            req.header(&cfg.request_id_header)
                .filter(|v| valid_id(v))
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
                .or_else(|| cfg.generate.then(new_id))
        };
        let traceparent = if cfg.traceparent {
            req.header("traceparent").and_then(child_traceparent)
        } else {
            None
        };
        Correlation {
            request_id,
            traceparent,
        }
    }
}

/// Whether a chat server's request id may be used as it is.
pub fn valid_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_ID
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// A new request id: 32 hex digits, unique within this process and, by its random
/// start, across processes.
pub fn new_id() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(random_u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(32);
    for word in [
        mix(seed.wrapping_add(n)),
        mix(seed.rotate_left(31) ^ n ^ 0x9e37_79b9_7f4a_7c15),
    ] {
        crate::keys::push_hex(&mut id, &word.to_be_bytes());
    }
    id
}

/// A child of a valid version-00 `traceparent`: same trace id and flags, new span id.
pub fn child_traceparent(v: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(v)
        .ok()?
        .trim_matches(|c| c == ' ' || c == '\t');
    let mut parts = text.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    if parts.next().is_some()
        || version != "00"
        || !hex(trace, 32)
        || !nonzero(trace)
        || !hex(parent, 16)
        || !nonzero(parent)
        || !hex(flags, 2)
    {
        return None;
    }
    let span = loop {
        let s = random_u64();
        if s != 0 {
            break s;
        }
    };
    Some(format!("00-{trace}-{span:016x}-{flags}"))
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without randomness the id is still unique within the process (the counter).
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// SplitMix64's finaliser: a bijection that spreads the bits of consecutive numbers.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_the_chat_server_are_checked() {
        assert!(valid_id(b"abc-123_X.y:z/+=@"));
        assert!(valid_id(&[b'a'; MAX_ID]));
        assert!(!valid_id(&[b'a'; MAX_ID + 1]));
        assert!(!valid_id(b""));
        for bad in [&b"a b"[..], b"a\"b", b"a\r\nb", b"\xff", b"a,b", b"{x}"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn new_ids_are_hex_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 32 && valid_id(i.as_bytes())));
    }

    #[test]
    fn traceparent_children_keep_the_trace_and_flags() {
        let parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(parent).unwrap();
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{child}"
        );
        assert!(child.ends_with("-01"));
        assert_ne!(&child[36..52], "00f067aa0ba902b7");
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"garbage",
        ] {
            assert_eq!(child_traceparent(bad), None, "{bad:?}");
        }
    }
}
