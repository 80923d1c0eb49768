//! The client-card cache: protects the CRM from login storms.
//!
//! Entries are ready answer bytes keyed by the keyed hash of the token ([`crate::keys`]).
//! A lookup is fresh (`HIT`, `NEGATIVE_HIT`), or needs the CRM. Concurrent requests for one
//! key share one upstream call (single-flight: the first caller leads, the rest wait on its
//! result, and if the leader is cancelled the next waiter takes over). When the CRM fails,
//! a card past its TTL but inside `stale_if_error` is served as `STALE`, and while it keeps
//! failing at most one refresh per key per second is tried. Gateway-side failures are never
//! stored; "not found" answers are stored for `negative_ttl`. Memory is bounded by the
//! table's weigher ([`table`]), counting each card's allocation plus [`ENTRY_OVERHEAD`];
//! a full table evicts the least recently used card.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::shared::{InRedis, Shared};
use stored::SharedRecord;

mod stored;
mod table;

pub use stored::Stored;

use arc_swap::ArcSwap;

use crate::config::CacheSection;
use crate::error::GatewayError;
use crate::keys::{CacheKey, KeyHashBuilder};
use crate::normalise::Card;
use table::Table;

/// Bytes charged per entry on top of its allocation (header and body, as the allocator
/// sizes it): the key and moka's per-entry bookkeeping (its hash table slot, the entry's
/// node in the recency and timer queues). `benches/memory.rs` measures the process to hold
/// 334–361 bytes of RSS per entry beyond the allocation (1 M cards of 300 bytes and of
/// 1 KB, and a full 256 MiB cache); rounded up, so that `cache.max_size` bounds what the
/// process really holds.
pub const ENTRY_OVERHEAD: u32 = 368;

/// What a card of `body_len` bytes counts against `cache.max_size`: its allocation as the
/// allocator sizes it, plus [`ENTRY_OVERHEAD`].
pub fn entry_weight(body_len: usize) -> u64 {
    u64::try_from(stored::alloc_size(body_len))
        .unwrap_or(u64::MAX / 2)
        .saturating_add(u64::from(ENTRY_OVERHEAD))
}

/// The least time between two refresh attempts of one key while its card is served stale.
pub const STALE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Slots of [`CardCache::stores`]: enough that two misses under way rarely share one.
const STORE_SLOTS: usize = 1024;

/// How a request was answered with respect to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    NegativeHit,
    Miss,
    Stale,
    Coalesced,
}

impl CacheResult {
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::NegativeHit => "negative_hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Coalesced => "coalesced",
        }
    }

    /// The `X-Cache` response header value.
    pub fn header(self) -> &'static str {
        match self {
            CacheResult::Hit | CacheResult::NegativeHit => "HIT",
            CacheResult::Stale => "STALE",
            CacheResult::Miss | CacheResult::Coalesced => "MISS",
        }
    }
}

/// What a lookup gives: the answer (or the error all waiters share) and how it was found.
pub type Lookup = (Result<Stored, GatewayError>, CacheResult);

type Outcome = Result<(Stored, bool), GatewayError>;

pub struct CardCache {
    cards: Table,
    inflight: Mutex<HashMap<CacheKey, Arc<OnceCell<Outcome>>, KeyHashBuilder>>,
    /// Entries stored, counted per slot of keys: a new lead reads the cache again only if
    /// its key's slot changed since its lookup (a lead for the key may have finished in
    /// between), which spares a second cache read on nearly every miss.
    stores: Box<[AtomicU32; STORE_SLOTS]>,
    /// The lifetimes of new entries (changed in place by a reload).
    ttls: ArcSwap<Ttls>,
    /// The second level in Redis, and how long a replica's lock on a miss may last
    /// (`upstream.timeout`).
    l2: Option<(Arc<Shared>, Duration)>,
}

/// How long new entries live: `cache.ttl`, `negative_ttl`, `stale_if_error`.
#[derive(Debug, Clone, Copy)]
struct Ttls {
    ttl: Duration,
    negative: Duration,
    stale_if_error: Duration,
    refresh_ahead: f64,
}

impl Ttls {
    fn of(cfg: &CacheSection) -> Self {
        Ttls {
            ttl: cfg.ttl,
            negative: cfg.negative_ttl,
            stale_if_error: cfg.stale_if_error,
            refresh_ahead: cfg.refresh_ahead,
        }
    }
}

impl CardCache {
    /// `on_evict` is called once per entry dropped to keep within `max_size`.
    pub fn new(cfg: &CacheSection, on_evict: impl Fn() + Send + Sync + 'static) -> Self {
        stored::start_clock();
        CardCache {
            cards: Table::new(cfg.max_size, on_evict),
            inflight: Mutex::new(HashMap::with_hasher(KeyHashBuilder)),
            stores: Box::new(std::array::from_fn(|_| AtomicU32::new(0))),
            ttls: ArcSwap::from_pointee(Ttls::of(cfg)),
            l2: None,
        }
    }

