//! The opening of a chat-server connection: from the moment Pingora hands it over to its
//! first request byte.
//!
//! Pingora accepts plain TCP on both chat-server ports; the handshake is owned here, so
//! that its bound and its logging are the gateway's. Behind a balancer the PROXY header
//! comes first ([`super::proxy`]); on the TLS port the rustls handshake follows
//! (tokio-rustls, over [`crate::tls`]'s configuration). Header and handshake together must
//! be done within `server.client_timeout` of the accept, whatever the client sends or
//! withholds; the connection is counted against `limits.max_connections` all along (the
//! listener takes the count before it comes here). On the TLS port a connection whose first
//! byte does not begin a TLS handshake record is plain HTTP: the listener answers it with a
//! JSON 400 and closes it, as nginx does. A failed or unfinished handshake is counted by
//! reason and logged as a warning, at most one line a second ([`crate::logs::throttle`]);
//! a connection that closes before sending a byte (a port probe) is neither.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Stream};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{canonical, Gate, Refusal};
use crate::logs::throttle::Throttle;
use crate::tls::{Handshake, Tls};

/// A plain connection (boxed: the connection's task keeps a pointer, not the stream).
pub type Plain = Box<L4Stream>;
/// A connection whose TLS handshake is done.
pub type Secured = Box<TlsStream<Plain>>;

/// The first byte of a TLS handshake record (RFC 8446, 5.1: ContentType handshake).
const HANDSHAKE_RECORD: u8 = 0x16;

/// What the first bytes on the TLS port are read into (a ClientHello with a
/// post-quantum key share is some 1.8 KiB).
const FIRST_READ: usize = 2048;

/// A connection ready for its first request.
pub enum Opened {
    Plain(Plain),
    Tls(Secured, Handshake),
    /// Plain HTTP on the TLS port: to be answered with its 400 and closed.
    PlainOnTls(Plain),
}

/// How the chat-server ports open their connections.
pub struct Opening {
    gate: Arc<Gate>,
    tls: Option<TlsPort>,
    refusals: Throttle,
}

/// The TLS port: which connections came in on it, and the state its handshakes are made
/// from (the `ServerConfig` in force is taken per connection: a reload changes it).
struct TlsPort {
    ports: Ports,
    tls: Arc<Tls>,
}

/// The TLS port's address and the plain port's, to tell a connection's port by its local
/// address.
struct Ports {
    addr: SocketAddr,
    plain: Option<SocketAddr>,
}

impl Ports {
    /// Whether a connection to the local address `local` came in on this port (asked for
    /// only when there are two ports: it costs a system call).
    fn serves(&self, local: impl FnOnce() -> Option<SocketAddr>) -> bool {
        let Some(plain) = self.plain else {
            return true;
        };
        let Some(local) = local().map(|a| SocketAddr::new(canonical(a.ip()), a.port())) else {
            return false;
        };
        if local == self.addr || local == plain {
            return local == self.addr;
        }
        // A wildcard listen address: the port tells.
        self.addr.ip().is_unspecified() && local.port() == self.addr.port()
    }
}

/// Why an opening ended before the first request.
enum Ended {
    /// The client left before sending a byte: nothing to count or log.
    Silently,
    Refused(Refusal, String),
}

impl Opening {
    /// `tls`: the TLS port's address and state; `plain`: the plain port's address.
    pub fn new(gate: Arc<Gate>, tls: Option<(SocketAddr, Arc<Tls>)>, plain: Option<SocketAddr>) -> Self {
        let tls = tls.map(|(addr, tls)| TlsPort {
            ports: Ports { addr, plain },
            tls,
        });
        Opening {
            gate,
            tls,
            refusals: Throttle::default(),
        }
    }

