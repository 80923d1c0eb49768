//! `[upstream]`: the internal system, its URL, its dialect and the dialects' settings.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::units::{de_duration, de_size};
use super::{err, ConfigError};

/// The internal system's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DialectKind {
    /// The internal system speaks the Auth and Search APIs itself.
    Iq,
    /// A counterparty API with call-reset password login.
    Gigma,
    /// A token-check endpoint with `Authorization: Bearer`.
    Bearer,
}

impl DialectKind {
    pub fn name(self) -> &'static str {
        match self {
            DialectKind::Iq => "iq",
            DialectKind::Gigma => "gigma",
            DialectKind::Bearer => "bearer",
        }
    }
}

/// How the `iq` dialect asks the CRM for a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `POST {url}/rest/chat/client/id/` with the token in a header (the default).
    Post,
    /// `GET {url}/rest/chat/client/id/{token}` for legacy CRMs only: the token is in the URL.
    Get,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default = "default_dialect")]
    pub dialect: DialectKind,
    /// Base URL of the internal system, `http://` or `https://`.
    pub url: String,
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// The whole upstream exchange.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(default = "default_token_header")]
    pub token_header: String,
    #[serde(default = "default_auth_method")]
    pub auth_method: AuthMethod,
    /// Idle keepalive connections kept to the internal system.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// An idle pooled connection is closed after this.
    #[serde(default = "default_pool_idle_timeout", deserialize_with = "de_duration")]
    pub pool_idle_timeout: Duration,
    /// Calls to the internal system under way at once (and so its connections, at most).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// How long a call waits for one of the `max_inflight` slots before it is shed.
    #[serde(default = "default_queue_timeout", deserialize_with = "de_duration")]
    pub queue_timeout: Duration,
    /// Largest answer body accepted from the internal system.
    #[serde(default = "default_max_response", deserialize_with = "de_size")]
    pub max_response_bytes: u64,
    /// PEM file of the CA that signs the internal system's certificate (https only).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate and key for mutual TLS (https only).
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// iq: how search parameters are sent upstream: "form", "json", or "same" as the chat
    /// server sent them.
    #[serde(default = "default_search_encoding")]
    pub search_encoding: SearchEncoding,
    /// Settings of the `gigma` dialect.
    #[serde(default)]
    pub gigma: GigmaSection,
    /// Settings of the `bearer` dialect.
    #[serde(default)]
    pub bearer: BearerSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GigmaSection {
    /// Environment variable holding the application token (header `Token` on every call).
    pub app_token_env: String,
    /// Text of the first search step; `{phone}` is replaced by the masked number.
    pub answer_text: String,
    /// How long a first step waits for its code.
    #[serde(deserialize_with = "de_duration")]
    pub step_ttl: Duration,
    /// How long a logged-in card answers the Auth API.
    #[serde(deserialize_with = "de_duration")]
    pub session_ttl: Duration,
    /// `client.type` of the cards built from counterparties.
    pub client_type: String,
}

impl Default for GigmaSection {
    fn default() -> Self {
        GigmaSection {
            app_token_env: "GIGMA_APP_TOKEN".into(),
            answer_text: "We are calling {phone}: enter the last 4 digits of the calling number".into(),
            step_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(12 * 3600),
            client_type: "0".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BearerSection {
    /// Path of the token-check endpoint, after the base URL.
    pub path: String,
    /// `client.type` of the cards built from user ids.
    pub client_type: String,
}

impl Default for BearerSection {
    fn default() -> Self {
        BearerSection {
            path: "/v3/security/api/auth/auth".into(),
            client_type: "0".into(),
        }
    }
}

/// Encoding of search parameters sent to the internal system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchEncoding {
    Form,
    Json,
    Same,
}

fn default_search_encoding() -> SearchEncoding {
    SearchEncoding::Same
}

fn default_dialect() -> DialectKind {
    DialectKind::Iq
}
fn default_connect_timeout() -> Duration {
    Duration::from_millis(300)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_token_header() -> String {
    "token".into()
}
fn default_auth_method() -> AuthMethod {
    AuthMethod::Post
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_inflight() -> usize {
    256
}
fn default_queue_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_pool_size() -> usize {
    128
}
fn default_max_response() -> u64 {
    1024 * 1024
}

impl UpstreamSection {
    /// Check the section; `url` is its parsed `url`.
    pub fn validate(&self) -> Result<UpstreamUrl, ConfigError> {
        let url = UpstreamUrl::parse(&self.url)?;
        if self.timeout.is_zero() {
            return Err(err("upstream.timeout", "must be greater than 0"));
        }
        if self.connect_timeout.is_zero() {
            return Err(err("upstream.connect_timeout", "must be greater than 0"));
        }
        if self.connect_timeout > self.timeout {
            return Err(err(
                "upstream.connect_timeout",
                "must not exceed upstream.timeout",
            ));
        }
        if http::HeaderName::from_bytes(self.token_header.as_bytes()).is_err() {
            return Err(err(
                "upstream.token_header",
                format!("{:?} is not a valid header name", self.token_header),
            ));
        }
        if self.max_inflight == 0 || self.max_inflight > 65536 {
            return Err(err("upstream.max_inflight", "must be between 1 and 65536"));
        }
        if self.pool_idle_timeout.is_zero() {
            return Err(err("upstream.pool_idle_timeout", "must be greater than 0"));
        }
        if self.max_response_bytes == 0 {
            return Err(err("upstream.max_response_bytes", "must be greater than 0"));
        }
        let tls_keys = [
            ("upstream.ca_file", &self.ca_file),
            ("upstream.client_cert", &self.client_cert),
            ("upstream.client_key", &self.client_key),
        ];
        for (key, value) in tls_keys {
            if let Some(path) = value {
                if !url.tls {
                    return Err(err(key, "only applies to an https:// upstream.url"));
                }
                if !Path::new(path).is_file() {
                    return Err(err(key, format!("{path:?} is not a readable file")));
                }
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(err(
                "upstream.client_key",
                "client_cert and client_key go together",
            ));
        }
        match self.dialect {
            DialectKind::Gigma => self.gigma.validate()?,
            DialectKind::Bearer => {
                if !self.bearer.path.starts_with('/') {
                    return Err(err("upstream.bearer.path", "must start with /"));
                }
            }
            DialectKind::Iq => {}
        }
        Ok(url)
    }
}

impl GigmaSection {
    fn validate(&self) -> Result<(), ConfigError> {
        match std::env::var(&self.app_token_env) {
            Ok(v) if !v.trim().is_empty() && http::HeaderValue::from_str(&v).is_ok() => {}
            _ => {
                return Err(err(
                    "upstream.gigma.app_token_env",
                    format!(
                        "environment variable {} must hold the gigma application token",
                        self.app_token_env
                    ),
                ))
            }
        }
        if self.step_ttl.is_zero() || self.session_ttl.is_zero() {
            return Err(err(
                "upstream.gigma",
                "step_ttl and session_ttl must be greater than 0",
            ));
        }
        Ok(())
    }
}

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
        let key = "upstream.url";
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
