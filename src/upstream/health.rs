//! Off the request path: re-resolving the nodes and checking their health.
//!
//! [`Discovery`] resolves every configured URL each `upstream.resolve_interval` (every
//! address a node; a name that fails to resolve keeps its last addresses, none for a name
//! that has not resolved since startup) and keeps the node of an address that stays.
//! [`Watch`] is the background service that re-resolves, checks every node each
//! `upstream.health.interval` ([`super::check`]) and gives each result to the node, which
//! counts `healthy_after` / `unhealthy_after` consecutive results itself; while no node is
//! up and calls keep coming, it probes the nodes (one check a second each). Health checks
//! and selection ([`super::nodes`]) are ours: Pingora's load balancer has neither
//! least-outstanding selection nor passive ejection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use super::check::Check;
use super::node::{Clock, Node, Target};
use super::nodes::Nodes;
use super::resolve::Lookup;
use super::stats::Stats;
use crate::config::{Config, LogLevel};
use crate::logs;

/// Resolves the configured URLs into nodes, keeping the node of an address that stays.
struct Discovery {
    targets: Vec<Arc<Target>>,
    cfg: Config,
    stats: Arc<Stats>,
    clock: Clock,
    /// The nodes of the last resolution, by (URL index, address).
    known: Mutex<HashMap<(usize, SocketAddr), Arc<Node>>>,
    /// How names are resolved after startup.
    lookup: Box<dyn Lookup>,
    last_warning: Mutex<Option<Instant>>,
}

impl Discovery {
    /// The addresses of every URL now, in their order; a URL whose name does not resolve
    /// keeps its last ones.
    async fn resolve(&self) -> Vec<Vec<SocketAddr>> {
        let mut all = Vec::with_capacity(self.targets.len());
        let mut failed = false;
        for target in &self.targets {
            let known: Vec<SocketAddr> = {
                let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
                let kept = known.keys().filter(|(i, _)| *i == target.index).map(|(_, a)| *a);
                kept.collect()
            };
            match self.lookup.lookup(&target.url).await {
                Ok(addrs) => {
                    if known.is_empty() {
                        logs::event_with(
                            LogLevel::Info,
                            "CRM host resolves: its nodes take traffic",
                            serde_json::json!({ "host": target.url.host, "addresses": addrs.len() }),
                        );
                    }
                    all.push(addrs);
                }
                Err(e) => {
                    failed = true;
                    logs::warn(
                        "cannot resolve a CRM host: its last addresses stay",
                        &format_args!("{}: {e} ({} addresses kept)", target.url.host, known.len()),
                        &self.last_warning,
                        Duration::from_secs(10),
                    );
                    all.push(known);
                }
            }
        }
        let result = if failed { "error" } else { "ok" };
        self.stats.resolves.with_label_values(&[result]).inc();
        all
    }

    /// The nodes of `resolved` (one list of addresses per URL): the known node of an
    /// address that stays, a new one for an address that is new.
    fn nodes(&self, resolved: Vec<Vec<SocketAddr>>) -> Vec<Arc<Node>> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        let mut list = Vec::new();
        for (target, addrs) in self.targets.iter().zip(resolved) {
            for addr in addrs {
                let key = (target.index, addr);
                let node = known.get(&key).cloned().unwrap_or_else(|| {
                    Arc::new(Node::new(
                        target.clone(),
                        addr,
                        &self.cfg,
                        &self.stats,
                        self.clock,
                    ))
                });
                list.push(node.clone());
                next.insert(key, node);
            }
        }
        *known = next;
        list
    }
}

/// The background service: re-resolution and health checks, until shutdown.
pub struct Watch {
    discovery: Discovery,
    check: Check,
    pub nodes: Arc<Nodes>,
    stats: Arc<Stats>,
    resolve_every: Duration,
    check_every: Duration,
    /// Woken by a call that found no node up.
    pub circuit_open: Notify,
}

impl Watch {
    /// The service for `targets`, whose nodes are those of `seed` (the startup resolution,
    /// one list of addresses per URL) until [`Watch::refresh`] resolves them again through
    /// `lookup`; checks connect through `connector`.
    pub fn new(
        cfg: &Config,
        targets: &[Arc<Target>],
        seed: Vec<Vec<SocketAddr>>,
        lookup: Box<dyn Lookup>,
        stats: Arc<Stats>,
        connector: Arc<super::tls::Connector>,
    ) -> Self {
        let clock = Clock::start();
        let discovery = Discovery {
            targets: targets.to_vec(),
            cfg: cfg.clone(),
            stats: stats.clone(),
            clock,
            known: Mutex::new(HashMap::new()),
            lookup,
            last_warning: Mutex::new(None),
        };
        let nodes = Arc::new(Nodes::new(discovery.nodes(seed), clock));
        let max_body = usize::try_from(cfg.upstream.max_response_bytes).unwrap_or(usize::MAX);
        Watch {
            discovery,
            check: Check::new(&cfg.upstream.health, max_body, connector),
            nodes,
            stats,
            resolve_every: cfg.upstream.resolve_interval,
            check_every: cfg.upstream.health.interval,
            circuit_open: Notify::new(),
        }
    }

