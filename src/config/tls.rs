//! `[server.tls]`: the chat-server listener over TLS (and mutual TLS), and the TLS versions
//! both sides of the gateway may speak.

use serde::Deserialize;

use super::{err, ConfigError};

/// The lowest TLS version a side accepts (`"1.2"` or `"1.3"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

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
    /// PEM CRLs of the client CAs: a client certificate they revoke is refused.
    #[serde(default)]
    pub crl_files: Vec<String>,
    /// The lowest TLS version a chat-server client may use.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// The cipher suites offered, by their rustls names, in order (empty: rustls' own).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
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
        if !self.crl_files.is_empty() && self.client_ca_file.is_none() {
            problems.push(err("server.tls.crl_files", "needs server.tls.client_ca_file"));
        }
    }
}
