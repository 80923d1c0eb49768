//! Parse a chat-server request into what it asks for.
//!
//! Routes are fixed by the Auth API and the Search client API; anything else is a JSON
//! 404 or 405. The token comes from the last path segment (percent-decoded) of
//! `GET /rest/chat/client/id/{token}` or from the `token` header of
//! `POST /rest/chat/client/id/`. Size and character limits are enforced here, before any
//! lookup, so that nothing downstream ever sees an oversized or malformed token: a token
//! is printable ASCII, with spaces only between visible characters. The
//! Search client API's parameters are read in [`search`].

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

use bytes::Bytes;

use crate::error::GatewayError;
use crate::h1::server::RequestView;

mod search;

pub use search::{phone_digits, search_params, Encoding, SearchRequest};

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
    // Printable ASCII, spaces only between visible characters, trimmed of nothing: one
    // token has one spelling, in the cache key and at the CRM alike (a header value loses
    // its outer spaces on the way, so a token cannot have any).
    let printable = bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    if !printable || bytes.first() == Some(&b' ') || bytes.last() == Some(&b' ') {
        return Err(GatewayError::BadRequest(
            "token must be printable ASCII, spaces only inside (no control characters or other bytes)",
        ));
    }
    // One exact-size allocation.
    Ok(Token(Bytes::copy_from_slice(bytes)))
}

/// A token received from somewhere else than the chat server's request (a search answer).
pub fn token(bytes: &[u8], max: usize) -> Result<Token, GatewayError> {
    check_token(bytes, max, true)
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
            "/rest/chat/client/id/%20T",
            "/rest/chat/client/id/T%20",
            "/rest/chat/client/id/a%09b",
            "/rest/chat/client/id/a%7Fb",
            "/rest/chat/client/id/%C3%BC",
        ] {
            assert_eq!(refused("GET", path, None), "BAD_REQUEST", "{path}");
        }
        for value in ["a\tb", "\u{fc}"] {
            assert_eq!(
                refused("POST", "/rest/chat/client/id/", Some(value)),
                "BAD_REQUEST",
                "{value:?}"
            );
        }
        assert_eq!(card("GET", "/rest/chat/client/id/%41%7e", None).unwrap(), b"A~");
    }

    #[test]
    fn tokens_may_have_spaces_inside() {
        assert_eq!(
            card("GET", "/rest/chat/client/id/a%2Fb%20c%2Bd", None).unwrap(),
            b"a/b c+d"
        );
        assert_eq!(
            card("GET", "/rest/chat/client/id/a%20%20b", None).unwrap(),
            b"a  b"
        );
        // A header value's outer spaces are not part of it: the same token either way.
        assert_eq!(
            card("POST", "/rest/chat/client/id/", Some(" a/b c+d ")).unwrap(),
            b"a/b c+d"
        );
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
            Some(("Allow", "GET".into()))
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
}
