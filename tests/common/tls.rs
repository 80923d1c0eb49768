//! The TLS side of the chat-server listener in tests: a rustls client that GETs over
//! TLS (optionally with a client certificate and a PROXY header first), the files of
//! `[server.tls]` made in a temporary directory, and a client's raw first flight (its
//! ClientHello) to send whole, in part, or naming an address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;

use super::certs::{ca, der_certs, leaf, write, Ca};

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
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).unwrap();
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => {
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
            builder.with_client_auth_cert(der_certs(cert), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
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

    /// (Re)write the server's chain and key with this serial.
    pub fn server_cert(&self, serial: u64) {
        let (cert, key) = leaf(&self.server_ca, &["localhost"], serial, false);
        write(self.dir.path(), "chain.pem", &cert);
        write(self.dir.path(), "key.pem", &key);
    }

    pub fn tls_lines(&self, listen: &str, mtls: bool) -> String {
        let mut lines = format!(
            "[server.tls]\nlisten = \"{listen}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.path("chain.pem"),
            self.path("key.pem")
        );
        if mtls {
            lines.push_str(&format!(
                "client_ca_file = \"{}\"\nclient_names = [\"chat.example.com\"]\n",
                self.path("chat-ca.pem")
            ));
        }
        lines
    }
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
