//! The server side of HTTP/1.1: where a request starts and ends in the read buffer.
//!
//! [`parse_head`] finds a complete request head in the connection's read buffer (request
//! line and headers, parsed by `httparse`) and records where each part lies, so nothing is
//! copied; it also decides how the body is framed and whether the connection may be kept.
//! Framing is strict, because a gateway that disagrees with its peer about where a request
//! ends can be made to smuggle one: both `Transfer-Encoding` and `Content-Length`,
//! conflicting lengths, or a transfer coding other than `chunked` make the head complete
//! but its body [`FramingError::Unframeable`]. [`Request`] is the view of one complete
//! request that the gateway answers.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;

use super::chunked::ChunkedDecoder;
use super::common::{trim, BodyFraming, FramingError, FramingFields};

/// Header fields a request may carry at most (more: refused).
pub const MAX_HEADERS: usize = 64;

/// A parsed request head: positions in the read buffer, and what the headers decided.
#[derive(Debug, Clone)]
pub struct Head {
    /// Length of the head in the buffer, the blank line included.
    pub len: usize,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// HTTP/1.x minor version.
    pub minor: u8,
    /// How the body is delimited, or why it cannot be (the request is then refused and
    /// the connection closed). Never [`BodyFraming::UntilClose`].
    pub framing: Result<BodyFraming, FramingError>,
    /// The client allows the connection to stay open after the answer.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits before sending the body.
    pub expect_continue: bool,
}

impl Head {
    /// The request method, as bytes of `buf` (the buffer the head was parsed from).
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.method.clone()).unwrap_or_default()
    }

    /// How many header fields the request has.
    pub fn field_count(&self) -> usize {
        self.headers.len()
    }

    fn empty() -> Self {
        Head {
            len: 0,
            method: 0..0,
            target: 0..0,
            headers: Vec::with_capacity(16),
            minor: 1,
            framing: Ok(BodyFraming::Length(0)),
            keep_alive: true,
            expect_continue: false,
        }
    }
}

