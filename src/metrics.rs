//! Prometheus metrics, in a registry of our own, served on the admin listener.
//!
//! Labels are drawn from small fixed sets (API name, HTTP status, cache result, upstream
//! outcome): never a token, a path or a client id.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `api` label values.
pub const APIS: [&str; 3] = ["auth", "search", "other"];
/// The `status` label values: the statuses the gateway answers, then classes for the rest.
const STATUSES: [&str; 20] = [
    "200", "400", "401", "403", "404", "405", "410", "413", "414", "422", "429", "431", "499", "500", "501",
    "502", "503", "504", "2xx", "4xx",
];
const OTHER_5XX: &str = "5xx";
/// The `result` label values of cache lookups.
pub const CACHE_RESULTS: [&str; 5] = ["hit", "negative_hit", "miss", "stale", "coalesced"];

/// The `outcome` label values of upstream calls.
pub const UPSTREAM_OUTCOMES: [&str; 7] = [
    "ok",
    "rejected",
    "error_5xx",
    "timeout",
    "invalid",
    "unavailable",
    "overloaded",
];

/// Children of labelled metrics resolved once, on first use, so the hot path does not
/// hash label values on every request (and no series appears before it is used).
struct Hot {
    requests: Vec<OnceLock<IntCounter>>,
    seconds: Vec<OnceLock<Histogram>>,
    lookups: Vec<OnceLock<IntCounter>>,
    outcomes: Vec<OnceLock<IntCounter>>,
}

pub struct Metrics {
    registry: Registry,
    hot: Hot,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub inflight: IntGauge,
    pub cache_lookups: IntCounterVec,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_evictions: IntCounter,
    pub upstream_calls: IntCounterVec,
    pub upstream_seconds: Histogram,
    pub search_steps: IntCounterVec,
    pub search_refusals: IntCounterVec,
    pub prewarms: IntCounterVec,
}

