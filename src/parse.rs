//! Parse a chat-server request into what it asks for.
//!
//! Routes are fixed by the Auth API and the Search client API; anything else is a JSON
//! 404 or 405. The token comes from the last path segment (percent-decoded) of
//! `GET /rest/chat/client/id/{token}` or from the `token` header of
//! `POST /rest/chat/client/id/`. Size and character limits are enforced here, before any
//! lookup, so that nothing downstream ever sees an oversized or malformed token.

// Input decides every length and offset here: no panicking index, no unchecked arithmetic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use bytes::Bytes;

use crate::error::GatewayError;
use crate::h1::server::RequestView;

const AUTH_PREFIX: &str = "/rest/chat/client/id";
const SEARCH_PREFIX: &str = "/rest/chat/client/search";

/// The API a request belongs to, as a metrics and log label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Auth,
    Search,
    Other,
}

impl Api {
    pub fn label(self) -> &'static str {
        match self {
            Api::Auth => "auth",
            Api::Search => "search",
            Api::Other => "other",
        }
    }
}

/// A client token. Its bytes are secret: no `Debug`, no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Bytes);

impl Token {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a chat-server request asks for.
#[derive(Debug)]
pub enum Route {
    /// Auth API, either form.
    Card(Token),
    /// Search client API (the parameters are in the body).
    Search,
}

/// Identify the route, the API and, for the Auth API, the token.
pub fn route<R: RequestView>(req: &R, max_token_bytes: usize) -> (Api, Result<Route, GatewayError>) {
    let path = req.path();
    let method = req.method();
    if let Some(rest) = path.strip_prefix(AUTH_PREFIX) {
        return (Api::Auth, auth_route(method, rest, req, max_token_bytes));
    }
    if let Some(rest) = path.strip_prefix(SEARCH_PREFIX) {
        // `/rest/chat/client/search`, `.../search/` or `.../search/{id}`.
        let known = rest.is_empty() || rest.strip_prefix('/').is_some_and(|id| !id.contains('/'));
        if !known {
            return (Api::Other, Err(GatewayError::NotFound));
        }
        return match method {
            "POST" => (Api::Search, Ok(Route::Search)),
            _ => (Api::Search, Err(GatewayError::MethodNotAllowed { allow: "POST" })),
        };
    }
    (Api::Other, Err(GatewayError::NotFound))
}

fn auth_route<R: RequestView>(method: &str, rest: &str, req: &R, max: usize) -> Result<Route, GatewayError> {
    match rest {
        // `/rest/chat/client/id` and `/rest/chat/client/id/`: the POST form.
        "" | "/" => match method {
            "POST" => header_token(req, max).map(Route::Card),
            "GET" => Err(GatewayError::BadRequest("token is empty")),
            _ => Err(GatewayError::MethodNotAllowed { allow: "GET, POST" }),
        },
        _ => {
            let Some(raw) = rest.strip_prefix('/') else {
                return Err(GatewayError::NotFound);
            };
            if raw.contains('/') {
                return Err(GatewayError::NotFound);
            }
            match method {
                "GET" => path_token(raw, max).map(Route::Card),
                _ => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            }
        }
    }
}

fn path_token(raw: &str, max: usize) -> Result<Token, GatewayError> {
    // A percent-encoded token is at most three times as long as its decoded form.
    if raw.len() > max.saturating_mul(3) {
        return Err(GatewayError::TokenTooLong { in_header: false });
    }
    if !raw.contains('%') {
        return check_token(raw.as_bytes(), max, false);
    }
    check_token(&percent_decode_strict(raw.as_bytes())?, max, false)
}

/// Decode `%XX` escapes; a `%` not followed by two hex digits is refused, never kept.
fn percent_decode_strict(raw: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let malformed = GatewayError::BadRequest("malformed percent-encoding in token");
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = |d: Option<&u8>| d.and_then(|d| char::from(*d).to_digit(16));
        match (hex(bytes.next()), hex(bytes.next())) {
            (Some(hi), Some(lo)) => out
                .push(u8::try_from(hi.saturating_mul(16).saturating_add(lo)).map_err(|_| malformed.clone())?),
            _ => return Err(malformed),
        }
    }
    Ok(out)
}

fn header_token<R: RequestView>(req: &R, max: usize) -> Result<Token, GatewayError> {
    let mut values = req.header_values("token");
    let Some(value) = values.next() else {
        return Err(GatewayError::BadRequest("token header is missing"));
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("token header is repeated"));
    }
    check_token(value, max, true)
}

fn check_token(bytes: &[u8], max: usize, in_header: bool) -> Result<Token, GatewayError> {
    if bytes.is_empty() {
        return Err(GatewayError::BadRequest("token is empty"));
    }
    if bytes.len() > max {
        return Err(GatewayError::TokenTooLong { in_header });
    }
    // Visible ASCII only, trimmed of nothing: one token has one spelling, in the cache
    // key and at the CRM alike.
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(GatewayError::BadRequest(
            "token must be visible ASCII (no spaces, control characters or other bytes)",
        ));
    }
    // One exact-size allocation.
    Ok(Token(Bytes::copy_from_slice(bytes)))
}

