//! Talk to the internal system through Pingora's pooled HTTP client.
//!
//! One [`Upstream`] per process holds a `Connector` (keepalive pool, TLS via rustls with an
//! optional custom CA and client certificate) and the `HttpPeer` of `upstream.url`. A call
//! is bounded by `upstream.connect_timeout` for the connection and `upstream.timeout` for
//! the whole exchange. A request that met a dead pooled connection is retried once on a
//! fresh one when it is safe to repeat. Transport failures become the `CRM_*` errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error as PError, ErrorType};

use crate::config::{Config, ConfigError};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::normalise::UpstreamAnswer;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// One request to the internal system; `path` is relative to the base URL's path.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Safe to send twice (no side effect such as placing a call).
    pub idempotent: bool,
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
    connector: Connector,
    peer: Arc<HttpPeer>,
    authority: HeaderValue,
    base_path: String,
    timeout: Duration,
    max_body: usize,
    user_agent: HeaderValue,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let url = cfg.upstream_url();
        let addr = url.resolve()?;
        let mut options = ConnectorOptions::new(cfg.upstream.pool_size);
        options.ca_file = cfg.upstream.ca_file.clone();
        if let (Some(cert), Some(key)) = (&cfg.upstream.client_cert, &cfg.upstream.client_key) {
            options.cert_key_file = Some((cert.clone(), key.clone()));
        }
        let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.connection_timeout = Some(cfg.upstream.connect_timeout);
        peer.options.total_connection_timeout = Some(cfg.upstream.connect_timeout * 2);
        peer.options.read_timeout = Some(cfg.upstream.timeout);
        peer.options.write_timeout = Some(cfg.upstream.timeout);
        peer.options.idle_timeout = Some(POOL_IDLE);
        let authority = HeaderValue::from_str(&url.authority())
            .map_err(|_| ConfigError("upstream.url: host is not a valid Host header".into()))?;
        Ok(Upstream {
            connector: Connector::new(Some(options)),
            peer: Arc::new(peer),
            authority,
            base_path: url.base_path,
            timeout: cfg.upstream.timeout,
            max_body: usize::try_from(cfg.upstream.max_response_bytes).unwrap_or(usize::MAX),
            user_agent: HeaderValue::from_static(concat!("cardgate/", env!("CARGO_PKG_VERSION"))),
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
        let header = self.request_header(req)?;
        let mut retried = false;
        loop {
            let (mut session, reused) = self
                .connector
                .get_http_session(self.peer.as_ref())
                .await
                .map_err(|e| transport_error(&e))?;
            match self.once(&mut session, header.clone(), req).await {
                Ok(answer) => {
                    if session.response_done() {
                        self.connector
                            .release_http_session(session, self.peer.as_ref(), Some(POOL_IDLE))
                            .await;
                    }
                    return Ok(answer);
                }
                Err(Failure { error, answered }) => {
                    session.shutdown().await;
                    let stale_connection = reused
                        && !answered
                        && matches!(
                            error.etype(),
                            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                        );
                    if stale_connection && req.idempotent && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(error.into_gateway());
                }
            }
        }
    }

    fn request_header(&self, req: &UpstreamRequest) -> Result<Box<RequestHeader>, GatewayError> {
        let path = format!("{}{}", self.base_path, req.path);
        let mut h = RequestHeader::build(req.method, path.as_bytes(), Some(req.headers.len() + 5))
            .map_err(|_| GatewayError::Internal("cannot build the upstream request"))?;
        let set = |h: &mut RequestHeader, name: HeaderName, value: HeaderValue| {
            h.insert_header(name, value)
                .map_err(|_| GatewayError::Internal("cannot build the upstream request"))
        };
        set(&mut h, http::header::HOST, self.authority.clone())?;
        set(&mut h, http::header::USER_AGENT, self.user_agent.clone())?;
        set(
            &mut h,
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        )?;
        for (name, value) in &req.headers {
            set(&mut h, name.clone(), value.clone())?;
        }
        if req.method != "GET" || !req.body.is_empty() {
            set(
                &mut h,
                http::header::CONTENT_LENGTH,
                HeaderValue::from(req.body.len()),
            )?;
        }
        Ok(Box::new(h))
    }

    async fn once(
        &self,
        session: &mut HttpSession,
        header: Box<RequestHeader>,
        req: &UpstreamRequest,
    ) -> Result<UpstreamAnswer, Failure> {
        let unanswered = |error| Failure {
            error: Fault::Transport(error),
            answered: false,
        };
        session.write_request_header(header).await.map_err(unanswered)?;
        if !req.body.is_empty() {
            session
                .write_request_body(req.body.clone(), true)
                .await
                .map_err(unanswered)?;
        }
        session.finish_request_body().await.map_err(unanswered)?;
        session.read_response_header().await.map_err(unanswered)?;
        let answered = |error| Failure {
            error: Fault::Transport(error),
            answered: true,
        };
        let resp = session.response_header().ok_or_else(|| Failure {
            error: Fault::Invalid("no response header"),
            answered: false,
        })?;
        let status = resp.status.as_u16();
        let text_header = |name: http::header::HeaderName| {
            resp.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = text_header(http::header::CONTENT_TYPE);
        let cache_control = text_header(http::header::CACHE_CONTROL);
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await.map_err(answered)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(Failure {
                    error: Fault::Invalid("body too large"),
                    answered: true,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamAnswer {
            status,
            content_type,
            cache_control,
            body: body.freeze(),
        })
    }
}

enum Fault {
    Transport(Box<PError>),
    Invalid(&'static str),
}

struct Failure {
    error: Fault,
    answered: bool,
}

impl Fault {
    fn etype(&self) -> &ErrorType {
        match self {
            Fault::Transport(e) => &e.etype,
            Fault::Invalid(_) => &ErrorType::InvalidHTTPHeader,
        }
    }

    fn into_gateway(self) -> GatewayError {
        match self {
            Fault::Transport(e) => transport_error(&e),
            Fault::Invalid(why) => GatewayError::CrmInvalidResponse(why),
        }
    }
}

/// Map a Pingora transport error to the gateway's error.
fn transport_error(e: &PError) -> GatewayError {
    match &e.etype {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            GatewayError::CrmTimeout
        }
        ErrorType::TLSHandshakeTimedout => GatewayError::CrmTimeout,
        ErrorType::ConnectRefused => GatewayError::CrmUnavailable("connection refused"),
        ErrorType::ConnectNoRoute => GatewayError::CrmUnavailable("no route to the CRM"),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
            GatewayError::CrmUnavailable("TLS handshake failed")
        }
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            GatewayError::CrmUnavailable("connection closed or reset")
        }
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error | ErrorType::InvalidH2 => {
            GatewayError::CrmInvalidResponse("malformed HTTP")
        }
        _ => GatewayError::CrmUnavailable("connection failed"),
    }
}
