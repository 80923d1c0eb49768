//! One chat-server connection's requests: read a request ([`crate::h1::server`]), let the
//! [`Gateway`] answer it, write the answer ([`crate::respond`]) with one `write`, and wait
//! for the next request on the same connection. An idle connection closes after
//! `server.keepalive_timeout`; a started request must arrive whole, and its answer be
//! taken, within `server.client_timeout` (else 408, or a plain close when the answer cannot
//! be written). Requests the framing refuses (oversized, malformed, ambiguous) are answered
//! with their JSON error and the connection is closed, since what follows them on the wire
//! cannot be trusted. On shutdown, idle connections close at once and busy ones after their
//! answer.

use std::future::Future;
use std::net::IpAddr;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::Listener;
use crate::error::GatewayError;
use crate::gateway::{Ctx, Gateway};
use crate::h1::server::{body_complete, parse_head, BodyPlace, Head, Request};
use crate::h1::ChunkedDecoder;
use crate::logs::access::Peer;
use crate::respond;

/// Read buffer kept per connection; it grows up to the head and body limits.
const READ_CHUNK: usize = 4096;

/// Buffers larger than this are given back after the request that grew them.
const SHRINK_ABOVE: usize = 64 * 1024;

/// A connection idle this long gives its buffers back until its next request, so that
/// thousands of idle keep-alive connections hold little memory, while a busy one keeps
/// reusing them.
const IDLE_SHRINK: Duration = Duration::from_secs(1);

/// What an idle connection keeps to read its next request into.
const IDLE_BUF: usize = 256;

/// How long, and for how many bytes at most, a refused client's input is drained.
pub(super) const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// The settings one connection runs with, taken from the configuration in force when it
/// opened (a reload changes them for the connections opened after it).
struct Settings {
    keepalive: Duration,
    client_timeout: Duration,
    max_head: usize,
    max_body: usize,
    /// `correlation.request_id_header` (empty: none).
    request_id_header: String,
}

impl Settings {
    fn of(gateway: &Gateway) -> Self {
        let cfg = gateway.config();
        Settings {
            keepalive: cfg.server.keepalive_timeout,
            client_timeout: cfg.server.client_timeout,
            max_head: usize::try_from(cfg.limits.max_head_bytes).unwrap_or(usize::MAX),
            max_body: usize::try_from(cfg.limits.max_body_bytes).unwrap_or(usize::MAX),
            request_id_header: cfg.correlation.request_id_header.clone(),
        }
    }
}

impl Listener {
    /// Serve one connection until it ends, then close it; with `refusal`, answer that at
    /// once instead.
    pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
        peer: Option<IpAddr>,
        handshake: Option<crate::tls::Handshake>,
        refusal: Option<GatewayError>,
        shutdown: ShutdownWatch,
    ) {
        let settings = Settings::of(&self.gateway);
        let client_timeout = settings.client_timeout;
        let mut conn = Connection {
            app: self,
            settings,
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            chunked: ChunkedDecoder::default(),
            head: None,
            peer,
            peer_text: {
                let mut p = Peer::new(peer.filter(|_| self.gateway.config().log.access));
                if let Some(h) = handshake {
                    p.tls = Some(h.version);
                    p.client_cert = h.client;
                }
                p
            },
            shutdown,
        };
        match refusal {
            Some(e) => conn.refuse(e, None, Instant::now()).await,
            None => conn.run().await,
        }
        // Closing flushes what is still buffered: a client that stops reading must not
        // hold the connection open through it.
        let _ = tokio::time::timeout(client_timeout, conn.io.shutdown()).await;
    }
}

/// How a wait for bytes from the client ended.
enum Arrival {
    Data,
    Closed,
    TimedOut,
    ShuttingDown,
}

