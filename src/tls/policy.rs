//! What TLS a side of the gateway may speak: its lowest version and its cipher suites, from
//! the configuration, as the rustls crypto provider and protocol versions its configs are
//! built with. The listener (`server.tls.min_version`, `server.tls.cipher_suites`) and the
//! CRM side (`upstream.tls_min_version`, `upstream.tls_cipher_suites`) each have their own.
//!
//! Suites are named as rustls names them (`TLS13_AES_128_GCM_SHA256`,
//! `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`); the names are those of the *ring* provider's
//! suites, and an unknown name, or a suite of a version the side does not speak, is an
//! error naming the key.

// Configuration reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::{ProtocolVersion, SupportedCipherSuite, SupportedProtocolVersion};

use crate::config::TlsVersion;

/// The keys a side's policy comes from, for its errors.
pub struct Keys {
    pub min_version: &'static str,
    pub cipher_suites: &'static str,
}

/// The listener's keys.
pub const SERVER: Keys = Keys {
    min_version: "server.tls.min_version",
    cipher_suites: "server.tls.cipher_suites",
};

/// The CRM side's keys.
pub const UPSTREAM: Keys = Keys {
    min_version: "upstream.tls_min_version",
    cipher_suites: "upstream.tls_cipher_suites",
};

/// A side's TLS versions and the provider that carries its suites.
#[derive(Debug, Clone)]
pub struct Policy {
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub provider: Arc<CryptoProvider>,
}

impl Policy {
    /// The policy of `min` and `suites` (empty: every suite of the provider), checked.
    pub fn of(min: TlsVersion, suites: &[String], keys: &Keys) -> Result<Policy, String> {
        let versions: Vec<&'static SupportedProtocolVersion> = match min {
            TlsVersion::V1_2 => vec![&rustls::version::TLS12, &rustls::version::TLS13],
            TlsVersion::V1_3 => vec![&rustls::version::TLS13],
        };
        let mut provider = ring::default_provider();
        if !suites.is_empty() {
            provider.cipher_suites = chosen(suites, &versions, keys)?;
        }
        Ok(Policy {
            versions,
            provider: Arc::new(provider),
        })
    }
}

/// The suites named, in their order; each must be known and of a version in use.
fn chosen(
    names: &[String],
    versions: &[&'static SupportedProtocolVersion],
    keys: &Keys,
) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut suites = Vec::with_capacity(names.len());
    for name in names {
        let suite = ring::ALL_CIPHER_SUITES
            .iter()
            .find(|s| s.suite().as_str() == Some(name.as_str()))
            .ok_or_else(|| {
                format!(
                    "{}: unknown cipher suite {name:?} (known: {})",
                    keys.cipher_suites,
                    known().join(", ")
                )
            })?;
        if !versions.iter().any(|v| v.version == suite.version().version) {
            return Err(format!(
                "{}: {name} is a {} suite, below {}",
                keys.cipher_suites,
                version_name(suite.version().version),
                keys.min_version
            ));
        }
        if !suites.contains(suite) {
            suites.push(*suite);
        }
    }
    Ok(suites)
}

/// The names of every suite there is to choose from.
pub fn known() -> Vec<&'static str> {
    ring::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| s.suite().as_str())
        .collect()
}

fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_3 => "TLS 1.3",
        _ => "TLS 1.2",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn suites_are_taken_by_their_rustls_names_in_order() {
        let p = Policy::of(
            TlsVersion::V1_2,
            &names(&[
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS13_AES_128_GCM_SHA256",
            ]),
            &SERVER,
        )
        .unwrap();
        let got: Vec<_> = p.provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            got,
            [
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
        );
        assert_eq!(p.versions.len(), 2);
        let all = Policy::of(TlsVersion::V1_3, &[], &UPSTREAM).unwrap();
        assert_eq!(all.versions, [&rustls::version::TLS13]);
        assert_eq!(all.provider.cipher_suites.len(), ring::ALL_CIPHER_SUITES.len());
    }

    #[test]
    fn an_unknown_name_or_a_suite_below_the_minimum_names_the_key() {
        let e = Policy::of(TlsVersion::V1_2, &names(&["TLS_RSA_WITH_RC4_128_MD5"]), &UPSTREAM).unwrap_err();
        assert!(
            e.starts_with("upstream.tls_cipher_suites: unknown cipher suite \"TLS_RSA_WITH_RC4_128_MD5\""),
            "{e}"
        );
        assert!(e.contains("TLS13_AES_128_GCM_SHA256"), "{e}");
        let e = Policy::of(
            TlsVersion::V1_3,
            &names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
            &SERVER,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "server.tls.cipher_suites: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is a TLS 1.2 suite, \
             below server.tls.min_version"
        );
    }
}
