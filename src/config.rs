//! Typed configuration: one TOML file, validated at start.
//!
//! Every key has a default except `upstream.url`. Unknown keys and bad values are errors
//! that name the offending key (`upstream.timeout: invalid duration ...`). Durations are
//! written like `"300ms"`, `"2s"`, `"10m"`; sizes like `"16KiB"`, `"256MiB"` (or a plain
//! integer of bytes). Secrets are never read from this file: keys that need one name an
//! environment variable instead.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A configuration mistake, with the key it concerns when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub search: SearchSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Chat-server-facing listener.
    pub listen: String,
    /// Worker threads of the gateway service.
    pub threads: usize,
    /// On SIGTERM: stop accepting, finish in-flight requests, exit within this.
    #[serde(deserialize_with = "de_duration")]
    pub grace_period: Duration,
    /// Unix socket used to hand listening sockets to a new process (zero-downtime upgrade).
    /// Empty: derived from the listen port, so instances on one machine do not collide.
    pub upgrade_sock: String,
    /// How long an idle keep-alive connection is kept open.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_timeout: Duration,
    /// A request must arrive whole, and its answer be taken, within this once it started.
    #[serde(deserialize_with = "de_duration")]
    pub client_timeout: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            threads: 2,
            grace_period: Duration::from_secs(5),
            upgrade_sock: String::new(),
            keepalive_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Metrics, health, readiness and cache administration. Loopback by default.
    pub listen: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

