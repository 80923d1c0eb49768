//! One exchange with the internal system through Pingora's HTTP/1 client session, on a
//! connection from our pool; the connection comes back when it may be reused.

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;

use crate::h1::client::ReadError;
use crate::h1::FramingError;
use crate::upstream::{UpstreamAnswer, UpstreamRequest};

fn failed(e: &pingora::Error, answered: bool) -> ReadError {
    ReadError::Io {
        cause: std::io::Error::other(e.to_string()),
        answered,
    }
}

/// Send `req` on `io` and read the whole answer (at most `max_body` bytes of body).
pub async fn exchange(
    io: Stream,
    req: &UpstreamRequest,
    authority: &str,
    base_path: &str,
    max_body: usize,
) -> Result<(UpstreamAnswer, Option<Stream>), ReadError> {
    let mut s = HttpSession::new(io);
    let path = format!("{base_path}{}", req.path);
    let unanswered = |e: Box<pingora::Error>| failed(&e, false);
    let mut head = RequestHeader::build_no_case(req.method, path.as_bytes(), Some(req.headers.len() + 4))
        .map_err(unanswered)?;
    head.insert_header(http::header::HOST, authority)
        .map_err(unanswered)?;
    head.insert_header(
        http::header::USER_AGENT,
        concat!("cardgate/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(unanswered)?;
    head.insert_header(http::header::ACCEPT, "application/json")
        .map_err(unanswered)?;
    for (name, value) in &req.headers {
        head.append_header(name.clone(), value.clone())
            .map_err(unanswered)?;
    }
    if req.method != "GET" || !req.body.is_empty() {
        head.insert_header(http::header::CONTENT_LENGTH, req.body.len())
            .map_err(unanswered)?;
    }
    s.write_request_header(Box::new(head)).await.map_err(unanswered)?;
    if !req.body.is_empty() {
        s.write_body(&req.body).await.map_err(unanswered)?;
    }
    s.finish_body().await.map_err(unanswered)?;
    loop {
        s.read_response().await.map_err(unanswered)?;
        match s.get_status().map(|st| st.as_u16()) {
            Some(100 | 102..=199) => continue,
            _ => break,
        }
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = s.read_body_ref().await.map_err(|e| failed(&e, true))? {
        if body.len() + chunk.len() > max_body {
            return Err(ReadError::Framing(FramingError::BodyTooLarge));
        }
        body.extend_from_slice(chunk);
    }
    let (status, cache_control) = match s.resp_header() {
        Some(h) => (
            h.status.as_u16(),
            h.headers
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ),
        None => return Err(ReadError::Framing(FramingError::HeadTooLarge)),
    };
    s.respect_keepalive();
    let back = s.reuse().await;
    let answer = UpstreamAnswer {
        status,
        cache_control,
        body: Bytes::from(body),
    };
    Ok((answer, back))
}
