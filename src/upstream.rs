//! Talk to the internal system: HTTP/1.1 over pooled keep-alive connections.
//!
//! Connections come from Pingora's `TransportConnector` (TCP, or TLS via rustls with an
//! optional custom CA and client certificate, within `upstream.connect_timeout`); idle ones
//! wait in a small LIFO pool (`upstream.pool_size`, at most [`POOL_IDLE`] idle), and one the
//! internal system has closed meanwhile is noticed before use. A request is one write of a
//! ready head and body; the answer is parsed with `httparse` and framed by Content-Length,
//! chunks or the end of the connection, within `upstream.max_response_bytes`. The whole
//! exchange is bounded by `upstream.timeout`. A request that met a dead pooled connection
//! is retried once on a fresh one when it is safe to repeat. Transport failures become the
//! `CRM_*` errors.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error as PError, ErrorType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::config::{Config, ConfigError};
use crate::error::GatewayError;
use crate::http1;
use crate::metrics::Metrics;
use crate::normalise::UpstreamAnswer;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// The largest response head accepted from the internal system.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Response header fields accepted at most.
const MAX_RESPONSE_HEADERS: usize = 100;

/// One request to the internal system; `path` is relative to the base URL's path.
#[derive(Clone)]
pub struct UpstreamRequest {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Safe to send twice (no side effect such as placing a call).
    pub idempotent: bool,
}

/// Header values stay out: one of them may carry a token.
impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("headers", &names)
            .field("body_bytes", &self.body.len())
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

/// What the last upstream call of a request did, for its log line.
#[derive(Debug, Default)]
pub struct Trace {
    status: AtomicU64,
    micros: AtomicU64,
}

impl Trace {
    fn record(&self, status: Option<u16>, elapsed: Duration) {
        self.status.store(status.map_or(0, u64::from), Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
        self.micros.store(micros, Ordering::Relaxed);
    }

    /// The upstream status (None: no answer) and duration, if a call was made.
    pub fn get(&self) -> Option<(Option<u16>, Duration)> {
        let micros = self.micros.load(Ordering::Relaxed);
        if micros == 0 {
            return None;
        }
        let status = u16::try_from(self.status.load(Ordering::Relaxed))
            .ok()
            .filter(|s| *s != 0);
        Some((status, Duration::from_micros(micros)))
    }
}

pub struct Upstream {
    connector: TransportConnector,
    peer: HttpPeer,
    pool: Mutex<VecDeque<Idle>>,
    pool_size: usize,
    /// `Host`, `User-Agent` and `Accept` lines, the same on every request.
    fixed_headers: Vec<u8>,
    base_path: String,
    timeout: Duration,
    max_body: usize,
    metrics: Arc<Metrics>,
}

/// A pooled connection and when it was put back.
struct Idle {
    io: Stream,
    since: Instant,
}

impl Upstream {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let url = cfg.upstream_url();
        let addr = url.resolve()?;
        let mut options = ConnectorOptions::new(0);
        options.ca_file = cfg.upstream.ca_file.clone();
        if let (Some(cert), Some(key)) = (&cfg.upstream.client_cert, &cfg.upstream.client_key) {
            options.cert_key_file = Some((cert.clone(), key.clone()));
        }
        let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.connection_timeout = Some(cfg.upstream.connect_timeout);
        peer.options.total_connection_timeout = Some(cfg.upstream.connect_timeout * 2);
        let authority = url.authority();
        if HeaderValue::from_str(&authority).is_err() {
            return Err(ConfigError(
                "upstream.url: host is not a valid Host header".into(),
            ));
        }
        let fixed_headers = format!(
            "Host: {authority}\r\nUser-Agent: cardgate/{}\r\nAccept: application/json\r\n",
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes();
        Ok(Upstream {
            connector: TransportConnector::new(Some(options)),
            peer,
            pool: Mutex::new(VecDeque::new()),
            pool_size: cfg.upstream.pool_size,
            fixed_headers,
            base_path: url.base_path,
            timeout: cfg.upstream.timeout,
            max_body: usize::try_from(cfg.upstream.max_response_bytes).unwrap_or(usize::MAX),
            metrics,
        })
    }

    /// Send one request and read the whole answer, within `upstream.timeout`.
    pub async fn send(&self, req: &UpstreamRequest, trace: &Trace) -> Result<UpstreamAnswer, GatewayError> {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .unwrap_or(Err(GatewayError::CrmTimeout));
        let elapsed = start.elapsed();
        let outcome = match &result {
            Ok(a) if a.status < 400 => "ok",
            Ok(a) if a.status < 500 => "rejected",
            Ok(_) => "error_5xx",
            Err(GatewayError::CrmTimeout) => "timeout",
            Err(GatewayError::CrmInvalidResponse(_)) => "invalid",
            Err(_) => "unavailable",
        };
        self.metrics.observe_upstream(outcome, elapsed.as_secs_f64());
        trace.record(result.as_ref().ok().map(|a| a.status), elapsed);
        result
    }

