//! The connection state machine against scripted I/O, on a paused clock: reads arrive
//! as the script says (in pieces, after waits), answers go into a pipe the test reads
//! afterwards (or never, to play a client that stops reading), and every timeout is
//! exact because tokio's clock only moves when every task waits.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_test::io::{Builder, Mock};

use super::connection::{method_label, LINGER};
use super::*;
use crate::config::Config;

const KEEPALIVE: Duration = Duration::from_secs(5);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn listener() -> Listener {
    let cfg = Config::from_toml(
        "[server]\nkeepalive_timeout = \"5s\"\nclient_timeout = \"2s\"\n\
         [log]\naccess = false\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let gateway = Gateway::new(cfg).unwrap();
    let opening = Opening::new(gateway.chat_gate(), None, None);
    Listener::new(gateway, opening)
}

/// Serve one scripted connection whose answers go into a pipe of `capacity` bytes that
/// is read only once the connection is over. What was written, and how long it took.
async fn serve(reads: Mock, capacity: usize, shutdown: ShutdownWatch) -> (String, Duration) {
    let (ours, mut theirs) = tokio::io::duplex(capacity);
    let start = Instant::now();
    listener()
        .serve(tokio::io::join(reads, ours), None, None, None, shutdown)
        .await;
    let took = start.elapsed();
    let mut out = Vec::new();
    theirs.read_to_end(&mut out).await.unwrap();
    (String::from_utf8(out).unwrap(), took)
}

fn running() -> ShutdownWatch {
    let (tx, rx) = watch::channel(false);
    // Keep the sender alive for the whole test: a dropped sender is not a shutdown.
    std::mem::forget(tx);
    rx
}

/// The status lines of the answers in `out`, in order.
fn statuses(out: &str) -> Vec<&str> {
    out.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| out[at..].split("\r\n").next())
        .collect()
}

const GET: &[u8] = b"GET /no/such/route HTTP/1.1\r\nHost: gw\r\n\r\n";

