//! Write our answer to the chat server.
//!
//! Every answer is JSON with `Content-Length`, `Cache-Control: no-store` (cards are personal
//! data) and, on the Auth API, `X-Cache: HIT|MISS|STALE`. Error answers keep the connection
//! open, except when an oversized request body was left unread.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
use pingora::proxy::Session;

/// An answer ready to write.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub x_cache: Option<&'static str>,
    pub allow: Option<&'static str>,
    /// Close the connection after this answer.
    pub close: bool,
}

/// The response header for an answer.
pub fn header(answer: &Answer) -> pingora::Result<ResponseHeader> {
    // Header case is not preserved (HTTP names are case-insensitive): no case map to build.
    let mut h = ResponseHeader::build_no_case(answer.status, Some(5))?;
    h.insert_header(http::header::CONTENT_TYPE, JSON)?;
    h.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from(answer.body.len()))?;
    h.insert_header(http::header::CACHE_CONTROL, NO_STORE)?;
    if let Some(x) = answer.x_cache {
        h.insert_header(X_CACHE, HeaderValue::from_static(x))?;
    }
    if let Some(allow) = answer.allow {
        h.insert_header(http::header::ALLOW, HeaderValue::from_static(allow))?;
    }
    Ok(h)
}

pub async fn write(session: &mut Session, answer: Answer) -> pingora::Result<()> {
    let h = header(&answer)?;
    if answer.close {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(answer.body), true).await
}
