//! `[shared]`: the Redis (or Valkey) that several replicas share state through: one server
//! (`url`), the master a set of Sentinels names (`sentinels`, `master_name`), or a Redis
//! Cluster (`cluster`); with TLS (`rediss://`) and an ACL user if asked. Secrets never sit
//! in the config itself: a password or key comes from a variable or a file ([`credentials`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::credentials;
use super::units::de_duration;
use super::{err, ConfigError};

/// The least secret `shared.encryption_key_env` (or `_file`) may hold.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSection {
    /// One server: `redis://host:port/db`, or `rediss://` (TLS).
    #[serde(default)]
    pub url: Option<String>,
    /// Sentinels (`host:port`, or `rediss://host:port` for TLS) that name the master.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the master under.
    #[serde(default)]
    pub master_name: Option<String>,
    /// The Sentinels' own password (not the data nodes').
    #[serde(default)]
    pub sentinel_password_env: Option<String>,
    #[serde(default)]
    pub sentinel_password_file: Option<PathBuf>,
    /// Seed nodes of a Redis Cluster (`host:port`, or `rediss://host:port`).
    #[serde(default)]
    pub cluster: Vec<String>,
    /// The ACL user of the data nodes (none: the default user).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS: the CA that signs the Redis servers' certificates (none: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS: this gateway's certificate and key, for servers that ask for one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Put before every key and channel, so several fleets can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// The most a request waits for one Redis command.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// A second-level card cache in Redis.
    #[serde(default)]
    pub cards: bool,
    /// Environment variable holding the secret (32+ bytes) the values are encrypted with.
    #[serde(default)]
    pub encryption_key_env: Option<String>,
    /// The same secret from a file.
    #[serde(default)]
    pub encryption_key_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    "cardgate:".into()
}
fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

