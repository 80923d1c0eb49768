//! TLS on the chat-server listener: certificate, key and client CA read from PEM files,
//! checked where they are configured, and swapped in place on a reload.
//!
//! The listener does the handshakes ([`crate::edge::opening`]) with the rustls server
//! configuration made here (TLS 1.2 and 1.3, ALPN `http/1.1`): a certificate resolver and a
//! client-certificate verifier whose material lives behind an [`ArcSwap`], so a reload
//! changes what new handshakes see and leaves open connections alone. A bad new file keeps
//! the old material. The certificate request names the client CA's subjects, so that a
//! client with several certificates sends the right one. A refused client certificate ends
//! the handshake and is counted by reason
//! (`cardgate_tls_client_refused_total{reason}`); after a handshake the connection knows
//! its TLS version and the name its client certificate was taken for ([`names`]), for the
//! access log. The files are read by [`files`].

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
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::TlsSection;
use crate::metrics::Metrics;

mod files;
mod names;

use files::days_left;
pub use files::{key_pair, roots};

/// The `reason` label values of refused client certificates.
pub const CLIENT_REFUSALS: [&str; 5] = [
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "bad_certificate",
    "name_not_allowed",
];

/// The files of `[server.tls]`, read and checked.
pub struct Material {
    key: Arc<CertifiedKey>,
    client: Option<ClientCheck>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

impl Material {
    /// Days until the leaf expires (a warning is due when few are left).
    pub fn days_left(&self) -> i64 {
        days_left(self.not_after)
    }
}

/// Read and check the files; errors name the key.
pub fn load(cfg: &TlsSection) -> Result<Material, String> {
    let (certified, not_after) = key_pair(
        ("server.tls.cert_file", &cfg.cert_file),
        ("server.tls.key_file", &cfg.key_file),
    )?;
    let client = match &cfg.client_ca_file {
        None => None,
        Some(path) => {
            let roots = roots(path, "server.tls.client_ca_file")?;
            let hints = interned(roots.subjects());
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| format!("server.tls.client_ca_file: {path}: {e}"))?;
            Some(ClientCheck {
                verifier,
                names: cfg.client_names.clone(),
                hints,
            })
        }
    };
    Ok(Material {
        key: Arc::new(certified),
        client,
        not_after,
    })
}

/// The client CA's subject names, kept once per distinct set for the life of the process.
/// rustls borrows the names it puts in a CertificateRequest from the verifier, which lives
/// as long as the listener's `ServerConfig`, while the CA behind it changes on a reload;
/// each set is a few hundred bytes and a process sees few of them.
fn interned(subjects: Vec<DistinguishedName>) -> &'static [DistinguishedName] {
    static SEEN: Mutex<Vec<&'static [DistinguishedName]>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    let same = |known: &&&'static [DistinguishedName]| {
        known.len() == subjects.len() && known.iter().zip(&subjects).all(|(a, b)| a.as_ref() == b.as_ref())
    };
    if let Some(known) = seen.iter().find(same) {
        return known;
    }
    let kept: &'static [DistinguishedName] = Box::leak(subjects.into_boxed_slice());
    seen.push(kept);
    kept
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

/// The reason label of a client certificate the CA check refused.
fn refusal(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "not_yet_valid",
        _ => "bad_certificate",
    }
}

/// The live TLS state of the chat-server listener.
pub struct Tls {
    key: ArcSwap<CertifiedKey>,
    client: Option<Arc<ArcSwap<ClientCheck>>>,
    refused: IntCounterVec,
    /// `cardgate_tls_certificate_expiry_seconds` of this listener.
    expiry: IntGauge,
}

/// The client CA in force: its verifier and subject names, and the names a client
/// certificate must carry.
struct ClientCheck {
    verifier: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
    hints: &'static [DistinguishedName],
}

impl Tls {
    pub fn new(material: Material, metrics: &Metrics) -> Arc<Self> {
        let expiry = expiry_gauge(metrics);
        expiry.set(material.not_after);
        Arc::new(Tls {
            key: ArcSwap::new(material.key),
            client: material.client.map(|c| Arc::new(ArcSwap::from_pointee(c))),
            refused: metrics.tls_client_refused.clone(),
            expiry,
        })
    }

    /// Whether `material` can be put in force: whether client certificates are asked
    /// for at all is fixed at start.
    pub fn check(&self, material: &Material) -> Result<(), String> {
        if self.client.is_some() == material.client.is_some() {
            Ok(())
        } else {
            Err("server.tls.client_ca_file: turning mutual TLS on or off needs a restart".into())
        }
    }

    /// Put material that passed [`Tls::check`] in force for the next handshakes.
    pub fn put(&self, material: Material) {
        if let (Some(slot), Some(client)) = (&self.client, material.client) {
            slot.store(Arc::new(client));
        }
        self.key.store(material.key);
        self.expiry.set(material.not_after);
    }

    /// The name a client certificate was taken for (see [`names`]).
    pub fn client_name(&self, der: &[u8]) -> Option<String> {
        let allowed = self.client.as_ref().map(|slot| slot.load_full());
        names::identity(der, allowed.as_ref().map_or(&[][..], |c| &c.names[..]))
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

    /// The rustls server configuration over this state, for the listener's handshakes.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| format!("server.tls: {e}"))?;
        let builder = match &self.client {
            Some(slot) => builder.with_client_cert_verifier(Arc::new(Verifier {
                slot: slot.clone(),
                tls: self.clone(),
            })),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn refuse(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

struct Resolver(Arc<Tls>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key.load_full())
    }
}

struct Verifier {
    slot: Arc<ArcSwap<ClientCheck>>,
    tls: Arc<Tls>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    fn current(&self) -> Arc<ClientCheck> {
        self.slot.load_full()
    }
}

impl ClientCertVerifier for Verifier {
    /// The subject names of the client CA in force: the TLS 1.2 `certificate_authorities`
    /// list and the TLS 1.3 extension, by which clients with several certificates choose.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.slot.load().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.current();
        if let Err(e) = current
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
        {
            self.tls.refuse(refusal(&e));
            return Err(e);
        }
        if !current.names.is_empty() && names::identity(end_entity, &current.names).is_none() {
            self.tls.refuse("name_not_allowed");
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
        self.current().verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().verifier.supported_verify_schemes()
    }
}

/// What a finished handshake tells the access log.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub version: &'static str,
    /// The name the client certificate was taken for (mutual TLS).
    pub client: Option<String>,
}
