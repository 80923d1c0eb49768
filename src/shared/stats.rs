//! The `cardgate_shared_*` metrics: what the replicas' shared state costs and how often
//! Redis was not there for them.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::metrics::Metrics;

/// The `op` label values of `cardgate_shared_errors_total`.
pub const OPS: [&str; 7] = [
    "connect",
    "card_get",
    "card_put",
    "invalidate",
    "subscribe",
    "guard",
    "steps",
];

pub(super) struct Stats {
    pub up: IntGauge,
    pub errors: IntCounterVec,
    pub seconds: Histogram,
    /// `cardgate_shared_cards_total` by result: hit, miss, waited.
    pub l2_hit: IntCounter,
    pub l2_miss: IntCounter,
    pub l2_waited: IntCounter,
    pub lock_waits: IntCounter,
    pub invalidations: IntCounter,
    pub undecryptable: IntCounter,
    pub failovers: IntCounter,
}

impl Stats {
    // Built once from constant names and help texts: registering cannot fail.
    #[allow(clippy::expect_used)]
    pub fn new(metrics: &Metrics) -> Self {
        let up = IntGauge::new("cardgate_shared_up", "1 while Redis answers this replica").expect("metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "cardgate_shared_errors_total",
                "Redis commands that failed or timed out; the request went on without Redis",
            ),
            &["op"],
        )
        .expect("metric");
        let seconds = Histogram::with_opts(
            HistogramOpts::new("cardgate_shared_command_duration_seconds", "Redis round trips")
                .buckets(vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1]),
        )
        .expect("metric");
        let l2 = IntCounterVec::new(
            Opts::new(
                "cardgate_shared_cards_total",
                "Second-level (Redis) card lookups by result",
            ),
            &["result"],
        )
        .expect("metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("metric");
        let lock_waits = counter(
            "cardgate_shared_lock_waits_total",
            "Misses that waited for another replica's CRM call instead of making their own",
        );
        let invalidations = counter(
            "cardgate_shared_invalidations_total",
            "Purges and clears received from the invalidation channel",
        );
        let undecryptable = counter(
            "cardgate_shared_undecryptable_total",
            "Values in Redis that did not open with this secret (treated as misses)",
        );
        let failovers = counter(
            "cardgate_shared_failovers_total",
            "Times this replica moved to another Redis master the Sentinels named",
        );
        for op in OPS {
            errors.with_label_values(&[op]);
        }
        for c in [
            Box::new(up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(seconds.clone()),
            Box::new(l2.clone()),
            Box::new(lock_waits.clone()),
            Box::new(invalidations.clone()),
            Box::new(undecryptable.clone()),
            Box::new(failovers.clone()),
        ] {
            metrics.register(c);
        }
        Stats {
            up,
            errors,
            seconds,
            l2_hit: l2.with_label_values(&["hit"]),
            l2_miss: l2.with_label_values(&["miss"]),
            l2_waited: l2.with_label_values(&["waited"]),
            lock_waits,
            invalidations,
            undecryptable,
            failovers,
        }
    }
}
