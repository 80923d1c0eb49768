//! One node of the internal system: an address of one configured URL, its pooled
//! connections, and what the gateway knows of its health.
//!
//! A node is up while its active health checks pass and it is not ejected. Passive
//! ejection: `upstream.eject_after` consecutive transport failures or timeouts take it out
//! for `upstream.eject_for`, doubled each time a probe fails again (at most 5 minutes);
//! once that time is over, one request a second may go to it as a probe, and the first
//! that succeeds brings it back. A passing health check brings it back too, but only one
//! that [vouches](Node::check_vouches) for what failed: an HTTP check (`health.path`)
//! always, a TCP check only for a node that failed to take connections — a node that
//! takes them and then never answers passes a TCP check all the same. Active checks flip
//! a node after `upstream.health.healthy_after` / `unhealthy_after` consecutive results;
//! while no node is up, a passing check brings one back at once. `outstanding` counts the
//! calls under way, for least-outstanding selection. The exchange itself is in
//! [`super::exchange`].

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntCounter, IntGauge};
use serde_json::json;

use super::failure::Failure;
use super::plain;
use super::pool::Pool;
use super::stats::Stats;
use super::UpstreamAnswer;
use crate::config::millis as ms;
use crate::config::{Config, LogLevel, UpstreamUrl};
use crate::logs;

/// The longest ejection, however often a node keeps failing.
const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Probes of a node that is out: at most one per this.
const PROBE_EVERY: u64 = 1000;

/// One configured URL (`upstream.url` or an entry of `upstream.urls`).
pub struct Target {
    pub index: usize,
    pub url: UpstreamUrl,
    /// The `Host` value.
    pub authority: String,
    /// The `Host` line, the same on every request. Other headers are the dialect's: the
    /// iq card call carries only what the CRM needs (`token`, `Content-Length`, and the
    /// request id), as HAProxy or nginx would forward it; each header more is one more
    /// the CRM parses on every miss.
    pub(super) fixed_headers: Vec<u8>,
}

impl Target {
    pub fn new(index: usize, url: UpstreamUrl) -> Self {
        let authority = url.authority();
        let fixed_headers = format!("Host: {authority}\r\n").into_bytes();
        Target {
            index,
            url,
            authority,
            fixed_headers,
        }
    }
}

/// Pass/eject settings a reload may change.
#[derive(Debug, Clone, Copy)]
pub struct Ejection {
    pub after: u32,
    pub length: Duration,
}

impl Ejection {
    pub fn of(cfg: &Config) -> Self {
        Ejection {
            after: cfg.upstream.eject_after,
            length: cfg.upstream.eject_for,
        }
    }
}

pub struct Node {
    pub id: u64,
    /// `host:port@address`: the `node` label.
    pub label: String,
    pub target: Arc<Target>,
    /// For TLS connections ([`super::tls`]).
    pub(super) peer: HttpPeer,
    /// For plain-TCP connections ([`plain`]).
    pub(super) addr: SocketAddr,
    pub(super) connect_timeout: Duration,
    pub(super) pool: Arc<Pool>,
    outstanding: AtomicUsize,
    /// What the active health checks say.
    active_up: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Consecutive passed and failed health checks.
    check_passes: AtomicUsize,
    check_fails: AtomicUsize,
    ejected: AtomicBool,
    /// The health checks are HTTP requests (`upstream.health.path`), not TCP connects.
    http_checks: bool,
    /// The ejection under way was for failures after the connection was taken.
    ejected_after_connect: AtomicBool,
    /// The clock of ejections and probes, the same for every node of a set.
    clock: Clock,
    /// When the ejection ends, and its length, in ms of [`Clock::now`].
    ejected_until: AtomicU64,
    eject_len: AtomicU64,
    next_probe: AtomicU64,
    up_gauge: IntGauge,
    requests: IntCounter,
    failures: IntCounter,
    last_warning: Mutex<Option<std::time::Instant>>,
}