    async fn exchange(&self, req: &UpstreamRequest) -> Result<UpstreamAnswer, GatewayError> {
        let wire = self.wire(req);
        let mut retried = false;
        loop {
            // A retry goes to a new connection: the pooled ones may all be closing.
            let (mut io, reused) = self.checkout(retried).await?;
            match self.once(&mut io, &wire).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        self.checkin(io);
                    }
                    return Ok(answer);
                }
                Err(Failure { error, answered }) => {
                    let stale_connection = reused && !answered && matches!(error, Fault::Io(_));
                    if stale_connection && req.idempotent && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(error.into_gateway());
                }
            }
        }
    }

    /// The request as bytes on the wire: request line, headers, body.
    fn wire(&self, req: &UpstreamRequest) -> Vec<u8> {
        let mut w = Vec::with_capacity(256 + req.body.len());
        w.extend_from_slice(req.method.as_bytes());
        w.push(b' ');
        w.extend_from_slice(self.base_path.as_bytes());
        w.extend_from_slice(req.path.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        w.extend_from_slice(&self.fixed_headers);
        for (name, value) in &req.headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if req.method != "GET" || !req.body.is_empty() {
            w.extend_from_slice(b"Content-Length: ");
            w.extend_from_slice(itoa::Buffer::new().format(req.body.len()).as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(&req.body);
        w
    }

    /// A pooled connection that is still open (true), or a new one (false; always when
    /// `fresh`).
    async fn checkout(&self, fresh: bool) -> Result<(Stream, bool), GatewayError> {
        if !fresh {
            if let Some(io) = self.pooled().await {
                return Ok((io, true));
            }
        }
        // Boxed: the connect future (TCP, TLS handshake) is large and rarely needed; kept
        // inline it would make every exchange future as large, and costly to move.
        let io = Box::pin(self.connector.new_stream(&self.peer))
            .await
            .map_err(|e| transport_error(&e))?;
        Ok((io, false))
    }

    /// The newest pooled connection that is still open, if any.
    async fn pooled(&self) -> Option<Stream> {
        loop {
            let mut idle = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop_back()?;
            if idle.since.elapsed() >= POOL_IDLE {
                // The newest is too old: so are all the others.
                let old = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
                drop(old);
                return None;
            }
            if still_open(&mut idle.io).await {
                return Some(idle.io);
            }
        }
    }

    fn checkin(&self, io: Stream) {
        let evicted = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.push_back(Idle {
                io,
                since: Instant::now(),
            });
            (pool.len() > self.pool_size).then(|| pool.pop_front())
        };
        drop(evicted);
    }

    /// One exchange on one connection: the answer, and whether the connection may be reused.
    async fn once(&self, io: &mut Stream, wire: &[u8]) -> Result<(UpstreamAnswer, bool), Failure> {
        let unanswered = |e| Failure {
            error: Fault::Io(e),
            answered: false,
        };
        io.write_all(wire).await.map_err(unanswered)?;
        io.flush().await.map_err(unanswered)?;
        let mut buf = BytesMut::with_capacity(4096);
        let head = loop {
            match parse_response(&buf) {
                Ok(Some(head)) if head.interim => {
                    let _ = buf.split_to(head.len);
                }
                Ok(Some(head)) => break head,
                Ok(None) => {
                    let answered = !buf.is_empty();
                    if read_more(io, &mut buf).await.map_err(|e| Failure {
                        error: Fault::Io(e),
                        answered,
                    })? == 0
                    {
                        return Err(Failure {
                            error: Fault::Io(std::io::ErrorKind::UnexpectedEof.into()),
                            answered,
                        });
                    }
                }
                Err(why) => return Err(Failure::invalid(why)),
            }
        };
        let _ = buf.split_to(head.len);
        let (body, reusable) = self.body(io, &mut buf, &head).await?;
        let answer = UpstreamAnswer {
            status: head.status,
            content_type: head.content_type,
            cache_control: head.cache_control,
            body,
        };
        Ok((answer, reusable && head.keep_alive))
    }

    /// Read the body that follows `head` (`buf` holds what was read past the head).
    async fn body(
        &self,
        io: &mut Stream,
        buf: &mut BytesMut,
        head: &ResponseHead,
    ) -> Result<(Bytes, bool), Failure> {
        let too_large = || Failure::invalid("body too large");
        let eof = || Failure {
            error: Fault::Io(std::io::ErrorKind::UnexpectedEof.into()),
            answered: true,
        };
        let io_error = |e| Failure {
            error: Fault::Io(e),
            answered: true,
        };
        match head.framing {
            BodyFraming::Length(n) => {
                if n > self.max_body {
                    return Err(too_large());
                }
                buf.reserve(n.saturating_sub(buf.len()));
                while buf.len() < n {
                    if read_more(io, buf).await.map_err(io_error)? == 0 {
                        return Err(eof());
                    }
                }
                let body = buf.split_to(n).freeze();
                // Bytes past the answer: the connection is out of step, do not reuse it.
                Ok((body, buf.is_empty()))
            }
            BodyFraming::Chunked => {
                let mut chunked = http1::Chunked::default();
                loop {
                    match chunked.decode(buf, self.max_body) {
                        Ok(Some(used)) => return Ok((Bytes::from(chunked.body), used == buf.len())),
                        Ok(None) if buf.len() > self.max_body.saturating_mul(2).saturating_add(4096) => {
                            return Err(too_large())
                        }
                        Ok(None) => {
                            if read_more(io, buf).await.map_err(io_error)? == 0 {
                                return Err(eof());
                            }
                        }
                        Err(GatewayError::PayloadTooLarge) => return Err(too_large()),
                        Err(_) => return Err(Failure::invalid("malformed chunked body")),
                    }
                }
            }
            BodyFraming::UntilClose => {
                while read_more(io, buf).await.map_err(io_error)? > 0 {
                    if buf.len() > self.max_body {
                        return Err(too_large());
                    }
                }
                Ok((buf.split().freeze(), false))
            }
        }
    }
}

/// Read more of the answer into `buf`; 0 at the end of the connection.
async fn read_more(io: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    io.read_buf(buf).await
}

/// Whether a pooled connection is still usable: nothing to read on it yet (a closed
/// connection reads as its end, a broken one as an error; data nobody asked for means the
/// connection is out of step).
async fn still_open(io: &mut Stream) -> bool {
    poll_fn(|cx| {
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut probe).is_pending())
    })
    .await
}

