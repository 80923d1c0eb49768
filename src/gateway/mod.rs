//! One chat-server request, from its parsed form to its answer.
//!
//! [`Gateway::answer`] runs the data flow — parse → cache → dialect → upstream →
//! normalise — and returns the [`Answer`] that [`crate::respond`] writes; the listener
//! ([`crate::listener`]) owns the connection around it. [`Gateway::finish`] records the
//! metrics and the access-log line once the answer is out.
//!
//! The Auth API goes through the card cache. A search step goes through the brute-force
//! [`crate::guard`] instead (search answers are never cached); a search that ends with a
//! token pre-warms that token's card in the background, or stores the card the dialect
//! built for that session. What the operator asks of it (reload, purge, clear, the
//! edge's state) is in [`control`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::cache::{CacheResult, CardCache, Lookup};
use crate::config::{Config, ConfigError};
mod account;
mod control;

pub use account::Ctx;
pub use control::Reloaded;

use crate::correlation::Correlation;
use crate::dialect::{self, Dialect};
use crate::edge::sources::{Refusal as SourceRefusal, Sources};
use crate::edge::Gate;
use crate::error::GatewayError;
use crate::guard::SearchGuard;
use crate::h1::server::RequestView;
use crate::keys::{CacheKey, TokenHasher};
use crate::logs::{self, access};
use crate::metrics::Metrics;
use crate::parse::{self, Api, Route, Token};
use crate::respond::{Answer, Body};
use crate::shared::Shared;
use crate::tls::Tls;
use crate::upstream::{CallRecord, Upstream};

/// Everything a request needs, shared by all workers. The listener and the admin port ask
/// it through its methods; what it holds stays its own.
pub struct Gateway {
    /// The configuration in force: replaced whole by a reload.
    cfg: ArcSwap<Config>,
    /// SIGTERM arrived: readiness is 503 and every answer closes its connection.
    draining: AtomicBool,
    cache: CardCache,
    dialect: Box<dyn Dialect>,
    upstream: Upstream,
    /// The Redis several replicas share, when `[shared]` is set.
    shared: Option<Arc<Shared>>,
    metrics: Arc<Metrics>,
    hasher: TokenHasher,
    guard: SearchGuard,
    /// Accept-time filters of the two listeners.
    chat_gate: Arc<Gate>,
    admin_gate: Arc<Gate>,
    /// What one source address may ask.
    sources: Sources,
    /// The admin secret's hash, when `admin.token_env` or `admin.token_file` is set.
    admin_token: ArcSwap<Option<[u8; 32]>>,
    /// The TLS listener's live certificate and client CA, when `[server.tls]` is set.
    tls: Option<Arc<Tls>>,
}

impl Gateway {
    /// Build the shared state from a validated config (this resolves the upstream host).
    pub fn new(cfg: Config) -> Result<Arc<Self>, ConfigError> {
        let metrics = Arc::new(Metrics::new(cfg.upstream.dialect.name()));
        let evictions = metrics.cache_evictions.clone();
        metrics
            .cache_max_bytes
            .set(i64::try_from(cfg.cache.max_size).unwrap_or(i64::MAX));
        let mut cache = CardCache::new(&cfg.cache, move || evictions.inc());
        let hasher = match (cfg.cache.hash_key()?, &cfg.shared) {
            (Some(key), _) => TokenHasher::from_secret(key.as_bytes()),
            // Replicas must agree on the keys they share (validated: with `[shared]`, one
            // of the two secrets is set).
            (None, Some(section)) => crate::shared::hasher(section)?,
            (None, None) => TokenHasher::random(),
        };
        let shared = match &cfg.shared {
            Some(section) => Some(Shared::new(section, &cfg.upstream, hasher.clone(), &metrics)?),
            None => None,
        };
        // gigma's cards are its sessions: they live in Redis whenever it is there.
        let gigma = cfg.upstream.dialect == crate::config::DialectKind::Gigma;
        if let Some(shared) = shared.as_ref().filter(|s| s.cards || gigma) {
            cache = cache.with_shared(shared.clone());
        }
        let mut guard = SearchGuard::new(&cfg.search);
        if let Some(shared) = &shared {
            guard = guard.with_shared(shared.clone());
        }
        let refused = |listener: &str| {
            crate::edge::REFUSALS.map(|r| metrics.connections_refused.with_label_values(&[listener, r]))
        };
        let chat_gate = Gate::new(
            cfg.server.allow.clone(),
            cfg.server.proxy_protocol.then(|| cfg.server.proxy_from.clone()),
            cfg.limits.max_connections,
            metrics.connections_open.clone(),
            refused("chat"),
        );
        let admin_gate = Gate::new(
            cfg.admin.allow.clone(),
            None,
            usize::MAX,
            metrics.admin_connections_open.clone(),
            refused("admin"),
        );
        let admin_token =
            ArcSwap::from_pointee(cfg.admin.token()?.map(|t| *blake3::hash(t.as_bytes()).as_bytes()));
        let tls = match &cfg.server.tls {
            Some(section) => {
                let material = crate::tls::load(section).map_err(ConfigError)?;
                if material.days_left() < 30 {
                    logs::event_with(
                        crate::config::LogLevel::Warn,
                        "the TLS certificate expires soon",
                        serde_json::json!({ "certFile": section.cert_file, "daysLeft": material.days_left() }),
                    );
                }
                Some(Tls::new(material, &metrics))
            }
            None => None,
        };
        Ok(Arc::new(Gateway {
            tls,
            chat_gate,
            admin_gate,
            sources: Sources::new(&cfg.limits),
            admin_token,
            upstream: Upstream::new(&cfg, metrics.clone())?,
            dialect: dialect::from_config(&cfg, shared.clone()),
            guard,
            cfg: ArcSwap::from_pointee(cfg),
            draining: AtomicBool::new(false),
            cache,
            metrics,
            hasher,
            shared,
        }))
    }

