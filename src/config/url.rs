//! A base URL of the internal system: `upstream.url`, or each of `upstream.urls`.

use super::{err, ConfigError};

/// A parsed `upstream.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
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
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
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
        let u = UpstreamUrl::parse("http://[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert_eq!(u.authority(), "[::1]");
        assert!(UpstreamUrl::parse("http://h:port").is_err());
    }
}
