//! The access log: one JSON line per chat-server request.
//!
//! A line names the API, method, status, errorCode, cache result, upstream status and
//! time, the request id, and an 8-hex keyed fingerprint of the token. It never carries a
//! token, a secretWord, a path or a body.

use std::time::{Duration, SystemTime};

use serde::Serialize;

#[derive(Serialize)]
pub struct Line<'a> {
    pub ts: String,
    pub api: &'a str,
    pub method: &'a str,
    pub status: u16,
    #[serde(rename = "errorCode", skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    /// Search: "first" or "next" step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'a str>,
    #[serde(rename = "upstreamStatus", skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(rename = "upstreamMs", skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    #[serde(rename = "durationMs")]
    pub duration_ms: f64,
    #[serde(rename = "tokenFp", skip_serializing_if = "Option::is_none")]
    pub token_fp: Option<&'a str>,
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn emit(line: &Line<'_>) {
    let Ok(mut buf) = serde_json::to_vec(line) else {
        return;
    };
    buf.push(b'\n');
    super::sink::send(buf);
}
