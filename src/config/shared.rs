//! `[shared]`: the Redis (or Valkey) that several replicas share state through.

use std::time::Duration;

use serde::Deserialize;

use super::units::de_duration;
use super::{err, ConfigError};

/// The least secret `shared.encryption_key_env` may hold.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSection {
    /// `redis://[user:pass@]host:port/db` or `rediss://` (TLS).
    pub url: String,
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
}

fn default_prefix() -> String {
    "cardgate:".into()
}
fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

impl SharedSection {
    /// Check the section; `gigma`: the dialect keeps sessions here, so a key is needed.
    pub fn validate(&self, gigma: bool, problems: &mut Vec<ConfigError>) {
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            problems.push(err("shared.url", "must start with redis:// or rediss://"));
        } else if redis::Client::open(self.url.as_str()).is_err() {
            problems.push(err("shared.url", "is not a valid Redis URL"));
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'*')
        {
            problems.push(err("shared.key_prefix", "must be non-empty, without spaces or *"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            problems.push(err("shared.timeout", "must be between 1ms and 5s"));
        }
        if self.cards || gigma || self.encryption_key_env.is_some() {
            problems.extend(self.secret().err());
        }
    }

    /// The encryption secret from the environment.
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        let key = "shared.encryption_key_env";
        let var = self
            .encryption_key_env
            .as_deref()
            .ok_or_else(|| err(key, "is required with shared.cards or the gigma dialect"))?;
        match std::env::var(var) {
            Ok(v) if v.len() >= MIN_KEY_BYTES => Ok(v.into_bytes()),
            Ok(_) => Err(err(
                key,
                format!("{var} must hold at least {MIN_KEY_BYTES} bytes"),
            )),
            Err(_) => Err(err(key, format!("{var} is not set"))),
        }
    }
}
