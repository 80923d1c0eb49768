//! Off the request path: re-resolving the nodes and checking their health.
//!
//! Membership and active health are Pingora's (`pingora-load-balancing`): our
//! [`Discovery`] resolves every configured URL each `upstream.resolve_interval` (every
//! address a node; a name that fails to resolve keeps its last addresses, none for a name
//! that has not resolved since startup), and
//! [`Backends`] runs the checks each `upstream.health.interval` — Pingora's TCP check (and
//! TLS handshake, for https) or, with `upstream.health.path`, its HTTP check, which must
//! answer 2xx or 3xx within `upstream.health.timeout`; `healthy_after` and
//! `unhealthy_after` consecutive results flip a node (counted by the node, so that a
//! probe may bring it back between checks). [`Watch`] is the background service that runs
//! both loops, and probes the nodes (one check a second each) while none is up and calls
//! keep coming. Selection stays ours ([`super::nodes`]): Pingora has no
//! least-outstanding choice.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::Notify;

use async_trait::async_trait;
use pingora::connectors::http::Connector as HttpConnector;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::{Backend, Backends};
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error as PError, ErrorType, Result as PResult};

use super::node::{Node, Target};
use super::nodes::Nodes;
use super::resolve::Lookup;
use super::stats::Stats;
use crate::config::{Config, HealthSection, LogLevel};
use crate::logs;

/// Resolves the configured URLs into nodes, keeping the node of an address that stays.
pub struct Discovery {
    targets: Vec<Arc<Target>>,
    cfg: Config,
    stats: Arc<Stats>,
    /// The nodes of the last resolution, by (URL index, address).
    known: Mutex<HashMap<(usize, SocketAddr), Arc<Node>>>,
    /// The first resolution, done at startup.
    seed: Mutex<Option<Vec<Vec<SocketAddr>>>>,
    /// How names are resolved after that.
    lookup: Box<dyn Lookup>,
    last_warning: Mutex<Option<Instant>>,
}

impl Discovery {
    pub fn new(
        targets: Vec<Arc<Target>>,
        seed: Vec<Vec<SocketAddr>>,
        lookup: Box<dyn Lookup>,
        cfg: &Config,
        stats: Arc<Stats>,
    ) -> Self {
        Discovery {
            targets,
            cfg: cfg.clone(),
            stats,
            known: Mutex::new(HashMap::new()),
            seed: Mutex::new(Some(seed)),
            lookup,
            last_warning: Mutex::new(None),
        }
    }

    async fn resolve(&self) -> Vec<Vec<SocketAddr>> {
        if let Some(seed) = self.seed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return seed;
        }
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
}

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> PResult<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let resolved = self.resolve().await;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        let mut backends = BTreeSet::new();
        for (target, addrs) in self.targets.iter().zip(resolved) {
            for addr in addrs {
                let key = (target.index, addr);
                let node = known
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Node::new(target.clone(), addr, &self.cfg, &self.stats)));
                let mut backend = Backend {
                    addr: PSocketAddr::Inet(addr),
                    // Selection is ours and ignores weights: this keeps two URLs that name
                    // one address two nodes (Pingora tells backends apart by address and
                    // weight).
                    weight: target.index.saturating_add(1),
                    ext: http::Extensions::new(),
                };
                backend.ext.insert(node.clone());
                backends.insert(backend);
                next.insert(key, node);
            }
        }
        *known = next;
        Ok((backends, HashMap::new()))
    }
}

/// The node a backend stands for.
pub fn node_of(backend: &Backend) -> Option<&Arc<Node>> {
    backend.ext.get::<Arc<Node>>()
}

/// Every node of a membership set, in its order.
pub fn nodes_of(set: &BTreeSet<Backend>) -> Vec<Arc<Node>> {
    set.iter().filter_map(node_of).cloned().collect()
}

/// Pingora's check for each URL (its own host for `Host` and SNI), bounded by
/// `health.timeout` on tokio's timer, reporting to the node. The checks carry no Pingora
/// timeouts: its fast timer would start a thread that wakes every 10 ms for good.
pub struct NodeCheck {
    per_target: Vec<Box<dyn HealthCheck + Send + Sync>>,
    timeout: Duration,
    after: (usize, usize),
}

impl NodeCheck {
    pub fn new(
        targets: &[Arc<Target>],
        health: &HealthSection,
        options: impl Fn() -> ConnectorOptions,
    ) -> Self {
        let per_target = targets
            .iter()
            .map(|t| -> Box<dyn HealthCheck + Send + Sync> {
                let host = &t.url.host;
                match &health.path {
                    None => {
                        let mut check = if t.url.tls {
                            TcpHealthCheck::new_tls(host)
                        } else {
                            TcpHealthCheck::new()
                        };
                        check.peer_template.options.connection_timeout = None;
                        check.set_connector(TransportConnector::new(Some(options())));
                        check
                    }
                    Some(path) => {
                        let mut check = HttpHealthCheck::new(&t.authority, t.url.tls);
                        check.peer_template.sni.clone_from(host);
                        if !t.url.tls {
                            check.peer_template.sni.clear();
                        }
                        check.peer_template.options.connection_timeout = None;
                        check.peer_template.options.read_timeout = None;
                        let full = format!("{}{path}", t.url.base_path);
                        if let Ok(mut req) = RequestHeader::build("GET", full.as_bytes(), None) {
                            let _ = req.append_header("Host", &t.authority);
                            let _ = req.append_header("User-Agent", super::USER_AGENT);
                            check.req = req;
                        }
                        check.validator = Some(Box::new(|head| {
                            if (200..400).contains(&head.status.as_u16()) {
                                Ok(())
                            } else {
                                PError::e_explain(
                                    ErrorType::CustomCode("health check status", head.status.as_u16()),
                                    "not 2xx or 3xx",
                                )
                            }
                        }));
                        check.set_connector(HttpConnector::new(Some(options())));
                        Box::new(check)
                    }
                }
            })
            .collect();
        NodeCheck {
            per_target,
            timeout: health.timeout,
            after: (health.healthy_after, health.unhealthy_after),
        }
    }

