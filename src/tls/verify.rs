//! The check of a chat-server client's certificate (mutual TLS): rustls' WebPKI verifier
//! over the client CA and its revocation lists, then the names the certificate must carry
//! ([`super::names`]). A refusal ends the handshake and is counted by its reason
//! (`cardgate_tls_client_refused_total{reason}`).
//!
//! Revocation is checked as nginx and HAProxy check it with a CRL: for every certificate of
//! the chain below the trust anchor, so that each CA that issues client certificates (an
//! intermediate's issuer too) needs its CRL in `server.tls.crl_files`; a certificate whose
//! status no current CRL gives is refused, and a CRL is current until its nextUpdate.

// Input from the chat server reaches this module: nothing here may panic on it.
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

use prometheus::IntCounterVec;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::files::{crls, roots};
use super::names;
use crate::config::TlsSection;

/// The `reason` label values of refused client certificates.
pub const CLIENT_REFUSALS: [&str; 7] = [
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "revocation_unknown",
    "bad_certificate",
    "name_not_allowed",
];

/// The client CA's check, read from `client_ca_file` and `crl_files`, and the names a
/// client certificate must carry.
pub struct ClientCheck {
    webpki: Arc<dyn ClientCertVerifier>,
    pub names: Vec<String>,
}

impl ClientCheck {
    /// The check `cfg` asks for (`None`: no mutual TLS); errors name the key.
    pub fn load(cfg: &TlsSection, provider: &Arc<CryptoProvider>) -> Result<Option<ClientCheck>, String> {
        let Some(path) = &cfg.client_ca_file else {
            return Ok(None);
        };
        let roots = roots(path, "server.tls.client_ca_file")?;
        let mut revoked = Vec::new();
        for crl_path in &cfg.crl_files {
            revoked.extend(crls(crl_path, "server.tls.crl_files")?);
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(revoked)
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| format!("server.tls.client_ca_file, server.tls.crl_files: {e}"))?;
        Ok(Some(ClientCheck {
            webpki,
            names: cfg.client_names.clone(),
        }))
    }

    /// The verifier of one `ServerConfig`, counting its refusals in `refused`.
    pub fn verifier(&self, refused: IntCounterVec) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Verifier {
            webpki: self.webpki.clone(),
            names: self.names.clone(),
            refused,
        })
    }
}

/// The reason label of a client certificate the CA check refused.
fn refusal(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "not_yet_valid",
        rustls::Error::InvalidCertificate(C::Revoked) => "revoked",
        rustls::Error::InvalidCertificate(
            C::UnknownRevocationStatus | C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. },
        ) => "revocation_unknown",
        _ => "bad_certificate",
    }
}

struct Verifier {
    webpki: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
    refused: IntCounterVec,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    fn refuse(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

impl ClientCertVerifier for Verifier {
    /// The subject names of the client CA: the TLS 1.2 `certificate_authorities` list and
    /// the TLS 1.3 extension, by which clients with several certificates choose.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.webpki.verify_client_cert(end_entity, intermediates, now) {
            self.refuse(refusal(&e));
            return Err(e);
        }
        if !self.names.is_empty() && names::identity(end_entity, &self.names).is_none() {
            self.refuse("name_not_allowed");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
