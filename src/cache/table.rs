//! The table the card cache keeps its entries in: moka's concurrent cache, bounded by the
//! weight of its entries, evicting the least recently used card, and dropping an entry at
//! the end of its stale window.
//!
//! Recency, not frequency, decides what stays: a chat session asks for its client's card
//! again minutes after the first time, so a card stored once must outlive older ones in a
//! full cache (moka's default TinyLFU admission turns most new keys away). The keys are
//! already keyed hashes, so moka hashes them with [`KeyHashBuilder`], which folds their
//! bits. No eviction listener: moka would call it on every insert's removal work; an
//! insert into a full table is counted as an eviction instead ([`Table::insert`]).

use std::time::Duration;

use tokio::time::Instant;

use moka::policy::{EvictionPolicy, Expiry};
use moka::sync::Cache;

use super::entry_weight;
use super::stored::{clock_ms, Stored};
use crate::keys::{CacheKey, KeyHashBuilder};

/// The share of `max_size` set aside for pages the allocator has freed and not yet given
/// back (jemalloc returns them over ten seconds): a full cache of 16 KB cards, which
/// churns the largest extents, held 1.3 % more than the weighed bytes without it.
const FREED_SHARE: u64 = 32;

/// A bounded map of cache entries.
pub(super) struct Table {
    map: Cache<CacheKey, Entry, KeyHashBuilder>,
    /// The weight the entries may reach.
    capacity: u64,
    on_evict: Box<dyn Fn() + Send + Sync>,
}

#[derive(Clone)]
struct Entry {
    stored: Stored,
    /// End of the stale window in the entries' clock.
    until: u64,
    /// How long the entry had to live when it was stored: moka reclaims it then, on its
    /// own clock; whether it may be served is judged on the entries' clock.
    lifetime: Duration,
}

/// An entry lives until the end of its stale window.
struct UntilStale;

impl Expiry<CacheKey, Entry> for UntilStale {
    fn expire_after_create(&self, _key: &CacheKey, e: &Entry, _at: std::time::Instant) -> Option<Duration> {
        Some(e.lifetime)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        e: &Entry,
        _at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.lifetime)
    }
}