/// How the body of an answer is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
struct ResponseHead {
    len: usize,
    status: u16,
    /// A 1xx answer: skip it, the real one follows.
    interim: bool,
    framing: BodyFraming,
    keep_alive: bool,
    content_type: Option<String>,
    cache_control: Option<String>,
}

/// Parse a response head at the start of `buf`; `Ok(None)`: incomplete.
fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed HTTP"),
    };
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let mut head = ResponseHead {
        len,
        status,
        interim: (100..200).contains(&status),
        framing: BodyFraming::UntilClose,
        keep_alive: false,
        content_type: None,
        cache_control: None,
    };
    if status == 101 {
        return Err("unexpected protocol switch");
    }
    let text = |v: &[u8]| std::str::from_utf8(v).ok().map(str::to_string);
    let mut fields = http1::FramingFields::default();
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        if fields.add(name, f.value) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-type") {
            head.content_type = text(f.value);
        } else if name.eq_ignore_ascii_case(b"cache-control") {
            head.cache_control = text(f.value);
        }
    }
    if let Some(why) = fields.length_error {
        return Err(why);
    }
    let bodiless = head.interim || status == 204 || status == 304;
    head.framing = match (fields.te_fields, fields.length) {
        _ if bodiless => BodyFraming::Length(0),
        (0, Some(n)) => BodyFraming::Length(n),
        (0, None) => BodyFraming::UntilClose,
        (_, Some(_)) => return Err("both Transfer-Encoding and Content-Length"),
        // The last coding decides: chunked, or the body runs to the end of the connection.
        (_, None) if fields.te_chunked => BodyFraming::Chunked,
        (_, None) => BodyFraming::UntilClose,
    };
    head.keep_alive = head.framing != BodyFraming::UntilClose && fields.persistent(minor);
    Ok(Some(head))
}

enum Fault {
    Io(std::io::Error),
    Invalid(&'static str),
}

struct Failure {
    error: Fault,
    answered: bool,
}

impl Failure {
    fn invalid(why: &'static str) -> Self {
        Failure {
            error: Fault::Invalid(why),
            answered: true,
        }
    }
}

impl Fault {
    fn into_gateway(self) -> GatewayError {
        match self {
            Fault::Io(e) => match e.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => {
                    GatewayError::CrmUnavailable("connection closed or reset")
                }
                _ => GatewayError::CrmUnavailable("connection failed"),
            },
            Fault::Invalid(why) => GatewayError::CrmInvalidResponse(why),
        }
    }
}

/// Map a Pingora connect error to the gateway's error.
fn transport_error(e: &PError) -> GatewayError {
    match &e.etype {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => GatewayError::CrmTimeout,
        ErrorType::ConnectRefused => GatewayError::CrmUnavailable("connection refused"),
        ErrorType::ConnectNoRoute => GatewayError::CrmUnavailable("no route to the CRM"),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
            GatewayError::CrmUnavailable("TLS handshake failed")
        }
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            GatewayError::CrmUnavailable("connection closed or reset")
        }
        _ => GatewayError::CrmUnavailable("connection failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ResponseHead {
        parse_response(raw.as_bytes()).unwrap().expect("complete")
    }

    #[test]
    fn response_framing() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nCache-Control: max-age=5\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, BodyFraming::Length(12), true)
        );
        assert_eq!(h.content_type.as_deref(), Some("application/json"));
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
    fn bad_responses_are_invalid() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le")
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
            assert!(parse_response(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse_response(huge.as_bytes()).is_err());
    }
}
