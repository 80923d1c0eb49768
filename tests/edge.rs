//! The edge: source allowlists on both listeners (closed at accept), the bound on open
//! connections, per-source rate and unknown-token limits, and the admin secret. Clients
//! connect from other loopback addresses (127.0.0.2, 127.0.0.3) to be other sources.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{eventually, request, token, Gateway, Mock, Raw};

/// Connect from `source` and send a request: true when the connection is closed with no
/// answer (refused at accept).
fn refused(source: &str, addr: &str) -> bool {
    let Ok(mut s) = common::connect_from(source, addr) else {
        return true;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => true,
        Ok(_) => false,
    }
}

#[test]
fn allowlists_close_other_sources_at_accept_on_both_listeners() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[
            ("server", "allow = [\"127.0.0.1\", \"127.0.0.2/32\", \"::1\"]"),
            ("admin", "allow = [\"127.0.0.1/32\"]"),
        ],
    );
    let t = token("allowed");
    let mut ok = Raw::connect_from("127.0.0.2", &gw.addr);
    assert_eq!(ok.get(&format!("/rest/chat/client/id/{t}")).unwrap().status, 200);
    assert!(refused("127.0.0.3", &gw.addr));
    assert!(refused("127.0.0.2", &gw.admin));
    assert_eq!(gw.admin("GET", "/healthz", &[]).status, 200, "127.0.0.1 may");
    assert_eq!(
        gw.metric("cardgate_connections_refused_total{listener=\"chat\",reason=\"not_allowed\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("cardgate_connections_refused_total{listener=\"admin\",reason=\"not_allowed\"}"),
        1.0
    );

    // A reload changes the list for the next connection.
    gw.edit_config(|t| t.replace("\"127.0.0.2/32\"", "\"127.0.0.3/32\""));
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_config_reloads_total{result=\"ok\"}")
        == 1.0));
    assert!(refused("127.0.0.2", &gw.addr));
    let mut now_ok = Raw::connect_from("127.0.0.3", &gw.addr);
    assert_eq!(
        now_ok.get(&format!("/rest/chat/client/id/{t}")).unwrap().status,
        200
    );
}

#[test]
fn connections_beyond_max_connections_are_closed_at_accept() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("limits", "max_connections = 2")]);
    let mut a = Raw::connect(&gw.addr);
    let mut b = Raw::connect(&gw.addr);
    assert_eq!(a.get("/rest/chat/client/id/x-1").unwrap().status, 200);
    assert_eq!(b.get("/rest/chat/client/id/x-2").unwrap().status, 200);
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_connections_open")
        == 2.0));
    assert!(refused("127.0.0.1", &gw.addr));
    assert_eq!(
        gw.metric_now("cardgate_connections_refused_total{listener=\"chat\",reason=\"max_connections\"}"),
        1.0
    );
    drop(a);
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_connections_open")
        == 1.0));
    let mut c = Raw::connect(&gw.addr);
    assert_eq!(c.get("/rest/chat/client/id/x-3").unwrap().status, 200);
    assert_eq!(
        b.get("/rest/chat/client/id/x-4").unwrap().status,
        200,
        "open ones go on"
    );
}

#[test]
fn a_source_over_its_rate_gets_429_without_a_crm_call_and_others_do_not() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[("limits", "rate_per_source = \"1/m\"\nrate_burst = 3")],
    );
    let mut fast = Raw::connect_from("127.0.0.2", &gw.addr);
    for i in 0..3 {
        let r = fast
            .get(&format!("/rest/chat/client/id/{}", token(&format!("rate{i}"))))
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let over = token("rate-over");
    let r = fast.get(&format!("/rest/chat/client/id/{over}")).unwrap();
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
    assert!(r.body.contains("\"RATE_LIMITED\""), "{}", r.body);
    assert!(mock.calls_for(&over).is_empty(), "no CRM call");
    let mut other = Raw::connect_from("127.0.0.3", &gw.addr);
    assert_eq!(
        other
            .get(&format!("/rest/chat/client/id/{}", token("other")))
            .unwrap()
            .status,
        200
    );
    assert_eq!(gw.metric("cardgate_source_refusals_total{reason=\"rate\"}"), 1.0);
}

