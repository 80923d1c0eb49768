//! Talk to the internal system: HTTP/1.1 over pooled keep-alive connections.
//!
//! Connections come from Pingora's `TransportConnector` (TCP, or TLS via rustls with an
//! optional custom CA and client certificate, within `upstream.connect_timeout`); idle ones
//! wait in the [`pool`]. A request is one write of a ready head and body; the answer is read
//! by [`crate::h1::client`] within `upstream.max_response_bytes`. The whole exchange is
//! bounded by `upstream.timeout`. A request that met a dead pooled connection is retried
//! once on a fresh one when it is safe to repeat. This module turns transport failures
//! into the `CRM_*` errors; [`crate::normalise`] judges the answers that did arrive.

mod pool;
mod resolve;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error as PError, ErrorType};
use tokio::io::AsyncWriteExt;

use crate::logs;
use crate::config::{Config, ConfigError};
use crate::correlation::Correlation;
use crate::error::GatewayError;
use crate::h1::client::{read_answer, ReadError};
use crate::h1::FramingError;
use crate::metrics::Metrics;

pub use resolve::resolve;

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

/// What the internal system answered: the parts that judging it needs.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub status: u16,
    pub cache_control: Option<String>,
    pub body: Bytes,
}

#[cfg(test)]
impl UpstreamAnswer {
    /// A JSON answer with `status` and `body` (test helper).
    pub fn json(status: u16, body: &str) -> Self {
        UpstreamAnswer {
            status,
            cache_control: None,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }
}

/// The status and duration of the last upstream call made for one request, for its
/// access-log line, and the correlation every call for it carries.
#[derive(Debug, Default)]
pub struct CallRecord {
    status: AtomicU64,
    micros: AtomicU64,
    /// The request id and trace context the call carries to the CRM.
    correlation: Correlation,
}

impl CallRecord {
    /// A record for a call that carries `correlation` to the CRM.
    pub fn new(correlation: Correlation) -> Self {
        CallRecord {
            correlation,
            ..CallRecord::default()
        }
    }

    fn record(&self, status: Option<u16>, elapsed: Duration) {
        self.status.store(status.map_or(0, u64::from), Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
        self.micros.store(micros, Ordering::Relaxed);
    }

    /// The correlation back, once the calls are made.
    pub fn into_correlation(self) -> Correlation {
        self.correlation
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
    pool: Arc<pool::Pool>,
    /// One permit per call under way (`upstream.max_inflight`).
    slots: tokio::sync::Semaphore,
    /// The limits a reload changes in place.
    limits: ArcSwap<Limits>,
    /// When a failure's cause was last logged (at most one line a second).
    last_warning: Mutex<Option<Instant>>,
    /// `Host`, `User-Agent` and `Accept` lines, the same on every request.
    fixed_headers: Vec<u8>,
    base_path: String,
    /// The `Host` value (also in `fixed_headers`).
    #[cfg(feature = "alt-http")]
    authority: String,
    metrics: Arc<Metrics>,
}

/// `upstream.timeout`, `queue_timeout` and `max_response_bytes`, and the request id's
/// header name.
#[derive(Debug, Clone)]
struct Limits {
    timeout: Duration,
    queue_timeout: Duration,
    max_body: usize,
    request_id_header: String,
}

impl Limits {
    fn of(cfg: &Config) -> Self {
        Limits {
            timeout: cfg.upstream.timeout,
            queue_timeout: cfg.upstream.queue_timeout,
            max_body: usize::try_from(cfg.upstream.max_response_bytes).unwrap_or(usize::MAX),
            request_id_header: cfg.correlation.request_id_header.clone(),
        }
    }
}

impl Upstream {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        check_tls(&cfg.upstream)?;
        let url = cfg.upstream_url()?;
        let addr = resolve(&url)?;
        let mut options = ConnectorOptions::new(0);
        options.ca_file = cfg.upstream.ca_file.clone();
        if let (Some(cert), Some(key)) = (&cfg.upstream.client_cert, &cfg.upstream.client_key) {
            options.cert_key_file = Some((cert.clone(), key.clone()));
        }
        let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.connection_timeout = Some(cfg.upstream.connect_timeout);
        peer.options.total_connection_timeout = Some(cfg.upstream.connect_timeout.saturating_mul(2));
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
            pool: pool::Pool::new(cfg.upstream.pool_size, cfg.upstream.pool_idle_timeout),
            slots: tokio::sync::Semaphore::new(cfg.upstream.max_inflight),
            limits: ArcSwap::from_pointee(Limits::of(cfg)),
            last_warning: Mutex::new(None),
            fixed_headers,
            base_path: url.base_path,
            #[cfg(feature = "alt-http")]
            authority,
            metrics,
        })
    }

