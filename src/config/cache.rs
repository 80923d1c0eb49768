//! `[cache]`: how long cards are kept, and how much memory they may take.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::credentials;
use super::units::{de_duration, de_size};
use super::{err, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// A card requested within this last fraction of its TTL is answered from the cache
    /// and refreshed in the background, once (0 turns it off).
    pub refresh_ahead: f64,
    /// Memory bound: bytes of stored answers plus per-entry overhead.
    #[serde(deserialize_with = "de_size")]
    pub max_size: u64,
    /// Name of an environment variable with a secret for the token hash, so that several
    /// instances agree on keys and fingerprints. Unset: a random key per process.
    pub hash_key_env: Option<String>,
    /// The same secret from a file (a relative name is looked up in
    /// `$CREDENTIALS_DIRECTORY` first).
    pub hash_key_file: Option<PathBuf>,
}

/// Shortest secret accepted for the token hash.
const MIN_HASH_KEY: usize = 16;

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            refresh_ahead: 0.2,
            max_size: 256 * 1024 * 1024,
            hash_key_env: None,
            hash_key_file: None,
        }
    }
}

impl CacheSection {
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        if !(0.0..1.0).contains(&self.refresh_ahead) {
            problems.push(err("cache.refresh_ahead", "must be at least 0 and less than 1"));
        }
        if self.max_size < 4096 {
            problems.push(err("cache.max_size", "must be at least 4KiB"));
        }
        problems.extend(self.hash_key().err());
    }

    /// Whether a secret for the token hash is named.
    pub fn has_hash_key(&self) -> bool {
        self.hash_key_env.is_some() || self.hash_key_file.is_some()
    }

    /// The secret for the token hash, when `hash_key_env` or `hash_key_file` names one.
    pub fn hash_key(&self) -> Result<Option<String>, ConfigError> {
        credentials::secret(
            "cache.hash_key",
            self.hash_key_env.as_deref(),
            self.hash_key_file.as_deref(),
            MIN_HASH_KEY,
        )
    }
}
