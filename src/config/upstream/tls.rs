//! The TLS keys of `[upstream]`: the CA, the client certificate, the lowest version and
//! the cipher suites spoken to an https internal system. Here they are checked for where
//! they apply and that their files exist; [`crate::upstream::check_tls`] reads them.

use std::path::Path;

use super::super::{err, ConfigError};
use super::UpstreamSection;

impl UpstreamSection {
    /// The TLS keys apply to https:// URLs only (`tls`: whether the URLs are https, None
    /// when they are not valid); the files must exist (they are read by
    /// [`crate::upstream::check_tls`]). Every problem goes to `problems`.
    pub(super) fn validate_tls(&self, tls: Option<bool>, problems: &mut Vec<ConfigError>) {
        let tls_keys = [
            ("upstream.ca_file", &self.ca_file),
            ("upstream.client_cert", &self.client_cert),
            ("upstream.client_key", &self.client_key),
        ];
        for (key, value) in tls_keys {
            if let Some(path) = value {
                if tls == Some(false) {
                    problems.push(err(key, "only applies to an https:// upstream.url"));
                } else if !Path::new(path).is_file() {
                    problems.push(err(key, format!("{path:?} is not a readable file")));
                }
            }
        }
        if tls == Some(false) && self.tls_min_version.is_some() {
            problems.push(err(
                "upstream.tls_min_version",
                "only applies to an https:// upstream.url",
            ));
        }
        if tls == Some(false) && !self.tls_cipher_suites.is_empty() {
            problems.push(err(
                "upstream.tls_cipher_suites",
                "only applies to an https:// upstream.url",
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            problems.push(err(
                "upstream.client_key",
                "client_cert and client_key go together",
            ));
        }
    }
}
