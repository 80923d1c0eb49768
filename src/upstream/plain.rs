//! TCP connections to a node made without Pingora's connector: the whole connection for
//! an `http://` URL, the TCP under the TLS for an `https://` one.
//!
//! Pingora's `l4::Stream` wraps the socket in read and write buffers and times every read
//! that has to wait (two clock reads each); on the miss path that is two clock reads and
//! two buffer layers per call, for timings nobody reads. [`connect`] makes the connection
//! itself (`upstream.connect_timeout`, `TCP_NODELAY`) and hands out a [`Plain`] socket,
//! which is a Pingora [`Stream`] like any other, so the pool, the exchange and the tests
//! see no difference. TLS connections come from [`super::tls`], over TCP from [`TimedTcp`],
//! the node's Pingora peer's own connect: Pingora bounds its own connects with its fast
//! timer, whose first use starts a thread that wakes every 10 ms for the life of the
//! process.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::{Error as PError, ErrorType, Result as PResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::failure::{connect_error_type, Failure};

/// A connected plain-TCP socket to a node.
#[derive(Debug)]
pub struct Plain(TcpStream);

/// Connect to `addr` within `limit`.
pub async fn connect(addr: SocketAddr, limit: Duration) -> Result<Stream, Failure> {
    let tcp = tcp(addr, limit).await.map_err(|e| Failure::connect_io(&e))?;
    // Small requests and answers: never wait to coalesce them.
    tcp.set_nodelay(true).map_err(|e| Failure::connect_io(&e))?;
    Ok(Box::new(Plain(tcp)))
}

/// TCP to `addr` within `limit` (`upstream.connect_timeout`) on tokio's timer; running out
/// of it is an error of kind `TimedOut`.
async fn tcp(addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no connection within upstream.connect_timeout",
            ))
        })
}

/// The TCP connection under a TLS node's, within `upstream.connect_timeout` on tokio's timer
/// ([`super::tls`] then sets `TCP_NODELAY` and does the handshake). Its errors are the
/// types Pingora gives its own connects ([`connect_error_type`]), so [`Failure::connect`]
/// names them as [`Failure::connect_io`] names a plain connection's.
///
/// Pingora's socket options for its own connects (bind addresses, TCP Fast Open, receive
/// buffer, DSCP, a tweak hook) are skipped here: cardgate sets none of them.
#[derive(Debug)]
pub struct TimedTcp(pub Duration);

#[async_trait]
impl L4Connect for TimedTcp {
    async fn connect(&self, addr: &PeerAddr) -> PResult<l4::stream::Stream> {
        let PeerAddr::Inet(addr) = addr else {
            return PError::e_explain(ErrorType::ConnectError, "a CRM node is a TCP address");
        };
        match tcp(*addr, self.0).await {
            Ok(tcp) => Ok(tcp.into()),
            Err(e) => PError::e_because(connect_error_type(&e), format!("cannot connect to {addr}"), e),
        }
    }
}

impl AsyncRead for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Plain {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.0).await;
    }
}

impl UniqueID for Plain {
    fn id(&self) -> UniqueIDType {
        self.0.as_raw_fd()
    }
}

impl Ssl for Plain {}

impl GetTimingDigest for Plain {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Plain {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Plain {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

impl Peek for Plain {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_carries_bytes_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(b"pong").await.unwrap();
            got
        });
        let mut io = connect(addr, Duration::from_secs(5)).await.unwrap();
        io.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        io.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");
        assert_eq!(&peer.await.unwrap(), b"ping");
        assert!(io.get_ssl().is_none());
    }

    #[tokio::test]
    async fn the_tcp_under_a_tls_node_connects_and_a_refusal_is_named_as_pingora_names_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = TimedTcp(Duration::from_secs(5));
        let stream = tcp.connect(&PeerAddr::Inet(addr)).await.unwrap();
        let (accepted, from) = listener.accept().await.unwrap();
        assert_eq!(accepted.local_addr().unwrap(), addr);
        assert!(from.ip().is_loopback());
        drop((stream, accepted, listener));

        let e = tcp.connect(&PeerAddr::Inet(addr)).await.err().unwrap();
        assert_eq!(e.etype, ErrorType::ConnectRefused);
        let f = Failure::connect(&e);
        assert!(
            matches!(
                f.error,
                crate::error::GatewayError::CrmUnavailable("connection refused")
            ),
            "{:?}",
            f.error
        );
        assert!(f.retry && f.transport);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_named() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // (The listener is gone: nothing listens on the port.)
        let f = connect(addr, Duration::from_secs(5)).await.err().unwrap();
        assert_eq!(f.outcome, "unavailable");
        assert!(f.retry && f.transport);
        assert!(
            matches!(
                f.error,
                crate::error::GatewayError::CrmUnavailable("connection refused")
            ),
            "{:?}",
            f.error
        );
        assert!(f.cause.starts_with("cannot connect: "), "{}", f.cause);
    }
}