impl Metrics {
    pub fn new(dialect: &str) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cardgate_requests_total",
                "Chat-server requests by API and HTTP status",
            ),
            &["api", "status"],
        )
        .expect("metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "cardgate_request_duration_seconds",
                "Time to answer a chat-server request",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api"],
        )
        .expect("metric");
        let inflight = IntGauge::new(
            "cardgate_inflight_requests",
            "Chat-server requests being answered",
        )
        .expect("metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new("cardgate_cache_lookups_total", "Card lookups by result"),
            &["result"],
        )
        .expect("metric");
        let cache_entries =
            IntGauge::new("cardgate_cache_entries", "Entries in the card cache").expect("metric");
        let cache_bytes = IntGauge::new(
            "cardgate_cache_weighted_bytes",
            "Bytes counted against cache.max_size (answers plus per-entry overhead)",
        )
        .expect("metric");
        let cache_evictions = IntCounter::new(
            "cardgate_cache_evictions_total",
            "Entries evicted to stay within cache.max_size",
        )
        .expect("metric");
        let upstream_calls = IntCounterVec::new(
            Opts::new(
                "cardgate_upstream_requests_total",
                "Calls to the internal system by outcome",
            ),
            &["outcome"],
        )
        .expect("metric");
        let upstream_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cardgate_upstream_duration_seconds",
                "Time of one call to the internal system",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        let build = IntGaugeVec::new(
            Opts::new("cardgate_build_info", "Version and dialect of this gateway"),
            &["version", "dialect"],
        )
        .expect("metric");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), dialect])
            .set(1);
        let search_steps = IntCounterVec::new(
            Opts::new(
                "cardgate_search_requests_total",
                "Search steps by step (first, next) and outcome (answer1, answer2, rejected, refused, error)",
            ),
            &["step", "outcome"],
        )
        .expect("metric");
        let search_refusals = IntCounterVec::new(
            Opts::new(
                "cardgate_search_guard_refusals_total",
                "Search steps refused by the brute-force guard without asking the CRM",
            ),
            &["reason"],
        )
        .expect("metric");
        let prewarms = IntCounterVec::new(
            Opts::new(
                "cardgate_prewarm_total",
                "Background card fetches for tokens a search ended with",
            ),
            &["outcome"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(inflight.clone()),
            Box::new(cache_lookups.clone()),
            Box::new(cache_entries.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(cache_evictions.clone()),
            Box::new(upstream_calls.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(search_steps.clone()),
            Box::new(search_refusals.clone()),
            Box::new(prewarms.clone()),
            Box::new(build),
            Box::new(crate::accesslog::dropped_counter()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            hot: Hot {
                requests: slots(APIS.len() * (STATUSES.len() + 1)),
                seconds: slots(APIS.len()),
                lookups: slots(CACHE_RESULTS.len()),
                outcomes: slots(UPSTREAM_OUTCOMES.len()),
            },
            registry,
            requests,
            request_seconds,
            inflight,
            cache_lookups,
            cache_entries,
            cache_bytes,
            cache_evictions,
            upstream_calls,
            upstream_seconds,
            search_steps,
            search_refusals,
            prewarms,
        }
    }

    /// Count one answered request and its duration. `api` is one of [`APIS`].
    pub fn observe_request(&self, api: &'static str, status: u16, seconds: f64) {
        let a = APIS.iter().position(|x| *x == api).unwrap_or(APIS.len() - 1);
        let (s, label) = status_slot(status);
        self.hot.requests[a * (STATUSES.len() + 1) + s]
            .get_or_init(|| self.requests.with_label_values(&[APIS[a], label]))
            .inc();
        self.hot.seconds[a]
            .get_or_init(|| self.request_seconds.with_label_values(&[APIS[a]]))
            .observe(seconds);
    }

    /// Count one cache lookup; `result` is one of [`CACHE_RESULTS`].
    pub fn count_lookup(&self, result: &'static str) {
        let r = CACHE_RESULTS.iter().position(|x| *x == result).unwrap_or(0);
        self.hot.lookups[r]
            .get_or_init(|| self.cache_lookups.with_label_values(&[CACHE_RESULTS[r]]))
            .inc();
    }

    /// Count one upstream call and its duration; `outcome` is one of [`UPSTREAM_OUTCOMES`].
    pub fn observe_upstream(&self, outcome: &'static str, seconds: f64) {
        let o = UPSTREAM_OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(0);
        self.hot.outcomes[o]
            .get_or_init(|| self.upstream_calls.with_label_values(&[UPSTREAM_OUTCOMES[o]]))
            .inc();
        self.upstream_seconds.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec does not fail");
        out
    }
}

fn slots<T>(n: usize) -> Vec<OnceLock<T>> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// The slot and label of an HTTP status.
fn status_slot(status: u16) -> (usize, &'static str) {
    if (100..=999).contains(&status) {
        let digits = [
            b'0' + (status / 100) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
        ];
        if let Some(i) = STATUSES.iter().position(|s| s.as_bytes() == digits) {
            return (i, STATUSES[i]);
        }
    }
    match status {
        200..=299 => (18, STATUSES[18]),
        400..=499 => (19, STATUSES[19]),
        _ => (STATUSES.len(), OTHER_5XX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_fixed_labels() {
        assert_eq!(status_slot(200), (0, "200"));
        assert_eq!(status_slot(504).1, "504");
        assert_eq!(status_slot(204).1, "2xx");
        assert_eq!(status_slot(418).1, "4xx");
        assert_eq!(status_slot(599).1, "5xx");
        assert_eq!(status_slot(42).1, "5xx");
    }

    #[test]
    fn hot_children_are_the_labelled_series() {
        let m = Metrics::new("iq");
        m.observe_request("auth", 200, 0.001);
        m.observe_request("auth", 200, 0.001);
        m.observe_request("search", 429, 0.001);
        m.count_lookup("stale");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("cardgate_requests_total{api=\"auth\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("cardgate_requests_total{api=\"search\",status=\"429\"} 1"));
        assert!(text.contains("cardgate_cache_lookups_total{result=\"stale\"} 1"));
        assert!(!text.contains("status=\"404\""), "no series before use");
    }
}
