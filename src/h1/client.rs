//! The client side of HTTP/1.1: read one whole answer from a connection.
//!
//! [`read_answer`] reads an answer head (skipping interim 1xx answers), then its body as
//! the head frames it — `Content-Length`, chunks, or the end of the connection — within a
//! size limit, and says whether the connection may carry another exchange. As a client we
//! take what RFC 9112 lets a recipient take (the last transfer coding decides; an answer
//! without a length runs to the close), but never an ambiguous length.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::chunked::ChunkedDecoder;
use super::common::{BodyFraming, FramingError, FramingFields};

/// The largest answer head accepted.
pub const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// Answer header fields accepted at most.
const MAX_ANSWER_FIELDS: usize = 100;

/// A parsed answer head.
#[derive(Debug)]
pub struct AnswerHead {
    /// Length of the head in the buffer, the blank line included.
    pub len: usize,
    pub status: u16,
    /// A 1xx answer: skip it, the real one follows.
    pub interim: bool,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub cache_control: Option<String>,
}

/// Why no whole answer could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection failed or ended early; `answered`: some of the answer had arrived.
    Io { cause: std::io::Error, answered: bool },
    /// What arrived is not an answer that can be read safely.
    Framing(FramingError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io { cause, answered } => {
                let when = if *answered { "during" } else { "before" };
                write!(f, "connection failed {when} the answer: {cause}")
            }
            ReadError::Framing(e) => write!(f, "unreadable answer: {e}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io { cause, .. } => Some(cause),
            ReadError::Framing(e) => Some(e),
        }
    }
}

