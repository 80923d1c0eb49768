//! TLS on the chat-server listener: certificate, key, client CA and its revocation lists
//! read from PEM files, checked where they are configured, and swapped in place on a
//! reload; the versions and cipher suites the listener speaks.
//!
//! The listener does the handshakes ([`crate::edge::opening`]) with the rustls
//! `ServerConfig` in force, [`Tls::config`]. That config is built by [`server_config`] from
//! what [`load`] read — certificate, client check ([`verify`]: CA, CRLs, names), versions
//! and suites ([`policy`]), ALPN `http/1.1` — and rebuilt on a reload, so that new
//! handshakes see the new material and open connections keep theirs. A bad new file keeps
//! the old material. The certificate request names the client CA's subjects, so that a
//! client with several certificates sends the right one. A refused client certificate ends
//! the handshake and is counted by reason (`cardgate_tls_client_refused_total{reason}`);
//! after a handshake the connection knows its TLS version and the name its client
//! certificate was taken for ([`names`]), for the access log. The files are read by
//! [`files`].

// Input from the chat server or the CRM reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnection, WantsServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ConfigBuilder, ServerConfig, WantsVerifier};

use crate::config::TlsSection;
use crate::metrics::Metrics;

mod files;
mod names;
pub mod policy;
mod verify;

use files::days_left;
pub use files::{certs, key_pair, private_key, roots};
use policy::Policy;
use verify::ClientCheck;
pub use verify::CLIENT_REFUSALS;

/// The files and settings of `[server.tls]`, read and checked.
pub struct Material {
    key: Arc<CertifiedKey>,
    client: Option<ClientCheck>,
    /// A `ServerConfig` begun with the versions and suites of `[server.tls]`.
    versions: ConfigBuilder<ServerConfig, WantsVerifier>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

impl Material {
    /// Days until the leaf expires (a warning is due when few are left).
    pub fn days_left(&self) -> i64 {
        days_left(self.not_after)
    }
}

/// Read and check the files and settings; errors name the key.
pub fn load(cfg: &TlsSection) -> Result<Material, String> {
    let (certified, not_after) = key_pair(
        ("server.tls.cert_file", &cfg.cert_file),
        ("server.tls.key_file", &cfg.key_file),
    )?;
    let policy = Policy::of(cfg.min_version, &cfg.cipher_suites, &policy::SERVER)?;
    let versions = ServerConfig::builder_with_provider(policy.provider.clone())
        .with_protocol_versions(&policy.versions)
        .map_err(|e| format!("server.tls.cipher_suites: {e}"))?;
    let client = ClientCheck::load(cfg, &policy.provider)?;
    Ok(Material {
        key: Arc::new(certified),
        client,
        versions,
        not_after,
    })
}

/// `cardgate_tls_certificate_expiry_seconds{listener="chat"}`, registered: it exists only
/// where there is a TLS listener (a 0 would read as long expired).
// Built once from a constant name and help text: registering cannot fail.
#[allow(clippy::expect_used)]
fn expiry_gauge(metrics: &Metrics) -> IntGauge {
    let gauge = IntGaugeVec::new(
        Opts::new(
            "cardgate_tls_certificate_expiry_seconds",
            "notAfter of the certificate a TLS listener serves, Unix time",
        ),
        &["listener"],
    )
    .expect("metric");
    metrics.register(Box::new(gauge.clone()));
    gauge.with_label_values(&["chat"])
}

/// The live TLS state of the chat-server listener.
pub struct Tls {
    live: ArcSwap<Live>,
    mutual: bool,
    refused: IntCounterVec,
    /// `cardgate_tls_certificate_expiry_seconds` of this listener.
    expiry: IntGauge,
}

/// What new handshakes get: the `ServerConfig`, and the names a client certificate is
/// taken for.
struct Live {
    config: Arc<ServerConfig>,
    names: Vec<String>,
}

impl Live {
    fn of(material: Material, refused: &IntCounterVec) -> Live {
        Live {
            config: Arc::new(server_config(&material, refused)),
            names: material.client.map(|c| c.names).unwrap_or_default(),
        }
    }
}

/// The listener's rustls `ServerConfig` for `material`: the versions and suites of
/// `[server.tls]`, its certificate, its client check (counting refusals in `refused`),
/// ALPN `http/1.1`.
pub fn server_config(material: &Material, refused: &IntCounterVec) -> ServerConfig {
    let builder: ConfigBuilder<ServerConfig, WantsServerCert> = match &material.client {
        Some(client) => material
            .versions
            .clone()
            .with_client_cert_verifier(client.verifier(refused.clone())),
        None => material.versions.clone().with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(material.key.clone())));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

impl Tls {
    pub fn new(material: Material, metrics: &Metrics) -> Arc<Self> {
        let refused = metrics.tls_client_refused.clone();
        let expiry = expiry_gauge(metrics);
        expiry.set(material.not_after);
        Arc::new(Tls {
            mutual: material.client.is_some(),
            live: ArcSwap::from_pointee(Live::of(material, &refused)),
            refused,
            expiry,
        })
    }

    /// Whether `material` can be put in force: whether client certificates are asked
    /// for at all is fixed at start.
    pub fn check(&self, material: &Material) -> Result<(), String> {
        if self.mutual == material.client.is_some() {
            Ok(())
        } else {
            Err("server.tls.client_ca_file: turning mutual TLS on or off needs a restart".into())
        }
    }

    /// Put material that passed [`Tls::check`] in force for the next handshakes.
    pub fn put(&self, material: Material) {
        self.expiry.set(material.not_after);
        self.live.store(Arc::new(Live::of(material, &self.refused)));
    }

    /// The `ServerConfig` of the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.live.load().config.clone()
    }

    /// The name a client certificate was taken for (see [`names`]).
    pub fn client_name(&self, der: &[u8]) -> Option<String> {
        names::identity(der, &self.live.load().names)
    }

    /// What a connection whose handshake is done tells the access log.
    pub fn handshake(&self, conn: &ServerConnection) -> Handshake {
        Handshake {
            version: conn.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS"),
            client: conn
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| self.client_name(leaf)),
        }
    }
}

/// The one certificate of the listener.
struct Fixed(Arc<CertifiedKey>);

impl fmt::Debug for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fixed")
    }
}

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What a finished handshake tells the access log.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub version: &'static str,
    /// The name the client certificate was taken for (mutual TLS).
    pub client: Option<String>,
}
