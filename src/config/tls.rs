//! `[server.tls]`: the chat-server listener over TLS (and mutual TLS).

use serde::Deserialize;

use super::{err, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The TLS listener (beside `server.listen`, which may be "" to turn plain HTTP off).
    pub listen: String,
    /// PEM chain: the leaf first, then intermediates.
    pub cert_file: String,
    /// PEM private key of the leaf.
    pub key_file: String,
    /// PEM CA(s): when set, a client certificate signed by one of them is required.
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// The client certificate must carry one of these names: a SAN DNS name, URI or IP
    /// address; the CN only when the certificate has no SAN (RFC 6125).
    #[serde(default)]
    pub client_names: Vec<String>,
}

impl TlsSection {
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        problems.extend(super::server::check_listen("server.tls.listen", &self.listen).err());
        for (key, path) in [
            ("server.tls.cert_file", &self.cert_file),
            ("server.tls.key_file", &self.key_file),
        ] {
            if path.is_empty() {
                problems.push(err(key, "is required"));
            }
        }
        if !self.client_names.is_empty() && self.client_ca_file.is_none() {
            problems.push(err("server.tls.client_names", "needs server.tls.client_ca_file"));
        }
        if self.client_names.iter().any(|n| n.is_empty()) {
            problems.push(err("server.tls.client_names", "an empty name matches nothing"));
        }
    }
}
