//! The Auth API end to end: the real gateway in front of the real mock CRM.

mod common;

use common::{request, token, Gateway, Mock, Raw};

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn both_forms_reach_the_crm_as_post_with_the_token_in_a_header() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t1 = format!("{}/slash+plus", token("get"));
    let t2 = token("post");

    let r = gw.get_card(&encode(&t1));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-cache"), Some("MISS"));
    let card = r.json();
    let expected = cardgate::testkit::mock::card(t1.as_bytes());
    assert_eq!(
        card, expected,
        "the CRM's card passes through, unknown fields included"
    );
    assert_eq!(card["client"]["crmExtension"]["kept"], true);

    let seen = mock.calls_for(&t1);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["method"], "POST");
    assert_eq!(seen[0]["path"], "/rest/chat/client/id/");
    assert_eq!(seen[0]["headers"]["content-length"], "0");
    // Only what the CRM needs: every header more is parsed by the CRM on every miss.
    let mut names: Vec<&str> = seen[0]["headers"]
        .as_object()
        .expect("the journal keeps the headers")
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["content-length", "host", "token", "x-request-id"],
        "{seen:?}"
    );
    for e in mock.journal() {
        assert!(
            !e["path"].as_str().unwrap().contains("tok-"),
            "a token in a LAN URL: {e}"
        );
    }

    let r = gw.post_card(&t2);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), cardgate::testkit::mock::card(t2.as_bytes()));
    assert_eq!(mock.calls_for(&t2)[0]["method"], "POST");

    // A second request for either token is answered from the cache, in either form
    // (t1 only as a path: an HTTP client will not put its raw bytes in a header).
    let r = gw.get_card(&encode(&t1));
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    let r = gw.get_card(&t2);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    assert_eq!(mock.calls_for(&t1).len(), 1);
    assert_eq!(mock.calls_for(&t2).len(), 1);

    gw.assert_never_shown(&[&t1, &t2, &encode(&t1)]);
}

#[test]
fn a_legacy_crm_can_be_asked_with_get() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("upstream", "auth_method = \"get\"")]);
    let t = token("legacy");
    let r = gw.post_card(&t);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.calls_for(&t);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["method"], "GET");
    assert_eq!(seen[0]["path"], format!("/rest/chat/client/id/{t}"));
    gw.assert_never_shown(&[&t]);
}

#[test]
fn a_token_with_spaces_inside_reaches_the_crm_as_it_is() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let r = gw.get_card("a%2Fb%20c%2Bd");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), cardgate::testkit::mock::card(b"a/b c+d"));
    let seen = mock.calls_for("a/b c+d");
    assert_eq!(seen.len(), 1, "{:?}", mock.journal());
    assert_eq!(seen[0]["headers"]["token"], "a/b c+d");
    // In a header it is the same token: the same card, from the cache.
    let r = gw.post_card("a/b c+d");
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")), "{}", r.body);
    // Spaces at either end, control bytes and other bytes stay refused.
    for path in ["%20abc", "abc%20", "a%09b", "a%7Fb", "caf%C3%A9"] {
        let r = gw.get_card(path);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "BAD_REQUEST"),
            "{path}"
        );
    }
    assert_eq!(mock.journal().len(), 1, "no refused token reaches the CRM");
    gw.assert_never_shown(&["a/b c+d", "a%2Fb%20c%2Bd"]);
}

#[test]
fn bad_requests_get_json_4xx_and_never_reach_the_crm() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("limits", "max_token_bytes = 64")]);
    let long = "x".repeat(65);
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        request("POST", &gw.url("/rest/chat/client/id/"), headers, Some(body))
    };
    let cases = [
        (gw.get_card(""), 400, "BAD_REQUEST"),
        (post(&[], b""), 400, "BAD_REQUEST"),
        (post(&[("token", "")], b""), 400, "BAD_REQUEST"),
        (gw.get_card("abc%0Adef"), 400, "BAD_REQUEST"),
        (gw.get_card("abc%00def"), 400, "BAD_REQUEST"),
        (gw.get_card(&long), 414, "TOKEN_TOO_LONG"),
        (post(&[("token", &long)], b""), 431, "TOKEN_TOO_LONG"),
        (
            request("GET", &gw.url("/rest/chat/client/"), &[], None),
            404,
            "NOT_FOUND",
        ),
        (request("GET", &gw.url("/"), &[], None), 404, "NOT_FOUND"),
        (
            request("GET", &gw.url("/rest/chat/client/id/a/b"), &[], None),
            404,
            "NOT_FOUND",
        ),
        (
            post(&[("token", "abc")], &vec![b'x'; 17 * 1024]),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.body);
        assert_eq!(r.error_code(), *code, "case {i}");
    }
    let r = request("DELETE", &gw.url("/rest/chat/client/id/abc"), &[], None);
    assert_eq!((r.status, r.error_code().as_str()), (405, "METHOD_NOT_ALLOWED"));
    assert_eq!(r.header("allow"), Some("GET"));
    let r = request("PUT", &gw.url("/rest/chat/client/id/"), &[], Some(b""));
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert!(mock.journal().is_empty(), "no bad request reaches the CRM");
    assert!(!gw.proc.output().contains("\"status\":5"), "no 5xx for bad input");
}

