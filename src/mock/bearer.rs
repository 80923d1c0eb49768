//! The mock of the bearer token-check endpoint (seed 004).
//!
//! `GET /v3/security/api/auth/auth` with `Authorization: Bearer <token>`: a token starting
//! with `bad` is a 401 `{"error": {...}}`; one starting with `anon` (or no header) is the
//! anonymous user (`userId: null`); one starting with `profile` carries a profile; any
//! other token is a user whose id is derived from the token.

use pingora::http::RequestHeader;
use serde_json::json;

use super::{json_reply, Reply};

pub const PATH: &str = "/v3/security/api/auth/auth";

/// The user id the mock gives a token.
pub fn user_id(token: &str) -> String {
    let h = blake3::hash(token.as_bytes()).to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(super) fn reply(req: &RequestHeader) -> Reply {
    if (req.method.as_str(), req.uri.path()) != ("GET", PATH) {
        return json_reply(
            404,
            json!({"error": {"message": "Not found", "code": "not_found"}}),
        );
    }
    let auth = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    if token.starts_with("bad") {
        return json_reply(
            401,
            json!({"error": {"message": "Unauthorized", "code": "unauthorized"}}),
        );
    }
    if token.is_empty() || token.starts_with("anon") {
        return json_reply(
            200,
            json!({"data": {"userId": null, "profile": null, "accessToken": null}, "extendedData": []}),
        );
    }
    let profile = token
        .starts_with("profile")
        .then(|| json!({"firstName": "Ivan", "lastName": "Petrov", "middleName": "Sergeevich", "email": "ivan@example.org"}));
    json_reply(
        200,
        json!({"data": {"userId": user_id(token), "profile": profile, "accessToken": null}, "extendedData": []}),
    )
}