    /// New timeouts and answer limit for the calls made from now on.
    pub fn apply(&self, cfg: &Config) {
        self.limits.store(Arc::new(Limits::of(cfg)));
    }

    /// Send one request and read the whole answer, within `upstream.timeout`. At most
    /// `upstream.max_inflight` calls (and so connections) are under way at once; a call
    /// that finds no slot within `upstream.queue_timeout` is shed as `CRM_OVERLOADED`.
    pub async fn send(
        &self,
        req: &UpstreamRequest,
        record: &CallRecord,
    ) -> Result<UpstreamAnswer, GatewayError> {
        let limits = self.limits.load();
        // A free slot is taken at once; only a full house arms the queue timer.
        let slot = match self.slots.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => tokio::time::timeout(limits.queue_timeout, self.slots.acquire())
                .await
                .ok()
                .and_then(Result::ok),
        };
        let Some(_slot) = slot else {
            self.metrics.observe_upstream("overloaded", 0.0);
            return Err(GatewayError::CrmOverloaded);
        };
        let start = Instant::now();
        let result = tokio::time::timeout(limits.timeout, self.exchange(req, record, &limits))
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
        record.record(result.as_ref().ok().map(|a| a.status), elapsed);
        result
    }

    async fn exchange(
        &self,
        req: &UpstreamRequest,
        record: &CallRecord,
        limits: &Limits,
    ) -> Result<UpstreamAnswer, GatewayError> {
        let max_body = limits.max_body;
        #[cfg(feature = "alt-http")]
        if crate::alt::pingora_client() {
            return self.exchange_with_pingora(req, max_body).await;
        }
        let wire = self.wire(req, &record.correlation, &limits.request_id_header);
        let mut retried = false;
        loop {
            // A retry goes to a new connection: the pooled ones may all be closing.
            let (mut io, reused) = self.checkout(retried).await?;
            match self.once(&mut io, &wire, max_body).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        self.pool.put(io);
                    }
                    return Ok(answer);
                }
                Err(e) => {
                    let stale_connection = reused && matches!(e, ReadError::Io { answered: false, .. });
                    if stale_connection && req.idempotent && !retried {
                        retried = true;
                        continue;
                    }
                    self.warn("CRM exchange failed", &e);
                    return Err(answer_error(&e));
                }
            }
        }
    }

    /// Log why a call failed (the cause the chat server's error leaves out), rate-limited.
    fn warn(&self, what: &str, cause: &dyn std::fmt::Display) {
        logs::warn(what, cause, &self.last_warning, Duration::from_secs(1));
    }

    /// [`Upstream::exchange`] through Pingora's client session (see [`crate::alt`]).
    #[cfg(feature = "alt-http")]
    async fn exchange_with_pingora(
        &self,
        req: &UpstreamRequest,
        max_body: usize,
    ) -> Result<UpstreamAnswer, GatewayError> {
        let mut retried = false;
        loop {
            let (io, reused) = self.checkout(retried).await?;
            let sent = crate::alt::pingora_client::exchange(
                io,
                req,
                &self.authority,
                &self.base_path,
                max_body,
            );
            match sent.await {
                Ok((answer, back)) => {
                    if let Some(io) = back {
                        self.pool.put(io);
                    }
                    return Ok(answer);
                }
                Err(e)
                    if reused
                        && req.idempotent
                        && !retried
                        && matches!(e, ReadError::Io { answered: false, .. }) =>
                {
                    retried = true;
                }
                Err(e) => return Err(answer_error(&e)),
            }
        }
    }

    /// The request as bytes on the wire: request line, headers, body.
    fn wire(&self, req: &UpstreamRequest, correlation: &Correlation, id_header: &str) -> Vec<u8> {
        let mut w = Vec::with_capacity(req.body.len().saturating_add(256));
        w.extend_from_slice(req.method.as_bytes());
        w.push(b' ');
        w.extend_from_slice(self.base_path.as_bytes());
        w.extend_from_slice(req.path.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        w.extend_from_slice(&self.fixed_headers);
        // Both were checked for header-safe characters when they were read or made.
        if let Some(id) = &correlation.request_id {
            for part in [id_header, ": ", id, "\r\n"] {
                w.extend_from_slice(part.as_bytes());
            }
        }
        if let Some(tp) = &correlation.traceparent {
            for part in ["traceparent: ", tp, "\r\n"] {
                w.extend_from_slice(part.as_bytes());
            }
        }
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
            if let Some(io) = self.pool.take().await {
                return Ok((io, true));
            }
        }
        // Boxed: the connect future (TCP, TLS handshake) is large and rarely needed; kept
        // inline it would make every exchange future as large, and costly to move.
        let io = Box::pin(self.connector.new_stream(&self.peer))
            .await
            .map_err(|e| {
                self.warn("cannot connect to the CRM", &e);
                connect_error(&e)
            })?;
        Ok((io, false))
    }

    /// One exchange on one connection: the answer, and whether the connection may be reused.
    async fn once(
        &self,
        io: &mut Stream,
        wire: &[u8],
        max_body: usize,
    ) -> Result<(UpstreamAnswer, bool), ReadError> {
        let unanswered = |cause| ReadError::Io {
            cause,
            answered: false,
        };
        io.write_all(wire).await.map_err(unanswered)?;
        io.flush().await.map_err(unanswered)?;
        let (head, body, reusable) = read_answer(io, max_body).await?;
        let answer = UpstreamAnswer {
            status: head.status,
            cache_control: head.cache_control,
            body,
        };
        Ok((answer, reusable))
    }
}

