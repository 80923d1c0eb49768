//! The chat-server-facing service: a Pingora `ProxyHttp` that answers every request itself.
//!
//! `request_filter` runs the whole data flow — parse → cache → dialect → upstream →
//! normalise → respond — and returns `Ok(true)`, so Pingora's proxy pipeline never runs
//! and every byte the chat server sees is written by [`crate::respond`]. `logging` records
//! metrics and the access-log line once the answer is out.
//!
//! The Auth API goes through the card cache. A search step goes through the brute-force
//! [`crate::guard`] instead (search answers are never cached); a search that ends with a
//! token pre-warms that token's card in the background, or stores the card the dialect
//! built for that session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntGauge;

use crate::accesslog;
use crate::cache::{CacheResult, CardCache, Lookup};
use crate::config::Config;
use crate::dialect::Dialect;
use crate::error::GatewayError;
use crate::guard::SearchGuard;
use crate::keys::TokenHasher;
use crate::metrics::Metrics;
use crate::parse::{self, Api, Route, Token};
use crate::respond::{self, Answer};
use crate::upstream::{Trace, Upstream};

/// Everything a request needs, shared by all workers.
pub struct Gateway {
    pub cfg: Config,
    pub cache: CardCache,
    pub dialect: Box<dyn Dialect>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub hasher: TokenHasher,
    pub guard: SearchGuard,
}

/// Per-request state for the log line and metrics.
pub struct Ctx {
    start: Instant,
    api: Api,
    status: u16,
    error_code: Option<String>,
    cache: Option<CacheResult>,
    token_fp: Option<String>,
    upstream: Option<(Option<u16>, Duration)>,
    /// Search: the step ("first", "next") and its outcome, once known.
    search: Option<(&'static str, &'static str)>,
    _inflight: Option<InflightGuard>,
}

/// Counts a request as in flight until its context is dropped, whatever path it took.
struct InflightGuard(IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The Pingora service wrapper.
pub struct Listener(pub Arc<Gateway>);

impl Gateway {
    async fn answer(self: &Arc<Self>, session: &mut Session, ctx: &mut Ctx) -> Answer {
        let (api, route) = parse::route(session.req_header(), self.cfg.limits.max_token_bytes);
        ctx.api = api;
        let result = match route {
            Ok(Route::Card(token)) => self.card(session, ctx, token).await,
            Ok(Route::Search) => return self.search(session, ctx).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(answer) => answer,
            Err(e) => {
                ctx.error_code = Some(e.code().to_string());
                error_answer(&e, e.body(), ctx.cache.map(CacheResult::header))
            }
        }
    }

    async fn card(&self, session: &mut Session, ctx: &mut Ctx, token: Token) -> Result<Answer, GatewayError> {
        if session.req_header().method == http::Method::POST {
            self.read_body(session).await?;
        }
        if self.cfg.log.access {
            ctx.token_fp = Some(self.hasher.fingerprint(token.as_bytes()));
        }
        let trace = Trace::default();
        let (result, how) = self.lookup(&token, &trace).await;
        ctx.cache = Some(how);
        ctx.upstream = trace.get();
        let stored = result?;
        if let Some(code) = &stored.error_code {
            ctx.error_code = Some(code.to_string());
        }
        Ok(Answer {
            status: stored.status,
            body: stored.body.clone(),
            x_cache: Some(how.header()),
            allow: None,
            close: false,
        })
    }

    /// The card of a token: from the cache, or from the internal system (single-flight).
    async fn lookup(&self, token: &Token, trace: &Trace) -> Lookup {
        let key = self.hasher.cache_key(token.as_bytes());
        self.cache
            .get_or_fetch(key, || self.dialect.fetch_card(&self.upstream, token, trace))
            .await
    }

    /// One step of the Search client API; errors carry `errorMessage` and `stepId` too.
    async fn search(self: &Arc<Self>, session: &mut Session, ctx: &mut Ctx) -> Answer {
        let mut step_id = None;
        match self.search_step(session, ctx, &mut step_id).await {
            Ok(body) => Answer {
                status: 200,
                body,
                x_cache: None,
                allow: None,
                close: false,
            },
            Err(e) => {
                ctx.error_code = Some(e.code().to_string());
                error_answer(&e, e.search_body(step_id.as_deref()), None)
            }
        }
    }

    async fn search_step(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &mut Ctx,
        step_id: &mut Option<String>,
    ) -> Result<Bytes, GatewayError> {
        let body = self.read_body(session).await?;
        let content_type = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let req = parse::search_params(content_type, &body, self.cfg.limits.max_token_bytes)?;
        step_id.clone_from(&req.step_id);
        let step = if req.step_id.is_some() { "next" } else { "first" };
        if let Err(refusal) = self.guard.admit(&self.hasher, &req).await {
            self.metrics
                .search_refusals
                .with_label_values(&[refusal.label()])
                .inc();
            ctx.search = Some((step, "refused"));
            return Err(refusal.error());
        }
        let trace = Trace::default();
        let result = self.dialect.search(&self.upstream, &req, &trace).await;
        ctx.upstream = trace.get();
        self.guard.record(&self.hasher, &req, &result).await;
        let outcome = match &result {
            Ok(a) if a.answer_type == 2 => "answer2",
            Ok(_) => "answer1",
            Err(GatewayError::CrmRejected { .. }) => "rejected",
            Err(_) => "error",
        };
        ctx.search = Some((step, outcome));
        let answer = result?;
        match (answer.token, answer.session) {
            (Some(token), Some((card, ttl))) => {
                let key = self.hasher.cache_key(token.as_bytes());
                self.cache.store_session(key, card, ttl).await;
            }
            (Some(token), None) if answer.answer_type == 2 && self.cfg.search.prewarm => self.prewarm(token),
            _ => {}
        }
        Ok(answer.body)
    }

    /// Fetch a token's card in the background so the chat server's next Auth API call is a
    /// hit. Its outcome is logged and counted, never surfaced to the search answer.
    fn prewarm(self: &Arc<Self>, token: String) {
        let gw = self.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let Ok(token) = parse::token(token.as_bytes(), gw.cfg.limits.max_token_bytes) else {
                gw.metrics.prewarms.with_label_values(&["error"]).inc();
                return;
            };
            let trace = Trace::default();
            let (result, how) = gw.lookup(&token, &trace).await;
            let (status, code) = match &result {
                Ok(stored) => (stored.status, stored.error_code.as_deref().map(str::to_string)),
                Err(e) => (e.status(), Some(e.code().to_string())),
            };
            let outcome = if status == 200 { "ok" } else { "error" };
            gw.metrics.prewarms.with_label_values(&[outcome]).inc();
            if gw.cfg.log.access {
                let upstream = trace.get();
                let fp = gw.hasher.fingerprint(token.as_bytes());
                accesslog::emit(&accesslog::Line {
                    ts: accesslog::now(),
                    api: "prewarm",
                    method: "-",
                    status,
                    error_code: code.as_deref(),
                    cache: Some(how.label()),
                    step: None,
                    upstream_status: upstream.and_then(|(s, _)| s),
                    upstream_ms: upstream.map(|(_, d)| accesslog::millis(d)),
                    duration_ms: accesslog::millis(start.elapsed()),
                    token_fp: Some(&fp),
                    peer: None,
                });
            }
        });
    }

    /// Read the request body within `limits.max_body_bytes`.
    async fn read_body(&self, session: &mut Session) -> Result<Bytes, GatewayError> {
        let limit = usize::try_from(self.cfg.limits.max_body_bytes).unwrap_or(usize::MAX);
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(GatewayError::PayloadTooLarge);
        }
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(GatewayError::PayloadTooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(_) => return Err(GatewayError::BadRequest("request body could not be read")),
            }
        }
    }
}

