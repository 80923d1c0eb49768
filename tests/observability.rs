//! What an operator reads: request ids carried from the chat server to the CRM and back,
//! trace context, metrics that exist from the start (and pass `promtool check metrics`),
//! every metric the code creates on `/metrics`, and admin actions in the log.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{request, token, Gateway, Mock};

/// The request line of the access log that carries this request id.
fn access_line(gw: &Gateway, id: &str) -> serde_json::Value {
    let mut found = None;
    let seen = common::eventually(std::time::Duration::from_secs(5), || {
        found = gw
            .proc
            .output()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["requestId"] == id && l.get("level").is_none());
        found.is_some()
    });
    assert!(seen, "no access line with {id}: {}", gw.proc.output());
    found.unwrap()
}

#[test]
fn a_request_id_is_logged_sent_to_the_crm_and_echoed() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("corr");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = request(
        "POST",
        &gw.url("/rest/chat/client/id/"),
        &[
            ("token", &t),
            ("X-Request-Id", "chat-42.a"),
            ("traceparent", parent),
        ],
        Some(b""),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-request-id"), Some("chat-42.a"));
    let calls = mock.calls_for(&t);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["headers"]["x-request-id"], "chat-42.a");
    let sent = calls[0]["headers"]["traceparent"].as_str().unwrap();
    assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
    assert!(sent.ends_with("-01"));
    assert_ne!(sent, parent, "a new span id");
    assert_eq!(access_line(&gw, "chat-42.a")["status"], 200);

    // None sent (or an invalid one): a new one is made, used the same way.
    for sent in [None, Some("bad id with spaces")] {
        let t = token("corr-new");
        let mut headers = vec![("token", t.as_str())];
        if let Some(id) = sent {
            headers.push(("X-Request-Id", id));
        }
        let r = request("POST", &gw.url("/rest/chat/client/id/"), &headers, Some(b""));
        let id = r.header("x-request-id").expect("an id").to_string();
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(mock.calls_for(&t)[0]["headers"]["x-request-id"], id.as_str());
        assert!(mock.calls_for(&t)[0]["headers"].get("traceparent").is_none());
        access_line(&gw, &id);
    }
    gw.assert_never_shown(&["bad id with spaces"]);
    // Errors carry it too.
    let r = request("GET", &gw.url("/no/such"), &[("X-Request-Id", "e-1")], None);
    assert_eq!((r.status, r.header("x-request-id")), (404, Some("e-1")));
}

#[test]
fn correlation_can_be_turned_off() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    gw.edit_config(|t| format!("{t}[correlation]\nrequest_id_header = \"\"\ntraceparent = false\n"));
    gw.proc.signal("HUP");
    assert!(common::eventually(std::time::Duration::from_secs(5), || gw
        .metric_now("cardgate_config_reloads_total{result=\"ok\"}")
        == 1.0));
    let t = token("corr-off");
    let r = request(
        "POST",
        &gw.url("/rest/chat/client/id/"),
        &[("token", &t), ("X-Request-Id", "x-1")],
        Some(b""),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), None);
    assert!(mock.calls_for(&t)[0]["headers"].get("x-request-id").is_none());
}

#[test]
fn every_series_exists_at_zero_from_the_start_and_head_works() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let text = gw.metrics_now();
    for series in [
        "cardgate_requests_total{api=\"auth\",status=\"404\"} 0",
        "cardgate_requests_total{api=\"search\",status=\"429\"} 0",
        "cardgate_requests_total{api=\"auth\",status=\"5xx\"} 0",
        "cardgate_cache_lookups_total{result=\"stale\"} 0",
        "cardgate_upstream_requests_total{outcome=\"timeout\"} 0",
        "cardgate_search_guard_refusals_total{reason=\"attempts\"} 0",
        "cardgate_config_reloads_total{result=\"error\"} 0",
        "cardgate_request_duration_seconds_count{api=\"search\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("\n{process} ")), "{process} missing");
    }
    let head = gw.admin("HEAD", "/metrics", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").unwrap().parse::<usize>().unwrap() > 1000);

    // promtool, where it is installed (CI installs it): the exposition is clean.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let said =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}");
        }
        Err(_) => assert!(std::env::var_os("CI").is_none(), "CI must have promtool"),
    }
}

#[test]
fn admin_actions_are_logged_with_the_caller_and_a_fingerprint() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("admin-log");
    assert_eq!(gw.get_card(&t).status, 200);
    assert_eq!(gw.admin("POST", "/cache/purge", &[("token", &t)]).status, 200);
    assert_eq!(gw.admin("POST", "/cache/clear", &[]).status, 200);
    let purge = gw.wait_event("admin purge");
    assert_eq!(purge["caller"], "127.0.0.1");
    assert_eq!(purge["purged"], true);
    let fp = purge["tokenFp"].as_str().unwrap();
    assert!(fp.len() == 8 && fp.chars().all(|c| c.is_ascii_hexdigit()));
    let clear = gw.wait_event("admin clear");
    assert_eq!(clear["caller"], "127.0.0.1");
    gw.assert_never_shown(&[&t]);
}

/// Every metric name the code creates: the code writes a name only as a string literal
/// `"cardgate_..."`, the first argument of a prometheus constructor, so these are read from
/// the source itself (comments aside).
fn metric_names_in_source(dir: &Path, names: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            metric_names_in_source(&path, names);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("\"cardgate_") {
                let rest = &line[i + 1..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                if rest[end..].starts_with('"') {
                    names.insert(rest[..end].to_string());
                }
            }
        }
    }
}

#[test]
fn every_metric_the_code_creates_is_on_the_metrics_page() {
    let mut names = BTreeSet::new();
    metric_names_in_source(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut names);
    assert!(names.len() >= 40, "the scan found only {names:?}");

    // Everything that creates metrics on: two CRM nodes, a TLS listener, and [shared]
    // (Redis need not answer).
    let (a, b) = (Mock::start(), Mock::start());
    let tls = common::tls::Setup::new();
    let tls_lines = tls.tls_lines(&format!("127.0.0.1:{}", common::free_port()), false);
    let key = (
        "CARDGATE_TEST_SHARED_KEY",
        "0123456789abcdef0123456789abcdef-metrics",
    );
    let gw = common::Gateway::start_with_env(
        "",
        &[
            ("upstream", &format!("urls = [\"{}\", \"{}\"]", a.url(), b.url())),
            ("server", &tls_lines),
            (
                "shared",
                &format!(
                    "url = \"redis://127.0.0.1:{}/0\"\nencryption_key_env = \"{}\"",
                    common::free_port(),
                    key.0
                ),
            ),
        ],
        &[key],
    );
    let text = gw.metrics_now();
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !text.contains(&format!("\n# TYPE {name} ")))
        .collect();
    assert!(missing.is_empty(), "created but not exported: {missing:?}");
    // The connection this page was asked on is open while it is answered.
    assert!(
        common::sample(&text, "cardgate_admin_connections_open") >= 1.0,
        "{text}"
    );
}
