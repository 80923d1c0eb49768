//! The card cache over real HTTP: single-flight, negative entries, stale-if-error,
//! purge/clear, the memory bound, Cache-Control and shared hash keys.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{token, Gateway, Mock, Resp};

/// `n` requests for one token, released at once.
fn concurrent(gw: &Arc<Gateway>, tok: &str, n: usize) -> Vec<Resp> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (gw, barrier, tok) = (gw.clone(), barrier.clone(), tok.to_string());
            thread::spawn(move || {
                barrier.wait();
                gw.post_card(&tok)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn lookups(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!("cardgate_cache_lookups_total{{result=\"{result}\"}}"))
}

#[test]
fn fifty_concurrent_requests_for_one_token_make_one_upstream_call() {
    let mock = Mock::start();
    let gw = Arc::new(Gateway::start(&mock.url(), &[]));

    // Success: the CRM takes 500 ms; everyone gets the leader's card.
    let t = token("lag");
    let answers = concurrent(&gw, &t, 50);
    assert_eq!(mock.calls_for(&t).len(), 1);
    let expected = cardgate::testkit::mock::card(t.as_bytes());
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json(), expected);
    }
    let misses = answers
        .iter()
        .filter(|r| r.header("x-cache") == Some("MISS"))
        .count();
    assert!(misses >= 1, "the leader and the waiters answer MISS");
    assert_eq!(lookups(&gw, "miss"), 1.0);
    assert_eq!(lookups(&gw, "coalesced") + lookups(&gw, "hit"), 49.0);

    // Failure: the CRM outlives upstream.timeout (1 s); every waiter gets the same error.
    let t = token("slow");
    let answers = concurrent(&gw, &t, 50);
    assert_eq!(mock.calls_for(&t).len(), 1);
    for r in &answers {
        assert_eq!(r.status, 504);
        assert_eq!(r.error_code(), "CRM_TIMEOUT");
    }
    gw.assert_never_shown(&[&t]);
}

#[test]
fn not_found_is_cached_for_negative_ttl_and_failures_are_never_cached() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("cache", "negative_ttl = \"1s\"")]);

    for prefix in ["missing", "err200"] {
        let t = token(prefix);
        let r = gw.post_card(&t);
        assert_eq!((r.status, r.header("x-cache")), (404, Some("MISS")), "{}", r.body);
        let first = r.json();
        let r = gw.post_card(&t);
        assert_eq!((r.status, r.header("x-cache")), (404, Some("HIT")));
        assert_eq!(r.json(), first, "a negative hit answers the CRM's own error");
        assert_eq!(mock.calls_for(&t).len(), 1);
    }
    assert_eq!(lookups(&gw, "negative_hit"), 2.0);

    let t = token("missing");
    gw.post_card(&t);
    // The behaviour under test: the negative entry's 1 s lifetime running out.
    thread::sleep(Duration::from_millis(1300));
    let r = gw.post_card(&t);
    assert_eq!((r.status, r.header("x-cache")), (404, Some("MISS")));
    assert_eq!(mock.calls_for(&t).len(), 2, "the negative entry expired");

    for prefix in ["html", "broken", "noclient", "reset"] {
        let t = token(prefix);
        // (A reset on a reused connection is retried once, so count calls per request.)
        let a = gw.post_card(&t).error_code();
        let after_first = mock.calls_for(&t).len();
        let b = gw.post_card(&t).error_code();
        assert_eq!(a, b);
        assert!(
            mock.calls_for(&t).len() > after_first,
            "{prefix}: a failure was cached"
        );
    }
}

