//! The one error type of the gateway.
//!
//! Every failure path — bad input, unknown route, CRM refusal, timeout, broken answer —
//! is a [`GatewayError`]. This module alone decides each variant's HTTP status, its
//! `errorCode` and its `errorText`, and renders the JSON body. Texts never carry a token,
//! a secret or a body from either side.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;

use crate::h1::FramingError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// The request is malformed (empty token, control characters, bad parameters).
    BadRequest(&'static str),
    /// The token is longer than `limits.max_token_bytes`; `in_header` picks 431 over 414.
    TokenTooLong { in_header: bool },
    /// No such route.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed { allow: &'static str },
    /// The request body exceeds `limits.max_body_bytes`.
    PayloadTooLarge,
    /// The request line alone exceeds `limits.max_head_bytes`.
    UriTooLong,
    /// The request head exceeds `limits.max_head_bytes`, or has too many fields.
    HeadersTooLarge,
    /// The request did not arrive whole within `server.client_timeout`.
    RequestTimeout,
    /// Plain HTTP on the TLS port (the connection is closed after the answer).
    PlainHttpOnTlsPort,
    /// The configured dialect has no Search client API.
    SearchNotSupported,
    /// A `secretWord` that does not match the validator the previous step sent.
    SecretWordInvalid,
    /// A search step collected `search.max_attempts` failed answers.
    TooManyAttempts,
    /// Too many first search steps for one client identifier within the hour.
    TooManySearches,
    /// The internal system could not be reached (refused, reset, closed, TLS failure).
    CrmUnavailable(&'static str),
    /// The internal system did not answer within `upstream.timeout`.
    CrmTimeout,
    /// `upstream.max_inflight` calls were under way and none ended within
    /// `upstream.queue_timeout`: the request is shed to protect the CRM.
    CrmOverloaded,
    /// No node of the internal system is healthy: answered at once, without a call.
    CrmDown,
    /// The internal system answered with a 5xx status.
    CrmError { status: u16 },
    /// The internal system answered something that is not a valid answer.
    CrmInvalidResponse(&'static str),
    /// The internal system answered with an error of its own, passed on unchanged.
    CrmRejected { status: u16, code: String, text: String },
    /// The internal system knows the token but no client behind it (an anonymous session).
    ClientNotFound,
    /// No logged-in session for this token (sessions start with a search).
    SessionUnknown,
    /// A search step id that is unknown, expired, or bound to another client.
    StepUnknown,
    /// The internal system refused the gateway's own credentials: a configuration error.
    CrmMisconfigured,
    /// The request was answered by a gateway-side bug or resource failure.
    Internal(&'static str),
    /// The source sent more than `limits.rate_per_source` allows.
    RateLimited,
    /// The source collected more than `limits.max_unknown_tokens_per_minute` "client not
    /// found" answers and is refused card lookups for this many seconds.
    TooManyUnknownTokens { retry_after: u64 },
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::TokenTooLong { in_header: false } => 414,
            GatewayError::TokenTooLong { in_header: true } => 431,
            GatewayError::NotFound => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::PayloadTooLarge => 413,
            GatewayError::UriTooLong => 414,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::RequestTimeout => 408,
            GatewayError::PlainHttpOnTlsPort => 400,
            GatewayError::SearchNotSupported => 501,
            GatewayError::SecretWordInvalid => 400,
            GatewayError::TooManyAttempts | GatewayError::TooManySearches => 429,
            GatewayError::CrmUnavailable(_) => 502,
            GatewayError::CrmTimeout => 504,
            GatewayError::CrmOverloaded => 503,
            GatewayError::CrmDown => 503,
            GatewayError::RateLimited | GatewayError::TooManyUnknownTokens { .. } => 429,
            GatewayError::CrmError { .. } => 502,
            GatewayError::CrmInvalidResponse(_) => 502,
            GatewayError::CrmRejected { status, .. } => *status,
            GatewayError::ClientNotFound => 404,
            GatewayError::SessionUnknown => 401,
            GatewayError::StepUnknown => 400,
            GatewayError::CrmMisconfigured => 503,
            GatewayError::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            GatewayError::BadRequest(_) => "BAD_REQUEST",
            GatewayError::TokenTooLong { .. } => "TOKEN_TOO_LONG",
            GatewayError::NotFound => "NOT_FOUND",
            GatewayError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            GatewayError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            GatewayError::UriTooLong => "URI_TOO_LONG",
            GatewayError::HeadersTooLarge => "HEADERS_TOO_LARGE",
            GatewayError::RequestTimeout => "REQUEST_TIMEOUT",
            GatewayError::PlainHttpOnTlsPort => "PLAIN_HTTP_ON_TLS_PORT",
            GatewayError::SearchNotSupported => "SEARCH_NOT_SUPPORTED",
            GatewayError::SecretWordInvalid => "SECRET_WORD_INVALID",
            GatewayError::TooManyAttempts => "TOO_MANY_ATTEMPTS",
            GatewayError::TooManySearches => "TOO_MANY_SEARCHES",
            GatewayError::CrmUnavailable(_) => "CRM_UNAVAILABLE",
            GatewayError::CrmTimeout => "CRM_TIMEOUT",
            GatewayError::CrmOverloaded => "CRM_OVERLOADED",
            GatewayError::CrmDown => "CRM_UNAVAILABLE",
            GatewayError::RateLimited => "RATE_LIMITED",
            GatewayError::TooManyUnknownTokens { .. } => "TOO_MANY_UNKNOWN_TOKENS",
            GatewayError::CrmError { .. } => "CRM_ERROR",
            GatewayError::CrmInvalidResponse(_) => "CRM_INVALID_RESPONSE",
            GatewayError::CrmRejected { code, .. } => code,
            GatewayError::ClientNotFound => "CLIENT_NOT_FOUND",
            GatewayError::SessionUnknown => "SESSION_UNKNOWN",
            GatewayError::StepUnknown => "STEP_UNKNOWN",
            GatewayError::CrmMisconfigured => "CRM_CONFIG_ERROR",
            GatewayError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    pub fn text(&self) -> String {
        match self {
            GatewayError::BadRequest(why) => (*why).to_string(),
            GatewayError::TokenTooLong { .. } => "token is longer than the configured limit".into(),
            GatewayError::NotFound => "no such route".into(),
            GatewayError::MethodNotAllowed { allow } => format!("method not allowed; allowed: {allow}"),
            GatewayError::PayloadTooLarge => "request body is larger than the configured limit".into(),
            GatewayError::UriTooLong => "request line is longer than the configured limit".into(),
            GatewayError::HeadersTooLarge => {
                "request head is larger than the configured limit or has too many fields".into()
            }
            GatewayError::RequestTimeout => "the request did not arrive in time".into(),
            GatewayError::PlainHttpOnTlsPort => {
                "a plain HTTP request was sent to the TLS port; use https".into()
            }
            GatewayError::SearchNotSupported => {
                "client search is not supported by the configured internal system".into()
            }
            GatewayError::SecretWordInvalid => {
                "secretWord does not have the form the previous step asked for".into()
            }
            GatewayError::TooManyAttempts => {
                "too many failed attempts for this step; start a new search".into()
            }
            GatewayError::TooManySearches => "too many searches for this client; try again later".into(),
            GatewayError::CrmUnavailable(why) => format!("CRM unavailable: {why}"),
            GatewayError::CrmTimeout => "CRM did not answer in time".into(),
            GatewayError::CrmDown => "no CRM node is available; try again shortly".into(),
            GatewayError::CrmOverloaded => {
                "too many calls to the CRM are under way; try again shortly".into()
            }
            GatewayError::CrmError { status } => format!("CRM failed with status {status}"),
            GatewayError::CrmInvalidResponse(why) => format!("CRM sent an invalid answer: {why}"),
            GatewayError::CrmRejected { text, .. } => text.clone(),
            GatewayError::ClientNotFound => "no client is behind this token".into(),
            GatewayError::SessionUnknown => {
                "no session for this token; identify the client through search first".into()
            }
            GatewayError::StepUnknown => "unknown or expired stepId; start the search again".into(),
            GatewayError::CrmMisconfigured => {
                "the CRM refused the gateway's credentials (configuration error)".into()
            }
            GatewayError::Internal(why) => format!("internal error: {why}"),
            GatewayError::RateLimited => "too many requests from this address; slow down".into(),
            GatewayError::TooManyUnknownTokens { .. } => {
                "too many unknown tokens from this address; try again later".into()
            }
        }
    }

    /// The code as the access log may show it: the CRM's own code only when it is short
    /// and plain (a CRM may echo a token in it, or send half a megabyte), else `CRM_<status>`.
    pub fn log_code(&self) -> String {
        loggable_code(self.code(), self.status())
    }

    /// A "this client does not exist / this token is not valid" answer: it is the CRM's
    /// considered reply about the token, so it may be cached for `cache.negative_ttl`.
    pub fn is_negative(&self) -> bool {
        matches!(
            self,
            GatewayError::CrmRejected {
                status: 401 | 404 | 410,
                ..
            } | GatewayError::ClientNotFound
                | GatewayError::SessionUnknown
        )
    }

    /// A failure of the internal system (not of the request): stale cards may cover it.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            GatewayError::CrmUnavailable(_)
                | GatewayError::CrmTimeout
                | GatewayError::CrmOverloaded
                | GatewayError::CrmDown
                | GatewayError::CrmError { .. }
                | GatewayError::CrmInvalidResponse(_)
                | GatewayError::CrmMisconfigured
        )
    }

    /// The JSON body `{errorCode, errorText}`.
    pub fn body(&self) -> Bytes {
        self.render(false, None)
    }

    /// The Search client API's error body: `errorCode`, `errorText`, the same text as
    /// `errorMessage` (the v1.1 table and example disagree on the name) and the request's
    /// `stepId` when it had one.
    pub fn search_body(&self, step_id: Option<&str>) -> Bytes {
        self.render(true, step_id)
    }

    fn render(&self, with_message: bool, step_id: Option<&str>) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "errorCode")]
            code: &'a str,
            #[serde(rename = "errorText")]
            text: &'a str,
            #[serde(rename = "errorMessage", skip_serializing_if = "Option::is_none")]
            message: Option<&'a str>,
            #[serde(rename = "stepId", skip_serializing_if = "Option::is_none")]
            step_id: Option<&'a str>,
        }
        let text = self.text();
        let body = Body {
            code: self.code(),
            text: &text,
            message: with_message.then_some(text.as_str()),
            step_id,
        };
        // Strings only: serialising cannot fail; an empty body would still be no panic.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// Extra response header this error needs (`Allow` for 405, `Retry-After` for 503).
    pub fn header(&self) -> Option<(&'static str, Cow<'static, str>)> {
        match self {
            GatewayError::MethodNotAllowed { allow } => Some(("Allow", Cow::Borrowed(allow))),
            GatewayError::CrmOverloaded | GatewayError::CrmDown | GatewayError::RateLimited => {
                Some(("Retry-After", "1".into()))
            }
            GatewayError::TooManyUnknownTokens { retry_after } => {
                Some(("Retry-After", retry_after.to_string().into()))
            }
            _ => None,
        }
    }
}

/// `code` if it is 1 to 64 characters of `A-Z a-z 0-9 _ . -`, else `CRM_<status>`.
pub fn loggable_code(code: &str, status: u16) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    if !code.is_empty() && code.len() <= 64 && code.chars().all(plain) {
        code.to_string()
    } else {
        format!("CRM_{status}")
    }
}

/// A request the chat server sent that cannot be read: the wire-level refusal of
/// [`crate::h1`] as the chat server's answer (the connection is closed after it).
impl From<FramingError> for GatewayError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::LineTooLong => GatewayError::UriTooLong,
            FramingError::HeadTooLarge | FramingError::TooManyFields => GatewayError::HeadersTooLarge,
            FramingError::BodyTooLarge => GatewayError::PayloadTooLarge,
            FramingError::Malformed(_) => GatewayError::BadRequest("malformed HTTP request"),
            FramingError::NonAsciiTarget
            | FramingError::BadTarget(_)
            | FramingError::BadHost(_)
            | FramingError::Unframeable(_)
            | FramingError::BadChunk(_)
            | FramingError::UnexpectedSwitch => GatewayError::BadRequest(e.reason()),
        }
    }
}

#[cfg(test)]
mod tests;
