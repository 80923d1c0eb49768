//! Several CRM nodes, as separate mock processes: calls spread over them; a killed node
//! is ejected while the chat server sees no error, and comes back when it does; a 5xx or
//! a reset is retried on the other node, a gigma login or call never; a hanging node is
//! hedged within the budget; with every node down, lookups are answered at once (stale
//! card or 503) until a probe finds a node back; host names are resolved again, and one
//! that does not resolve at startup is a warning, not a failed start.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, token, Gateway, Mock};

fn urls(nodes: &[&Mock]) -> String {
    let list: Vec<String> = nodes.iter().map(|m| format!("\"{}\"", m.url())).collect();
    format!("urls = [{}]", list.join(", "))
}

/// A gateway whose CRM is `nodes`, with `upstream` lines and other sections added.
fn on_nodes(nodes: &[&Mock], upstream: &str, sections: &[(&str, &str)]) -> Gateway {
    let list = urls(nodes);
    let mut all = vec![("upstream", list.as_str()), ("upstream", upstream)];
    all.extend_from_slice(sections);
    Gateway::start("", &all)
}

/// The `node` label of a mock given by its literal address.
fn up(gw: &Gateway, mock: &Mock) -> f64 {
    gw.metric_now(&format!(
        "cardgate_upstream_node_up{{node=\"{0}@{0}\"}}",
        mock.addr
    ))
}

fn cards(mock: &Mock) -> usize {
    mock.journal().len()
}

#[test]
fn calls_spread_a_killed_node_is_ejected_unseen_and_a_node_brought_back_returns() {
    let a = Mock::start();
    let mut b = Mock::start();
    // Active checks out of the way: passive ejection is what this test sees.
    let gw = on_nodes(
        &[&a, &b],
        "eject_after = 2\neject_for = \"300ms\"\nhealth = { interval = \"1h\" }",
        &[],
    );
    for _ in 0..20 {
        assert_eq!(gw.post_card(&token("spread")).status, 200);
    }
    let (on_a, on_b) = (cards(&a), cards(&b));
    assert_eq!(on_a + on_b, 20);
    assert!(on_a >= 5 && on_b >= 5, "calls spread: {on_a} and {on_b}");
    assert_eq!((up(&gw, &a), up(&gw, &b)), (1.0, 1.0));

    let b_addr = b.addr.clone();
    b.kill();
    for _ in 0..20 {
        let r = gw.post_card(&token("killed"));
        assert_eq!(r.status, 200, "the chat server saw the dead node: {}", r.body);
    }
    assert_eq!(up(&gw, &b), 0.0, "{}", gw.metrics_now());
    assert!(gw.metric_now("cardgate_upstream_ejections_total") >= 1.0);
    assert!(gw.metric_now("cardgate_upstream_retries_total") >= 1.0);
    let ejected = gw.wait_event("CRM node ejected");
    assert_eq!(ejected["node"], format!("{b_addr}@{b_addr}"));

    // Back on its address: after its ejection, a probe request brings it back in.
    let b = Mock::start_at(&b_addr, "iq", &[]).expect("the port is free again");
    let back = eventually(Duration::from_secs(10), || {
        assert_eq!(gw.post_card(&token("probe")).status, 200);
        up(&gw, &b) == 1.0
    });
    assert!(back, "the node did not return: {}", gw.metrics_now());
    for _ in 0..10 {
        assert_eq!(gw.post_card(&token("again")).status, 200);
    }
    assert!(
        cards(&b) >= 4,
        "the returned node takes calls again: {}",
        cards(&b)
    );
    let requests = format!(
        "cardgate_upstream_node_requests_total{{node=\"{0}@{0}\"}}",
        a.addr
    );
    assert!(gw.metric_now(&requests) >= 20.0);
}

