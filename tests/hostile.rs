//! Regressions of the hostile review, against the real binary: each test replays one
//! attack and checks the gateway's answer, the connection's fate and what reached the CRM.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::tls::{client_hello, get_after, Setup};
use common::{connect_from, eventually, free_port, token, Gateway, Mock, Raw};

#[test]
fn a_connect_tunnel_is_refused_and_its_bytes_never_read_as_a_request() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("tunnel");
    let mut c = Raw::connect(&gw.addr);
    c.send(
        format!("CONNECT crm:443 HTTP/1.1\r\nHost: crm:443\r\n\r\nGET /rest/chat/client/id/{t} HTTP/1.1\r\nHost: gw\r\n\r\n")
            .as_bytes(),
    );
    let r = c.read().expect("an answer");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "BAD_REQUEST"),
        "{}",
        r.body
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed(), "the tunnel bytes must not be answered");
    assert!(
        mock.calls_for(&t).is_empty(),
        "nothing after CONNECT reached the CRM"
    );
}

#[test]
fn host_must_be_there_once_and_valid_and_an_absolute_target_overrides_it() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("host");
    for raw in [
        format!("GET /rest/chat/client/id/{t} HTTP/1.1\r\n\r\n"),
        format!("GET /rest/chat/client/id/{t} HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n"),
        format!("GET /rest/chat/client/id/{t} HTTP/1.1\r\nHost: g w\r\n\r\n"),
        format!("GET http://elsewhere/rest/chat/client/id/{t} HTTP/1.1\r\nHost: gw:\r\n\r\n"),
    ] {
        let mut c = Raw::connect(&gw.addr);
        let r = c.roundtrip(raw.as_bytes()).expect("an answer");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "BAD_REQUEST"),
            "{raw:?}"
        );
        assert!(c.is_closed(), "{raw:?}");
    }
    assert!(mock.calls_for(&t).is_empty());
    // RFC 9112 §3.2.2: the target's authority is the host, whatever Host says.
    for authority in ["GW", "elsewhere"] {
        let mut c = Raw::connect(&gw.addr);
        let raw = format!("GET http://{authority}/rest/chat/client/id/{t} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let r = c.roundtrip(raw.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{authority}: {}", r.body);
    }
}

#[test]
fn calls_beyond_max_inflight_are_shed_at_once() {
    let mock = Mock::start();
    let gw = Arc::new(Gateway::start(
        &mock.url(),
        &[
            ("upstream", "max_inflight = 2\nqueue_timeout = \"50ms\""),
            ("cache", "ttl = \"0s\""),
        ],
    ));
    // `lag` tokens: the mock answers after 500 ms. Two calls take both slots; once the
    // gateway counts them in flight, six more are shed after the 50 ms queue wait.
    let tokens: Vec<String> = (0..8).map(|i| token(&format!("lag{i}"))).collect();
    let spawn = |t: &String| {
        let (gw, t) = (gw.clone(), t.clone());
        thread::spawn(move || gw.get_card(&t))
    };
    let held: Vec<_> = tokens[..2].iter().map(spawn).collect();
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || gw
            .metric_now("cardgate_inflight_requests")
            == 2.0),
        "the two calls did not start"
    );
    let shed: Vec<_> = tokens[2..].iter().map(spawn).collect();
    let shed: Vec<_> = shed.into_iter().map(|h| h.join().unwrap()).collect();
    let held: Vec<_> = held.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(held.iter().all(|r| r.status == 200), "{held:?}");
    for r in &shed {
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (503, "CRM_OVERLOADED"),
            "{}",
            r.body
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let calls: usize = tokens.iter().map(|t| mock.calls_for(t).len()).sum();
    assert_eq!(calls, 2, "shed calls never reach the CRM");
    assert_eq!(
        gw.metric("cardgate_upstream_requests_total{outcome=\"overloaded\"}"),
        6.0
    );
}

#[test]
fn an_admin_request_whose_body_never_arrives_does_nothing() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("kept");
    assert_eq!(gw.get_card(&t).status, 200);
    let mut s = TcpStream::connect(&gw.admin).unwrap();
    s.write_all(b"POST /cache/clear HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        gw.get_card(&t).header("x-cache"),
        Some("HIT"),
        "the cache was not cleared"
    );
}

