//! Validate what the internal system answered and turn it into our answer.
//!
//! A card is a JSON object with a `client` object whose `id` is a non-empty string (or a
//! number, as loose systems send). It is passed on as the CRM's own bytes, so unknown
//! fields and loose types survive untouched; [`scan`] checks it is JSON and reads its
//! members in one pass. A CRM error (`errorCode`/`errorText`, with a
//! non-200 status or on a 200 without `client`) becomes [`GatewayError::CrmRejected`] with
//! both fields coerced to strings. Anything else is an invalid answer.
//!
//! A search answer is a JSON object with `answerType` 1 or 2 (2 needs a non-empty
//! `token`); it too is passed on as the CRM's own bytes.

// Input from the chat server or the CRM reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::error::GatewayError;
use crate::upstream::UpstreamAnswer;

mod lex;
pub(crate) mod scan;

/// A validated client card, ready to write.
#[derive(Debug, Clone)]
pub struct Card {
    /// The JSON answer body (`{"client": ..., "companyList": ...}`).
    pub body: Bytes,
    /// `Cache-Control: max-age` from the internal system: lowers the TTL.
    pub max_age: Option<Duration>,
    /// `Cache-Control: no-store` (or `no-cache`/`private`): do not keep it.
    pub no_store: bool,
}

/// A raw JSON member as text, like [`scalar_text`].
fn raw_text(raw: Option<&[u8]>) -> Option<String> {
    let value: Value = serde_json::from_slice(raw?).ok()?;
    scalar_text(&value)
}

/// A usable `client.id`: a non-empty string or a number.
fn id_ok(raw: Option<&[u8]>) -> bool {
    match raw.and_then(|t| t.first()) {
        Some(b'"') => raw.is_some_and(|r| r.len() > 2),
        Some(b'-' | b'0'..=b'9') => true,
        _ => false,
    }
}

#[derive(Deserialize)]
struct ErrorProbe {
    #[serde(rename = "errorCode")]
    error_code: Option<Value>,
    #[serde(rename = "errorText")]
    error_text: Option<Value>,
    #[serde(rename = "errorMessage")]
    error_message: Option<Value>,
}

/// A validated step of the Search client API.
#[derive(Debug, Clone)]
pub struct SearchAnswer {
    /// The JSON answer body, as the internal system sent it (or as a dialect built it).
    pub body: Bytes,
    /// 1: more information needed; 2: identified, `token` is set.
    pub answer_type: u8,
    pub step_id: Option<String>,
    pub validator: Option<String>,
    pub token: Option<String>,
    /// A card the dialect built for `token` (a logged-in session), kept for the given
    /// time so that the Auth API answers it.
    pub session: Option<(Bytes, Duration)>,
}

#[derive(Deserialize)]
struct SearchProbe {
    #[serde(rename = "answerType")]
    answer_type: Option<Value>,
    #[serde(rename = "stepId")]
    step_id: Option<Value>,
    #[serde(rename = "secretWordValidator")]
    validator: Option<Value>,
    token: Option<Value>,
    #[serde(rename = "errorCode")]
    error_code: Option<Value>,
}

/// Deepest nesting of objects and arrays passed on to the chat server: an answer is
/// passed on as it came, so it must not be able to crash the chat server's parser.
pub const MAX_DEPTH: usize = 64;

/// Does `json` nest objects and arrays at most `max` deep? (A linear scan; strings and
/// their escapes are skipped. Whether it is valid JSON is serde's to say.)
pub fn nesting_within(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth = depth.saturating_add(1);
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// What an answer passed on as it came must be, beyond what serde checks of the members
/// it reads: UTF-8 throughout (serde does not look inside members it skips) and at most
/// [`MAX_DEPTH`] deep. The reason when it is not.
pub fn unpassable(body: &[u8]) -> Option<&'static str> {
    if std::str::from_utf8(body).is_err() {
        Some("answer is not UTF-8")
    } else if !nesting_within(body, MAX_DEPTH) {
        Some("answer nested too deeply")
    } else {
        None
    }
}

fn passable(body: &[u8]) -> Result<(), GatewayError> {
    unpassable(body).map_or(Ok(()), |why| Err(GatewayError::CrmInvalidResponse(why)))
}