/// A token received from somewhere else than the chat server's request (a search answer).
pub fn token(bytes: &[u8], max: usize) -> Result<Token, GatewayError> {
    check_token(bytes, max, true)
}

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
    use crate::h1::server::Request;

    fn raw(method: &str, path: &str, token: Option<&str>) -> Vec<u8> {
        let token = token.map(|t| format!("token: {t}\r\n")).unwrap_or_default();
        format!("{method} {path} HTTP/1.1\r\nHost: gw\r\n{token}\r\n").into_bytes()
    }

    fn route_of(method: &str, path: &str, token: Option<&str>) -> (Api, Result<Route, GatewayError>) {
        let raw = raw(method, path, token);
        let head = crate::h1::server::tests::head(&raw).unwrap();
        route(&Request::new(&raw, &head, b"", None), 16)
    }

    fn card(method: &str, path: &str, token: Option<&str>) -> Result<Vec<u8>, GatewayError> {
        match route_of(method, path, token).1? {
            Route::Card(t) => Ok(t.as_bytes().to_vec()),
            Route::Search => panic!("not a card route"),
        }
    }

    #[test]
    fn both_auth_forms_give_the_token() {
        assert_eq!(card("GET", "/rest/chat/client/id/abc", None).unwrap(), b"abc");
        assert_eq!(
            card("GET", "/rest/chat/client/id/a%2Bb%2Fc?x=1", None).unwrap(),
            b"a+b/c"
        );
        assert_eq!(
            card("POST", "/rest/chat/client/id/", Some("xyz")).unwrap(),
            b"xyz"
        );
        assert_eq!(card("POST", "/rest/chat/client/id", Some("xyz")).unwrap(), b"xyz");
    }

    #[test]
    fn bad_tokens_are_rejected_with_the_right_status() {
        let status = |m: &str, p: &str, t: Option<&str>| card(m, p, t).unwrap_err().status();
        assert_eq!(status("GET", "/rest/chat/client/id/", None), 400);
        assert_eq!(status("POST", "/rest/chat/client/id/", None), 400);
        assert_eq!(status("POST", "/rest/chat/client/id/", Some("")), 400);
        assert_eq!(status("GET", "/rest/chat/client/id/a%0Ab", None), 400);
        assert_eq!(status("GET", "/rest/chat/client/id/a%00b", None), 400);
        assert_eq!(status("GET", "/rest/chat/client/id/aaaaaaaaaaaaaaaaa", None), 414);
        assert_eq!(
            status("GET", &format!("/rest/chat/client/id/{}", "%41".repeat(17)), None),
            414
        );
        assert_eq!(
            status("POST", "/rest/chat/client/id/", Some("aaaaaaaaaaaaaaaaa")),
            431
        );
        assert_eq!(status("POST", "/rest/chat/client/id/", Some("a\tb")), 400);
    }

    #[test]
    fn tokens_have_one_spelling() {
        let refused = |m: &str, p: &str, t: Option<&str>| card(m, p, t).unwrap_err().code().to_string();
        for path in [
            "/rest/chat/client/id/%FF%FE",
            "/rest/chat/client/id/T%zz",
            "/rest/chat/client/id/T%",
            "/rest/chat/client/id/T%2",
            "/rest/chat/client/id/%20T%20",
            "/rest/chat/client/id/a%20b",
            "/rest/chat/client/id/%C3%BC",
        ] {
            assert_eq!(refused("GET", path, None), "BAD_REQUEST", "{path}");
        }
        for value in ["a b", "\u{fc}"] {
            assert_eq!(
                refused("POST", "/rest/chat/client/id/", Some(value)),
                "BAD_REQUEST",
                "{value:?}"
            );
        }
        assert_eq!(card("GET", "/rest/chat/client/id/%41%7e", None).unwrap(), b"A~");
    }

    #[test]
    fn routes_and_methods() {
        let r = |m, p| route_of(m, p, Some("t"));
        assert_eq!(r("GET", "/").1.unwrap_err(), GatewayError::NotFound);
        assert_eq!(
            r("GET", "/rest/chat/client/id/a/b").1.unwrap_err(),
            GatewayError::NotFound
        );
        assert_eq!(
            r("GET", "/rest/chat/client/idx").1.unwrap_err(),
            GatewayError::NotFound
        );
        assert_eq!(r("PUT", "/rest/chat/client/id/").1.unwrap_err().status(), 405);
        assert_eq!(
            r("POST", "/rest/chat/client/id/abc").1.unwrap_err().header(),
            Some(("Allow", "GET"))
        );
        assert!(matches!(
            r("POST", "/rest/chat/client/search/").1,
            Ok(Route::Search)
        ));
        assert!(matches!(
            r("POST", "/rest/chat/client/search/42").1,
            Ok(Route::Search)
        ));
        assert!(matches!(
            r("POST", "/rest/chat/client/search").1,
            Ok(Route::Search)
        ));
        assert_eq!(r("GET", "/rest/chat/client/search/").1.unwrap_err().status(), 405);
        assert_eq!(
            r("POST", "/rest/chat/client/search/1/2").1.unwrap_err().status(),
            404
        );
        assert_eq!(r("GET", "/rest/chat/client/id/x").0, Api::Auth);
    }

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
