//! Talk to the internal system: its nodes, HTTP/1.1 over pooled keep-alive connections.
//!
//! Each configured URL resolves to one or more [`node`]s ([`health`] re-resolves them and
//! checks their health off the request path); [`nodes`] picks the one for each attempt.
//! Plain-TCP connections are made by [`plain`] within `upstream.connect_timeout`; TLS ones
//! by [`tls`] (rustls: CA, client certificate, versions and suites of `[upstream]`) over
//! TCP from [`plain`], within twice that; idle ones wait in each node's [`pool`]. A call is
//! bounded by `upstream.timeout` as a whole: at most `upstream.max_inflight` run at once; a
//! failed idempotent call goes to another node (`upstream.retries`); a card lookup still
//! unanswered after `upstream.hedge_after` is also sent to a second node, and the first
//! valid answer wins. This module turns
//! transport failures into the `CRM_*` errors ([`failure`]); [`crate::normalise`] judges
//! the answers that did arrive.

// Input from the chat server or the CRM reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

mod check;
mod exchange;
mod failure;
mod health;
mod node;
mod nodes;
mod plain;
mod pool;
mod record;
mod resolve;
mod stats;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::config::{Config, ConfigError, LogLevel};
use crate::error::GatewayError;
use crate::logs;
use crate::metrics::Metrics;
use failure::Failure;
use node::{Ejection, Node, Target};
use nodes::{Nodes, Tried};

pub use health::Watch;
pub use record::CallRecord;
pub use resolve::at_start as resolve_at_start;

/// The `User-Agent` of the calls that send one (health checks, the bearer token check).
pub const USER_AGENT: &str = concat!("cardgate/", env!("CARGO_PKG_VERSION"));

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

pub struct Upstream {
    connector: Arc<tls::Connector>,
    nodes: Arc<Nodes>,
    watch: Arc<Watch>,
    stats: Arc<stats::Stats>,
    /// One permit per call under way (`upstream.max_inflight`).
    slots: tokio::sync::Semaphore,
    /// The limits a reload changes in place.
    limits: ArcSwap<Limits>,
    metrics: Arc<Metrics>,
}

/// `upstream.timeout`, `queue_timeout`, `max_response_bytes`, `retries`, `hedge_after`,
/// the ejection settings, and the request id's header name.
#[derive(Debug, Clone)]
struct Limits {
    timeout: Duration,
    queue_timeout: Duration,
    max_body: usize,
    request_id_header: String,
    retries: u32,
    hedge_after: Option<Duration>,
    ejection: Ejection,
}

impl Limits {
    fn of(cfg: &Config) -> Self {
        Limits {
            timeout: cfg.upstream.timeout,
            queue_timeout: cfg.upstream.queue_timeout,
            max_body: usize::try_from(cfg.upstream.max_response_bytes).unwrap_or(usize::MAX),
            request_id_header: cfg.correlation.request_id_header.clone(),
            retries: cfg.upstream.retries,
            hedge_after: cfg.upstream.hedge_after,
            ejection: Ejection::of(cfg),
        }
    }
}