#[test]
fn stale_cards_stand_in_for_a_failing_crm_within_the_window() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("cache", "ttl = \"1s\"\nstale_if_error = \"3s\"")]);
    let t = token("stale");
    let card = cardgate::testkit::mock::card(t.as_bytes());

    let start = Instant::now();
    let r = gw.post_card(&t);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")));
    mock.fail("500");
    // The behaviour under test: the 1 s TTL running out.
    thread::sleep(Duration::from_millis(1200));

    // Past the TTL: the refresh fails, the stale card answers.
    let r = gw.post_card(&t);
    assert_eq!(
        (r.status, r.header("x-cache")),
        (200, Some("STALE")),
        "{}",
        r.body
    );
    assert_eq!(r.json(), card);
    assert_eq!(mock.calls_for(&t).len(), 2);

    // While it keeps failing, at most one refresh per second.
    let burst = Instant::now();
    for _ in 0..20 {
        let r = gw.post_card(&t);
        assert_eq!((r.status, r.header("x-cache")), (200, Some("STALE")));
    }
    let allowed = 2 + burst.elapsed().as_secs() as usize;
    assert!(mock.calls_for(&t).len() <= allowed, "the CRM was hammered");
    assert!(lookups(&gw, "stale") >= 21.0);

    // The behaviour under test: the one-second spacing of refreshes.
    thread::sleep(Duration::from_millis(1100));
    let before = mock.calls_for(&t).len();
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("STALE"));
    assert_eq!(
        mock.calls_for(&t).len(),
        before + 1,
        "a refresh is tried again after a second"
    );

    // Past TTL + stale_if_error the card is gone: the CRM's failure shows.
    // The behaviour under test: the stale window (TTL + stale_if_error) running out.
    let end = Duration::from_millis(1000 + 3000 + 300);
    thread::sleep(end.saturating_sub(start.elapsed()));
    let r = gw.post_card(&t);
    assert_eq!((r.status, r.error_code().as_str()), (502, "CRM_ERROR"));

    mock.fail("off");
    let r = gw.post_card(&t);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")));
    gw.assert_never_shown(&[&t]);
}

#[test]
fn purge_and_clear_drop_cards() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = token("purge");

    gw.post_card(&t);
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("HIT"));
    let r = gw.admin("POST", "/cache/purge", &[("token", &t)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["purged"], 1);
    let r = gw.admin("POST", "/cache/purge", &[("token", &t)]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "NOT_CACHED"));
    let r = gw.admin("POST", "/cache/purge", &[]);
    assert_eq!((r.status, r.error_code().as_str()), (400, "BAD_REQUEST"));
    assert_eq!(gw.admin("GET", "/cache/purge", &[]).status, 405);

    assert_eq!(gw.post_card(&t).header("x-cache"), Some("MISS"));
    assert_eq!(
        mock.calls_for(&t).len(),
        2,
        "after a purge the CRM is asked again"
    );

    let others: Vec<String> = (0..3).map(|_| token("clear")).collect();
    for o in &others {
        gw.post_card(o);
    }
    let r = gw.admin("POST", "/cache/clear", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["cleared"], 4);
    for o in &others {
        assert_eq!(gw.post_card(o).header("x-cache"), Some("MISS"));
    }
    assert_eq!(gw.metric("cardgate_cache_entries"), 3.0);
    gw.assert_never_shown(&[&t]);
}

#[test]
fn max_size_bounds_the_weighted_size() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("cache", "max_size = \"64KiB\"")]);
    let card_len = serde_json::to_vec(&cardgate::testkit::mock::card(token("size").as_bytes()))
        .unwrap()
        .len() as u64;
    let per_entry = cardgate::testkit::entry_weight(card_len as usize);
    let n = 3 * 65536 / per_entry as usize;
    for _ in 0..n {
        assert_eq!(gw.post_card(&token("size")).status, 200);
    }
    let bytes = gw.metric("cardgate_cache_weighted_bytes");
    let entries = gw.metric("cardgate_cache_entries");
    assert!(bytes <= 65536.0, "weighted size {bytes} over max_size");
    assert!(entries >= 1.0 && entries < n as f64, "{entries} of {n}");
    assert!(
        (bytes - entries * per_entry as f64).abs() <= entries * 8.0,
        "weight = allocation + overhead"
    );
    assert!(gw.metric("cardgate_cache_evictions_total") >= 1.0);
}

/// Ask for each token once on one keep-alive connection, 100 requests in flight at a
/// time; the `X-Cache` of each answer.
fn ask_each(conn: &mut common::Raw, tokens: &[String]) -> Vec<String> {
    let mut seen = Vec::new();
    for batch in tokens.chunks(100) {
        let mut wire = Vec::new();
        for t in batch {
            wire.extend_from_slice(
                format!("GET /rest/chat/client/id/{t} HTTP/1.1\r\nHost: cardgate\r\n\r\n").as_bytes(),
            );
        }
        conn.send(&wire);
        for _ in batch {
            let r = conn.read().expect("an answer");
            assert_eq!(r.status, 200, "{}", r.body);
            seen.push(r.header("x-cache").unwrap_or("").to_string());
        }
    }
    seen
}

