//! The card cache's lookups, single-flight, stale-if-error and negative entries, on a
//! paused clock.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

fn cfg(ttl_ms: u64, neg_ms: u64, stale_ms: u64) -> CacheSection {
    CacheSection {
        ttl: Duration::from_millis(ttl_ms),
        negative_ttl: Duration::from_millis(neg_ms),
        stale_if_error: Duration::from_millis(stale_ms),
        refresh_ahead: 0.0,
        max_size: 1 << 20,
        hash_key_env: None,
        hash_key_file: None,
    }
}

fn card(body: &'static str) -> Result<Card, GatewayError> {
    Ok(Card {
        body: Bytes::from_static(body.as_bytes()),
        max_age: None,
        no_store: false,
    })
}

#[test]
fn freshness_arithmetic() {
    let t0 = Instant::now() + Duration::from_secs(1);
    let s = Stored::new(
        200,
        b"{}",
        false,
        t0,
        Duration::from_secs(10),
        Duration::from_secs(5),
        Duration::ZERO,
    );
    assert_eq!((s.status(), s.body(), s.error_code()), (200, &b"{}"[..], None));
    assert!(s.is_fresh(t0 + Duration::from_secs(9)));
    assert!(!s.is_fresh(t0 + Duration::from_secs(10)));
    assert!(s.may_serve_stale(t0 + Duration::from_secs(14)));
    assert!(!s.may_serve_stale(t0 + Duration::from_secs(15)));
    let body = GatewayError::CrmRejected {
        status: 404,
        code: "1001".into(),
        text: "Client not found".into(),
    }
    .body();
    let n = Stored::new(
        404,
        &body,
        true,
        t0,
        Duration::from_secs(10),
        Duration::from_secs(5),
        Duration::ZERO,
    );
    assert_eq!(n.error_code().as_deref(), Some("1001"));
    assert!(!n.may_serve_stale(t0 + Duration::from_secs(11)));
    let t1 = t0 + Duration::from_secs(11);
    assert!(!s.refresh_failed_recently(t1));
    s.note_failed_refresh(t1);
    assert!(s.refresh_failed_recently(t1 + Duration::from_millis(999)));
    assert!(!s.refresh_failed_recently(t1 + STALE_RETRY_INTERVAL));
}

#[test]
fn a_refresh_ahead_is_claimed_once_a_second_while_due() {
    let t0 = Instant::now() + Duration::from_secs(1);
    let ten = Duration::from_secs(10);
    let s = Stored::new(200, b"{}", false, t0, ten, ten, Duration::from_secs(4));
    assert!(!s.claim_refresh(t0 + Duration::from_secs(5)), "not due yet");
    let due = t0 + Duration::from_secs(7);
    assert!(s.claim_refresh(due));
    assert!(!s.claim_refresh(due), "one hit claims it");
    assert!(!s.claim_refresh(due + Duration::from_millis(999)));
    // The refresh failed (the entry is still this one): tried again a second later.
    assert!(s.claim_refresh(due + STALE_RETRY_INTERVAL));
    assert!(!s.claim_refresh(t0 + ten), "expired: no longer ahead");
}

#[tokio::test(start_paused = true)]
async fn hit_after_miss_and_max_age_lowers_ttl() {
    let c = CardCache::new(&cfg(60_000, 1000, 0), || {});
    let (r, how) = c.get_or_fetch([1; 32], || async { card("{}") }).await;
    assert_eq!((r.unwrap().status(), how), (200, CacheResult::Miss));
    let (_, how) = c
        .get_or_fetch([1; 32], || async { panic!("no call on a hit") })
        .await;
    assert_eq!(how, CacheResult::Hit);
    let short = || async {
        Ok(Card {
            body: Bytes::from_static(b"{}"),
            max_age: Some(Duration::ZERO),
            no_store: false,
        })
    };
    c.get_or_fetch([2; 32], short).await.0.unwrap();
    assert!(!c.contains(&[2; 32]));
}

