//! How durations, sizes, rates and address ranges are written in the config file:
//! `"300ms"`, `"2s"`, `"10m"`; `"16KiB"`, `"256MiB"` or a plain integer of bytes;
//! `"500/s"`, `"100/m"`; `"10.0.0.0/8"`, `"2001:db8::/32"` or a single address.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Whole milliseconds of `d` (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write e.g. \"300ms\", \"2s\", \"10m\""
        ))
    })
}

/// An optional duration: absent means off.
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                de::Error::custom(format!(
                    "invalid size {s:?} ({e}); write e.g. \"16KiB\", \"256MiB\""
                ))
            }),
    }
}

/// A rate: so many events per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

pub fn de_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let bad = || {
        de::Error::custom(format!(
            "invalid rate {s:?}; write e.g. \"500/s\", \"100/m\", \"1000/h\""
        ))
    };
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(bad());
    }
    Ok(Some(Rate {
        per_second: n / seconds,
    }))
}

/// A list of address ranges; a bare address is a range of one. A range written with host
/// bits (`10.20.0.1/16`) is refused rather than widened or narrowed by a guess, as is one
/// with spaces around it.
pub fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |why: String| de::Error::custom(format!("item {i}: {item:?} {why}"));
            if item.trim() != item {
                return Err(bad("has spaces around it".into()));
            }
            let net = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    bad("is not an address range; write e.g. \"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"".into())
                })?;
            if net.trunc() != net {
                return Err(bad(format!(
                    "has host bits set: write {:?} for the range, or {:?} for the one address",
                    net.trunc().to_string(),
                    net.addr().to_string()
                )));
            }
            Ok(net)
        })
        .collect()
}
