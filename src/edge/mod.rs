//! The edge: who may connect, and how much one source may ask.
//!
//! A [`Gate`] is Pingora's connection filter for one listener: a connection from outside
//! `server.allow` / `admin.allow`, or beyond `limits.max_connections` open chat-server
//! connections, is closed at accept, before any TLS handshake or byte of HTTP, and counted
//! in `cardgate_connections_refused_total{listener,reason}`. [`sources`] limits what one
//! source address may ask once connected (requests per second, unknown tokens per
//! minute). Everything here changes in place on a reload.

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
/// The `reason` label values of refused connections.
pub const REFUSALS: [&str; 3] = ["not_allowed", "max_connections", "proxy_header"];

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
    open: IntGauge,
    not_allowed: IntCounter,
    too_many: IntCounter,
    bad_proxy_header: IntCounter,
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
    /// `open` counts the listener's open connections; `refused` gives the counters of
    /// its two refusal reasons, in [`REFUSALS`] order.
    pub fn new(
        allow: Vec<IpNet>,
        proxy_from: Option<Vec<IpNet>>,
        max_open: usize,
        open: IntGauge,
        refused: [IntCounter; 3],
    ) -> Arc<Self> {
        let [not_allowed, too_many, bad_proxy_header] = refused;
        Arc::new(Gate {
            allow: ArcSwap::from_pointee(allow),
            proxy_from: proxy_from.map(ArcSwap::from_pointee),
            bad_proxy_header,
            max_open: AtomicUsize::new(max_open),
            open,
            not_allowed,
            too_many,
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

    /// Whether a connection from `ip` is admitted now (counting it as refused if not).
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        if let Some(ip) = ip {
            let admitted = match &self.proxy_from {
                None => allowed(&self.allow.load(), ip),
                Some(from) => allowed(&from.load(), ip),
            };
            if !admitted {
                self.not_allowed.inc();
                return false;
            }
        }
        let open = usize::try_from(self.open.get()).unwrap_or(0);
        if open >= self.max_open.load(Ordering::Relaxed) {
            self.too_many.inc();
            return false;
        }
        true
    }

    /// Whether the allowlist takes this source (counting it as refused if not): at
    /// accept, or once a PROXY header named it.
    pub fn allows_source(&self, ip: IpAddr) -> bool {
        let ok = allowed(&self.allow.load(), ip);
        if !ok {
            self.not_allowed.inc();
        }
        ok
    }

    /// Count a connection closed for a missing or invalid PROXY header.
    pub fn refuse_proxy_header(&self) {
        self.bad_proxy_header.inc();
    }

    /// Count a connection as open until the returned guard is dropped.
    pub fn opened(&self) -> OpenConnection {
        self.open.inc();
        OpenConnection(self.open.clone())
    }
}

/// An open connection, counted until dropped.
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl ConnectionFilter for Gate {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        self.admits(addr.map(SocketAddr::ip))
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
        let gate = Gate::new(nets(&["127.0.0.0/8"]), None, 2, open.clone(), [c(), c(), c()]);
        assert!(!gate.admits(Some("192.0.2.1".parse().unwrap())));
        assert_eq!(gate.not_allowed.get(), 1);
        let a = gate.opened();
        let _b = gate.opened();
        assert!(!gate.admits(Some("127.0.0.1".parse().unwrap())));
        assert_eq!(gate.too_many.get(), 1);
        drop(a);
        assert!(gate.admits(Some("127.0.0.1".parse().unwrap())));
        gate.apply(Vec::new(), Vec::new(), 10);
        assert!(gate.admits(Some("192.0.2.1".parse().unwrap())));
    }
}
