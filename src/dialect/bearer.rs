//! `bearer`: the internal system has a token-check endpoint (seed 004).
//!
//! The card request is `GET {url}{path}` with `Authorization: Bearer <token>`, and the
//! `Accept` and `User-Agent` that seed 004 documents the call with. A 200 with
//! `data.userId` becomes a card whose `id` is that user id (name fields from
//! `data.profile` when it has them, empty strings otherwise, so the required fields are
//! present); a 200 with `userId: null` (an anonymous session) is `CLIENT_NOT_FOUND`; a 401
//! `{"error": {"message", "code"}}` passes on as a 401 with that code and message. Both
//! are negative answers, cached for `cache.negative_ttl`. There is no Search API.

// Indexing here is serde_json's `Value[..]` only, which reads Null for a missing member
// (it never panics on a read) and is written only on objects built here; no slice is
// indexed. The other input-path lints (see lib.rs) hold.
#![cfg_attr(not(test), allow(clippy::indexing_slicing))]

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use serde_json::{json, Map, Value};

use super::{bearer_header, Dialect, Person};
use crate::config::UpstreamSection;
use crate::error::GatewayError;
use crate::normalise::{self, Card};
use crate::parse::Token;
use crate::upstream::{CallRecord, Upstream, UpstreamAnswer, UpstreamRequest, USER_AGENT};

pub struct Bearer {
    path: String,
    client_type: String,
}

impl Bearer {
    pub fn new(cfg: &UpstreamSection) -> Self {
        Bearer {
            path: cfg.bearer.path.clone(),
            client_type: cfg.bearer.client_type.clone(),
        }
    }

    fn card_request(&self, token: &Token) -> Result<UpstreamRequest, GatewayError> {
        let value = bearer_header(token)?;
        Ok(UpstreamRequest {
            method: "GET",
            path: self.path.clone(),
            headers: vec![
                (http::header::AUTHORIZATION, value),
                (http::header::ACCEPT, HeaderValue::from_static("application/json")),
                (http::header::USER_AGENT, HeaderValue::from_static(USER_AGENT)),
            ],
            body: Bytes::new(),
            idempotent: true,
        })
    }

    /// Map the token-check answer to a card.
    pub fn card(&self, a: UpstreamAnswer) -> Result<Card, GatewayError> {
        match a.status {
            200 => {
                let v = normalise::json_body(&a.body, "token check answer is not JSON")?;
                let data = normalise::object_member(&v, "data", "token check answer without data")?;
                let id = match data.get("userId") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Null) | None => return Err(GatewayError::ClientNotFound),
                    _ => return Err(GatewayError::CrmInvalidResponse("userId is not a string")),
                };
                let body = self.card_body(&id, data.get("profile"));
                let (max_age, no_store) = normalise::cache_directives(a.cache_control.as_deref());
                Ok(Card {
                    body: Bytes::from(body),
                    max_age,
                    no_store,
                })
            }
            401 => {
                let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
                let text = |k: &str| {
                    v["error"][k]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                };
                Err(GatewayError::CrmRejected {
                    status: 401,
                    code: text("code").unwrap_or_else(|| "unauthorized".into()),
                    text: text("message").unwrap_or_else(|| "Unauthorized".into()),
                })
            }
            500..=599 => Err(GatewayError::CrmError { status: a.status }),
            400..=499 => Err(normalise::rejection(a.status, &a.body)),
            _ => Err(GatewayError::CrmInvalidResponse("unexpected status")),
        }
    }

    fn card_body(&self, id: &str, profile: Option<&Value>) -> Vec<u8> {
        let empty = Map::new();
        let p = profile.and_then(Value::as_object).unwrap_or(&empty);
        let field = |names: &[&str]| -> String {
            names
                .iter()
                .find_map(|n| p.get(*n).and_then(Value::as_str))
                .unwrap_or("")
                .to_string()
        };
        let person = Person {
            id: id.to_string(),
            surname: field(&["lastName", "last_name", "surname"]),
            firstname: field(&["firstName", "first_name", "firstname"]),
            patronymic: field(&["middleName", "middle_name", "patronymic"]),
            name: Some(field(&["name", "fullName", "full_name"])),
        };
        let mut client = person.client(&self.client_type);
        let email = field(&["email"]);
        let phone = field(&["phone"]);
        if !email.is_empty() || !phone.is_empty() {
            client["contacts"] = json!({ "phone": phone, "email": email });
        }
        serde_json::to_vec(&json!({ "client": client, "companyList": [] })).unwrap_or_default()
    }
}

#[async_trait]
impl Dialect for Bearer {
    async fn fetch_card(
        &self,
        up: &Upstream,
        token: &Token,
        record: &CallRecord,
    ) -> Result<Card, GatewayError> {
        let req = self.card_request(token)?;
        let answer = up.send(&req, record).await?;
        self.card(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn dialect() -> Bearer {
        let cfg =
            Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1\"\ndialect = \"bearer\"\n").unwrap();
        Bearer::new(&cfg.upstream)
    }

    fn answer(status: u16, body: &str) -> UpstreamAnswer {
        UpstreamAnswer::json(status, body)
    }

    #[test]
    fn user_ids_become_cards() {
        let d = dialect();
        let card = d
            .card(answer(
                200,
                r#"{"data":{"userId":"u-1","profile":null,"accessToken":null},"extendedData":[]}"#,
            ))
            .unwrap();
        let v: Value = serde_json::from_slice(&card.body).unwrap();
        assert_eq!(v["client"]["id"], "u-1");
        for f in ["name", "surname", "firstname", "patronymic"] {
            assert_eq!(v["client"][f], "", "{f}");
        }
        assert_eq!(
            (v["client"]["type"].as_str(), v["client"]["enabled"].as_bool()),
            (Some("0"), Some(true))
        );
        let card = d
            .card(answer(
                200,
                r#"{"data":{"userId":"u-2","profile":{"firstName":"Ivan","lastName":"Petrov"}}}"#,
            ))
            .unwrap();
        let v: Value = serde_json::from_slice(&card.body).unwrap();
        assert_eq!(
            (v["client"]["firstname"].as_str(), v["client"]["name"].as_str()),
            (Some("Ivan"), Some("Petrov Ivan"))
        );
    }

    #[test]
    fn anonymous_and_unauthorized_are_negative() {
        let d = dialect();
        let e = d.card(answer(200, r#"{"data":{"userId":null}}"#)).unwrap_err();
        assert_eq!((e.status(), e.code()), (404, "CLIENT_NOT_FOUND"));
        assert!(e.is_negative());
        let e = d
            .card(answer(
                401,
                r#"{"error":{"message":"Unauthorized","code":"unauthorized"}}"#,
            ))
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code(), e.text().as_str()),
            (401, "unauthorized", "Unauthorized")
        );
        assert!(e.is_negative());
        assert_eq!(
            d.card(answer(200, "<html>")).unwrap_err().code(),
            "CRM_INVALID_RESPONSE"
        );
        assert_eq!(d.card(answer(500, "")).unwrap_err().code(), "CRM_ERROR");
    }
}
