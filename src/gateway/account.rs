//! What one request did ([`Ctx`]), from [`Gateway::begin`] to [`Gateway::finish`]: it is
//! in flight meanwhile, and leaves its metrics and its access-log line behind, where
//! anything the CRM said is logged only once the request's token is out of it.

use std::time::{Duration, Instant};

use prometheus::IntGauge;

use super::Gateway;
use crate::cache::CacheResult;
use crate::correlation::Correlation;
use crate::error::loggable_code;
use crate::keys::Fingerprint;
use crate::logs::{self, access};
use crate::parse::Api;

/// What one request did, for its log line and metrics.
pub struct Ctx {
    pub(super) start: Instant,
    pub(super) api: Api,
    pub(super) status: u16,
    pub(super) error_code: Option<String>,
    pub(super) cache: Option<CacheResult>,
    pub(super) token_fp: Option<Fingerprint>,
    pub(super) upstream: Option<(Option<u16>, Duration)>,
    /// Search: the step ("first", "next") and its outcome, once known.
    pub(super) search: Option<(&'static str, &'static str)>,
    pub(super) correlation: Correlation,
    /// The card lookup was answered "client not found".
    pub(super) unknown_token: bool,
    _inflight: Option<InflightGuard>,
}

impl Ctx {
    /// The request id of the request (read from the chat server or made here).
    pub fn request_id(&self) -> Option<&str> {
        self.correlation.request_id.as_deref()
    }
}

/// Counts a request as in flight until its context is dropped, whatever path it took.
struct InflightGuard(IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The CRM's errorCode for the log line of a request for `token`: wherever the CRM echoed
/// the token (as sent, percent-encoded, in another case), its fingerprint `fp` instead;
/// then the code only if it is plain ([`loggable_code`]).
pub(super) fn redacted_code(code: &str, status: u16, token: &[u8], fp: &Fingerprint) -> String {
    fp.redact(code, token)
        .map_or_else(|| format!("CRM_{status}"), |c| loggable_code(&c, status))
}

impl Gateway {
    /// Start accounting for a request that began arriving at `start`: it is in flight
    /// until its [`Ctx`] is dropped.
    pub fn begin(&self, start: Instant) -> Ctx {
        self.metrics.inflight.inc();
        Ctx {
            start,
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

    /// Record the metrics and the access-log line of an answered request; when that was
    /// (the clock is read once for both).
    pub fn finish(&self, method: &str, peer: &access::Peer, ctx: Ctx) -> Instant {
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(ctx.start);
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
            return end;
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
        end
    }
}