#[test]
fn concurrent_wrong_codes_get_exactly_max_attempts_crm_calls() {
    let mock = Mock::start();
    let gw = Arc::new(Gateway::start(&mock.url(), &[("search", "max_attempts = 3")]));
    let first = gw.search(
        "/rest/chat/client/search/",
        &[("client", "+7 999 999 99 90")],
        false,
    );
    assert_eq!(first.status, 200, "{}", first.body);
    let step = first.json()["stepId"].as_str().unwrap().to_string();
    let guesses: Vec<_> = (0..50)
        .map(|i| {
            let (gw, step) = (gw.clone(), step.clone());
            thread::spawn(move || {
                let code = format!("{:04}", 9000 + i);
                let params = [
                    ("client", "+7 999 999 99 90"),
                    ("stepId", step.as_str()),
                    ("secretWord", code.as_str()),
                ];
                gw.search("/rest/chat/client/search/", &params, false).status
            })
        })
        .collect();
    let statuses: Vec<u16> = guesses.into_iter().map(|h| h.join().unwrap()).collect();
    let reached = mock
        .journal()
        .into_iter()
        .filter(|e| e["body"].as_str().is_some_and(|b| b.contains(&step)))
        .count();
    assert_eq!(reached, 3, "statuses {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 47);
}

/// A connection that sends `first` and then nothing more: it, and when it was made.
fn half_open(addr: &str, first: &[u8]) -> (TcpStream, Instant) {
    let mut s = TcpStream::connect(addr).unwrap();
    let at = Instant::now();
    s.write_all(first).unwrap();
    (s, at)
}

/// Wait (bounded) until the server closes `s`; how long after `at` that was.
fn closed_after(s: &mut TcpStream, at: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    // A read that times out ends the loop too, and the time it took fails the caller.
    while let Ok(1..) = s.read(&mut buf) {}
    at.elapsed()
}

/// The error-level event lines.
fn errors(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.events()
        .into_iter()
        .filter(|e| e["level"] == "error")
        .collect()
}

fn refused(gw: &Gateway, reason: &str) -> f64 {
    gw.metric_now(&format!(
        "cardgate_connections_refused_total{{listener=\"chat\",reason=\"{reason}\"}}"
    ))
}

fn open_now(gw: &Gateway) -> f64 {
    gw.metric_now("cardgate_connections_open")
}

/// The status line of a GET over TLS after `prefix`, or why there is none.
fn status_after(prefix: &[u8], addr: &str, s: &Setup, path: &str) -> Result<String, String> {
    get_after(prefix, addr, &s.server_ca, None, path).map(|(status, _)| status)
}

#[test]
fn half_open_tls_handshakes_count_against_max_connections_and_end_in_time() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let server = format!("client_timeout = \"2s\"\n{}", s.tls_lines(&tls_addr, false));
    let gw = Gateway::start(
        &mock.url(),
        &[("server", &server), ("limits", "max_connections = 20")],
    );
    let hello = client_hello(&s.server_ca, "localhost");
    let half = &hello[..hello.len() / 2];
    // Half of them send nothing, half of them half a ClientHello.
    let mut held: Vec<_> = (0..20)
        .map(|i| half_open(&tls_addr, if i % 2 == 0 { b"" } else { half }))
        .collect();
    let all_open = eventually(Duration::from_secs(5), || open_now(&gw) == 20.0);
    assert!(
        all_open,
        "half-open handshakes are open connections: {}",
        open_now(&gw)
    );
    let late = status_after(b"", &tls_addr, &s, "/healthz");
    assert!(late.is_err(), "the 21st is closed unanswered: {late:?}");
    assert_eq!(refused(&gw, "max_connections"), 1.0);
    let bound = Duration::from_secs(2 + 1);
    for (c, at) in &mut held {
        let took = closed_after(c, *at);
        assert!(took <= bound, "a half-open handshake was closed after {took:?}");
    }
    assert!(eventually(Duration::from_secs(5), || open_now(&gw) == 0.0));
    assert_eq!(refused(&gw, "tls_timeout"), 20.0);
    let card = format!("/rest/chat/client/id/{}", token("after-half-open"));
    let ok = status_after(b"", &tls_addr, &s, &card);
    assert_eq!(ok.as_deref(), Ok("HTTP/1.1 200 OK"));
    assert!(errors(&gw).is_empty(), "{:?}", errors(&gw));
}

