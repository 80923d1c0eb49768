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
//! built for that session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use prometheus::IntGauge;

use crate::cache::{CacheResult, CardCache, Lookup};
use crate::config::{Config, ConfigError};
use crate::correlation::Correlation;
use crate::dialect::{self, Dialect};
use crate::edge::sources::{Refusal as SourceRefusal, Sources};
use crate::edge::Gate;
use crate::error::{loggable_code, GatewayError};
use crate::guard::SearchGuard;
use crate::h1::server::RequestView;
use crate::keys::{CacheKey, Fingerprint, TokenHasher};
use crate::logs::{self, access};
use crate::metrics::Metrics;
use crate::parse::{self, Api, Route, Token};
use crate::respond::{Answer, Body};
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
    metrics: Arc<Metrics>,
    hasher: TokenHasher,
    guard: SearchGuard,
    /// Accept-time filters of the two listeners.
    chat_gate: Arc<Gate>,
    admin_gate: Arc<Gate>,
    /// What one source address may ask.
    sources: Sources,
    /// The admin secret's hash, when `admin.token_env` is set.
    admin_token: ArcSwap<Option<[u8; 32]>>,
    /// The TLS listener's live certificate and client CA, when `[server.tls]` is set.
    tls: Option<Arc<Tls>>,
}

/// What an admin purge did.
pub struct Purge {
    /// The token's keyed fingerprint, for the admin's log line.
    pub token_fp: Fingerprint,
    /// A card was cached for the token and is gone.
    pub purged: bool,
    /// Whether the dialect ended a session behind the token (gigma), or why it could not.
    pub session_ended: Result<bool, GatewayError>,
}

/// What one request did, for its log line and metrics.
pub struct Ctx {
    start: Instant,
    api: Api,
    status: u16,
    error_code: Option<String>,
    cache: Option<CacheResult>,
    token_fp: Option<Fingerprint>,
    upstream: Option<(Option<u16>, Duration)>,
    /// Search: the step ("first", "next") and its outcome, once known.
    search: Option<(&'static str, &'static str)>,
    correlation: Correlation,
    /// The card lookup was answered "client not found".
    unknown_token: bool,
    _inflight: Option<InflightGuard>,
}

impl Ctx {
    /// The request id of the request (read from the chat server or made here).
    pub fn request_id(&self) -> Option<&str> {
        self.correlation.request_id.as_deref()
    }
}

/// What a reload changed.
#[derive(Debug)]
pub struct Reloaded {
    /// Sections whose values changed in place.
    pub changed: Vec<&'static str>,
    /// Keys the new file changes that only a restart can change: left as they were.
    pub need_restart: Vec<&'static str>,
}

