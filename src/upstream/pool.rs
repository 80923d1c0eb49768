//! Idle keep-alive connections to the internal system, newest first.
//!
//! A connection goes back into the pool after a clean exchange and comes out for the
//! next one if it is still open: one the internal system closed meanwhile reads as its
//! end, one that has bytes nobody asked for is out of step; both are dropped. The pool
//! keeps at most `upstream.pool_size` idle connections, none idle longer than
//! `upstream.pool_idle_timeout`; a reaper task closes the expired and the closed ones
//! even when no request comes, so none lingers half-closed.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    size: usize,
    max_idle: Duration,
    reaper: AtomicBool,
}

/// A pooled connection, its read buffer, and when it was put back.
struct Idle {
    io: Stream,
    buf: BytesMut,
    since: Instant,
}

impl Pool {
    pub fn new(size: usize, max_idle: Duration) -> Arc<Self> {
        Arc::new(Pool {
            idle: Mutex::new(VecDeque::new()),
            size,
            max_idle,
            reaper: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest pooled connection that is still open, if any, with its read buffer.
    pub async fn take(&self) -> Option<(Stream, BytesMut)> {
        loop {
            let mut idle = self.lock().pop_back()?;
            if idle.since.elapsed() >= self.max_idle {
                // The newest is too old: so are all the others.
                let old = std::mem::take(&mut *self.lock());
                drop(old);
                return None;
            }
            if still_open(&mut idle.io).await {
                return Some((idle.io, idle.buf));
            }
        }
    }

    /// Keep a connection and its read buffer for the next exchange (the oldest goes when
    /// the pool is full).
    pub fn put(self: &Arc<Self>, io: Stream, buf: BytesMut) {
        let evicted = {
            let mut pool = self.lock();
            pool.push_back(Idle {
                io,
                buf,
                since: Instant::now(),
            });
            (pool.len() > self.size).then(|| pool.pop_front())
        };
        drop(evicted);
        if !self.reaper.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Close the connections idle too long or closed by the other side; how many are left.
    async fn sweep(&self) -> usize {
        let idle = std::mem::take(&mut *self.lock());
        let mut kept = VecDeque::with_capacity(idle.len());
        for mut conn in idle {
            if conn.since.elapsed() < self.max_idle && still_open(&mut conn.io).await {
                kept.push_back(conn);
            }
        }
        let mut pool = self.lock();
        // Connections put back meanwhile are newer: they go after the kept ones.
        kept.append(&mut pool);
        *pool = kept;
        pool.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Sweep the pool a few times per idle period, for as long as it exists.
async fn reap(pool: Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(p) => (p.max_idle.checked_div(4).unwrap_or_default())
            .clamp(Duration::from_millis(50), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep().await;
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

    #[tokio::test(start_paused = true)]
    async fn the_reaper_closes_expired_and_closed_connections_without_traffic() {
        let pool = Pool::new(8, Duration::from_secs(4));
        let (quiet, _quiet_peer) = tokio::io::duplex(64);
        let (closing, closing_peer) = tokio::io::duplex(64);
        pool.put(Box::new(quiet), BytesMut::new());
        pool.put(Box::new(closing), BytesMut::new());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(pool.len(), 2);
        drop(closing_peer);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(pool.len(), 1, "the closed one is gone at the next sweep");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(pool.len(), 0, "the idle one expired");
    }
}
