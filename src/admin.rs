//! The admin listener: metrics, health, readiness and cache administration.
//!
//! It listens on loopback by default and is never the chat-server-facing port.
//! `GET /metrics` (Prometheus text; `HEAD` too), `GET /healthz`, `GET /readyz` (503 while
//! draining), `POST /cache/purge` with the token in header `token`, `POST /cache/clear`,
//! `POST /tls/reload`. With `admin.token_env` set, all but `/healthz` and `/readyz` (and
//! `/metrics` when `admin.metrics_public`) need `Authorization: Bearer <secret>`. Every
//! purge, clear and reload is logged with the caller's address (a purge with the token's
//! fingerprint, never the token).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::config::LogLevel;
use crate::gateway::Gateway;
use crate::logs;

pub struct Admin {
    pub gateway: Arc<Gateway>,
}

fn json_response(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

fn error(status: u16, code: &str, text: &str) -> Response<Vec<u8>> {
    json_response(status, json!({ "errorCode": code, "errorText": text }))
}

impl Admin {
    async fn metrics(&self, head_only: bool) -> Response<Vec<u8>> {
        let body = self.gateway.metrics_text().await;
        let len = body.len();
        Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(http::header::CONTENT_LENGTH, len)
            .body(if head_only { Vec::new() } else { body })
            .expect("static response parts are valid")
    }

    async fn purge(&self, session: &ServerSession, caller: &str) -> Response<Vec<u8>> {
        let raw = session.req_header().headers.get("token").map(|v| v.as_bytes());
        let done = match raw {
            Some(raw) => self.gateway.purge(raw).await.ok(),
            None => None,
        };
        let Some(done) = done else {
            action(
                "purge refused: token header missing or invalid",
                caller,
                json!({}),
            );
            return error(400, "BAD_REQUEST", "token header is missing or invalid");
        };
        action(
            "admin purge",
            caller,
            json!({
                "tokenFp": done.token_fp.as_str(),
                "purged": done.purged,
                "sessionEnded": done.session_ended.as_ref().ok(),
            }),
        );
        // Dialects with sessions (gigma) end the session behind the card too.
        match (done.purged, done.session_ended) {
            (purged, Err(e)) => {
                let body = json!({
                    "purged": u8::from(purged),
                    "errorCode": e.code(),
                    "errorText": format!("the card was purged but the session could not be ended: {}", e.text()),
                });
                json_response(502, body)
            }
            (false, Ok(false)) => error(404, "NOT_CACHED", "no card is cached for this token"),
            (purged, Ok(false)) => json_response(200, json!({ "purged": u8::from(purged) })),
            (purged, Ok(true)) => {
                json_response(200, json!({ "purged": u8::from(purged), "sessionEnded": true }))
            }
        }
    }
}

/// The log line of an admin action: what, who asked, and its own fields.
fn action(msg: &str, caller: &str, fields: serde_json::Value) {
    let mut line = json!({ "caller": caller });
    if let (Some(l), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
        l.extend(f);
    }
    logs::event_with(LogLevel::Info, msg, line);
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let caller = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        // Admin requests carry no body; drain what a client may have sent. A request whose
        // body never arrives whole does nothing.
        let public = matches!(path.as_str(), "/healthz" | "/readyz")
            || (path == "/metrics" && self.gateway.config().admin.metrics_public);
        if !public {
            let authorization = session.req_header().headers.get(http::header::AUTHORIZATION);
            if !self.gateway.admin_authorized(authorization.map(|v| v.as_bytes())) {
                let _ = session.drain_request_body().await;
                if method != "GET" && method != "HEAD" {
                    // At most one line a second: the port may be hammered.
                    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
                    let route = match path.as_str() {
                        "/cache/purge" | "/cache/clear" | "/tls/reload" | "/metrics" => path.as_str(),
                        _ => "other",
                    };
                    logs::warn(
                        "admin request refused: no valid Authorization",
                        &format!("{method} {route} from {caller}"),
                        &LAST,
                        std::time::Duration::from_secs(1),
                    );
                }
                let mut r = error(
                    401,
                    "UNAUTHORIZED",
                    "this endpoint needs Authorization: Bearer <admin secret>",
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"cardgate admin\""),
                );
                return r;
            }
        }
        if session.drain_request_body().await.is_err() {
            return error(
                400,
                "BAD_REQUEST",
                "the request body could not be read; nothing was done",
            );
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => self.metrics(false).await,
            ("HEAD", "/metrics") => self.metrics(true).await,
            ("GET", "/healthz") => json_response(200, json!({ "status": "ok" })),
            ("GET", "/readyz") => {
                if self.gateway.draining() {
                    json_response(503, json!({ "status": "draining" }))
                } else {
                    json_response(200, json!({ "status": "ready" }))
                }
            }
            ("POST", "/cache/purge") => self.purge(session, &caller).await,
            ("POST", "/tls/reload") => {
                let cfg = self.gateway.config();
                let result = self.gateway.reload_tls(cfg.server.tls.as_ref(), "admin");
                action("admin TLS reload", &caller, json!({ "ok": result.is_ok() }));
                match result {
                    Ok(true) => json_response(200, json!({ "reloaded": true })),
                    Ok(false) => error(404, "NO_TLS", "no [server.tls] listener is configured"),
                    Err(why) => error(
                        422,
                        "TLS_RELOAD_FAILED",
                        &format!("{why}; the old certificate stays in use"),
                    ),
                }
            }
            ("POST", "/cache/clear") => {
                let n = self.gateway.clear().await;
                action("admin clear", &caller, json!({ "cleared": n }));
                json_response(200, json!({ "cleared": n }))
            }
            (_, "/metrics" | "/healthz" | "/readyz") => error(405, "METHOD_NOT_ALLOWED", "use GET"),
            (_, "/cache/purge" | "/cache/clear" | "/tls/reload") => {
                error(405, "METHOD_NOT_ALLOWED", "use POST")
            }
            _ => error(404, "NOT_FOUND", "no such route"),
        }
    }
}
