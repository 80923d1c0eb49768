//! `iq`: the internal system implements the Auth API itself.
//!
//! The card request is always `POST {url}/rest/chat/client/id/` with the token in the
//! configured header and an empty body, whatever form the chat server used, so the token
//! never appears in a LAN URL or access log. `auth_method = "get"` keeps the legacy
//! `GET {url}/rest/chat/client/id/{token}` for CRMs that have nothing else.
//!
//! A search step is `POST {url}/rest/chat/client/search/` with the same parameters, as a
//! form or as JSON (`upstream.search_encoding`). It is never retried: it may send an SMS.

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::Dialect;
use crate::config::{AuthMethod, SearchEncoding, UpstreamSection};
use crate::error::GatewayError;
use crate::normalise::{self, Card, SearchAnswer};
use crate::parse::{Encoding, SearchRequest, Token};
use crate::upstream::{CallRecord, Upstream, UpstreamRequest};

/// Characters left as they are in a path segment.
/// What a token may keep unescaped in a URL segment. `.` is escaped too, so that the
/// tokens `.` and `..` never become dot-segments that a normaliser in front of the CRM
/// would resolve to another path.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

pub struct Iq {
    token_header: HeaderName,
    method: AuthMethod,
    search_encoding: SearchEncoding,
}

impl Iq {
    pub fn new(cfg: &UpstreamSection) -> Self {
        Iq {
            #[allow(clippy::expect_used)] // checked by the config before the gateway is built
            token_header: HeaderName::from_bytes(cfg.token_header.as_bytes()).expect("validated at load"),
            method: cfg.auth_method,
            search_encoding: cfg.search_encoding,
        }
    }

    fn card_request(&self, token: &Token) -> Result<UpstreamRequest, GatewayError> {
        Ok(match self.method {
            AuthMethod::Post => {
                let mut value = HeaderValue::from_bytes(token.as_bytes())
                    .map_err(|_| GatewayError::BadRequest("token cannot be sent in a header"))?;
                value.set_sensitive(true);
                UpstreamRequest {
                    method: "POST",
                    path: "/rest/chat/client/id/".into(),
                    headers: vec![(self.token_header.clone(), value)],
                    body: Bytes::new(),
                    idempotent: true,
                }
            }
            AuthMethod::Get => {
                let raw = String::from_utf8_lossy(token.as_bytes());
                UpstreamRequest {
                    method: "GET",
                    path: format!("/rest/chat/client/id/{}", utf8_percent_encode(&raw, SEGMENT)),
                    headers: Vec::new(),
                    body: Bytes::new(),
                    idempotent: true,
                }
            }
        })
    }
}

impl Iq {
    fn search_request(&self, req: &SearchRequest) -> UpstreamRequest {
        let encoding = match self.search_encoding {
            SearchEncoding::Form => Encoding::Form,
            SearchEncoding::Json => Encoding::Json,
            SearchEncoding::Same => req.encoding,
        };
        let params = req.params();
        let (content_type, body) = match encoding {
            Encoding::Form => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                form.extend_pairs(params);
                ("application/x-www-form-urlencoded", form.finish().into_bytes())
            }
            Encoding::Json => {
                let map: serde_json::Map<String, serde_json::Value> = params
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                ("application/json", serde_json::to_vec(&map).unwrap_or_default())
            }
        };
        UpstreamRequest {
            method: "POST",
            path: "/rest/chat/client/search/".into(),
            headers: vec![(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body: Bytes::from(body),
            idempotent: false,
        }
    }
}

#[async_trait]
impl Dialect for Iq {
    async fn search(
        &self,
        up: &Upstream,
        req: &SearchRequest,
        record: &CallRecord,
    ) -> Result<SearchAnswer, GatewayError> {
        let answer = up.send(&self.search_request(req), record).await?;
        normalise::search_answer(answer)
    }

    async fn fetch_card(
        &self,
        up: &Upstream,
        token: &Token,
        record: &CallRecord,
    ) -> Result<Card, GatewayError> {
        let req = self.card_request(token)?;
        let answer = up.send(&req, record).await?;
        normalise::auth_answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn legacy_get_never_sends_dot_segments() {
        let cfg =
            Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1\"\nauth_method = \"get\"\n").unwrap();
        let iq = Iq::new(&cfg.upstream);
        let path = |t: &str| {
            let token = crate::parse::token(t.as_bytes(), 64).unwrap();
            iq.card_request(&token).unwrap().path
        };
        assert_eq!(path("."), "/rest/chat/client/id/%2E");
        assert_eq!(path(".."), "/rest/chat/client/id/%2E%2E");
        assert_eq!(path("a/b?c"), "/rest/chat/client/id/a%2Fb%3Fc");
        assert_eq!(path("A-z_9~"), "/rest/chat/client/id/A-z_9~");
    }
}
