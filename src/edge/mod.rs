//! The edge: who may connect, and how much one source may ask.
//!
//! A [`Gate`] guards one listener. As Pingora's connection filter it closes, at accept, a
//! connection from outside `server.allow` / `admin.allow` (or, behind a balancer, from
//! outside `server.proxy_from`); [`opening`] then counts each chat-server connection
//! against `limits.max_connections` from that moment to its close (through the PROXY
//! header wait and the TLS handshake) and brings it to its first request. Refusals are
//! counted in `cardgate_connections_refused_total{listener,reason}`. [`sources`] limits
//! what one source address may ask once connected (requests per second, unknown tokens
//! per minute). Everything here changes in place on a reload.

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

pub mod opening;
pub mod proxy;
pub mod sources;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::listeners::ConnectionFilter;
use prometheus::{IntCounter, IntGauge};

/// The `listener` label values.
pub const LISTENERS: [&str; 2] = ["chat", "admin"];
/// Why a connection was closed before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source is outside the allowlist (or, behind a balancer, `proxy_from`).
    NotAllowed,
    /// `limits.max_connections` were open.
    MaxConnections,
    /// No valid PROXY header within `server.client_timeout`.
    ProxyHeader,
    /// The TLS handshake failed.
    TlsHandshake,
    /// The TLS handshake was not done within `server.client_timeout`.
    TlsTimeout,
    /// Plain HTTP on the TLS port (answered with its 400).
    PlainHttp,
}

/// The `reason` label values of refused connections, in [`Refusal`] order.
pub const REFUSALS: [&str; 6] = [
    "not_allowed",
    "max_connections",
    "proxy_header",
    "tls_handshake",
    "tls_timeout",
    "plain_http",
];

/// An address as the allowlists see it: an IPv4 client on an IPv6 socket is IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is in `allow` (an empty list allows everyone).
pub fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// The accept-time filter of one listener.
pub struct Gate {
    allow: ArcSwap<Vec<IpNet>>,
    /// Behind a balancer (PROXY protocol): who may send the headers, checked at accept
    /// (empty: anyone); the allowlist then applies to the address a header names.
    proxy_from: Option<ArcSwap<Vec<IpNet>>>,
    /// Open connections at most (chat listener; `usize::MAX`: no bound).
    max_open: AtomicUsize,
    /// Connections counted open now: the bound is checked and taken in one step.
    counted: AtomicUsize,
    /// What the metrics show of `counted`.
    open: IntGauge,
    /// The counters of each [`Refusal`], in its order.
    refused: [IntCounter; 6],
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("allow", &self.allow.load().len())
            .field("max_open", &self.max_open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// `open` shows the listener's open connections; `refused` gives the counters of its
    /// refusal reasons, in [`REFUSALS`] order.
    pub fn new(
        allow: Vec<IpNet>,
        proxy_from: Option<Vec<IpNet>>,
        max_open: usize,
        open: IntGauge,
        refused: [IntCounter; 6],
    ) -> Arc<Self> {
        Arc::new(Gate {
            allow: ArcSwap::from_pointee(allow),
            proxy_from: proxy_from.map(ArcSwap::from_pointee),
            max_open: AtomicUsize::new(max_open),
            counted: AtomicUsize::new(0),
            open,
            refused,
        })
    }

    /// New settings for the connections accepted from now on.
    pub fn apply(&self, allow: Vec<IpNet>, proxy_from: Vec<IpNet>, max_open: usize) {
        self.allow.store(Arc::new(allow));
        if let Some(from) = &self.proxy_from {
            from.store(Arc::new(proxy_from));
        }
        self.max_open.store(max_open, Ordering::Relaxed);
    }

    /// Whether a connection from the peer `ip` is admitted at accept (counting it as
    /// refused if not): the allowlist, or behind a balancer `proxy_from`.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let admitted = match &self.proxy_from {
            None => allowed(&self.allow.load(), ip),
            Some(from) => allowed(&from.load(), ip),
        };
        if !admitted {
            self.refuse(Refusal::NotAllowed);
        }
        admitted
    }

    /// Whether the allowlist takes this source (counting it as refused if not): at
    /// accept, or once a PROXY header named it.
    pub fn allows_source(&self, ip: IpAddr) -> bool {
        let ok = allowed(&self.allow.load(), ip);
        if !ok {
            self.refuse(Refusal::NotAllowed);
        }
        ok
    }

    /// Count a connection closed for `why`.
    pub fn refuse(&self, why: Refusal) {
        if let Some(counter) = self.refused.get(why as usize) {
            counter.inc();
        }
    }

    /// Count a connection as open until the returned guard is dropped, if fewer than
    /// `limits.max_connections` are (else it is counted as refused). The check and the
    /// count are one atomic step: connections accepted at once cannot all pass it.
    pub fn try_open(self: &Arc<Self>) -> Option<OpenConnection> {
        let max = self.max_open.load(Ordering::Relaxed);
        let taken = self
            .counted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then(|| n.saturating_add(1))
            });
        if taken.is_err() {
            self.refuse(Refusal::MaxConnections);
            return None;
        }
        self.open.inc();
        Some(OpenConnection(self.clone()))
    }

    /// Count a connection as open until the returned guard is dropped, whatever the bound
    /// (the admin port's connections, which are bounded by its allowlist and one thread).
    pub fn opened(self: &Arc<Self>) -> OpenConnection {
        self.counted.fetch_add(1, Ordering::AcqRel);
        self.open.inc();
        OpenConnection(self.clone())
    }
}

