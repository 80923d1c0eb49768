//! The PEM files of TLS, on either side: certificate chains, private keys, CA roots and
//! revocation lists, read (rustls-pki-types' PEM reader) and checked, every error naming
//! the configuration key the file came from.

// Files an operator points the gateway at reach this module: nothing here may panic on them.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// A certificate chain and its private key, checked: readable PEM, a usable key that
/// matches the leaf, a leaf valid now. The leaf's notAfter (Unix seconds) comes with it.
/// Each pair is (config key, path), so that errors name the key.
pub fn key_pair(cert: (&str, &str), key: (&str, &str)) -> Result<(CertifiedKey, i64), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ((cert_key, cert_path), (key_key, key_path)) = (cert, key);
    let chain = certs(cert_path, cert_key)?;
    let not_after = check_validity(&chain, cert_key, cert_path)?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private_key(key_path, key_key)?)
        .map_err(|e| format!("{key_key}: {key_path}: not a usable key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{key_key}: {key_path} does not match the certificate in {cert_path}: {e}"))?;
    Ok((certified, not_after))
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
    let pem = read(path, key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {path} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key}: {path} holds no certificate"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &str, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path, key)?;
    PrivateKeyDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| format!("{key}: {path} holds no private key"))?
        .map_err(|e| format!("{key}: {path} is not PEM: {e}"))
}

/// Every CRL of a PEM file (at least one), each parsed and still current: one whose
/// nextUpdate has passed would refuse every certificate of its CA.
pub fn crls(path: &str, key: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = read(path, key)?;
    let crls: Vec<CertificateRevocationListDer<'static>> = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {path} is not PEM: {e}"))?;
    if crls.is_empty() {
        return Err(format!("{key}: {path} holds no CRL"));
    }
    let now = x509_parser::time::ASN1Time::now();
    for crl in &crls {
        let (_, parsed) =
            x509_parser::parse_x509_crl(crl).map_err(|e| format!("{key}: {path}: not a CRL: {e}"))?;
        if let Some(next) = parsed.next_update().filter(|next| *next < now) {
            return Err(format!(
                "{key}: the CRL of {} in {path} is out of date: its next update was due on {next}",
                parsed.issuer()
            ));
        }
    }
    Ok(crls)
}

fn read(path: &str, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))
}

/// The leaf must be valid now: its notAfter (Unix seconds), or why not.
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
    Ok(validity.not_after.timestamp())
}

/// Whole days from now until `not_after` (Unix seconds).
pub fn days_left(not_after: i64) -> i64 {
    not_after
        .saturating_sub(x509_parser::time::ASN1Time::now().timestamp())
        .checked_div(86_400)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// rustls-pemfile is unmaintained (RUSTSEC-2025-0134); PEM is read with
    /// rustls-pki-types, and neither the gateway nor its fuzz targets name the old crate.
    #[test]
    fn no_manifest_names_the_unmaintained_pem_crate() {
        for manifest in [
            include_str!("../../Cargo.toml"),
            include_str!("../../fuzz/Cargo.toml"),
        ] {
            let manifest: toml::Table = manifest.parse().unwrap();
            for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
                let deps = manifest.get(section).and_then(|d| d.as_table());
                assert!(
                    deps.is_none_or(|d| !d.contains_key("rustls-pemfile")),
                    "[{section}] names rustls-pemfile"
                );
            }
        }
    }

    #[test]
    fn every_key_format_reads_and_what_is_not_a_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // The key after the certificate in one file, as some tools write them.
        let both = file(
            &dir,
            "both.pem",
            &format!("{}{}", cert.pem(), key.serialize_pem()),
        );
        assert!(matches!(
            private_key(&both, "k").unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        assert_eq!(certs(&both, "c").unwrap().len(), 1);
        let (_, not_after) = key_pair(("c", &both), ("k", &both)).unwrap();
        assert!(days_left(not_after) > 365);

        let only_cert = file(&dir, "cert.pem", &cert.pem());
        assert_eq!(
            private_key(&only_cert, "server.tls.key_file").unwrap_err(),
            format!("server.tls.key_file: {only_cert} holds no private key")
        );
        let broken = file(
            &dir,
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        let e = certs(&broken, "server.tls.cert_file").unwrap_err();
        assert!(
            e.starts_with(&format!("server.tls.cert_file: {broken} is not PEM")),
            "{e}"
        );
        let missing = dir.path().join("missing.pem").display().to_string();
        assert!(certs(&missing, "upstream.ca_file")
            .unwrap_err()
            .starts_with("upstream.ca_file: cannot read"));
    }
}
