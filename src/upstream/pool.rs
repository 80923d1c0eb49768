//! Idle keep-alive connections to the internal system, newest first.
//!
//! A connection goes back into the pool after a clean exchange and comes out for the
//! next one if it is still open: one the internal system closed meanwhile reads as its
//! end, one that has bytes nobody asked for is out of step; both are dropped. The pool
//! keeps at most `upstream.pool_size` idle connections, none older than [`POOL_IDLE`].

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};

/// How long an idle pooled connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    size: usize,
}

/// A pooled connection and when it was put back.
struct Idle {
    io: Stream,
    since: Instant,
}

impl Pool {
    pub fn new(size: usize) -> Self {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            size,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest pooled connection that is still open, if any.
    pub async fn take(&self) -> Option<Stream> {
        loop {
            let mut idle = self.lock().pop_back()?;
            if idle.since.elapsed() >= POOL_IDLE {
                // The newest is too old: so are all the others.
                let old = std::mem::take(&mut *self.lock());
                drop(old);
                return None;
            }
            if still_open(&mut idle.io).await {
                return Some(idle.io);
            }
        }
    }

    /// Keep a connection for the next exchange (the oldest goes when the pool is full).
    pub fn put(&self, io: Stream) {
        let evicted = {
            let mut pool = self.lock();
            pool.push_back(Idle {
                io,
                since: Instant::now(),
            });
            (pool.len() > self.size).then(|| pool.pop_front())
        };
        drop(evicted);
    }
}

/// Whether a pooled connection is still usable: nothing to read on it yet (a closed
/// connection reads as its end, a broken one as an error; data nobody asked for means the
/// connection is out of step).
async fn still_open<S: AsyncRead + Unpin>(io: &mut S) -> bool {
    poll_fn(|cx| {
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut probe).is_pending())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_quiet_connections_are_open() {
        let (mut quiet, _peer) = tokio::io::duplex(64);
        assert!(still_open(&mut quiet).await);
        let (mut closed, peer) = tokio::io::duplex(64);
        drop(peer);
        assert!(!still_open(&mut closed).await);
        let (mut chatty, mut peer) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"x")
            .await
            .unwrap();
        assert!(!still_open(&mut chatty).await);
    }
}