/// Map a Search client API answer of an internal system that speaks it (`iq`).
pub fn search_answer(a: UpstreamAnswer) -> Result<SearchAnswer, GatewayError> {
    match a.status {
        200 => {
            passable(&a.body)?;
            let probe: SearchProbe = serde_json::from_slice(&a.body)
                .map_err(|_| GatewayError::CrmInvalidResponse("search answer is not a JSON object"))?;
            let answer_type = match probe.answer_type.as_ref().and_then(scalar_text).as_deref() {
                Some("1") => 1,
                Some("2") => 2,
                None if probe.error_code.is_some() => {
                    // A 200 that carries an error: the CRM's verdict on this step.
                    return Err(rejection(400, &a.body));
                }
                _ => return Err(GatewayError::CrmInvalidResponse("answerType is not 1 or 2")),
            };
            let token = probe
                .token
                .as_ref()
                .and_then(scalar_text)
                .filter(|t| !t.is_empty());
            if answer_type == 2 && token.is_none() {
                return Err(GatewayError::CrmInvalidResponse("answerType 2 without a token"));
            }
            Ok(SearchAnswer {
                body: a.body,
                answer_type,
                step_id: probe
                    .step_id
                    .as_ref()
                    .and_then(scalar_text)
                    .filter(|s| !s.is_empty()),
                validator: probe
                    .validator
                    .as_ref()
                    .and_then(scalar_text)
                    .filter(|s| !s.is_empty()),
                token,
                session: None,
            })
        }
        500..=599 => Err(GatewayError::CrmError { status: a.status }),
        400..=499 => Err(rejection(a.status, &a.body)),
        _ => Err(GatewayError::CrmInvalidResponse("unexpected status")),
    }
}

/// A dialect's answer body as JSON; `why` names the answer when it is not.
pub fn json_body(body: &[u8], why: &'static str) -> Result<Value, GatewayError> {
    serde_json::from_slice(body).map_err(|_| GatewayError::CrmInvalidResponse(why))
}

/// The object member `name` of `v`; `why` names what is missing when there is none.
pub fn object_member<'v>(v: &'v Value, name: &str, why: &'static str) -> Result<&'v Value, GatewayError> {
    v.get(name)
        .filter(|m| m.is_object())
        .ok_or(GatewayError::CrmInvalidResponse(why))
}

/// A JSON scalar as text: a string as it is, a number or a boolean as written; loose
/// systems send ids and codes either way. Objects, arrays and null have none.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Map an Auth API answer of an internal system that speaks the Auth API (`iq`).
pub fn auth_answer(a: UpstreamAnswer) -> Result<Card, GatewayError> {
    match a.status {
        200 => {
            let facts = scan::card(&a.body).map_err(GatewayError::CrmInvalidResponse)?;
            match facts.client {
                Some(id) => {
                    if !id_ok(id) {
                        return Err(GatewayError::CrmInvalidResponse("client.id is missing or empty"));
                    }
                    let (max_age, no_store) = cache_directives(a.cache_control.as_deref());
                    Ok(Card {
                        body: a.body,
                        max_age,
                        no_store,
                    })
                }
                None => match raw_text(facts.error_code) {
                    // A 200 that carries an error: the CRM's verdict, answered as not found.
                    Some(code) => Err(GatewayError::CrmRejected {
                        status: 404,
                        text: raw_text(facts.error_text).unwrap_or_else(|| code.clone()),
                        code,
                    }),
                    None => Err(GatewayError::CrmInvalidResponse("200 without client")),
                },
            }
        }
        500..=599 => Err(GatewayError::CrmError { status: a.status }),
        400..=499 => Err(rejection(a.status, &a.body)),
        _ => Err(GatewayError::CrmInvalidResponse("unexpected status")),
    }
}

/// The CRM's own error: its status, errorCode and errorText pass through.
pub fn rejection(status: u16, body: &[u8]) -> GatewayError {
    let probe: Option<ErrorProbe> = serde_json::from_slice(body).ok();
    let code = probe
        .as_ref()
        .and_then(|p| p.error_code.as_ref().and_then(scalar_text));
    let text = probe.as_ref().and_then(|p| {
        p.error_text
            .as_ref()
            .and_then(scalar_text)
            .or_else(|| p.error_message.as_ref().and_then(scalar_text))
    });
    GatewayError::CrmRejected {
        status,
        code: code.unwrap_or_else(|| format!("CRM_{status}")),
        text: text.unwrap_or_else(|| format!("CRM answered {status}")),
    }
}