impl Upstream {
    /// Resolve every configured URL (blocking: this runs before anything serves) and
    /// build the nodes; a name that does not resolve yet is warned about, and has its
    /// nodes once it does.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let connector = Arc::new(connector(&cfg.upstream)?);
        let targets: Vec<Arc<Target>> = cfg
            .upstream_urls()?
            .into_iter()
            .enumerate()
            .map(|(i, url)| Arc::new(Target::new(i, url)))
            .collect();
        let urls: Vec<_> = targets.iter().map(|t| t.url.clone()).collect();
        let (seed, unresolved) = resolve::at_start(&urls);
        for u in &unresolved {
            logs::event_with(
                LogLevel::Warn,
                "cannot resolve a CRM host at startup: no node for it until it resolves",
                serde_json::json!({
                    "host": u.host,
                    "error": u.error,
                    "resolveInterval": humantime::format_duration(cfg.upstream.resolve_interval).to_string(),
                }),
            );
        }
        let stats = Arc::new(stats::Stats::new(&metrics));
        let lookup = Box::new(resolve::System);
        // The startup resolution's nodes take the first requests.
        let watch = Watch::new(cfg, &targets, seed, lookup, stats.clone(), connector.clone());
        let watch = Arc::new(watch);
        let nodes = watch.nodes.clone();
        Ok(Upstream {
            connector,
            nodes,
            watch,
            stats,
            slots: tokio::sync::Semaphore::new(cfg.upstream.max_inflight),
            limits: ArcSwap::from_pointee(Limits::of(cfg)),
            metrics,
        })
    }

    /// The background service that re-resolves and checks the nodes.
    pub fn watch(&self) -> Arc<Watch> {
        self.watch.clone()
    }

    /// New timeouts, limits and ejection settings for the calls made from now on.
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
        // Owned, not a guard: one held across the call would, with many calls under way,
        // use up arc-swap's fast slots and slow every other load on the thread.
        let limits = self.limits.load_full();
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
        // (A timeout too large for the clock cannot be configured.)
        let deadline = start.checked_add(limits.timeout).unwrap_or(start);
        let result = self.dispatch(req, record, &limits, deadline).await;
        let elapsed = start.elapsed();
        let outcome = match &result {
            Ok(a) if a.status < 400 => "ok",
            Ok(a) if a.status < 500 => "rejected",
            Ok(_) => "error_5xx",
            Err(f) => f.outcome,
        };
        self.metrics.observe_upstream(outcome, elapsed.as_secs_f64());
        record.record(result.as_ref().ok().map(|a| a.status), elapsed);
        result.map_err(|f| f.error)
    }

    /// Attempts on one node after another until one answers, the retries are used up,
    /// or no node may be asked.
    async fn dispatch(
        &self,
        req: &UpstreamRequest,
        record: &CallRecord,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<UpstreamAnswer, Failure> {
        let mut tried = Tried::default();
        let mut retries = if req.idempotent { limits.retries } else { 0 };
        let mut last = None;
        loop {
            // A probe only where a failure can still be retried on another node.
            let Some(node) = self.nodes.pick(&tried, retries > 0) else {
                return last.unwrap_or_else(|| {
                    // No node is up: answer now, and have the nodes probed.
                    self.watch.circuit_open.notify_one();
                    Err(Failure::circuit_open())
                });
            };
            let first = tried.is_empty();
            if !first {
                self.stats.retries.inc();
            }
            tried.push(node.id);
            let result = match limits.hedge_after {
                Some(after) if first && req.idempotent => {
                    Box::pin(self.hedged(&node, after, &mut tried, req, record, limits, deadline)).await
                }
                _ => self.attempt(&node, req, record, limits, deadline, first).await,
            };
            let again = match &result {
                Ok(a) => a.status >= 500,
                Err(f) => f.retry,
            };
            if !again || retries == 0 || Instant::now() >= deadline {
                return result;
            }
            retries = retries.saturating_sub(1);
            last = Some(result);
        }
    }

    /// One attempt on one node, within the call's deadline (`first`: the call's first
    /// attempt, which has all of it).
    async fn attempt(
        &self,
        node: &Node,
        req: &UpstreamRequest,
        record: &CallRecord,
        limits: &Limits,
        deadline: Instant,
        first: bool,
    ) -> Result<UpstreamAnswer, Failure> {
        let busy = node.busy();
        // A retry or hedge that times out in what an earlier attempt left of the budget
        // says little about its node: only an attempt with half the budget or more counts
        // towards ejection.
        let fair = first
            || deadline
                .saturating_duration_since(Instant::now())
                .saturating_mul(2)
                >= limits.timeout;
        let deadline = tokio::time::Instant::from_std(deadline);
        let wire = node.wire(req, &record.correlation, &limits.request_id_header);
        // Boxed: inline, the exchange would make the dialect's call future (boxed by
        // `async_trait`, one allocation a call) 1.4 KiB, past glibc's per-thread cache
        // sizes (1 KiB); as two allocations both stay within them.
        let exchange = Box::pin(node.exchange(&self.connector, &wire, req.idempotent, limits.max_body));
        let result = tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or_else(|_| Err(Failure::timeout().counted(fair)));
        node.report(&busy, &result, limits.ejection, &self.stats);
        result
    }

    /// The first attempt of a card lookup, and after `after` a second one on another node
    /// (if one is up and a `max_inflight` slot is free): the first valid answer wins.
    #[allow(clippy::too_many_arguments)]
    async fn hedged(
        &self,
        node: &Node,
        after: Duration,
        tried: &mut Tried,
        req: &UpstreamRequest,
        record: &CallRecord,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<UpstreamAnswer, Failure> {
        let mut first = std::pin::pin!(self.attempt(node, req, record, limits, deadline, true));
        tokio::select! {
            r = &mut first => return r,
            () = tokio::time::sleep(after) => {}
        }
        let Some(second) = self.nodes.pick(tried, true) else {
            return first.await;
        };
        let Ok(_slot) = self.slots.try_acquire() else {
            return first.await;
        };
        tried.push(second.id);
        self.stats.hedges_sent.inc();
        let mut hedge = std::pin::pin!(self.attempt(&second, req, record, limits, deadline, false));
        let valid = |r: &Result<UpstreamAnswer, Failure>| matches!(r, Ok(a) if a.status < 500);
        tokio::select! {
            r = &mut first => {
                if valid(&r) {
                    return r;
                }
                let h = hedge.await;
                if valid(&h) {
                    self.stats.hedges_won.inc();
                    return h;
                }
                r
            }
            h = &mut hedge => {
                if valid(&h) {
                    self.stats.hedges_won.inc();
                    return h;
                }
                let r = first.await;
                if valid(&r) { r } else { h }
            }
        }
    }
}

/// The CRM-side TLS must be usable as configured: a PEM that cannot be read or parsed, a
/// key that does not match its certificate, an expired certificate, an unknown cipher suite
/// is an error naming the key, at `cardgate check` and at startup (never a silent fallback
/// to a connection without a client certificate).
pub fn check_tls(cfg: &crate::config::UpstreamSection) -> Result<(), ConfigError> {
    connector(cfg).map(|_| ())
}

fn connector(cfg: &crate::config::UpstreamSection) -> Result<tls::Connector, ConfigError> {
    let https = cfg.parsed_urls()?.iter().any(|u| u.tls);
    tls::Connector::new(cfg, https)
}