#[test]
fn a_source_guessing_tokens_is_cooled_down_and_nobody_else_is() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[(
            "limits",
            "max_unknown_tokens_per_minute = 3\nunknown_tokens_cooldown = \"90s\"",
        )],
    );
    let mut guesser = Raw::connect_from("127.0.0.2", &gw.addr);
    for i in 0..4 {
        let r = guesser
            .get(&format!("/rest/chat/client/id/missing-guess-{i}"))
            .unwrap();
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let real = token("after-guessing");
    let r = guesser.get(&format!("/rest/chat/client/id/{real}")).unwrap();
    assert_eq!(
        (r.status, r.header("retry-after")),
        (429, Some("90")),
        "{}",
        r.body
    );
    assert!(r.body.contains("\"TOO_MANY_UNKNOWN_TOKENS\""), "{}", r.body);
    assert!(mock.calls_for(&real).is_empty(), "no CRM call");
    let mut other = Raw::connect_from("127.0.0.3", &gw.addr);
    assert_eq!(
        other.get(&format!("/rest/chat/client/id/{real}")).unwrap().status,
        200
    );
    assert_eq!(
        gw.metric("cardgate_source_refusals_total{reason=\"unknown_tokens\"}"),
        1.0
    );
}

#[test]
fn the_admin_secret_guards_every_endpoint_but_health() {
    let mock = Mock::start();
    let secret = "s3cret-admin-token-0123456789";
    let gw = Gateway::start_with_env(
        &mock.url(),
        &[("admin", "token_env = \"CARDGATE_TEST_ADMIN_TOKEN\"")],
        &[("CARDGATE_TEST_ADMIN_TOKEN", secret)],
    );
    let bearer = format!("Bearer {secret}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(gw.admin("GET", path, &[]).status, 200, "{path}");
    }
    for (method, path) in [
        ("GET", "/metrics"),
        ("POST", "/cache/clear"),
        ("POST", "/cache/purge"),
    ] {
        let r = gw.admin(method, path, &[]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "UNAUTHORIZED"),
            "{path}"
        );
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        let wrong = gw.admin(method, path, &[("Authorization", "Bearer not-the-secret-at-all")]);
        assert_eq!(wrong.status, 401);
    }
    let m = gw.admin("GET", "/metrics", &[("Authorization", &bearer)]);
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("cardgate_admin_unauthorized_total 6"),
        "{}",
        m.body
    );
    let t = token("admin-auth");
    assert_eq!(gw.get_card(&t).status, 200);
    let r = gw.admin(
        "POST",
        "/cache/purge",
        &[("Authorization", &bearer), ("token", &t)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        gw.admin("POST", "/cache/clear", &[("Authorization", &bearer)])
            .status,
        200
    );
    assert_eq!(gw.wait_event("admin clear")["caller"], "127.0.0.1");
    assert!(gw.wait_event("admin request refused")["cause"]
        .as_str()
        .unwrap()
        .contains("from 127.0.0.1"));
    gw.assert_never_shown(&[secret, &t]);

    let open = Gateway::start_with_env(
        &mock.url(),
        &[(
            "admin",
            "token_env = \"CARDGATE_TEST_ADMIN_TOKEN\"\nmetrics_public = true",
        )],
        &[("CARDGATE_TEST_ADMIN_TOKEN", secret)],
    );
    assert_eq!(open.admin("GET", "/metrics", &[]).status, 200);
    assert_eq!(open.admin("POST", "/cache/clear", &[]).status, 401);
    let _ = request("GET", &open.url("/healthz"), &[], None);
}

/// Send raw bytes on a new connection and read what comes back (None: closed unanswered).
fn exchange(addr: &str, bytes: &[u8]) -> Option<String> {
    exchange_from("127.0.0.1", addr, bytes)
}

