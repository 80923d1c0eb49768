//! Our request framing against Pingora's own HTTP/1 server parser, on one corpus of
//! requests: both must accept or refuse alike and, when both accept, agree on the method,
//! the target's path, the number of header fields and the body the framing delimits.
//! Where they disagree, ours is the stricter one, or (where an RFC asks for it) the more
//! lenient one, for a reason listed in docs/architecture.md ("Differences from Pingora's parser");
//! any other disagreement fails this test.

use std::path::Path;

use cardgate::testkit::fuzz::{frame_connection, Event};
use pingora::protocols::http::v1::server::HttpSession;

/// What Pingora's session made of one request.
#[derive(Debug)]
enum Theirs {
    Request {
        method: String,
        path: String,
        fields: usize,
        body: Vec<u8>,
    },
    Refused(#[allow(dead_code)] String),
}

fn pingora(raw: &[u8]) -> Theirs {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = HttpSession::new(Box::new(std::io::Cursor::new(raw.to_vec())));
        match s.read_request().await {
            Ok(Some(_)) => {}
            Ok(None) => return Theirs::Refused("closed".into()),
            Err(e) => return Theirs::Refused(e.to_string()),
        }
        if let Err(e) = s.validate_request() {
            return Theirs::Refused(e.to_string());
        }
        let mut body = Vec::new();
        loop {
            match s.read_body_bytes().await {
                Ok(Some(b)) => body.extend_from_slice(&b),
                Ok(None) => break,
                Err(e) => return Theirs::Refused(e.to_string()),
            }
        }
        let h = s.req_header();
        Theirs::Request {
            method: h.method.to_string(),
            path: h.uri.path().to_string(),
            fields: h.headers.len(),
            body,
        }
    })
}

/// Requests where ours refuses and Pingora accepts, each for a reason in docs/architecture.md.
const STRICTER: &[&str] = &[
    "no-host",
    "connect",
    "authority-form",
    "te-gzip-chunked",
    "te-twice",
    "non-ascii-target",
    "te-and-cl",
    "control-in-target",
    "long-trailer",
    "host-space",
    "host-empty-port",
];

/// Requests where ours accepts and Pingora refuses, each for a reason in docs/architecture.md.
const LOOSER: &[&str] = &["host-mismatch"];

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = [
        ("get", "GET /rest/chat/client/id/abc HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("post-token", "POST /rest/chat/client/id/ HTTP/1.1\r\nHost: gw\r\ntoken: t\r\nContent-Length: 0\r\n\r\n"),
        ("length", "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"),
        ("length-twice-same", "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        ("length-list-same", "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 5\r\n\r\nhello"),
        ("length-conflict", "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("length-invalid", "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1e3\r\n\r\n"),
        ("length-negative", "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n"),
        ("chunked", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\n\r\n"),
        ("chunked-trailer", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n"),
        ("te-and-cl", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("te-gzip", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("te-gzip-chunked", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("te-twice", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("te-http10", "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad-chunk-size", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        ("lf-only-trailer", "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\n"),
        ("space-in-name", "GET /x HTTP/1.1\r\nHost: gw\r\nBad Header: x\r\n\r\n"),
        ("control-in-target", "GET /\x01 HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("http10", "GET /x HTTP/1.0\r\n\r\n"),
        ("http10-keepalive", "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ("http99", "GET /x HTTP/9.9\r\nHost: gw\r\n\r\n"),
        ("absolute", "GET http://gw/rest/x?y HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("no-host", "GET /x HTTP/1.1\r\n\r\n"),
        ("two-hosts", "GET /x HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        ("host-mismatch", "GET http://elsewhere/x HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("host-space", "GET /x HTTP/1.1\r\nHost: g w\r\n\r\n"),
        ("host-empty-port", "GET /x HTTP/1.1\r\nHost: gw:\r\n\r\n"),
        ("connect", "CONNECT crm:443 HTTP/1.1\r\nHost: crm:443\r\n\r\n"),
        ("authority-form", "OPTIONS crm:443 HTTP/1.1\r\nHost: crm:443\r\n\r\n"),
        ("asterisk", "OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("lf-lines", "GET /x HTTP/1.1\nHost: gw\n\n"),
        ("obs-text-value", "GET /x HTTP/1.1\r\nHost: gw\r\nX: caf\u{e9}\r\n\r\n"),
    ]
    .into_iter()
    .map(|(n, r)| (n.to_string(), r.as_bytes().to_vec()))
    .collect();
    cases.push((
        "non-ascii-target".into(),
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
    ));
    // The committed request seeds of the fuzz corpus too (after their read-boundary
    // prefix); what a local fuzzing run added is left out.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("seed-") || name.starts_with("regression-")) {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let Some(&n) = data.first() else { continue };
        if n & 0x80 != 0 {
            continue;
        }
        let skip = 1 + 2 * usize::from(n % 8);
        cases.push((name, data.get(skip..).unwrap_or_default().to_vec()));
    }
    cases
}

#[test]
fn ours_and_pingoras_parser_agree_or_ours_is_stricter_for_a_listed_reason() {
    let mut unexplained = Vec::new();
    let mut listed_seen = Vec::new();
    for (name, raw) in corpus() {
        let ours = frame_connection(&raw, &[]).into_iter().next();
        let theirs = pingora(&raw);
        let agree_on_request = match (&ours, &theirs) {
            (
                Some(Event::Request {
                    method,
                    target_path,
                    fields,
                    body,
                    ..
                }),
                Theirs::Request {
                    method: m,
                    path,
                    fields: f,
                    body: b,
                },
            ) => Some((method, target_path, fields, body) == (m, path, f, b)),
            _ => None,
        };
        let verdict = match (&ours, &theirs, agree_on_request) {
            (_, _, Some(true)) | (Some(Event::Refused(_)) | None, Theirs::Refused(_), _) => "agree",
            (Some(Event::Refused(_)), Theirs::Request { .. }, _) => "stricter",
            (Some(Event::Request { .. }), Theirs::Refused(_), _) => "looser",
            _ => "differ",
        };
        match verdict {
            "agree" => {}
            "stricter" if STRICTER.iter().any(|s| name.ends_with(s)) => listed_seen.push(name.clone()),
            "looser" if LOOSER.iter().any(|s| name.ends_with(s)) => listed_seen.push(name.clone()),
            _ => unexplained.push(format!("{name}: ours {ours:?}, Pingora {theirs:?}")),
        }
    }
    assert!(
        unexplained.is_empty(),
        "unexplained disagreements:\n{}",
        unexplained.join("\n")
    );
    for s in STRICTER.iter().chain(LOOSER) {
        assert!(
            listed_seen.iter().any(|n| n.ends_with(s)),
            "{s} is listed as differing but no longer does: update the list and docs/architecture.md"
        );
    }
}
