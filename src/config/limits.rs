//! `[limits]` on what the chat server may send.

use serde::Deserialize;

use std::time::Duration;

use super::units::{de_duration, de_rate, de_size, Rate};
use super::{err, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_token_bytes: usize,
    #[serde(deserialize_with = "de_size")]
    pub max_body_bytes: u64,
    /// Request line plus header fields.
    #[serde(deserialize_with = "de_size")]
    pub max_head_bytes: u64,
    /// Chat-server connections open at once; beyond it new ones are closed at accept.
    pub max_connections: usize,
    /// Requests per source address (off when absent), e.g. `"500/s"`: over it, 429
    /// `RATE_LIMITED` without a CRM call.
    #[serde(deserialize_with = "de_rate")]
    pub rate_per_source: Option<Rate>,
    /// Requests a source may send at once above its rate (default: one second's worth).
    pub rate_burst: Option<u32>,
    /// "Client not found" answers one source may collect per minute (off when absent);
    /// beyond it the source gets 429 `TOO_MANY_UNKNOWN_TOKENS` for the cooldown.
    pub max_unknown_tokens_per_minute: Option<u32>,
    #[serde(deserialize_with = "de_duration")]
    pub unknown_tokens_cooldown: Duration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_token_bytes: 4096,
            max_body_bytes: 16 * 1024,
            max_head_bytes: 32 * 1024,
            max_connections: 10_000,
            rate_per_source: None,
            rate_burst: None,
            max_unknown_tokens_per_minute: None,
            unknown_tokens_cooldown: Duration::from_secs(60),
        }
    }
}

impl LimitsSection {
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        if self.max_token_bytes == 0 || self.max_token_bytes > 64 * 1024 {
            problems.push(err("limits.max_token_bytes", "must be between 1 and 65536"));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 16 * 1024 * 1024 {
            problems.push(err("limits.max_body_bytes", "must be between 1 byte and 16MiB"));
        }
        // A token within its limit must fit in the request line even percent-encoded.
        let least_head = (self.max_token_bytes as u64)
            .saturating_mul(3)
            .saturating_add(1024);
        if self.max_head_bytes < least_head || self.max_head_bytes > 1024 * 1024 {
            problems.push(err(
                "limits.max_head_bytes",
                format!("must be between {least_head} bytes (3 x limits.max_token_bytes + 1KiB) and 1MiB"),
            ));
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            problems.push(err("limits.max_connections", "must be between 1 and 1000000"));
        }
        if self.rate_burst == Some(0) {
            problems.push(err("limits.rate_burst", "must be at least 1"));
        }
        if self.rate_burst.is_some() && self.rate_per_source.is_none() {
            problems.push(err("limits.rate_burst", "needs limits.rate_per_source"));
        }
        if self.max_unknown_tokens_per_minute == Some(0) {
            problems.push(err("limits.max_unknown_tokens_per_minute", "must be at least 1"));
        }
        if self.unknown_tokens_cooldown.is_zero()
            || self.unknown_tokens_cooldown > Duration::from_secs(24 * 3600)
        {
            problems.push(err(
                "limits.unknown_tokens_cooldown",
                "must be greater than 0 and at most 24h",
            ));
        }
    }
}
