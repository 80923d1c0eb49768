//! The chat-server listener's HTTP/1.1 over raw connections: keep-alive and pipelining,
//! body framing (Content-Length, chunked, `Expect: 100-continue`), HTTP/1.0, HEAD, and
//! the refusals that close the connection (framing errors, oversized heads and bodies,
//! slow requests), each a JSON error.

mod common;

use std::time::{Duration, Instant};

use common::{token, Gateway, Mock, Raw};

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n")
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let (a, b) = (token("pipe-a"), token("pipe-b"));
    let mut c = Raw::connect(&gw.addr);
    let burst = [
        get(&format!("/rest/chat/client/id/{a}")),
        get("/nowhere"),
        format!("POST /rest/chat/client/id/ HTTP/1.1\r\nHost: gw\r\ntoken: {b}\r\nContent-Length: 0\r\n\r\n"),
        get(&format!("/rest/chat/client/id/{a}")),
    ]
    .concat();
    c.send(burst.as_bytes());
    let answers: Vec<_> = (0..4)
        .map(|i| c.read().unwrap_or_else(|| panic!("answer {i}")))
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 200, 200]);
    assert_eq!(answers[0].json(), cardgate::testkit::mock::card(a.as_bytes()));
    assert_eq!(answers[2].json(), cardgate::testkit::mock::card(b.as_bytes()));
    assert_eq!(answers[3].header("x-cache"), Some("HIT"));
    assert!(answers[0].header("date").is_some());
    // Still open.
    let r = c.roundtrip(get("/nowhere").as_bytes()).expect("connection kept");
    assert_eq!(r.status, 404);
    gw.assert_never_shown(&[&a, &b]);
}

#[test]
fn chunked_bodies_and_expect_continue_reach_the_search_api() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let mut c = Raw::connect(&gw.addr);
    let chunked = "POST /rest/chat/client/search/ HTTP/1.1\r\nHost: gw\r\n\
                   Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n\
                   7\r\nclient=\r\n12;note=x\r\n%2B7+999+111+22+33\r\n0\r\n\r\n";
    let r = c.roundtrip(chunked.as_bytes()).expect("answer");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["answerType"], 1);

    let body = "client=%2B7+999+111+22+44";
    c.send(
        format!(
            "POST /rest/chat/client/search/ HTTP/1.1\r\nHost: gw\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let interim = c.read_head().expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.send(body.as_bytes());
    let r = c.read().expect("answer");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["answerType"], 1);
    let bodies: Vec<String> = mock
        .journal()
        .iter()
        .filter_map(|e| e["body"].as_str().map(str::to_string))
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("client=%2B7+999+111+22+33")),
        "{bodies:?}"
    );
    assert!(
        bodies.iter().any(|b| b.contains("client=%2B7+999+111+22+44")),
        "{bodies:?}"
    );
}