/// The clock of ejections and probes: milliseconds since it started, on tokio's clock
/// (the system's monotonic clock, unless a test pauses it). The nodes of one set share one,
/// so that their times compare.
#[derive(Debug, Clone, Copy)]
pub struct Clock(tokio::time::Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(tokio::time::Instant::now())
    }

    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Node {
    pub fn new(target: Arc<Target>, addr: SocketAddr, cfg: &Config, stats: &Stats, clock: Clock) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let label = format!("{}:{}@{addr}", target.url.host, target.url.port);
        let mut peer = HttpPeer::new(addr, target.url.tls, target.url.host.clone());
        // TCP within connect_timeout, TCP and TLS within twice that, both on tokio's timer
        // (see `checkout`): a Pingora timeout would start its 10-ms timer thread.
        peer.options.custom_l4 = Some(Arc::new(plain::TimedTcp(cfg.upstream.connect_timeout)));
        let (up_gauge, requests, failures) = stats.node_series(&label);
        up_gauge.set(1);
        Node {
            id: IDS.fetch_add(1, Relaxed),
            label,
            target,
            peer,
            addr,
            connect_timeout: cfg.upstream.connect_timeout,
            pool: Pool::new(cfg.upstream.pool_size, cfg.upstream.pool_idle_timeout),
            outstanding: AtomicUsize::new(0),
            active_up: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            check_passes: AtomicUsize::new(0),
            check_fails: AtomicUsize::new(0),
            ejected: AtomicBool::new(false),
            http_checks: cfg.upstream.health.path.is_some(),
            ejected_after_connect: AtomicBool::new(false),
            clock,
            ejected_until: AtomicU64::new(0),
            eject_len: AtomicU64::new(0),
            next_probe: AtomicU64::new(0),
            up_gauge,
            requests,
            failures,
            last_warning: Mutex::new(None),
        }
    }

    /// Healthy and not ejected: takes traffic.
    pub fn up(&self) -> bool {
        self.active_up.load(Relaxed) && !self.ejected.load(Relaxed)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Relaxed)
    }

    /// Ejected, the ejection is over, and the health checks pass: the next request to it
    /// is a probe that may bring it back.
    pub fn ejection_over(&self, now: u64) -> bool {
        self.ejected.load(Acquire) && now >= self.ejected_until.load(Relaxed) && self.active_up.load(Relaxed)
    }

    /// A passing health check says the node is back: it is not ejected, or the check is an
    /// HTTP request, or the ejection was for connections it did not take. A TCP connect
    /// says nothing of a node that took the connections and then timed out or broke its
    /// answers: only a real call (its probe) may bring that one back.
    pub fn check_vouches(&self) -> bool {
        !self.ejected.load(Acquire) || self.http_checks || !self.ejected_after_connect.load(Relaxed)
    }

    /// Take the one probe this node may have this second.
    pub fn claim_probe(&self, now: u64) -> bool {
        let next = self.next_probe.load(Relaxed);
        now >= next
            && self
                .next_probe
                .compare_exchange(next, now.saturating_add(PROBE_EVERY), Relaxed, Relaxed)
                .is_ok()
    }

    fn publish(&self) {
        self.up_gauge.set(i64::from(self.up()));
    }

    fn set_active(&self, up: bool, why: &str) {
        if self.active_up.swap(up, Relaxed) != up {
            self.publish();
            let (level, msg) = if up {
                (LogLevel::Info, "CRM node passes its health checks again")
            } else {
                (LogLevel::Warn, "CRM node fails its health checks: taken out")
            };
            logs::event_with(level, msg, json!({ "node": self.label, "why": why }));
        }
    }

    /// One active health check's result; `after` = (healthy_after, unhealthy_after).
    /// A pass also ends an ejection that is over, if the check vouches for the node.
    pub fn checked(&self, ok: bool, after: (usize, usize), detail: &str) {
        if ok {
            self.check_fails.store(0, Relaxed);
            let n = self.check_passes.fetch_add(1, Relaxed).saturating_add(1);
            if n >= after.0 {
                self.set_active(true, "health checks pass");
            }
            if self.ejection_over(self.clock.now()) && self.check_vouches() {
                self.lift("a health check passed");
            }
        } else {
            self.check_passes.store(0, Relaxed);
            let n = self.check_fails.fetch_add(1, Relaxed).saturating_add(1);
            if n >= after.1 {
                self.set_active(false, detail);
            }
        }
    }

    /// A check made while no node was up passed: this node is back at once (if ejected,
    /// only when the check vouches for it).
    pub fn probe_passed(&self) {
        self.check_fails.store(0, Relaxed);
        self.set_active(true, "a probe passed while no node was up");
        if self.check_vouches() {
            self.lift("a probe passed while no node was up");
        }
    }

    fn lift(&self, why: &str) {
        self.consecutive_failures.store(0, Relaxed);
        self.eject_len.store(0, Relaxed);
        if self.ejected.swap(false, Relaxed) {
            self.publish();
            logs::event_with(
                LogLevel::Info,
                "CRM node back in",
                json!({ "node": self.label, "why": why }),
            );
        }
    }

    /// Take the node out for `eject_for`, or (`again`: its probe failed) for twice as
    /// long as last time, at most [`MAX_EJECTION`], for `failure`. What the ejection is
    /// (its end, its cause) is in place before the node is seen ejected, so that a check
    /// passing meanwhile cannot take a stale end or cause for it.
    fn eject(&self, ejection: Ejection, again: bool, failure: &Failure, stats: &Stats) {
        let base = ms(ejection.length).max(1);
        let len = if again {
            self.eject_len
                .load(Relaxed)
                .max(base)
                .saturating_mul(2)
                .min(ms(MAX_EJECTION))
        } else {
            base
        };
        let until = self.clock.now().saturating_add(len);
        self.ejected_after_connect.store(failure.after_connect, Relaxed);
        self.eject_len.store(len, Relaxed);
        self.ejected_until.store(until, Relaxed);
        // The one failure that reaches the bound ejects, not those still under way.
        if self.ejected.swap(true, Release) && !again {
            return;
        }
        self.publish();
        stats.ejections.inc();
        logs::event_with(
            LogLevel::Warn,
            "CRM node ejected",
            json!({
                "node": self.label,
                "for": humantime::format_duration(Duration::from_millis(len)).to_string(),
                "consecutiveFailures": self.consecutive_failures.load(Relaxed),
                "cause": failure.cause,
            }),
        );
    }

    /// Count the outcome of one attempt on this node. While the node is ejected only its
    /// probe counts: the calls sent before the ejection neither bring it back nor eject
    /// it again.
    pub fn report(
        &self,
        busy: &Busy<'_>,
        result: &Result<UpstreamAnswer, Failure>,
        ejection: Ejection,
        stats: &Stats,
    ) {
        let ejected = self.ejected.load(Relaxed);
        match result {
            Ok(answer) => {
                if answer.status >= 500 {
                    self.failures.inc();
                }
                if (busy.probe || !ejected) && (ejected || self.consecutive_failures.load(Relaxed) != 0) {
                    self.lift("a request succeeded");
                }
            }
            Err(f) => {
                self.failures.inc();
                logs::warn(
                    "CRM call failed",
                    &format_args!("{} ({})", f.cause, self.label),
                    &self.last_warning,
                    Duration::from_secs(1),
                );
                if !f.transport {
                    return;
                }
                if ejected {
                    if busy.probe {
                        self.eject(ejection, true, f, stats);
                    }
                    return;
                }
                let n = self.consecutive_failures.fetch_add(1, Relaxed).saturating_add(1);
                if ejection.after > 0 && n >= ejection.after {
                    self.eject(ejection, false, f, stats);
                }
            }
        }
    }

    /// Mark one call under way until the guard drops. A call sent to an ejected node is
    /// its probe (only [`crate::upstream::nodes::Nodes::pick`]'s claimed probe is).
    pub fn busy(&self) -> Busy<'_> {
        self.outstanding.fetch_add(1, Relaxed);
        self.requests.inc();
        Busy {
            node: self,
            probe: self.ejected.load(Relaxed),
        }
    }
}

/// A call under way on a node.
pub struct Busy<'a> {
    node: &'a Node,
    probe: bool,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.node.outstanding.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
pub(super) mod tests;
