//! Where the internal system is: each configured URL's host resolved to its addresses,
//! every one a node.
//!
//! A literal address is its own node. A name is resolved once at startup (and by
//! `cardgate check`), blocking, before anything serves. A name that does not resolve then
//! is not fatal (HAProxy's `init-addr none`): it is named in a warning and has no node
//! until it resolves, so the gateway starts and answers `CRM_UNAVAILABLE` meanwhile. Later
//! resolutions, every `upstream.resolve_interval`, go through a [`Lookup`] on the health
//! service's runtime — the system's resolver through tokio (its blocking pool), never on
//! a worker thread serving a request.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use async_trait::async_trait;

use crate::config::UpstreamUrl;

/// The most addresses one URL contributes as nodes.
pub const MAX_ADDRESSES: usize = 16;

/// A host that did not resolve at startup.
#[derive(Debug)]
pub struct Unresolved {
    pub host: String,
    pub error: String,
}

impl Unresolved {
    /// What `cardgate check` prints about it.
    pub fn warning(&self, resolve_every: Duration) -> String {
        format!(
            "upstream: cannot resolve {} now ({}): the gateway starts without its nodes, answers 503 CRM_UNAVAILABLE, and resolves it again every upstream.resolve_interval ({})",
            self.host,
            self.error,
            humantime::format_duration(resolve_every)
        )
    }
}

/// The addresses of every URL at startup (blocking), in their order: a name that does not
/// resolve now has none, and is listed in the second part.
pub fn at_start(urls: &[UpstreamUrl]) -> (Vec<Vec<SocketAddr>>, Vec<Unresolved>) {
    let mut unresolved = Vec::new();
    let seed = urls
        .iter()
        .map(|url| {
            resolve(url).unwrap_or_else(|e| {
                unresolved.push(Unresolved {
                    host: url.host.clone(),
                    error: e.to_string(),
                });
                Vec::new()
            })
        })
        .collect();
    (seed, unresolved)
}

/// Every address `url`'s host resolves to now (blocking), at most [`MAX_ADDRESSES`].
pub fn resolve(url: &UpstreamUrl) -> std::io::Result<Vec<SocketAddr>> {
    if let Some(ip) = url.literal() {
        return Ok(vec![SocketAddr::new(ip, url.port)]);
    }
    nonempty(url, distinct((url.host.as_str(), url.port).to_socket_addrs()?))
}

/// How a name is resolved after startup.
#[async_trait]
pub trait Lookup: Send + Sync {
    /// Every address `url`'s host resolves to now, at most [`MAX_ADDRESSES`].
    async fn lookup(&self, url: &UpstreamUrl) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system's resolver, through tokio.
pub struct System;

#[async_trait]
impl Lookup for System {
    async fn lookup(&self, url: &UpstreamUrl) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(ip) = url.literal() {
            return Ok(vec![SocketAddr::new(ip, url.port)]);
        }
        let addrs = tokio::net::lookup_host((url.host.as_str(), url.port)).await?;
        nonempty(url, distinct(addrs))
    }
}

fn nonempty(url: &UpstreamUrl, addrs: Vec<SocketAddr>) -> std::io::Result<Vec<SocketAddr>> {
    if addrs.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} resolves to no address",
            url.host
        )));
    }
    Ok(addrs)
}

/// The first [`MAX_ADDRESSES`] distinct addresses, in the resolver's order.
fn distinct(addrs: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !out.contains(&a) && out.len() < MAX_ADDRESSES {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_local_names_resolve_and_others_are_left_for_later() {
        let url = UpstreamUrl::parse("http://127.0.0.1:18081").unwrap();
        assert_eq!(resolve(&url).unwrap(), vec!["127.0.0.1:18081".parse().unwrap()]);
        let url = UpstreamUrl::parse("http://localhost:1").unwrap();
        assert!(resolve(&url).unwrap().iter().all(|a| a.ip().is_loopback()));
        let urls = [
            UpstreamUrl::parse("http://no-such-host.invalid:1").unwrap(),
            UpstreamUrl::parse("http://[::1]:2").unwrap(),
        ];
        let (seed, unresolved) = at_start(&urls);
        assert_eq!(seed, vec![vec![], vec!["[::1]:2".parse().unwrap()]]);
        assert_eq!(unresolved.len(), 1);
        assert_eq!(unresolved[0].host, "no-such-host.invalid");
        let warning = unresolved[0].warning(Duration::from_secs(30));
        assert!(
            warning.starts_with("upstream: cannot resolve no-such-host.invalid now (")
                && warning.ends_with("every upstream.resolve_interval (30s)"),
            "{warning}"
        );
    }

    #[tokio::test]
    async fn the_async_resolver_agrees() {
        let url = UpstreamUrl::parse("http://localhost:1").unwrap();
        assert_eq!(System.lookup(&url).await.unwrap(), resolve(&url).unwrap());
    }
}
