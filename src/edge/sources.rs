//! What one source address may ask: `limits.rate_per_source` (a token bucket of
//! `limits.rate_burst` requests, refilled at the rate) and
//! `limits.max_unknown_tokens_per_minute` ("client not found" answers per minute; beyond
//! it the source is refused card lookups for `limits.unknown_tokens_cooldown`). Refusals
//! never reach the CRM and touch no other source. Both are off by default; sources are
//! remembered in a bounded cache (the least recently seen are forgotten first).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use moka::sync::Cache;

use crate::config::LimitsSection;
use crate::edge::canonical;

/// Sources remembered at most, and how long an idle one is kept.
const MAX_SOURCES: u64 = 100_000;
const SOURCE_IDLE: Duration = Duration::from_secs(3600);

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `limits.rate_per_source`.
    Rate,
    /// In its cooldown after too many unknown tokens.
    UnknownTokens,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::UnknownTokens => "unknown_tokens",
        }
    }
}

/// The `reason` label values.
pub const REFUSALS: [&str; 2] = ["rate", "unknown_tokens"];

#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Tokens per second and the bucket's size.
    rate: Option<(f64, f64)>,
    /// Unknown tokens per minute, and the cooldown.
    unknown: Option<(u32, Duration)>,
}

impl Settings {
    fn of(cfg: &LimitsSection) -> Self {
        Settings {
            rate: cfg.rate_per_source.map(|r| {
                let burst = cfg.rate_burst.map_or(r.per_second.max(1.0), f64::from);
                (r.per_second, burst)
            }),
            unknown: cfg
                .max_unknown_tokens_per_minute
                .map(|n| (n, cfg.unknown_tokens_cooldown)),
        }
    }
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    refilled: Instant,
    window_start: Instant,
    unknown: u32,
    blocked_until: Option<Instant>,
}

pub struct Sources {
    settings: ArcSwap<Settings>,
    seen: Cache<IpAddr, Arc<Mutex<Source>>>,
}

impl Sources {
    pub fn new(cfg: &LimitsSection) -> Self {
        Sources {
            settings: ArcSwap::from_pointee(Settings::of(cfg)),
            seen: Cache::builder()
                .max_capacity(MAX_SOURCES)
                .time_to_idle(SOURCE_IDLE)
                .build(),
        }
    }

    /// New limits for the requests from now on (what each source used so far stays).
    pub fn apply(&self, cfg: &LimitsSection) {
        self.settings.store(Arc::new(Settings::of(cfg)));
    }

    fn source(&self, ip: IpAddr, burst: f64, now: Instant) -> Arc<Mutex<Source>> {
        self.seen.get_with(canonical(ip), || {
            Arc::new(Mutex::new(Source {
                tokens: burst,
                refilled: now,
                window_start: now,
                unknown: 0,
                blocked_until: None,
            }))
        })
    }

    /// Admit one request from `ip`; `card` says whether it asks for a card (the unknown
    /// token cooldown refuses only those).
    pub fn admit(&self, ip: Option<IpAddr>, card: bool) -> Result<(), Refusal> {
        let settings = **self.settings.load();
        let Some(ip) = ip else {
            return Ok(());
        };
        if settings.rate.is_none() && settings.unknown.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let burst = settings.rate.map_or(1.0, |(_, b)| b);
        let source = self.source(ip, burst, now);
        let mut s = source.lock().unwrap_or_else(|e| e.into_inner());
        if card && s.blocked_until.is_some_and(|until| now < until) {
            return Err(Refusal::UnknownTokens);
        }
        if let Some((per_second, burst)) = settings.rate {
            let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
            s.tokens = (s.tokens + elapsed * per_second).min(burst);
            s.refilled = now;
            if s.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            s.tokens -= 1.0;
        }
        Ok(())
    }

    /// A card lookup from `ip` was answered "client not found": count it, and start the
    /// cooldown when the source went over its minute's allowance.
    pub fn note_unknown(&self, ip: Option<IpAddr>) {
        let settings = **self.settings.load();
        let (Some(ip), Some((max, cooldown))) = (ip, settings.unknown) else {
            return;
        };
        let now = Instant::now();
        let burst = settings.rate.map_or(1.0, |(_, b)| b);
        let source = self.source(ip, burst, now);
        let mut s = source.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(s.window_start) >= Duration::from_secs(60) {
            s.window_start = now;
            s.unknown = 0;
        }
        s.unknown = s.unknown.saturating_add(1);
        if s.unknown > max {
            s.blocked_until = now.checked_add(cooldown);
            s.unknown = 0;
            s.window_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn limits(rate: Option<f64>, burst: Option<u32>, unknown: Option<u32>) -> LimitsSection {
        LimitsSection {
            rate_per_source: rate.map(|per_second| Rate { per_second }),
            rate_burst: burst,
            max_unknown_tokens_per_minute: unknown,
            unknown_tokens_cooldown: Duration::from_millis(200),
            ..LimitsSection::default()
        }
    }

    #[test]
    fn the_rate_allows_the_burst_then_refills() {
        let s = Sources::new(&limits(Some(10.0), Some(3), None));
        let a = Some("127.0.0.2".parse().unwrap());
        let b = Some("127.0.0.3".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(s.admit(a, true), Ok(()));
        }
        assert_eq!(s.admit(a, true), Err(Refusal::Rate));
        assert_eq!(s.admit(b, true), Ok(()), "another source is not affected");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(s.admit(a, true), Ok(()), "refilled at 10/s");
        s.apply(&limits(None, None, None));
        for _ in 0..100 {
            assert_eq!(s.admit(a, true), Ok(()), "off after a reload");
        }
    }

    #[test]
    fn too_many_unknown_tokens_start_a_cooldown_for_card_lookups_only() {
        let s = Sources::new(&limits(None, None, Some(2)));
        let a = Some("127.0.0.2".parse().unwrap());
        for _ in 0..2 {
            s.note_unknown(a);
            assert_eq!(s.admit(a, true), Ok(()));
        }
        s.note_unknown(a);
        assert_eq!(s.admit(a, true), Err(Refusal::UnknownTokens));
        assert_eq!(s.admit(a, false), Ok(()), "searches are not refused for it");
        assert_eq!(s.admit(Some("127.0.0.3".parse().unwrap()), true), Ok(()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(s.admit(a, true), Ok(()), "the cooldown ends");
    }
}