    /// Answer one complete request.
    pub async fn answer<R: RequestView + Sync>(self: &Arc<Self>, req: &R, ctx: &mut Ctx) -> Answer {
        let cfg = self.config();
        ctx.correlation = Correlation::of(req, &cfg.correlation);
        let (api, route) = parse::route(req, cfg.limits.max_token_bytes);
        drop(cfg);
        ctx.api = api;
        let peer = req.peer();
        let admitted = self
            .sources
            .admit(peer, matches!(route, Ok(Route::Card(_))))
            .map_err(|refusal| self.source_refused(refusal));
        // The token is taken out before the lookup is awaited: a match that awaited in its
        // arm would keep its scrutinee in every lookup's future, one allocation a request.
        let token = match admitted.and(route) {
            Ok(Route::Card(token)) => token,
            // Boxed: the search future is the larger, and inline it would size every
            // card lookup's future the same way.
            Ok(Route::Search) => return self.settle(Ok(Box::pin(self.search(req, ctx)).await), ctx),
            Err(e) => return self.settle(Err(e), ctx),
        };
        let answer = self.card(ctx, token).await;
        if ctx.unknown_token {
            self.sources.note_unknown(peer);
        }
        self.settle(answer, ctx)
    }

    /// The answer to send, an error's included, with its status noted.
    fn settle(&self, answer: Result<Answer, GatewayError>, ctx: &mut Ctx) -> Answer {
        let answer = answer.unwrap_or_else(|e| self.reject(&e, ctx));
        ctx.status = answer.status;
        answer
    }

    /// Count a source's refusal, as the error it answers.
    fn source_refused(&self, refusal: SourceRefusal) -> GatewayError {
        self.metrics
            .source_refusals
            .with_label_values(&[refusal.label()])
            .inc();
        match refusal {
            SourceRefusal::Rate => GatewayError::RateLimited,
            SourceRefusal::UnknownTokens => GatewayError::TooManyUnknownTokens {
                retry_after: self.config().limits.unknown_tokens_cooldown.as_secs().max(1),
            },
        }
    }

    /// The answer to a request the listener refused (framing, limits, timeouts), in the
    /// error shape of its route when its head was read.
    pub fn refuse<R: RequestView>(&self, head: Option<&R>, e: &GatewayError, ctx: &mut Ctx) -> Answer {
        if let Some(req) = head {
            let cfg = self.config();
            ctx.correlation = Correlation::of(req, &cfg.correlation);
            ctx.api = parse::route(req, cfg.limits.max_token_bytes).0;
        }
        ctx.status = e.status();
        self.reject(e, ctx)
    }

    /// The error answer, in the shape of the request's API (the Search client API's
    /// errors carry `errorMessage` too).
    fn reject(&self, e: &GatewayError, ctx: &mut Ctx) -> Answer {
        ctx.error_code = Some(e.log_code());
        let body = match ctx.api {
            Api::Search => e.search_body(None),
            _ => e.body(),
        };
        error_answer(e, body, ctx.cache.map(CacheResult::header))
    }

    async fn card(self: &Arc<Self>, ctx: &mut Ctx, token: Token) -> Result<Answer, GatewayError> {
        let logged = self.config().log.access;
        let key = self.hasher.cache_key(token.as_bytes());
        if logged {
            ctx.token_fp = Some(self.hasher.fingerprint_of(&key));
        }
        let record = CallRecord::new(std::mem::take(&mut ctx.correlation));
        let (result, how) = self.lookup(key, &token, &record).await;
        ctx.cache = Some(how);
        ctx.upstream = record.get();
        ctx.correlation = record.into_correlation();
        ctx.unknown_token = match &result {
            Ok(stored) => stored.is_negative(),
            Err(e) => e.is_negative(),
        };
        let stored = match result {
            Ok(stored) => stored,
            Err(e) => {
                let answer = self.reject(&e, ctx);
                if let Some(fp) = &ctx.token_fp {
                    let code = account::redacted_code(e.code(), e.status(), token.as_bytes(), fp);
                    ctx.error_code = Some(code);
                }
                return Ok(answer);
            }
        };
        if let Some(fp) = &ctx.token_fp {
            let status = stored.status();
            ctx.error_code = stored
                .error_code()
                .map(|c| account::redacted_code(&c, status, token.as_bytes(), fp));
        }
        if how == CacheResult::Hit && stored.claim_refresh(tokio::time::Instant::now()) {
            self.refresh_ahead(key, token, stored.clone());
        }
        Ok(Answer {
            status: stored.status(),
            body: Body::Stored(stored),
            x_cache: Some(how.header()),
            header: None,
        })
    }

