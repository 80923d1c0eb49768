//! Mutual TLS on the chat-server listener, with certificates made here (rcgen): the right
//! CA and name only, each refusal counted by its reason (another CA, a name not allowed,
//! expired, not yet valid); the names a client certificate is matched on (RFC 6125: the
//! CN only without subjectAltName) and the one the access log shows; and the CA names the
//! certificate request carries (as `openssl s_client` lists them), rotated by a reload;
//! certificates revoked by the CA's CRL, refused and counted, and a CRL rotated by a reload.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{ca, crl, leaf, params, signed, write};
use common::tls::{get, Setup};
use common::{eventually, free_port, Gateway, Mock};
use rcgen::SanType;

#[test]
fn client_certificates_are_refused_for_their_ca_name_or_dates_each_counted() {
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
    // Out of their dates: counted as such, not as a bad certificate.
    let expired = leaf(&s.chat_ca, &["chat.example.com"], 13, true);
    assert!(get(
        &tls_addr,
        &s.server_ca,
        Some(&expired),
        "/rest/chat/client/id/mtls-5"
    )
    .is_err());
    let mut p = params(&["chat.example.com"], 14);
    p.not_before = rcgen::date_time_ymd(2090, 1, 1);
    p.not_after = rcgen::date_time_ymd(2091, 1, 1);
    let early = signed(&s.chat_ca, p);
    assert!(get(
        &tls_addr,
        &s.server_ca,
        Some(&early),
        "/rest/chat/client/id/mtls-6"
    )
    .is_err());
    for (reason, n) in [
        ("unknown_ca", 1.0),
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("bad_certificate", 0.0),
    ] {
        let name = format!("cardgate_tls_client_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(gw.metric(&name), n, "{name}");
    }
    assert_eq!(
        gw.metric("cardgate_tls_client_refused_total{reason=\"name_not_allowed\"}"),
        1.0
    );
    for t in ["mtls-2", "mtls-4", "mtls-5", "mtls-6"] {
        assert!(mock.calls_for(t).is_empty(), "{t}");
    }
}

#[test]
fn client_names_follow_rfc_6125_and_the_log_shows_the_name_matched() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let names = [
        "chat.example.com",
        "spiffe://chat.example.com/gateway",
        "127.0.0.9",
    ];
    let gw = Gateway::start(&mock.url(), &[("server", &s.mtls_lines(&tls_addr, &names))]);
    // A client certificate with this CN and these subjectAltNames.
    let client = |cn: &str, sans: Vec<SanType>| {
        let mut p = params(&[], 20);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.subject_alt_names = sans;
        signed(&s.chat_ca, p)
    };
    let dns = |n: &str| SanType::DnsName(n.try_into().unwrap());
    let uri = |u: &str| SanType::URI(u.try_into().unwrap());
    let ip = |a: &str| SanType::IpAddress(a.parse().unwrap());
    let accepted = [
        client("gw-7", vec![uri("spiffe://chat.example.com/gateway")]),
        client("gw-8", vec![ip("127.0.0.9")]),
        client(
            "other.example.com",
            vec![dns("other.example.com"), dns("CHAT.example.com")],
        ),
        client("chat.example.com", vec![]),
    ];
    for (i, cert) in accepted.iter().enumerate() {
        let path = format!("/rest/chat/client/id/names-ok-{i}");
        let (status, _) = get(&tls_addr, &s.server_ca, Some(cert), &path).unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "{i}");
    }
    // A subjectAltName without an allowed name: its CN does not count.
    let refused = [
        client("chat.example.com", vec![uri("spiffe://chat.example.com/other")]),
        client("chat.example.com", vec![ip("127.0.0.10")]),
        client("chat.example.com", vec![dns("chat.example.org")]),
    ];
    for (i, cert) in refused.iter().enumerate() {
        let path = format!("/rest/chat/client/id/names-no-{i}");
        assert!(get(&tls_addr, &s.server_ca, Some(cert), &path).is_err(), "{i}");
        assert!(mock.calls_for(&format!("names-no-{i}")).is_empty());
    }
    assert_eq!(
        gw.metric("cardgate_tls_client_refused_total{reason=\"name_not_allowed\"}"),
        3.0
    );
    // The access lines, in order, name what matched.
    let shown = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|l| l["clientCert"].as_str().map(str::to_string))
            .collect()
    };
    let want = [
        "spiffe://chat.example.com/gateway",
        "127.0.0.9",
        "CHAT.example.com",
        "chat.example.com",
    ];
    assert!(
        eventually(Duration::from_secs(5), || shown(&gw.proc.output()) == want),
        "{:?}",
        shown(&gw.proc.output())
    );
}