#[tokio::test(start_paused = true)]
async fn a_head_that_arrives_byte_by_byte() {
    let mut script = Builder::new();
    for b in GET {
        script.read(std::slice::from_ref(b));
    }
    let (out, _) = serve(script.build(), 64 * 1024, running()).await;
    assert_eq!(statuses(&out), ["HTTP/1.1 404 Not Found"], "{out}");
    assert!(!out.contains("Connection: close"), "{out}");
    assert!(out.ends_with(r#""errorText":"no such route"}"#), "{out}");
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_are_answered_in_order() {
    let two = [
        GET,
        b"POST /rest/chat/client/id/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    let (out, _) = serve(Builder::new().read(&two).build(), 64 * 1024, running()).await;
    assert_eq!(
        statuses(&out),
        ["HTTP/1.1 404 Not Found", "HTTP/1.1 400 Bad Request"],
        "{out}"
    );
    let second = out.rfind("HTTP/1.1 ").unwrap();
    assert!(out[second..].contains("Connection: close"), "{out}");
    assert!(!out[..second].contains("Connection: close"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_after_the_keepalive_timeout() {
    let script = Builder::new().read(GET).wait(Duration::from_secs(3600)).build();
    let (out, took) = serve(script, 64 * 1024, running()).await;
    assert_eq!(statuses(&out).len(), 1, "{out}");
    // The idle wait starts when the answer was written, an instant the gateway reads from
    // the real clock (`Gateway::finish`, the one clock read that also times the request),
    // while this test's clock is paused: the real time the first answer took is added,
    // up to a few hundred milliseconds on a loaded machine. The client's own wait is 3600 s.
    assert!(
        took >= KEEPALIVE && took < KEEPALIVE + Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_stalls_gets_408_after_the_client_timeout() {
    let script = Builder::new()
        .read(b"GET /no/such/route HTTP/1.1\r\nHo")
        .wait(Duration::from_secs(3600))
        .build();
    let (out, took) = serve(script, 64 * 1024, running()).await;
    assert_eq!(statuses(&out), ["HTTP/1.1 408 Request Timeout"], "{out}");
    assert!(out.contains("Connection: close"), "{out}");
    // The timeout, then the brief linger for input the client may still send.
    assert!(took >= CLIENT_TIMEOUT + LINGER, "{took:?}");
    assert!(
        took < CLIENT_TIMEOUT + LINGER + Duration::from_millis(100),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_in_pieces_after_100_continue() {
    let script = Builder::new()
        .read(b"POST /no/such/route HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
        .wait(Duration::from_millis(300))
        .read(b"5\r\nhel")
        .wait(Duration::from_millis(300))
        .read(b"lo\r\n0\r\n\r\n")
        .build();
    let (out, took) = serve(script, 64 * 1024, running()).await;
    assert!(
        out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n"),
        "{out}"
    );
    assert_eq!(took, Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_after_the_client_timeout() {
    // 80 pipelined requests (one read); their answers fill the 256-byte pipe nobody reads.
    let script = Builder::new()
        .read(&GET.repeat(80))
        .wait(Duration::from_secs(3600))
        .build();
    let (out, took) = serve(script, 256, running()).await;
    assert!(
        took >= CLIENT_TIMEOUT && took < CLIENT_TIMEOUT + Duration::from_millis(100),
        "{took:?}"
    );
    assert!(statuses(&out).len() < 3, "{out}");
}

#[tokio::test(start_paused = true)]
async fn a_tiny_chunked_body_gets_the_same_verdict_in_any_pieces() {
    // 8014 bytes of data in one-byte chunks: within the 16 KiB body limit, but 40 KB of
    // framing. Sent in one burst or in 2 KB pieces, the answer is the same 413.
    let body = [b"1\r\nx\r\n".repeat(8014), b"0\r\n\r\n".to_vec()].concat();
    let head = b"POST /no/such/route HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut verdicts = Vec::new();
    for piece in [body.len(), 2048, 1] {
        let mut script = Builder::new();
        script.read(head);
        for part in body.chunks(piece) {
            script.read(part);
        }
        let (out, _) = serve(script.build(), 64 * 1024, running()).await;
        verdicts.push(statuses(&out).first().map(|s| s.to_string()));
    }
    assert_eq!(
        verdicts,
        vec![Some("HTTP/1.1 413 Content Too Large".to_string()); 3]
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_refused_for_its_host_keeps_its_head() {
    // HEAD: the refusal has headers only.
    let (out, _) = serve(
        Builder::new().read(b"HEAD /x HTTP/1.1\r\n\r\n").build(),
        64 * 1024,
        running(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.ends_with("Connection: close\r\n\r\n"), "{out}");
    // A search: the refusal has the Search client API's error shape.
    let script = Builder::new()
        .read(b"POST /rest/chat/client/search/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .build();
    let (out, _) = serve(script, 64 * 1024, running()).await;
    assert!(
        out.contains(r#""errorMessage":"Host header is missing""#),
        "{out}"
    );
}

/// A stream whose close never completes (its peer stopped reading what is buffered).
struct StuckClose<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for StuckClose<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StuckClose<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn closing_a_connection_has_a_deadline_too() {
    // A refused request (linger, then close) and a plain end of input, on a stream whose
    // close would wait forever.
    for input in [&b"GARBAGE\r\n\r\n"[..], GET] {
        let (ours, _theirs) = tokio::io::duplex(64 * 1024);
        let io = StuckClose(tokio::io::join(Builder::new().read(input).build(), ours));
        let start = Instant::now();
        listener().serve(io, None, None, None, running()).await;
        assert!(start.elapsed() <= 2 * CLIENT_TIMEOUT, "{:?}", start.elapsed());
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_idle_connections_and_busy_ones_after_their_answer() {
    let (tx, rx) = watch::channel(false);
    let script = Builder::new().wait(Duration::from_secs(3600)).build();
    let stop = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        tx
    });
    let (out, took) = serve(script, 64 * 1024, rx).await;
    assert_eq!((out.as_str(), took), ("", Duration::from_secs(1)));
    drop(stop.await);

    let (tx, rx) = watch::channel(false);
    let script = Builder::new()
        .read(b"POST /no/such/route HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nab")
        .wait(Duration::from_secs(1))
        .read(b"cde")
        .build();
    let stop = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(true).unwrap();
        tx
    });
    let (out, _) = serve(script, 64 * 1024, rx).await;
    assert_eq!(statuses(&out), ["HTTP/1.1 404 Not Found"], "{out}");
    assert!(out.contains("Connection: close"), "{out}");
    drop(stop.await);
}

#[test]
fn method_labels_are_a_fixed_set() {
    assert_eq!(method_label(b"GET"), "GET");
    assert_eq!(method_label(b"POST"), "POST");
    assert_eq!(method_label(b"BREW"), "OTHER");
    assert_eq!(method_label(b"get"), "OTHER");
}
