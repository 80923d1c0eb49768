//! The TLS handshake of an accepted chat-server connection, run by cardgate (tokio-rustls)
//! with the `ServerConfig` in force, within a time bound. Bytes already read from the
//! connection (those behind a PROXY header) are replayed to the handshake first.

// Input from the chat server reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A connection that gives `head` to its reader before what the socket has.
#[derive(Debug)]
pub struct Replay<S> {
    head: Bytes,
    io: S,
}

impl<S> Replay<S> {
    pub fn new(head: Vec<u8>, io: S) -> Self {
        Replay {
            head: Bytes::from(head),
            io,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.has_remaining() {
            let n = self.head.remaining().min(buf.remaining());
            let part = self.head.split_to(n);
            buf.put_slice(&part);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The server side of a handshake on `io` with `config`, within `limit` (on tokio's
/// timer); `None` when it failed or ran out of time (a refused client certificate is
/// counted by the verifier).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ServerConfig>,
    io: S,
    limit: Duration,
) -> Option<TlsStream<S>> {
    match tokio::time::timeout(limit, TlsAcceptor::from(config).accept(io)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(_)) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_head_is_read_first_then_the_socket_and_writes_go_through() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut io = Replay::new(b"ab".to_vec(), far);
        near.write_all(b"cd").await.unwrap();
        let mut one = [0u8; 1];
        io.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"a");
        let mut rest = [0u8; 3];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"bcd");
        io.write_all(b"ok").await.unwrap();
        let mut back = [0u8; 2];
        near.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ok");
    }
}
