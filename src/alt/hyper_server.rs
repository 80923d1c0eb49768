//! The chat-server side on hyper 1.x: one `serve_connection` per Pingora stream, each
//! request handed to the same [`Gateway`] through [`RequestView`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::h1::server::RequestView;
use crate::respond::{Answer, Body};

/// The listener's limits, as hyper takes them.
#[derive(Clone, Copy)]
pub struct Settings {
    pub keepalive: Duration,
    pub client_timeout: Duration,
    pub max_head: usize,
    pub max_body: usize,
}

/// Serve one connection with hyper until it ends or the server shuts down.
pub async fn serve(
    gw: Arc<Gateway>,
    s: Settings,
    io: Stream,
    peer: Option<IpAddr>,
    shutdown: &ShutdownWatch,
) {
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let gw = gw.clone();
        async move { Ok::<_, Infallible>(answer(&gw, s, req, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(s.keepalive)
        .max_headers(crate::h1::server::MAX_HEADERS)
        .max_buf_size(s.max_head.max(8192));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut shutdown = shutdown.clone();
    let graceful = tokio::select! {
        _ = conn.as_mut() => false,
        _ = shutdown.wait_for(|down| *down) => true,
    };
    if graceful {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// A request as hyper parsed it.
struct PartsView<'a> {
    parts: &'a http::request::Parts,
    body: &'a [u8],
    peer: Option<IpAddr>,
}

impl RequestView for PartsView<'_> {
    fn method(&self) -> &str {
        self.parts.method.as_str()
    }

    fn path(&self) -> &str {
        self.parts.uri.path()
    }

    fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.parts
            .headers
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
    }

    fn body(&self) -> &[u8] {
        self.body
    }

    fn peer(&self) -> Option<IpAddr> {
        self.peer
    }
}

async fn answer(
    gw: &Arc<Gateway>,
    s: Settings,
    req: hyper::Request<Incoming>,
    peer: Option<IpAddr>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let method = crate::listener::method_label(parts.method.as_str().as_bytes());
    let collected = tokio::time::timeout(s.client_timeout, Limited::new(body, s.max_body).collect()).await;
    let (body, refused) = match collected {
        Ok(Ok(c)) => (c.to_bytes(), None),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            (Bytes::new(), Some(GatewayError::PayloadTooLarge))
        }
        Ok(Err(_)) => (
            Bytes::new(),
            Some(GatewayError::BadRequest("malformed HTTP request")),
        ),
        Err(_) => (Bytes::new(), Some(GatewayError::RequestTimeout)),
    };
    let view = PartsView {
        parts: &parts,
        body: &body,
        peer,
    };
    let mut ctx = gw.begin(std::time::Instant::now());
    let answer = match &refused {
        None => gw.answer(&view, &mut ctx).await,
        Some(e) => gw.refuse(Some(&view), e, &mut ctx),
    };
    let response = response(&answer);
    gw.finish(method, &crate::logs::access::Peer::new(peer), ctx);
    response
}

fn response(answer: &Answer) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder()
        .status(answer.status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store");
    if let Some(x) = answer.x_cache {
        b = b.header("x-cache", x);
    }
    if let Some((name, value)) = &answer.header {
        b = b.header(*name, value.as_ref());
    }
    let body = match &answer.body {
        Body::Stored(stored) => Bytes::from_owner(stored.clone()),
        Body::Bytes(bytes) => bytes.clone(),
    };
    b.body(Full::new(body)).unwrap_or_default()
}
