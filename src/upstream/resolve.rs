//! Where the internal system is: its configured URL resolved to a socket address.
//!
//! Resolution happens here, on the upstream side, once when the gateway is built (and by
//! `cardgate check`, the same way), never on a request's path.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::{ConfigError, UpstreamUrl};

/// The first address `url`'s host resolves to.
pub fn resolve(url: &UpstreamUrl) -> Result<SocketAddr, ConfigError> {
    let failed = |why: String| ConfigError(format!("upstream.url: {why}"));
    (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| failed(format!("cannot resolve {}: {e}", url.host)))?
        .next()
        .ok_or_else(|| failed(format!("{} resolves to no address", url.host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_local_names_resolve() {
        let url = UpstreamUrl::parse("http://127.0.0.1:18081").unwrap();
        assert_eq!(resolve(&url).unwrap(), "127.0.0.1:18081".parse().unwrap());
        let url = UpstreamUrl::parse("http://localhost:1").unwrap();
        assert!(resolve(&url).unwrap().ip().is_loopback());
        let url = UpstreamUrl::parse("http://no-such-host.invalid:1").unwrap();
        assert!(resolve(&url).unwrap_err().0.starts_with("upstream.url: "));
    }
}