    /// Read and write cards through `shared` as well (`shared.cards`); a miss holds the
    /// replicas' lock at most `hold`.
    pub fn with_shared(mut self, shared: Arc<Shared>, hold: Duration) -> Self {
        self.l2 = Some((shared, hold));
        self
    }

    /// The counter of `key`'s slot in [`Self::stores`] (keys are keyed hashes: any two
    /// bytes are as good as any others).
    fn slot(&self, key: &CacheKey) -> &AtomicU32 {
        let i = usize::from(u16::from_le_bytes([key[0], key[1]])) % STORE_SLOTS;
        &self.stores[i]
    }

    /// How many entries have been stored in `key`'s slot.
    fn stores_of(&self, key: &CacheKey) -> u32 {
        self.slot(key).load(Ordering::Acquire)
    }

    /// Store an entry, and count it in its key's slot (after it is in the cache, and
    /// before its lead leaves the in-flight map).
    fn store(&self, key: CacheKey, stored: Stored) {
        self.cards.insert(key, stored, Instant::now());
        self.slot(&key).fetch_add(1, Ordering::Release);
    }

    /// Drop this replica's copy of one card, or of all (another replica purged them).
    pub fn drop_local(&self, key: Option<CacheKey>) {
        match key {
            Some(key) => {
                self.cards.remove(&key);
            }
            None => {
                self.cards.clear();
            }
        }
    }

    /// New lifetimes for entries stored from now on (entries stored before keep theirs).
    pub fn apply(&self, cfg: &CacheSection) {
        self.ttls.store(Arc::new(Ttls::of(cfg)));
    }

