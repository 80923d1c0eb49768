//! TLS on the chat-server listener: certificate, key and client CA read from PEM files,
//! checked where they are configured, and swapped in place on a reload.
//!
//! The listener does the handshakes ([`crate::edge::opening`]) with the rustls server
//! configuration made here (TLS 1.2 and 1.3, ALPN `http/1.1`): a certificate resolver and a
//! client-certificate verifier whose material lives behind an [`ArcSwap`], so a reload
//! changes what new handshakes see and leaves open connections alone. A bad new file keeps the old material. A refused client certificate
//! ends the handshake and is counted by reason
//! (`cardgate_tls_client_refused_total{reason}`); after a handshake the connection knows
//! its TLS version and the client certificate's subject name, for the access log.

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
use prometheus::IntCounterVec;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::config::TlsSection;

/// The `reason` label values of refused client certificates.
pub const CLIENT_REFUSALS: [&str; 4] = ["unknown_ca", "expired", "bad_certificate", "name_not_allowed"];

/// The files of `[server.tls]`, read and checked.
pub struct Material {
    key: Arc<CertifiedKey>,
    client: Option<(Arc<dyn ClientCertVerifier>, Vec<String>)>,
    /// Days until the leaf expires (a warning is due when few are left).
    pub days_left: i64,
}

/// Read and check the files; errors name the key.
pub fn load(cfg: &TlsSection) -> Result<Material, String> {
    let (certified, days_left) = key_pair(
        ("server.tls.cert_file", &cfg.cert_file),
        ("server.tls.key_file", &cfg.key_file),
    )?;
    let client = match &cfg.client_ca_file {
        None => None,
        Some(path) => {
            let roots = roots(path, "server.tls.client_ca_file")?;
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| format!("server.tls.client_ca_file: {path}: {e}"))?;
            Some((verifier, cfg.client_names.clone()))
        }
    };
    Ok(Material {
        key: Arc::new(certified),
        client,
        days_left,
    })
}

/// A certificate chain and its private key, checked: readable PEM, a usable key that
/// matches the leaf, a leaf valid now. The days the leaf has left come with it. Each pair
/// is (config key, path), so that errors name the key.
pub fn key_pair(cert: (&str, &str), key: (&str, &str)) -> Result<(CertifiedKey, i64), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ((cert_key, cert_path), (key_key, key_path)) = (cert, key);
    let chain = certs(cert_path, cert_key)?;
    let days_left = check_validity(&chain, cert_key, cert_path)?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private_key(key_path, key_key)?)
        .map_err(|e| format!("{key_key}: {key_path}: not a usable key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{key_key}: {key_path} does not match the certificate in {cert_path}: {e}"))?;
    Ok((certified, days_left))
}

/// The CA certificates of a PEM file, as trust roots.
pub fn roots(path: &str, key: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for ca in certs(path, key)? {
        roots
            .add(ca)
            .map_err(|e| format!("{key}: {path}: not a CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// Every certificate of a PEM file (at least one).
pub fn certs(path: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {path} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key}: {path} holds no certificate"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(path: &str, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("{key}: {path} is not PEM: {e}"))?
        .ok_or_else(|| format!("{key}: {path} holds no private key"))
}

/// The leaf must be valid now: the days it has left, or why not.
pub fn check_validity(chain: &[CertificateDer<'_>], key: &str, path: &str) -> Result<i64, String> {
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{key}: {path} holds no certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("{key}: {path}: not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_after < now {
        return Err(format!(
            "{key}: the certificate in {path} expired on {}",
            validity.not_after
        ));
    }
    if validity.not_before > now {
        return Err(format!(
            "{key}: the certificate in {path} is valid only from {}",
            validity.not_before
        ));
    }
    Ok(validity
        .not_after
        .timestamp()
        .saturating_sub(now.timestamp())
        .checked_div(86_400)
        .unwrap_or(0))
}

/// The names a client certificate carries: SAN DNS names, or the CN when it has none.
fn names_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !sans.is_empty() {
        return sans;
    }
    subject_cn(der).into_iter().collect()
}

/// The subject's common name, else its whole subject.
fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|cn| cn.as_str().ok());
    Some(cn.map_or_else(|| subject.to_string(), str::to_string))
}

/// The live TLS state of the chat-server listener.
pub struct Tls {
    key: ArcSwap<CertifiedKey>,
    client: Option<Arc<ArcSwap<ClientCheck>>>,
    refused: IntCounterVec,
}

/// The verifier of the client CA in force, and the names a client must carry.
type ClientCheck = (Arc<dyn ClientCertVerifier>, Vec<String>);

impl Tls {
    pub fn new(material: Material, refused: IntCounterVec) -> Arc<Self> {
        Arc::new(Tls {
            key: ArcSwap::new(material.key),
            client: material.client.map(|c| Arc::new(ArcSwap::from_pointee(c))),
            refused,
        })
    }

    /// Put new material in force for the next handshakes. Whether client certificates are
    /// asked for at all is fixed at start.
    pub fn apply(&self, material: Material) -> Result<(), String> {
        match (&self.client, material.client) {
            (Some(slot), Some(client)) => slot.store(Arc::new(client)),
            (None, None) => {}
            _ => {
                return Err("server.tls.client_ca_file: turning mutual TLS on or off needs a restart".into())
            }
        }
        self.key.store(material.key);
        Ok(())
    }

    /// What a connection whose handshake is done tells the access log.
    pub fn handshake(&self, conn: &ServerConnection) -> Handshake {
        Handshake {
            version: conn.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS"),
            client: conn
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| subject_cn(leaf)),
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
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints of the CA in force at start (hints are advisory; verification uses
        // the current CA).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.current();
        let (inner, names) = (&current.0, &current.1);
        if let Err(e) = inner.verify_client_cert(end_entity, intermediates, now) {
            let reason = match &e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => "unknown_ca",
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired) => "expired",
                _ => "bad_certificate",
            };
            self.tls.refuse(reason);
            return Err(e);
        }
        if !names.is_empty() {
            let carried = names_of(end_entity);
            if !carried
                .iter()
                .any(|c| names.iter().any(|n| n.eq_ignore_ascii_case(c)))
            {
                self.tls.refuse("name_not_allowed");
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().0.supported_verify_schemes()
    }
}

/// What a finished handshake tells the access log.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub version: &'static str,
    /// The client certificate's subject name (mutual TLS).
    pub client: Option<String>,
}