#[test]
fn the_proxy_header_wait_counts_and_shares_the_handshake_deadline() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let server = format!(
        "client_timeout = \"2s\"\nproxy_protocol = true\n{}",
        s.tls_lines(&tls_addr, false)
    );
    let gw = Gateway::start(
        &mock.url(),
        &[("server", &server), ("limits", "max_connections = 3")],
    );
    // The start's own probes of the plain port sent no header.
    assert!(eventually(Duration::from_secs(5), || open_now(&gw) == 0.0));
    let bad_header = refused(&gw, "proxy_header");
    let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8443\r\n";
    let mut held = [
        half_open(&tls_addr, b""),
        half_open(&tls_addr, &header[..21]),
        half_open(&tls_addr, header),
    ];
    let all_open = eventually(Duration::from_secs(5), || open_now(&gw) == 3.0);
    assert!(
        all_open,
        "connections waiting for their PROXY header are open connections"
    );
    let fourth = status_after(header, &tls_addr, &s, "/healthz");
    assert!(fourth.is_err(), "the fourth is closed unanswered: {fourth:?}");
    assert_eq!(refused(&gw, "max_connections"), 1.0);
    for (c, at) in &mut held {
        let took = closed_after(c, *at);
        assert!(took <= Duration::from_secs(2 + 1), "closed after {took:?}");
    }
    assert_eq!(refused(&gw, "proxy_header"), bad_header + 2.0);
    assert_eq!(refused(&gw, "tls_timeout"), 1.0);
    let card = format!("/rest/chat/client/id/{}", token("after-proxy-wait"));
    let ok = status_after(header, &tls_addr, &s, &card);
    assert_eq!(ok.as_deref(), Ok("HTTP/1.1 200 OK"));
}

#[test]
fn a_tls_scanner_writes_a_warning_a_second_and_plain_http_gets_a_json_400() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&mock.url(), &[("server", &s.tls_lines(&tls_addr, false))]);

    let mut plain = Raw::connect(&tls_addr);
    let r = plain
        .roundtrip(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("an answer");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "PLAIN_HTTP_ON_TLS_PORT"),
        "{}",
        r.body
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(plain.is_closed());
    assert_eq!(refused(&gw, "plain_http"), 1.0);

    // A scanner: handshakes that name an address as the server and leave, and records
    // that hold no handshake.
    let hello = client_hello(&s.server_ca, "127.0.0.1");
    let scan = |source: &str, bytes: &[u8]| {
        let mut c = connect_from(source, &tls_addr).unwrap();
        c.write_all(bytes).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        closed_after(&mut c, Instant::now());
    };
    let started = Instant::now();
    for _ in 0..30 {
        scan("127.0.0.1", &hello);
        scan("127.0.0.1", b"\x16\x03\x01\x00\x05hello");
    }
    assert!(eventually(Duration::from_secs(10), || refused(
        &gw,
        "tls_handshake"
    ) == 60.0));
    let burst = started.elapsed();
    // The throttle's window: a second after the last line of a kind, the next is written.
    thread::sleep(Duration::from_secs(1));
    scan("127.0.0.2", &hello);
    let last_seen = eventually(Duration::from_secs(5), || {
        gw.events()
            .iter()
            .any(|e| e["msg"] == "TLS handshake refused" && e["peer"] == "127.0.0.2")
    });
    assert!(last_seen, "{}", gw.proc.output());

    assert!(errors(&gw).is_empty(), "{:?}", errors(&gw));
    let events = gw.events();
    let kind = |needle: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["msg"].as_str().is_some_and(|m| m.contains(needle)))
            .collect()
    };
    // Each line stands for itself and the ones left out before it.
    let told = |lines: &[&serde_json::Value]| -> u64 {
        lines
            .iter()
            .map(|e| 1 + e["suppressed"].as_u64().unwrap_or(0))
            .sum()
    };
    let (refusals, sni) = (kind("TLS handshake refused"), kind("Illegal SNI"));
    assert_eq!(told(&refusals), 61, "{refusals:?}");
    assert_eq!(told(&sni), 31, "{sni:?}");
    // At most a line a second during the burst, and the one after it.
    let most = burst.as_secs() + 2;
    assert!(
        refusals.len() as u64 <= most,
        "{} lines in {burst:?}",
        refusals.len()
    );
    assert!(sni.len() as u64 <= most, "{} lines in {burst:?}", sni.len());
    assert_eq!(refusals.last().unwrap()["level"], "warn");
}
