//! TLS on the chat-server listener, with certificates made here (rcgen): a card over TLS,
//! mutual TLS (the right CA, another CA, none, a name not allowed), rotation by SIGHUP
//! and by the admin port seen through the serial a new handshake gets, a bad new file
//! that keeps the old certificate, and misconfigured TLS refused where it is made.

mod common;

use std::process::Command;
use std::time::Duration;

use common::certs::{ca, leaf, write};
use common::tls::{get, get_after, Setup};
use common::{eventually, free_port, token, Gateway, Mock, BIN};

#[test]
fn a_card_over_tls_with_the_version_in_the_access_log() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&mock.url(), &[("server", &s.tls_lines(&tls_addr, false))]);
    let t = token("tls");
    let (status, serial) = get(
        &tls_addr,
        &s.server_ca,
        None,
        &format!("/rest/chat/client/id/{t}"),
    )
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(serial, vec![1]);
    let line = common::eventually(Duration::from_secs(5), || {
        gw.proc.output().contains("\"tls\":\"TLS")
    });
    assert!(line, "{}", gw.proc.output());
    assert_eq!(
        gw.get_card(&token("plain-too")).status,
        200,
        "the plain listener serves beside it"
    );
    // Pingora's handshake timeout for the listener runs on tokio's timer.
    gw.assert_no_timer_thread();
    gw.assert_never_shown(&[&t]);
}

#[test]
fn mutual_tls_takes_the_right_ca_and_name_only() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&mock.url(), &[("server", &s.tls_lines(&tls_addr, true))]);
    let right = leaf(&s.chat_ca, &["chat.example.com"], 10, false);
    let (status, _) = get(
        &tls_addr,
        &s.server_ca,
        Some(&right),
        "/rest/chat/client/id/mtls-1",
    )
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(eventually(Duration::from_secs(5), || gw
        .proc
        .output()
        .contains("\"clientCert\":\"chat.example.com\"")));

    let stranger = ca("another CA");
    let other_ca = leaf(&stranger, &["chat.example.com"], 11, false);
    assert!(get(
        &tls_addr,
        &s.server_ca,
        Some(&other_ca),
        "/rest/chat/client/id/mtls-2"
    )
    .is_err());
    assert!(get(&tls_addr, &s.server_ca, None, "/rest/chat/client/id/mtls-3").is_err());
    let wrong_name = leaf(&s.chat_ca, &["intruder.example.com"], 12, false);
    assert!(get(
        &tls_addr,
        &s.server_ca,
        Some(&wrong_name),
        "/rest/chat/client/id/mtls-4"
    )
    .is_err());
    assert_eq!(
        gw.metric("cardgate_tls_client_refused_total{reason=\"unknown_ca\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("cardgate_tls_client_refused_total{reason=\"name_not_allowed\"}"),
        1.0
    );
    assert!(mock.calls_for("mtls-2").is_empty() && mock.calls_for("mtls-4").is_empty());
}

#[test]
fn certificates_rotate_without_a_restart_and_a_bad_file_keeps_the_old_one() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let mut gw = Gateway::start(&mock.url(), &[("server", &s.tls_lines(&tls_addr, false))]);
    assert_eq!(get(&tls_addr, &s.server_ca, None, "/healthz").unwrap().1, vec![1]);

    s.server_cert(2);
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_tls_reloads_total{result=\"ok\"}")
        == 1.0));
    assert_eq!(
        get(&tls_addr, &s.server_ca, None, "/healthz").unwrap().1,
        vec![2],
        "SIGHUP"
    );

    s.server_cert(3);
    let r = gw.admin("POST", "/tls/reload", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get(&tls_addr, &s.server_ca, None, "/healthz").unwrap().1,
        vec![3],
        "admin"
    );

    write(
        s.dir.path(),
        "chain.pem",
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    );
    let r = gw.admin("POST", "/tls/reload", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "TLS_RELOAD_FAILED"),
        "{}",
        r.body
    );
    assert!(r.body.contains("server.tls.cert_file"), "{}", r.body);
    assert_eq!(gw.metric_now("cardgate_tls_reloads_total{result=\"error\"}"), 1.0);
    assert_eq!(
        get(&tls_addr, &s.server_ca, None, "/healthz").unwrap().1,
        vec![3],
        "the old one stays"
    );
    assert!(!gw.proc.exited());
    gw.wait_event("TLS certificate not reloaded");
}