/// The internal system's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
    pub const ALL: [DialectKind; 3] = [DialectKind::Iq, DialectKind::Gigma, DialectKind::Bearer];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

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

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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
fn default_pool_size() -> usize {
    128
}
fn default_max_response() -> u64 {
    1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// How long a card answers without asking the CRM. "0s" disables caching.
    #[serde(deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// How long a "client not found" answer is remembered.
    #[serde(deserialize_with = "de_duration")]
    pub negative_ttl: Duration,
    /// How long past its TTL a card may still be served while the CRM fails.
    #[serde(deserialize_with = "de_duration")]
    pub stale_if_error: Duration,
    /// Memory bound: bytes of stored answers plus per-entry overhead.
    #[serde(deserialize_with = "de_size")]
    pub max_size: u64,
    /// Name of an environment variable with a secret for the token hash, so that several
    /// instances agree on keys and fingerprints. Unset: a random key per process.
    pub hash_key_env: Option<String>,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            max_size: 256 * 1024 * 1024,
            hash_key_env: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_token_bytes: usize,
    #[serde(deserialize_with = "de_size")]
    pub max_body_bytes: u64,
    /// Request line plus header fields.
    #[serde(deserialize_with = "de_size")]
    pub max_head_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_token_bytes: 4096,
            max_body_bytes: 16 * 1024,
            max_head_bytes: 32 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// One JSON line per request on stdout.
    pub access: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { access: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    /// Failed answers one search step may collect before further attempts get 429.
    pub max_attempts: u32,
    /// First steps (no stepId) per client identifier per hour.
    pub max_starts_per_hour: u32,
    /// How long the guard remembers a step (its validator and failed attempts).
    #[serde(deserialize_with = "de_duration")]
    pub step_ttl: Duration,
    /// Steps and identifiers tracked at most (each a few hundred bytes).
    pub max_tracked: u64,
    /// Fetch the card of a token a search ends with, so the next Auth API call is a hit.
    pub prewarm: bool,
}

impl Default for SearchSection {
    fn default() -> Self {
        SearchSection {
            max_attempts: 5,
            max_starts_per_hour: 10,
            step_ttl: Duration::from_secs(600),
            max_tracked: 100_000,
            prewarm: true,
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write e.g. \"300ms\", \"2s\", \"10m\""
        ))
    })
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                de::Error::custom(format!(
                    "invalid size {s:?} ({e}); write e.g. \"16KiB\", \"256MiB\""
                ))
            }),
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

    pub fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| err("upstream.url", format!("cannot resolve {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| err("upstream.url", format!("{} resolves to no address", self.host)))
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

fn check_listen(key: &str, addr: &str) -> Result<(), ConfigError> {
    addr.parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|e| err(key, format!("{addr:?} is not an address:port ({e})")))
}

impl Config {
    /// Parse and validate a TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_listen("server.listen", &self.server.listen)?;
        check_listen("admin.listen", &self.admin.listen)?;
        if self.server.listen == self.admin.listen {
            return Err(err("admin.listen", "must differ from server.listen"));
        }
        if self.server.threads == 0 || self.server.threads > 256 {
            return Err(err("server.threads", "must be between 1 and 256"));
        }
        if self.server.grace_period > Duration::from_secs(3600) {
            return Err(err("server.grace_period", "must be at most 1h"));
        }
        for (key, d) in [
            ("server.keepalive_timeout", self.server.keepalive_timeout),
            ("server.client_timeout", self.server.client_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(err(key, "must be greater than 0 and at most 1h"));
            }
        }
        let url = UpstreamUrl::parse(&self.upstream.url)?;
        if self.upstream.timeout.is_zero() {
            return Err(err("upstream.timeout", "must be greater than 0"));
        }
        if self.upstream.connect_timeout.is_zero() {
            return Err(err("upstream.connect_timeout", "must be greater than 0"));
        }
        if self.upstream.connect_timeout > self.upstream.timeout {
            return Err(err(
                "upstream.connect_timeout",
                "must not exceed upstream.timeout",
            ));
        }
        if http::HeaderName::from_bytes(self.upstream.token_header.as_bytes()).is_err() {
            return Err(err(
                "upstream.token_header",
                format!("{:?} is not a valid header name", self.upstream.token_header),
            ));
        }
        if self.upstream.max_response_bytes == 0 {
            return Err(err("upstream.max_response_bytes", "must be greater than 0"));
        }
        let tls_keys = [
            ("upstream.ca_file", &self.upstream.ca_file),
            ("upstream.client_cert", &self.upstream.client_cert),
            ("upstream.client_key", &self.upstream.client_key),
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
        if self.upstream.client_cert.is_some() != self.upstream.client_key.is_some() {
            return Err(err(
                "upstream.client_key",
                "client_cert and client_key go together",
            ));
        }
        if self.cache.max_size < 4096 {
            return Err(err("cache.max_size", "must be at least 4KiB"));
        }
        if let Some(var) = &self.cache.hash_key_env {
            match std::env::var(var) {
                Ok(v) if v.len() >= 16 => {}
                Ok(_) => {
                    return Err(err(
                        "cache.hash_key_env",
                        format!("${var} must hold at least 16 bytes"),
                    ))
                }
                Err(_) => {
                    return Err(err(
                        "cache.hash_key_env",
                        format!("environment variable {var} is not set"),
                    ))
                }
            }
        }
        if self.limits.max_token_bytes == 0 || self.limits.max_token_bytes > 64 * 1024 {
            return Err(err("limits.max_token_bytes", "must be between 1 and 65536"));
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_body_bytes > 16 * 1024 * 1024 {
            return Err(err("limits.max_body_bytes", "must be between 1 byte and 16MiB"));
        }
        // A token within its limit must fit in the request line even percent-encoded.
        let least_head = 3 * self.limits.max_token_bytes as u64 + 1024;
        if self.limits.max_head_bytes < least_head || self.limits.max_head_bytes > 1024 * 1024 {
            return Err(err(
                "limits.max_head_bytes",
                format!("must be between {least_head} bytes (3 x limits.max_token_bytes + 1KiB) and 1MiB"),
            ));
        }
        match self.upstream.dialect {
            DialectKind::Gigma => {
                let g = &self.upstream.gigma;
                match std::env::var(&g.app_token_env) {
                    Ok(v) if !v.trim().is_empty() && http::HeaderValue::from_str(&v).is_ok() => {}
                    _ => {
                        return Err(err(
                            "upstream.gigma.app_token_env",
                            format!(
                                "environment variable {} must hold the gigma application token",
                                g.app_token_env
                            ),
                        ))
                    }
                }
                if g.step_ttl.is_zero() || g.session_ttl.is_zero() {
                    return Err(err(
                        "upstream.gigma",
                        "step_ttl and session_ttl must be greater than 0",
                    ));
                }
            }
            DialectKind::Bearer => {
                if !self.upstream.bearer.path.starts_with('/') {
                    return Err(err("upstream.bearer.path", "must start with /"));
                }
            }
            DialectKind::Iq => {}
        }
        if self.search.max_attempts == 0 {
            return Err(err("search.max_attempts", "must be at least 1"));
        }
        if self.search.max_starts_per_hour == 0 {
            return Err(err("search.max_starts_per_hour", "must be at least 1"));
        }
        if self.search.step_ttl.is_zero() {
            return Err(err("search.step_ttl", "must be greater than 0"));
        }
        if self.search.max_tracked == 0 {
            return Err(err("search.max_tracked", "must be at least 1"));
        }
        Ok(())
    }

    pub fn upstream_url(&self) -> UpstreamUrl {
        UpstreamUrl::parse(&self.upstream.url).expect("validated at load")
    }

    /// The upgrade socket path: configured, or derived from the listen port.
    pub fn upgrade_sock(&self) -> String {
        if !self.server.upgrade_sock.is_empty() {
            return self.server.upgrade_sock.clone();
        }
        let port = self
            .server
            .listen
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .unwrap_or(0);
        format!("/tmp/cardgate-{port}.upgrade.sock")
    }
}

/// Turn a toml/serde error into "key.path: message".
fn describe_toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().to_string();
    let span = e.span().unwrap_or(0..0);
    let key = key_at(text, span.start).unwrap_or_default();
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        // The only required key; a missing [upstream] table is reported at another table.
        if field == "upstream" || (key == "upstream" && field == "url") {
            return ConfigError("upstream.url: is required (the base URL of the internal system)".into());
        }
        return ConfigError(format!("{key}.{field}: is required"));
    }
    if key.is_empty() {
        ConfigError(msg)
    } else {
        ConfigError(format!("{key}: {msg}"))
    }
}