/// What `openssl s_client` lists under "Acceptable client certificate CA names" when it
/// connects to `addr` with `version` (`-tls1_2`, `-tls1_3`) and no certificate.
fn acceptable_ca_names(addr: &str, version: &str) -> Vec<String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, version, "-servername", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is needed (the openssl package)");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("openssl s_client did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut lines = out
        .lines()
        .skip_while(|l| *l != "Acceptable client certificate CA names");
    assert!(lines.next().is_some(), "no CA names in:\n{out}");
    lines
        .take_while(|l| l.contains('='))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_certificate_request_names_the_client_ca_and_follows_its_rotation() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&mock.url(), &[("server", &s.tls_lines(&tls_addr, true))]);
    for version in ["-tls1_2", "-tls1_3"] {
        assert_eq!(
            acceptable_ca_names(&tls_addr, version),
            ["CN = chat CA"],
            "{version}"
        );
    }

    let next = ca("chat CA 2025");
    write(s.dir.path(), "chat-ca.pem", &next.cert.pem());
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_tls_reloads_total{result=\"ok\"}")
        == 1.0));
    for version in ["-tls1_2", "-tls1_3"] {
        assert_eq!(
            acceptable_ca_names(&tls_addr, version),
            ["CN = chat CA 2025"],
            "{version}"
        );
    }
    let client = leaf(&next, &["chat.example.com"], 30, false);
    let (status, _) = get(
        &tls_addr,
        &s.server_ca,
        Some(&client),
        "/rest/chat/client/id/rotated",
    )
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[test]
fn a_revoked_client_certificate_is_refused_and_a_rotated_crl_takes_effect() {
    let mock = Mock::start();
    let s = Setup::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    write(s.dir.path(), "chat.crl", &crl(&s.chat_ca, 1, &[40]));
    let lines = format!(
        "{}crl_files = [\"{}\"]\n",
        s.tls_lines(&tls_addr, true),
        s.path("chat.crl")
    );
    let gw = Gateway::start(&mock.url(), &[("server", &lines)]);
    let revoked = leaf(&s.chat_ca, &["chat.example.com"], 40, false);
    let good = leaf(&s.chat_ca, &["chat.example.com"], 41, false);
    let get_as = |cert, t: &str| {
        get(
            &tls_addr,
            &s.server_ca,
            Some(cert),
            &format!("/rest/chat/client/id/{t}"),
        )
    };
    assert!(get_as(&revoked, "crl-1").is_err());
    let (status, _) = get_as(&good, "crl-2").unwrap();
    assert_eq!(
        status, "HTTP/1.1 200 OK",
        "the same CA's certificate not on the CRL"
    );
    let revoked_total = "cardgate_tls_client_refused_total{reason=\"revoked\"}";
    assert_eq!(gw.metric(revoked_total), 1.0);
    assert_eq!(
        gw.metric("cardgate_tls_client_refused_total{reason=\"bad_certificate\"}"),
        0.0
    );

    // The next CRL revokes 41 too: in force for new handshakes after SIGHUP.
    write(s.dir.path(), "chat.crl", &crl(&s.chat_ca, 2, &[40, 41]));
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .metric_now("cardgate_tls_reloads_total{result=\"ok\"}")
        == 1.0));
    assert!(get_as(&good, "crl-3").is_err(), "revoked by the new CRL");
    let other = leaf(&s.chat_ca, &["chat.example.com"], 42, false);
    assert_eq!(get_as(&other, "crl-4").unwrap().0, "HTTP/1.1 200 OK");
    assert_eq!(gw.metric_now(revoked_total), 2.0);
    for t in ["crl-1", "crl-3"] {
        assert!(mock.calls_for(t).is_empty(), "{t}");
    }
}
