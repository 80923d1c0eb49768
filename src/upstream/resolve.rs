//! Where the internal system is: each configured URL's host resolved to its addresses,
//! every one a node.
//!
//! At startup (and by `cardgate check`) the host is resolved once, blocking, before
//! anything serves; a name that resolves to nothing stops the start. Later resolutions
//! run on the health service's runtime through tokio's resolver (its blocking pool),
//! never on a worker thread serving a request.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::{ConfigError, UpstreamUrl};

/// The most addresses one URL contributes as nodes.
pub const MAX_ADDRESSES: usize = 16;

/// Every address `url`'s host resolves to now (blocking), at most [`MAX_ADDRESSES`].
pub fn resolve(url: &UpstreamUrl) -> Result<Vec<SocketAddr>, ConfigError> {
    let failed = |why: String| ConfigError(format!("upstream.url: {why}"));
    let addrs = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| failed(format!("cannot resolve {}: {e}", url.host)))?;
    let addrs = distinct(addrs);
    if addrs.is_empty() {
        return Err(failed(format!("{} resolves to no address", url.host)));
    }
    Ok(addrs)
}

/// Every address `url`'s host resolves to now, through tokio's resolver.
pub async fn lookup(url: &UpstreamUrl) -> std::io::Result<Vec<SocketAddr>> {
    let addrs = distinct(tokio::net::lookup_host((url.host.as_str(), url.port)).await?);
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
    fn literal_and_local_names_resolve() {
        let url = UpstreamUrl::parse("http://127.0.0.1:18081").unwrap();
        assert_eq!(resolve(&url).unwrap(), vec!["127.0.0.1:18081".parse().unwrap()]);
        let url = UpstreamUrl::parse("http://localhost:1").unwrap();
        assert!(resolve(&url).unwrap().iter().all(|a| a.ip().is_loopback()));
        let url = UpstreamUrl::parse("http://no-such-host.invalid:1").unwrap();
        assert!(resolve(&url).unwrap_err().0.starts_with("upstream.url: "));
    }

    #[tokio::test]
    async fn the_async_resolver_agrees() {
        let url = UpstreamUrl::parse("http://localhost:1").unwrap();
        assert_eq!(lookup(&url).await.unwrap(), resolve(&url).unwrap());
    }
}