/// How the replicas reach Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedMode<'a> {
    /// One server, by URL.
    Single(&'a str),
    /// The master that the Sentinels (their URLs) name `master`.
    Sentinel {
        sentinels: &'a [String],
        master: &'a str,
    },
    /// A Redis Cluster, from its seed nodes.
    Cluster(&'a [String]),
}

/// A `sentinels` or `cluster` entry as a URL: `host:port` is `redis://host:port`.
fn node_url(entry: &str) -> String {
    if entry.contains("://") {
        entry.to_string()
    } else {
        format!("redis://{entry}")
    }
}

/// Check a Redis URL: scheme, syntax, and no secret in it (it would show in process
/// listings, in logs, and to everyone who reads the config).
fn check_url(key: &str, url: &str, node: bool) -> Result<(), ConfigError> {
    let parsed = redis::parse_redis_url(url)
        .filter(|u| matches!(u.scheme(), "redis" | "rediss"))
        .ok_or_else(|| err(key, "must be redis://host:port or rediss://host:port"))?;
    if parsed.password().is_some() {
        return Err(err(
            key,
            "must not hold a password: it would show in process listings and logs; use shared.password_env or shared.password_file",
        ));
    }
    if !parsed.username().is_empty() {
        return Err(err(key, "must not hold a user: use shared.username"));
    }
    if parsed.fragment().is_some() || parsed.query().is_some() {
        return Err(err(
            key,
            "takes no #fragment or ?query: certificates are always verified",
        ));
    }
    if node && !matches!(parsed.path(), "" | "/") {
        return Err(err(key, "names a node, host:port, without a database"));
    }
    if parsed.host_str().is_none_or(str::is_empty) || redis::Client::open(url).is_err() {
        return Err(err(key, "is not a valid Redis address"));
    }
    Ok(())
}

impl SharedSection {
    /// Which of `url`, `sentinels` and `cluster` is given (exactly one must be).
    pub fn mode(&self) -> Result<SharedMode<'_>, ConfigError> {
        match (&self.url, self.sentinels.is_empty(), self.cluster.is_empty()) {
            (Some(url), true, true) => Ok(SharedMode::Single(url)),
            (None, false, true) => {
                let master = self
                    .master_name
                    .as_deref()
                    .ok_or_else(|| err("shared.master_name", "is required with shared.sentinels"))?;
                Ok(SharedMode::Sentinel {
                    sentinels: &self.sentinels,
                    master,
                })
            }
            (None, true, false) => Ok(SharedMode::Cluster(&self.cluster)),
            _ => Err(err(
                "shared",
                "give exactly one of url (one server), sentinels (with master_name) or cluster",
            )),
        }
    }

    /// A `sentinels` or `cluster` entry as a URL.
    pub fn node_url(entry: &str) -> String {
        node_url(entry)
    }

    /// Whether the connections use TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        match self.mode() {
            Ok(SharedMode::Single(url)) => url.starts_with("rediss://"),
            Ok(SharedMode::Sentinel { sentinels: nodes, .. } | SharedMode::Cluster(nodes)) => {
                nodes.first().is_some_and(|n| n.starts_with("rediss://"))
            }
            Err(_) => false,
        }
    }

    /// Check the section; `gigma`: the dialect keeps sessions here, so a key is needed.
    pub fn validate(&self, gigma: bool, problems: &mut Vec<ConfigError>) {
        problems.extend(self.check().err());
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            problems.push(err("shared.timeout", "must be between 1ms and 5s"));
        }
        if self.cards || gigma || self.has_secret() {
            problems.extend(self.secret().err());
        }
    }

    /// The connection settings' first problem: where Redis is, who connects, over what.
    fn check(&self) -> Result<(), ConfigError> {
        match self.mode()? {
            SharedMode::Single(url) => check_url("shared.url", url, false)?,
            SharedMode::Sentinel { sentinels, master } => {
                check_nodes("shared.sentinels", sentinels)?;
                if master.is_empty() || master.bytes().any(|b| b.is_ascii_whitespace()) {
                    return Err(err("shared.master_name", "must be non-empty, without spaces"));
                }
            }
            SharedMode::Cluster(nodes) => check_nodes("shared.cluster", nodes)?,
        }
        if self.sentinels.is_empty() {
            for (key, set) in [
                ("shared.master_name", self.master_name.is_some()),
                (
                    "shared.sentinel_password_env",
                    self.sentinel_password_env.is_some(),
                ),
                (
                    "shared.sentinel_password_file",
                    self.sentinel_password_file.is_some(),
                ),
            ] {
                if set {
                    return Err(err(key, "is for shared.sentinels only"));
                }
            }
        }
        if self
            .username
            .as_deref()
            .is_some_and(|u| u.is_empty() || u.bytes().any(|b| b.is_ascii_whitespace()))
        {
            return Err(err("shared.username", "must be non-empty, without spaces"));
        }
        if self.password()?.is_none() && self.username.is_some() {
            return Err(err(
                "shared.username",
                "needs its password: shared.password_env or shared.password_file",
            ));
        }
        self.sentinel_password()?;
        self.certificates()?;
        // Keys carry a hash tag in braces (`{…}`), so that a cluster keeps the keys of one
        // operation in one slot: the prefix must not hold one of its own.
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || matches!(b, b'*' | b'{' | b'}'))
        {
            return Err(err(
                "shared.key_prefix",
                "must be non-empty, without spaces, *, { or }",
            ));
        }
        Ok(())
    }

    /// The data nodes' password (`password_env` or `password_file`), if one is given.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        credentials::password(
            "shared.password",
            self.password_env.as_deref(),
            self.password_file.as_deref(),
        )
    }

    /// The Sentinels' password, if one is given.
    pub fn sentinel_password(&self) -> Result<Option<String>, ConfigError> {
        credentials::password(
            "shared.sentinel_password",
            self.sentinel_password_env.as_deref(),
            self.sentinel_password_file.as_deref(),
        )
    }

    /// The TLS material beyond the system's roots: None when none is given.
    pub fn certificates(&self) -> Result<Option<redis::TlsCertificates>, ConfigError> {
        let given = self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some();
        if !given {
            return Ok(None);
        }
        if !self.tls() {
            let key = if self.ca_file.is_some() {
                "shared.ca_file"
            } else {
                "shared.client_cert"
            };
            return Err(err(key, "is for TLS connections (rediss://) only"));
        }
        let root_cert = match &self.ca_file {
            Some(path) => Some(credentials::certificates("shared.ca_file", path)?),
            None => None,
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: credentials::certificates("shared.client_cert", cert)?,
                client_key: credentials::private_key("shared.client_key", key)?,
            }),
            (None, None) => None,
            _ => return Err(err("shared.client_cert", "and shared.client_key go together")),
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// Whether an encryption secret is named.
    pub fn has_secret(&self) -> bool {
        self.encryption_key_env.is_some() || self.encryption_key_file.is_some()
    }

    /// The encryption secret, from `encryption_key_env` or `encryption_key_file`.
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        credentials::secret(
            "shared.encryption_key",
            self.encryption_key_env.as_deref(),
            self.encryption_key_file.as_deref(),
            MIN_KEY_BYTES,
        )?
        .map(String::into_bytes)
        .ok_or_else(|| {
            err(
                "shared.encryption_key_env",
                "is required with shared.cards or the gigma dialect (or shared.encryption_key_file)",
            )
        })
    }
}

