//! The gateway's HTTP/1.1 client against a scripted internal system on a raw socket:
//! chunked, close-delimited and interim (1xx) answers are read whole; oversized and
//! ambiguously framed answers are CRM_INVALID_RESPONSE; connections the system closes
//! after an answer are not reused; a keep-alive connection is.

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{token, Gateway};

const CARD: &str = r#"{"client":{"id":"77","name":"Scripted"}}"#;

/// A scripted internal system: the answer depends on the token header's prefix.
struct Scripted {
    url: String,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(stream));
            }
        });
        Scripted { url, connections }
    }
}

/// Answer requests on one connection until the script closes it or the peer leaves.
fn serve(stream: TcpStream) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some((fields, _)) = common::read_request(&mut reader) {
        let token = fields
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let (answer, keep) = script(&token);
        if out.write_all(&answer).is_err() || !keep {
            return;
        }
    }
}

/// The raw answer for a token, and whether the connection stays open after it.
fn script(token: &str) -> (Vec<u8>, bool) {
    let json = "Content-Type: application/json\r\n";
    let kind = token.split('-').next().unwrap_or("");
    let answer = match kind {
        "chunked" => {
            let (a, b) = CARD.split_at(10);
            format!(
                "HTTP/1.1 200 OK\r\n{json}Transfer-Encoding: chunked\r\n\r\n{:x};note=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
                a.len(),
                b.len()
            )
        }
        "eof" => format!("HTTP/1.0 200 OK\r\n{json}\r\n{CARD}"),
        "interim" => format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n{json}Content-Length: {}\r\n\r\n{CARD}",
            CARD.len()
        ),
        "huge" => format!("HTTP/1.1 200 OK\r\n{json}Content-Length: 2000000\r\n\r\n{CARD}"),
        "ambiguous" => format!(
            "HTTP/1.1 200 OK\r\n{json}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{CARD}",
            CARD.len()
        ),
        "short" => format!("HTTP/1.1 200 OK\r\n{json}Content-Length: 500\r\n\r\n{CARD}"),
        "echo" | "echo404" | "echo401" | "echo200" | "echoupper" | "echo403" => {
            let (status, code) = match kind {
                "echo" => ("404 Not Found", format!("no client for {token}")),
                "echo404" => ("404 Not Found", format!("BAD_TOKEN_{token}")),
                "echo401" => ("401 Unauthorized", token.to_string()),
                "echo200" => ("200 OK", format!("echo-{token}")),
                "echoupper" => ("404 Not Found", format!("BAD_TOKEN_{}", token.to_uppercase())),
                _ => ("403 Forbidden", format!("FORBIDDEN_{token}")),
            };
            let body = format!(r#"{{"errorCode":"{code}","errorText":"unknown"}}"#);
            format!("HTTP/1.1 {status}\r\n{json}Content-Length: {}\r\n\r\n{body}", body.len())
        }
        "twocc" => format!(
            "HTTP/1.1 200 OK\r\n{json}Cache-Control: no-store\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{CARD}",
            CARD.len()
        ),
        "folded" => format!(
            "HTTP/1.1 200 OK\r\n{json}X-Long: first\r\n  continued\r\nContent-Length : {}\r\n\r\n{CARD}",
            CARD.len()
        ),
        "closing" => format!(
            "HTTP/1.1 200 OK\r\n{json}Content-Length: {}\r\nConnection: close\r\n\r\n{CARD}",
            CARD.len()
        ),
        _ => format!(
            "HTTP/1.1 200 OK\r\n{json}Content-Length: {}\r\n\r\n{CARD}",
            CARD.len()
        ),
    };
    let keep = !matches!(kind, "eof" | "huge" | "short" | "closing" | "ambiguous");
    (answer.into_bytes(), keep)
}

fn gateway(crm: &Scripted) -> Gateway {
    // No cache: every request below reaches the scripted system; no health check's
    // connection counts among the ones it sees.
    Gateway::start(
        &crm.url,
        &[
            ("cache", "ttl = \"0s\"\nnegative_ttl = \"0s\""),
            ("upstream", "health = { interval = \"1h\" }"),
        ],
    )
}

