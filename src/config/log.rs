//! `[log]` (where the JSON lines go, and how much of them) and `[correlation]` (the
//! request id and trace context carried from the chat server to the CRM).

use serde::Deserialize;

use super::{err, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// One JSON line per request.
    pub access: bool,
    /// Where every line goes: a file path, appended to and reopened on SIGUSR1 (for
    /// logrotate); empty: standard output.
    pub file: String,
    /// The least severe event line written (request lines are governed by `access`).
    pub level: LogLevel,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            access: true,
            file: String::new(),
            level: LogLevel::Info,
        }
    }
}

impl LogSection {
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        if self.file.contains('\0') {
            problems.push(err("log.file", "is not a path"));
        }
    }
}

/// Severity of an event line, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationSection {
    /// The header that carries a request id from the chat server; it is logged, sent to
    /// the CRM and echoed in the answer. Empty: no request ids at all.
    pub request_id_header: String,
    /// Make a request id when the chat server sent none (or one that is not valid).
    pub generate: bool,
    /// Pass a W3C `traceparent` on to the CRM, as a child span of the chat server's.
    pub traceparent: bool,
}

impl Default for CorrelationSection {
    fn default() -> Self {
        CorrelationSection {
            request_id_header: "X-Request-Id".into(),
            generate: true,
            traceparent: true,
        }
    }
}

/// Headers the gateway writes itself: a request id may not take their place.
const OWN_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "date",
    "cache-control",
    "x-cache",
    "traceparent",
    "token",
    "authorization",
];

impl CorrelationSection {
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        let name = &self.request_id_header;
        if name.is_empty() {
            return;
        }
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(err(
                "correlation.request_id_header",
                format!("{name:?} is not a header name"),
            ));
        } else if OWN_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            problems.push(err(
                "correlation.request_id_header",
                format!("{name:?} is a header the gateway sets itself"),
            ));
        }
    }
}