    /// Check one node, within `health.timeout`.
    async fn run(&self, target: &Backend) -> PResult<()> {
        let Some(node) = node_of(target) else {
            return PError::e_explain(ErrorType::InternalError, "a backend without its node");
        };
        let Some(check) = self.per_target.get(node.target.index) else {
            return PError::e_explain(ErrorType::InternalError, "a node without its check");
        };
        match tokio::time::timeout(self.timeout, check.check(target)).await {
            Ok(r) => r,
            Err(_) => PError::e_explain(ErrorType::ConnectTimedout, "health check timed out"),
        }
    }
}

/// What Pingora's registry runs each interval: the check, reported to the node.
pub struct Scheduled(pub Arc<NodeCheck>);

#[async_trait]
impl HealthCheck for Scheduled {
    async fn check(&self, target: &Backend) -> PResult<()> {
        let result = self.0.run(target).await;
        if let Some(node) = node_of(target) {
            let detail = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
            node.checked(result.is_ok(), self.0.after, &detail);
        }
        result
    }

    /// The node counts its own consecutive results; Pingora's verdict is not used.
    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

/// The background service: re-resolution and health checks, until shutdown.
pub struct Watch {
    pub backends: Backends,
    pub check: Arc<NodeCheck>,
    pub nodes: Arc<Nodes>,
    pub stats: Arc<Stats>,
    pub resolve_every: Duration,
    pub check_every: Duration,
    /// Woken by a call that found no node up.
    pub circuit_open: Notify,
}

impl Watch {
    /// The service for `targets`, first resolved to `seed` and later through `lookup`; its
    /// nodes are published by the first [`Watch::refresh`].
    pub fn new(
        cfg: &Config,
        targets: &[Arc<Target>],
        seed: Vec<Vec<SocketAddr>>,
        lookup: Box<dyn Lookup>,
        stats: Arc<Stats>,
        options: impl Fn() -> ConnectorOptions,
    ) -> Self {
        let discovery = Discovery::new(targets.to_vec(), seed, lookup, cfg, stats.clone());
        let mut backends = Backends::new(Box::new(discovery));
        let check = Arc::new(NodeCheck::new(targets, &cfg.upstream.health, options));
        backends.set_health_check(Box::new(Scheduled(check.clone())));
        Watch {
            backends,
            check,
            circuit_open: Notify::new(),
            nodes: Arc::new(Nodes::new(Vec::new())),
            stats,
            resolve_every: cfg.upstream.resolve_interval,
            check_every: cfg.upstream.health.interval,
        }
    }

    /// Check every node that is out and due for its probe (at most one a second each);
    /// one that passes is back at once.
    async fn probe(&self) {
        let due = self.nodes.due_for_probe();
        if due.is_empty() {
            return;
        }
        let backends = self.backends.get_backend();
        // One after another: a few nodes, each bounded by health.timeout.
        for node in due {
            let Some(backend) = backends
                .iter()
                .find(|b| node_of(b).is_some_and(|n| n.id == node.id))
            else {
                continue;
            };
            if self.check.run(backend).await.is_ok() {
                node.probe_passed();
            }
        }
    }

    /// Resolve again; publish the nodes if the set changed.
    pub async fn refresh(&self) {
        let published = self.backends.update(|set| {
            for gone in self.nodes.publish(nodes_of(&set)) {
                self.stats.forget(&gone.label);
            }
        });
        if let Err(e) = published.await {
            // Discovery itself never fails (a failed name keeps its addresses).
            logs::event_with(
                LogLevel::Warn,
                "CRM node discovery failed",
                serde_json::json!({ "error": e.to_string() }),
            );
        }
    }
}

#[async_trait]
impl BackgroundService for Watch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let resolve = async {
            let mut every = tokio::time::interval(self.resolve_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await; // the startup resolution was the first
            loop {
                every.tick().await;
                self.refresh().await;
            }
        };
        let check = async {
            let mut every = tokio::time::interval(self.check_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await; // nodes start up: the first check is one interval in
            loop {
                every.tick().await;
                self.backends.run_health_check(true).await;
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
        let watch = Watch::new(&cfg, &targets, seed, Box::new(dns.clone()), stats, || {
            ConnectorOptions::new(0)
        });
        let resolves = |result: &str| watch.stats.resolves.with_label_values(&[result]).get();

        // Startup, and two rounds of re-resolution while the name server knows nothing.
        for _ in 0..3 {
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
