//! Every variant's status, code and body, the README's table of codes, and how the wire's
//! refusals map to statuses.

use super::*;

/// The gateway's own error codes as the README's table lists them; the test below keeps
/// the two in step with the enum.
const CODES: &[(&str, u16, &str)] = &[
    (
        "BAD_REQUEST",
        400,
        "empty or missing token, control characters, malformed parameters",
    ),
    (
        "TOKEN_TOO_LONG",
        414,
        "token over limits.max_token_bytes (431 when it came in a header)",
    ),
    ("NOT_FOUND", 404, "no such route"),
    (
        "METHOD_NOT_ALLOWED",
        405,
        "route exists, method does not; `Allow` lists the methods",
    ),
    (
        "PAYLOAD_TOO_LARGE",
        413,
        "request body over limits.max_body_bytes",
    ),
    ("URI_TOO_LONG", 414, "request line over limits.max_head_bytes"),
    (
        "HEADERS_TOO_LARGE",
        431,
        "request head over limits.max_head_bytes, or over 64 header fields",
    ),
    (
        "REQUEST_TIMEOUT",
        408,
        "the request did not arrive whole within server.client_timeout",
    ),
    (
        "PLAIN_HTTP_ON_TLS_PORT",
        400,
        "plain HTTP sent to the TLS port (server.tls.listen); the connection is closed after it",
    ),
    (
        "SEARCH_NOT_SUPPORTED",
        501,
        "the configured dialect has no Search client API",
    ),
    (
        "SECRET_WORD_INVALID",
        400,
        "secretWord does not match the secretWordValidator of the previous step (no CRM call)",
    ),
    (
        "TOO_MANY_ATTEMPTS",
        429,
        "search.max_attempts failed answers for this stepId (no CRM call)",
    ),
    (
        "TOO_MANY_SEARCHES",
        429,
        "search.max_starts_per_hour first steps for this client identifier (no CRM call)",
    ),
    (
        "CRM_UNAVAILABLE",
        502,
        "connection to the CRM refused, reset or closed, or TLS to it failed",
    ),
    (
        "CRM_UNAVAILABLE",
        503,
        "no CRM node is healthy: answered at once, without a call (`Retry-After: 1`)",
    ),
    (
        "CRM_TIMEOUT",
        504,
        "the CRM did not answer within upstream.timeout",
    ),
    (
        "CRM_OVERLOADED",
        503,
        "upstream.max_inflight CRM calls under way, none ended within upstream.queue_timeout (`Retry-After: 1`)",
    ),
    ("CRM_ERROR", 502, "the CRM answered with a 5xx status"),
    (
        "CRM_INVALID_RESPONSE",
        502,
        "the CRM's answer is not JSON, too large, or a 200 without client.id",
    ),
    (
        "CLIENT_NOT_FOUND",
        404,
        "bearer: the token belongs to an anonymous user",
    ),
    (
        "SESSION_UNKNOWN",
        401,
        "gigma: no logged-in session for this token (sessions start with a search)",
    ),
    (
        "STEP_UNKNOWN",
        400,
        "gigma: the stepId is unknown, expired, or was issued for another phone",
    ),
    (
        "CRM_CONFIG_ERROR",
        503,
        "the internal system refused the gateway's own credentials (e.g. a bad gigma app token)",
    ),
    ("INTERNAL_ERROR", 500, "a gateway-side failure"),
];

#[test]
fn every_variant_renders_string_fields() {
    let all = [
        GatewayError::BadRequest("empty token"),
        GatewayError::TokenTooLong { in_header: true },
        GatewayError::NotFound,
        GatewayError::MethodNotAllowed { allow: "GET" },
        GatewayError::PayloadTooLarge,
        GatewayError::UriTooLong,
        GatewayError::HeadersTooLarge,
        GatewayError::RequestTimeout,
        GatewayError::PlainHttpOnTlsPort,
        GatewayError::SearchNotSupported,
        GatewayError::SecretWordInvalid,
        GatewayError::TooManyAttempts,
        GatewayError::TooManySearches,
        GatewayError::CrmUnavailable("connection refused"),
        GatewayError::CrmTimeout,
        GatewayError::CrmOverloaded,
        GatewayError::CrmDown,
        GatewayError::CrmError { status: 500 },
        GatewayError::CrmInvalidResponse("not JSON"),
        GatewayError::CrmRejected {
            status: 404,
            code: "1001".into(),
            text: "Client \"x\" not found".into(),
        },
        GatewayError::ClientNotFound,
        GatewayError::SessionUnknown,
        GatewayError::StepUnknown,
        GatewayError::CrmMisconfigured,
        GatewayError::Internal("x"),
    ];
    for e in all {
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["errorCode"].is_string() && v["errorText"].is_string(), "{e:?}");
        let v: serde_json::Value = serde_json::from_slice(&e.search_body(Some("s1"))).unwrap();
        assert_eq!(v["errorText"], v["errorMessage"]);
        assert_eq!(v["stepId"], "s1");
        let v: serde_json::Value = serde_json::from_slice(&e.search_body(None)).unwrap();
        assert!(v.get("stepId").is_none());
        assert_ne!(e.status(), 200);
        if !matches!(e, GatewayError::CrmRejected { .. }) {
            let listed = CODES
                .iter()
                .any(|(c, s, _)| *c == e.code() && (*s == e.status() || e.code() == "TOKEN_TOO_LONG"));
            assert!(listed, "{e:?} is in the table with its status");
        }
    }
}

#[test]
fn wire_refusals_map_to_the_chat_servers_statuses() {
    let cases = [
        (FramingError::LineTooLong, 414),
        (FramingError::HeadTooLarge, 431),
        (FramingError::TooManyFields, 431),
        (FramingError::BodyTooLarge, 413),
        (FramingError::Malformed(httparse::Error::Token), 400),
        (FramingError::Unframeable("x"), 400),
        (FramingError::BadChunk("x"), 400),
    ];
    for (wire, status) in cases {
        assert_eq!(GatewayError::from(wire).status(), status, "{wire:?}");
    }
}

#[test]
fn only_plain_crm_codes_reach_the_log() {
    let rejected = |code: &str| GatewayError::CrmRejected {
        status: 404,
        code: code.into(),
        text: String::new(),
    };
    assert_eq!(rejected("1001").log_code(), "1001");
    assert_eq!(rejected("CLIENT_NOT_FOUND").log_code(), "CLIENT_NOT_FOUND");
    assert_eq!(rejected("token abc-secret").log_code(), "CRM_404");
    assert_eq!(rejected(&"x".repeat(500_000)).log_code(), "CRM_404");
    assert_eq!(rejected("").log_code(), "CRM_404");
    assert_eq!(GatewayError::CrmTimeout.log_code(), "CRM_TIMEOUT");
}