/// An open connection, counted until dropped.
pub struct OpenConnection(Arc<Gate>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.dec();
        let _ = self
            .0
            .counted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[async_trait]
impl ConnectionFilter for Gate {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        addr.is_none_or(|a| self.admits(a.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn allowlists_match_v4_v6_and_mapped_addresses() {
        let allow = nets(&["127.0.0.2/32", "10.0.0.0/8", "2001:db8::/32"]);
        for (ip, ok) in [
            ("127.0.0.2", true),
            ("127.0.0.3", false),
            ("10.200.1.1", true),
            ("::ffff:10.1.2.3", true),
            ("::ffff:127.0.0.3", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
        ] {
            assert_eq!(allowed(&allow, ip.parse().unwrap()), ok, "{ip}");
        }
        assert!(
            allowed(&[], "192.0.2.1".parse().unwrap()),
            "empty allows everyone"
        );
    }

    #[test]
    fn a_gate_counts_what_it_refuses_and_bounds_open_connections() {
        let c = || IntCounter::new("c", "c").unwrap();
        let open = IntGauge::new("o", "o").unwrap();
        let refused = [c(), c(), c(), c(), c(), c()];
        let gate = Gate::new(nets(&["127.0.0.0/8"]), None, 2, open.clone(), refused.clone());
        assert!(!gate.admits("192.0.2.1".parse().unwrap()));
        assert_eq!(refused[Refusal::NotAllowed as usize].get(), 1);
        let a = gate.try_open().unwrap();
        let _b = gate.try_open().unwrap();
        assert_eq!(open.get(), 2);
        assert!(gate.try_open().is_none());
        assert_eq!(refused[Refusal::MaxConnections as usize].get(), 1);
        drop(a);
        assert!(gate.try_open().is_some());
        assert_eq!(open.get(), 1, "the refused one and the dropped one are not open");
        gate.apply(Vec::new(), Vec::new(), 10);
        assert!(gate.admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn connections_opened_at_once_never_pass_the_bound_together() {
        let c = || IntCounter::new("c", "c").unwrap();
        let open = IntGauge::new("o", "o").unwrap();
        let refused = [c(), c(), c(), c(), c(), c()];
        let gate = Gate::new(Vec::new(), None, 20, open.clone(), refused.clone());
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, barrier) = (gate.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..10).filter_map(|_| gate.try_open()).collect::<Vec<_>>()
                })
            })
            .collect();
        let held: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert_eq!(held.len(), 20);
        assert_eq!(open.get(), 20);
        assert_eq!(refused[Refusal::MaxConnections as usize].get(), 60);
        drop(held);
        assert_eq!(open.get(), 0);
    }
}