/// One chat-server connection: any byte stream (Pingora's, or a scripted one in tests).
struct Connection<'a, S> {
    app: &'a Listener,
    settings: Settings,
    io: S,
    buf: BytesMut,
    out: Vec<u8>,
    chunked: ChunkedDecoder,
    /// The parsed head of the current request (kept to reuse its allocation).
    head: Option<Head>,
    peer: Option<IpAddr>,
    /// The peer as the access log shows it.
    peer_text: Peer,
    shutdown: ShutdownWatch,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    /// Serve requests until the client leaves, a timeout, a refusal or shutdown.
    async fn run(&mut self) {
        // When the connection went idle: when it opened, then when each answer was written.
        let mut idle_since = Instant::now();
        loop {
            if self.buf.is_empty() {
                let idle_until = later(idle_since, self.settings.keepalive);
                let shrink_at = later(idle_since, IDLE_SHRINK);
                let mut arrival = self.read(shrink_at.min(idle_until), true).await;
                if matches!(arrival, Arrival::TimedOut) && shrink_at < idle_until {
                    self.give_back();
                    arrival = self.read(idle_until, true).await;
                }
                if !matches!(arrival, Arrival::Data) {
                    return;
                }
            }
            let start = Instant::now();
            match self.serve_one(start).await {
                Some(written) => idle_since = written,
                None => return,
            }
        }
    }

    /// Read, answer and write one request that began arriving at `start`; when its answer
    /// was written, or None when the connection must end.
    async fn serve_one(&mut self, start: Instant) -> Option<Instant> {
        let deadline = later(start, self.settings.client_timeout);
        loop {
            match parse_head(&self.buf, self.settings.max_head, &mut self.head) {
                Ok(true) => break,
                Ok(false) => match self.read(deadline, false).await {
                    Arrival::Data => {}
                    Arrival::TimedOut => {
                        self.refuse(GatewayError::RequestTimeout, None, start).await;
                        return None;
                    }
                    Arrival::Closed | Arrival::ShuttingDown => return None,
                },
                Err(e) => {
                    self.refuse(e.into(), None, start).await;
                    return None;
                }
            }
        }
        // parse_head filled it; nothing to answer otherwise
        let head = self.head.take()?;
        let method = method_label(head.method(&self.buf));
        let (body, consumed) = match self.body(&head, deadline).await {
            Ok(framed) => framed,
            Err(None) => return None,
            Err(Some(e)) => {
                self.refuse(e, Some(&head), start).await;
                self.head = Some(head);
                return None;
            }
        };

        let gw = &self.app.gateway;
        let mut ctx = gw.begin(start.into_std());
        let body = match body {
            BodyPlace::Inline(start, end) => self.buf.get(start..end).unwrap_or_default(),
            BodyPlace::Chunked => &self.chunked.body[..],
        };
        let req = Request::new(&self.buf, &head, body, self.peer);
        // Boxed: kept inline, the answer future (2 KiB) would sit in every connection's
        // state, idle ones included.
        let answer = Box::pin(gw.answer(&req, &mut ctx)).await;
        // While draining, every answer tells the client to go elsewhere.
        let close = !head.keep_alive || *self.shutdown.borrow() || gw.draining();
        let delivery = respond::Delivery {
            close,
            keep_alive_1_0: head.minor == 0 && !close,
            head_only: method == "HEAD",
            request_id: request_id(&self.settings, &ctx),
        };
        respond::write(&mut self.out, &answer, delivery);
        let written = self.flush().await;
        let ended = gw.finish(method, &self.peer_text, ctx);
        self.head = Some(head);
        self.buf.advance(consumed);
        self.shrink();
        (written && !close).then(|| Instant::from_std(ended))
    }

    /// Give back the buffers of a connection gone idle (the read buffer keeps a little
    /// room for the next request; it grows again as that arrives).
    fn give_back(&mut self) {
        self.buf = BytesMut::with_capacity(IDLE_BUF);
        self.out = Vec::new();
        self.head = None;
        self.chunked = ChunkedDecoder::default();
    }

    /// Give back what one large request made the buffers grow to, so an idle keep-alive
    /// connection holds little memory.
    fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        if self.chunked.body.capacity() > SHRINK_ABOVE {
            self.chunked.body = Vec::new();
        }
        if self.out.capacity() > SHRINK_ABOVE {
            self.out = Vec::with_capacity(1024);
        }
    }

    /// Wait for the body of `head`; its place and the bytes the request took in all.
    /// `Err(Some(e))`: answer `e` and close; `Err(None)`: the client is gone.
    async fn body(
        &mut self,
        head: &Head,
        deadline: Instant,
    ) -> Result<(BodyPlace, usize), Option<GatewayError>> {
        let mut continued = false;
        self.chunked.reset();
        loop {
            match body_complete(head, &self.buf, &mut self.chunked, self.settings.max_body) {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => self.wait_for_body(head, &mut continued, deadline).await?,
                Err(e) => return Err(Some(e.into())),
            }
        }
    }

    /// Read more of a body, after sending `100 Continue` once if the client waits for it.
    async fn wait_for_body(
        &mut self,
        head: &Head,
        continued: &mut bool,
        deadline: Instant,
    ) -> Result<(), Option<GatewayError>> {
        if head.expect_continue && head.minor >= 1 && !*continued {
            *continued = true;
            self.out.extend_from_slice(respond::CONTINUE);
            if !self.flush().await {
                return Err(None);
            }
        }
        match self.read(deadline, false).await {
            Arrival::Data => Ok(()),
            Arrival::TimedOut => Err(Some(GatewayError::RequestTimeout)),
            Arrival::Closed | Arrival::ShuttingDown => Err(None),
        }
    }

    /// Answer a request (begun at `start`) the framing refused; the connection ends after it.
    async fn refuse(&mut self, e: GatewayError, head: Option<&Head>, start: Instant) {
        let gw = &self.app.gateway;
        let mut ctx = gw.begin(start.into_std());
        let req = head.map(|h| Request::new(&self.buf, h, b"", self.peer));
        let answer = gw.refuse(req.as_ref(), &e, &mut ctx);
        let method = head.map_or("-", |h| method_label(h.method(&self.buf)));
        let delivery = respond::Delivery {
            close: true,
            head_only: method == "HEAD",
            request_id: request_id(&self.settings, &ctx),
            ..respond::Delivery::default()
        };
        respond::write(&mut self.out, &answer, delivery);
        if self.flush().await {
            self.linger().await;
        }
        gw.finish(method, &self.peer_text, ctx);
    }

    /// Before closing on a refused request, stop writing and read (and drop) what the
    /// client is still sending, briefly: closing with unread input makes the kernel reset
    /// the connection, and the reset can destroy the error answer before the client reads it.
    async fn linger(&mut self) {
        let closed = tokio::time::timeout(self.settings.client_timeout, self.io.shutdown()).await;
        if !matches!(closed, Ok(Ok(()))) {
            return;
        }
        let until = later(Instant::now(), LINGER);
        let mut drained = 0;
        while drained < LINGER_BYTES {
            self.buf.clear();
            match self.read(until, false).await {
                Arrival::Data => drained = drained.saturating_add(self.buf.len()),
                Arrival::Closed | Arrival::TimedOut | Arrival::ShuttingDown => return,
            }
        }
    }

    /// Read what the client sent into the buffer, until `deadline`. While `idle` (between
    /// requests) a shutdown ends the wait.
    async fn read(&mut self, deadline: Instant, idle: bool) -> Arrival {
        // Between requests any room will do (an idle connection keeps little); within one,
        // grow by whole chunks.
        let want = if idle { 1 } else { READ_CHUNK / 4 };
        if self.buf.capacity().saturating_sub(self.buf.len()) < want {
            self.buf.reserve(READ_CHUNK);
        }
        let Connection {
            io, buf, shutdown, ..
        } = self;
        let read = timeout_at(deadline, io.read_buf(buf));
        let result = if idle {
            if *shutdown.borrow() {
                return Arrival::ShuttingDown;
            }
            tokio::select! {
                r = read => r,
                _ = shutdown.wait_for(|down| *down) => return Arrival::ShuttingDown,
            }
        } else {
            read.await
        };
        match result {
            Ok(Ok(0)) | Ok(Err(_)) => Arrival::Closed,
            Ok(Ok(_)) => Arrival::Data,
            Err(_) => Arrival::TimedOut,
        }
    }

    /// Write the output buffer within `server.client_timeout`; false if that failed.
    async fn flush(&mut self) -> bool {
        let Connection { io, out, .. } = self;
        let mut write = std::pin::pin!(async {
            io.write_all(out).await?;
            io.flush().await
        });
        // An answer almost always fits the socket's buffer at once: the timer is armed
        // (and the clock read) only for one that has to wait.
        let ok = match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(written) => written.is_ok(),
            Poll::Pending => matches!(
                tokio::time::timeout(self.settings.client_timeout, write).await,
                Ok(Ok(()))
            ),
        };
        self.out.clear();
        ok
    }
}

/// The request id header to echo, if the request has one.
fn request_id<'c>(settings: &'c Settings, ctx: &'c Ctx) -> Option<(&'c str, &'c str)> {
    let name = settings.request_id_header.as_str();
    ctx.request_id().filter(|_| !name.is_empty()).map(|id| (name, id))
}

/// The instant `d` after `t` (far in the future rather than overflowing).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// The request method as a log label (a fixed set: never arbitrary client text).
pub(crate) fn method_label(method: &[u8]) -> &'static str {
    const KNOWN: [&str; 8] = [
        "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| m.as_bytes() == method)
        .copied()
        .unwrap_or("OTHER")
}
