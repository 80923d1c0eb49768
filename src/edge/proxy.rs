//! PROXY protocol v1 and v2 (`server.proxy_protocol`), parsed by the `ppp` crate: behind
//! a TCP load balancer, the address the header carries is the client for the allowlist,
//! the per-source limits and the logs. A connection without a valid header within
//! `server.client_timeout` is closed (`cardgate_connections_refused_total{reason="proxy_header"}`).
//!
//! The header is read before anything else ([`super::opening`]): before the TLS handshake
//! on the TLS listener, before the first request on the plain one. Bytes read past the
//! header are given back to what follows. A header may arrive in pieces, split anywhere.

use std::net::{IpAddr, SocketAddr};

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

/// Bytes read at most while looking for a header (a v2 header with TLVs fits).
const MAX_HEADER: usize = 4096;

/// The longest v1 header, its CRLF included (the protocol's own bound: TCP6 with the
/// longest addresses and ports).
const MAX_V1: usize = 107;

/// The source a PROXY header names (None: a LOCAL or UNKNOWN header, as a balancer's
/// own health check sends: the connection's own peer stands), and the bytes read past it;
/// the header must be whole by `deadline`.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: Instant,
) -> Result<(Option<SocketAddr>, Vec<u8>), &'static str> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 512];
            let room = MAX_HEADER.saturating_sub(buf.len()).min(chunk.len());
            let Some(chunk) = chunk.get_mut(..room) else {
                return Err("no PROXY header within the first bytes");
            };
            let n = io.read(chunk).await.map_err(|_| "the connection failed")?;
            if n == 0 {
                return Err("the connection closed before a PROXY header");
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            match parse(&buf) {
                Parsed::Incomplete if buf.len() < MAX_HEADER => continue,
                Parsed::Incomplete | Parsed::Invalid => return Err("no valid PROXY header"),
                Parsed::Header(addr, len) => {
                    let rest = buf.get(len..).unwrap_or_default().to_vec();
                    return Ok((addr, rest));
                }
            }
        }
    };
    timeout_at(deadline, read)
        .await
        .unwrap_or(Err("no PROXY header in time"))
}

enum Parsed {
    Incomplete,
    Invalid,
    /// The source, and the header's length.
    Header(Option<SocketAddr>, usize),
}

fn parse(buf: &[u8]) -> Parsed {
    // A v1 header is judged once its line is whole: before that, ppp takes some prefixes
    // of a valid header for invalid ones (an empty port after a space).
    if buf.starts_with(b"PROXY ") && buf.len() < MAX_V1 && !buf.contains(&b'\n') {
        return Parsed::Incomplete;
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header(addr, h.header.len())
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match (h.command, &h.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            };
            Parsed::Header(addr, h.len())
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Parsed::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_source_and_keep_what_follows() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 8080\r\nGET / HTTP/1.1\r\n".to_vec();
        let (addr, rest) = read_header(&mut &v1[..], soon()).await.unwrap();
        assert_eq!(addr, Some("192.0.2.7:5555".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0x00, 0x0c, 192, 0, 2, 9, 127, 0, 0, 1, 0x15, 0xb3, 0x1f, 0x90,
        ]);
        v2.extend_from_slice(b"\x16\x03\x01");
        let (addr, rest) = read_header(&mut &v2[..], soon()).await.unwrap();
        assert_eq!(addr, Some("192.0.2.9:5555".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");

        let local = b"PROXY UNKNOWN\r\nrest".to_vec();
        let (addr, rest) = read_header(&mut &local[..], soon()).await.unwrap();
        assert_eq!((addr, rest.as_slice()), (None, &b"rest"[..]));

        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 999.0.0.1 1.1.1.1 1 2\r\n",
            b"PROX",
        ] {
            assert!(read_header(&mut &bad[..], soon()).await.is_err(), "{bad:?}");
        }
    }

    /// Every header below, sent in two pieces split at every byte, names its source and
    /// keeps what follows it.
    #[tokio::test]
    async fn a_header_split_anywhere_is_read_whole() {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        v2.extend_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v2.extend_from_slice(&"::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v2.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        let headers: [(&[u8], Option<&str>); 4] = [
            (
                b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8080\r\n",
                Some("192.0.2.7:40000"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8443\r\n",
                Some("[2001:db8::7]:40000"),
            ),
            (b"PROXY UNKNOWN\r\n", None),
            (&v2, Some("[2001:db8::7]:40000")),
        ];
        let follows = b"\x16\x03\x01GET";
        for (header, source) in headers {
            let expect = source.map(|s| s.parse::<SocketAddr>().unwrap());
            for at in 1..header.len() {
                let (first, second) = header.split_at(at);
                let mut io = tokio_test::io::Builder::new()
                    .read(first)
                    .read(&[second, &follows[..]].concat())
                    .build();
                let got = read_header(&mut io, soon()).await;
                let shown = String::from_utf8_lossy(first);
                assert_eq!(got, Ok((expect, follows.to_vec())), "split after {shown:?}");
            }
        }
    }
}
