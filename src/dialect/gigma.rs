//! `gigma`: a counterparty API with call-reset password login (seed 003).
//!
//! Every call carries the application token (`upstream.gigma.app_token_env` or
//! `app_token_file`) in header `Token`. The Search client API maps to the login flow: a
//! first step reads `client` as a phone, calls `POST /counterparty/send_password` and
//! answers `answerType` 1 with a new random `stepId`
//! bound to that phone for `step_ttl`; the next step calls `POST /counterparty/login` with
//! the code and answers `answerType` 2 with the counterparty's access token, handing the
//! gateway the card built from the counterparty to keep for `session_ttl`. The seed has no
//! call that reads a card by token, so the Auth API answers only those kept cards; any other
//! token is `SESSION_UNKNOWN`. Purging a card logs its session out.
//!
//! Errors: a 401 on send_password or login means the application token was refused, a
//! gateway configuration error (503 `CRM_CONFIG_ERROR`), not the client's fault; other 4xx
//! answers carry `{"message"}` and become `PHONE_REJECTED` (send_password) or `WRONG_CODE`
//! (login), which the search brute-force guard counts.

// Indexing here is serde_json's `Value[..]` only, which reads Null for a missing member
// (it never panics on a read) and is written only on objects built here; no slice is
// indexed. The other input-path lints (see lib.rs) hold.
#![cfg_attr(not(test), allow(clippy::indexing_slicing))]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use moka::future::Cache;
use serde_json::{json, Value};

use super::{bearer_header, Dialect, Person};
use crate::config::UpstreamSection;
use crate::error::GatewayError;
use crate::normalise::{self, Card, SearchAnswer};
use crate::parse::{phone_digits, SearchRequest, Token};
use crate::shared::Shared;
use crate::upstream::{CallRecord, Upstream, UpstreamAnswer, UpstreamRequest};

/// The code gigma's call-reset login asks for: the last 4 digits of the calling number.
pub const VALIDATOR: &str = r"^\d{4}$";
/// Open first steps remembered at most.
const MAX_STEPS: u64 = 100_000;

pub struct Gigma {
    app_token: HeaderValue,
    answer_text: String,
    client_type: String,
    session_ttl: Duration,
    /// Open first steps: stepId → the phone as digits.
    steps: Cache<String, Arc<str>>,
    step_ttl: Duration,
    /// With `[shared]`, open steps are in Redis too, so any replica continues a search.
    shared: Option<Arc<Shared>>,
}

#[derive(Clone, Copy)]
enum Call {
    SendPassword,
    Login,
}

impl Gigma {
    pub fn new(cfg: &UpstreamSection) -> Self {
        let g = &cfg.gigma;
        let token = g.app_token().unwrap_or_default();
        #[allow(clippy::expect_used)] // checked by the config before the gateway is built
        let mut app_token = HeaderValue::from_str(&token).expect("validated at load");
        app_token.set_sensitive(true);
        Gigma {
            app_token,
            answer_text: g.answer_text.clone(),
            client_type: g.client_type.clone(),
            session_ttl: g.session_ttl,
            steps: Cache::builder()
                .max_capacity(MAX_STEPS)
                .time_to_live(g.step_ttl)
                .build(),
            step_ttl: g.step_ttl,
            shared: None,
        }
    }

    /// Keep open steps in Redis as well (sealed; keyed by a hash of the step id).
    pub fn with_shared(mut self, shared: Option<Arc<Shared>>) -> Self {
        self.shared = shared;
        self
    }

    /// The phone of an open step: this replica's, else the one in Redis.
    async fn step_phone(&self, step_id: &str) -> Option<Arc<str>> {
        if let Some(phone) = self.steps.get(step_id).await {
            return Some(phone);
        }
        let shared = self.shared.as_ref()?;
        let sealed = shared
            .get_sealed("gstep", &shared.id("gigma step", step_id.as_bytes()))
            .await??;
        String::from_utf8(sealed).ok().map(Arc::from)
    }

    fn post(
        &self,
        path: &str,
        body: &Value,
        bearer: Option<&Token>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let mut headers = vec![
            (
                http::header::HeaderName::from_static("token"),
                self.app_token.clone(),
            ),
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ];
        if let Some(token) = bearer {
            headers.push((http::header::AUTHORIZATION, bearer_header(token)?));
        }
        Ok(UpstreamRequest {
            method: "POST",
            path: path.into(),
            headers,
            body: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
            // Each of these calls has an effect (a phone call, a login, a logout).
            idempotent: false,
        })
    }

