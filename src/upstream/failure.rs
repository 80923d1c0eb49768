//! What went wrong with one call to one node, and what that means for the next step.
//!
//! A [`Failure`] carries the chat server's error, the `outcome` label of
//! `cardgate_upstream_requests_total`, whether another node may be tried (the request never
//! reached the internal system, or was refused before any answer byte), and whether the
//! node itself is to blame (a transport failure or a timeout: what passive ejection
//! counts), and whether it failed after taking the connection (then a passing TCP check
//! says nothing of its health). TLS failures name their cause — unknown CA, name mismatch, expired, refused,
//! plain HTTP where TLS was expected — for the log line; the chat server sees only
//! `CRM_UNAVAILABLE`.

use pingora::{Error as PError, ErrorType};

use crate::error::GatewayError;
use crate::h1::client::ReadError;
use crate::h1::FramingError;

/// One failed attempt.
#[derive(Debug)]
pub struct Failure {
    pub error: GatewayError,
    /// The `outcome` label value (one of [`crate::metrics::UPSTREAM_OUTCOMES`]).
    pub outcome: &'static str,
    /// Nothing reached the internal system's application: another node may be asked.
    pub retry: bool,
    /// A transport failure or timeout: counts towards ejecting the node.
    pub transport: bool,
    /// The node took the connection (and the TLS handshake), then timed out, closed it or
    /// refused in the session: a node that passes a TCP check can still fail this way.
    pub after_connect: bool,
    /// For the log: what failed, in the operator's words (never request data).
    pub cause: String,
}

/// Why a TCP connection could not be made.
enum Unconnected {
    TimedOut,
    Refused,
    NoRoute,
    Closed,
    Other,
}

impl Unconnected {
    fn of(etype: &ErrorType) -> Self {
        match etype {
            ErrorType::ConnectTimedout => Unconnected::TimedOut,
            ErrorType::ConnectRefused => Unconnected::Refused,
            ErrorType::ConnectNoRoute => Unconnected::NoRoute,
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => Unconnected::Closed,
            _ => Unconnected::Other,
        }
    }
}

/// The type Pingora gives a connect that failed with `e`: one classification for the
/// connections [`super::plain`] makes, whether Pingora then adds TLS or not.
pub fn connect_error_type(e: &std::io::Error) -> ErrorType {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::TimedOut => ErrorType::ConnectTimedout,
        ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => ErrorType::ConnectNoRoute,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => ErrorType::ConnectionClosed,
        _ => ErrorType::ConnectError,
    }
}

impl Failure {
    /// The call's time budget (`upstream.timeout`) ran out.
    pub fn timeout() -> Self {
        Failure {
            error: GatewayError::CrmTimeout,
            outcome: "timeout",
            retry: false,
            transport: true,
            after_connect: true,
            cause: "no answer within upstream.timeout".into(),
        }
    }

    /// Count (or not) towards the node's ejection.
    pub fn counted(mut self, counted: bool) -> Self {
        self.transport &= counted;
        self
    }

    /// No node is healthy, and none is due for a probe.
    pub fn circuit_open() -> Self {
        Failure {
            error: GatewayError::CrmDown,
            outcome: "circuit_open",
            retry: false,
            transport: false,
            after_connect: false,
            cause: "no CRM node is healthy".into(),
        }
    }

