//! HTTP/1.1 framing for the chat-server listener: where a request starts and ends.
//!
//! [`parse_head`] finds a complete request head in the connection's read buffer (request
//! line and headers, parsed by `httparse`) and records where each part lies, so nothing is
//! copied; it also decides how the body is framed and whether the connection may be kept.
//! [`Chunked`] collects a chunked body. Framing is strict, because a gateway that
//! disagrees with its peer about where a request ends can be made to smuggle one: both
//! `Transfer-Encoding` and `Content-Length`, conflicting lengths, a transfer coding other
//! than `chunked`, or a malformed chunk are refused and the connection is closed.
//! [`Request`] is the view of one complete request that the gateway answers.

use std::net::IpAddr;
use std::ops::Range;

use crate::error::GatewayError;

/// Header fields a request may carry at most (more: 431).
pub const MAX_HEADERS: usize = 64;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Cannot be framed safely (why): the request is refused and the connection closed.
    Refused(&'static str),
}

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
    pub framing: Framing,
    /// The client allows the connection to stay open after the answer.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits before sending the body.
    pub expect_continue: bool,
}

impl Head {
    /// The request method, as bytes of `buf` (the buffer the head was parsed from).
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.method.clone()]
    }

    fn empty() -> Self {
        Head {
            len: 0,
            method: 0..0,
            target: 0..0,
            headers: Vec::with_capacity(16),
            minor: 1,
            framing: Framing::None,
            keep_alive: true,
            expect_continue: false,
        }
    }
}

/// A request head that cannot be answered normally. The answer closes the connection.
fn head_error(e: &httparse::Error) -> GatewayError {
    match e {
        httparse::Error::TooManyHeaders => GatewayError::HeadersTooLarge,
        _ => GatewayError::BadRequest("malformed HTTP request"),
    }
}

/// Parse a request head at the start of `buf`.
///
/// `Ok(false)`: incomplete, read more. Errors are answered with the connection closed:
/// a head over `max_head` bytes (414 while the request line is incomplete, else 431), or
/// malformed syntax (400). A head whose body cannot be framed safely is complete, with
/// [`Framing::Refused`].
pub fn parse_head(buf: &[u8], max_head: usize, head: &mut Option<Head>) -> Result<bool, GatewayError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(_) if buf.len() <= max_head => return Ok(false),
        Ok(_) => {
            let line_done = buf[..max_head].windows(2).any(|w| w == b"\r\n");
            return Err(if line_done {
                GatewayError::HeadersTooLarge
            } else {
                GatewayError::UriTooLong
            });
        }
        Err(e) => return Err(head_error(&e)),
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    // Tokens and routes are ASCII (anything else is percent-encoded): refuse the rest here,
    // so that nothing downstream meets a multi-byte character where it slices.
    if !req.path.unwrap_or_default().is_ascii() {
        return Err(GatewayError::BadRequest("request target is not ASCII"));
    }
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
    h.framing = match (fields.length_error, fields.te_fields, fields.length) {
        (Some(why), _, _) => Framing::Refused(why),
        (None, 0, Some(0) | None) => Framing::None,
        (None, 0, Some(n)) => Framing::Length(n),
        (None, _, Some(_)) => Framing::Refused("both Transfer-Encoding and Content-Length"),
        // Only `chunked`, in one field, alone; anything else cannot be framed safely.
        (None, 1, None) if h.minor >= 1 && fields.te_only_chunked => Framing::Chunked,
        (None, _, None) => Framing::Refused("unsupported Transfer-Encoding (only chunked is accepted)"),
    };
    h.keep_alive = fields.persistent(h.minor);
    Ok(true)
}