#[test]
fn connection_header_version_and_head_are_honoured() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("conn");
    let card = format!("/rest/chat/client/id/{t}");

    let mut c = Raw::connect(&gw.addr);
    let r = c
        .roundtrip(format!("GET {card} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.is_closed());

    let mut c = Raw::connect(&gw.addr);
    let r = c
        .roundtrip(format!("GET {card} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.is_closed(), "HTTP/1.0 without keep-alive closes");

    let mut c = Raw::connect(&gw.addr);
    let keep = format!("GET {card} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.roundtrip(keep.as_bytes()).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    assert_eq!(c.roundtrip(keep.as_bytes()).unwrap().status, 200);

    // HEAD: the headers of the answer, no body; the connection stays usable.
    let mut c = Raw::connect(&gw.addr);
    c.send(format!("HEAD {card} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
    let r = c.read_head().unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert_ne!(r.header("content-length"), Some("0"));
    let r = c.roundtrip(get("/nowhere").as_bytes()).unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (404, "NOT_FOUND"));

    // A refused HEAD: headers only too, then the connection closes.
    let mut h = Raw::connect(&gw.addr);
    h.send(format!("HEAD {card} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1e3\r\n\r\n").as_bytes());
    let r = h.read_head().unwrap();
    assert_eq!((r.status, r.header("connection")), (400, Some("close")));
    assert!(h.is_closed(), "no body follows the refusal of a HEAD");

    // An absolute-form target is routed by its path, and its authority is the request's
    // host: the Host field is ignored (RFC 9112 §3.2.2), however it differs.
    for host in ["gw", "elsewhere.example:8080"] {
        let r = c
            .roundtrip(format!("GET http://gw{card}?x=1 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    gw.assert_never_shown(&[&t]);
}

#[test]
fn framing_errors_are_json_4xx_and_close_the_connection() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[(
            "limits",
            "max_token_bytes = 64\nmax_body_bytes = 256\nmax_head_bytes = 2048",
        )],
    );
    let search = "POST /rest/chat/client/search/ HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n";
    let many: String = (0..70).map(|i| format!("X-F{i}: v\r\n")).collect();
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{search}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            400,
            "BAD_REQUEST",
        ),
        (
            format!("{search}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
            400,
            "BAD_REQUEST",
        ),
        (
            format!("{search}Transfer-Encoding: gzip\r\n\r\n"),
            400,
            "BAD_REQUEST",
        ),
        (
            format!("{search}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400,
            "BAD_REQUEST",
        ),
        ("HELLO\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        // A Host that is not host[:port] (RFC 9112 §3.2).
        ("GET /rest/chat/client/id/abcd HTTP/1.1\r\nHost: g w\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        ("GET /rest/chat/client/id/abcd HTTP/1.1\r\nHost: g\tw\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        ("GET /rest/chat/client/id/abcd HTTP/1.1\r\nHost: g\x01w\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        ("GET /rest/chat/client/id/abcd HTTP/1.1\r\nHost: gw:\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        ("GET http://gw:/rest/chat/client/id/abcd HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        ("GET /rest/chat/client/id/abcd\u{e9} HTTP/1.1\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        ("GET /rest/chat/client/search\u{e9} HTTP/1.1\r\n\r\n".to_string(), 400, "BAD_REQUEST"),
        (
            format!("{search}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            400,
            "BAD_REQUEST",
        ),
        (
            "GET /rest/chat/client/id/x HTTP/9.9\r\n\r\n".to_string(),
            400,
            "BAD_REQUEST",
        ),
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(3000)),
            414,
            "URI_TOO_LONG",
        ),
        (
            format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(3000)),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (format!("GET / HTTP/1.1\r\n{many}\r\n"), 431, "HEADERS_TOO_LARGE"),
        (
            format!("{search}Content-Length: 100000\r\n\r\n{}", "c".repeat(5000)),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            format!(
                "{search}Transfer-Encoding: chunked\r\n\r\n200\r\n{}\r\n0\r\n\r\n",
                "d".repeat(512)
            ),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (i, (raw, status, code)) in cases.iter().enumerate() {
        let mut c = Raw::connect(&gw.addr);
        let r = c
            .roundtrip(raw.as_bytes())
            .unwrap_or_else(|| panic!("case {i}: no answer"));
        assert_eq!(r.status, *status, "case {i}: {}", r.body);
        assert_eq!(r.error_code(), *code, "case {i}");
        assert_eq!(r.header("connection"), Some("close"), "case {i}");
        assert!(c.is_closed(), "case {i}: connection closed after the refusal");
        if raw.starts_with(search) {
            assert!(
                r.json()["errorMessage"].is_string(),
                "case {i}: search error shape"
            );
        }
    }
    assert!(mock.journal().is_empty(), "no refused request reaches the CRM");
    let out = gw.proc.output();
    assert!(!out.contains("\"status\":5"), "no 5xx for bad input:\n{out}");
    assert_eq!(
        gw.metric("cardgate_requests_total{api=\"search\",status=\"413\"}"),
        2.0
    );
}

#[test]
fn slow_requests_get_408_and_idle_connections_are_closed() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[(
            "server",
            "client_timeout = \"300ms\"\nkeepalive_timeout = \"600ms\"",
        )],
    );
    // A head that never completes.
    let mut c = Raw::connect(&gw.addr);
    c.send(b"GET /rest/chat/client/id/slow HTTP/1.1\r\nHost: gw\r\n");
    let r = c.read().expect("an answer before the connection closes");
    assert_eq!((r.status, r.error_code().as_str()), (408, "REQUEST_TIMEOUT"));
    assert!(c.is_closed());
    // Closed at once, so the gateway's linger ends too: what is counted is the wait for
    // the head, from its first byte.
    drop(c);
    let timed = gw.metric("cardgate_request_duration_seconds_sum{api=\"other\"}");
    assert!(
        timed >= 0.3,
        "a refused request is timed from its first byte: {timed} s"
    );

    // A body that never completes.
    let mut c = Raw::connect(&gw.addr);
    c.send(b"POST /rest/chat/client/search/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nclient");
    let r = c.read().expect("an answer before the connection closes");
    assert_eq!((r.status, r.error_code().as_str()), (408, "REQUEST_TIMEOUT"));

    // An idle keep-alive connection is closed by the gateway (well before the harness's
    // own 10 s read timeout would end the wait).
    let mut c = Raw::connect(&gw.addr);
    assert_eq!(c.roundtrip(get("/nowhere").as_bytes()).unwrap().status, 404);
    let start = Instant::now();
    assert!(c.is_closed(), "idle connection closed");
    assert!(start.elapsed() < Duration::from_secs(9));
    assert!(mock.journal().is_empty());
}