    /// The card of a token: from the cache, or from the internal system (single-flight).
    async fn lookup(&self, key: CacheKey, token: &Token, record: &CallRecord) -> Lookup {
        self.cache
            .get_or_fetch(key, || self.dialect.fetch_card(&self.upstream, token, record))
            .await
    }

    /// One step of the Search client API; errors carry `errorMessage` and `stepId` too.
    async fn search<R: RequestView + Sync>(self: &Arc<Self>, req: &R, ctx: &mut Ctx) -> Answer {
        let mut step_id = None;
        match self.search_step(req, ctx, &mut step_id).await {
            Ok(body) => Answer {
                status: 200,
                body: body.into(),
                x_cache: None,
                header: None,
            },
            Err(e) => {
                ctx.error_code = Some(e.log_code());
                error_answer(&e, e.search_body(step_id.as_deref()), None)
            }
        }
    }

    async fn search_step<R: RequestView + Sync>(
        self: &Arc<Self>,
        http: &R,
        ctx: &mut Ctx,
        step_id: &mut Option<String>,
    ) -> Result<Bytes, GatewayError> {
        let content_type = http.header_str("content-type");
        let max_token = self.config().limits.max_token_bytes;
        let req = parse::search_params(content_type, http.body(), max_token)?;
        step_id.clone_from(&req.step_id);
        let step = if req.step_id.is_some() { "next" } else { "first" };
        let admission = match self.guard.admit(&self.hasher, &req).await {
            Ok(admission) => admission,
            Err(refusal) => {
                self.metrics
                    .search_refusals
                    .with_label_values(&[refusal.label()])
                    .inc();
                ctx.search = Some((step, "refused"));
                return Err(refusal.error());
            }
        };
        let record = CallRecord::new(std::mem::take(&mut ctx.correlation));
        let result = self.dialect.search(&self.upstream, &req, &record).await;
        ctx.upstream = record.get();
        ctx.correlation = record.into_correlation();
        admission.settle(&req, &result);
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
            (Some(token), None) if answer.answer_type == 2 && self.config().search.prewarm => {
                self.prewarm(token, ctx.correlation.clone())
            }
            _ => {}
        }
        Ok(answer.body)
    }

    /// A hot card near the end of its TTL: fetch it again in the background (one call per
    /// token at a time), so that no request ever waits for the CRM for it.
    fn refresh_ahead(self: &Arc<Self>, key: CacheKey, token: Token, existing: crate::cache::Stored) {
        let gw = self.clone();
        tokio::spawn(async move {
            let record = CallRecord::default();
            let fetch = || gw.dialect.fetch_card(&gw.upstream, &token, &record);
            if let Some(result) = gw.cache.refresh(key, existing, fetch).await {
                let outcome = if result.is_ok() { "ok" } else { "error" };
                gw.metrics.refreshes.with_label_values(&[outcome]).inc();
            }
        });
    }

    /// Fetch a token's card in the background so the chat server's next Auth API call is a
    /// hit. Its outcome is logged and counted, never surfaced to the search answer.
    fn prewarm(self: &Arc<Self>, token: String, correlation: Correlation) {
        let gw = self.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let Ok(token) = parse::token(token.as_bytes(), gw.config().limits.max_token_bytes) else {
                gw.metrics.prewarms.with_label_values(&["error"]).inc();
                return;
            };
            let record = CallRecord::new(correlation);
            let key = gw.hasher.cache_key(token.as_bytes());
            let (result, how) = gw.lookup(key, &token, &record).await;
            let fp = gw.hasher.fingerprint_of(&key);
            let (status, code) = match &result {
                Ok(stored) => (stored.status(), stored.error_code()),
                Err(e) => (e.status(), Some(e.code().to_string())),
            };
            let code = code.map(|c| account::redacted_code(&c, status, token.as_bytes(), &fp));
            let outcome = if status == 200 { "ok" } else { "error" };
            gw.metrics.prewarms.with_label_values(&[outcome]).inc();
            if gw.config().log.access {
                let upstream = record.get();
                let correlation = record.into_correlation();
                access::emit(&access::Line {
                    ts: logs::now(),
                    api: "prewarm",
                    method: "-",
                    status,
                    error_code: code.as_deref(),
                    cache: Some(how.label()),
                    step: None,
                    upstream_status: upstream.and_then(|(s, _)| s),
                    upstream: upstream.map(|(_, d)| d),
                    duration: start.elapsed(),
                    token_fp: Some(fp.as_str()),
                    request_id: correlation.request_id.as_deref(),
                    peer: None,
                    tls: None,
                    client_cert: None,
                });
            }
        });
    }
}

fn error_answer(e: &GatewayError, body: Bytes, x_cache: Option<&'static str>) -> Answer {
    Answer {
        status: e.status(),
        body: body.into(),
        x_cache,
        header: e.header(),
    }
}
