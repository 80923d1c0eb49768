//! The admin listener: metrics, health, readiness and cache administration.
//!
//! It listens on loopback by default and is never the chat-server-facing port.
//! `GET /metrics` (Prometheus text; `HEAD` too), `/healthz` and `/readyz` (503 while
//! draining) by `GET`, `HEAD` or `OPTIONS` as balancers and monitors send them (never
//! cached), `POST /cache/purge` with the token in header `token`, `POST /cache/clear`,
//! `POST /tls/reload`; another method is 405 with `Allow`. With `admin.token_env` set, all
//! but `/healthz` and `/readyz` (and `/metrics` when `admin.metrics_public`) need
//! `Authorization: Bearer <secret>`. Every purge, clear and reload is logged with the
//! caller's address (a purge with the token's fingerprint, never the token). Each open
//! connection counts in `cardgate_admin_connections_open`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use serde_json::json;

use crate::config::LogLevel;
use crate::edge::Gate;
use crate::gateway::Gateway;
use crate::logs;

pub struct Admin {
    pub gateway: Arc<Gateway>,
}

/// The admin port's application: [`Admin`] behind Pingora's HTTP server, each connection
/// counted while it is open.
pub fn app(gateway: Arc<Gateway>) -> Counted {
    Counted {
        gate: gateway.admin_gate(),
        http: Arc::new(HttpServer::new_app(Admin { gateway })),
    }
}

pub struct Counted {
    gate: Arc<Gate>,
    http: Arc<HttpServer<Admin>>,
}

#[async_trait]
impl ServerApp for Counted {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let _open = self.gate.opened();
        self.http.process_new(io, shutdown).await
    }

    async fn cleanup(&self) {
        self.http.cleanup().await;
    }
}

/// The methods of `/healthz` and `/readyz`.
const HEALTH_METHODS: &str = "GET, HEAD, OPTIONS";

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

/// 405, with the methods the route takes (RFC 9110, 15.5.6).
fn not_allowed(allow: &'static str) -> Response<Vec<u8>> {
    let mut r = error(405, "METHOD_NOT_ALLOWED", &format!("use {allow}"));
    r.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    r
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

    /// `/healthz` or `/readyz`; `head_only`: the same head, without the body.
    fn health(&self, path: &str, head_only: bool) -> Response<Vec<u8>> {
        let (status, body) = match path {
            "/readyz" if self.gateway.draining() => (503, json!({ "status": "draining" })),
            "/readyz" => (200, json!({ "status": "ready" })),
            _ => (200, json!({ "status": "ok" })),
        };
        let mut r = json_response(status, body);
        let headers = r.headers_mut();
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        headers.insert(
            http::header::ALLOW,
            http::HeaderValue::from_static(HEALTH_METHODS),
        );
        if head_only {
            // Content-Length stays that of the GET answer.
            r.body_mut().clear();
        }
        r
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
            // OPTIONS is what HAProxy's `option httpchk` sends unless told otherwise.
            ("GET" | "HEAD" | "OPTIONS", "/healthz" | "/readyz") => self.health(&path, method == "HEAD"),
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
            (_, "/metrics") => not_allowed("GET, HEAD"),
            (_, "/healthz" | "/readyz") => not_allowed(HEALTH_METHODS),
            (_, "/cache/purge" | "/cache/clear" | "/tls/reload") => not_allowed("POST"),
            _ => error(404, "NOT_FOUND", "no such route"),
        }
    }
}