#[test]
fn crm_failures_become_json_errors() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let cases = [
        ("missing", 404, "1001"),
        ("err200", 404, "1002"),
        ("noclient", 502, "CRM_INVALID_RESPONSE"),
        ("broken", 502, "CRM_INVALID_RESPONSE"),
        ("html", 502, "CRM_ERROR"),
        ("reset", 502, "CRM_UNAVAILABLE"),
        ("slow", 504, "CRM_TIMEOUT"),
    ];
    let mut used = Vec::new();
    for (prefix, status, code) in cases {
        let t = token(prefix);
        let r = gw.get_card(&t);
        assert_eq!(r.status, status, "{prefix}: {}", r.body);
        assert_eq!(r.error_code(), code, "{prefix}");
        if prefix == "missing" {
            assert_eq!(
                r.json()["errorText"],
                "Client not found",
                "the CRM's own text passes through"
            );
        }
        used.push(t);
    }
    let refs: Vec<&str> = used.iter().map(String::as_str).collect();
    gw.assert_never_shown(&refs);

    // A CRM that refuses connections.
    let (_bound, port) = common::refusing_port();
    let dead = format!("http://127.0.0.1:{port}");
    let gw = Gateway::start(&dead, &[]);
    let t = token("refused");
    let r = gw.get_card(&t);
    assert_eq!((r.status, r.error_code().as_str()), (502, "CRM_UNAVAILABLE"));
    gw.assert_never_shown(&[&t]);
}

#[test]
fn a_keepalive_connection_survives_error_answers() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let good = token("keepalive");
    let html = token("html");
    let mut c = Raw::connect(&gw.addr);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes();
    let steps: Vec<(Vec<u8>, u16)> = vec![
        (get("/nowhere"), 404),
        (get("/rest/chat/client/id/bad%01token"), 400),
        (
            b"PATCH /rest/chat/client/id/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (get(&format!("/rest/chat/client/id/{html}")), 502),
        (
            b"POST /rest/chat/client/id/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n".to_vec(),
            400,
        ),
        (get(&format!("/rest/chat/client/id/{good}")), 200),
    ];
    for (i, (req, status)) in steps.iter().enumerate() {
        let r = c
            .roundtrip(req)
            .unwrap_or_else(|| panic!("step {i}: connection closed"));
        assert_eq!(r.status, *status, "step {i}: {}", r.body);
        if *status != 200 {
            r.error_code();
        }
    }
}

#[test]
fn metrics_and_log_lines_describe_requests_without_tokens() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("observed");
    let missing = token("missing");
    assert_eq!(gw.get_card(&t).status, 200);
    assert_eq!(gw.post_card(&t).status, 200);
    assert_eq!(gw.get_card(&missing).status, 404);
    assert_eq!(request("GET", &gw.url("/x"), &[], None).status, 404);

    assert_eq!(
        gw.metric("cardgate_requests_total{api=\"auth\",status=\"200\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("cardgate_requests_total{api=\"auth\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("cardgate_requests_total{api=\"other\",status=\"404\"}"),
        1.0
    );
    assert_eq!(gw.metric("cardgate_cache_lookups_total{result=\"hit\"}"), 1.0);
    assert_eq!(gw.metric("cardgate_cache_lookups_total{result=\"miss\"}"), 2.0);
    assert_eq!(gw.metric("cardgate_upstream_requests_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        gw.metric("cardgate_upstream_requests_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("cardgate_request_duration_seconds_count{api=\"auth\"}"),
        3.0
    );
    assert_eq!(gw.metric("cardgate_inflight_requests"), 0.0);
    assert!(gw
        .metrics()
        .contains("cardgate_build_info{dialect=\"iq\",version=\""));
    let health = gw.admin("GET", "/healthz", &[]);
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );

    gw.assert_never_shown(&[&t, &missing]);
    let lines: Vec<serde_json::Value> = gw
        .proc
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l.get("level").is_none())
        .collect();
    assert_eq!(lines.len(), 4, "one line per request");
    let fp: Vec<&str> = lines.iter().filter_map(|l| l["tokenFp"].as_str()).collect();
    assert_eq!(fp.len(), 3);
    assert!(fp
        .iter()
        .all(|f| f.len() == 8 && f.chars().all(|c| c.is_ascii_hexdigit())));
    assert_eq!(fp[0], fp[1], "one token, one fingerprint");
    assert_ne!(fp[0], fp[2]);
    assert_eq!(lines[0]["cache"], "miss");
    assert_eq!(lines[0]["upstreamStatus"], 200);
    assert!(lines[0]["upstreamMs"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["cache"], "hit");
    assert_eq!(lines[2]["errorCode"], "1001");
    assert_eq!(lines[3]["api"], "other");
}
