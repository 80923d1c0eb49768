//! One active health check of one node, within `upstream.health.timeout` on tokio's timer.
//!
//! Without `upstream.health.path` a check is a fresh connection: TCP, and for an https node
//! the TLS handshake (the URL's host for SNI; the CA and client certificate of every
//! connection to the CRM). With it, a check sends `GET base_path + path` (`Host`,
//! `User-Agent`) on a fresh connection that is closed afterwards, never pooled, and passes
//! on an answer of 2xx or 3xx, read whole (at most `upstream.max_response_bytes`). The
//! check's connection is bounded by `health.timeout` alone, not by `connect_timeout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::exchange::once;
use super::node::Node;
use super::plain;
use super::tls::Connector;
use crate::config::HealthSection;

pub struct Check {
    /// For https nodes: the calls' connector, so that a check speaks the TLS they speak.
    connector: Arc<Connector>,
    /// `base_path` is the node's; this is `health.path`.
    path: Option<String>,
    timeout: Duration,
    max_body: usize,
    /// `health.healthy_after` and `health.unhealthy_after`, which the node counts.
    pub after: (usize, usize),
}

impl Check {
    /// The checks `health` asks for, reading at most `max_body` of an answer and
    /// connecting through `connector` (the CRM's CA, client certificate and TLS policy).
    pub fn new(health: &HealthSection, max_body: usize, connector: Arc<Connector>) -> Self {
        Check {
            connector,
            path: health.path.clone(),
            timeout: health.timeout,
            max_body,
            after: (health.healthy_after, health.unhealthy_after),
        }
    }

    /// Check `node` within `health.timeout`: passed, or why not (for the log).
    pub async fn run(&self, node: &Node) -> Result<(), String> {
        tokio::time::timeout(self.timeout, self.attempt(node))
            .await
            .unwrap_or_else(|_| Err("health check timed out".into()))
    }