/// `cardgate check` on a config with these lines: (success, output).
fn check(extra: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:1\"\n{extra}[upstream]\nurl = \"http://127.0.0.1:1\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn misconfigured_tls_is_refused_where_it_is_made_naming_the_key() {
    let s = Setup::new();
    let d = s.dir.path();
    let (other_cert, _) = leaf(&s.server_ca, &["localhost"], 5, false);
    let (old_cert, old_key) = leaf(&s.server_ca, &["localhost"], 6, true);
    write(d, "garbage.pem", "not a pem at all\n");
    write(d, "other.pem", &other_cert);
    write(d, "old.pem", &old_cert);
    write(d, "old-key.pem", &old_key);
    let tls = |cert: &str, key: &str| {
        format!(
            "[server.tls]\nlisten = \"127.0.0.1:2\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            s.path(cert),
            s.path(key)
        )
    };
    let upstream = |cert: &str, key: &str| {
        format!(
            "[upstream]\nurl = \"https://127.0.0.1:1\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            s.path(cert),
            s.path(key)
        )
    };
    assert!(check(&tls("chain.pem", "key.pem")).0, "the good pair passes");
    for (extra, expect) in [
        (tls("garbage.pem", "key.pem"), "server.tls.cert_file"),
        (tls("missing.pem", "key.pem"), "server.tls.cert_file: cannot read"),
        (tls("chain.pem", "garbage.pem"), "server.tls.key_file"),
        (tls("other.pem", "key.pem"), "does not match"),
        (tls("old.pem", "old-key.pem"), "expired on"),
    ] {
        let (ok, out) = check(&extra);
        assert!(!ok && out.contains(expect), "{expect}: {out}");
    }
    // The CRM side: a garbage client certificate no longer passes silently.
    for (cert, key, expect) in [
        ("garbage.pem", "key.pem", "upstream.client_cert"),
        ("chain.pem", "garbage.pem", "upstream.client_key"),
        ("other.pem", "key.pem", "upstream.client_key"),
        ("old.pem", "old-key.pem", "expired on"),
    ] {
        let text = upstream(cert, key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:1\"\n{text}")).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains(expect), "{expect}: {said}");
        // Startup refuses it the same way.
        let out = Command::new(BIN)
            .args(["--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_proxy_header_comes_before_the_tls_handshake() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let lines = format!(
        "proxy_protocol = true\nallow = [\"192.0.2.7\"]\n{}",
        s.tls_lines(&tls_addr, false)
    );
    let gw = Gateway::start(&mock.url(), &[("server", &lines)]);
    let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8443\r\n";
    let (status, _) = get_after(
        header,
        &tls_addr,
        &s.server_ca,
        None,
        "/rest/chat/client/id/pp-tls",
    )
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(eventually(Duration::from_secs(5), || gw
        .proc
        .output()
        .contains("\"peer\":\"192.0.2.7\"")));
    let other = b"PROXY TCP4 192.0.2.8 127.0.0.1 40000 8443\r\n";
    assert!(get_after(
        other,
        &tls_addr,
        &s.server_ca,
        None,
        "/rest/chat/client/id/pp-tls-2"
    )
    .is_err());
    assert!(
        get(&tls_addr, &s.server_ca, None, "/rest/chat/client/id/pp-tls-3").is_err(),
        "no header"
    );
    assert!(mock.calls_for("pp-tls-2").is_empty() && mock.calls_for("pp-tls-3").is_empty());
}
