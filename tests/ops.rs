//! Operating the binary: the CLI, config checking, the shipped config, the demo,
//! health endpoints and graceful shutdown.

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, request, token, Gateway, Mock, Proc, BIN};

fn check(toml: &str) -> (bool, String) {
    let (code, text, _) = run_on(toml, &["check"], &[]);
    (code == Some(0), text)
}

/// Run the binary with `args` on a config file holding `toml`: the exit code, everything it
/// printed, and the file's path.
fn run_on(toml: &str, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(BIN)
        .args(args)
        .args(["--config", path.to_str().unwrap()])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text, path.display().to_string())
}

#[test]
fn an_admin_port_open_to_other_machines_needs_a_token_or_an_allowlist() {
    let (listen, admin) = (free_port(), free_port());
    let head = format!(
        "[server]\nlisten = \"127.0.0.1:{listen}\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[admin]\nlisten = \"0.0.0.0:{admin}\"\n"
    );
    for args in [&["check"][..], &[]] {
        let (code, text, path) = run_on(&head, args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        let line = text.lines().find(|l| l.contains("admin.listen")).expect(&text);
        assert!(
            line.starts_with(&format!("cardgate: {path}: admin.listen: ")),
            "{line}"
        );
        assert!(
            line.contains("admin.token_env") && line.contains("admin.allow"),
            "{line}"
        );
    }
    for (extra, envs) in [
        ("allow = [\"10.30.0.0/24\"]\n", &[][..]),
        (
            "token_env = \"CARDGATE_TEST_ADMIN\"\n",
            &[("CARDGATE_TEST_ADMIN", "sixteen-bytes-or-more")][..],
        ),
    ] {
        let (code, text, _) = run_on(&format!("{head}{extra}"), &["check"], envs);
        assert_eq!(code, Some(0), "{extra}: {text}");
    }
    // Loopback without either stays the default.
    let loopback = head.replace("0.0.0.0", "127.0.0.1");
    assert_eq!(run_on(&loopback, &["check"], &[]).0, Some(0));
}

#[test]
fn check_names_every_mistake_of_a_file_with_the_file_and_the_key() {
    let url = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let tls = format!(
        "[server.tls]\nlisten = \"127.0.0.1:{}\"\ncert_file = \"/nonexistent/chain.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
        free_port()
    );
    let toml = format!(
        "[server]\nthreads = 0\ngrace_period = \"2h\"\n{tls}{url}retries = 99\n[cache]\nmax_size = 1\n[search]\nmax_attempts = 0\n"
    );
    let (code, text, path) = run_on(&toml, &["check"], &[]);
    assert_eq!(code, Some(2), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    for key in [
        "server.threads",
        "server.grace_period",
        "upstream.retries",
        "cache.max_size",
        "search.max_attempts",
        // What startup meets too: the certificate that is not there.
        "server.tls.cert_file",
    ] {
        let prefix = format!("cardgate: {path}: {key}: ");
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)),
            "{prefix} not in {text}"
        );
    }
    assert_eq!(lines.len(), 6, "one line each: {text}");
    // The same prefix when the start meets the missing certificate.
    let start = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n{tls}[admin]\nlisten = \"127.0.0.1:{}\"\n{url}",
        free_port(),
        free_port()
    );
    let (code, text, path) = run_on(&start, &[], &[]);
    assert_eq!(code, Some(2), "{text}");
    let prefix = format!("cardgate: {path}: server.tls.cert_file: ");
    assert!(text.lines().any(|l| l.starts_with(&prefix)), "{text}");

    // Address ranges: host bits or spaces are mistakes that name the key.
    for (section, item, key, says) in [
        ("server", "10.20.0.1/16", "server.allow", "\"10.20.0.0/16\""),
        ("admin", " 10.30.0.0/24", "admin.allow", "spaces"),
        ("admin", "10.30.0.0/24 ", "admin.allow", "spaces"),
    ] {
        let (ok, text) = check(&format!("{url}[{section}]\nallow = [\"{item}\"]\n"));
        assert!(!ok, "{item:?} accepted");
        assert!(
            text.contains(&format!(": {key}: ")) && text.contains(says),
            "{text}"
        );
    }
}