    /// Bring a connection accepted now to its first request: the connection and its
    /// client's address, or None when it ended (counted and logged where it is due).
    pub async fn open(
        &self,
        io: Stream,
        proxy_protocol: bool,
        limit: Duration,
    ) -> Option<(Opened, Option<IpAddr>)> {
        let now = Instant::now();
        let deadline = now.checked_add(limit).unwrap_or(now);
        // Pingora hands the plain TCP stream over boxed as its transport trait.
        let mut io: Plain = io.into_any().downcast().ok()?;
        let digest = io.get_socket_digest();
        let addr_of =
            |a: Option<&pingora::protocols::l4::socket::SocketAddr>| a.and_then(|a| a.as_inet()).copied();
        let mut peer = digest
            .as_ref()
            .and_then(|d| addr_of(d.peer_addr()))
            .map(|a| a.ip());
        let local = || digest.as_ref().and_then(|d| addr_of(d.local_addr()));
        let mut first = Vec::new();
        if proxy_protocol {
            let Ok((source, rest)) = super::proxy::read_header(&mut io, deadline).await else {
                self.gate.refuse(Refusal::ProxyHeader);
                return None;
            };
            // Without an address (LOCAL, UNKNOWN: a balancer's own check) the connection's
            // peer stands.
            peer = source.map(|s| s.ip()).or(peer);
            if peer.is_some_and(|ip| !self.gate.allows_source(ip)) {
                return None;
            }
            first = rest;
        }
        let Some(port) = self.tls.as_ref().filter(|p| p.ports.serves(local)) else {
            io.rewind(&first);
            return Some((Opened::Plain(io), peer));
        };
        match self.handshake(port, io, first, deadline).await {
            Ok(opened) => Some((opened, peer)),
            Err(Ended::Silently) => None,
            Err(Ended::Refused(why, cause)) => {
                crate::logs::peer_warn(
                    &self.refusals,
                    "TLS handshake refused",
                    json!({ "peer": peer, "reason": super::REFUSALS.get(why as usize), "cause": cause }),
                );
                // Counted once its line is decided: a count seen means its line is too.
                self.gate.refuse(why);
                None
            }
        }
    }

    /// The TLS port's part: tell TLS from plain HTTP by the first byte, then shake hands.
    async fn handshake(
        &self,
        port: &TlsPort,
        mut io: Plain,
        mut first: Vec<u8>,
        deadline: Instant,
    ) -> Result<Opened, Ended> {
        let late = || {
            Ended::Refused(
                Refusal::TlsTimeout,
                "no TLS handshake within server.client_timeout".into(),
            )
        };
        if first.is_empty() {
            first.reserve(FIRST_READ);
            match timeout_at(deadline, io.read_buf(&mut first)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Ended::Silently),
                Ok(Ok(_)) => {}
                Err(_) => return Err(late()),
            }
        }
        let tls = first.first() == Some(&HANDSHAKE_RECORD);
        io.rewind(&first);
        if !tls {
            self.gate.refuse(Refusal::PlainHttp);
            return Ok(Opened::PlainOnTls(io));
        }
        let acceptor = TlsAcceptor::from(port.tls.config());
        match timeout_at(deadline, acceptor.accept(io)).await {
            Ok(Ok(tls)) => {
                let facts = port.tls.handshake(tls.get_ref().1);
                Ok(Opened::Tls(Box::new(tls), facts))
            }
            Ok(Err(e)) => Err(Ended::Refused(Refusal::TlsHandshake, e.to_string())),
            Err(_) => Err(late()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(tls: &str, plain: Option<&str>) -> Ports {
        Ports {
            addr: tls.parse().unwrap(),
            plain: plain.map(|p| p.parse().unwrap()),
        }
    }

    #[test]
    fn a_connection_s_port_is_told_by_its_local_address() {
        let local = |a: &'static str| move || Some(a.parse().unwrap());
        let both = port("127.0.0.1:8443", Some("127.0.0.1:8080"));
        assert!(both.serves(local("127.0.0.1:8443")));
        assert!(!both.serves(local("127.0.0.1:8080")));
        assert!(both.serves(local("[::ffff:127.0.0.1]:8443")), "v4 on a v6 socket");
        let wild = port("0.0.0.0:443", Some("10.0.0.5:443"));
        assert!(!wild.serves(local("10.0.0.5:443")), "the exact address wins");
        assert!(wild.serves(local("10.0.0.6:443")));
        assert!(!wild.serves(local("10.0.0.6:80")));
        assert!(port("127.0.0.1:8443", None).serves(|| None), "the only port");
    }
}
