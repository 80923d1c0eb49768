//! What both directions of HTTP/1.1 share: the wire-level error, the fields that frame a
//! message, and the chunked-body decoder.
//!
//! Nothing here knows about the gateway's answers: a refusal is a [`FramingError`] that
//! says what was wrong on the wire (keeping httparse's verdict as its cause), and the
//! layer above decides what status and `errorCode` it becomes.

use std::fmt;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Exactly this many bytes (`Content-Length`, or 0 when a request has neither field).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes the connection (answers only; a request never is).
    UntilClose,
}

/// A message that cannot be read safely, as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Not HTTP/1.x syntax; httparse's verdict is the cause.
    Malformed(httparse::Error),
    /// More header fields than accepted.
    TooManyFields,
    /// The first line did not end within the head limit.
    LineTooLong,
    /// The head did not end within the head limit.
    HeadTooLarge,
    /// A request target with bytes outside ASCII.
    NonAsciiTarget,
    /// A target this server does not take (why): CONNECT, authority form, a bad authority.
    BadTarget(&'static str),
    /// No `Host` field in an HTTP/1.1 request, several, or one whose value is not a valid
    /// host[:port] (RFC 9112 §3.2).
    BadHost(&'static str),
    /// The body's length cannot be trusted (why): conflicting or invalid `Content-Length`,
    /// both `Transfer-Encoding` and `Content-Length`, an unsupported transfer coding.
    Unframeable(&'static str),
    /// A malformed chunked body (why).
    BadChunk(&'static str),
    /// A body over the limit.
    BodyTooLarge,
    /// An answer switching protocols that nobody asked for.
    UnexpectedSwitch,
}

impl FramingError {
    /// A short, fixed description (never bytes from the wire).
    pub fn reason(&self) -> &'static str {
        match self {
            FramingError::Malformed(_) => "malformed HTTP message",
            FramingError::TooManyFields => "too many header fields",
            FramingError::LineTooLong => "first line longer than the head limit",
            FramingError::HeadTooLarge => "head larger than the limit",
            FramingError::NonAsciiTarget => "request target is not ASCII",
            FramingError::Unframeable(why)
            | FramingError::BadChunk(why)
            | FramingError::BadTarget(why)
            | FramingError::BadHost(why) => why,
            FramingError::BodyTooLarge => "body larger than the limit",
            FramingError::UnexpectedSwitch => "unexpected protocol switch",
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::Malformed(cause) => write!(f, "malformed HTTP message ({cause})"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for FramingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FramingError::Malformed(cause) => Some(cause),
            _ => None,
        }
    }
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
            self.te_fields = self.te_fields.saturating_add(1);
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
        // At most 15 digits: no overflow, but checked all the same.
        let v = part.iter().try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?
                .checked_add(u64::from(d.saturating_sub(b'0')))
        })?;
        let v = usize::try_from(v).ok()?;
        if n.is_some_and(|n| n != v) {
            return None;
        }
        n = Some(v);
    }
    n
}

/// `s` without leading and trailing ASCII whitespace.
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e.saturating_add(1));
    s.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_cause() {
        use std::error::Error;
        let e = FramingError::Malformed(httparse::Error::HeaderName);
        assert!(e.source().is_some());
        assert!(e.to_string().contains("header name"), "{e}");
        assert_eq!(FramingError::BodyTooLarge.source().map(|_| ()), None);
    }
}
