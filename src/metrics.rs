//! Prometheus metrics, in a registry of our own, served on the admin listener.
//!
//! Labels are drawn from small fixed sets (API name, HTTP status, cache result, upstream
//! outcome): never a token, a path or a client id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
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
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec does not fail");
        out
    }
}