impl Table {
    /// A table holding at most `max_size` bytes; `on_evict` is called once per entry
    /// stored while the table is full (each such store evicts the least recent card).
    pub(super) fn new(max_size: u64, on_evict: impl Fn() + Send + Sync + 'static) -> Self {
        let capacity = max_size - max_size / FREED_SHARE;
        let map = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_key, e: &Entry| u32::try_from(entry_weight(e.stored.body().len())).unwrap_or(u32::MAX))
            .expire_after(UntilStale)
            .build_with_hasher(KeyHashBuilder);
        Table {
            map,
            capacity,
            on_evict: Box::new(on_evict),
        }
    }

    /// The entry for `key`, unless it is past its stale window at `now`.
    pub(super) fn get(&self, key: &CacheKey, now: Instant) -> Option<Stored> {
        let e = self.map.get(key)?;
        (e.until > clock_ms(now)).then_some(e.stored)
    }

    /// Store `stored` at `now`.
    pub(super) fn insert(&self, key: CacheKey, stored: Stored, now: Instant) {
        let weight = entry_weight(stored.body().len());
        if self.map.weighted_size().saturating_add(weight) > self.capacity {
            (self.on_evict)();
        }
        let until = stored.stale_until();
        let lifetime = Duration::from_millis(until.saturating_sub(clock_ms(now)));
        self.map.insert(
            key,
            Entry {
                stored,
                until,
                lifetime,
            },
        );
    }

    /// Drop one entry; true if it was there (expired or not).
    pub(super) fn remove(&self, key: &CacheKey) -> bool {
        self.map.remove(key).is_some()
    }

    /// Drop every entry; how many live ones there were.
    pub(super) fn clear(&self) -> u64 {
        self.map.run_pending_tasks();
        let n = self.map.entry_count();
        self.map.invalidate_all();
        self.map.run_pending_tasks();
        n
    }

    /// (live entries, their weighted bytes).
    pub(super) fn usage(&self) -> (u64, u64) {
        self.map.run_pending_tasks();
        (self.map.entry_count(), self.map.weighted_size())
    }

    /// Whether `key` has an entry, without touching its recency.
    pub(super) fn contains(&self, key: &CacheKey) -> bool {
        self.map.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn entry(body: &[u8], now: Instant, fresh_ms: u64, stale_ms: u64) -> Stored {
        Stored::new(
            200,
            body,
            false,
            now,
            Duration::from_millis(fresh_ms),
            Duration::from_millis(stale_ms),
            Duration::ZERO,
        )
    }

    fn key(i: u32) -> CacheKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k[28..].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        k
    }

    #[test]
    fn an_entry_past_its_stale_window_is_not_found() {
        super::super::stored::start_clock();
        let t = Table::new(1 << 20, || {});
        let now = Instant::now();
        t.insert(key(1), entry(b"{}", now, 100, 100), now);
        t.insert(key(2), entry(b"{}", now, 60_000, 0), now);
        assert!(t.get(&key(1), now).is_some());
        assert!(
            t.get(&key(1), now + Duration::from_millis(150)).is_some(),
            "stale, still kept"
        );
        assert!(t.get(&key(1), now + Duration::from_millis(250)).is_none());
        let (entries, bytes) = t.usage();
        assert_eq!(entries, 2);
        assert_eq!(bytes, 2 * entry_weight(2));
    }

    #[test]
    fn an_expired_entry_leaves_the_counts() {
        super::super::stored::start_clock();
        let t = Table::new(1 << 20, || {});
        let now = Instant::now();
        // Expiry is moka's own, on its clock: this waits out a 1 ms stale window.
        t.insert(key(1), entry(b"{}", now, 1, 0), now);
        t.insert(key(2), entry(b"{}", now, 60_000, 0), now);
        let deadline = Instant::now() + Duration::from_secs(5);
        while t.usage().0 != 1 {
            assert!(Instant::now() < deadline, "the expired entry is still counted");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!t.contains(&key(1)));
        assert!(t.contains(&key(2)));
    }

    #[test]
    fn a_full_table_keeps_each_new_entry_and_counts_evictions() {
        super::super::stored::start_clock();
        let evicted = Arc::new(AtomicU64::new(0));
        let counter = evicted.clone();
        let max = 256 * 1024;
        let t = Table::new(max, move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let now = Instant::now();
        let body = vec![b'x'; 400];
        let per = entry_weight(400);
        for i in 0..5_000 {
            t.insert(key(i), entry(&body, now, 60_000, 0), now);
            // Every card is there right after it was stored, however full the table is.
            assert!(t.get(&key(i), now).is_some(), "card {i} was not kept");
        }
        let (entries, bytes) = t.usage();
        assert!(bytes <= max, "{bytes} over {max}");
        assert_eq!(bytes, entries * per);
        assert!(entries > max / per * 9 / 10, "only {entries} entries kept");
        let counted = evicted.load(Ordering::Relaxed);
        let dropped = 5_000 - entries;
        assert!(
            counted.abs_diff(dropped) <= dropped / 20,
            "{counted} counted, {dropped} dropped"
        );
    }

    #[test]
    fn a_card_asked_for_again_outlives_older_ones() {
        super::super::stored::start_clock();
        let max = 256 * 1024;
        let t = Table::new(max, || {});
        let now = Instant::now();
        let body = vec![b'x'; 400];
        let room = u32::try_from(max / entry_weight(400)).unwrap();
        // Fill the table, then store new cards, each read again after a hundred newer ones.
        for i in 0..room * 2 {
            t.insert(key(i), entry(&body, now, 60_000, 0), now);
        }
        let mut kept = 0;
        for i in 0..300 {
            let new = room * 2 + i;
            t.insert(key(new), entry(&body, now, 60_000, 0), now);
            if i >= 100 {
                kept += u32::from(t.get(&key(new - 100), now).is_some());
            }
        }
        assert_eq!(kept, 200, "new cards were evicted before older ones");
    }

    #[test]
    fn clear_counts_live_entries_and_empties_the_table() {
        super::super::stored::start_clock();
        let t = Table::new(1 << 20, || {});
        let now = Instant::now();
        for i in 0..10 {
            t.insert(key(i), entry(b"{}", now, 60_000, 0), now);
        }
        assert!(t.remove(&key(0)));
        assert!(!t.remove(&key(0)));
        assert_eq!(t.clear(), 9);
        assert_eq!(t.usage(), (0, 0));
    }
}
