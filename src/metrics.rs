//! Prometheus metrics, in a registry of our own, served on the admin listener.
//!
//! Labels are drawn from small fixed sets (API name, HTTP status, cache result, upstream
//! outcome): never a token, a path or a client id. Every series those sets allow exists,
//! at zero, from the start, so that `rate()` sees the first error after a restart. The
//! process's own metrics (CPU, memory, open files, start time) are exported beside them.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
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
pub const UPSTREAM_OUTCOMES: [&str; 9] = [
    "ok",
    "rejected",
    "error_5xx",
    "timeout",
    "invalid",
    "unavailable",
    "overloaded",
    "tls",
    "circuit_open",
];

/// The `step` and `outcome` label values of search steps.
pub const SEARCH_STEPS: [&str; 2] = ["first", "next"];
pub const SEARCH_OUTCOMES: [&str; 5] = ["answer1", "answer2", "rejected", "refused", "error"];
/// The `reason` label values of guard refusals.
pub const GUARD_REASONS: [&str; 3] = ["secret_word", "attempts", "starts"];
/// The `outcome` label values of prewarms, and `result` of reloads.
pub const PREWARM_OUTCOMES: [&str; 2] = ["ok", "error"];
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// Children of labelled metrics, resolved once at start, so the hot path does not hash
/// label values on every request.
struct Hot {
    requests: Vec<IntCounter>,
    seconds: Vec<Histogram>,
    lookups: Vec<IntCounter>,
    outcomes: Vec<IntCounter>,
}