/// Check a list of nodes: each a valid address, all with TLS or all without.
fn check_nodes(key: &str, nodes: &[String]) -> Result<(), ConfigError> {
    for node in nodes {
        check_url(key, &node_url(node), true)?;
    }
    let tls = |n: &String| n.starts_with("rediss://");
    if nodes.iter().any(tls) && !nodes.iter().all(tls) {
        return Err(err(key, "every node with rediss:// or none"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(lines: &str) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        toml::from_str::<SharedSection>(lines)
            .unwrap()
            .validate(false, &mut problems);
        problems.into_iter().next().map_or(Ok(()), Err)
    }

    #[test]
    fn exactly_one_way_to_redis_and_no_secret_in_a_url() {
        assert!(section("url = \"redis://127.0.0.1:6379/0\"").is_ok());
        assert!(section("cluster = [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]").is_ok());
        assert!(section("sentinels = [\"10.0.0.1:26379\"]\nmaster_name = \"m\"").is_ok());
        let e = section("sentinels = [\"10.0.0.1:26379\"]").unwrap_err();
        assert!(e.0.starts_with("shared.master_name: "), "{e}");
        let e = section("url = \"redis://a:6379\"\ncluster = [\"b:7000\"]").unwrap_err();
        assert!(e.0.contains("exactly one"), "{e}");
        assert!(section("").is_err());
        let e = section("url = \"redis://:hunter2@127.0.0.1:6379/0\"").unwrap_err();
        assert!(e.0.starts_with("shared.url: must not hold a password"), "{e}");
        assert!(!e.0.contains("hunter2"), "{e}");
        let e = section("cluster = [\"rediss://u:hunter2@10.0.0.1:7000\"]").unwrap_err();
        assert!(e.0.starts_with("shared.cluster: must not hold a password"), "{e}");
        let e = section("cluster = [\"rediss://a:7000\", \"b:7000\"]").unwrap_err();
        assert!(e.0.contains("every node"), "{e}");
        let e = section("url = \"redis://a:6379\"\nmaster_name = \"m\"").unwrap_err();
        assert!(e.0.starts_with("shared.master_name: "), "{e}");
        let e = section("url = \"rediss://a:6379/#insecure\"").unwrap_err();
        assert!(e.0.contains("always verified"), "{e}");
        let e = section("url = \"redis://a:6379\"\nca_file = \"/x\"").unwrap_err();
        assert!(e.0.starts_with("shared.ca_file: "), "{e}");
        let e = section("url = \"redis://a:6379\"\nkey_prefix = \"x{y}:\"").unwrap_err();
        assert!(e.0.starts_with("shared.key_prefix: "), "{e}");
        let e = section("url = \"redis://a:6379\"\npassword_env = \"A\"\npassword_file = \"b\"").unwrap_err();
        assert!(e.0.contains("not both"), "{e}");
    }
}
