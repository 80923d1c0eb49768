//! Typed configuration: one TOML file, validated at start, one module per section.
//!
//! Every key has a default except `upstream.url`. Unknown keys and bad values are errors
//! that name the offending key by its full path (`upstream.timeout: invalid duration ...`,
//! also inside inline tables), with the line and column where the file says it; a TOML
//! syntax error names its line and column. A file that parses is checked whole: every
//! value that is out of range or at odds with another is reported, one line each; a
//! syntax error, or a value of the wrong type or form, stops the reading where it is. Durations are written like `"300ms"`, `"2s"`,
//! `"10m"`; sizes like `"16KiB"`, `"256MiB"` (or a plain integer of bytes). Secrets are
//! never read from this file: keys that need one name an environment variable (`*_env`) or
//! a file (`*_file`) instead ([`credentials`]).

mod cache;
mod credentials;
mod limits;
mod log;
mod search;
mod server;
mod shared;
mod tls;
mod units;
mod upstream;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use cache::CacheSection;
pub use limits::LimitsSection;
pub use log::{CorrelationSection, LogLevel, LogSection};
pub use search::SearchSection;
pub use server::{AdminSection, ServerSection};
pub use shared::{SharedMode, SharedSection};
pub use tls::{TlsSection, TlsVersion};
pub use units::millis;
#[cfg(test)]
pub use units::Rate;
pub use upstream::{AuthMethod, DialectKind, HealthSection, SearchEncoding, UpstreamSection, UpstreamUrl};

/// A configuration mistake, with the key it concerns when known; several are one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl ConfigError {
    /// Several mistakes as one, a line each; None when there are none.
    pub fn all(problems: Vec<ConfigError>) -> Option<ConfigError> {
        let mut lines: Vec<String> = Vec::with_capacity(problems.len());
        for p in problems {
            if !lines.contains(&p.0) {
                lines.push(p.0);
            }
        }
        (!lines.is_empty()).then(|| ConfigError(lines.join("\n")))
    }

    /// Each line prefixed with `file: `, as every mistake in a file is named.
    pub fn in_file(&self, file: &Path) -> ConfigError {
        let file = file.display();
        ConfigError(
            self.0
                .lines()
                .map(|l| format!("{file}: {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    #[serde(default)]
    pub correlation: CorrelationSection,
    /// Several replicas share state through Redis (absent: a single instance).
    #[serde(default)]
    pub shared: Option<SharedSection>,
}

impl Config {
    /// Parse and validate a TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg = Config::parse(text)?;
        match ConfigError::all(cfg.problems()) {
            None => Ok(cfg),
            Some(e) => Err(e),
        }
    }

    /// Parse a TOML text into its values, without judging them ([`Config::problems`]).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| describe(text, e))
    }

    /// Read, parse and validate a file; every mistake is named with the file's path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_toml(&read(path)?).map_err(|e| e.in_file(path))
    }

    /// Read and parse a file without judging its values.
    pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&read(path)?).map_err(|e| e.in_file(path))
    }

    /// Every value out of range or at odds with another, section by section.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        self.server.validate(&mut problems);
        self.admin.validate(&self.server, &mut problems);
        self.upstream.validate(&mut problems);
        self.cache.validate(&mut problems);
        self.limits.validate(&mut problems);
        self.log.validate(&mut problems);
        self.correlation.validate(&mut problems);
        if let Some(shared) = &self.shared {
            shared.validate(self.upstream.dialect == DialectKind::Gigma, &mut problems);
            if !shared.has_secret() && !self.cache.has_hash_key() {
                problems.push(err(
                    "shared.encryption_key_env",
                    "replicas must agree on the keyed hashes they share: set it or shared.encryption_key_file (or cache.hash_key_env or cache.hash_key_file)",
                ));
            }
        }
        let id = &self.correlation.request_id_header;
        if !id.is_empty() && id.eq_ignore_ascii_case(&self.upstream.token_header) {
            problems.push(err(
                "correlation.request_id_header",
                "must differ from upstream.token_header",
            ));
        }
        self.search.validate(&mut problems);
        problems
    }

    /// Take, from the configuration the process `running` with, every key that only a
    /// restart can change, and name those that this one would have changed. What is left
    /// different can change in place (`SIGHUP`).
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($section:ident . $key:ident),* $(,)?) => {$(
                if self.$section.$key != running.$section.$key {
                    self.$section.$key = running.$section.$key.clone();
                    kept.push(concat!(stringify!($section), ".", stringify!($key)));
                }
            )*};
        }
        keep!(
            server.listen,
            server.threads,
            server.upgrade_sock,
            server.runtime_dir,
            server.proxy_protocol,
            admin.listen,
            upstream.dialect,
            upstream.url,
            upstream.urls,
            upstream.resolve_interval,
            upstream.health,
            upstream.connect_timeout,
            upstream.token_header,
            upstream.auth_method,
            upstream.pool_size,
            upstream.pool_idle_timeout,
            upstream.max_inflight,
            upstream.ca_file,
            upstream.client_cert,
            upstream.client_key,
            upstream.tls_min_version,
            upstream.tls_cipher_suites,
            upstream.search_encoding,
            upstream.gigma,
            upstream.bearer,
            cache.max_size,
            cache.hash_key_env,
            cache.hash_key_file,
            search.step_ttl,
            search.max_tracked,
            search.max_memory,
        );
        if self.shared != running.shared {
            self.shared.clone_from(&running.shared);
            kept.push("shared");
        }
        // TLS material changes in place; whether there is a TLS listener, where it
        // listens and whether it asks for client certificates need a restart.
        let shape =
            |t: &Option<TlsSection>| t.as_ref().map(|t| (t.listen.clone(), t.client_ca_file.is_some()));
        if shape(&self.server.tls) != shape(&running.server.tls) {
            self.server.tls.clone_from(&running.server.tls);
            kept.push("server.tls");
        }
        kept
    }

    /// The sections whose values differ from `other`'s.
    pub fn changed_sections(&self, other: &Config) -> Vec<&'static str> {
        let changed = [
            ("server", self.server != other.server),
            ("admin", self.admin != other.admin),
            ("upstream", self.upstream != other.upstream),
            ("cache", self.cache != other.cache),
            ("limits", self.limits != other.limits),
            ("log", self.log != other.log),
            ("search", self.search != other.search),
            ("correlation", self.correlation != other.correlation),
            ("shared", self.shared != other.shared),
        ];
        changed
            .into_iter()
            .filter(|(_, c)| *c)
            .map(|(name, _)| name)
            .collect()
    }

    /// The parsed `upstream.url`, or each of `upstream.urls`.
    pub fn upstream_urls(&self) -> Result<Vec<UpstreamUrl>, ConfigError> {
        self.upstream.parsed_urls()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))
}

/// A deserialisation error as "key.path: message (line L, column C)".
fn describe(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.message().trim_end().replace('\n', "; ");
    let at = inner
        .span()
        .map(|span| {
            let (line, column) = line_column(text, span.start);
            format!(" (line {line}, column {column})")
        })
        .unwrap_or_default();
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        let key = if path == "." {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return if key == "upstream" || key == "upstream.url" {
            ConfigError("upstream.url: is required (the base URL of the internal system)".into())
        } else {
            ConfigError(format!("{key}: is required"))
        };
    }
    if path == "." {
        // A syntax error, or a value at the top level.
        ConfigError(format!("TOML error{at}: {msg}"))
    } else {
        ConfigError(format!("{path}: {msg}{at}"))
    }
}

/// The 1-based line and column (in characters) of byte offset `at` of `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests;