/// Counts a request as in flight until its context is dropped, whatever path it took.
struct InflightGuard(IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Gateway {
    /// Build the shared state from a validated config (this resolves the upstream host).
    pub fn new(cfg: Config) -> Result<Arc<Self>, ConfigError> {
        let metrics = Arc::new(Metrics::new(cfg.upstream.dialect.name()));
        let evictions = metrics.cache_evictions.clone();
        metrics
            .cache_max_bytes
            .set(i64::try_from(cfg.cache.max_size).unwrap_or(i64::MAX));
        let cache = CardCache::new(&cfg.cache, move || evictions.inc());
        let hasher = match &cfg.cache.hash_key_env {
            Some(var) => TokenHasher::from_secret(
                std::env::var(var)
                    .map_err(|_| ConfigError(format!("cache.hash_key_env: {var} is not set")))?
                    .as_bytes(),
            ),
            None => TokenHasher::random(),
        };
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
                if material.days_left < 30 {
                    logs::event_with(
                        crate::config::LogLevel::Warn,
                        "the TLS certificate expires soon",
                        serde_json::json!({ "certFile": section.cert_file, "daysLeft": material.days_left }),
                    );
                }
                Some(Tls::new(material, metrics.tls_client_refused.clone()))
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
            dialect: dialect::from_config(&cfg),
            guard: SearchGuard::new(&cfg.search),
            cfg: ArcSwap::from_pointee(cfg),
            draining: AtomicBool::new(false),
            cache,
            metrics,
            hasher,
        }))
    }

    /// The configuration in force now.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.cfg.load()
    }

    /// Put a newly read configuration in force: what can change in place changes for
    /// the next request; keys that need a restart keep their running values. `Err`: the
    /// new settings cannot be applied (a log file that does not open); nothing changed.
    pub fn reload(&self, mut next: Config) -> Result<Reloaded, String> {
        let running = self.cfg.load_full();
        let need_restart = next.keep_restart_only(&running);
        let changed = next.changed_sections(&running);
        let admin_token = next.admin.token().map_err(|e| e.to_string())?;
        logs::apply(&next.log, Some(&running.log))?;
        self.admin_token.store(Arc::new(
            admin_token.map(|t| *blake3::hash(t.as_bytes()).as_bytes()),
        ));
        self.chat_gate.apply(
            next.server.allow.clone(),
            next.server.proxy_from.clone(),
            next.limits.max_connections,
        );
        self.admin_gate
            .apply(next.admin.allow.clone(), Vec::new(), usize::MAX);
        self.sources.apply(&next.limits);
        // A bad TLS file is reported on its own and keeps the old certificate; the rest
        // of the reload stands.
        let _ = self.reload_tls(next.server.tls.as_ref(), "SIGHUP");
        self.cache.apply(&next.cache);
        self.guard.apply(&next.search);
        self.upstream.apply(&next);
        self.cfg.store(Arc::new(next));
        Ok(Reloaded {
            changed,
            need_restart,
        })
    }

    /// The TLS listener's state, when there is one.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// Read the TLS files again; a bad file keeps the old material. Counted and logged
    /// either way; `Ok(false)`: there is no TLS listener.
    pub fn reload_tls(
        &self,
        section: Option<&crate::config::TlsSection>,
        trigger: &str,
    ) -> Result<bool, String> {
        let (Some(tls), Some(section)) = (&self.tls, section) else {
            return Ok(false);
        };
        let result = crate::tls::load(section).and_then(|m| {
            let days = m.days_left;
            tls.apply(m).map(|()| days)
        });
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.tls_reloads.with_label_values(&[label]).inc();
        match result {
            Ok(days) => {
                logs::event_with(
                    crate::config::LogLevel::Info,
                    "TLS certificate reloaded",
                    serde_json::json!({ "trigger": trigger, "daysLeft": days }),
                );
                Ok(true)
            }
            Err(why) => {
                logs::event_with(
                    crate::config::LogLevel::Error,
                    "TLS certificate not reloaded: the old one stays in use",
                    serde_json::json!({ "trigger": trigger, "error": why }),
                );
                Err(why)
            }
        }
    }

    /// The chat-server listener's accept-time filter.
    pub fn chat_gate(&self) -> Arc<Gate> {
        self.chat_gate.clone()
    }

    /// The admin listener's accept-time filter.
    pub fn admin_gate(&self) -> Arc<Gate> {
        self.admin_gate.clone()
    }

    /// Whether an admin request may go on: no secret is configured, or `authorization`
    /// is `Bearer <secret>` (compared in constant time, as hashes, so neither the
    /// secret's bytes nor its length leak through timing).
    pub fn admin_authorized(&self, authorization: Option<&[u8]>) -> bool {
        let expected = self.admin_token.load();
        let Some(expected) = expected.as_ref() else {
            return true;
        };
        let given = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .map(|t| *blake3::hash(t).as_bytes())
            .unwrap_or([0; 32]);
        let ok = bool::from(subtle::ConstantTimeEq::ct_eq(&given[..], &expected[..]));
        if !ok {
            self.metrics.admin_unauthorized.inc();
        }
        ok && authorization.is_some()
    }

    /// Count a reload attempt.
    pub fn observe_reload(&self, ok: bool) {
        self.metrics.observe_reload(ok);
    }

    /// From now on readiness is 503 and every answer closes its connection.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The gauge of requests in flight (draining waits for it to reach 0).
    pub fn inflight(&self) -> IntGauge {
        self.metrics.inflight.clone()
    }

    /// The Prometheus text of every metric, the cache gauges brought up to date.
    pub async fn metrics_text(&self) -> Vec<u8> {
        let (entries, bytes) = self.cache.usage().await;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.cache_entries.set(gauge(entries));
        self.metrics.cache_bytes.set(gauge(bytes));
        self.metrics.render()
    }

    /// Drop the card of a token, and end the session behind it where the dialect has
    /// sessions. `Err`: the token is not one the chat server could have sent.
    pub async fn purge(&self, raw_token: &[u8]) -> Result<Purge, GatewayError> {
        let token = parse::token(raw_token, self.config().limits.max_token_bytes)?;
        let purged = self.cache.purge(&self.hasher.cache_key(token.as_bytes())).await;
        let session_ended = self
            .dialect
            .end_session(&self.upstream, &token, &CallRecord::default())
            .await;
        Ok(Purge {
            token_fp: self.hasher.fingerprint(token.as_bytes()),
            purged,
            session_ended,
        })
    }

    /// Drop every cached card; how many there were.
    pub async fn clear(&self) -> u64 {
        self.cache.clear().await
    }

    /// Start accounting for a request: it is in flight until its [`Ctx`] is dropped.
    pub fn begin(&self) -> Ctx {
        self.metrics.inflight.inc();
        Ctx {
            start: Instant::now(),
            api: Api::Other,
            status: 0,
            error_code: None,
            cache: None,
            token_fp: None,
            upstream: None,
            search: None,
            correlation: Correlation::default(),
            unknown_token: false,
            _inflight: Some(InflightGuard(self.metrics.inflight.clone())),
        }
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
        let answer = match (admitted, route) {
            (Err(e), _) => Err(e),
            (Ok(()), Ok(Route::Card(token))) => {
                let answer = self.card(ctx, token).await;
                if ctx.unknown_token {
                    self.sources.note_unknown(peer);
                }
                answer
            }
            (Ok(()), Ok(Route::Search)) => Ok(self.search(req, ctx).await),
            (Ok(()), Err(e)) => Err(e),
        };
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
        let stored = result?;
        if how == CacheResult::Hit && stored.refresh_due(Instant::now()) {
            self.refresh_ahead(key, token, stored.clone());
        }
        if logged {
            ctx.error_code = stored.error_code().map(|c| loggable_code(&c, stored.status()));
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
            let (status, code) = match &result {
                Ok(stored) => (
                    stored.status(),
                    stored.error_code().map(|c| loggable_code(&c, stored.status())),
                ),
                Err(e) => (e.status(), Some(e.log_code())),
            };
            let outcome = if status == 200 { "ok" } else { "error" };
            gw.metrics.prewarms.with_label_values(&[outcome]).inc();
            if gw.config().log.access {
                let upstream = record.get();
                let fp = gw.hasher.fingerprint_of(&key);
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

impl Gateway {
    /// Record the metrics and the access-log line of an answered request.
    pub fn finish(&self, method: &str, peer: &access::Peer, ctx: Ctx) {
        let elapsed = ctx.start.elapsed();
        let api = ctx.api.label();
        let status = if ctx.status == 0 { 499 } else { ctx.status };
        self.metrics.observe_request(api, status, elapsed.as_secs_f64());
        if let Some(how) = ctx.cache {
            self.metrics.count_lookup(how.label());
        }
        if let Some((step, outcome)) = ctx.search {
            self.metrics
                .search_steps
                .with_label_values(&[step, outcome])
                .inc();
        }
        if !self.config().log.access {
            return;
        }
        access::emit(&access::Line {
            ts: logs::now(),
            api,
            method,
            status,
            error_code: ctx.error_code.as_deref(),
            cache: ctx.cache.map(CacheResult::label),
            step: ctx.search.map(|(step, _)| step),
            upstream_status: ctx.upstream.and_then(|(s, _)| s),
            upstream: ctx.upstream.map(|(_, d)| d),
            duration: elapsed,
            token_fp: ctx.token_fp.as_ref().map(Fingerprint::as_str),
            request_id: ctx.request_id(),
            peer: peer.as_str(),
            tls: peer.tls,
            client_cert: peer.client_cert.as_deref(),
        });
    }
}
