//! `[upstream]`: the internal system, its URL, its dialect and the dialects' settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::credentials;
use super::tls::TlsVersion;
use super::units::{de_duration, de_opt_duration, de_size};
use super::{err, ConfigError};

mod tls;
mod url;

pub use url::UpstreamUrl;

/// The most `upstream.urls` (each may resolve to several nodes).
pub const MAX_URLS: usize = 16;

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
    /// Base URL of the internal system (one node), `http://` or `https://`.
    #[serde(default)]
    pub url: String,
    /// Base URLs of several nodes, all `http://` or all `https://` (instead of `url`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// How often the nodes' host names are resolved again.
    #[serde(default = "default_resolve_interval", deserialize_with = "de_duration")]
    pub resolve_interval: Duration,
    /// Active health checks of every node.
    #[serde(default)]
    pub health: HealthSection,
    /// Consecutive transport failures or timeouts that take a node out (0: never).
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// How long an ejected node stays out at first; doubled while it keeps failing.
    #[serde(default = "default_eject_for", deserialize_with = "de_duration")]
    pub eject_for: Duration,
    /// Further nodes a failed idempotent call is sent to within `timeout`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// A card lookup not answered after this is also sent to a second node (off if unset).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub hedge_after: Option<Duration>,
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
    /// The lowest TLS version spoken to the internal system (https only; unset: 1.2).
    #[serde(default)]
    pub tls_min_version: Option<TlsVersion>,
    /// The cipher suites offered to the internal system, by their rustls names, in order
    /// (https only; empty: rustls' own).
    #[serde(default)]
    pub tls_cipher_suites: Vec<String>,
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

/// `[upstream.health]`: active checks. Without `path` a check is a TCP connect (and the
/// TLS handshake, for https); with it, `GET path` must answer 2xx or 3xx.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub path: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive passed checks that bring a node back.
    pub healthy_after: usize,
    /// Consecutive failed checks that take a node out.
    pub unhealthy_after: usize,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            path: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }
}