/// Parse a request head at the start of `buf` into `head` (reusing its allocation).
///
/// `Ok(false)`: incomplete, read more. An error means the request cannot be read at all:
/// a head over `max_head` bytes ([`FramingError::LineTooLong`] while the request line is
/// incomplete), too many fields, or malformed syntax. A head whose body cannot be framed
/// safely is complete, with the reason in [`Head::framing`].
pub fn parse_head(buf: &[u8], max_head: usize, head: &mut Option<Head>) -> Result<bool, FramingError> {
    // Left uninitialised: httparse fills only what it parses (writing 2 KiB of empty
    // fields first costs more than the parse of a short head).
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    // Only the bytes within the limit are looked at, so the verdict cannot depend on how
    // much beyond it one read happened to bring.
    let within = buf.get(..max_head).unwrap_or(buf);
    let len = match req.parse_with_uninit_headers(within, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(_) if buf.len() <= max_head => return Ok(false),
        Ok(_) => {
            let line_done = buf
                .get(..max_head)
                .unwrap_or(buf)
                .windows(2)
                .any(|w| w == b"\r\n");
            return Err(if line_done {
                FramingError::HeadTooLarge
            } else {
                FramingError::LineTooLong
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyFields),
        Err(e) => return Err(FramingError::Malformed(e)),
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        // httparse's slices point into `buf`, so this is their offset in it.
        let start = (s.as_ptr() as usize).saturating_sub(base);
        start..start.saturating_add(s.len())
    };
    // Tokens and routes are ASCII (anything else is percent-encoded): refuse the rest here,
    // so that nothing downstream meets a multi-byte character where it slices.
    let target = req.path.unwrap_or_default();
    if !target.is_ascii() {
        return Err(FramingError::NonAsciiTarget);
    }
    // Checked now, refused with the body's framing below: the refusal then has the
    // request's head (a HEAD gets no body, a search gets its error shape).
    let target_ok = super::target::check(
        req.method.unwrap_or_default(),
        target,
        req.headers,
        req.version.unwrap_or(1),
    );
    let h = head.get_or_insert_with(Head::empty);
    h.len = len;
    h.method = span(req.method.unwrap_or_default().as_bytes());
    h.target = span(req.path.unwrap_or_default().as_bytes());
    h.minor = req.version.unwrap_or(1);
    h.headers.clear();
    h.expect_continue = false;
    let mut fields = FramingFields::default();
    for f in req.headers.iter() {
        h.headers.push((span(f.name.as_bytes()), span(f.value)));
        if !fields.add(f.name.as_bytes(), f.value) && f.name.eq_ignore_ascii_case("expect") {
            h.expect_continue = trim(f.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    let refused = |why| Err(FramingError::Unframeable(why));
    h.framing = match (fields.length_error, fields.te_fields, fields.length) {
        _ if target_ok.is_err() => target_ok.map(|()| BodyFraming::Length(0)),
        (Some(why), _, _) => refused(why),
        (None, 0, length) => Ok(BodyFraming::Length(length.unwrap_or(0))),
        (None, _, Some(_)) => refused("both Transfer-Encoding and Content-Length"),
        // Only `chunked`, in one field, alone; anything else cannot be framed safely.
        (None, 1, None) if h.minor >= 1 && fields.te_only_chunked => Ok(BodyFraming::Chunked),
        (None, _, None) => refused("unsupported Transfer-Encoding (only chunked is accepted)"),
    };
    h.keep_alive = fields.persistent(h.minor);
    Ok(true)
}

/// Where the body of a complete request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlace {
    /// `buf[start..end]`.
    Inline(usize, usize),
    /// Decoded from chunks into the decoder's `body`.
    Chunked,
}

/// Has the whole body of `head` arrived in `buf` (which holds the head at its start)?
/// `Ok(Some((place, n)))`: yes, and the request took `n` bytes of `buf`; `Ok(None)`: read
/// more and ask again (`chunked` keeps its place between calls; reset it for each
/// request). This is all the listener decides about a body, so what the fuzz targets
/// check is what it does.
pub fn body_complete(
    head: &Head,
    buf: &[u8],
    chunked: &mut ChunkedDecoder,
    max_body: usize,
) -> Result<Option<(BodyPlace, usize)>, FramingError> {
    let start = head.len;
    match head.framing {
        Err(refused) => Err(refused),
        // A request has no close-delimited body: without a length it has none.
        Ok(BodyFraming::UntilClose) => Ok(Some((BodyPlace::Inline(start, start), start))),
        Ok(BodyFraming::Length(n)) if n > max_body => Err(FramingError::BodyTooLarge),
        Ok(BodyFraming::Length(n)) => {
            let end = start.saturating_add(n);
            Ok((buf.len() >= end).then_some((BodyPlace::Inline(start, end), end)))
        }
        Ok(BodyFraming::Chunked) => {
            let rest = buf.get(start..).unwrap_or_default();
            Ok(chunked
                .decode(rest, max_body)?
                .map(|n| (BodyPlace::Chunked, start.saturating_add(n))))
        }
    }
}

/// What the gateway reads of a complete request, whoever framed it. [`Request`] is the
/// one the listener hands over; the trait keeps the gateway free of the framing.
pub trait RequestView {
    fn method(&self) -> &str;
    /// The path of the request target, without the query.
    fn path(&self) -> &str;
    /// Every value of the header `name` (case-insensitive), in order.
    fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's;
    fn body(&self) -> &[u8];
    fn peer(&self) -> Option<IpAddr>;

    /// The first value of the header `name`.
    fn header<'s>(&'s self, name: &'s str) -> Option<&'s [u8]> {
        self.header_values(name).next()
    }

    /// The first value of the header `name`, if it is text.
    fn header_str<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// One complete request in the connection's read buffer.
pub struct Request<'a> {
    buf: &'a [u8],
    head: &'a Head,
    body: &'a [u8],
    peer: Option<IpAddr>,
}

impl<'a> Request<'a> {
    /// `buf` holds the head at its start.
    pub fn new(buf: &'a [u8], head: &'a Head, body: &'a [u8], peer: Option<IpAddr>) -> Self {
        Request {
            buf,
            head,
            body,
            peer,
        }
    }

    fn text(&self, r: &Range<usize>) -> &'a str {
        // The method is an ASCII token (httparse) and the target ASCII ([`parse_head`]).
        std::str::from_utf8(self.buf.get(r.clone()).unwrap_or_default()).unwrap_or("")
    }
}

impl RequestView for Request<'_> {
    fn method(&self) -> &str {
        self.text(&self.head.method)
    }

    /// An absolute-form target (`http://host/path`) is reduced to its path.
    fn path(&self) -> &str {
        let mut t = self.text(&self.head.target);
        for scheme in ["http://", "https://"] {
            if t.len() > scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
                let rest = t.get(scheme.len()..).unwrap_or_default();
                t = rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/");
                break;
            }
        }
        // The query or fragment starts at an ASCII byte: the cut is on a char boundary.
        let end = t.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(t.len());
        t.get(..end).unwrap_or("")
    }

    fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        let buf = self.buf;
        self.head
            .headers
            .iter()
            .filter(move |(n, _)| {
                buf.get(n.clone())
                    .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            })
            .map(move |(_, v)| buf.get(v.clone()).unwrap_or_default())
    }

    fn body(&self) -> &[u8] {
        self.body
    }

    fn peer(&self) -> Option<IpAddr> {
        self.peer
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parse a whole head (test helper).
    pub(crate) fn head(raw: &[u8]) -> Result<Head, FramingError> {
        let mut h = None;
        assert!(parse_head(raw, 16 * 1024, &mut h)?, "incomplete head");
        Ok(h.unwrap())
    }

    #[test]
    fn a_simple_get() {
        let raw = b"GET /rest/chat/client/id/abc?x=1 HTTP/1.1\r\nHost: gw\r\nToken: t1\r\n\r\nrest";
        let h = head(raw).unwrap();
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(h.framing, Ok(BodyFraming::Length(0)));
        assert!(h.keep_alive);
        let r = Request::new(raw, &h, b"", None);
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/rest/chat/client/id/abc");
        assert_eq!(r.header("token"), Some(&b"t1"[..]));
        assert_eq!(r.header("TOKEN"), Some(&b"t1"[..]));
        assert_eq!(r.header("x"), None);
    }

    #[test]
    fn incomplete_heads_ask_for_more_and_big_ones_are_refused() {
        let mut h = None;
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", 64, &mut h), Ok(false));
        assert_eq!(parse_head(b"", 64, &mut h), Ok(false));
        let long_line = [b"GET /".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(parse_head(&long_line, 64, &mut h), Err(FramingError::LineTooLong));
        let long_headers = [b"GET / HTTP/1.1\r\nHost: a\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            parse_head(&long_headers, 64, &mut h),
            Err(FramingError::HeadTooLarge)
        );
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse_head(raw.as_bytes(), 16 * 1024, &mut h),
            Err(FramingError::TooManyFields)
        );
    }

    #[test]
    fn body_framing() {
        let f = |raw: &str| head(raw.as_bytes()).map(|h| h.framing);
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"),
            Ok(Ok(BodyFraming::Length(12)))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Ok(BodyFraming::Length(5)))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            Ok(Ok(BodyFraming::Length(0)))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Ok(BodyFraming::Chunked))
        );
        for bad in [
            "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(f(bad), Err(FramingError::Malformed(_))), "{bad:?}");
        }
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(f(bad), Ok(Err(FramingError::Unframeable(_)))), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        let k = |raw: &str| head(raw.as_bytes()).unwrap().keep_alive;
        assert!(k("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!k("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
        assert!(!k("GET / HTTP/1.0\r\n\r\n"));
        assert!(k("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(
            head(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .expect_continue
        );
    }

    #[test]
    fn targets() {
        let p = |t: &str| {
            let raw = format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n");
            let h = head(raw.as_bytes()).unwrap();
            Request::new(raw.as_bytes(), &h, b"", None).path().to_string()
        };
        assert_eq!(p("/a/b?c=d"), "/a/b");
        assert_eq!(p("http://gw:8080/rest/x?y"), "/rest/x");
        assert_eq!(p("HTTP://gw"), "/");
        assert_eq!(p("*"), "*");
    }

    #[test]
    fn non_ascii_targets_are_refused() {
        let mut h = None;
        for raw in [
            "GET /abcde\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /rest/chat/client/search\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(raw.as_bytes(), 1024, &mut h),
                Err(FramingError::NonAsciiTarget)
            );
        }
    }
}
