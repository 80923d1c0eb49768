//! TLS on the chat-server listener, with certificates made here (rcgen): a card over TLS,
//! rotation by SIGHUP and by the admin port seen through the serial a new handshake gets
//! and the expiry gauge, a bad new file that keeps the old certificate and fails a SIGHUP
//! reload as a whole, misconfigured TLS refused where it is made, the versions and cipher
//! suites the listener speaks, and a handshake that never ends. Client certificates:
//! tests/mtls.rs.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::certs::{leaf, write};
use common::tls::{get, get_after, get_speaking, not_after, Setup};
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
    // The listener's handshake bound runs on tokio's timer.
    gw.assert_no_timer_thread();
    gw.assert_never_shown(&[&t]);
}

#[test]
fn certificates_rotate_without_a_restart_and_a_bad_file_keeps_the_old_one() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let mut gw = Gateway::start(
        &mock.url(),
        &[
            ("server", &s.tls_lines(&tls_addr, false)),
            ("cache", "ttl = \"60s\""),
        ],
    );
    assert_eq!(get(&tls_addr, &s.server_ca, None, "/healthz").unwrap().1, vec![1]);
    let expiry = "cardgate_tls_certificate_expiry_seconds{listener=\"chat\"}";
    let chain = s.path("chain.pem");
    assert_eq!(gw.metric_now(expiry), not_after(&chain) as f64);

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
    assert_eq!(gw.metric_now(expiry), not_after(&chain) as f64);

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

    // SIGHUP with the same garbage, and a cache change beside it: the reload fails as a
    // whole, and nothing of it is in force.
    let t = token("tls-reload");
    assert_eq!(gw.get_card(&t).header("x-cache"), Some("MISS"));
    gw.edit_config(|text| text.replace("ttl = \"60s\"", "ttl = \"0s\""));
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_config_reloads_total{result=\"error\"}")
        == 1.0));
    let line = gw.wait_event("configuration not reloaded");
    assert!(
        line["error"].as_str().unwrap().contains("server.tls.cert_file"),
        "{line}"
    );
    assert_eq!(gw.metric_now("cardgate_config_last_reload_successful"), 0.0);
    assert_eq!(gw.metric_now("cardgate_config_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(gw.metric_now("cardgate_tls_reloads_total{result=\"error\"}"), 2.0);
    assert_eq!(gw.get_card(&t).header("x-cache"), Some("HIT"), "the old TTL");
    assert_eq!(get(&tls_addr, &s.server_ca, None, "/healthz").unwrap().1, vec![3]);

    // Repaired, the whole reload goes through.
    s.server_cert(4);
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_config_reloads_total{result=\"ok\"}")
        == 2.0));
    assert_eq!(gw.metric_now("cardgate_config_last_reload_successful"), 1.0);
    assert_eq!(get(&tls_addr, &s.server_ca, None, "/healthz").unwrap().1, vec![4]);
    assert_eq!(gw.metric_now(expiry), not_after(&chain) as f64);
    let u = token("tls-reload-2");
    assert_eq!(gw.get_card(&u).header("x-cache"), Some("MISS"));
    assert_eq!(gw.get_card(&u).header("x-cache"), Some("MISS"), "the new TTL");
}