#[test]
fn check_accepts_the_shipped_config_and_names_bad_keys() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/cardgate.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", shipped])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let url = "[upstream]\nurl = \"http://127.0.0.1:18081\"\n";
    let cases = [
        ("[server]\nthreads = 1\n".to_string(), "upstream.url"),
        (format!("{url}timeout = \"2 bananas\"\n"), "upstream.timeout"),
        (format!("{url}[cache]\nttll = \"1s\"\n"), "cache.ttll"),
        (format!("{url}[cache]\nmax_size = \"lots\"\n"), "cache.max_size"),
        (format!("{url}[server]\nlisten = \"nowhere\"\n"), "server.listen"),
        (
            format!("{url}[limits]\nmax_token_bytes = -1\n"),
            "limits.max_token_bytes",
        ),
        (format!("{url}dialect = \"soap\"\n"), "upstream.dialect"),
        ("[upstream]\nurl = \"ftp://crm\"\n".to_string(), "upstream.url"),
        (format!("{url}[unknown]\nx = 1\n"), "unknown"),
        // An address that is not one is a mistake, not a name to resolve later.
        (
            "[upstream]\nurl = \"http://10.0.0.256:1\"\n".to_string(),
            "upstream.url: \"http://10.0.0.256:1\": not a valid IPv4 address",
        ),
        (
            "[upstream]\nurls = [\"http://crm-a:1\", \"http://crm b:1\"]\n".to_string(),
            "upstream.urls[1]",
        ),
    ];
    for (toml, key) in cases {
        let (ok, text) = check(&toml);
        assert!(!ok, "accepted:\n{toml}");
        assert!(text.contains(key), "{key} not named in {text:?}");
        assert!(!text.contains("panicked"), "{text}");
    }
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/cardgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // A name that does not resolve now is resolved as startup resolves it: a warning, and
    // the gateway would start (`.invalid` never resolves, RFC 6761).
    let (ok, text) = check("[upstream]\nurl = \"http://no-such-host.invalid:1\"\n");
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: upstream: cannot resolve no-such-host.invalid now (")
            && text.contains("resolves it again every upstream.resolve_interval (30s)")
            && text.contains(": ok"),
        "{text}"
    );
}

#[test]
fn the_shipped_shared_example_is_valid_and_its_secret_is_required() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/cardgate.toml")).unwrap();
    let (head, example) = shipped.split_once("# [shared]\n").expect("a [shared] example");
    let example: String = example
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l).to_string() + "\n")
        .collect();
    let toml = format!("{head}[shared]\n{example}").replace("cards = false", "cards = true");
    assert!(toml.contains("cards = true"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &toml).unwrap();
    let run = |secret: &str| {
        let out = Command::new(BIN)
            .args(["check", "--config", path.to_str().unwrap()])
            .env("CARDGATE_SHARED_KEY", secret)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, text) = run("a-secret-of-at-least-thirty-two-bytes-0123");
    assert!(ok, "{text}\n{toml}");
    let (ok, text) = run("too-short");
    assert!(!ok);
    assert!(text.contains("shared.encryption_key_env"), "{text}");
}

#[test]
fn version_names_the_crate_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn a_missing_hash_key_variable_stops_the_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let (listen, admin) = (free_port(), free_port());
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\n[cache]\nhash_key_env = \"CARDGATE_UNSET_KEY_VAR\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env_remove("CARDGATE_UNSET_KEY_VAR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CARDGATE_UNSET_KEY_VAR"));
}

#[test]
fn health_and_readiness() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let r = gw.admin("GET", "/healthz", &[]);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = gw.admin("GET", "/readyz", &[]);
    assert_eq!(r.status, 200);
    // As balancers and monitors ask: HEAD is GET without the body; OPTIONS (HAProxy's
    // default check) answers like GET; neither is ever cached.
    for path in ["/healthz", "/readyz"] {
        let get = gw.admin("GET", path, &[]);
        let head = gw.admin("HEAD", path, &[]);
        assert_eq!((head.status, head.body.as_str()), (200, ""), "{path}");
        assert_eq!(head.header("content-length"), get.header("content-length"));
        let options = gw.admin("OPTIONS", path, &[]);
        assert_eq!((options.status, options.body.as_str()), (200, get.body.as_str()));
        for r in [&get, &head, &options] {
            assert_eq!(r.header("cache-control"), Some("no-store"), "{path}: {r:?}");
            assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
        }
    }
    // Every 405 says what the route takes.
    for (method, path, allow) in [
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("DELETE", "/readyz", "GET, HEAD, OPTIONS"),
        ("POST", "/metrics", "GET, HEAD"),
        ("GET", "/cache/clear", "POST"),
    ] {
        let r = gw.admin(method, path, &[]);
        assert_eq!((r.status, r.error_code().as_str()), (405, "METHOD_NOT_ALLOWED"));
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    let r = gw.admin("GET", "/nope", &[]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "NOT_FOUND"));
    let metrics = gw.metrics();
    assert!(
        metrics.contains("cardgate_build_info{dialect=\"iq\",version=\""),
        "{metrics}"
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits() {
    let mock = Mock::start();
    let mut gw = Gateway::start(&mock.url(), &[]);
    let t = token("lag");
    let url = gw.url("/rest/chat/client/id/");
    let tok = t.clone();
    let inflight = thread::spawn(move || request("POST", &url, &[("token", &tok)], Some(b"")));

    // Signal once the request is inside the gateway (the CRM takes 500 ms to answer).
    let start = Instant::now();
    while gw.metric_now("cardgate_inflight_requests") < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the request never arrived"
        );
        thread::sleep(Duration::from_millis(10));
    }
    gw.proc.signal("TERM");
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), cardgate::testkit::mock::card(t.as_bytes()));

    // grace_period is 5 s in the test config.
    let took = gw
        .proc
        .wait_exit(Duration::from_secs(6))
        .expect("exited within the grace period");
    let status = gw.proc.child.wait().unwrap();
    assert!(status.success(), "{status:?} after {took:?}");
}