/// Reconstruct the dotted key of the TOML line holding byte offset `at`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let mut table = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let end = offset + line.len();
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.split(']').next()) {
            table = name.trim_matches(|c| c == '[' || c == ' ').to_string();
        }
        if at >= offset && at < end {
            if trimmed.starts_with('[') {
                return Some(table);
            }
            let key = trimmed.split('=').next()?.trim();
            if key.is_empty() {
                return Some(table);
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
        offset = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[upstream]\nurl = \"http://127.0.0.1:18081\"\n";

    #[test]
    fn defaults_apply_with_only_the_url() {
        let c = Config::from_toml(MIN).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.upstream.timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.auth_method, AuthMethod::Post);
        assert_eq!(c.cache.max_size, 256 * 1024 * 1024);
        assert_eq!(c.limits.max_body_bytes, 16 * 1024);
    }

    #[test]
    fn missing_url_is_an_error() {
        let e = Config::from_toml("[server]\nthreads = 1\n").unwrap_err();
        assert!(e.0.contains("upstream.url"), "{e}");
        let e = Config::from_toml("[server]\nthreads = 1\n[upstream]\ntimeout = \"1s\"\n").unwrap_err();
        assert!(e.0.starts_with("upstream.url"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "[upstream]\nurl = \"http://x:1\"\ntimeout = \"soon\"\n",
                "upstream.timeout",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\n[cache]\nmax_size = \"lots\"\n",
                "cache.max_size",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\n[cache]\nttl2 = \"1s\"\n",
                "cache",
            ),
            ("[upstream]\nurl = \"ftp://x\"\n", "upstream.url"),
            (
                "[upstream]\nurl = \"http://x:1\"\ndialect = \"soap\"\n",
                "upstream.dialect",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\n[server]\nlisten = \"nowhere\"\n",
                "server.listen",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\ntoken_header = \"bad header\"\n",
                "upstream.token_header",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(text).unwrap_err();
            assert!(e.0.starts_with(key), "expected {key} in {e}");
        }
    }

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

    #[test]
    fn sizes_accept_units_and_integers() {
        let c = Config::from_toml(&format!(
            "{MIN}[limits]\nmax_body_bytes = 2048\n[cache]\nmax_size = \"1MiB\"\n"
        ))
        .unwrap();
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert_eq!(c.cache.max_size, 1024 * 1024);
    }
}
