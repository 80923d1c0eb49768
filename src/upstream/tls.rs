//! TLS to the internal system: the rustls `ClientConfig` of every https node, built from
//! `[upstream]` — the CA (`ca_file`, else the system's trusted CAs), the client certificate
//! (`client_cert`, `client_key`), the lowest version (`tls_min_version`) and the cipher
//! suites (`tls_cipher_suites`), ALPN `http/1.1` — and the connections made with it.
//!
//! Pingora's `TransportConnector` builds its `ClientConfig` itself, always TLS 1.2 and 1.3
//! with the process-wide default suites, and takes none from outside; so [`Connector`]
//! makes the connection as that connector does — the peer's own TCP connect (a node's
//! `plain::TimedTcp`), then Pingora's client handshake — with this config instead. The
//! stream and the errors are Pingora's, as before: the pool, the exchange and
//! [`super::failure`] see no difference.

// Input from the CRM reaches this module: nothing here may panic on it.
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

use pingora::protocols::tls::client::handshake;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error as PError, ErrorType, Result as PResult};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, UpstreamSection};
use crate::tls::policy::{self, Policy};

/// Makes the TLS connections to the nodes (https only).
pub struct Connector {
    tls: Option<TlsConnector>,
}

impl Connector {
    /// The connector of `cfg`: for an https upstream, its `ClientConfig`, built and checked
    /// (every error names its key); for plain http, none.
    pub fn new(cfg: &UpstreamSection, https: bool) -> Result<Connector, ConfigError> {
        if !https {
            return Ok(Connector { tls: None });
        }
        let config = client_config(cfg).map_err(ConfigError)?;
        Ok(Connector {
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// A TLS connection to `peer`: TCP by the peer's own connector, then the handshake
    /// (SNI and the certificate's name: the peer's host). Bounded by the caller.
    pub async fn new_stream(&self, peer: &HttpPeer) -> PResult<Stream> {
        let Some(tls) = &self.tls else {
            return PError::e_explain(ErrorType::ConnectError, "the CRM is not https");
        };
        let Some(tcp) = &peer.options.custom_l4 else {
            return PError::e_explain(ErrorType::ConnectError, "a CRM node connects through its own TCP");
        };
        let mut stream = tcp.connect(peer.address()).await?;
        // Small requests and answers: never wait to coalesce them.
        stream.set_nodelay()?;
        Ok(Box::new(handshake(tls, peer.sni(), stream).await?))
    }
}

/// The `ClientConfig` of `[upstream]`; errors name the key.
fn client_config(cfg: &UpstreamSection) -> Result<ClientConfig, String> {
    let policy = Policy::of(
        cfg.tls_min_version.unwrap_or_default(),
        &cfg.tls_cipher_suites,
        &policy::UPSTREAM,
    )?;
    let roots = match &cfg.ca_file {
        Some(path) => crate::tls::roots(path, "upstream.ca_file")?,
        None => {
            let mut roots = RootCertStore::empty();
            pingora::tls::load_platform_certs_incl_env_into_store(&mut roots)
                .map_err(|e| format!("upstream.ca_file: unset, and the system's CAs do not load: {e}"))?;
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(policy.provider.clone())
        .with_protocol_versions(&policy.versions)
        .map_err(|e| format!("upstream.tls_cipher_suites: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (&cfg.client_cert, &cfg.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err("upstream.client_key: is required with upstream.client_cert".into()),
        (None, Some(_)) => return Err("upstream.client_cert: is required with upstream.client_key".into()),
        (Some(cert), Some(key)) => {
            // Checked first: a key that does not match, an expired certificate.
            crate::tls::key_pair(("upstream.client_cert", cert), ("upstream.client_key", key))?;
            builder
                .with_client_auth_cert(
                    crate::tls::certs(cert, "upstream.client_cert")?,
                    crate::tls::private_key(key, "upstream.client_key")?,
                )
                .map_err(|e| format!("upstream.client_key: {key}: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
