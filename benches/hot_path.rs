//! Micro-benchmarks of the cache-hit path, one function per step, and the whole path:
//! parse the request → hash the token → look the card up → build the answer header.
//!
//! `cargo bench --bench hot_path`

use std::time::Duration;

use bytes::Bytes;
use cardgate::cache::CardCache;
use cardgate::config::CacheSection;
use cardgate::keys::TokenHasher;
use cardgate::normalise::Card;
use cardgate::parse::{route, Route};
use cardgate::respond::{header, Answer};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;

const TOKEN: &str = "3f6c1b0e-5a2d-4c8e-9f1a-7b2d4e6f8a0c";

fn request() -> RequestHeader {
    RequestHeader::build("GET", format!("/rest/chat/client/id/{TOKEN}").as_bytes(), None).unwrap()
}

fn cache_with_card(hasher: &TokenHasher, rt: &tokio::runtime::Runtime) -> CardCache {
    let cache = CardCache::new(
        &CacheSection {
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            max_size: 256 << 20,
            hash_key_env: None,
        },
        || {},
    );
    let body = serde_json::to_vec(&cardgate::mock::card(TOKEN.as_bytes())).unwrap();
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

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hasher = TokenHasher::random();
    let cache = cache_with_card(&hasher, &rt);
    let req = request();
    let key = hasher.cache_key(TOKEN.as_bytes());
    let never = || async { unreachable!("a hit never fetches") };

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
    c.bench_function("answer_header", |b| {
        b.iter(|| {
            let answer = Answer {
                status: 200,
                body: stored.body.clone(),
                x_cache: Some("HIT"),
                allow: None,
                close: false,
            };
            header(black_box(&answer)).unwrap()
        })
    });
    c.bench_function("whole_hit_path", |b| {
        b.iter(|| {
            let (_, r) = route(black_box(&req), 4096);
            let Ok(Route::Card(token)) = r else { unreachable!() };
            let key = hasher.cache_key(token.as_bytes());
            let fp = hasher.fingerprint(token.as_bytes());
            let stored = rt.block_on(cache.get_or_fetch(key, never)).0.unwrap();
            let answer = Answer {
                status: stored.status,
                body: stored.body.clone(),
                x_cache: Some("HIT"),
                allow: None,
                close: false,
            };
            (header(&answer).unwrap(), fp)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hit_path
}
criterion_main!(benches);
