//! The names a client certificate is known by, as RFC 6125 has them: the DNS names, URIs
//! and IP addresses of its subjectAltName, and its subject's CN only when it has no
//! subjectAltName at all. A certificate whose subjectAltName holds only a URI or an IP
//! address is matched on those, never on its CN.
//!
//! `server.tls.client_names` is matched against them: a name that parses as an IP
//! address against the IP addresses, any other against the DNS names (and the CN)
//! without regard to ASCII case, and against the URIs exactly. The name that matched is
//! the one the access log shows.

// Certificates from the chat server reach this module: nothing here may panic on them.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// One name a certificate presents.
#[derive(Debug, PartialEq)]
enum Presented {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    /// The subject's CN, of a certificate without subjectAltName.
    Cn(String),
}

impl Presented {
    fn matches(&self, wanted: &str) -> bool {
        match (self, wanted.parse::<IpAddr>()) {
            (Presented::Ip(ip), Ok(want)) => *ip == want,
            (Presented::Ip(_), Err(_)) | (_, Ok(_)) => false,
            (Presented::Dns(n) | Presented::Cn(n), Err(_)) => n.eq_ignore_ascii_case(wanted),
            (Presented::Uri(u), Err(_)) => u == wanted,
        }
    }

    fn text(&self) -> String {
        match self {
            Presented::Dns(n) | Presented::Uri(n) | Presented::Cn(n) => n.clone(),
            Presented::Ip(ip) => ip.to_string(),
        }
    }
}

/// The names `cert` presents, in its order. A subjectAltName that does not parse
/// presents nothing (and does not fall back to the CN).
fn presented(cert: &X509Certificate<'_>) -> Vec<Presented> {
    let san = match cert.subject_alternative_name() {
        Ok(Some(san)) => san,
        Ok(None) => {
            return cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| Presented::Cn(cn.to_string()))
                .collect()
        }
        Err(_) => return Vec::new(),
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(Presented::Dns((*d).to_string())),
            GeneralName::URI(u) => Some(Presented::Uri((*u).to_string())),
            GeneralName::IPAddress(bytes) => ip(bytes).map(Presented::Ip),
            _ => None,
        })
        .collect()
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// The name a client certificate is taken for: the first it presents that `allowed`
/// holds; with `allowed` empty (any certificate of the CA will do), the first it
/// presents, else its subject. `None`: no allowed name, or not a certificate.
pub fn identity(der: &[u8], allowed: &[String]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = presented(&cert);
    if allowed.is_empty() {
        return Some(
            names
                .first()
                .map_or_else(|| cert.subject().to_string(), Presented::text),
        );
    }
    names
        .iter()
        .find(|n| allowed.iter().any(|a| n.matches(a)))
        .map(Presented::text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: &str, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    fn allowed(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_cn_counts_only_without_a_subject_alt_name() {
        let uri = SanType::URI("spiffe://chat.example.com/gw".try_into().unwrap());
        let ip = SanType::IpAddress("10.0.0.9".parse().unwrap());
        let names = allowed(&["chat.example.com"]);
        assert_eq!(
            identity(&cert("chat.example.com", vec![uri.clone()]), &names),
            None
        );
        assert_eq!(
            identity(&cert("chat.example.com", vec![ip.clone()]), &names),
            None
        );
        assert_eq!(
            identity(&cert("Chat.Example.COM", vec![]), &names).as_deref(),
            Some("Chat.Example.COM")
        );
        let spiffe = allowed(&["spiffe://chat.example.com/gw"]);
        assert_eq!(
            identity(&cert("x", vec![uri]), &spiffe).as_deref(),
            Some("spiffe://chat.example.com/gw")
        );
        // An IP address is compared as an address, not as text.
        let v6 = SanType::IpAddress("2001:db8::9".parse().unwrap());
        let wanted = allowed(&["2001:db8:0:0:0:0:0:9"]);
        assert_eq!(
            identity(&cert("x", vec![v6]), &wanted).as_deref(),
            Some("2001:db8::9")
        );
        assert_eq!(identity(&cert("x", vec![ip]), &allowed(&["10.0.0.90"])), None);
        // A DNS name that looks like an address is not one.
        let dns_ip = SanType::DnsName("10.0.0.9".try_into().unwrap());
        assert_eq!(identity(&cert("x", vec![dns_ip]), &allowed(&["10.0.0.9"])), None);
    }

    #[test]
    fn the_name_taken_is_the_one_that_matched() {
        let sans = vec![
            SanType::DnsName("other.example.com".try_into().unwrap()),
            SanType::DnsName("chat.example.com".try_into().unwrap()),
        ];
        let der = cert("other.example.com", sans);
        assert_eq!(
            identity(&der, &allowed(&["CHAT.example.com"])).as_deref(),
            Some("chat.example.com")
        );
        assert_eq!(identity(&der, &[]).as_deref(), Some("other.example.com"));
        assert_eq!(identity(b"not a certificate", &[]), None);
    }
}
