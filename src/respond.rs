//! Write our answer to the chat server.
//!
//! Every answer is JSON with `Content-Length`, `Cache-Control: no-store` (cards are personal
//! data) and, on the Auth API, `X-Cache: HIT|MISS|STALE`. Error answers keep the connection
//! open, except when an oversized request body was left unread.

use bytes::Bytes;
use pingora::http::ResponseHeader;
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
    let mut h = ResponseHeader::build(answer.status, Some(5))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(x) = answer.x_cache {
        h.insert_header("x-cache", x)?;
    }
    if let Some(allow) = answer.allow {
        h.insert_header(http::header::ALLOW, allow)?;
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
