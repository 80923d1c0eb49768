//! The admin listener: metrics, health, readiness and cache administration.
//!
//! It listens on loopback by default and is never the chat-server-facing port.
//! `GET /metrics` (Prometheus text), `GET /healthz`, `GET /readyz` (503 while draining),
//! `POST /cache/purge` with the token in header `token`, `POST /cache/clear`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::gateway::Gateway;

pub struct Admin {
    pub gateway: Arc<Gateway>,
    /// Set when SIGTERM arrives: readiness turns 503 so balancers drain this instance.
    pub draining: Arc<AtomicBool>,
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
    async fn metrics(&self) -> Response<Vec<u8>> {
        let body = self.gateway.metrics_text().await;
        Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static response parts are valid")
    }

    async fn purge(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let raw = session.req_header().headers.get("token").map(|v| v.as_bytes());
        let done = match raw {
            Some(raw) => self.gateway.purge(raw).await.ok(),
            None => None,
        };
        let Some(done) = done else {
            return error(400, "BAD_REQUEST", "token header is missing or invalid");
        };
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

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // Admin requests carry no body; drain what a client may have sent. A request whose
        // body never arrives whole does nothing.
        if session.drain_request_body().await.is_err() {
            return error(
                400,
                "BAD_REQUEST",
                "the request body could not be read; nothing was done",
            );
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => self.metrics().await,
            ("GET", "/healthz") => json_response(200, json!({ "status": "ok" })),
            ("GET", "/readyz") => {
                if self.draining.load(Ordering::Relaxed) {
                    json_response(503, json!({ "status": "draining" }))
                } else {
                    json_response(200, json!({ "status": "ready" }))
                }
            }
            ("POST", "/cache/purge") => self.purge(session).await,
            ("POST", "/cache/clear") => {
                let n = self.gateway.clear().await;
                json_response(200, json!({ "cleared": n }))
            }
            (_, "/metrics" | "/healthz" | "/readyz") => error(405, "METHOD_NOT_ALLOWED", "use GET"),
            (_, "/cache/purge" | "/cache/clear") => error(405, "METHOD_NOT_ALLOWED", "use POST"),
            _ => error(404, "NOT_FOUND", "no such route"),
        }
    }
}
