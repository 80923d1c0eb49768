//! The TLS side of the chat-server listener in tests: a rustls client that GETs over
//! TLS (optionally with a client certificate, a PROXY header first, or only some versions
//! and suites), the files of `[server.tls]` made in a temporary directory, and a client's
//! raw first flight (its ClientHello) to send whole, in part, or naming an address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::certs::{ca, der_certs, der_key, params, signed, write, Ca};

/// A GET over TLS: Ok((status line, the server certificate's serial)) or the failure.
pub fn get(
    addr: &str,
    server_ca: &Ca,
    client: Option<&(String, String)>,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    get_after(b"", addr, server_ca, client, path)
}

/// [`get`], with `prefix` (a PROXY header) sent on the connection before the handshake.
pub fn get_after(
    prefix: &[u8],
    addr: &str,
    server_ca: &Ca,
    client: Option<&(String, String)>,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    let cfg = client_config(
        server_ca,
        client,
        &[&rustls::version::TLS12, &rustls::version::TLS13],
        &[],
    );
    get_over(cfg, prefix, addr, path)
}

/// [`get`] by a client that speaks only these versions and, unless `suites` is empty,
/// these cipher suites (rustls names).
pub fn get_speaking(
    addr: &str,
    server_ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[&str],
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    get_over(client_config(server_ca, None, versions, suites), b"", addr, path)
}

fn client_config(
    server_ca: &Ca,
    client: Option<&(String, String)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[&str],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite().as_str().unwrap()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(der_certs(cert), der_key(key))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

fn get_over(
    cfg: rustls::ClientConfig,
    prefix: &[u8],
    addr: &str,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    let conn = rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.write_all(prefix).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let read = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    if !text.starts_with("HTTP/1.1 ") {
        return Err(format!("no answer ({read:?})"));
    }
    let serial = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| {
            let (_, x) = x509_parser::parse_x509_certificate(c).unwrap();
            x.raw_serial().to_vec()
        })
        .unwrap_or_default();
    Ok((text.lines().next().unwrap_or("").to_string(), serial))
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub server_ca: Ca,
    pub chat_ca: Ca,
}

impl Setup {
    pub fn new() -> Setup {
        let s = Setup {
            dir: tempfile::tempdir().unwrap(),
            server_ca: ca("server CA"),
            chat_ca: ca("chat CA"),
        };
        s.server_cert(1);
        write(s.dir.path(), "chat-ca.pem", &s.chat_ca.cert.pem());
        s
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// (Re)write the server's chain and key with this serial; each serial has its own
    /// notAfter (see [`not_after`]).
    pub fn server_cert(&self, serial: u64) {
        let mut p = params(&["localhost"], serial);
        p.not_after = rcgen::date_time_ymd(2090 + i32::try_from(serial).unwrap(), 1, 1);
        let (cert, key) = signed(&self.server_ca, p);
        write(self.dir.path(), "chain.pem", &cert);
        write(self.dir.path(), "key.pem", &key);
    }

    /// `[server.tls]` on `listen`; `mtls`: with the chat CA and `client_names =
    /// ["chat.example.com"]`.
    pub fn tls_lines(&self, listen: &str, mtls: bool) -> String {
        if mtls {
            return self.mtls_lines(listen, &["chat.example.com"]);
        }
        format!(
            "[server.tls]\nlisten = \"{listen}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.path("chain.pem"),
            self.path("key.pem")
        )
    }

    /// `[server.tls]` with mutual TLS: the chat CA, and these `client_names`.
    pub fn mtls_lines(&self, listen: &str, names: &[&str]) -> String {
        format!(
            "{}client_ca_file = \"{}\"\nclient_names = {names:?}\n",
            self.tls_lines(listen, false),
            self.path("chat-ca.pem")
        )
    }
}

/// The notAfter of the first certificate of a PEM file, Unix seconds.
pub fn not_after(path: &str) -> i64 {
    let pem = std::fs::read_to_string(path).unwrap();
    let der = der_certs(&pem).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp()
}

/// A client's first flight: its ClientHello, naming `server_name`, which may be an
/// address (rustls clients send no name for an address; some others send it anyway).
pub fn client_hello(server_ca: &Ca, server_name: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A DNS name as long as the one wanted, swapped for it in the bytes: the record's
    // lengths stay right.
    let stand_in = "a".repeat(server_name.len());
    let name = stand_in.clone().try_into().unwrap();
    let mut hello = Vec::new();
    rustls::ClientConnection::new(Arc::new(cfg), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    let at = hello
        .windows(stand_in.len())
        .position(|w| w == stand_in.as_bytes())
        .unwrap();
    hello[at..at + stand_in.len()].copy_from_slice(server_name.as_bytes());
    hello
}