#[test]
fn a_5xx_or_a_reset_is_retried_on_the_other_node() {
    let a = Mock::start();
    let b = Mock::start();
    let gw = on_nodes(&[&a, &b], "eject_after = 0", &[]);
    for mode in ["500", "reset"] {
        b.fail(mode);
        let before = gw.metric_now("cardgate_upstream_retries_total");
        for _ in 0..10 {
            // (Not `token(mode)`: a `reset` token is reset by every node.)
            let t = token("failover");
            let r = gw.post_card(&t);
            assert_eq!(r.status, 200, "{mode}: {}", r.body);
            assert_eq!(
                a.calls_for(&t).len(),
                1,
                "{mode}: the answer came from the healthy node"
            );
        }
        let retried = gw.metric_now("cardgate_upstream_retries_total") - before;
        assert!(retried >= 3.0, "{mode}: {retried} retries");
        b.fail("off");
    }
    // With retries = 0 the failure is the chat server's.
    gw.edit_config(|c| c.replace("eject_after = 0", "eject_after = 0\nretries = 0"));
    gw.proc.signal("HUP");
    gw.wait_event("configuration reloaded");
    b.fail("500");
    let failed = (0..10)
        .map(|_| gw.post_card(&token("noretry")).status)
        .filter(|s| *s == 502)
        .count();
    assert!(failed >= 3, "{failed} of 10 failed without a retry");
}

#[test]
fn a_gigma_call_is_never_sent_twice() {
    let env = [("GIGMA_APP_TOKEN", "gigma-app-token-for-tests-5b1f")];
    let a = Mock::start_dialect("gigma", &env);
    let b = Mock::start_dialect("gigma", &env);
    let list = urls(&[&a, &b]);
    let gw = Gateway::start_with_env(
        "",
        &[
            ("upstream", "dialect = \"gigma\""),
            ("upstream", &list),
            ("upstream", "eject_after = 0"),
        ],
        &env,
    );
    b.fail("500");
    let mut failed = 0;
    for i in 0..10 {
        let phone = format!("+7 999 123-45-{i:02}");
        let r = gw.search("/rest/chat/client/search/", &[("client", &phone)], false);
        failed += usize::from(r.status != 200);
    }
    let sent = |m: &Mock| {
        m.journal()
            .iter()
            .filter(|e| e["path"] == "/counterparty/send_password")
            .count()
    };
    assert_eq!(sent(&a) + sent(&b), 10, "each call placed exactly once");
    assert_eq!(failed, sent(&b), "a call that failed was not sent again");
    assert!(failed >= 3, "some calls met the failing node: {failed}");
    assert_eq!(gw.metric_now("cardgate_upstream_retries_total"), 0.0);
}

#[test]
fn a_hanging_node_is_hedged_within_the_budget() {
    let a = Mock::start();
    let b = Mock::start();
    let gw = on_nodes(
        &[&a, &b],
        "timeout = \"2s\"\nhedge_after = \"100ms\"\neject_after = 0",
        &[],
    );
    b.fail("slow");
    for _ in 0..8 {
        let start = Instant::now();
        let r = gw.post_card(&token("hedge"));
        assert_eq!(r.status, 200, "{}", r.body);
        // The hanging node answers after 3 s, the timeout is 2 s: well before either.
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
    }
    let sent = gw.metric_now("cardgate_upstream_hedges_total{result=\"sent\"}");
    let won = gw.metric_now("cardgate_upstream_hedges_total{result=\"won\"}");
    assert!(sent >= 2.0 && won >= 2.0, "hedges sent {sent}, won {won}");
    assert!(won <= sent);
}

#[test]
fn with_every_node_down_lookups_answer_at_once_until_one_is_back() {
    let a = Mock::start();
    let b = Mock::start();
    let gw = on_nodes(
        &[&a, &b],
        "timeout = \"2s\"\nhealth = { path = \"/health\", interval = \"200ms\", timeout = \"100ms\", healthy_after = 1, unhealthy_after = 1 }",
        &[("cache", "ttl = \"1s\"\nstale_if_error = \"1m\"")],
    );
    let kept = token("kept");
    assert_eq!(gw.post_card(&kept).status, 200);
    a.fail("slow");
    b.fail("slow");
    let down = eventually(Duration::from_secs(5), || {
        up(&gw, &a) == 0.0 && up(&gw, &b) == 0.0
    });
    assert!(down, "{}", gw.metrics_now());
    gw.wait_event("CRM node fails its health checks");

    for _ in 0..5 {
        let start = Instant::now();
        let r = gw.post_card(&token("down"));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (503, "CRM_UNAVAILABLE"),
            "{}",
            r.body
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    }
    // Past its TTL, the kept card stands in, also at once.
    let stale = eventually(Duration::from_secs(5), || {
        let start = Instant::now();
        let r = gw.post_card(&kept);
        assert_eq!(r.status, 200);
        assert!(start.elapsed() < Duration::from_secs(1));
        r.header("x-cache") == Some("STALE")
    });
    assert!(stale);
    assert!(gw.metric_now("cardgate_upstream_requests_total{outcome=\"circuit_open\"}") >= 5.0);
    assert_eq!(cards(&a) + cards(&b), 1, "no call reached a node that was down");

    // A node back: the probes a request sets off find it within about a second.
    a.fail("off");
    let back = eventually(Duration::from_secs(5), || {
        gw.post_card(&token("back")).status == 200
    });
    assert!(back, "{}", gw.metrics_now());
    assert_eq!(up(&gw, &a), 1.0);
    // The HTTP checks timed out on tokio's timer, not Pingora's.
    gw.assert_no_timer_thread();
}