/// Read `no-store`/`no-cache`/`private` and `max-age=N` from a Cache-Control value.
pub fn cache_directives(value: Option<&str>) -> (Option<Duration>, bool) {
    let mut max_age = None;
    let mut no_store = false;
    for d in value.unwrap_or("").split(',') {
        let d = d.trim().to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" || d == "private" {
            no_store = true;
        } else if let Some(n) = d.strip_prefix("max-age=") {
            if let Ok(secs) = n.trim_matches('"').parse::<u64>() {
                max_age = Some(Duration::from_secs(secs));
            }
        }
    }
    (max_age, no_store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> UpstreamAnswer {
        UpstreamAnswer::json(status, body)
    }

    #[test]
    fn cards_pass_through_byte_for_byte() {
        let body = r#"{"client":{"id":"1","enabled":"false","x-unknown":[1]},"companyList":[{"id":"2"}]}"#;
        let card = auth_answer(answer(200, body)).unwrap();
        assert_eq!(card.body.as_ref(), body.as_bytes());
        assert!(auth_answer(answer(200, r#"{"client":{"id":42}}"#)).is_ok());
    }

    #[test]
    fn invalid_answers() {
        for body in [
            "<html>",
            "{\"client\":",
            "{\"client\":{\"id\":\"\"}}",
            "{\"client\":{}}",
            "{\"client\":{\"id\":null}}",
            "{\"client\":{\"id\":true}}",
            "{\"client\":{\"id\":[\"1\"]}}",
            "{\"client\":null}",
            "{\"client\":{\"id\":\"1\"}} trailing",
            "{}",
            "[]",
        ] {
            let e = auth_answer(answer(200, body)).unwrap_err();
            assert_eq!(e.code(), "CRM_INVALID_RESPONSE", "{body}");
        }
        assert_eq!(
            auth_answer(answer(503, "<html>")).unwrap_err(),
            GatewayError::CrmError { status: 503 }
        );
        assert_eq!(auth_answer(answer(302, "")).unwrap_err().status(), 502);
    }

    #[test]
    fn crm_errors_pass_through() {
        let e = auth_answer(answer(
            404,
            r#"{"errorCode":1001,"errorText":"Client not found"}"#,
        ))
        .unwrap_err();
        assert_eq!(
            (e.status(), e.code(), e.text().as_str()),
            (404, "1001", "Client not found")
        );
        assert!(e.is_negative());
        let e = auth_answer(answer(200, r#"{"errorCode":"7","errorText":"blocked"}"#)).unwrap_err();
        assert_eq!((e.status(), e.code()), (404, "7"));
        let e = auth_answer(answer(403, "nope")).unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "CRM_403"));
        assert!(!e.is_negative());
    }

    #[test]
    fn answers_with_invalid_utf8_are_invalid() {
        // Found by the `normalise` fuzz target: serde skipped the member unchecked.
        let body = b"{\"client\":{\"id\":\"7\",\"name\":\"las\xcd_\"}}";
        let e = auth_answer(UpstreamAnswer {
            status: 200,
            cache_control: None,
            body: Bytes::from_static(body),
        })
        .unwrap_err();
        assert_eq!(e.code(), "CRM_INVALID_RESPONSE");
    }

    #[test]
    fn deeply_nested_answers_are_invalid() {
        let deep = |n: usize| {
            format!(
                r#"{{"client":{{"id":"1","x":{}1{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(auth_answer(answer(200, &deep(MAX_DEPTH - 2))).is_ok());
        let e = auth_answer(answer(200, &deep(100_000))).unwrap_err();
        assert_eq!(e.code(), "CRM_INVALID_RESPONSE");
        assert!(nesting_within(br#"{"a":"[[[[[[\"[[["}"#, 1));
        assert!(!nesting_within(b"[[", 1));
        let e = search_answer(answer(
            200,
            &format!(r#"{{"answerType":1,"x":{}}}"#, "{\"a\":".repeat(100)),
        ))
        .unwrap_err();
        assert_eq!(e.code(), "CRM_INVALID_RESPONSE");
    }

    #[test]
    fn cache_control() {
        assert_eq!(
            cache_directives(Some("public, max-age=30")),
            (Some(Duration::from_secs(30)), false)
        );
        assert_eq!(cache_directives(Some("No-Store")), (None, true));
        assert_eq!(cache_directives(None), (None, false));
    }

    #[test]
    fn search_answers() {
        let a = search_answer(answer(
            200,
            r#"{"answerType":1,"stepId":"s1","secretWordValidator":"^\\d{4}$","x":1}"#,
        ))
        .unwrap();
        assert_eq!((a.answer_type, a.step_id.as_deref()), (1, Some("s1")));
        assert_eq!(a.validator.as_deref(), Some("^\\d{4}$"));
        let a = search_answer(answer(200, r#"{"answerType":"2","token":"t"}"#)).unwrap();
        assert_eq!((a.answer_type, a.token.as_deref()), (2, Some("t")));
        for body in [
            r#"{"answerType":2}"#,
            r#"{"answerType":3}"#,
            "{}",
            "<html>",
            r#"{"answerType":2,"token":""}"#,
        ] {
            assert_eq!(
                search_answer(answer(200, body)).unwrap_err().code(),
                "CRM_INVALID_RESPONSE",
                "{body}"
            );
        }
        let e = search_answer(answer(
            400,
            r#"{"errorCode":"WRONG","errorMessage":"Wrong code"}"#,
        ))
        .unwrap_err();
        assert_eq!(
            (e.status(), e.code(), e.text().as_str()),
            (400, "WRONG", "Wrong code")
        );
        let e = search_answer(answer(200, r#"{"errorCode":"E1","errorText":"no"}"#)).unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "E1"));
        assert_eq!(search_answer(answer(502, "")).unwrap_err().code(), "CRM_ERROR");
    }
}
