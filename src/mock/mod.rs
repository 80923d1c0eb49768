//! A mock internal system for demos and tests (`cardgate mock-crm`).
//!
//! It speaks the `iq` dialect: `POST /rest/chat/client/id/` with the token in header
//! `token` (and the legacy `GET /rest/chat/client/id/{token}`) answers a card for any
//! token, except that a token's prefix picks a behaviour:
//!
//! | prefix | answer |
//! |---|---|
//! | `missing` | 404 `{"errorCode":"1001","errorText":"Client not found"}` |
//! | `slow` | a card after 3 s |
//! | `lag` | a card after 500 ms |
//! | `html` | 500 with an HTML page |
//! | `broken` | 200 with truncated JSON |
//! | `err200` | 200 `{"errorCode":"1002","errorText":"Token expired"}` |
//! | `noclient` | 200 without `client` |
//! | `reset` | the connection is closed without an answer |
//! | `nostore` | a card with `Cache-Control: no-store` |
//! | `maxage1` | a card with `Cache-Control: max-age=1` |
//!
//! The Search client API (`POST /rest/chat/client/search/`, form or JSON) runs a two-step
//! flow: a first step for any `client` (except one starting with `missing`, a 404) answers
//! `answerType` 1 with a new `stepId` and validator `^\d{4}$`; the next step with that
//! `stepId` and `secretWord` [`SEARCH_CODE`] answers `answerType` 2 with a token whose card
//! the mock serves; a wrong code is a 400 `WRONG_CODE` and the step stays open.
//!
//! With `--dialect gigma` it is the counterparty API of [`gigma`], with `--dialect bearer`
//! the token-check endpoint of [`bearer`].
//!
//! For tests it keeps a journal of what it was sent (`GET /__mock/journal`), can be told
//! to fail every call (`POST /__mock/fail` with body `off`, `500`, `reset` or `slow`) and
//! to forget (`POST /__mock/reset`). `GET /health` answers 200 unless it is told to fail
//! (and is not journaled). It writes nothing to stdout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use serde_json::{json, Value};

use crate::config::DialectKind;

/// How long `slow` answers take.
pub const SLOW: Duration = Duration::from_secs(3);
/// How long `lag` answers take: long enough for concurrent requests to overlap.
pub const LAG: Duration = Duration::from_millis(500);
/// The code that completes a search step.
pub const SEARCH_CODE: &str = "1111";
/// Journal entries kept.
const JOURNAL_MAX: usize = 10_000;

pub mod bearer;
pub mod gigma;

pub struct MockCrm {
    dialect: DialectKind,
    journal: Mutex<Vec<Value>>,
    fail: Mutex<Option<String>>,
    /// Open search steps: stepId → client.
    steps: Mutex<BTreeMap<String, String>>,
    /// gigma: logged-in sessions, access token → phone.
    sessions: Mutex<BTreeMap<String, String>>,
}