    async fn attempt(&self, node: &Node) -> Result<(), String> {
        let mut io = self.connect(node).await?;
        let Some(path) = &self.path else {
            return Ok(());
        };
        let target = &node.target;
        let wire = format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\n\r\n",
            target.url.base_path,
            target.authority,
            super::USER_AGENT
        );
        let (answer, _) = once(&mut io, &mut BytesMut::new(), wire.as_bytes(), self.max_body)
            .await
            .map_err(|e| e.to_string())?;
        if (200..400).contains(&answer.status) {
            Ok(())
        } else {
            Err(format!("status {}: not 2xx or 3xx", answer.status))
        }
    }

    /// A new connection to `node` (TCP, and TLS for https), bounded by the check's timeout.
    async fn connect(&self, node: &Node) -> Result<Stream, String> {
        if node.target.url.tls {
            let mut peer = node.peer.clone();
            peer.options.custom_l4 = Some(Arc::new(plain::TimedTcp(self.timeout)));
            self.connector.new_stream(&peer).await.map_err(|e| e.to_string())
        } else {
            plain::connect(node.addr, self.timeout).await.map_err(|f| f.cause)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::upstream::node::{Clock, Target};
    use crate::upstream::stats::Stats;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A node of `scheme://crm.example:port/base` at `addr`, checked as `health` says and
    /// trusting `ca_file` (else the system's CAs).
    fn node(scheme: &str, addr: SocketAddr, health: &str, ca_file: Option<&str>) -> (Check, Node) {
        let ca = ca_file
            .map(|f| format!("ca_file = \"{f}\"\n"))
            .unwrap_or_default();
        let toml = format!(
            "[upstream]\nurl = \"{scheme}://crm.example:{}/base\"\nhealth = {{ {health} }}\n{ca}",
            addr.port()
        );
        let cfg = Config::from_toml(&toml).unwrap();
        let url = cfg.upstream_urls().unwrap().remove(0);
        let stats = Stats::new(&Metrics::new("iq"));
        let node = Node::new(Arc::new(Target::new(0, url)), addr, &cfg, &stats, Clock::start());
        let connector = Arc::new(Connector::new(&cfg.upstream, scheme == "https").unwrap());
        (Check::new(&cfg.upstream.health, 1024, connector), node)
    }

    /// A server that answers one request with `status` line; what it was sent.
    async fn answering(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).await.unwrap();
                got.push(byte[0]);
            }
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (addr, served)
    }

    #[tokio::test]
    async fn an_http_check_gets_the_path_and_passes_on_2xx_or_3xx_only() {
        for (status, passes) in [("200 OK", true), ("302 Found", true), ("503 No", false)] {
            let (addr, served) = answering(status).await;
            let (check, node) = node("http", addr, "path = \"/health\"", None);
            let result = check.run(&node).await;
            assert_eq!(result.is_ok(), passes, "{status}: {result:?}");
            let sent = served.await.unwrap();
            let expected = format!(
                "GET /base/health HTTP/1.1\r\nHost: crm.example:{}\r\nUser-Agent: {}\r\n\r\n",
                addr.port(),
                crate::upstream::USER_AGENT
            );
            assert_eq!(sent, expected);
        }
    }

    #[tokio::test]
    async fn a_tcp_check_passes_on_a_connection_and_fails_without() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (check, node) = node("http", addr, "", None);
        assert_eq!(check.run(&node).await, Ok(()));
        drop(listener);
        let why = check.run(&node).await.unwrap_err();
        assert!(why.starts_with("cannot connect: "), "{why}");
    }

    #[tokio::test]
    async fn an_http_check_that_gets_no_answer_fails_within_its_timeout() {
        // Takes the connection, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = "path = \"/health\", interval = \"1s\", timeout = \"50ms\"";
        let (check, node) = node("http", addr, health, None);
        assert_eq!(check.run(&node).await, Err("health check timed out".into()));
        drop(listener);
    }

    /// A TLS server for `crm.example` on a loopback port, its certificate signed by a CA
    /// of its own; the CA's PEM file (in `dir`).
    async fn tls_server(dir: &std::path::Path) -> (SocketAddr, String) {
        tls_server_of(dir, rustls::ALL_VERSIONS).await
    }

    /// [`tls_server`] speaking only `versions`.
    async fn tls_server_of(
        dir: &std::path::Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (SocketAddr, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["crm.example".to_string()]).unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move { acceptor.accept(tcp).await });
            }
        });
        (addr, ca_file.to_string_lossy().into_owned())
    }

    #[tokio::test]
    async fn a_tcp_check_of_an_https_node_makes_the_tls_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, ca_file) = tls_server(dir.path()).await;
        let (check, node_) = node("https", addr, "", Some(&ca_file));
        assert_eq!(check.run(&node_).await, Ok(()));

        // The handshake is judged: without the CA, the server's certificate is unknown.
        let (check, node_) = node("https", addr, "", None);
        let why = check.run(&node_).await.unwrap_err();
        assert!(why.contains("TLS"), "{why}");

        // A node that takes TCP but speaks no TLS fails; as an http node it passes.
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = plain.accept().await {
                drop(tcp);
            }
        });
        let (check, node_) = node("https", addr, "", None);
        assert!(check.run(&node_).await.is_err());
        let (check, node_) = node("http", addr, "", None);
        assert_eq!(check.run(&node_).await, Ok(()));
    }

    #[tokio::test]
    async fn a_check_speaks_the_tls_the_calls_speak() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, ca_file) = tls_server_of(dir.path(), &[&rustls::version::TLS12]).await;
        let (check, node_) = node("https", addr, "", Some(&ca_file));
        assert_eq!(check.run(&node_).await, Ok(()));
        // With upstream.tls_min_version = "1.3", a node that speaks only 1.2 fails its
        // checks as its calls would.
        let toml = format!(
            "[upstream]\nurl = \"https://crm.example:{}/base\"\nca_file = \"{ca_file}\"\ntls_min_version = \"1.3\"\n",
            addr.port()
        );
        let cfg = Config::from_toml(&toml).unwrap();
        let connector = Arc::new(Connector::new(&cfg.upstream, true).unwrap());
        let check = Check::new(&cfg.upstream.health, 1024, connector);
        assert!(check.run(&node_).await.is_err());
    }
}