    /// Resolve again and publish the nodes; the series of those that left go.
    pub async fn refresh(&self) {
        let resolved = self.discovery.resolve().await;
        for gone in self.nodes.publish(self.discovery.nodes(resolved)) {
            self.stats.forget(&gone.label);
        }
    }

    /// Check every node, all at once; each result goes to its node.
    async fn check_all(&self) {
        let nodes = self.nodes.all();
        join_all(nodes.iter().map(|node| async move {
            let result = self.check.run(node).await;
            node.checked(
                result.is_ok(),
                self.check.after,
                result.err().as_deref().unwrap_or(""),
            );
        }))
        .await;
    }

    /// Check every node that is out and due for its probe (at most one a second each);
    /// one that passes is back at once.
    async fn probe(&self) {
        // One after another: a few nodes, each bounded by health.timeout.
        for node in self.nodes.due_for_probe() {
            if self.check.run(&node).await.is_ok() {
                node.probe_passed();
            }
        }
    }
}

/// Ticks every `period` from one `period` on; a late tick delays the next.
async fn every(period: Duration) -> tokio::time::Interval {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    every.tick().await; // the first tick is at once
    every
}

#[async_trait]
impl BackgroundService for Watch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The startup resolution was the first; nodes start up, the first check is one
        // interval in.
        let resolve = async {
            let mut tick = every(self.resolve_every).await;
            loop {
                tick.tick().await;
                self.refresh().await;
            }
        };
        let check = async {
            let mut tick = every(self.check_every).await;
            loop {
                tick.tick().await;
                self.check_all().await;
            }
        };
        let probe = async {
            loop {
                self.circuit_open.notified().await;
                self.probe().await;
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            () = resolve => {}
            () = check => {}
            () = probe => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamUrl;
    use crate::metrics::Metrics;
    use crate::upstream::nodes::Tried;
    use crate::upstream::resolve;

    /// A name server the test answers for: nothing (the name does not resolve) or addresses.
    #[derive(Clone, Default)]
    struct Dns(Arc<Mutex<Option<Vec<SocketAddr>>>>);

    #[async_trait]
    impl Lookup for Dns {
        async fn lookup(&self, url: &UpstreamUrl) -> std::io::Result<Vec<SocketAddr>> {
            let answer = self.0.lock().unwrap().clone();
            answer.ok_or_else(|| std::io::Error::other(format!("{}: no such host", url.host)))
        }
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_at_startup_has_its_node_once_it_does() {
        // `.invalid` never resolves (RFC 6761), whatever this machine's resolver.
        let cfg = Config::from_toml("[upstream]\nurl = \"http://crm.staging.invalid:8080\"\n").unwrap();
        let urls = cfg.upstream_urls().unwrap();
        let (seed, unresolved) = resolve::at_start(&urls);
        assert_eq!((seed.as_slice(), unresolved.len()), (&[vec![]][..], 1));
        let targets: Vec<_> = urls.into_iter().map(|u| Arc::new(Target::new(0, u))).collect();
        let stats = Arc::new(Stats::new(&Metrics::new("iq")));
        let dns = Dns::default();
        let connector = Arc::new(super::super::tls::Connector::new(&cfg.upstream, false).unwrap());
        let watch = Watch::new(&cfg, &targets, seed, Box::new(dns.clone()), stats, connector);
        let resolves = |result: &str| watch.stats.resolves.with_label_values(&[result]).get();
        assert!(watch.nodes.pick(&Tried::default(), true).is_none());

        // Two rounds of re-resolution while the name server knows nothing.
        for _ in 0..2 {
            watch.refresh().await;
            assert!(watch.nodes.pick(&Tried::default(), true).is_none());
            assert!(watch.nodes.due_for_probe().is_empty());
        }
        assert_eq!((resolves("error"), resolves("ok")), (2, 0));

        // The name resolves: its address is a node that takes calls.
        *dns.0.lock().unwrap() = Some(vec!["127.0.0.1:8080".parse().unwrap()]);
        watch.refresh().await;
        let node = watch.nodes.pick(&Tried::default(), true).expect("a node");
        assert_eq!(node.label, "crm.staging.invalid:8080@127.0.0.1:8080");
        assert!(node.up());
        assert_eq!((resolves("error"), resolves("ok")), (2, 1));

        // Silent again: the node stays.
        *dns.0.lock().unwrap() = None;
        watch.refresh().await;
        let again = watch.nodes.pick(&Tried::default(), true).expect("the node stays");
        assert_eq!(again.id, node.id);
    }
}
