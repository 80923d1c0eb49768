//! How durations and sizes are written in the config file: `"300ms"`, `"2s"`, `"10m"`;
//! `"16KiB"`, `"256MiB"` or a plain integer of bytes.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write e.g. \"300ms\", \"2s\", \"10m\""
        ))
    })
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
