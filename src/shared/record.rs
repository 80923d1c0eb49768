//! A card as the replicas exchange it in Redis (before sealing): what a replica's cache
//! keeps of an answer, with its times on the wall clock, which the replicas agree on (their
//! process clocks they do not).
//!
//! The bytes: a version (1), the status (u16), negative (u8), the end of freshness in Unix
//! milliseconds (u64), the stale window and the refresh-ahead lead in milliseconds (u32
//! each), all little-endian; then the body.

use std::time::Duration;

const VERSION: u8 = 1;
const HEAD: usize = 20;

/// An answer as replicas exchange it; `B`: its body, borrowed to write, owned once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<B> {
    pub status: u16,
    pub negative: bool,
    /// How long it is fresh from now, and then stale.
    pub fresh: Duration,
    pub stale: Duration,
    /// Refresh-ahead: how long before the end of freshness a hit refreshes it.
    pub lead: Duration,
    pub body: B,
}

/// Wall-clock milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl<B: AsRef<[u8]>> Record<B> {
    /// How long Redis keeps it: its freshness and then its stale window.
    pub fn keep(&self) -> Duration {
        self.fresh.saturating_add(self.stale)
    }

    /// How many bytes [`Self::encode_into`] writes.
    pub(super) fn len(&self) -> usize {
        HEAD.saturating_add(self.body.as_ref().len())
    }

    /// Append its bytes to `out`.
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let body = self.body.as_ref();
        out.push(VERSION);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.push(u8::from(self.negative));
        out.extend_from_slice(&unix_ms().saturating_add(ms_u64(self.fresh)).to_le_bytes());
        out.extend_from_slice(&ms_u32(self.stale).to_le_bytes());
        out.extend_from_slice(&ms_u32(self.lead).to_le_bytes());
        out.extend_from_slice(body);
    }
}

impl Record<Vec<u8>> {
    /// The record in `bytes` (its body moved out of them); None if it is malformed or
    /// entirely past its stale window.
    pub(super) fn decode(mut bytes: Vec<u8>) -> Option<Self> {
        let head = bytes.get(..HEAD)?;
        if head.first() != Some(&VERSION) {
            return None;
        }
        let field = |i: usize, n: usize| head.get(i..i.checked_add(n)?);
        let status = u16::from_le_bytes(field(1, 2)?.try_into().ok()?);
        let negative = *head.get(3)? != 0;
        let fresh_until = u64::from_le_bytes(field(4, 8)?.try_into().ok()?);
        let stale_for = u32::from_le_bytes(field(12, 4)?.try_into().ok()?);
        let lead = u32::from_le_bytes(field(16, 4)?.try_into().ok()?);
        let now = unix_ms();
        let fresh = Duration::from_millis(fresh_until.saturating_sub(now));
        // Part of the stale window may be gone already.
        let past = now.saturating_sub(fresh_until);
        let stale = Duration::from_millis(u64::from(stale_for).checked_sub(past)?);
        if fresh.is_zero() && stale.is_zero() {
            return None;
        }
        bytes.drain(..HEAD);
        Some(Record {
            status,
            negative,
            fresh,
            stale,
            lead: Duration::from_millis(u64::from(lead)),
            body: bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<B: AsRef<[u8]>> Record<B> {
        fn encode(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.encode_into(&mut out);
            assert_eq!(out.len(), self.len());
            out
        }
    }

    #[test]
    fn a_record_reads_back_with_its_times_and_not_once_past_its_stale_window() {
        let r = Record {
            status: 200,
            negative: false,
            fresh: Duration::from_secs(60),
            stale: Duration::from_secs(30),
            lead: Duration::from_secs(6),
            body: &b"{\"name\":\"x\"}"[..],
        };
        let back = Record::decode(r.encode()).unwrap();
        assert_eq!(
            (back.status, back.negative, back.body.as_slice()),
            (200, false, r.body)
        );
        assert!(back.fresh <= r.fresh && back.fresh > Duration::from_secs(59));
        assert_eq!((back.stale, back.lead), (r.stale, r.lead));
        assert_eq!(r.keep(), Duration::from_secs(90));

        let gone = Record {
            fresh: Duration::ZERO,
            stale: Duration::ZERO,
            ..r.clone()
        };
        assert!(Record::decode(gone.encode()).is_none());
        let mut bent = r.encode();
        bent[0] = 9;
        assert!(Record::decode(bent).is_none(), "another version");
        assert!(Record::decode(vec![1, 2, 3]).is_none(), "too short");
    }
}