#[test]
fn a_full_cache_keeps_new_cards_for_their_second_request() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("cache", "max_size = \"2MiB\"")]);
    let mut conn = common::Raw::connect(&gw.addr);
    let old: Vec<String> = (0..5_000).map(|_| token("fill")).collect();
    ask_each(&mut conn, &old);
    assert!(
        gw.metric("cardgate_cache_evictions_total") >= 1.0,
        "the cache is full"
    );
    // New chat sessions: each client's card is asked for once, then again later.
    let new: Vec<String> = (0..300).map(|_| token("new")).collect();
    assert!(ask_each(&mut conn, &new).iter().all(|x| x == "MISS"));
    let again = ask_each(&mut conn, &new);
    let hits = again.iter().filter(|x| *x == "HIT").count();
    assert_eq!(hits, 300, "second requests that found their card");
}

#[test]
fn cache_control_from_the_crm_is_obeyed() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);

    let t = token("nostore");
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("MISS"));
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("MISS"));
    assert_eq!(mock.calls_for(&t).len(), 2, "no-store was cached");

    let t = token("maxage1");
    gw.post_card(&t);
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("HIT"));
    // The behaviour under test: the CRM's max-age=1 running out.
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("MISS"));
    assert_eq!(mock.calls_for(&t).len(), 2, "max-age=1 lowered the 60 s TTL");
}

#[test]
fn instances_with_one_hash_key_agree_on_fingerprints() {
    let mock = Mock::start();
    let extra = [("cache", "hash_key_env = \"CARDGATE_TEST_HASH_KEY\"")];
    let env = [("CARDGATE_TEST_HASH_KEY", "a shared secret of enough length")];
    let a = Gateway::start_with_env(&mock.url(), &extra, &env);
    let b = Gateway::start_with_env(&mock.url(), &extra, &env);
    let c = Gateway::start(&mock.url(), &[]);
    let t = token("shared");
    let fp = |gw: &Gateway| {
        gw.post_card(&t);
        let line = || {
            gw.proc
                .output()
                .lines()
                .find(|l| l.contains("\"tokenFp\""))
                .map(str::to_string)
        };
        assert!(
            common::eventually(Duration::from_secs(10), || line().is_some()),
            "an access log line"
        );
        let v: serde_json::Value = serde_json::from_str(&line().unwrap()).unwrap();
        v["tokenFp"].as_str().unwrap().to_string()
    };
    let (fa, fb, fc) = (fp(&a), fp(&b), fp(&c));
    assert_eq!(fa.len(), 8);
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);
    for gw in [&a, &b, &c] {
        gw.assert_never_shown(&[&t, env[0].1]);
    }
}

#[test]
fn a_hot_card_near_its_ttl_is_refreshed_once_in_the_background_and_nobody_waits() {
    let mock = Mock::start();
    let gw = Arc::new(Gateway::start(
        &mock.url(),
        &[("cache", "ttl = \"3s\"\nrefresh_ahead = 0.5")],
    ));
    let tok = token("refresh");
    assert_eq!(gw.get_card(&tok).header("x-cache"), Some("MISS"));
    // Keep asking, ten at a time, until the CRM has been asked a second time: from half
    // the TTL on, a hit starts one background refresh; every answer stays a hit.
    let mut answers = 0;
    let refreshed = common::eventually(Duration::from_secs(10), || {
        for r in concurrent(&gw, &tok, 10) {
            assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")), "{}", r.body);
            answers += 1;
        }
        mock.calls_for(&tok).len() == 2
    });
    assert!(refreshed, "no refresh after {answers} hits");
    for r in concurrent(&gw, &tok, 10) {
        assert_eq!(r.header("x-cache"), Some("HIT"));
    }
    assert_eq!(mock.calls_for(&tok).len(), 2, "exactly one background call");
    assert_eq!(gw.metric("cardgate_refresh_ahead_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(lookups(&gw, "miss"), 1.0);
}
