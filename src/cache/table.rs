//! The table the card cache keeps its entries in: a sharded, weight-bounded map from key
//! to entry (quick_cache's CLOCK-Pro cache), where an entry past the end of its stale
//! window is no longer found.
//!
//! quick_cache rather than moka: on a miss that stores a card in a full cache (the
//! gateway's steady state under unique tokens) moka spent 2.6–2.8 µs per insert with the
//! weigher, per-entry expiry and eviction listener the cache needs, and its admission
//! policy turned most new cards away; quick_cache keeps every new card for 0.15 µs.
//! Expiry is a field of the entry, checked on every read, and a sweeper thread drops
//! expired entries every [`SWEEP_EVERY`] (the role of nginx's cache manager), so that the
//! entry count and weight report live cards.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use super::stored::{clock_ms, Stored};
use super::{entry_weight, ENTRY_OVERHEAD};
use crate::keys::{CacheKey, KeyHashBuilder};

/// How often expired entries are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The average body the table is sized for: it remembers the keys of recently evicted
/// entries (ghosts, which bring a key asked for again straight back among the hot ones)
/// up to half the entries of that size that `max_size` holds.
const TYPICAL_BODY: u64 = 512;

/// What one remembered key of an evicted entry costs (its slot in the table's slab and
/// index); this memory is set aside from `max_size` before entries are weighed against it.
/// Measured with `benches/memory.rs` in a full cache.
const GHOST_BYTES: u64 = 96;

/// The share of `max_size` set aside for pages the allocator has freed and not yet given
/// back (jemalloc returns them over ten seconds): a full cache of 16 KB cards, which
/// churns the largest extents, held 1.3 % more than the weighed bytes without it (a
/// 32nd is set aside: with it, RSS 0.96–0.98 of `max_size` for cards of 300 bytes to 16 KB).
const FREED_SHARE: u64 = 32;

type Map = Cache<CacheKey, Entry, Weigh, KeyHashBuilder, Evictions>;

/// A bounded map of cache entries.
pub(super) struct Table {
    map: Arc<Map>,
}

#[derive(Clone)]
struct Entry {
    stored: Stored,
    /// End of the stale window in the entries' clock: read without touching the body's
    /// allocation, so that a sweep stays in the table's own memory.
    until: u64,
}

/// An entry weighs [`entry_weight`]: its allocation plus [`ENTRY_OVERHEAD`].
#[derive(Clone, Copy)]
struct Weigh;

impl Weighter<CacheKey, Entry> for Weigh {
    fn weight(&self, _key: &CacheKey, e: &Entry) -> u64 {
        entry_weight(e.stored.body().len())
    }
}

/// Counts entries dropped to stay within the weight bound (not expired ones, not replaced
/// ones); the dropped entries are freed after the shard's lock is released.
#[derive(Clone)]
struct Evictions(Arc<dyn Fn() + Send + Sync>);

impl Lifecycle<CacheKey, Entry> for Evictions {
    type RequestState = [Option<Entry>; 2];

    fn on_evict(&self, state: &mut Self::RequestState, _key: CacheKey, e: Entry) {
        (self.0)();
        if let Some(free) = state.iter_mut().find(|s| s.is_none()) {
            *free = Some(e);
        }
    }
}

