//! The mock of the gigma counterparty API (seed 003).
//!
//! Every call needs header `Token` equal to [`app_token`] (else 401 `Unauthenticated.`).
//! `send_password` accepts an 11-digit phone starting with 7 (else 422); `login` accepts
//! [`PASSWORD`] (else 422) and answers a counterparty whose `access_token.value` opens a
//! session; `logout` with `Authorization: Bearer <that token>` ends it (unknown: 401).

use pingora::http::RequestHeader;
use serde_json::{json, Value};

use super::{json_reply, random_hex, MockCrm, Reply};

/// The test password of the seed.
pub const PASSWORD: &str = "1111";

/// The application token the mock expects: `$GIGMA_APP_TOKEN`, or a demo value.
pub fn app_token() -> String {
    std::env::var("GIGMA_APP_TOKEN").unwrap_or_else(|_| "demo-gigma-app-token".into())
}

fn unauthenticated() -> Reply {
    json_reply(401, json!({"message": "Unauthenticated."}))
}

fn counterparty(phone: &str, token: &str) -> Value {
    let id: u64 = phone[phone.len().saturating_sub(6)..].parse().unwrap_or(1);
    json!({
        "counterparty": {
            "id": id,
            "type": {"id": 2, "name": "Розница", "created_at": "2024-03-23T10:27:06.000000Z"},
            "manager": {"id": 1, "first_name": "Артём", "last_name": "Полищук", "middle_name": "Николаевич", "name": "Полищук Артём"},
            "avatar": null,
            "first_name": "Алексей",
            "last_name": "Петров",
            "middle_name": "Викторович",
            "birthday": "1980-04-02",
            "address": "630073, Новосибирская область, город Новосибирск, Новогодняя ул., д. 20/1, кв. 26",
            "phone_1": phone,
            "phone_2": "78888888888",
            "email": "support@itecho.ru",
            "created_at": "2024-03-22T14:01:37.000000Z",
            "updated_at": "2024-03-23T10:48:33.000000Z",
            "access_token": {"value": token}
        }
    })
}

pub(super) fn reply(mock: &MockCrm, req: &RequestHeader, body: &[u8]) -> Reply {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("token") != app_token() {
        return unauthenticated();
    }
    let args: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let phone = args["phone"].as_str().unwrap_or("");
    let valid_phone =
        phone.len() == 11 && phone.starts_with('7') && phone.bytes().all(|b| b.is_ascii_digit());
    let mut sessions = mock.sessions.lock().unwrap_or_else(|e| e.into_inner());
    match (req.method.as_str(), req.uri.path()) {
        ("POST", "/counterparty/send_password") if valid_phone => {
            json_reply(200, json!({"message": "Password successfully send"}))
        }
        ("POST", "/counterparty/send_password" | "/counterparty/login") if !valid_phone => json_reply(
            422,
            json!({"message": "The phone field format is invalid.", "errors": {"phone": ["The phone field format is invalid."]}}),
        ),
        ("POST", "/counterparty/login") => {
            if args["password"].as_str() != Some(PASSWORD) {
                return json_reply(
                    422,
                    json!({"message": "Invalid password", "errors": {"password": ["Invalid password"]}}),
                );
            }
            let token = format!("{}|{}", sessions.len() + 1, random_hex(20));
            sessions.insert(token.clone(), phone.to_string());
            json_reply(200, counterparty(phone, &token))
        }
        ("POST", "/counterparty/logout") => {
            let token = header("authorization").strip_prefix("Bearer ").unwrap_or("");
            if sessions.remove(token).is_none() {
                return unauthenticated();
            }
            let all = args["from_all_devices"].as_bool().unwrap_or(false);
            let text = if all {
                "User successfully logout from all devices"
            } else {
                "User successfully logout"
            };
            json_reply(200, json!({"message": text}))
        }
        _ => json_reply(404, json!({"message": "Not found"})),
    }
}