fn error_answer(e: &GatewayError, body: Bytes, x_cache: Option<&'static str>) -> Answer {
    Answer {
        status: e.status(),
        body,
        x_cache,
        allow: e.allow(),
        // An unread oversized or broken body cannot be skipped safely.
        close: matches!(
            e,
            GatewayError::PayloadTooLarge | GatewayError::BadRequest("request body could not be read")
        ),
    }
}

#[async_trait]
impl ProxyHttp for Listener {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            api: Api::Other,
            status: 0,
            error_code: None,
            cache: None,
            token_fp: None,
            upstream: None,
            search: None,
            _inflight: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let gw = &self.0;
        gw.metrics.inflight.inc();
        ctx._inflight = Some(InflightGuard(gw.metrics.inflight.clone()));
        ctx.start = Instant::now();
        let answer = gw.answer(session, ctx).await;
        ctx.status = answer.status;
        respond::write(session, answer).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; the proxy pipeline is never reached.
        Err(pingora::Error::new_str("cardgate answers every request itself"))
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let gw = &self.0;
        let elapsed = ctx.start.elapsed();
        let api = ctx.api.label();
        let status = if ctx.status == 0 { 499 } else { ctx.status };
        gw.metrics.observe_request(api, status, elapsed.as_secs_f64());
        if let Some(how) = ctx.cache {
            gw.metrics.count_lookup(how.label());
        }
        if let Some((step, outcome)) = ctx.search {
            gw.metrics.search_steps.with_label_values(&[step, outcome]).inc();
        }
        if !gw.cfg.log.access {
            return;
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        accesslog::emit(&accesslog::Line {
            ts: accesslog::now(),
            api,
            method: session.req_header().method.as_str(),
            status,
            error_code: ctx.error_code.as_deref(),
            cache: ctx.cache.map(CacheResult::label),
            step: ctx.search.map(|(step, _)| step),
            upstream_status: ctx.upstream.and_then(|(s, _)| s),
            upstream_ms: ctx.upstream.map(|(_, d)| accesslog::millis(d)),
            duration_ms: accesslog::millis(elapsed),
            token_fp: ctx.token_fp.as_deref(),
            peer,
        });
    }
}