pub struct Metrics {
    registry: Registry,
    hot: Hot,
    pub inflight: IntGauge,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_max_bytes: IntGauge,
    pub cache_evictions: IntCounter,
    pub upstream_seconds: Histogram,
    pub search_steps: IntCounterVec,
    pub search_refusals: IntCounterVec,
    pub prewarms: IntCounterVec,
    pub refreshes: IntCounterVec,
    pub reloads: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub connections_open: IntGauge,
    pub admin_connections_open: IntGauge,
    pub source_refusals: IntCounterVec,
    pub admin_unauthorized: IntCounter,
    pub tls_client_refused: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub last_reload: Gauge,
    pub last_reload_ok: IntGauge,
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
        let cache_max_bytes = IntGauge::new(
            "cardgate_cache_max_bytes",
            "cache.max_size: the bound of cardgate_cache_weighted_bytes",
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
        let refreshes = IntCounterVec::new(
            Opts::new(
                "cardgate_refresh_ahead_total",
                "Background refreshes of cards requested near the end of their TTL (cache.refresh_ahead)",
            ),
            &["outcome"],
        )
        .expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "cardgate_config_reloads_total",
                "Configuration reloads (SIGHUP) by result",
            ),
            &["result"],
        )
        .expect("metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "cardgate_connections_refused_total",
                "Connections closed at accept, by listener (chat, admin) and reason",
            ),
            &["listener", "reason"],
        )
        .expect("metric");
        let connections_open = IntGauge::new(
            "cardgate_connections_open",
            "Chat-server connections open now (bounded by limits.max_connections)",
        )
        .expect("metric");
        let admin_connections_open =
            IntGauge::new("cardgate_admin_connections_open", "Admin connections open now").expect("metric");
        let source_refusals = IntCounterVec::new(
            Opts::new(
                "cardgate_source_refusals_total",
                "Requests refused for their source address (rate, unknown_tokens), without a CRM call",
            ),
            &["reason"],
        )
        .expect("metric");
        let admin_unauthorized = IntCounter::new(
            "cardgate_admin_unauthorized_total",
            "Admin requests refused for a missing or wrong Authorization",
        )
        .expect("metric");
        let tls_client_refused = IntCounterVec::new(
            Opts::new(
                "cardgate_tls_client_refused_total",
                "TLS handshakes ended for the client certificate, by reason",
            ),
            &["reason"],
        )
        .expect("metric");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "cardgate_tls_reloads_total",
                "Reloads of the TLS certificate, key and client CA, by result",
            ),
            &["result"],
        )
        .expect("metric");
        let last_reload = Gauge::new(
            "cardgate_config_last_reload_timestamp_seconds",
            "When the configuration in force was read (start or last successful reload), Unix time",
        )
        .expect("metric");
        last_reload.set(unix_now());
        let last_reload_ok = IntGauge::new(
            "cardgate_config_last_reload_successful",
            "1 if the last reload succeeded (or none was tried), 0 if it failed",
        )
        .expect("metric");
        last_reload_ok.set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(inflight.clone()),
            Box::new(cache_lookups.clone()),
            Box::new(cache_entries.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(cache_max_bytes.clone()),
            Box::new(cache_evictions.clone()),
            Box::new(upstream_calls.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(search_steps.clone()),
            Box::new(search_refusals.clone()),
            Box::new(prewarms.clone()),
            Box::new(reloads.clone()),
            Box::new(refreshes.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_open.clone()),
            Box::new(admin_connections_open.clone()),
            Box::new(source_refusals.clone()),
            Box::new(admin_unauthorized.clone()),
            Box::new(tls_client_refused.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(last_reload.clone()),
            Box::new(last_reload_ok.clone()),
            Box::new(build),
            Box::new(crate::logs::sink::dropped_counter()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        // Linux only; elsewhere the process metrics are simply absent.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        let statuses = STATUSES.iter().chain([&OTHER_5XX]);
        let hot = Hot {
            requests: APIS
                .iter()
                .flat_map(|a| statuses.clone().map(move |s| (a, s)))
                .map(|(a, s)| requests.with_label_values(&[a, s]))
                .collect(),
            seconds: APIS
                .iter()
                .map(|a| request_seconds.with_label_values(&[a]))
                .collect(),
            lookups: CACHE_RESULTS
                .iter()
                .map(|r| cache_lookups.with_label_values(&[r]))
                .collect(),
            outcomes: UPSTREAM_OUTCOMES
                .iter()
                .map(|o| upstream_calls.with_label_values(&[o]))
                .collect(),
        };
        for step in SEARCH_STEPS {
            for outcome in SEARCH_OUTCOMES {
                search_steps.with_label_values(&[step, outcome]);
            }
        }
        for (vec, values) in [
            (&search_refusals, &GUARD_REASONS[..]),
            (&prewarms, &PREWARM_OUTCOMES[..]),
            (&refreshes, &PREWARM_OUTCOMES[..]),
            (&reloads, &RELOAD_RESULTS[..]),
            (&source_refusals, &crate::edge::sources::REFUSALS[..]),
            (&tls_client_refused, &crate::tls::CLIENT_REFUSALS[..]),
            (&tls_reloads, &RELOAD_RESULTS[..]),
        ] {
            for v in values {
                vec.with_label_values(&[v]);
            }
        }
        for listener in crate::edge::LISTENERS {
            for reason in crate::edge::REFUSALS {
                connections_refused.with_label_values(&[listener, reason]);
            }
        }
        Metrics {
            hot,
            registry,
            inflight,
            cache_entries,
            cache_bytes,
            cache_max_bytes,
            cache_evictions,
            upstream_seconds,
            search_steps,
            search_refusals,
            prewarms,
            refreshes,
            reloads,
            connections_refused,
            connections_open,
            admin_connections_open,
            source_refusals,
            admin_unauthorized,
            tls_client_refused,
            tls_reloads,
            last_reload,
            last_reload_ok,
        }
    }

    /// Register a collector of another module (the CRM side's per-node series).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        self.registry.register(c).expect("unique metric names");
    }

    /// Count a reload and its result.
    pub fn observe_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.with_label_values(&[result]).inc();
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            self.last_reload.set(unix_now());
        }
    }

    /// Count one answered request and its duration. `api` is one of [`APIS`].
    pub fn observe_request(&self, api: &'static str, status: u16, seconds: f64) {
        let a = APIS.iter().position(|x| *x == api).unwrap_or(APIS.len() - 1);
        let (s, _) = status_slot(status);
        if let Some(c) = self.hot.requests.get(a * (STATUSES.len() + 1) + s) {
            c.inc();
        }
        if let Some(h) = self.hot.seconds.get(a) {
            h.observe(seconds);
        }
    }

    /// Count one cache lookup; `result` is one of [`CACHE_RESULTS`].
    pub fn count_lookup(&self, result: &'static str) {
        let r = CACHE_RESULTS.iter().position(|x| *x == result).unwrap_or(0);
        if let Some(c) = self.hot.lookups.get(r) {
            c.inc();
        }
    }

    /// Count one upstream call and its duration; `outcome` is one of [`UPSTREAM_OUTCOMES`].
    pub fn observe_upstream(&self, outcome: &'static str, seconds: f64) {
        let o = UPSTREAM_OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(0);
        if let Some(c) = self.hot.outcomes.get(o) {
            c.inc();
        }
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

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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
        assert!(
            text.contains("cardgate_requests_total{api=\"other\",status=\"404\"} 0"),
            "every series from the start"
        );
        assert!(text.contains("cardgate_search_requests_total{outcome=\"refused\",step=\"next\"} 0"));
        assert!(text.contains("cardgate_config_reloads_total{result=\"error\"} 0"));
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