/// An answer that could not be read, as the chat server's error.
fn answer_error(e: &ReadError) -> GatewayError {
    match e {
        ReadError::Io { cause, .. } => match cause.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => GatewayError::CrmUnavailable("connection closed or reset"),
            _ => GatewayError::CrmUnavailable("connection failed"),
        },
        ReadError::Framing(FramingError::BodyTooLarge) => GatewayError::CrmInvalidResponse("body too large"),
        ReadError::Framing(f) => GatewayError::CrmInvalidResponse(f.reason()),
    }
}

/// A Pingora connect error as the chat server's error.
fn connect_error(e: &PError) -> GatewayError {
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

/// The CRM-side TLS files must be usable as configured: a PEM that cannot be read or
/// parsed, a key that does not match its certificate, or an expired certificate is an
/// error naming the key, at `cardgate check` and at startup (never a silent fallback to a
/// connection without a client certificate).
pub fn check_tls(cfg: &crate::config::UpstreamSection) -> Result<(), ConfigError> {
    if let Some(ca) = &cfg.ca_file {
        crate::tls::roots(ca, "upstream.ca_file").map_err(ConfigError)?;
    }
    match (&cfg.client_cert, &cfg.client_key) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(ConfigError("upstream.client_key: is required with upstream.client_cert".into())),
        (None, Some(_)) => Err(ConfigError("upstream.client_cert: is required with upstream.client_key".into())),
        (Some(cert), Some(key)) => {
            crate::tls::key_pair(("upstream.client_cert", cert), ("upstream.client_key", key))
                .map(|_| ())
                .map_err(ConfigError)
        }
    }
}
