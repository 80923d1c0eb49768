//! The CRM side's own metrics: per node (up, requests, failures), hedges, retries,
//! ejections and re-resolutions. A node's series go when the node goes, so the `node`
//! label stays bounded by the configured URLs and the addresses they resolve to.

// Built once from constant names and help texts: registering cannot fail.
#![allow(clippy::expect_used)]

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::metrics::Metrics;

pub struct Stats {
    node_up: IntGaugeVec,
    node_requests: IntCounterVec,
    node_failures: IntCounterVec,
    pub hedges_sent: IntCounter,
    pub hedges_won: IntCounter,
    pub retries: IntCounter,
    pub ejections: IntCounter,
    pub resolves: IntCounterVec,
}

impl Stats {
    /// The series, registered with `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let node = |name: &str, help: &str| Opts::new(name, help);
        let node_up = IntGaugeVec::new(
            node(
                "cardgate_upstream_node_up",
                "1 while a CRM node takes traffic (healthy, not ejected)",
            ),
            &["node"],
        )
        .expect("metric");
        let node_requests = IntCounterVec::new(
            node(
                "cardgate_upstream_node_requests_total",
                "Calls sent to a CRM node",
            ),
            &["node"],
        )
        .expect("metric");
        let node_failures = IntCounterVec::new(
            node(
                "cardgate_upstream_node_failures_total",
                "Calls to a CRM node that failed (transport, timeout, invalid answer or 5xx)",
            ),
            &["node"],
        )
        .expect("metric");
        let hedges = IntCounterVec::new(
            Opts::new(
                "cardgate_upstream_hedges_total",
                "Card lookups also sent to a second node after upstream.hedge_after (sent), and those the second answered first (won)",
            ),
            &["result"],
        )
        .expect("metric");
        let retries = IntCounter::new(
            "cardgate_upstream_retries_total",
            "Calls sent again to another node after a failure",
        )
        .expect("metric");
        let ejections = IntCounter::new(
            "cardgate_upstream_ejections_total",
            "CRM nodes taken out after consecutive failures",
        )
        .expect("metric");
        let resolves = IntCounterVec::new(
            Opts::new(
                "cardgate_upstream_resolves_total",
                "Resolutions of the CRM's host names, by result",
            ),
            &["result"],
        )
        .expect("metric");
        for r in ["ok", "error"] {
            resolves.with_label_values(&[r]);
        }
        for c in [
            Box::new(node_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(node_requests.clone()),
            Box::new(node_failures.clone()),
            Box::new(hedges.clone()),
            Box::new(retries.clone()),
            Box::new(ejections.clone()),
            Box::new(resolves.clone()),
        ] {
            metrics.register(c);
        }
        Stats {
            hedges_sent: hedges.with_label_values(&["sent"]),
            hedges_won: hedges.with_label_values(&["won"]),
            node_up,
            node_requests,
            node_failures,
            retries,
            ejections,
            resolves,
        }
    }

    /// A node's up gauge, request and failure counters.
    pub fn node_series(&self, label: &str) -> (IntGauge, IntCounter, IntCounter) {
        (
            self.node_up.with_label_values(&[label]),
            self.node_requests.with_label_values(&[label]),
            self.node_failures.with_label_values(&[label]),
        )
    }

    /// A node left (its address is no longer resolved): its series go.
    pub fn forget(&self, label: &str) {
        let _ = self.node_up.remove_label_values(&[label]);
        let _ = self.node_requests.remove_label_values(&[label]);
        let _ = self.node_failures.remove_label_values(&[label]);
    }
}
