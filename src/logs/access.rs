//! The access log: one JSON line per chat-server request.
//!
//! A line names the API, method, status, errorCode, cache result, upstream status and
//! time, the request id, and an 8-hex keyed fingerprint of the token. It never carries a
//! token, a secretWord, a path or a body.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One request's line. Written by hand (see [`Line::write_json`]): the serde path cost a
/// cache hit some 10% of its CPU.
pub struct Line<'a> {
    pub ts: Ts,
    pub api: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub error_code: Option<&'a str>,
    pub cache: Option<&'a str>,
    /// Search: "first" or "next" step.
    pub step: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub upstream: Option<Duration>,
    pub duration: Duration,
    pub token_fp: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub peer: Option<&'a str>,
    /// TLS connections: the version, and the client certificate's subject (mutual TLS).
    pub tls: Option<&'a str>,
    pub client_cert: Option<&'a str>,
}

impl Line<'_> {
    /// The line as one JSON object (no newline), fields in docs/operations.md's order; absent
    /// fields are left out; durations in milliseconds with three decimals.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Each field's `,"name":` is one constant piece: a line is some twenty copies.
        out.reserve(384);
        out.extend_from_slice(b"{\"ts\":\"");
        out.extend_from_slice(&self.ts.0);
        out.push(b'"');
        // Labels from fixed sets, hex digits and addresses need no escaping; the three
        // fields that come from outside (a CRM's code, a chat server's id, a client
        // certificate's subject) are checked when they are read, and escaped here all the same.
        plain(out, b",\"api\":\"", self.api);
        plain(out, b",\"method\":\"", self.method);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        escaped(out, b",\"errorCode\":\"", self.error_code);
        if let Some(cache) = self.cache {
            plain(out, b",\"cache\":\"", cache);
        }
        if let Some(step) = self.step {
            plain(out, b",\"step\":\"", step);
        }
        if let Some(s) = self.upstream_status {
            out.extend_from_slice(b",\"upstreamStatus\":");
            out.extend_from_slice(itoa::Buffer::new().format(s).as_bytes());
        }
        if let Some(d) = self.upstream {
            out.extend_from_slice(b",\"upstreamMs\":");
            millis(out, d);
        }
        out.extend_from_slice(b",\"durationMs\":");
        millis(out, self.duration);
        if let Some(fp) = self.token_fp {
            plain(out, b",\"tokenFp\":\"", fp);
        }
        escaped(out, b",\"requestId\":\"", self.request_id);
        if let Some(peer) = self.peer {
            plain(out, b",\"peer\":\"", peer);
        }
        if let Some(tls) = self.tls {
            plain(out, b",\"tls\":\"", tls);
        }
        escaped(out, b",\"clientCert\":\"", self.client_cert);
        out.push(b'}');
    }
}

/// `prefix` (`,"name":"`), a value known to hold only characters JSON strings take as
/// they are, and the closing quote.
fn plain(out: &mut Vec<u8>, prefix: &[u8], value: &str) {
    debug_assert!(value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'));
    out.extend_from_slice(prefix);
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `prefix`, a string value escaped as JSON requires (the values are checked ASCII, so
/// this is a copy in practice) and the closing quote; nothing when there is no value.
fn escaped(out: &mut Vec<u8>, prefix: &[u8], value: Option<&str>) {
    let Some(value) = value else {
        return;
    };
    out.extend_from_slice(prefix);
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(value.as_bytes());
    } else {
        for c in value.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
    out.push(b'"');
}

/// A duration in milliseconds with three decimals (microsecond resolution).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// The client of a connection as its lines show it: formatted once per connection, not
/// once per request.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    text: Option<String>,
    /// The TLS version of the connection, and the client certificate's subject name.
    pub tls: Option<&'static str>,
    pub client_cert: Option<String>,
}

impl Peer {
    pub fn new(ip: Option<IpAddr>) -> Self {
        Peer {
            text: ip.map(|ip| ip.to_string()),
            ..Peer::default()
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.text.as_deref()
    }
}

/// A UTC timestamp with milliseconds, `2026-12-01T18:16:06.123Z`, formatted without an
/// allocation: each thread keeps the text of the current second.
#[derive(Clone, Copy)]
pub struct Ts([u8; 24]);

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z"))
    }
}

thread_local! {
    /// The second last formatted, and its text up to the dot.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [b'0'; 20])) };
}

pub fn now() -> Ts {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    let mut ts = *b"1970-01-01T00:00:00.000Z";
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = humantime::format_rfc3339_seconds(now).to_string();
            if let Some(prefix) = text.as_bytes().get(..19) {
                cached.1[..19].copy_from_slice(prefix);
                cached.1[19] = b'.';
                cached.0 = secs;
            }
        }
        ts[..20].copy_from_slice(&cached.1);
    });
    let digits = [millis / 100, millis / 10 % 10, millis % 10];
    for (slot, d) in ts[20..23].iter_mut().zip(digits) {
        *slot = b'0' + (d as u8);
    }
    Ts(ts)
}

thread_local! {
    /// Each worker serialises its lines into one buffer of its own, kept between lines.
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

pub fn emit(line: &Line<'_>) {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        line.write_json(&mut buf);
        buf.push(b'\n');
        super::sink::send(&buf);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_json_with_every_field_and_escapes_what_it_must() {
        let mut out = Vec::new();
        Line {
            ts: now(),
            api: "auth",
            method: "GET",
            status: 404,
            error_code: Some("10\"01"),
            cache: Some("miss"),
            step: None,
            upstream_status: Some(404),
            upstream: Some(Duration::from_micros(12_345)),
            duration: Duration::from_micros(1_000_007),
            token_fp: Some("0a1b2c3d"),
            request_id: Some("q\"\\\u{1}é"),
            peer: Some("::1"),
            tls: Some("TLSv1_3"),
            client_cert: Some("chat.example.com"),
        }
        .write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let expect = serde_json::json!({
            "ts": v["ts"], "api": "auth", "method": "GET", "status": 404,
            "cache": "miss", "errorCode": "10\"01", "upstreamStatus": 404, "upstreamMs": 12.345, "durationMs": 1000.007,
            "tokenFp": "0a1b2c3d", "requestId": "q\"\\\u{1}é", "peer": "::1",
            "tls": "TLSv1_3", "clientCert": "chat.example.com",
        });
        assert_eq!(v, expect);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys[..4], ["ts", "api", "method", "status"]);

        out.clear();
        Line {
            ts: now(),
            api: "other",
            method: "-",
            status: 400,
            error_code: None,
            cache: None,
            step: None,
            upstream_status: None,
            upstream: None,
            duration: Duration::ZERO,
            token_fp: None,
            request_id: None,
            peer: None,
            tls: None,
            client_cert: None,
        }
        .write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 5, "{v}");
        assert_eq!(v["durationMs"], 0.0);
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let a = serde_json::to_string(&now()).unwrap();
        let text = a.trim_matches('"');
        assert_eq!(text.len(), 24, "{text}");
        let parsed = humantime::parse_rfc3339(text).unwrap();
        let off = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(off < Duration::from_secs(2), "{text}");
        assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.');
    }
}