    async fn first_step(
        &self,
        up: &Upstream,
        req: &SearchRequest,
        record: &CallRecord,
    ) -> Result<SearchAnswer, GatewayError> {
        let phone =
            phone_digits(&req.client).ok_or(GatewayError::BadRequest("client is not a phone number"))?;
        let call = self.post("/counterparty/send_password", &json!({ "phone": phone }), None)?;
        let answer = up.send(&call, record).await?;
        if answer.status != 200 {
            return Err(error(Call::SendPassword, &answer));
        }
        let step_id = new_step_id()?;
        self.steps
            .insert(step_id.clone(), Arc::from(phone.as_str()))
            .await;
        if let Some(shared) = &self.shared {
            let id = shared.id("gigma step", step_id.as_bytes());
            shared
                .put_sealed("gstep", &id, phone.as_bytes(), self.step_ttl)
                .await;
        }
        let body = json!({
            "answerType": 1,
            "answerText": self.answer_text.replace("{phone}", &mask(&phone)),
            "secretWordValidator": VALIDATOR,
            "stepId": step_id,
        });
        Ok(SearchAnswer {
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            answer_type: 1,
            step_id: Some(step_id),
            validator: Some(VALIDATOR.into()),
            token: None,
            session: None,
        })
    }

    async fn next_step(
        &self,
        up: &Upstream,
        req: &SearchRequest,
        step_id: &str,
        record: &CallRecord,
    ) -> Result<SearchAnswer, GatewayError> {
        let phone = self.step_phone(step_id).await.ok_or(GatewayError::StepUnknown)?;
        if phone_digits(&req.client).as_deref() != Some(&*phone) {
            return Err(GatewayError::StepUnknown);
        }
        let password = req
            .secret_word
            .as_ref()
            .ok_or(GatewayError::BadRequest("secretWord is required with stepId"))?;
        let call = self.post(
            "/counterparty/login",
            &json!({ "phone": &*phone, "password": password.expose() }),
            None,
        )?;
        let answer = up.send(&call, record).await?;
        if answer.status != 200 {
            return Err(error(Call::Login, &answer));
        }
        let v = normalise::json_body(&answer.body, "login answer is not JSON")?;
        let counterparty = normalise::object_member(&v, "counterparty", "login answer without counterparty")?;
        let token = counterparty["access_token"]["value"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or(GatewayError::CrmInvalidResponse(
                "login answer without access_token",
            ))?
            .to_string();
        let card = card(counterparty, &self.client_type)?;
        self.steps.invalidate(step_id).await;
        if let Some(shared) = &self.shared {
            shared
                .forget("steps", "gstep", &shared.id("gigma step", step_id.as_bytes()))
                .await;
        }
        let body = json!({ "answerType": 2, "token": token });
        Ok(SearchAnswer {
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            answer_type: 2,
            step_id: None,
            validator: None,
            token: Some(token),
            session: Some((card, self.session_ttl)),
        })
    }
}

#[async_trait]
impl Dialect for Gigma {
    async fn fetch_card(
        &self,
        _up: &Upstream,
        _token: &Token,
        _record: &CallRecord,
    ) -> Result<Card, GatewayError> {
        // Cards exist only for sessions this gateway logged in (they are in the cache).
        Err(GatewayError::SessionUnknown)
    }

    async fn search(
        &self,
        up: &Upstream,
        req: &SearchRequest,
        record: &CallRecord,
    ) -> Result<SearchAnswer, GatewayError> {
        match &req.step_id {
            None => self.first_step(up, req, record).await,
            Some(step_id) => self.next_step(up, req, step_id, record).await,
        }
    }

