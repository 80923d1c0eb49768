//! The Search client API's parameters: `client`, `clientIdType`, `channelId`,
//! `secretWord` and `stepId`, form-encoded or JSON by `Content-Type`, each within the
//! configured limit and free of control characters; `client` printable ASCII. Phones are
//! read in their common notations ([`phone_digits`]).

use crate::error::GatewayError;

/// How the chat server encoded search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Form,
    Json,
}

/// A secret the client typed (a code word, an SMS code): never shown.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One step of the Search client API.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub client: String,
    pub client_id_type: Option<String>,
    pub channel_id: Option<String>,
    pub secret_word: Option<Secret>,
    pub step_id: Option<String>,
    pub encoding: Encoding,
}

impl SearchRequest {
    /// The parameters that are set, in protocol names (secretWord included).
    pub fn params(&self) -> Vec<(&'static str, &str)> {
        let mut p = vec![("client", self.client.as_str())];
        let optional = [
            ("clientIdType", self.client_id_type.as_deref()),
            ("channelId", self.channel_id.as_deref()),
            ("secretWord", self.secret_word.as_ref().map(Secret::expose)),
            ("stepId", self.step_id.as_deref()),
        ];
        p.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        p
    }
}

/// Read the search parameters from a body, by its Content-Type. `max` bounds each value.
pub fn search_params(
    content_type: Option<&str>,
    body: &[u8],
    max: usize,
) -> Result<SearchRequest, GatewayError> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let (encoding, pairs): (Encoding, Vec<(String, String)>) = match media.as_deref() {
        Some("application/x-www-form-urlencoded") => (
            Encoding::Form,
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ),
        Some("application/json") => (Encoding::Json, json_pairs(body)?),
        _ => {
            return Err(GatewayError::BadRequest(
                "search parameters must be application/x-www-form-urlencoded or application/json",
            ))
        }
    };
    let mut req = SearchRequest {
        client: String::new(),
        client_id_type: None,
        channel_id: None,
        secret_word: None,
        step_id: None,
        encoding,
    };
    for (k, v) in pairs {
        if v.len() > max {
            return Err(GatewayError::BadRequest(
                "a search parameter is longer than the configured limit",
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(GatewayError::BadRequest(
                "a search parameter contains control characters",
            ));
        }
        let slot = match k.as_str() {
            "client" => {
                // One client, one spelling: printable ASCII only, so that no invisible
                // space, look-alike digit or zero-width character makes a new identifier
                // with a fresh budget of first steps.
                if !v.chars().all(|c| (' '..='~').contains(&c)) {
                    return Err(GatewayError::BadRequest(
                        "client must be printable ASCII (write phones with ASCII digits)",
                    ));
                }
                req.client = v;
                continue;
            }
            "clientIdType" => &mut req.client_id_type,
            "channelId" => &mut req.channel_id,
            "stepId" => &mut req.step_id,
            "secretWord" => {
                req.secret_word = (!v.is_empty()).then_some(Secret(v));
                continue;
            }
            // Unknown parameters are not forwarded.
            _ => continue,
        };
        *slot = (!v.is_empty()).then_some(v);
    }
    if req.client.trim().is_empty() {
        return Err(GatewayError::BadRequest("client is required"));
    }
    if let Some(t) = &req.client_id_type {
        if !matches!(t.as_str(), "email" | "phone" | "crmid") {
            return Err(GatewayError::BadRequest(
                "clientIdType must be email, phone or crmid",
            ));
        }
    }
    Ok(req)
}

/// A phone number in any common notation (`+7 (999) 999-99-90`, `8 999 999 99 90`,
/// `79999999990`, `9999999990`) as 11 digits starting with the country code 7; None when
/// the text is not such a phone.
pub fn phone_digits(text: &str) -> Option<String> {
    let mut t = text.trim();
    if t.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("tel:")) {
        t = &t[4..];
    }
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c)) {
        return None;
    }
    let mut digits: String = t.chars().filter(char::is_ascii_digit).collect();
    // `00` is the international prefix, as `+` is.
    if digits.starts_with("00") {
        digits.replace_range(..2, "");
    }
    match digits.len() {
        10 => digits.insert(0, '7'),
        11 if digits.starts_with('8') => digits.replace_range(..1, "7"),
        11 if digits.starts_with('7') => {}
        _ => return None,
    }
    Some(digits)
}

/// A JSON object's members as strings (numbers and booleans are tolerated, null is absent).
fn json_pairs(body: &[u8]) -> Result<Vec<(String, String)>, GatewayError> {
    let bad = GatewayError::BadRequest("search parameters are not a JSON object of strings");
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad.clone())?;
    let serde_json::Value::Object(map) = value else {
        return Err(bad);
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        let v = match v {
            serde_json::Value::Null => continue,
            v => crate::normalise::scalar_text(&v).ok_or_else(|| bad.clone())?,
        };
        pairs.push((k, v));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_parameters_in_both_encodings() {
        let form = search_params(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            b"client=%2B7+999&clientIdType=phone&secretWord=12%2634&stepId=s1&other=x",
            64,
        )
        .unwrap();
        assert_eq!(form.encoding, Encoding::Form);
        assert_eq!(form.client, "+7 999");
        assert_eq!(form.secret_word.as_ref().unwrap().expose(), "12&34");
        assert_eq!(form.step_id.as_deref(), Some("s1"));
        assert!(
            !format!("{form:?}").contains("12&34"),
            "Debug hides the secret word"
        );
        let json = search_params(
            Some("application/json"),
            br#"{"client":"a@b.c","clientIdType":"email","channelId":null,"stepId":42}"#,
            64,
        )
        .unwrap();
        assert_eq!(json.encoding, Encoding::Json);
        assert_eq!(json.step_id.as_deref(), Some("42"));
        assert_eq!(json.channel_id, None);
        assert_eq!(
            json.params(),
            vec![("client", "a@b.c"), ("clientIdType", "email"), ("stepId", "42")]
        );
    }

    #[test]
    fn bad_search_parameters_are_400() {
        let bad = |ct: Option<&str>, body: &[u8]| search_params(ct, body, 16).unwrap_err().status();
        assert_eq!(bad(None, b"client=x"), 400);
        assert_eq!(bad(Some("text/plain"), b"client=x"), 400);
        assert_eq!(bad(Some("application/json"), b"{\"client\":"), 400);
        assert_eq!(bad(Some("application/json"), b"[1]"), 400);
        assert_eq!(bad(Some("application/json"), br#"{"client":{"a":1}}"#), 400);
        assert_eq!(bad(Some("application/x-www-form-urlencoded"), b"stepId=1"), 400);
        assert_eq!(
            bad(
                Some("application/x-www-form-urlencoded"),
                b"client=x&clientIdType=fax"
            ),
            400
        );
        assert_eq!(
            bad(Some("application/x-www-form-urlencoded"), b"client=a%0Ab"),
            400
        );
        assert_eq!(
            bad(Some("application/x-www-form-urlencoded"), &[b'x'; 40][..]),
            400
        );
    }

    #[test]
    fn phones_in_common_notations() {
        for p in [
            "+7 (999) 999-99-90",
            "8 999 999 99 90",
            "79999999990",
            "9999999990",
            "8-999-999-99-90",
        ] {
            assert_eq!(phone_digits(p).as_deref(), Some("79999999990"), "{p}");
        }
        for p in [
            "",
            "12345",
            "+1 555 123 4567 8",
            "a@b.c",
            "+44 20 7946 0958",
            "99999999901234",
        ] {
            assert_eq!(phone_digits(p), None, "{p}");
        }
    }
}
