//! `iq`: the internal system implements the Auth API itself.
//!
//! The card request is always `POST {url}/rest/chat/client/id/` with the token in the
//! configured header and an empty body, whatever form the chat server used, so the token
//! never appears in a LAN URL or access log. `auth_method = "get"` keeps the legacy
//! `GET {url}/rest/chat/client/id/{token}` for CRMs that have nothing else.

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::Dialect;
use crate::config::{AuthMethod, UpstreamSection};
use crate::error::GatewayError;
use crate::normalise::{self, Card};
use crate::parse::Token;
use crate::upstream::{Trace, Upstream, UpstreamRequest};

/// Characters left as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub struct Iq {
    token_header: HeaderName,
    method: AuthMethod,
}

impl Iq {
    pub fn new(cfg: &UpstreamSection) -> Self {
        Iq {
            token_header: HeaderName::from_bytes(cfg.token_header.as_bytes()).expect("validated at load"),
            method: cfg.auth_method,
        }
    }

    fn card_request(&self, token: &Token) -> Result<UpstreamRequest, GatewayError> {
        Ok(match self.method {
            AuthMethod::Post => {
                let value = HeaderValue::from_bytes(token.as_bytes())
                    .map_err(|_| GatewayError::BadRequest("token cannot be sent in a header"))?;
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

#[async_trait]
impl Dialect for Iq {
    async fn fetch_card(&self, up: &Upstream, token: &Token, trace: &Trace) -> Result<Card, GatewayError> {
        let req = self.card_request(token)?;
        let answer = up.send(&req, trace).await?;
        normalise::auth_answer(answer)
    }
}