impl HealthSection {
    fn validate(&self, problems: &mut Vec<ConfigError>) {
        if let Some(path) = &self.path {
            if !path.starts_with('/') || http::uri::PathAndQuery::from_maybe_shared(path.clone()).is_err() {
                problems.push(err(
                    "upstream.health.path",
                    format!("{path:?} must be a path starting with /"),
                ));
            }
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            problems.push(err(
                "upstream.health",
                "interval and timeout must be greater than 0",
            ));
        }
        if self.timeout > self.interval {
            problems.push(err(
                "upstream.health.timeout",
                "must not exceed upstream.health.interval",
            ));
        }
        if self.healthy_after == 0 || self.unhealthy_after == 0 {
            problems.push(err(
                "upstream.health",
                "healthy_after and unhealthy_after must be at least 1",
            ));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GigmaSection {
    /// Environment variable holding the application token (header `Token` on every call);
    /// [`DEFAULT_APP_TOKEN_ENV`] when neither it nor `app_token_file` is given.
    pub app_token_env: Option<String>,
    /// The same token from a file (a relative name is looked up in
    /// `$CREDENTIALS_DIRECTORY` first).
    pub app_token_file: Option<PathBuf>,
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

/// The variable the gigma application token is read from when no key names its source.
pub const DEFAULT_APP_TOKEN_ENV: &str = "GIGMA_APP_TOKEN";

impl Default for GigmaSection {
    fn default() -> Self {
        GigmaSection {
            app_token_env: None,
            app_token_file: None,
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
fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_eject_after() -> u32 {
    5
}
fn default_eject_for() -> Duration {
    Duration::from_secs(10)
}
fn default_retries() -> u32 {
    1
}
fn default_pool_size() -> usize {
    128
}
fn default_max_response() -> u64 {
    1024 * 1024
}

impl UpstreamSection {
    /// The parsed `url`, or every one of `urls`.
    pub fn parsed_urls(&self) -> Result<Vec<UpstreamUrl>, ConfigError> {
        match (self.url.is_empty(), self.urls.is_empty()) {
            (true, true) => Err(err(
                "upstream.url",
                "is required (the base URL of the internal system; or upstream.urls for several nodes)",
            )),
            (false, false) => Err(err(
                "upstream.urls",
                "give either upstream.url or upstream.urls, not both",
            )),
            (false, true) => Ok(vec![UpstreamUrl::parse(&self.url)?]),
            (true, false) => {
                if self.urls.len() > MAX_URLS {
                    return Err(err("upstream.urls", format!("at most {MAX_URLS} URLs")));
                }
                let urls = self
                    .urls
                    .iter()
                    .enumerate()
                    .map(|(i, u)| UpstreamUrl::parse_as(u, &format!("upstream.urls[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if urls.iter().any(|u| u.tls != urls[0].tls) {
                    return Err(err("upstream.urls", "must all be http:// or all https://"));
                }
                for (i, u) in urls.iter().enumerate() {
                    if urls[..i].iter().any(|v| (&v.host, v.port) == (&u.host, u.port)) {
                        return Err(err(
                            &format!("upstream.urls[{i}]"),
                            "names a host and port listed before",
                        ));
                    }
                }
                Ok(urls)
            }
        }
    }

    /// Check the section: every problem goes to `problems`.
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        // Without valid URLs it is not known whether the TLS keys apply (their files are
        // still checked).
        let tls = self
            .parsed_urls()
            .map_err(|e| problems.push(e))
            .ok()
            .map(|u| u[0].tls);
        self.health.validate(problems);
        if self.resolve_interval < Duration::from_millis(100) {
            problems.push(err("upstream.resolve_interval", "must be at least 100ms"));
        }
        if self.eject_for.is_zero() {
            problems.push(err("upstream.eject_for", "must be greater than 0"));
        }
        if self.retries > 8 {
            problems.push(err("upstream.retries", "must be between 0 and 8"));
        }
        if let Some(h) = self.hedge_after {
            if h.is_zero() || h >= self.timeout {
                problems.push(err(
                    "upstream.hedge_after",
                    "must be greater than 0 and less than upstream.timeout",
                ));
            }
        }
        if self.timeout.is_zero() {
            problems.push(err("upstream.timeout", "must be greater than 0"));
        }
        if self.connect_timeout.is_zero() {
            problems.push(err("upstream.connect_timeout", "must be greater than 0"));
        }
        if self.connect_timeout > self.timeout {
            problems.push(err(
                "upstream.connect_timeout",
                "must not exceed upstream.timeout",
            ));
        }
        if http::HeaderName::from_bytes(self.token_header.as_bytes()).is_err() {
            problems.push(err(
                "upstream.token_header",
                format!("{:?} is not a valid header name", self.token_header),
            ));
        }
        if self.max_inflight == 0 || self.max_inflight > 65536 {
            problems.push(err("upstream.max_inflight", "must be between 1 and 65536"));
        }
        if self.pool_idle_timeout.is_zero() {
            problems.push(err("upstream.pool_idle_timeout", "must be greater than 0"));
        }
        if self.max_response_bytes == 0 {
            problems.push(err("upstream.max_response_bytes", "must be greater than 0"));
        }
        self.validate_tls(tls, problems);
        match self.dialect {
            DialectKind::Gigma => self.gigma.validate(problems),
            DialectKind::Bearer => {
                if !self.bearer.path.starts_with('/') {
                    problems.push(err("upstream.bearer.path", "must start with /"));
                }
            }
            DialectKind::Iq => {}
        }
    }
}

impl GigmaSection {
    fn validate(&self, problems: &mut Vec<ConfigError>) {
        problems.extend(self.app_token().err());
        if self.step_ttl.is_zero() || self.session_ttl.is_zero() {
            problems.push(err(
                "upstream.gigma",
                "step_ttl and session_ttl must be greater than 0",
            ));
        }
    }

    /// The application token: from `app_token_file`, or the variable `app_token_env` names
    /// (by default [`DEFAULT_APP_TOKEN_ENV`]); a valid header value.
    pub fn app_token(&self) -> Result<String, ConfigError> {
        let env = match (&self.app_token_env, &self.app_token_file) {
            (None, None) => Some(DEFAULT_APP_TOKEN_ENV),
            (env, _) => env.as_deref(),
        };
        let given = credentials::secret("upstream.gigma.app_token", env, self.app_token_file.as_deref(), 1)?;
        let key = if self.app_token_file.is_some() {
            "upstream.gigma.app_token_file"
        } else {
            "upstream.gigma.app_token_env"
        };
        match given {
            Some(v) if !v.trim().is_empty() && http::HeaderValue::from_str(v.trim()).is_ok() => {
                Ok(v.trim().to_string())
            }
            _ => Err(err(
                key,
                "must hold the gigma application token (a valid header value)",
            )),
        }
    }
}