    async fn end_session(
        &self,
        up: &Upstream,
        token: &Token,
        record: &CallRecord,
    ) -> Result<bool, GatewayError> {
        let call = self.post(
            "/counterparty/logout",
            &json!({ "from_all_devices": false }),
            Some(token),
        )?;
        let answer = up.send(&call, record).await?;
        match answer.status {
            200..=299 => Ok(true),
            // The session had already ended.
            401 => Ok(false),
            _ => Err(error(Call::Login, &answer)),
        }
    }
}

/// Map a gigma error answer (`{"message": ...}`).
fn error(call: Call, a: &UpstreamAnswer) -> GatewayError {
    let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    let message = v["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    match a.status {
        401 => GatewayError::CrmMisconfigured,
        429 => GatewayError::CrmRejected {
            status: 429,
            code: "CRM_RATE_LIMITED".into(),
            text: message.unwrap_or_else(|| "too many requests".into()),
        },
        400..=499 => {
            let (code, default) = match call {
                Call::SendPassword => ("PHONE_REJECTED", "the phone number was not accepted"),
                Call::Login => ("WRONG_CODE", "wrong code"),
            };
            GatewayError::CrmRejected {
                status: 400,
                code: code.into(),
                text: message.unwrap_or_else(|| default.into()),
            }
        }
        500..=599 => GatewayError::CrmError { status: a.status },
        _ => GatewayError::CrmInvalidResponse("unexpected status"),
    }
}

/// A new opaque step id: 128 random bits.
fn new_step_id() -> Result<String, GatewayError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|_| GatewayError::Internal("no randomness for a step id"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// `79999999990` → `+7 999 ***-**-90`.
pub fn mask(phone: &str) -> String {
    if phone.len() != 11 || !phone.is_ascii() {
        return "***".into();
    }
    format!("+{} {} ***-**-{}", &phone[..1], &phone[1..4], &phone[9..])
}

fn text(v: &Value) -> String {
    normalise::scalar_text(v).unwrap_or_default()
}

fn plus(phone: &Value) -> String {
    let p = text(phone);
    if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
        format!("+{p}")
    } else {
        p
    }
}

/// The client card of a counterparty, as the Auth API answers it.
pub fn card(c: &Value, client_type: &str) -> Result<Bytes, GatewayError> {
    let id = text(&c["id"]);
    if id.is_empty() {
        return Err(GatewayError::CrmInvalidResponse("counterparty without id"));
    }
    let person = Person {
        id,
        surname: text(&c["last_name"]),
        firstname: text(&c["first_name"]),
        patronymic: text(&c["middle_name"]),
        name: None,
    };
    let manager = match text(&c["manager"]["name"]) {
        n if !n.is_empty() => n,
        _ => [&c["manager"]["last_name"], &c["manager"]["first_name"]]
            .into_iter()
            .map(text)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let fields = [
        ("address", text(&c["address"])),
        ("secondPhone", plus(&c["phone_2"])),
        ("manager", manager),
        ("typeName", text(&c["type"]["name"])),
    ];
    let field_list: Vec<Value> = fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    let mut client = person.client(client_type);
    client["contacts"] = json!({ "phone": plus(&c["phone_1"]), "email": text(&c["email"]) });
    client["fieldList"] = Value::from(field_list);
    if let Some(b) = c["birthday"].as_str().filter(|b| !b.is_empty()) {
        client["birthDate"] = Value::from(b);
    }
    let body = json!({ "client": client, "companyList": [] });
    Ok(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phones() {
        assert_eq!(mask("79999999990"), "+7 999 ***-**-90");
        assert_eq!(mask("123"), "***");
    }

    #[test]
    fn counterparty_to_card() {
        let c = json!({
            "id": 1,
            "type": {"id": 2, "name": "Розница"},
            "manager": {"id": 1, "first_name": "Артём", "last_name": "Полищук", "name": "Полищук Артём"},
            "first_name": "Алексей", "last_name": "Петров", "middle_name": "Викторович",
            "birthday": "1980-04-02",
            "address": "630073, Новосибирск",
            "phone_1": "79999999990", "phone_2": "78888888888",
            "email": "support@itecho.ru",
            "access_token": {"value": "2|secret"}
        });
        let v: Value = serde_json::from_slice(&card(&c, "0").unwrap()).unwrap();
        let client = &v["client"];
        assert_eq!(client["id"], "1");
        assert_eq!(client["name"], "Петров Алексей Викторович");
        assert_eq!(
            (client["surname"].as_str(), client["patronymic"].as_str()),
            (Some("Петров"), Some("Викторович"))
        );
        assert_eq!(client["birthDate"], "1980-04-02");
        assert_eq!(
            client["contacts"],
            json!({"phone": "+79999999990", "email": "support@itecho.ru"})
        );
        let names: Vec<&str> = client["fieldList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["address", "secondPhone", "manager", "typeName"]);
        assert_eq!(client["fieldList"][3]["value"], "Розница");
        assert!(!String::from_utf8_lossy(&serde_json::to_vec(&v).unwrap()).contains("2|secret"));
        assert!(card(&json!({"first_name": "x"}), "0").is_err());
    }
}
