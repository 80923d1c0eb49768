//! Micro-benchmarks of the cache-hit path, one function per step, and the whole path:
//! frame the request → route it → hash the token → look the card up → write the answer.
//!
//! `full_cache_store` is a miss that stores a new 1 KB card into a full 256 MiB cache (the
//! steady state under unique tokens): a lookup that finds nothing, then an insert that evicts.
//!
//! `cargo bench --bench hot_path`

use std::time::Duration;

use bytes::Bytes;
use cardgate::testkit::{
    parse_head, route, write_answer as write, Answer, Body, CacheSection, Card, CardCache, Delivery, Request,
    Route, TokenHasher,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const TOKEN: &str = "3f6c1b0e-5a2d-4c8e-9f1a-7b2d4e6f8a0c";

/// What wrk sends.
fn request() -> Vec<u8> {
    format!("GET /rest/chat/client/id/{TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n").into_bytes()
}

fn cache_with_card(hasher: &TokenHasher, rt: &tokio::runtime::Runtime) -> CardCache {
    let cache = CardCache::new(
        &CacheSection {
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            refresh_ahead: 0.2,
            max_size: 256 << 20,
            hash_key_env: None,
            hash_key_file: None,
        },
        || {},
    );
    let body = serde_json::to_vec(&cardgate::testkit::mock::card(TOKEN.as_bytes())).unwrap();
    let key = hasher.cache_key(TOKEN.as_bytes());
    rt.block_on(cache.get_or_fetch(key, || async {
        Ok(Card {
            body: Bytes::from(body),
            max_age: None,
            no_store: false,
        })
    }))
    .0
    .unwrap();
    cache
}

/// A runtime, a token hasher and a cache holding the card of [`TOKEN`].
fn setup() -> (tokio::runtime::Runtime, TokenHasher, CardCache) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hasher = TokenHasher::random();
    let cache = cache_with_card(&hasher, &rt);
    (rt, hasher, cache)
}

fn hit_path(c: &mut Criterion) {
    let (rt, hasher, cache) = setup();
    let raw = request();
    let mut head = None;
    parse_head(&raw, 32 * 1024, &mut head).unwrap();
    let parsed = head.clone().unwrap();
    let req = Request::new(&raw, &parsed, b"", None);
    let key = hasher.cache_key(TOKEN.as_bytes());
    let never = || async { unreachable!("a hit never fetches") };

    c.bench_function("frame_head", |b| {
        b.iter(|| parse_head(black_box(&raw), 32 * 1024, &mut head).unwrap())
    });
    c.bench_function("parse_route", |b| b.iter(|| route(black_box(&req), 4096)));
    c.bench_function("cache_key", |b| {
        b.iter(|| hasher.cache_key(black_box(TOKEN.as_bytes())))
    });
    c.bench_function("fingerprint", |b| {
        b.iter(|| hasher.fingerprint(black_box(TOKEN.as_bytes())))
    });
    c.bench_function("cache_lookup_hit", |b| {
        b.iter(|| rt.block_on(cache.get_or_fetch(black_box(key), never)).0.unwrap())
    });
    let stored = rt.block_on(cache.get_or_fetch(key, never)).0.unwrap();
    let mut out = Vec::with_capacity(4096);
    c.bench_function("answer_write", |b| {
        b.iter(|| {
            let answer = Answer {
                status: 200,
                body: Body::Stored(stored.clone()),
                x_cache: Some("HIT"),
                header: None,
            };
            out.clear();
            write(&mut out, black_box(&answer), Delivery::default());
            out.len()
        })
    });
    c.bench_function("whole_hit_path", |b| {
        b.iter(|| {
            parse_head(black_box(&raw), 32 * 1024, &mut head).unwrap();
            let parsed = head.as_ref().unwrap();
            let req = Request::new(&raw, parsed, b"", None);
            let (_, r) = route(&req, 4096);
            let Ok(Route::Card(token)) = r else { unreachable!() };
            let key = hasher.cache_key(token.as_bytes());
            let stored = rt.block_on(cache.get_or_fetch(key, never)).0.unwrap();
            let answer = Answer {
                status: stored.status(),
                body: Body::Stored(stored.clone()),
                x_cache: Some("HIT"),
                header: None,
            };
            out.clear();
            write(&mut out, &answer, Delivery::default());
            out.len()
        })
    });
}

/// A miss stored into a full cache: each iteration asks for a new key and stores its card.
fn full_cache_store(c: &mut Criterion) {
    let (rt, hasher, cache) = setup();
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut i = 0u64;
    let store = |i: u64| {
        let key = hasher.cache_key(format!("token-{i:012}").as_bytes());
        let card = || async {
            Ok(Card {
                body: body.clone(),
                max_age: None,
                no_store: false,
            })
        };
        rt.block_on(cache.get_or_fetch(key, card)).0.unwrap();
    };
    // 256 MiB of 1 KB cards is some 200 000: fill it past that first.
    while i < 300_000 {
        store(i);
        i += 1;
    }
    c.bench_function("full_cache_store", |b| {
        b.iter(|| {
            i += 1;
            store(black_box(i));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hit_path, full_cache_store
}
criterion_main!(benches);