#[test]
fn tcp_health_checks_find_a_dead_node_on_tokios_timer() {
    let a = Mock::start();
    let mut b = Mock::start();
    let gw = on_nodes(
        &[&a, &b],
        "health = { interval = \"200ms\", timeout = \"100ms\", unhealthy_after = 1 }",
        &[],
    );
    b.kill();
    let down = eventually(Duration::from_secs(5), || up(&gw, &b) == 0.0);
    assert!(down, "{}", gw.metrics_now());
    gw.wait_event("CRM node fails its health checks");
    assert_eq!(up(&gw, &a), 1.0);
    // Pingora's TCP check ran under a bound of 100 ms that was tokio's, not Pingora's.
    gw.assert_no_timer_thread();
}

#[test]
fn host_names_are_resolved_again_and_every_address_is_a_node() {
    let a = Mock::start();
    let port = a.addr.rsplit(':').next().unwrap();
    let gw = Gateway::start(
        &format!("http://localhost:{port}"),
        &[("upstream", "resolve_interval = \"200ms\"")],
    );
    let resolved = eventually(Duration::from_secs(5), || {
        gw.metric_now("cardgate_upstream_resolves_total{result=\"ok\"}") >= 3.0
    });
    assert!(resolved, "{}", gw.metrics_now());
    let metrics = gw.metrics_now();
    let label = format!("cardgate_upstream_node_up{{node=\"localhost:{port}@127.0.0.1:{port}\"}}");
    assert!(metrics.contains(&label), "{metrics}");
    for _ in 0..5 {
        assert_eq!(gw.post_card(&token("named")).status, 200);
    }
}

#[test]
fn calls_under_way_when_a_node_is_ejected_do_not_eject_it_again() {
    let a = Mock::start();
    let gw = Gateway::start(
        &a.url(),
        &[(
            "upstream",
            "timeout = \"300ms\"\neject_after = 1\neject_for = \"1h\"\nhealth = { interval = \"1h\" }",
        )],
    );
    a.fail("slow");
    // Eight lookups hang on the node at once and time out together.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| gw.post_card(&token("hang")).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s >= 500), "{statuses:?}");
    assert_eq!(up(&gw, &a), 0.0);
    assert_eq!(
        gw.metric_now("cardgate_upstream_ejections_total"),
        1.0,
        "one ejection, not one per call under way"
    );
}

#[test]
fn a_crm_name_that_does_not_resolve_is_a_warning_and_503_until_it_does() {
    // `.invalid` never resolves (RFC 6761). That a name which starts resolving gets its
    // node is `upstream::health`'s unit test, with a resolver the test answers for.
    let gw = Gateway::start(
        "http://crm.staging.invalid:8080",
        &[("upstream", "resolve_interval = \"200ms\"")],
    );
    let warned = gw.wait_event("cannot resolve a CRM host at startup");
    assert_eq!(warned["level"], "warn");
    assert_eq!(warned["host"], "crm.staging.invalid");
    assert_eq!(warned["resolveInterval"], "200ms");
    for _ in 0..3 {
        let r = gw.post_card(&token("nodns"));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (503, "CRM_UNAVAILABLE"),
            "{}",
            r.body
        );
    }
    // And it is asked again every resolve_interval.
    let asked = eventually(Duration::from_secs(5), || {
        gw.metric_now("cardgate_upstream_resolves_total{result=\"error\"}") >= 3.0
    });
    assert!(asked, "{}", gw.metrics_now());
    gw.wait_event("cannot resolve a CRM host: its last addresses stay");
}