    /// A TLS connection to the node could not be made ([`super::tls`], Pingora's errors).
    pub fn connect(e: &PError) -> Self {
        let detail = e.to_string();
        let why = match &e.etype {
            ErrorType::TLSHandshakeTimedout => return Failure::tls("handshake timed out", &detail),
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
                return Failure::tls(tls_cause(&detail), &detail)
            }
            other => Unconnected::of(other),
        };
        Failure::unconnected(why, &detail)
    }

    /// A plain-TCP connection to the node could not be made ([`super::plain`]).
    pub fn connect_io(e: &std::io::Error) -> Self {
        Failure::unconnected(Unconnected::of(&connect_error_type(e)), &e)
    }

    /// No TLS connection (TCP and handshake) within twice `upstream.connect_timeout`; the
    /// TCP part alone has its own bound, so this is mostly a handshake that stalled.
    pub fn tls_connect_timed_out() -> Self {
        Failure::unconnected(
            Unconnected::TimedOut,
            &"no TLS connection within twice upstream.connect_timeout",
        )
    }

    /// A connection not made, whoever tried to make it: nothing was sent, so another node
    /// may be asked, and the node is to blame.
    fn unconnected(why: Unconnected, detail: &dyn std::fmt::Display) -> Self {
        let (error, outcome) = match why {
            Unconnected::TimedOut => (GatewayError::CrmTimeout, "timeout"),
            Unconnected::Refused => (GatewayError::CrmUnavailable("connection refused"), "unavailable"),
            Unconnected::NoRoute => (GatewayError::CrmUnavailable("no route to the CRM"), "unavailable"),
            Unconnected::Closed => (
                GatewayError::CrmUnavailable("connection closed or reset"),
                "unavailable",
            ),
            Unconnected::Other => (GatewayError::CrmUnavailable("connection failed"), "unavailable"),
        };
        Failure {
            error,
            outcome,
            retry: true,
            transport: true,
            after_connect: false,
            cause: format!("cannot connect: {detail}"),
        }
    }

    /// An exchange on an open connection failed; `tls` when the connection is TLS.
    pub fn read(e: &ReadError, tls: bool) -> Self {
        match e {
            ReadError::Io { cause, answered } => {
                let detail = cause.to_string();
                // TLS 1.3 finishes the client's handshake before the server has judged
                // the client certificate: a refusal arrives as an alert on the first read.
                if tls && detail.contains("alert") {
                    let mut f = Failure::tls(tls_cause(&detail), &detail);
                    f.retry = !answered;
                    f.after_connect = true;
                    return f;
                }
                let why = match cause.kind() {
                    std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe => "connection closed or reset",
                    _ => "connection failed",
                };
                Failure {
                    error: GatewayError::CrmUnavailable(why),
                    outcome: "unavailable",
                    retry: !answered,
                    transport: true,
                    after_connect: true,
                    cause: format!("{why}: {detail}"),
                }
            }
            ReadError::Framing(f) => {
                let why = match f {
                    FramingError::BodyTooLarge => "body too large",
                    f => f.reason(),
                };
                Failure {
                    error: GatewayError::CrmInvalidResponse(why),
                    outcome: "invalid",
                    retry: false,
                    transport: false,
                    after_connect: true,
                    cause: format!("invalid answer: {why}"),
                }
            }
        }
    }

    fn tls(cause: &'static str, detail: &str) -> Self {
        Failure {
            error: GatewayError::CrmUnavailable("TLS handshake failed"),
            outcome: "tls",
            retry: true,
            transport: true,
            after_connect: false,
            cause: format!("TLS to the CRM failed: {cause} ({detail})"),
        }
    }
}

/// The cause of a TLS failure, from the text of the error rustls gave.
pub fn tls_cause(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| d.contains(w));
    if has(&["unknownissuer", "unknown issuer", "unknownca", "unknown ca"]) {
        "unknown CA"
    } else if has(&["notvalidforname", "not valid for name"]) {
        "name mismatch"
    } else if has(&["expired"]) {
        "certificate expired"
    } else if has(&["corrupt message", "invalidcontenttype", "invalid content type"]) {
        "not TLS (plain HTTP where TLS was expected?)"
    } else if has(&["alert"]) {
        "handshake refused"
    } else if has(&["eof", "reset", "closed"]) {
        "closed during the handshake (not a TLS port, or refused)"
    } else {
        "handshake failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named() {
        for (text, cause) in [
            ("invalid peer certificate: UnknownIssuer", "unknown CA"),
            (
                "invalid peer certificate: certificate not valid for name \"x\"",
                "name mismatch",
            ),
            (
                "invalid peer certificate: certificate expired: verification time",
                "certificate expired",
            ),
            (
                "received corrupt message of type InvalidContentType",
                "not TLS (plain HTTP where TLS was expected?)",
            ),
            ("received fatal alert: CertificateRequired", "handshake refused"),
            (
                "tls handshake eof",
                "closed during the handshake (not a TLS port, or refused)",
            ),
        ] {
            assert_eq!(tls_cause(text), cause, "{text}");
        }
    }

    #[test]
    fn only_unanswered_reads_may_go_to_another_node() {
        let io = |answered| ReadError::Io {
            cause: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            answered,
        };
        assert!(Failure::read(&io(false), false).retry);
        assert!(!Failure::read(&io(true), false).retry);
        let framing = Failure::read(&ReadError::Framing(FramingError::BodyTooLarge), false);
        assert!(!framing.retry && !framing.transport && framing.outcome == "invalid");
    }
}
