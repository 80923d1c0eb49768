//! TLS to the CRM, with certificates made here: a rustls server in this test stands in
//! front of the mock CRM. A card over TLS with mutual TLS both ways (the gateway checks
//! the CRM's certificate against `upstream.ca_file`, the CRM checks the gateway's client
//! certificate); and each named failure cause — no client certificate (refused), an
//! unknown CA, a name mismatch, an expired certificate, plain HTTP where TLS was
//! expected — as 502 `CRM_UNAVAILABLE`, `outcome="tls"` and a log line that names it; and
//! `upstream.tls_min_version` against a CRM that speaks TLS 1.2 only, then 1.3.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::certs::{ca, der_certs, der_key, leaf, write, Ca};
use common::{token, Gateway, Mock};
use rustls::pki_types::CertificateDer;

type Version = &'static rustls::SupportedProtocolVersion;

/// A TLS server on a loopback port that relays each connection to `backend`; it speaks
/// TLS 1.2 and 1.3 until told otherwise ([`Front::speak`]).
struct Front {
    addr: String,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    cert: (String, String),
    client_ca: Option<CertificateDer<'static>>,
    _rt: tokio::runtime::Runtime,
}

impl Front {
    /// New connections are served with only these versions.
    fn speak(&self, versions: &[Version]) {
        *self.config.lock().unwrap() = server_config(&self.cert, self.client_ca.as_ref(), versions);
    }
}

fn server_config(
    cert: &(String, String),
    client_ca: Option<&CertificateDer<'static>>,
    versions: &[Version],
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(der_certs(&cert.0), der_key(&cert.1))
            .unwrap(),
    )
}

fn front(cert: &(String, String), client_ca: Option<&Ca>, backend: &str) -> Front {
    let client_ca = client_ca.map(|ca| ca.cert.der().clone());
    let both = [&rustls::version::TLS12, &rustls::version::TLS13];
    let config = Arc::new(Mutex::new(server_config(cert, client_ca.as_ref(), &both)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let backend = backend.to_string();
    let serving = config.clone();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(serving.lock().unwrap().clone());
            let backend = backend.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Front {
        addr,
        config,
        cert: cert.clone(),
        client_ca,
        _rt: rt,
    }
}

struct Pki {
    dir: tempfile::TempDir,
    server_ca: Ca,
    client_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            server_ca: ca("crm CA"),
            client_ca: ca("gateway clients CA"),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        write(self.dir.path(), name, text)
    }

    /// `upstream` lines trusting `ca`, with the gateway's client certificate if `client`.
    fn upstream(&self, ca: &Ca, client: bool) -> String {
        let mut lines = format!("ca_file = {:?}\n", self.file("ca.pem", &ca.cert.pem()));
        if client {
            let (cert, key) = leaf(&self.client_ca, &["cardgate.gateway"], 7, false);
            lines += &format!(
                "client_cert = {:?}\nclient_key = {:?}\n",
                self.file("client.pem", &cert),
                self.file("client.key", &key)
            );
        }
        lines
    }
}

/// A card lookup that fails on TLS: 502, `outcome="tls"`, and the cause in the log.
fn assert_tls_failure(gw: &Gateway, cause: &str) {
    let t = token("tlsfail");
    let r = gw.post_card(&t);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "CRM_UNAVAILABLE"),
        "{}",
        r.body
    );
    assert!(gw.metric("cardgate_upstream_requests_total{outcome=\"tls\"}") >= 1.0);
    let line = gw.wait_event("CRM call failed");
    let logged = line["cause"].as_str().unwrap_or_default();
    assert!(logged.contains(cause), "{cause:?} not in {logged:?}");
    gw.assert_never_shown(&[&t]);
}

#[test]
fn a_card_over_mutual_tls_both_ways_and_refused_without_a_client_certificate() {
    let mock = Mock::start();
    let pki = Pki::new();
    let server = leaf(&pki.server_ca, &["127.0.0.1"], 1, false);
    let crm = front(&server, Some(&pki.client_ca), &mock.addr);
    let url = format!("https://{}", crm.addr);

    let gw = Gateway::start(&url, &[("upstream", &pki.upstream(&pki.server_ca, true))]);
    let t = token("mtls");
    let r = gw.post_card(&t);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), cardgate::testkit::mock::card(t.as_bytes()));
    assert_eq!(mock.calls_for(&t).len(), 1);
    // Kept alive: the next card goes over the same TLS connection.
    assert_eq!(gw.post_card(&token("mtls")).status, 200);
    assert_eq!(gw.metric("cardgate_upstream_requests_total{outcome=\"ok\"}"), 2.0);
    // The TLS connection to the CRM was bounded on tokio's timer.
    gw.assert_no_timer_thread();
    drop(gw);

    let gw = Gateway::start(&url, &[("upstream", &pki.upstream(&pki.server_ca, false))]);
    assert_tls_failure(&gw, "handshake refused");
}

#[test]
fn an_unknown_ca_a_name_mismatch_and_an_expired_certificate_are_named() {
    let mock = Mock::start();
    let pki = Pki::new();
    let other = ca("someone else");
    let cases = [
        (
            leaf(&pki.server_ca, &["127.0.0.1"], 2, false),
            &other,
            "unknown CA",
        ),
        (
            leaf(&pki.server_ca, &["crm.example"], 3, false),
            &pki.server_ca,
            "name mismatch",
        ),
        (
            leaf(&pki.server_ca, &["127.0.0.1"], 4, true),
            &pki.server_ca,
            "certificate expired",
        ),
    ];
    for (cert, trusted, cause) in &cases {
        let crm = front(cert, None, &mock.addr);
        let gw = Gateway::start(
            &format!("https://{}", crm.addr),
            &[("upstream", &pki.upstream(trusted, false))],
        );
        assert_tls_failure(&gw, cause);
    }
    assert!(mock.journal().is_empty(), "nothing reached the CRM");
}

/// A plain HTTP server in the test (no TLS): it answers anything, a ClientHello too, with a 400.
fn plain_http() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ =
                conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    addr
}

#[test]
fn plain_http_where_tls_was_expected_is_named() {
    let pki = Pki::new();
    let upstream = pki.upstream(&pki.server_ca, false);
    let gw = Gateway::start(&format!("https://{}", plain_http()), &[("upstream", &upstream)]);
    assert_tls_failure(&gw, "not TLS");
    // A plain server that just closes (the mock CRM): named as such.
    let mock = Mock::start();
    let gw = Gateway::start(&format!("https://{}", mock.addr), &[("upstream", &upstream)]);
    assert_tls_failure(&gw, "closed during the handshake");
}

#[test]
fn a_crm_below_the_tls_min_version_fails_on_tls_and_one_at_it_answers() {
    let mock = Mock::start();
    let pki = Pki::new();
    let server = leaf(&pki.server_ca, &["127.0.0.1"], 5, false);
    let crm = front(&server, None, &mock.addr);
    crm.speak(&[&rustls::version::TLS12]);
    let upstream = format!(
        "{}tls_min_version = \"1.3\"\n",
        pki.upstream(&pki.server_ca, false)
    );
    let gw = Gateway::start(&format!("https://{}", crm.addr), &[("upstream", &upstream)]);
    assert_tls_failure(&gw, "handshake refused");
    assert!(mock.journal().is_empty(), "nothing reached the CRM");

    crm.speak(&[&rustls::version::TLS13]);
    let t = token("tls13");
    let r = gw.post_card(&t);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.calls_for(&t).len(), 1);
}
