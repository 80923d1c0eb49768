//! Regressions of the hostile review, against the real binary: each test replays one
//! attack and checks the gateway's answer, the connection's fate and what reached the CRM.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;

use common::{token, Gateway, Mock, Raw};

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