#[test]
fn answers_framed_every_way_are_read_whole() {
    let crm = Scripted::start();
    let gw = gateway(&crm);
    let mut used = Vec::new();
    for kind in ["chunked", "eof", "interim", "plain"] {
        let t = token(kind);
        let r = gw.post_card(&t);
        assert_eq!(r.status, 200, "{kind}: {}", r.body);
        assert_eq!(r.body, CARD, "{kind}");
        used.push(t);
    }
    let refs: Vec<&str> = used.iter().map(String::as_str).collect();
    gw.assert_never_shown(&refs);
}

#[test]
fn oversized_ambiguous_and_truncated_answers_are_invalid() {
    let crm = Scripted::start();
    let gw = gateway(&crm);
    for kind in ["huge", "ambiguous", "short"] {
        let t = token(kind);
        let r = gw.post_card(&t);
        let code = r.error_code();
        let want = if kind == "short" {
            "CRM_UNAVAILABLE"
        } else {
            "CRM_INVALID_RESPONSE"
        };
        assert_eq!((r.status, code.as_str()), (502, want), "{kind}: {}", r.body);
        // The next request is served normally (on another connection).
        let ok = gw.post_card(&token("plain"));
        assert_eq!(ok.status, 200, "after {kind}: {}", ok.body);
    }
}

#[test]
fn keepalive_connections_are_reused_and_closed_ones_are_not() {
    let crm = Scripted::start();
    let gw = gateway(&crm);
    for _ in 0..5 {
        assert_eq!(gw.post_card(&token("plain")).status, 200);
    }
    assert_eq!(
        crm.connections.load(Ordering::SeqCst),
        1,
        "sequential requests share one pooled connection"
    );
    for _ in 0..3 {
        assert_eq!(gw.post_card(&token("closing")).status, 200);
    }
    // The first "closing" answer came on the pooled connection and ended it; the next two
    // needed new ones, and so does the request after them.
    assert_eq!(crm.connections.load(Ordering::SeqCst), 3);
    assert_eq!(gw.post_card(&token("plain")).status, 200);
    assert_eq!(crm.connections.load(Ordering::SeqCst), 4);
}

#[test]
fn a_crm_code_that_echoes_the_token_never_reaches_the_log() {
    let crm = Scripted::start();
    let gw = gateway(&crm);
    // The CRM's code for each token, as the log line has it ({fp}: the line's tokenFp),
    // and the status the chat server gets.
    let cases = [
        ("echo", 404, "CRM_404"),
        ("echo404", 404, "BAD_TOKEN_{fp}"),
        ("echo401", 401, "{fp}"),
        ("echo200", 404, "echo-{fp}"),
        ("echoupper", 404, "BAD_TOKEN_{fp}"),
        ("echo403", 403, "FORBIDDEN_{fp}"),
    ];
    let tokens: Vec<String> = cases.iter().map(|(kind, _, _)| token(kind)).collect();
    let lines = || -> Vec<serde_json::Value> {
        gw.proc
            .output()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["api"] == "auth")
            .collect()
    };
    for (i, ((kind, status, _), t)) in cases.iter().zip(&tokens).enumerate() {
        let r = gw.post_card(t);
        // The chat server gets the CRM's own answer, token and all.
        assert_eq!(r.status, *status, "{kind}: {}", r.body);
        assert!(r.error_code().to_lowercase().contains(t), "{kind}: {}", r.body);
        // A request's line is written after its answer: wait for it, so lines keep order.
        assert!(
            common::eventually(Duration::from_secs(10), || lines().len() > i),
            "{kind}: no log line"
        );
    }
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let upper: Vec<String> = tokens.iter().map(|t| t.to_uppercase()).collect();
    gw.assert_never_shown(&refs);
    gw.assert_never_shown(&upper.iter().map(String::as_str).collect::<Vec<_>>());
    let lines = lines();
    assert_eq!(lines.len(), cases.len(), "{lines:?}");
    for ((kind, _, logged), line) in cases.iter().zip(&lines) {
        let fp = line["tokenFp"].as_str().unwrap();
        assert_eq!(line["errorCode"], logged.replace("{fp}", fp), "{kind}: {line}");
    }
}

#[test]
fn every_cache_control_line_counts_and_lenient_heads_are_read() {
    let crm = Scripted::start();
    let gw = Gateway::start(&crm.url, &[]);
    let t = token("twocc");
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("MISS"));
    assert_eq!(
        gw.post_card(&t).header("x-cache"),
        Some("MISS"),
        "no-store on one line, max-age on another: not stored"
    );
    let r = gw.post_card(&token("folded"));
    assert_eq!((r.status, r.body.as_str()), (200, CARD));
}
