//! Write our answer to the chat server: the status line, the headers and the body, into the
//! connection's output buffer, so that one answer is one `write`.
//!
//! Every answer is JSON with `Content-Length`, `Date`, `Cache-Control: no-store` (cards
//! are personal data) and, on the Auth API, `X-Cache: HIT|MISS|STALE`. Cards are stored
//! as ready body bytes, so a cache hit is a header of a few lines and one copy of the body.

// Input from the chat server or the CRM reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::cache::Stored;

/// The body of an answer: a stored card (shared with the cache), or bytes of its own.
#[derive(Debug, Clone)]
pub enum Body {
    Stored(Stored),
    Bytes(Bytes),
}

impl Body {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Stored(s) => s.body(),
            Body::Bytes(b) => b,
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Bytes(b)
    }
}

/// An answer ready to write.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Body,
    pub x_cache: Option<&'static str>,
    /// One more header the answer needs (`Allow` on a 405, `Retry-After` on a 503/429).
    pub header: Option<(&'static str, Cow<'static, str>)>,
}

/// What the connection adds to an answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery<'a> {
    /// `Connection: close` (the connection ends after this answer).
    pub close: bool,
    /// `Connection: keep-alive` (an HTTP/1.0 client asked to keep the connection).
    pub keep_alive_1_0: bool,
    /// The request was `HEAD`: headers only.
    pub head_only: bool,
    /// The request id header (name, value) echoed to the chat server; both header-safe.
    pub request_id: Option<(&'a str, &'a str)>,
}

/// Append the whole answer to `out`.
pub fn write(out: &mut Vec<u8>, answer: &Answer, delivery: Delivery<'_>) {
    let body = answer.body.as_slice();
    out.reserve(body.len().saturating_add(256));
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(answer.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(answer.status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    http_date(out);
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nCache-Control: no-store\r\n");
    if let Some(x) = answer.x_cache {
        out.extend_from_slice(b"X-Cache: ");
        out.extend_from_slice(x.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = &answer.header {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = delivery.request_id {
        for part in [name, ": ", value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    if delivery.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if delivery.keep_alive_1_0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !delivery.head_only {
        out.extend_from_slice(body);
    }
}

/// `100 Continue`, for a client that sent `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase of the statuses the gateway answers with.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [b' '; 29])) };
}

fn http_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = secs;
            }
        }
        out.extend_from_slice(&cached.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(answer: &Answer, delivery: Delivery<'_>) -> String {
        let mut out = Vec::new();
        write(&mut out, answer, delivery);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_card_answer() {
        let a = Answer {
            status: 200,
            body: Bytes::from_static(b"{\"client\":{}}").into(),
            x_cache: Some("HIT"),
            header: None,
        };
        let t = text(&a, Delivery::default());
        assert!(t.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{t}");
        let date = &t[23..52];
        assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
        assert!(t.ends_with(
            "\r\nContent-Type: application/json\r\nContent-Length: 13\r\nCache-Control: no-store\r\nX-Cache: HIT\r\n\r\n{\"client\":{}}"
        ), "{t}");
        let head = text(
            &a,
            Delivery {
                head_only: true,
                keep_alive_1_0: true,
                ..Delivery::default()
            },
        );
        assert!(head.ends_with("Connection: keep-alive\r\n\r\n"), "{head}");
    }

    #[test]
    fn an_error_answer_that_closes() {
        let a = Answer {
            status: 405,
            body: Bytes::from_static(b"{}").into(),
            x_cache: None,
            header: Some(("Allow", "GET, POST".into())),
        };
        let t = text(
            &a,
            Delivery {
                close: true,
                request_id: Some(("X-Request-Id", "r-1")),
                ..Delivery::default()
            },
        );
        assert!(t.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{t}");
        assert!(
            t.ends_with("Allow: GET, POST\r\nX-Request-Id: r-1\r\nConnection: close\r\n\r\n{}"),
            "{t}"
        );
    }
}