/// The fields that frame a message and decide the connection's fate, as read from the
/// head of a request or of an answer; each side applies its own rules to them.
#[derive(Debug, Default)]
pub struct FramingFields {
    /// The `Content-Length`, when every such field agrees and is valid.
    pub length: Option<usize>,
    /// Why the `Content-Length` fields cannot be trusted.
    pub length_error: Option<&'static str>,
    /// `Transfer-Encoding` fields seen.
    pub te_fields: usize,
    /// The last `Transfer-Encoding` field's last coding is `chunked`.
    pub te_chunked: bool,
    /// ... and that field says nothing but `chunked`.
    pub te_only_chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    /// Take in one header field; false when it is none of the framing fields.
    pub fn add(&mut self, name: &[u8], value: &[u8]) -> bool {
        if name.eq_ignore_ascii_case(b"content-length") {
            match content_length(value) {
                Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                Some(_) => self.length_error = Some("conflicting Content-Length headers"),
                None => self.length_error = Some("invalid Content-Length"),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te_fields += 1;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.te_chunked = trim(last).eq_ignore_ascii_case(b"chunked");
            self.te_only_chunked = trim(value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim) {
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else {
            return false;
        }
        true
    }

    /// May the connection stay open after this message of HTTP/1.`minor`?
    pub fn persistent(&self, minor: u8) -> bool {
        !self.close && (minor >= 1 || self.keep_alive)
    }
}

/// A valid `Content-Length` value (digits only); `5, 5` is one length said twice.
fn content_length(value: &[u8]) -> Option<usize> {
    let mut n: Option<usize> = None;
    for part in value.split(|&b| b == b',').map(trim) {
        if part.is_empty() || part.len() > 15 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = part.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        let v = usize::try_from(v).ok()?;
        if n.is_some_and(|n| n != v) {
            return None;
        }
        n = Some(v);
    }
    n
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 8 * 1024;

/// A chunked body decoder that resumes where it stopped: feed it the bytes after the head
/// (a buffer that only grows between calls) until it reports the body complete, so a body
/// sent in many small pieces is still decoded in one pass.
///
/// Strict on purpose: a size line is hex digits, optionally followed by `;` extensions of
/// visible characters, then CRLF; chunk data is followed by CRLF; trailer fields must be
/// well-formed header fields (they are read and ignored).
#[derive(Debug, Default)]
pub struct Chunked {
    /// Bytes of the input consumed so far.
    pos: usize,
    state: ChunkState,
    /// The decoded body.
    pub body: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    /// Start over for a new body (keeps the buffer's allocation).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.state = ChunkState::Size;
        self.body.clear();
    }

    /// Go on decoding `input`, at most `max` bytes of data. `Ok(Some(n))`: complete, the
    /// body took `n` bytes of `input`; `Ok(None)`: incomplete, call again with more.
    pub fn decode(&mut self, input: &[u8], max: usize) -> Result<Option<usize>, GatewayError> {
        let bad = |why| Err(GatewayError::BadRequest(why));
        loop {
            let rest = &input[self.pos..];
            match self.state {
                ChunkState::Size => {
                    let Some(eol) = find_crlf(rest, MAX_CHUNK_LINE) else {
                        return if rest.len() > MAX_CHUNK_LINE {
                            bad("malformed chunked body: chunk line too long")
                        } else {
                            Ok(None)
                        };
                    };
                    let size = chunk_size(&rest[..eol])
                        .ok_or(GatewayError::BadRequest("malformed chunked body: bad chunk size"))?;
                    if size > max.saturating_sub(self.body.len()) as u64 {
                        return Err(GatewayError::PayloadTooLarge);
                    }
                    self.pos += eol + 2;
                    self.state = match size {
                        0 => ChunkState::Trailers,
                        n => ChunkState::Data(n as usize),
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(rest.len());
                    if take == 0 {
                        return Ok(None);
                    }
                    self.body.extend_from_slice(&rest[..take]);
                    self.pos += take;
                    self.state = match left - take {
                        0 => ChunkState::DataEnd,
                        n => ChunkState::Data(n),
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(None);
                    }
                    if &rest[..2] != b"\r\n" {
                        return bad("malformed chunked body: no CRLF after chunk data");
                    }
                    self.pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; 16];
                    match httparse::parse_headers(rest, &mut fields) {
                        // httparse takes a bare LF as a line end; here only CRLF is.
                        Ok(httparse::Status::Complete((n, _))) if crlf_only(&rest[..n]) => {
                            self.pos += n;
                            self.state = ChunkState::Done;
                        }
                        Ok(httparse::Status::Partial) if rest.len() <= MAX_TRAILERS => return Ok(None),
                        _ => return bad("malformed chunked body: bad trailer section"),
                    }
                }
                ChunkState::Done => return Ok(Some(self.pos)),
            }
        }
    }
}

/// Every LF in `s` ends a CRLF.
fn crlf_only(s: &[u8]) -> bool {
    s.iter()
        .enumerate()
        .all(|(i, &b)| b != b'\n' || (i > 0 && s[i - 1] == b'\r'))
}

/// The position of the first CRLF within the first `limit + 2` bytes.
fn find_crlf(s: &[u8], limit: usize) -> Option<usize> {
    let end = s.len().min(limit + 2);
    s[..end].windows(2).position(|w| w == b"\r\n")
}

/// The size on a chunk-size line: 1 to 15 hex digits, then nothing or `;` extensions
/// (whitespace before `;` tolerated) of visible characters, spaces and tabs.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let (hex, ext) = line.split_at(digits);
    let ext_ok = match ext.iter().position(|&b| b != b' ' && b != b'\t') {
        None => true,
        Some(i) => ext[i] == b';' && ext[i..].iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)),
    };
    if !ext_ok {
        return None;
    }
    std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// One complete request as the gateway sees it.
pub struct Request<'a> {
    buf: &'a [u8],
    head: &'a Head,
    pub body: &'a [u8],
    pub peer: Option<IpAddr>,
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
        std::str::from_utf8(&self.buf[r.clone()]).unwrap_or("")
    }

    pub fn method(&self) -> &'a str {
        self.text(&self.head.method)
    }

    /// The path of the request target, without the query; an absolute-form target
    /// (`http://host/path`) is reduced to its path.
    pub fn path(&self) -> &'a str {
        let mut t = self.text(&self.head.target);
        for scheme in ["http://", "https://"] {
            if t.len() > scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
                t = t[scheme.len()..]
                    .find('/')
                    .map_or("/", |i| &t[scheme.len() + i..]);
                break;
            }
        }
        t.split(['?', '#']).next().unwrap_or("")
    }

    /// Every value of the header `name` (case-insensitive), in order.
    pub fn headers(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.head
            .headers
            .iter()
            .filter(move |(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |(_, v)| &buf[v.clone()])
    }

    /// The first value of the header `name`.
    pub fn header(&self, name: &'a str) -> Option<&'a [u8]> {
        self.headers(name).next()
    }

    /// The first value of the header `name`, if it is text.
    pub fn header_str(&self, name: &'a str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Parse a whole head (test helper).
    pub fn head(raw: &[u8]) -> Result<Head, GatewayError> {
        let mut h = None;
        assert!(parse_head(raw, 16 * 1024, &mut h)?, "incomplete head");
        Ok(h.unwrap())
    }

    #[test]
    fn a_simple_get() {
        let raw = b"GET /rest/chat/client/id/abc?x=1 HTTP/1.1\r\nHost: gw\r\nToken: t1\r\n\r\nrest";
        let h = head(raw).unwrap();
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(h.framing, Framing::None);
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
        assert_eq!(parse_head(&long_line, 64, &mut h), Err(GatewayError::UriTooLong));
        let long_headers = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            parse_head(&long_headers, 64, &mut h),
            Err(GatewayError::HeadersTooLarge)
        );
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_head(raw.as_bytes(), 16 * 1024, &mut h),
            Err(GatewayError::HeadersTooLarge)
        );
    }

    #[test]
    fn body_framing() {
        let f = |raw: &str| head(raw.as_bytes()).map(|h| h.framing);
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(f(bad).unwrap_err().status(), 400, "{bad:?}");
        }
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(f(bad), Ok(Framing::Refused(_))), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        let k = |raw: &str| head(raw.as_bytes()).unwrap().keep_alive;
        assert!(k("GET / HTTP/1.1\r\n\r\n"));
        assert!(!k("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!k("GET / HTTP/1.0\r\n\r\n"));
        assert!(k("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(
            head(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .expect_continue
        );
    }

    #[test]
    fn targets() {
        let p = |t: &str| {
            let raw = format!("GET {t} HTTP/1.1\r\n\r\n");
            let h = head(raw.as_bytes()).unwrap();
            Request::new(raw.as_bytes(), &h, b"", None).path().to_string()
        };
        assert_eq!(p("/a/b?c=d"), "/a/b");
        assert_eq!(p("http://gw:8080/rest/x?y"), "/rest/x");
        assert_eq!(p("HTTP://gw"), "/");
        assert_eq!(p("*"), "*");
    }

    /// Decode `raw` whole (a fresh decoder).
    fn chunked(raw: &[u8], max: usize) -> Result<Option<(usize, Vec<u8>)>, GatewayError> {
        let mut d = Chunked::default();
        Ok(d.decode(raw, max)?.map(|n| (n, d.body)))
    }

    #[test]
    fn chunked_bodies() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let whole = raw.len() - 4;
        assert_eq!(chunked(raw, 100), Ok(Some((whole, b"hello, world".to_vec()))));
        assert_eq!(
            chunked(b"A ; a=b\t\r\n0123456789\r\n0\r\n\r\n", 100)
                .unwrap()
                .unwrap()
                .1,
            b"0123456789"
        );
        // Any cut is incomplete, and feeding the rest resumes where it stopped.
        for cut in 0..whole {
            assert_eq!(chunked(&raw[..cut], 100), Ok(None), "cut {cut}");
            let mut d = Chunked::default();
            assert_eq!(d.decode(&raw[..cut], 100), Ok(None));
            assert_eq!(d.decode(raw, 100), Ok(Some(whole)), "cut {cut}");
            assert_eq!(d.body, b"hello, world");
        }
        // Byte by byte, as a slow client sends it: still one pass.
        let mut d = Chunked::default();
        for end in 1..=whole {
            let r = d.decode(&raw[..end], 100).unwrap();
            assert_eq!(r.is_some(), end == whole, "at {end}");
        }
        d.reset();
        assert_eq!(d.decode(b"0\r\n\r\n", 100), Ok(Some(5)));
        assert!(d.body.is_empty());
    }

    #[test]
    fn chunked_limits_and_malformed_bodies() {
        let raw = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        assert_eq!(chunked(raw, 8), Err(GatewayError::PayloadTooLarge));
        assert_eq!(
            chunked(b"fffffffffffffff\r\n", 8),
            Err(GatewayError::PayloadTooLarge)
        );
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"3\r\nabcX\r\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"3\r\nabc\r\n0\r\nBad Trailer: x\r\n\r\n",
        ] {
            let r = chunked(bad, 100);
            assert_eq!(
                r.map(|_| ()).unwrap_err().status(),
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = [b"3;".as_slice(), &[b'x'; MAX_CHUNK_LINE + 8]].concat();
        assert_eq!(chunked(&long_line, 100).unwrap_err().status(), 400);
    }

    #[test]
    fn non_ascii_targets_are_refused() {
        let mut h = None;
        let raw = "GET /abcde\u{e9} HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_head(raw.as_bytes(), 1024, &mut h).unwrap_err().status(),
            400
        );
        let raw = "GET /rest/chat/client/search\u{e9} HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_head(raw.as_bytes(), 1024, &mut h).unwrap_err().status(),
            400
        );
    }
}
