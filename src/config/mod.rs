//! Typed configuration: one TOML file, validated at start, one module per section.
//!
//! Every key has a default except `upstream.url`. Unknown keys and bad values are errors
//! that name the offending key by its full path (`upstream.timeout: invalid duration ...`,
//! also inside inline tables), with the line and column where the file says it; a TOML
//! syntax error names its line and column. Durations are written like `"300ms"`, `"2s"`,
//! `"10m"`; sizes like `"16KiB"`, `"256MiB"` (or a plain integer of bytes). Secrets are
//! never read from this file: keys that need one name an environment variable instead.

mod cache;
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
pub use shared::SharedSection;
pub use tls::{TlsSection, TlsVersion};
pub use units::millis;
#[cfg(test)]
pub use units::Rate;
pub use upstream::{AuthMethod, DialectKind, HealthSection, SearchEncoding, UpstreamSection, UpstreamUrl};

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
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| describe(text, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.admin.validate(&self.server)?;
        self.upstream.validate()?;
        self.cache.validate()?;
        self.limits.validate()?;
        self.log.validate()?;
        self.correlation.validate()?;
        if let Some(shared) = &self.shared {
            shared.validate(self.upstream.dialect == DialectKind::Gigma)?;
            if shared.encryption_key_env.is_none() && self.cache.hash_key_env.is_none() {
                return Err(err(
                    "shared.encryption_key_env",
                    "replicas must agree on the keyed hashes they share: set it (or cache.hash_key_env)",
                ));
            }
        }
        let id = &self.correlation.request_id_header;
        if !id.is_empty() && id.eq_ignore_ascii_case(&self.upstream.token_header) {
            return Err(err(
                "correlation.request_id_header",
                "must differ from upstream.token_header",
            ));
        }
        self.search.validate()
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
mod tests {
    use super::*;
    use std::time::Duration;

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
            ("[upstream]\ntimeout = \"1s\"\n", "upstream.url: is required"),
            (
                "[upstream]\nurl = \"http://x:1\"\nurls = [\"http://y:1\"]\n",
                "upstream.urls",
            ),
            (
                "[upstream]\nurls = [\"http://x:1\", \"https://y:1\"]\n",
                "upstream.urls",
            ),
            (
                "[upstream]\nurls = [\"http://x:1\", \"http://x:1/other\"]\n",
                "upstream.urls[1]",
            ),
            (
                "[upstream]\nurls = [\"http://x:1\", \"ftp://y\"]\n",
                "upstream.urls[1]",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\nhedge_after = \"5s\"\n",
                "upstream.hedge_after",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\nhealth = { path = \"health\" }\n",
                "upstream.health.path",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\nhealth = { interval = \"1s\", timeout = \"2s\" }\n",
                "upstream.health.timeout",
            ),
            (
                "[upstream]\nurl = \"http://x:1\"\nretries = 99\n",
                "upstream.retries",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(text).unwrap_err();
            assert!(e.0.starts_with(key), "expected {key} in {e}");
        }
    }

    #[test]
    fn several_urls_with_their_defaults() {
        let c =
            Config::from_toml("[upstream]\nurls = [\"https://a:8443\", \"https://b:8443/api\"]\n").unwrap();
        let urls = c.upstream_urls().unwrap();
        assert_eq!((urls.len(), urls[1].base_path.as_str()), (2, "/api"));
        let u = &c.upstream;
        assert_eq!((u.retries, u.eject_after, u.hedge_after), (1, 5, None));
        assert_eq!(
            (u.eject_for, u.resolve_interval),
            (Duration::from_secs(10), Duration::from_secs(30))
        );
        assert_eq!(
            (
                u.health.interval,
                u.health.healthy_after,
                u.health.unhealthy_after
            ),
            (Duration::from_secs(5), 2, 3)
        );
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

    #[test]
    fn keys_inside_inline_tables_are_named() {
        let e = Config::from_toml("upstream = { url = \"http://x:1\", timeout = \"soon\" }\n").unwrap_err();
        assert!(e.0.starts_with("upstream.timeout: invalid duration"), "{e}");
        assert!(e.0.ends_with("(line 1, column 44)"), "{e}");
        let e = Config::from_toml(&format!("cache = {{ ttl = \"1s\", tll = \"2s\" }}\n{MIN}")).unwrap_err();
        assert!(e.0.starts_with("cache.tll: "), "{e}");
        assert!(e.0.contains("unknown field `tll`"), "{e}");
        let e = Config::from_toml(&format!("{MIN}[server]\nthreads = \"two\"\n")).unwrap_err();
        assert!(e.0.starts_with("server.threads: "), "{e}");
        assert!(e.0.contains("(line 4, column 11)"), "{e}");
    }

    #[test]
    fn proxy_from_without_proxy_protocol_is_refused() {
        let e = Config::from_toml(&format!("{MIN}[server]\nproxy_from = [\"10.0.0.0/8\"]\n")).unwrap_err();
        assert!(e.0.starts_with("server.proxy_from: "), "{e}");
        let ok = format!("{MIN}[server]\nproxy_protocol = true\nproxy_from = [\"10.0.0.0/8\"]\n");
        assert!(Config::from_toml(&ok).is_ok());
    }

    #[test]
    fn a_shared_secret_that_is_named_must_be_there_even_without_cards() {
        let e = Config::from_toml(&format!(
            "{MIN}[shared]\nurl = \"redis://127.0.0.1:6379/0\"\nencryption_key_env = \"CARDGATE_TEST_UNSET_SHARED_KEY\"\n"
        ))
        .unwrap_err();
        assert!(e.0.starts_with("shared.encryption_key_env: "), "{e}");
        assert!(e.0.contains("is not set"), "{e}");
    }

    #[test]
    fn a_reload_keeps_the_running_shared_section_and_names_it() {
        // Parsed only: validating would read the secret's variable.
        let with = |url: &str| {
            toml::from_str::<Config>(&format!(
                "{MIN}[cache]\nttl = \"5s\"\n[shared]\nurl = \"{url}\"\n"
            ))
            .unwrap()
        };
        let running = with("redis://127.0.0.1:6379/0");
        let mut next = with("redis://10.0.0.9:6379/1");
        next.cache.ttl = Duration::from_secs(9);
        assert_eq!(next.keep_restart_only(&running), vec!["shared"]);
        assert_eq!(next.shared, running.shared);
        assert_eq!(next.cache.ttl, Duration::from_secs(9), "the rest changes");
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = Config::from_toml(&format!("{MIN}[cache\nttl = 1\n")).unwrap_err();
        assert!(e.0.starts_with("TOML error (line 3, column 7): "), "{e}");
        let e = Config::from_toml("[upstream]\nurl = \"http://x:1\"\ntimeout = \n").unwrap_err();
        assert!(e.0.starts_with("TOML error (line 3, column 11): "), "{e}");
    }
}