    /// Answer from the cache, or through `fetch` with single-flight and stale-if-error.
    pub async fn get_or_fetch<F, Fut>(&self, key: CacheKey, fetch: F) -> Lookup
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Card, GatewayError>>,
    {
        let now = Instant::now();
        let seen = self.stores_of(&key);
        let existing = self.cards.get(&key, now);
        if let Some(e) = &existing {
            if e.is_fresh(now) {
                let result = if e.is_negative() {
                    CacheResult::NegativeHit
                } else {
                    CacheResult::Hit
                };
                return (Ok(e.clone()), result);
            }
            if e.may_serve_stale(now) && e.refresh_failed_recently(now) {
                return (Ok(e.clone()), CacheResult::Stale);
            }
        }

        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key).or_default().clone()
        };
        let mut led = false;
        let outcome = cell
            .get_or_init(|| {
                led = true;
                self.lead(key, existing, seen, fetch)
            })
            .await
            .clone();
        if led {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&key);
            }
        }
        match outcome {
            Ok((stored, true)) => (Ok(stored), CacheResult::Stale),
            Ok((stored, false)) if led => (Ok(stored), CacheResult::Miss),
            Ok((stored, false)) => (Ok(stored), CacheResult::Coalesced),
            Err(e) => (
                Err(e),
                if led {
                    CacheResult::Miss
                } else {
                    CacheResult::Coalesced
                },
            ),
        }
    }

    /// The leader's work: one upstream call (or another replica's, through Redis), and
    /// what to keep of its result. `seen`: [`Self::stores_of`] the key before `existing`
    /// was read.
    async fn lead<F, Fut>(&self, key: CacheKey, existing: Option<Stored>, seen: u32, fetch: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Card, GatewayError>>,
    {
        // A leader that finished just before this one began may have stored a fresh answer.
        if self.stores_of(&key) != seen {
            let now = Instant::now();
            if let Some(e) = self.cards.get(&key, now) {
                if e.is_fresh(now) && existing.as_ref().is_none_or(|old| !old.same_entry(&e)) {
                    return Ok((e, false));
                }
            }
        }
        // A refresh-ahead (the card is still fresh here) goes to the CRM: Redis has the
        // same card, or one as old; its result goes to Redis all the same.
        let refreshing = existing.as_ref().is_some_and(|e| e.is_fresh(Instant::now()));
        let mut lock = None;
        if let Some((l2, hold)) = self.l2.as_ref().filter(|_| !refreshing) {
            // Boxed, as are the other Redis calls: inline, they would make every lookup's
            // future (and so every request's) larger than the allocator's fast sizes.
            match Box::pin(l2.card_lookup(&key, *hold)).await {
                Some(InRedis::Found(record)) => {
                    if let Some(found) = self.adopt_from_l2(key, record) {
                        return Ok((found, false));
                    }
                }
                Some(InRedis::Lead(token)) => lock = Some(token),
                Some(InRedis::Follow) => {
                    let until = Instant::now().checked_add(*hold).unwrap_or_else(Instant::now);
                    let waited = Box::pin(l2.card_wait(&key, until.into_std())).await;
                    if let Some(found) = self.adopt_from_l2(key, waited) {
                        return Ok((found, false));
                    }
                }
                None => {}
            }
        }
        let (outcome, kept) = self.fetch_and_keep(key, existing, fetch).await;
        if let Some((l2, _)) = &self.l2 {
            let record = match &outcome {
                Ok((stored, false)) if kept => Some(stored.to_shared(Instant::now())),
                _ => None,
            };
            Box::pin(l2.card_put(
                &key,
                record.as_ref().map(SharedRecord::as_record),
                lock.as_deref(),
            ))
            .await;
        }
        outcome
    }

    /// A fresh card from Redis, now also in this replica's cache.
    fn adopt_from_l2(&self, key: CacheKey, record: Option<Vec<u8>>) -> Option<Stored> {
        let now = Instant::now();
        let stored = Stored::from_shared(&record?, now)?;
        if !stored.is_fresh(now) {
            return None;
        }
        self.store(key, stored.clone());
        Some(stored)
    }

    /// One upstream call, and what to keep of its result; whether it is kept in the cache.
    async fn fetch_and_keep<F, Fut>(
        &self,
        key: CacheKey,
        existing: Option<Stored>,
        fetch: F,
    ) -> (Outcome, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Card, GatewayError>>,
    {
        let result = fetch().await;
        let now = Instant::now();
        let ttls = **self.ttls.load();
        match result {
            Ok(card) => {
                let ttl = card.max_age.map_or(ttls.ttl, |age| age.min(ttls.ttl));
                // One allocation, exact size: the answer was read into a larger buffer.
                let lead = ttl.mul_f64(ttls.refresh_ahead);
                let stored = Stored::new(200, &card.body, false, now, ttl, ttls.stale_if_error, lead);
                let keep = !card.no_store && !ttl.is_zero();
                if keep {
                    self.store(key, stored.clone());
                }
                (Ok((stored, false)), keep)
            }
            Err(e) if e.is_negative() => {
                let stored = Stored::new(
                    e.status(),
                    &e.body(),
                    true,
                    now,
                    ttls.negative,
                    Duration::ZERO,
                    Duration::ZERO,
                );
                let keep = !ttls.negative.is_zero();
                if keep {
                    self.store(key, stored.clone());
                }
                (Ok((stored, false)), keep)
            }
            Err(e) => match existing {
                Some(old) if e.is_upstream_failure() && old.may_serve_stale(now) => {
                    old.note_failed_refresh(now);
                    (Ok((old, true)), false)
                }
                _ => (Err(e), false),
            },
        }
    }

    /// Refresh a card a hit found due for it, in the background: one call per key at a
    /// time (a lookup under way for the key makes this a no-op); the chat server's requests
    /// go on being answered from the cache. `None`: another fetch was under way.
    pub async fn refresh<F, Fut>(
        &self,
        key: CacheKey,
        existing: Stored,
        fetch: F,
    ) -> Option<Result<(), GatewayError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Card, GatewayError>>,
    {
        let (cell, seen) = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            let seen = self.stores_of(&key);
            // Another fetch is under way, or one already replaced the card.
            let replaced = self
                .cards
                .get(&key, Instant::now())
                .is_none_or(|e| !e.same_entry(&existing));
            if map.contains_key(&key) || replaced {
                return None;
            }
            (map.entry(key).or_default().clone(), seen)
        };
        let outcome = cell
            .get_or_init(|| self.lead(key, Some(existing), seen, fetch))
            .await
            .clone();
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        // A failed refresh leaves the old card in place (`stale`): an error all the same.
        Some(outcome.and_then(|(_, stale)| {
            if stale {
                Err(GatewayError::CrmUnavailable("the refresh failed"))
            } else {
                Ok(())
            }
        }))
    }

    /// Keep a card a dialect built itself (a logged-in session) for `ttl`, with no stale
    /// window: when it expires, the session is over.
    pub async fn store_session(&self, key: CacheKey, body: Bytes, ttl: Duration) {
        let now = Instant::now();
        let stored = Stored::new(200, &body, false, now, ttl, Duration::ZERO, Duration::ZERO);
        self.store(key, stored.clone());
        if let Some((l2, _)) = &self.l2 {
            // Every replica answers the session; one that remembered "no session" forgets it.
            l2.card_put(&key, Some(stored.to_shared(now).as_record()), None)
                .await;
            l2.announce(&key).await;
        }
    }

    /// The Redis this cache's second level is in, if it has one.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.l2.as_ref().map(|(s, _)| s)
    }

    /// Drop one entry; true if it was there.
    pub async fn purge(&self, key: &CacheKey) -> bool {
        self.cards.remove(key)
    }

    /// Drop every entry; returns how many there were.
    pub async fn clear(&self) -> u64 {
        self.cards.clear()
    }

    /// (live entries, weighted bytes).
    pub async fn usage(&self) -> (u64, u64) {
        self.cards.usage()
    }

    /// Look at an entry without touching its recency (admin and tests).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.cards.contains(key)
    }
}

#[cfg(test)]
mod tests;