/// Parse an answer head at the start of `buf`; `Ok(None)`: incomplete.
pub fn parse_answer_head(buf: &[u8]) -> Result<Option<AnswerHead>, FramingError> {
    // Left uninitialised: httparse fills only what it parses.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_ANSWER_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    // As a recipient we take what RFC 9112 §5.1-5.2 lets us: whitespace before a field's
    // colon, and obs-fold continuation lines (read as one space).
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .parse_response_with_uninit_headers(
            &mut resp,
            buf.get(..=MAX_ANSWER_HEAD).unwrap_or(buf),
            &mut fields,
        );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_ANSWER_HEAD => {
            return Err(FramingError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER_HEAD => {
            return Err(FramingError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyFields),
        Err(e) => return Err(FramingError::Malformed(e)),
    };
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    if status == 101 {
        return Err(FramingError::UnexpectedSwitch);
    }
    let mut head = AnswerHead {
        len,
        status,
        interim: (100..200).contains(&status),
        framing: BodyFraming::UntilClose,
        keep_alive: false,
        cache_control: None,
    };
    let mut fields = FramingFields::default();
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        if fields.add(name, f.value) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"cache-control") {
            // Every line counts: `no-store` on one and `max-age` on another is both.
            if let Ok(value) = std::str::from_utf8(f.value) {
                let value = value.replace(['\r', '\n'], " ");
                head.cache_control = Some(match head.cache_control.take() {
                    Some(before) => format!("{before}, {value}"),
                    None => value,
                });
            }
        }
    }
    if let Some(why) = fields.length_error {
        return Err(FramingError::Unframeable(why));
    }
    let bodiless = head.interim || status == 204 || status == 304;
    head.framing = match (fields.te_fields, fields.length) {
        _ if bodiless => BodyFraming::Length(0),
        (0, Some(n)) => BodyFraming::Length(n),
        (0, None) => BodyFraming::UntilClose,
        (_, Some(_)) => {
            return Err(FramingError::Unframeable(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        // The last coding decides: chunked, or the body runs to the end of the connection.
        (_, None) if fields.te_chunked => BodyFraming::Chunked,
        (_, None) => BodyFraming::UntilClose,
    };
    head.keep_alive = head.framing != BodyFraming::UntilClose && fields.persistent(minor);
    Ok(Some(head))
}

/// Read one whole answer from `io`: its head, its body (at most `max_body` bytes), and
/// whether the connection may be reused.
pub async fn read_answer<S: AsyncRead + Unpin>(
    io: &mut S,
    max_body: usize,
) -> Result<(AnswerHead, Bytes, bool), ReadError> {
    read_answer_into(io, &mut BytesMut::new(), max_body).await
}

/// The most read buffer a connection keeps between answers.
const KEEP_AT_MOST: usize = 64 * 1024;

/// [`read_answer`] into `buf`, a connection's own from one answer to the next: once the
/// previous body (split off it) is dropped, its room is used again rather than allocated.
pub async fn read_answer_into<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<(AnswerHead, Bytes, bool), ReadError> {
    buf.clear();
    buf.reserve(4096);
    if buf.capacity() > KEEP_AT_MOST {
        // What one large answer made it grow to is not kept for the ones after it.
        *buf = BytesMut::with_capacity(4096);
    }
    let head = loop {
        let parsed = if buf.is_empty() {
            None // nothing read yet: nothing to parse
        } else {
            parse_answer_head(buf).map_err(ReadError::Framing)?
        };
        match parsed {
            Some(head) if head.interim => {
                let _ = buf.split_to(head.len);
            }
            Some(head) => break head,
            None => {
                let answered = !buf.is_empty();
                read_more(io, buf, answered).await?;
            }
        }
    };
    let _ = buf.split_to(head.len);
    let (body, reusable) = read_body(io, buf, head.framing, max_body).await?;
    let reusable = reusable && head.keep_alive;
    Ok((head, body, reusable))
}

/// Read the body framed by `framing` (`buf` holds what was read past the head).
async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    framing: BodyFraming,
    max_body: usize,
) -> Result<(Bytes, bool), ReadError> {
    let too_large = || ReadError::Framing(FramingError::BodyTooLarge);
    match framing {
        BodyFraming::Length(n) => {
            if n > max_body {
                return Err(too_large());
            }
            buf.reserve(n.saturating_sub(buf.len()));
            while buf.len() < n {
                read_more(io, buf, true).await?;
            }
            let body = buf.split_to(n).freeze();
            // Bytes past the answer: the connection is out of step, do not reuse it.
            Ok((body, buf.is_empty()))
        }
        BodyFraming::Chunked => {
            let mut chunked = ChunkedDecoder::default();
            loop {
                match chunked.decode(buf, max_body).map_err(ReadError::Framing)? {
                    Some(used) => return Ok((Bytes::from(chunked.body), used == buf.len())),
                    None => read_more(io, buf, true).await?,
                }
            }
        }
        BodyFraming::UntilClose => {
            loop {
                // Checked before each read, so a body that came whole with the head (and
                // then the end of the connection) is measured too.
                if buf.len() > max_body {
                    return Err(too_large());
                }
                if buf.capacity().saturating_sub(buf.len()) < 1024 {
                    buf.reserve(4096);
                }
                let n = io.read_buf(buf).await.map_err(|cause| ReadError::Io {
                    cause,
                    answered: true,
                })?;
                if n == 0 {
                    break;
                }
            }
            Ok((buf.split().freeze(), false))
        }
    }
}

/// Read more of the answer into `buf`; the end of the connection is an error here.
async fn read_more<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    answered: bool,
) -> Result<(), ReadError> {
    if buf.capacity().saturating_sub(buf.len()) < 1024 {
        buf.reserve(4096);
    }
    match io.read_buf(buf).await {
        Ok(0) => Err(ReadError::Io {
            cause: std::io::ErrorKind::UnexpectedEof.into(),
            answered,
        }),
        Ok(_) => Ok(()),
        Err(cause) => Err(ReadError::Io { cause, answered }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> AnswerHead {
        parse_answer_head(raw.as_bytes()).unwrap().expect("complete")
    }

    #[test]
    fn answer_framing() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nCache-Control: max-age=5\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, BodyFraming::Length(12), true)
        );
        assert_eq!(h.cache_control.as_deref(), Some("max-age=5"));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (BodyFraming::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (BodyFraming::UntilClose, false));
        let h = head("HTTP/1.1 500 Oops\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (BodyFraming::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 100 Continue\r\n\r\n");
        assert!(h.interim);
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (BodyFraming::Length(0), true));
    }

    #[test]
    fn bad_answers_are_refused() {
        assert_eq!(
            parse_answer_head(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .map(|h| h.len),
            None
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 101 Switching\r\n\r\n",
            "<html>\r\n\r\n",
        ] {
            assert!(parse_answer_head(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_ANSWER_HEAD));
        assert_eq!(
            parse_answer_head(huge.as_bytes()).unwrap_err(),
            FramingError::HeadTooLarge
        );
        // A complete head over the limit is refused just the same.
        let whole = format!("{huge}\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            parse_answer_head(whole.as_bytes()).unwrap_err(),
            FramingError::HeadTooLarge
        );
    }

    #[test]
    fn lenient_where_a_recipient_may_be() {
        let h =
            head("HTTP/1.1 200 OK\r\nContent-Length : 2\r\nCache-Control: max-age=5,\r\n private\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(2));
        assert_eq!(
            h.cache_control
                .as_deref()
                .map(str::split_whitespace)
                .map(|w| w.collect::<Vec<_>>()),
            Some(vec!["max-age=5,", "private"])
        );
        let h = head("HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nCache-Control: max-age=60\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.cache_control.as_deref(), Some("no-store, max-age=60"));
    }

    /// An answer in pieces, as a scripted connection delivers it.
    fn scripted(pieces: &[&[u8]]) -> tokio_test::io::Mock {
        let mut b = tokio_test::io::Builder::new();
        for p in pieces {
            b.read(p);
        }
        b.build()
    }

    #[tokio::test]
    async fn a_connection_reads_answer_after_answer_into_its_buffer_but_keeps_no_large_one() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let mut io = scripted(&[answer, answer]);
        let mut buf = BytesMut::new();
        let (_, first, _) = read_answer_into(&mut io, &mut buf, 100).await.unwrap();
        let (_, second, reusable) = read_answer_into(&mut io, &mut buf, 100).await.unwrap();
        assert_eq!(
            (&first[..], &second[..], reusable),
            (&b"hello"[..], &b"hello"[..], true)
        );
        drop((first, second));

        let large = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
            "x".repeat(100_000)
        );
        let mut io = scripted(&[large.as_bytes(), answer]);
        let (_, body, _) = read_answer_into(&mut io, &mut buf, 200_000).await.unwrap();
        assert_eq!(body.len(), 100_000);
        drop(body);
        read_answer_into(&mut io, &mut buf, 100).await.unwrap();
        assert!(buf.capacity() <= KEEP_AT_MOST, "{}", buf.capacity());
    }

    #[tokio::test]
    async fn answers_in_pieces() {
        let mut io = scripted(&[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-",
            b"Encoding: chunked\r\n\r\n3\r\nabc",
            b"\r\n0\r\n\r\n",
        ]);
        let (head, body, reusable) = read_answer(&mut io, 100).await.unwrap();
        assert_eq!((head.status, &body[..], reusable), (200, &b"abc"[..], true));

        let mut io = scripted(&[b"HTTP/1.1 200 OK\r\n\r\nuntil", b" close"]);
        let (_, body, reusable) = read_answer(&mut io, 100).await.unwrap();
        assert_eq!((&body[..], reusable), (&b"until close"[..], false));

        let mut io = scripted(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"]);
        let e = read_answer(&mut io, 100).await.unwrap_err();
        assert!(matches!(e, ReadError::Io { answered: true, .. }), "{e}");

        let mut io = scripted(&[]);
        let e = read_answer(&mut io, 100).await.unwrap_err();
        assert!(matches!(e, ReadError::Io { answered: false, .. }), "{e}");

        // Found by the `answer` fuzz target: a close-delimited body that arrived in the
        // same read as its head escaped the limit.
        let mut io = scripted(&[b"HTTP/1.0 200 OK\r\n\r\n0123456789ABCDEF"]);
        let e = read_answer(&mut io, 10).await.unwrap_err();
        assert!(matches!(e, ReadError::Framing(FramingError::BodyTooLarge)), "{e}");

        let mut io = scripted(&[b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"]);
        let e = read_answer(&mut io, 100).await.unwrap_err();
        assert!(matches!(e, ReadError::Framing(FramingError::BodyTooLarge)), "{e}");
    }
}