#[test]
fn sigterm_on_an_idle_gateway_exits_cleanly() {
    let mock = Mock::start();
    let mut gw = Gateway::start(&mock.url(), &[]);
    gw.proc.signal("TERM");
    gw.proc
        .wait_exit(Duration::from_secs(6))
        .expect("exited within the grace period");
    assert!(gw.proc.child.wait().unwrap().success());
}

#[test]
fn demo_runs_a_working_pair_and_prints_curl_lines_for_each_dialect() {
    for (dialect, probe, status) in [
        ("iq", "demo-token-1", 200),
        ("bearer", "demo-user-1", 200),
        ("gigma", "unknown-1", 401),
    ] {
        let (listen, admin, crm) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let p = Proc::spawn(
            &[
                "demo",
                "--dialect",
                dialect,
                "--listen",
                &listen,
                "--admin",
                &admin,
                "--crm",
                &crm,
            ],
            &[],
        );
        let up = common::eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&listen).is_ok() && std::net::TcpStream::connect(&crm).is_ok()
        });
        assert!(up, "{dialect} demo did not start: {}", p.output());
        let r = request(
            "GET",
            &format!("http://{listen}/rest/chat/client/id/{probe}"),
            &[],
            None,
        );
        assert_eq!(r.status, status, "{dialect}: {}", r.body);
        let out = p.output();
        assert!(
            out.contains(&format!("curl -i http://{listen}/rest/chat/client/")),
            "{out}"
        );
        assert!(out.contains(&format!("http://{admin}/metrics")), "{out}");
        // Every printed line runs as printed: no placeholder to fill in by hand.
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("  ") && l.contains("curl "))
            .map(|l| l.split("  # ").next().unwrap().trim())
            .collect();
        assert!(lines.len() >= 4, "{out}");
        for line in lines {
            assert!(
                !line.contains("stepId=STEP ") && !line.contains("'token: TOKEN'"),
                "{line}"
            );
            let ran = Command::new("sh").args(["-c", line]).output().unwrap();
            let said = String::from_utf8_lossy(&ran.stdout);
            assert!(ran.status.success(), "{dialect}: {line}: {said}");
            assert!(
                said.contains("HTTP/1.1 ") || said.contains("cardgate_requests_total"),
                "{dialect}: {line}: {said}"
            );
            if line.contains("$TOKEN") {
                assert_eq!(
                    said.matches("HTTP/1.1 200").count(),
                    2,
                    "{dialect}: card and purge: {said}"
                );
            } else if line.contains("secretWord") {
                assert!(said.contains("\"answerType\":2"), "{line}: {said}");
            }
        }
    }
}

#[test]
fn demo_with_a_taken_port_says_so_in_one_line_and_prints_nothing_to_try() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for flag in ["--listen", "--admin", "--crm"] {
        let mut args = vec!["demo".to_string()];
        for f in ["--listen", "--admin", "--crm"] {
            args.push(f.to_string());
            args.push(if f == flag {
                taken.clone()
            } else {
                format!("127.0.0.1:{}", free_port())
            });
        }
        let mut p = Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        p.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{flag}: still running: {}", p.output()));
        assert_eq!(p.child.wait().unwrap().code(), Some(1), "{flag}");
        common::eventually(Duration::from_secs(5), || p.output().contains("cannot listen"));
        let out = p.output();
        assert_eq!(
            out.trim(),
            format!("cardgate: cannot listen on {taken}: Address already in use (os error 98)"),
            "{flag}"
        );
    }
}

#[test]
fn a_listen_address_that_is_taken_or_not_local_stops_the_start_with_its_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    // 192.0.2.1 (TEST-NET-1) is never an address of this machine: binding it fails at once.
    for (listen, reason) in [
        (taken.as_str(), "Address already in use"),
        ("192.0.2.1:18999", "Cannot assign"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"{listen}\"\nupgrade_sock = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:1\"\n",
                dir.path().join("u.sock").display(),
                free_port()
            ),
        )
        .unwrap();
        let start = Instant::now();
        let out = Command::new(BIN)
            .args(["--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert!(stderr.contains(&format!("cannot listen on {listen}")), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
    }
}