/// `cardgate check` on a config with these lines: (exit code, output).
fn check(extra: &str) -> (i32, String) {
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
        out.status.code().unwrap(),
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
    assert_eq!(check(&tls("chain.pem", "key.pem")).0, 0, "the good pair passes");
    for (extra, expect) in [
        (tls("garbage.pem", "key.pem"), "server.tls.cert_file"),
        (tls("missing.pem", "key.pem"), "server.tls.cert_file: cannot read"),
        (tls("chain.pem", "garbage.pem"), "server.tls.key_file"),
        (tls("other.pem", "key.pem"), "does not match"),
        (tls("old.pem", "old-key.pem"), "expired on"),
    ] {
        let (code, out) = check(&extra);
        assert!(code == 2 && out.contains(expect), "{expect}: {out}");
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

#[test]
fn min_version_and_cipher_suites_decide_what_a_client_may_speak() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let lines = format!("{}min_version = \"1.3\"\n", s.tls_lines(&tls_addr, false));
    let gw = Gateway::start(&mock.url(), &[("server", &lines)]);
    let tls12 = [&rustls::version::TLS12];
    let tls13 = [&rustls::version::TLS13];
    let path = |t: &str| format!("/rest/chat/client/id/{t}");
    assert!(
        get_speaking(&tls_addr, &s.server_ca, &tls12, &[], &path("v-12")).is_err(),
        "TLS 1.2 only"
    );
    let (status, _) = get_speaking(&tls_addr, &s.server_ca, &tls13, &[], &path("v-13")).unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");

    // Two suites, put in force by a reload: a client without any of them is refused, one
    // with a single one of them is served.
    gw.edit_config(|text| {
        text.replace(
            "min_version = \"1.3\"\n",
            "min_version = \"1.3\"\ncipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\", \"TLS13_AES_256_GCM_SHA384\"]\n",
        )
    });
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_tls_reloads_total{result=\"ok\"}")
        == 1.0));
    let aes128 = ["TLS13_AES_128_GCM_SHA256"];
    assert!(get_speaking(&tls_addr, &s.server_ca, &tls13, &aes128, &path("v-aes")).is_err());
    let chacha = ["TLS13_CHACHA20_POLY1305_SHA256"];
    let (status, _) = get_speaking(&tls_addr, &s.server_ca, &tls13, &chacha, &path("v-chacha")).unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(mock.calls_for("v-12").is_empty() && mock.calls_for("v-aes").is_empty());
    assert_eq!(mock.calls_for("v-chacha").len(), 1);
}

#[test]
fn an_unknown_version_or_cipher_suite_fails_check_naming_the_key() {
    let s = Setup::new();
    let tls = |extra: &str| {
        format!(
            "[server.tls]\nlisten = \"127.0.0.1:2\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
            s.path("chain.pem"),
            s.path("key.pem")
        )
    };
    let good = tls("min_version = \"1.2\"\ncipher_suites = [\"TLS13_AES_128_GCM_SHA256\", \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]\n");
    assert_eq!(check(&good).0, 0, "{}", check(&good).1);
    for (extra, expect) in [
        (
            "cipher_suites = [\"TLS13_AES_128_GCM_SHA256\", \"TLS_FANCY_WITH_ROT13\"]\n",
            "server.tls.cipher_suites: unknown cipher suite \"TLS_FANCY_WITH_ROT13\"",
        ),
        (
            "min_version = \"1.3\"\ncipher_suites = [\"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]\n",
            "server.tls.cipher_suites: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 is a TLS 1.2 suite",
        ),
        ("min_version = \"1.1\"\n", "server.tls.min_version"),
        (
            "crl_files = [\"/nonexistent.crl\"]\n",
            "server.tls.crl_files: needs server.tls.client_ca_file",
        ),
    ] {
        let (code, out) = check(&tls(extra));
        assert!(code == 2 && out.contains(expect), "{expect}: {code} {out}");
    }
    // The CRM side's keys, the same way.
    let https = |extra: &str| {
        format!("[server]\nlisten = \"127.0.0.1:1\"\n[upstream]\nurl = \"https://127.0.0.1:1\"\n{extra}")
    };
    for (extra, expect) in [
        (
            "tls_cipher_suites = [\"TLS_FANCY_WITH_ROT13\"]\n",
            "upstream.tls_cipher_suites: unknown cipher suite \"TLS_FANCY_WITH_ROT13\"",
        ),
        ("tls_min_version = \"1.4\"\n", "upstream.tls_min_version"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, https(extra)).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && said.contains(expect),
            "{expect}: {said}"
        );
    }
}

#[test]
fn a_handshake_that_stops_halfway_is_closed_within_client_timeout() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let lines = format!("client_timeout = \"300ms\"\n{}", s.tls_lines(&tls_addr, false));
    let _gw = Gateway::start(&mock.url(), &[("server", &lines)]);
    let mut c = TcpStream::connect(&tls_addr).unwrap();
    // A handshake record announcing 512 bytes of ClientHello, and the first 5 of them.
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = c.read(&mut buf);
    assert!(matches!(read, Ok(0)), "closed without an answer: {read:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1300),
        "closed within client_timeout + 1 s: {:?}",
        start.elapsed()
    );
}