impl Table {
    /// A table holding at most `max_size` bytes, with what it remembers of evicted keys;
    /// `on_evict` is called once per
    /// entry dropped to stay within it. Starts the sweeper thread, which ends with the table.
    pub(super) fn new(max_size: u64, on_evict: impl Fn() + Send + Sync + 'static) -> Self {
        let items = max_size / (TYPICAL_BODY + u64::from(ENTRY_OVERHEAD));
        let ghosts = items / 2;
        let options = OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(items.max(1)).unwrap_or(usize::MAX))
            .ghost_allocation(0.5)
            .weight_capacity(max_size - max_size / FREED_SHARE - (ghosts * GHOST_BYTES).min(max_size / 2))
            .build()
            .unwrap_or_else(|e| unreachable!("both capacities are set: {e}"));
        let map = Arc::new(Cache::with_options(
            options,
            Weigh,
            KeyHashBuilder,
            Evictions(Arc::new(on_evict)),
        ));
        let weak = Arc::downgrade(&map);
        // Without the thread, expired entries still go unread and are evicted first; only
        // the reported counts would lag. Not fatal, so a failed spawn is only logged.
        if let Err(e) = std::thread::Builder::new()
            .name("cardgate-cache-sweep".into())
            .spawn(move || sweep_while_alive(&weak))
        {
            crate::logs::event_with(
                crate::config::LogLevel::Warn,
                "the cache sweeper did not start",
                serde_json::json!({ "why": e.to_string() }),
            );
        }
        Table { map }
    }

    /// The entry for `key`, unless it is past its stale window at `now`.
    pub(super) fn get(&self, key: &CacheKey, now: Instant) -> Option<Stored> {
        let e = self.map.get(key)?;
        (e.until > clock_ms(now)).then_some(e.stored)
    }

    pub(super) fn insert(&self, key: CacheKey, stored: Stored) {
        let until = stored.stale_until();
        self.map.insert(key, Entry { stored, until });
    }

    /// Drop one entry; true if it was there (expired or not).
    pub(super) fn remove(&self, key: &CacheKey) -> bool {
        self.map.remove(key).is_some()
    }

    /// Drop every entry; how many live ones there were.
    pub(super) fn clear(&self) -> u64 {
        sweep(&self.map, Instant::now());
        let n = self.map.len() as u64;
        self.map.clear();
        n
    }

    /// (live entries, their weighted bytes).
    pub(super) fn usage(&self) -> (u64, u64) {
        sweep(&self.map, Instant::now());
        (self.map.len() as u64, self.map.weight())
    }

    /// Whether `key` has an entry, without touching its recency.
    pub(super) fn contains(&self, key: &CacheKey) -> bool {
        self.map.contains_key(key)
    }
}

/// Drop the entries past their stale window at `now`.
fn sweep(map: &Map, now: Instant) {
    let now = clock_ms(now);
    map.retain(|_, e| e.until > now);
}

fn sweep_while_alive(map: &Weak<Map>) {
    loop {
        std::thread::sleep(SWEEP_EVERY);
        match map.upgrade() {
            Some(map) => sweep(&map, Instant::now()),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

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
    fn an_entry_past_its_stale_window_is_not_found_and_is_swept() {
        super::super::stored::start_clock();
        let t = Table::new(1 << 20, || {});
        let now = Instant::now();
        t.insert(key(1), entry(b"{}", now, 100, 100));
        t.insert(key(2), entry(b"{}", now, 60_000, 0));
        assert!(t.get(&key(1), now).is_some());
        assert!(
            t.get(&key(1), now + Duration::from_millis(150)).is_some(),
            "stale, still kept"
        );
        assert!(t.get(&key(1), now + Duration::from_millis(250)).is_none());
        // A sweep then drops it from the counts.
        sweep(&t.map, now + Duration::from_millis(250));
        let (entries, bytes) = t.usage();
        assert_eq!(entries, 1);
        assert_eq!(bytes, entry_weight(2));
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
            t.insert(key(i), entry(&body, now, 60_000, 0));
            // Every card is there right after it was stored, however full the table is.
            assert!(t.get(&key(i), now).is_some(), "card {i} was not kept");
        }
        let (entries, bytes) = t.usage();
        assert!(bytes <= max, "{bytes} over {max}");
        assert_eq!(bytes, entries * per);
        assert_eq!(evicted.load(Ordering::Relaxed), 5_000 - entries);
        assert!(entries > max / per / 2, "only {entries} entries kept");
    }

    #[test]
    fn clear_counts_live_entries_and_empties_the_table() {
        super::super::stored::start_clock();
        let t = Table::new(1 << 20, || {});
        let now = Instant::now();
        for i in 0..10 {
            t.insert(key(i), entry(b"{}", now, 60_000, 0));
        }
        assert!(t.remove(&key(0)));
        assert!(!t.remove(&key(0)));
        assert_eq!(t.clear(), 9);
        assert_eq!(t.usage(), (0, 0));
    }
}
