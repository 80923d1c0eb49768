//! The request target and `Host` of a request head (RFC 9112 §3.2): which forms of target
//! are served, and which host the request is for.
//!
//! Origin form (`/path`) and `*` are served, and absolute form (`http://host/path`): it is
//! routed by its path, and its authority is the request's host — the received `Host` is
//! then ignored, as §3.2.2 requires of a server, though it must still be there in HTTP/1.1,
//! once, and valid (§3.2: a server answers 400 to a missing, repeated or invalid `Host`).
//! CONNECT and authority form are refused: a tunnel's bytes must never be read as
//! requests. A host is RFC 3986's `host [ ":" port ]`: an IPv6 literal in brackets or a
//! reg-name (an IPv4 address is one), and a port of one or more digits up to 65535. A
//! space, a control byte, user info, an empty host or an empty port is refused, as nginx
//! does.

use std::net::Ipv6Addr;

use super::common::{trim, FramingError};

/// Refuse a target or `Host` that this server does not take (see the module doc).
pub fn check(
    method: &str,
    target: &str,
    fields: &[httparse::Header<'_>],
    minor: u8,
) -> Result<(), FramingError> {
    let authority = check_target(method, target)?;
    check_host(fields, minor)?;
    match authority {
        Some(a) if !valid_authority(a.as_bytes()) => Err(FramingError::BadTarget(
            "the request target's authority is not a valid host[:port]",
        )),
        _ => Ok(()),
    }
}

/// The authority of an absolute-form target (`http://host:port/path`).
pub fn absolute_authority(target: &str) -> Option<&str> {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| target.get(scheme.len()..))
            .flatten()
    })?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest.get(..end)
}

/// A tunnel's bytes must never be read as requests: CONNECT and authority-form targets
/// are refused. The authority of an absolute-form target, if it is one.
fn check_target<'t>(method: &str, target: &'t str) -> Result<Option<&'t str>, FramingError> {
    if method == "CONNECT" {
        return Err(FramingError::BadTarget("CONNECT is not served"));
    }
    match absolute_authority(target) {
        Some(a) => Ok(Some(a)),
        None if target.starts_with('/') || target == "*" => Ok(None),
        None => Err(FramingError::BadTarget(
            "request target is not in origin or absolute form",
        )),
    }
}

/// One valid `Host` field in HTTP/1.1, at most one (and valid) in HTTP/1.0.
fn check_host(fields: &[httparse::Header<'_>], minor: u8) -> Result<(), FramingError> {
    let mut hosts = fields.iter().filter(|f| f.name.eq_ignore_ascii_case("host"));
    let host = hosts.next().map(|f| trim(f.value));
    if hosts.next().is_some() {
        return Err(FramingError::BadHost("more than one Host header"));
    }
    match host {
        None if minor >= 1 => Err(FramingError::BadHost("Host header is missing")),
        Some(h) if !valid_authority(h) => {
            Err(FramingError::BadHost("Host header is not a valid host[:port]"))
        }
        _ => Ok(()),
    }
}

/// RFC 3986 `host [ ":" port ]`, without user info; the port, if there is a colon, has
/// one to five digits and is at most 65535.
fn valid_authority(a: &[u8]) -> bool {
    let (host_ok, port) = match a.strip_prefix(b"[") {
        Some(rest) => {
            let close = rest.iter().position(|&b| b == b']');
            let (literal, after) = close.map_or((rest, &b""[..]), |i| rest.split_at(i));
            let ipv6 = std::str::from_utf8(literal).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok());
            match after.strip_prefix(b"]") {
                Some(b"") => (ipv6, None),
                Some(after) => (ipv6, Some(after.strip_prefix(b":").unwrap_or(b"x"))),
                None => (false, None),
            }
        }
        None => {
            let (host, port) = match a.iter().rposition(|&b| b == b':') {
                Some(i) => {
                    let (host, port) = a.split_at(i);
                    (host, Some(port.get(1..).unwrap_or_default()))
                }
                None => (a, None),
            };
            (!host.is_empty() && reg_name(host), port)
        }
    };
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
    });
    host_ok && port_ok
}

/// RFC 3986 `reg-name`: unreserved characters, sub-delims and `%` escapes.
fn reg_name(host: &[u8]) -> bool {
    let mut bytes = host.iter();
    while let Some(&b) = bytes.next() {
        let ok = match b {
            b'%' => {
                bytes.next().is_some_and(u8::is_ascii_hexdigit)
                    && bytes.next().is_some_and(u8::is_ascii_hexdigit)
            }
            b if b.is_ascii_alphanumeric() => true,
            b'-' | b'.' | b'_' | b'~' => true,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::server::tests::head;

    /// The verdict on a whole head: the head is read whole (its refusal keeps its method
    /// and route), and the body's framing carries it.
    fn verdict(raw: &str) -> Result<(), FramingError> {
        head(raw.as_bytes()).unwrap().framing.map(|_| ())
    }

    #[test]
    fn host_is_required_once_and_valid() {
        for good in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw.example.com:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw%2Da\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:  gw  \r\n\r\n",
        ] {
            assert_eq!(verdict(good), Ok(()), "{good:?}");
        }
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: g w\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: g\tw\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw:\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw:80:80\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw:http\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw:65536\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@gw\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw/x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw%zz\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [gw]:80\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: caf\u{e9}\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: g w\r\n\r\n",
        ] {
            assert!(matches!(verdict(bad), Err(FramingError::BadHost(_))), "{bad:?}");
        }
    }

    #[test]
    fn an_absolute_target_names_the_host_and_the_host_field_is_ignored() {
        for good in [
            "GET http://gw:80/x HTTP/1.1\r\nHost: GW:80\r\n\r\n",
            "GET http://elsewhere/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            "GET https://[::1]:8443/x?y HTTP/1.1\r\nHost: gw\r\n\r\n",
        ] {
            assert_eq!(verdict(good), Ok(()), "{good:?}");
        }
        // The Host field must still be there, once, and valid.
        for bad in [
            "GET http://gw/x HTTP/1.1\r\n\r\n",
            "GET http://gw/x HTTP/1.1\r\nHost: g w\r\n\r\n",
        ] {
            assert!(matches!(verdict(bad), Err(FramingError::BadHost(_))), "{bad:?}");
        }
        for bad in [
            "GET http://user@gw/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            "GET http:///x HTTP/1.1\r\nHost: gw\r\n\r\n",
            "GET http://gw:/x HTTP/1.1\r\nHost: gw\r\n\r\n",
        ] {
            assert!(matches!(verdict(bad), Err(FramingError::BadTarget(_))), "{bad:?}");
        }
    }

    #[test]
    fn tunnels_and_authority_form_are_refused() {
        for bad in [
            "CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\nHost: gw\r\n\r\n",
            "GET gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
            "GET ftp://gw/x HTTP/1.1\r\nHost: gw\r\n\r\n",
        ] {
            assert!(matches!(verdict(bad), Err(FramingError::BadTarget(_))), "{bad:?}");
        }
    }
}