/// [`exchange`] from the source address `source`.
fn exchange_from(source: &str, addr: &str, bytes: &[u8]) -> Option<String> {
    let mut s = common::connect_from(source, addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    text.starts_with("HTTP/1.1").then_some(text)
}

#[test]
fn behind_a_balancer_the_proxy_header_names_the_client_for_allowlist_limits_and_logs() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[(
            "server",
            "proxy_protocol = true\nallow = [\"192.0.2.7\", \"2001:db8::7\"]",
        )],
    );
    let refused = |reason: &str| {
        gw.metric_now(&format!(
            "cardgate_connections_refused_total{{listener=\"chat\",reason=\"{reason}\"}}"
        ))
    };
    let (bad_before, denied_before) = (refused("proxy_header"), refused("not_allowed"));
    let req =
        |t: &str| format!("GET /rest/chat/client/id/{t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");

    let t1 = token("pp1");
    let v1 = format!("PROXY TCP4 192.0.2.7 127.0.0.1 40000 8080\r\n{}", req(&t1));
    let answer = exchange(&gw.addr, v1.as_bytes()).expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let t2 = token("pp2");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
    let src: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    let dst: std::net::Ipv6Addr = "::1".parse().unwrap();
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&dst.octets());
    v2.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
    v2.extend_from_slice(req(&t2).as_bytes());
    let answer = exchange(&gw.addr, &v2).expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A source the list does not take, and no header at all: closed unanswered.
    let v1_other = format!(
        "PROXY TCP4 192.0.2.8 127.0.0.1 40000 8080\r\n{}",
        req("pp-denied")
    );
    assert!(exchange(&gw.addr, v1_other.as_bytes()).is_none());
    assert!(exchange(&gw.addr, req("pp-none").as_bytes()).is_none());
    // A header without an address leaves the connection's own (127.0.0.1: not allowed).
    let unknown = format!("PROXY UNKNOWN\r\n{}", req("pp-unknown"));
    assert!(exchange(&gw.addr, unknown.as_bytes()).is_none());
    assert!(eventually(Duration::from_secs(5), || refused("not_allowed")
        == denied_before + 2.0));
    assert!(eventually(Duration::from_secs(5), || refused("proxy_header")
        >= bad_before + 1.0));
    assert!(mock.calls_for("pp-denied").is_empty() && mock.calls_for("pp-none").is_empty());
    assert!(mock.calls_for("pp-unknown").is_empty());

    // The logs show the client, not the balancer.
    assert!(eventually(Duration::from_secs(5), || {
        let out = gw.proc.output();
        out.contains("\"peer\":\"192.0.2.7\"") && out.contains("\"peer\":\"2001:db8::7\"")
    }));
}

#[test]
fn only_the_balancers_in_proxy_from_may_send_proxy_headers() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[(
            "server",
            "proxy_protocol = true\nproxy_from = [\"127.0.0.1\", \"127.0.0.2\"]\nallow = [\"192.0.2.7\"]",
        )],
    );
    let send = |source: &str| {
        let req = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8080\r\n\
            GET /rest/chat/client/id/pp-from HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        exchange_from(source, &gw.addr, req).map(|a| a.get(9..12).unwrap_or("").parse::<u16>().unwrap_or(0))
    };
    let count = |reason: &str| {
        gw.metric_now(&format!(
            "cardgate_connections_refused_total{{listener=\"chat\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(send("127.0.0.2"), Some(200));
    let (denied, bad) = (count("not_allowed"), count("proxy_header"));
    // A valid header from a peer that is not a balancer: closed at accept, for its peer.
    assert_eq!(
        send("127.0.0.3"),
        None,
        "not a balancer: its header is not believed"
    );
    assert!(eventually(Duration::from_secs(5), || count("not_allowed") == denied + 1.0));
    assert_eq!(
        count("proxy_header"),
        bad,
        "refused for its peer, not for its header"
    );
    assert!(refused("127.0.0.3", &gw.addr), "not a balancer: closed at accept");
    assert!(
        mock.calls_for("pp-from").len() == 1,
        "only the balancer's request arrived"
    );
}
