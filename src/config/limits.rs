//! `[limits]` on what the chat server may send.

use serde::Deserialize;

use super::units::de_size;
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

impl LimitsSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_token_bytes == 0 || self.max_token_bytes > 64 * 1024 {
            return Err(err("limits.max_token_bytes", "must be between 1 and 65536"));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 16 * 1024 * 1024 {
            return Err(err("limits.max_body_bytes", "must be between 1 byte and 16MiB"));
        }
        // A token within its limit must fit in the request line even percent-encoded.
        let least_head = 3 * self.max_token_bytes as u64 + 1024;
        if self.max_head_bytes < least_head || self.max_head_bytes > 1024 * 1024 {
            return Err(err(
                "limits.max_head_bytes",
                format!("must be between {least_head} bytes (3 x limits.max_token_bytes + 1KiB) and 1MiB"),
            ));
        }
        Ok(())
    }
}