impl MockCrm {
    pub fn new(dialect: DialectKind) -> Self {
        MockCrm {
            dialect,
            journal: Mutex::default(),
            fail: Mutex::default(),
            steps: Mutex::default(),
            sessions: Mutex::default(),
        }
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).unwrap_or_default();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Search parameters of a form or JSON body, as strings.
fn search_params(content_type: &str, body: &[u8]) -> BTreeMap<String, String> {
    if content_type.starts_with("application/json") {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        form_urlencoded::parse(body).into_owned().collect()
    }
}

pub(crate) enum Reply {
    Answer {
        status: u16,
        content_type: &'static str,
        cache_control: Option<&'static str>,
        body: Vec<u8>,
    },
    Reset,
}

pub(crate) fn json_reply(status: u16, body: Value) -> Reply {
    Reply::Answer {
        status,
        content_type: "application/json",
        cache_control: None,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// The card the mock serves for a token: its id is derived from, never equal to, the token.
pub fn card(token: &[u8]) -> Value {
    let h = blake3::hash(token);
    let id = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) % 10_000_000_000;
    json!({
        "client": {
            "id": id.to_string(),
            "name": "Ivanov Ivan Ivanovich",
            "surname": "Ivanov",
            "firstname": "Ivan",
            "patronymic": "Ivanovich",
            "type": "1",
            "enabled": true,
            "birthDate": "1973-09-02",
            "branch": {"id": 7, "extRef": "561", "bik": "044525225", "name": "Main"},
            "contacts": {"phone": "+79221234567", "email": "ivan@example.com"},
            "fieldList": [{"name": "Segment", "value": "Gold"}, {"name": "Manager", "value": "Petrova A."}],
            "crmExtension": {"kept": true}
        },
        "companyList": [
            {"id": 225760, "name": "LIGA", "inn": "7701028744", "kpp": "770001001", "resident": "true"}
        ]
    })
}

impl MockCrm {
    /// The failure every call gets while `/__mock/fail` is set; `slow` delays `normal`.
    fn failure(&self, normal: impl FnOnce() -> Reply) -> Option<(Option<Duration>, Reply)> {
        let fail = self.fail.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match fail.as_deref() {
            Some("500") => Some((None, html(500))),
            Some("reset") => Some((None, Reply::Reset)),
            Some("slow") => Some((Some(SLOW), normal())),
            _ => None,
        }
    }

    fn card_reply(&self, token: &[u8]) -> (Option<Duration>, Reply) {
        let starts = |p: &[u8]| token.starts_with(p);
        if let Some(failure) = self.failure(|| json_reply(200, card(token))) {
            return failure;
        }
        if starts(b"missing") {
            return (
                None,
                json_reply(404, json!({"errorCode": "1001", "errorText": "Client not found"})),
            );
        }
        if starts(b"slow") {
            return (Some(SLOW), json_reply(200, card(token)));
        }
        if starts(b"lag") {
            return (Some(LAG), json_reply(200, card(token)));
        }
        if starts(b"html") {
            return (None, html(500));
        }
        if starts(b"broken") {
            return (
                None,
                Reply::Answer {
                    status: 200,
                    content_type: "application/json",
                    cache_control: None,
                    body: b"{\"client\": {\"id\": \"1\",".to_vec(),
                },
            );
        }
        if starts(b"err200") {
            return (
                None,
                json_reply(200, json!({"errorCode": "1002", "errorText": "Token expired"})),
            );
        }
        if starts(b"noclient") {
            return (None, json_reply(200, json!({"companyList": []})));
        }
        if starts(b"reset") {
            return (None, Reply::Reset);
        }
        let cache_control = if starts(b"nostore") {
            Some("no-store")
        } else if starts(b"maxage1") {
            Some("max-age=1")
        } else {
            None
        };
        (
            None,
            Reply::Answer {
                status: 200,
                content_type: "application/json",
                cache_control,
                body: serde_json::to_vec(&card(token)).unwrap_or_default(),
            },
        )
    }

    fn search_reply(&self, content_type: &str, body: &[u8]) -> Reply {
        let p = search_params(content_type, body);
        let Some(client) = p.get("client").filter(|c| !c.is_empty()) else {
            return json_reply(
                400,
                json!({"errorCode": "NO_CLIENT", "errorMessage": "client is required"}),
            );
        };
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(step_id) = p.get("stepId") else {
            if client.starts_with("missing") {
                return json_reply(
                    404,
                    json!({"errorCode": "CLIENT_NOT_FOUND", "errorText": "No such client"}),
                );
            }
            let step_id = format!("step-{}", random_hex(8));
            steps.insert(step_id.clone(), client.clone());
            return json_reply(
                200,
                json!({
                    "answerType": 1,
                    "answerText": "SMS sent to 8 9** *** 3663",
                    "secretWordValidator": "^\\d{4}$",
                    "stepId": step_id,
                    "crmHint": {"kept": true}
                }),
            );
        };
        if steps.get(step_id) != Some(client) {
            return json_reply(
                400,
                json!({"errorCode": "STEP_UNKNOWN", "errorText": "Unknown step"}),
            );
        }
        if p.get("secretWord").map(String::as_str) != Some(SEARCH_CODE) {
            return json_reply(
                400,
                json!({"errorCode": "WRONG_CODE", "errorText": "Wrong code", "stepId": step_id}),
            );
        }
        steps.remove(step_id);
        json_reply(
            200,
            json!({"answerType": 2, "answerText": "Identified", "token": format!("srch-{}", random_hex(12))}),
        )
    }

    fn control(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        match (method, path) {
            ("GET", "/__mock/journal") => {
                let journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
                json_reply(200, Value::Array(journal.clone()))
            }
            ("POST", "/__mock/reset") => {
                self.journal.lock().unwrap_or_else(|e| e.into_inner()).clear();
                *self.fail.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.steps.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.sessions.lock().unwrap_or_else(|e| e.into_inner()).clear();
                json_reply(200, json!({"reset": true}))
            }
            ("POST", "/__mock/fail") => {
                let mode = String::from_utf8_lossy(body).trim().to_string();
                let mode = (mode != "off" && !mode.is_empty()).then_some(mode);
                *self.fail.lock().unwrap_or_else(|e| e.into_inner()) = mode;
                json_reply(200, json!({"fail": true}))
            }
            _ => json_reply(
                404,
                json!({"errorCode": "404", "errorText": "unknown mock control"}),
            ),
        }
    }

    fn record(&self, session: &ServerSession, body: &[u8]) {
        let req = session.req_header();
        let headers: BTreeMap<String, String> = req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let entry = json!({
            "method": req.method.as_str(),
            "path": req.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(body),
        });
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if journal.len() >= JOURNAL_MAX {
            journal.remove(0);
        }
        journal.push(entry);
    }

    fn reply(&self, session: &ServerSession, body: &[u8]) -> (Option<Duration>, Reply) {
        let req = session.req_header();
        let method = req.method.as_str();
        let path = req.uri.path();
        if path.starts_with("/__mock/") {
            return (None, self.control(method, path, body));
        }
        if path == "/health" {
            let ok = || json_reply(200, json!({"ok": true}));
            return self.failure(ok).unwrap_or_else(|| (None, ok()));
        }
        self.record(session, body);
        match self.dialect {
            DialectKind::Gigma => {
                let reply = || gigma::reply(self, req, body);
                return self.failure(reply).unwrap_or_else(|| (None, reply()));
            }
            DialectKind::Bearer => {
                let reply = || bearer::reply(req);
                return self.failure(reply).unwrap_or_else(|| (None, reply()));
            }
            DialectKind::Iq => {}
        }
        match (method, path) {
            ("POST", "/rest/chat/client/id/" | "/rest/chat/client/id") => match req.headers.get("token") {
                Some(t) if !t.is_empty() => self.card_reply(t.as_bytes()),
                _ => (
                    None,
                    json_reply(400, json!({"errorCode": "400", "errorText": "no token"})),
                ),
            },
            ("POST", "/rest/chat/client/search/" | "/rest/chat/client/search") => {
                let ct = req
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                self.failure(|| self.search_reply(ct, body))
                    .unwrap_or_else(|| (None, self.search_reply(ct, body)))
            }
            ("GET", p) if p.starts_with("/rest/chat/client/id/") => {
                let raw = &p["/rest/chat/client/id/".len()..];
                let token: Vec<u8> = percent_encoding::percent_decode(raw.as_bytes()).collect();
                self.card_reply(&token)
            }
            _ => (
                None,
                json_reply(404, json!({"errorCode": "404", "errorText": "unknown route"})),
            ),
        }
    }
}

fn html(status: u16) -> Reply {
    Reply::Answer {
        status,
        content_type: "text/html",
        cache_control: None,
        body: b"<html><body><h1>Internal Server Error</h1></body></html>".to_vec(),
    }
}

#[async_trait]
impl HttpServerApp for MockCrm {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !matches!(http.read_request().await, Ok(true)) {
            return None;
        }
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = http.read_request_body().await {
            if body.len() + chunk.len() > 1024 * 1024 {
                return None;
            }
            body.extend_from_slice(&chunk);
        }
        let (delay, reply) = self.reply(&http, &body);
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let Reply::Answer {
            status,
            content_type,
            cache_control,
            body,
        } = reply
        else {
            http.shutdown().await;
            return None;
        };
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let mut h = ResponseHeader::build(status, Some(3)).ok()?;
        h.insert_header("content-type", content_type).ok()?;
        h.insert_header("content-length", body.len()).ok()?;
        if let Some(cc) = cache_control {
            h.insert_header("cache-control", cc).ok()?;
        }
        http.write_response_header(Box::new(h)).await.ok()?;
        http.write_response_body(Bytes::from(body), true).await.ok()?;
        let settings = HttpPersistentSettings::for_session(&http);
        http.finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }
}

/// The mock as a Pingora service listening on `listen`.
pub fn service(listen: &str, dialect: DialectKind) -> Service<MockCrm> {
    let mut s = Service::new("cardgate mock CRM".to_string(), MockCrm::new(dialect));
    s.add_tcp(listen);
    s.threads = Some(1);
    s
}