#[tokio::test(start_paused = true)]
async fn a_lead_reads_the_cache_again_only_after_a_store_in_its_slot() {
    let c = CardCache::new(&cfg(60_000, 1000, 0), || {});
    let key = [9; 32];
    // A lookup saw nothing; then a lead for the key stored its card and left.
    let seen = c.stores_of(&key);
    let (r, _) = c.get_or_fetch(key, || async { card("{\"v\":1}") }).await;
    r.unwrap();
    assert_ne!(c.stores_of(&key), seen);
    let found = c
        .lead(key, None, seen, || async {
            panic!("the card stored since the lookup is used")
        })
        .await
        .unwrap();
    assert_eq!(found.0.body(), b"{\"v\":1}");
    // Nothing stored in the slot since the lookup: the lead asks the CRM.
    let calls = AtomicUsize::new(0);
    let fetched = c
        .lead(key, None, c.stores_of(&key), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            card("{\"v\":2}")
        })
        .await
        .unwrap();
    assert_eq!(
        (calls.load(Ordering::SeqCst), fetched.0.body()),
        (1, &b"{\"v\":2}"[..])
    );
    // Another key of the same slot counts as a store in it.
    let mut other = key;
    other[5] = 1;
    let before = c.stores_of(&key);
    c.get_or_fetch(other, || async { card("{}") }).await.0.unwrap();
    assert_ne!(c.stores_of(&key), before);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_fetch() {
    let c = Arc::new(CardCache::new(&cfg(60_000, 1000, 0), || {}));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, calls) = (c.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_fetch([7; 32], || async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(GatewayError::CrmTimeout)
            })
            .await
        }));
    }
    let mut coalesced = 0;
    for t in tasks {
        let (r, how) = t.await.unwrap();
        assert_eq!(r.unwrap_err(), GatewayError::CrmTimeout);
        coalesced += usize::from(how == CacheResult::Coalesced);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(coalesced, 49);
    assert!(!c.contains(&[7; 32]), "failures are never stored");
}

#[tokio::test(start_paused = true)]
async fn stale_is_served_on_failure_and_retries_are_spaced() {
    let c = CardCache::new(&cfg(20, 0, 60_000), || {});
    c.get_or_fetch([3; 32], || async { card("{\"v\":1}") })
        .await
        .0
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (r, how) = c
        .get_or_fetch([3; 32], || async { Err(GatewayError::CrmError { status: 500 }) })
        .await;
    assert_eq!((r.unwrap().body(), how), (&b"{\"v\":1}"[..], CacheResult::Stale));
    let (_, how) = c
        .get_or_fetch([3; 32], || async { panic!("no refresh within a second") })
        .await;
    assert_eq!(how, CacheResult::Stale);
    // A request error (not an upstream failure) is not covered by stale.
    let c2 = CardCache::new(&cfg(20, 0, 60_000), || {});
    c2.get_or_fetch([4; 32], || async { card("{}") }).await.0.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (r, _) = c2
        .get_or_fetch([4; 32], || async { Err(GatewayError::BadRequest("x")) })
        .await;
    assert!(r.is_err());
}

#[tokio::test(start_paused = true)]
async fn negative_answers_are_stored_briefly() {
    let c = CardCache::new(&cfg(60_000, 40, 60_000), || {});
    let not_found = || async {
        Err(GatewayError::CrmRejected {
            status: 404,
            code: "1001".into(),
            text: "Client not found".into(),
        })
    };
    let (r, how) = c.get_or_fetch([5; 32], not_found).await;
    assert_eq!((r.unwrap().status(), how), (404, CacheResult::Miss));
    let (_, how) = c.get_or_fetch([5; 32], || async { panic!("negative hit") }).await;
    assert_eq!(how, CacheResult::NegativeHit);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (r, how) = c.get_or_fetch([5; 32], || async { card("{}") }).await;
    assert_eq!((r.unwrap().status(), how), (200, CacheResult::Miss));
}
