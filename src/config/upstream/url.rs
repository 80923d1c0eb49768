//! A base URL of the internal system (`upstream.url`, each of `upstream.urls`): scheme,
//! host, port and path prefix.
//!
//! The host is an IP address or a DNS name, checked here so that the only thing left to
//! fail later is the resolution of a name: a host that looks like an address (digits and
//! dots, or brackets) must be a valid one, and a name must be one a resolver can be asked
//! for. A name that does not resolve now is not a config error (see
//! [`crate::upstream::resolve`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::super::{err, ConfigError};

/// A parsed `upstream.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    /// An IP address (IPv6 without its brackets) or a DNS name.
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub base_path: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        Self::parse_as(url, "upstream.url")
    }

    /// Parse `url`, naming `key` in errors.
    pub fn parse_as(url: &str, key: &str) -> Result<Self, ConfigError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(err(key, format!("{url:?} must start with http:// or https://")));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(err(key, format!("{url:?} needs a host (and no user info)")));
        }
        if path.contains('?') || path.contains('#') {
            return Err(err(key, format!("{url:?} must not carry a query or fragment")));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| err(key, format!("{url:?} has an invalid port")))?;
        if let Err(why) = check_host(&host) {
            return Err(err(key, format!("{url:?}: {why}")));
        }
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The host as an address, when it is one (a literal needs no resolver).
    pub fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

/// An IP address, or a DNS name (RFC 1123 labels; `_` too, as internal names have it).
fn check_host(host: &str) -> Result<(), &'static str> {
    if host.contains(':') {
        return host
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| "not a valid IPv6 address");
    }
    // What looks like an address must be one: a resolver would take `10.0.0.256` for a
    // name, fail on it, and the mistake would pass for a DNS outage.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<Ipv4Addr>()
            .map(drop)
            .map_err(|_| "not a valid IPv4 address");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("not a valid host name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = UpstreamUrl::parse("https://crm.lan:8443/api/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (true, "crm.lan", 8443, "/api")
        );
        assert_eq!(u.authority(), "crm.lan:8443");
        assert_eq!(u.literal(), None);
        let u = UpstreamUrl::parse("http://[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert_eq!(u.authority(), "[::1]");
        assert_eq!(u.literal(), Some(IpAddr::from(Ipv6Addr::LOCALHOST)));
        assert!(UpstreamUrl::parse("http://h:port").is_err());
    }

    #[test]
    fn a_host_is_an_address_or_a_name_a_resolver_can_be_asked_for() {
        for good in [
            "http://10.0.0.1:8080",
            "http://[fe80::1]:80",
            "http://crm",
            "http://crm-a.lan.",
            "http://crm_b.internal:81",
            "http://no-such-host.invalid",
        ] {
            assert!(UpstreamUrl::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("http://10.0.0.256:80", "not a valid IPv4 address"),
            ("http://1.2.3:80", "not a valid IPv4 address"),
            ("http://[::zz]:80", "not a valid IPv6 address"),
            ("http://crm lan:80", "not a valid host name"),
            ("http://crm..lan", "not a valid host name"),
            ("http://-crm.lan", "not a valid host name"),
            ("http://crm.l\u{e4}n", "not a valid host name"),
        ] {
            let e = UpstreamUrl::parse(bad).unwrap_err().0;
            assert!(e.starts_with("upstream.url: ") && e.ends_with(why), "{bad}: {e}");
        }
    }
}
