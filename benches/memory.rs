//! Memory per cached card: fills a `CardCache` with distinct ~1 KB cards through the same
//! `get_or_fetch` path the gateway uses, then reports heap bytes (a counting allocator) and
//! RSS per entry, and the measured overhead next to the weigher's `ENTRY_OVERHEAD`. The
//! allocator is the gateway's (jemalloc); heap bytes are counted in its size classes.
//!
//! `cargo bench --bench memory` (entries: `CARDGATE_MEM_ENTRIES`, default 1 000 000;
//! card size: `CARDGATE_MEM_CARD_BYTES`, default 1024; `cache.max_size`:
//! `CARDGATE_MEM_MAX_SIZE` bytes, default 64 GiB: set it below what the entries weigh to
//! see what a full cache, which evicts and remembers evicted keys, holds per byte of it).
//!
//! `cargo bench --bench memory -- guard`: bytes per search step the brute-force guard
//! tracks (`CARDGATE_MEM_STEPS`, default 100 000 first steps, each with the same
//! `secretWordValidator`, as a CRM sends them), next to `guard::STEP_BYTES`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cardgate::alloc::{usable_size, Allocator};
use cardgate::testkit::{
    entry_weight, search_params, CacheSection, Card, CardCache, SearchAnswer, SearchGuard, SearchSection,
    TokenHasher, ENTRY_OVERHEAD, STEP_BYTES,
};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(usable_size(l.size()) as isize, Ordering::Relaxed);
        Allocator.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(usable_size(l.size()) as isize, Ordering::Relaxed);
        Allocator.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(
            usable_size(new) as isize - usable_size(l.size()) as isize,
            Ordering::Relaxed,
        );
        Allocator.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    if std::env::args().any(|a| a == "guard") {
        return guard();
    }
    let n = env_or("CARDGATE_MEM_ENTRIES", 1_000_000).min(5_000_000);
    let card_bytes = env_or("CARDGATE_MEM_CARD_BYTES", 1024).clamp(64, 64 * 1024);
    let max_size = env_or("CARDGATE_MEM_MAX_SIZE", 64 << 30).max(1 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hasher = TokenHasher::random();
    let cache = CardCache::new(
        &CacheSection {
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            refresh_ahead: 0.2,
            max_size: max_size as u64,
            hash_key_env: None,
            hash_key_file: None,
        },
        || {},
    );
    let template = vec![b'x'; card_bytes];

    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let token = format!("token-{i:012}");
            let key = hasher.cache_key(token.as_bytes());
            let mut body = template.clone();
            body[..token.len()].copy_from_slice(token.as_bytes());
            let (r, _) = cache
                .get_or_fetch(key, || async {
                    Ok(Card {
                        body: Bytes::from(body),
                        max_age: None,
                        no_store: false,
                    })
                })
                .await;
            r.expect("stored");
        }
    });
    let (entries, weighted) = rt.block_on(cache.usage());
    let took = start.elapsed();
    let heap = (LIVE.load(Ordering::Relaxed) - heap0) as f64;
    let rss = rss_bytes().saturating_sub(rss0) as f64;
    let per = |x: f64| x / entries.max(1) as f64;
    println!("entries stored       {entries} of {n} ({card_bytes}-byte cards) in {took:.1?}");
    println!(
        "weighted size        {weighted} bytes ({:.0} per entry)",
        per(weighted as f64)
    );
    println!(
        "heap growth          {:.1} MiB, {:.0} bytes per entry",
        heap / 1048576.0,
        per(heap)
    );
    println!(
        "RSS growth           {:.1} MiB, {:.0} bytes per entry",
        rss / 1048576.0,
        per(rss)
    );
    let alloc = (entry_weight(card_bytes) - u64::from(ENTRY_OVERHEAD)) as f64;
    println!(
        "overhead             {:.0} heap / {:.0} RSS bytes per entry beyond its {alloc:.0}-byte allocation; weigher charges {ENTRY_OVERHEAD}",
        per(heap) - alloc,
        per(rss) - alloc
    );
    println!("RSS / weighted size  {:.3}", rss / weighted.max(1) as f64);
    println!(
        "per max_size byte    {:.3} heap / {:.3} RSS (max_size {:.0} MiB)",
        heap / max_size as f64,
        rss / max_size as f64,
        max_size as f64 / 1048576.0
    );
    println!("process RSS          {:.1} MiB", rss_bytes() as f64 / 1048576.0);
}

/// Bytes per tracked search step: record N first steps with distinct stepIds.
fn guard() {
    let n = env_or("CARDGATE_MEM_STEPS", 100_000).min(2_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = SearchSection {
        max_tracked: u64::MAX / 1024,
        max_memory: u64::MAX / 2,
        ..SearchSection::default()
    };
    let guard = SearchGuard::new(&cfg);
    let keys = TokenHasher::random();
    let first = search_params(Some("application/x-www-form-urlencoded"), b"client=bench", 256).unwrap();
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    rt.block_on(async {
        for i in 0..n {
            let answer = Ok(SearchAnswer {
                body: Bytes::new(),
                answer_type: 1,
                step_id: Some(format!("step-{i:016x}")),
                validator: Some(r"^\d{4}$".into()),
                token: None,
                session: None,
            });
            guard.record(&keys, &first, &answer).await;
        }
    });
    let heap = (LIVE.load(Ordering::Relaxed) - heap0) as f64;
    let rss = rss_bytes().saturating_sub(rss0) as f64;
    println!("search steps tracked {n}, one shared validator");
    println!("heap growth          {:.0} bytes per step", heap / n as f64);
    println!("RSS growth           {:.0} bytes per step", rss / n as f64);
    println!("guard::STEP_BYTES    {STEP_BYTES} (what each step weighs against search.max_memory)");
}
