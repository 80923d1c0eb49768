//! `[search]`: the brute-force guard of the Search client API.

use std::time::Duration;

use serde::Deserialize;

use super::units::{de_duration, de_size};
use super::{err, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    /// Failed answers one search step may collect before further attempts get 429.
    pub max_attempts: u32,
    /// First steps (no stepId) per client identifier per hour.
    pub max_starts_per_hour: u32,
    /// How long the guard remembers a step (its validator and failed attempts).
    #[serde(deserialize_with = "de_duration")]
    pub step_ttl: Duration,
    /// Steps and identifiers tracked at most.
    pub max_tracked: u64,
    /// Memory the tracked steps may take at most (each weighs `guard::STEP_BYTES`).
    #[serde(deserialize_with = "de_size")]
    pub max_memory: u64,
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
            max_memory: 64 * 1024 * 1024,
            prewarm: true,
        }
    }
}

impl SearchSection {
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        if self.max_attempts == 0 {
            problems.push(err("search.max_attempts", "must be at least 1"));
        }
        if self.max_starts_per_hour == 0 {
            problems.push(err("search.max_starts_per_hour", "must be at least 1"));
        }
        if self.step_ttl.is_zero() {
            problems.push(err("search.step_ttl", "must be greater than 0"));
        }
        if self.max_memory < 64 * 1024 {
            problems.push(err("search.max_memory", "must be at least 64KiB"));
        }
        if self.max_tracked == 0 {
            problems.push(err("search.max_tracked", "must be at least 1"));
        }
    }
}
