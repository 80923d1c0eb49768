//! Several replicas on one real `redis-server` (no persistence, an ephemeral loopback
//! port): a login storm spread over three replicas makes one CRM call; a card (or a "not
//! found") one replica fetched is served by another without one; a purge or clear on one
//! replica is gone on the others; a value that does not open is a counted miss; Redis
//! killed mid-test fails no request (cards and the guard go on locally, the fallback is
//! counted, `/readyz` stays 200, `cardgate_shared_up` says 0), and once it is back it is
//! shared again; the guard's limits hold exactly across replicas, also at once; a gigma
//! search and its session continue on another replica, survive a clear and a new replica,
//! and a purge ends them everywhere; what Redis holds contains neither a token, a step id,
//! nor a card's names or phone.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::{eventually, token, Gateway, Mock};

const KEY_ENV: (&str, &str) = (
    "CARDGATE_SHARED_KEY",
    "0123456789abcdef0123456789abcdef-test-secret",
);

fn replica(mock: &Mock, redis: &Redis) -> Gateway {
    replica_with(mock, redis, true, &[], &[])
}

/// A replica on `redis`; `cards`: the second-level card cache; `extra` sections and
/// `env` as for [`Gateway::start_with_env`].
fn replica_with(
    mock: &Mock,
    redis: &Redis,
    cards: bool,
    extra: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Gateway {
    let shared = format!(
        "{}\ncards = {cards}\nencryption_key_env = \"{}\"\ntimeout = \"200ms\"",
        redis.toml, KEY_ENV.0
    );
    let mut sections = vec![("shared", shared.as_str()), ("upstream", "timeout = \"3s\"")];
    sections.extend_from_slice(extra);
    let mut envs = vec![KEY_ENV];
    envs.extend(redis.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    envs.extend_from_slice(env);
    let gw = Gateway::start_with_env(&mock.url(), &sections, &envs);
    let connected = eventually(Duration::from_secs(10), || {
        gw.metric_now("cardgate_shared_up") == 1.0
    });
    assert!(connected, "{}", gw.proc.output());
    gw
}

#[test]
fn a_login_storm_over_three_replicas_makes_one_crm_call() {
    login_storm(&Redis::start());
}

fn login_storm(redis: &Redis) {
    let mock = Mock::start();
    let short = [("cache", "ttl = \"1s\"")];
    let replicas: Vec<Gateway> = (0..3)
        .map(|_| replica_with(&mock, redis, true, &short, &[]))
        .collect();
    // The mock answers `lag` tokens after 500 ms: every request arrives while the first waits.
    let t = token("lag-storm");
    let storm = |n: usize| -> Vec<u16> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (gw, t) = (&replicas[i % 3], &t);
                    s.spawn(move || gw.get_card(t).status)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let answers = storm(300);
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(mock.calls_for(&t).len(), 1, "one CRM call for the whole fleet");

    // Past its freshness (on Redis's clock) the card is still in Redis for its stale
    // window: the next storm takes the lock all the same and makes one call.
    let card = redis
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.contains(":card:"))
        .unwrap();
    let redis_ms = || {
        let t = redis.command(&["TIME"]).unwrap();
        let n = |b: &[u8]| String::from_utf8_lossy(b).parse::<u64>().unwrap();
        n(&t[0]) * 1000 + n(&t[1]) / 1000
    };
    let fresh_until = || {
        let f = redis.command(&["HGET", &card, "f"]).unwrap().concat();
        String::from_utf8_lossy(&f).parse::<u64>().unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || redis_ms() > fresh_until()));
    let answers = storm(90);
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(
        mock.calls_for(&t).len(),
        2,
        "one more CRM call once it went stale"
    );
    let waited: f64 = replicas
        .iter()
        .map(|g| g.metric("cardgate_shared_lock_waits_total"))
        .sum();
    assert!(waited >= 1.0, "another replica waited for the lock holder");
    for gw in &replicas {
        gw.assert_never_shown(&[&t]);
        let errors = common::redis::shared_errors(gw);
        assert_eq!(errors, 0.0, "every Redis answer understood");
    }
}

#[test]
fn a_card_is_shared_a_purge_reaches_every_replica_and_redis_holds_nothing_in_clear() {
    shared_card_and_purge(&Redis::start());
}

fn shared_card_and_purge(redis: &Redis) {
    let mock = Mock::start();
    let a = replica(&mock, redis);
    let b = replica(&mock, redis);
    let t = token("shared");
    assert_eq!(a.get_card(&t).status, 200);
    let r = b.get_card(&t);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), cardgate::testkit::mock::card(t.as_bytes()));
    assert_eq!(mock.calls_for(&t).len(), 1, "B answered from Redis");
    assert_eq!(b.metric("cardgate_shared_cards_total{result=\"hit\"}"), 1.0);

    // What Redis holds: keyed hashes and sealed values only.
    let stored = redis.dump();
    assert!(!stored.is_empty());
    for (key, value) in &stored {
        assert!(!key.contains(&t), "token in a key");
        for clear in [t.as_bytes(), b"Ivanov", b"+79221234567", b"1973-09-02"] {
            assert!(
                !value.windows(clear.len()).any(|w| w == clear),
                "{key} holds {:?}",
                String::from_utf8_lossy(clear)
            );
        }
    }

    // A purge on B: gone from Redis and from A's own cache.
    assert_eq!(b.admin("POST", "/cache/purge", &[("token", &t)]).status, 200);
    let gone = eventually(Duration::from_secs(3), || {
        a.get_card(&t).header("x-cache") == Some("MISS")
    });
    assert!(gone, "A still answers the purged card from its cache");
    assert!(a.metric("cardgate_shared_invalidations_total") >= 1.0);

    // A "not found" is shared too, for its negative TTL.
    let missing = token("missing-shared");
    assert_eq!(a.get_card(&missing).status, 404);
    assert_eq!(b.get_card(&missing).status, 404);
    assert_eq!(mock.calls_for(&missing).len(), 1, "B knew it from Redis");

    // A value that does not open is a miss, counted: a replica asks the CRM instead.
    let cards = |r: &Redis| -> Vec<String> {
        r.dump()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.contains(":card:"))
            .collect()
    };
    let before = cards(redis);
    let bent = token("bent");
    assert_eq!(a.get_card(&bent).status, 200);
    let key = cards(redis)
        .into_iter()
        .find(|k| !before.contains(k))
        .expect("its key");
    redis.command(&["HSET", &key, "v", "not a sealed value"]).unwrap();
    let c = replica(&mock, redis);
    let r = c.get_card(&bent);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), cardgate::testkit::mock::card(bent.as_bytes()));
    assert_eq!(c.metric("cardgate_shared_undecryptable_total"), 1.0);
    assert_eq!(mock.calls_for(&bent).len(), 2);

    // A clear on A: nothing left in Redis, and B's own copies dropped.
    assert_eq!(b.get_card(&t).status, 200);
    assert_eq!(
        b.get_card(&t).header("x-cache"),
        Some("HIT"),
        "B holds its own copy"
    );
    assert_eq!(a.admin("POST", "/cache/clear", &[]).status, 200);
    assert!(cards(redis).is_empty(), "{:?}", cards(redis));
    let dropped = eventually(Duration::from_secs(3), || {
        b.get_card(&t).header("x-cache") == Some("MISS")
    });
    assert!(dropped, "B still answers from its cache after a clear");
}

#[test]
fn without_redis_every_request_is_answered_and_it_is_shared_again_when_back() {
    let mock = Mock::start();
    let mut redis = Redis::start();
    let addr = redis.addr().to_string();
    let a = replica(&mock, &redis);
    let b = replica(&mock, &redis);

    redis.stop();
    for _ in 0..10 {
        assert_eq!(a.get_card(&token("noredis")).status, 200);
    }
    let down = eventually(Duration::from_secs(5), || {
        a.metric_now("cardgate_shared_up") == 0.0
    });
    assert!(down);
    let errors: f64 = ["card_get", "card_put"]
        .iter()
        .map(|op| a.metric_now(&format!("cardgate_shared_errors_total{{op=\"{op}\"}}")))
        .sum();
    assert!(errors >= 10.0, "every fallback counted: {errors}");
    assert_eq!(a.admin("GET", "/readyz", &[]).status, 200, "it can still serve");
    a.wait_event("Redis unavailable");
    // The guard counts locally meanwhile.
    let r = a.search(SEARCH, &[("client", "someone@example.org")], false);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(a.metric_now("cardgate_shared_errors_total{op=\"guard\"}") >= 1.0);

    // Back on its port: used again without a restart.
    let _redis = Redis::start_at(&addr).expect("the port is free again");
    let up = eventually(Duration::from_secs(10), || {
        a.metric_now("cardgate_shared_up") == 1.0 && b.metric_now("cardgate_shared_up") == 1.0
    });
    assert!(up);
    let t = token("back");
    assert_eq!(a.get_card(&t).status, 200);
    assert_eq!(b.get_card(&t).status, 200);
    assert_eq!(mock.calls_for(&t).len(), 1, "shared again");
}

const SEARCH: &str = "/rest/chat/client/search/";

fn searches(mock: &Mock) -> Vec<serde_json::Value> {
    mock.journal()
        .into_iter()
        .filter(|e| e["path"] == SEARCH)
        .collect()
}

#[test]
fn the_guard_allows_exactly_its_limits_across_replicas_also_at_once() {
    exact_guard(&Redis::start());
}

fn exact_guard(redis: &Redis) {
    let mock = Mock::start();
    let limits = [("search", "max_attempts = 3\nmax_starts_per_hour = 4")];
    let replicas = [
        replica_with(&mock, redis, false, &limits, &[]),
        replica_with(&mock, redis, false, &limits, &[]),
    ];
    // First steps for one client, in several notations, over both replicas at once.
    let notations = ["+7 (999) 555-66-77", "8 999 555 66 77", "79995556677"];
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (gw, client) = (&replicas[i % 2], notations[i % 3]);
                s.spawn(move || gw.search(SEARCH, &[("client", client)], false).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 8, "{statuses:?}");
    assert_eq!(searches(&mock).len(), 4, "first steps that reached the CRM");

    // Wrong codes for one step, at once over both replicas: exactly max_attempts reach it.
    let client = "someone@example.org";
    let step = replicas[0].search(SEARCH, &[("client", client)], false).json()["stepId"]
        .as_str()
        .unwrap()
        .to_string();
    let before = searches(&mock).len();
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (gw, step) = (&replicas[i % 2], &step);
                s.spawn(move || {
                    let params = [
                        ("client", client),
                        ("stepId", step.as_str()),
                        ("secretWord", "0000"),
                    ];
                    gw.search(SEARCH, &params, false).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(searches(&mock).len() - before, 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|s| **s == 429).count(), 7, "{codes:?}");
    // The validator step 1 set on replica A holds on B too.
    let r = replicas[1].search(
        SEARCH,
        &[("client", client), ("stepId", &step), ("secretWord", "12ab")],
        false,
    );
    assert_ne!(r.status, 200);
    assert_eq!(searches(&mock).len() - before, 3);
    // Nothing of the client's in clear in Redis.
    for (key, value) in redis.dump() {
        for clear in ["999555", "someone", &step] {
            assert!(!key.contains(clear), "{key}");
            assert!(!String::from_utf8_lossy(&value).contains(clear), "{key}");
        }
    }
}

#[test]
fn a_gigma_search_and_its_session_continue_on_another_replica_and_end_everywhere() {
    gigma_sessions(&Redis::start());
}

fn gigma_sessions(redis: &Redis) {
    let app = ("GIGMA_APP_TOKEN", "gigma-app-token-for-tests-5b1f");
    let mock = Mock::start_dialect("gigma", &[app]);
    let gigma = [("upstream", "dialect = \"gigma\"")];
    let a = replica_with(&mock, redis, false, &gigma, &[app]);
    let b = replica_with(&mock, redis, false, &gigma, &[app]);
    let client = "+7 999 123-45-67";

    // Step 1 on A, step 2 on B.
    let r = a.search(SEARCH, &[("client", client)], false);
    assert_eq!(r.status, 200, "{}", r.body);
    let step = r.json()["stepId"].as_str().unwrap().to_string();
    let code = cardgate::testkit::mock::GIGMA_PASSWORD;
    let r = b.search(
        SEARCH,
        &[("client", client), ("stepId", &step), ("secretWord", code)],
        true,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_string();

    // The session B logged in answers on A.
    let card = a.get_card(&token);
    assert_eq!(card.status, 200, "{}", card.body);
    assert_eq!(b.get_card(&token).json(), card.json());

    // Neither a clear nor a replica started afresh (an upgrade) logs anybody out.
    let heard = a.metric("cardgate_shared_invalidations_total");
    let hits = a.metric("cardgate_shared_cards_total{result=\"hit\"}");
    assert_eq!(b.admin("POST", "/cache/clear", &[]).status, 200);
    let reloaded = eventually(Duration::from_secs(3), || {
        a.metric_now("cardgate_shared_invalidations_total") > heard
    });
    assert!(reloaded, "A heard of the clear");
    assert_eq!(a.get_card(&token).json(), card.json());
    assert_eq!(
        a.metric("cardgate_shared_cards_total{result=\"hit\"}"),
        hits + 1.0,
        "A dropped its copy and read the session back from Redis"
    );
    assert_eq!(b.get_card(&token).json(), card.json());
    let c = replica_with(&mock, redis, false, &gigma, &[app]);
    assert_eq!(c.get_card(&token).json(), card.json());

    // A purge on A ends it everywhere at once.
    assert_eq!(a.admin("POST", "/cache/purge", &[("token", &token)]).status, 200);
    let ended = eventually(Duration::from_secs(3), || b.get_card(&token).status == 401);
    assert!(ended, "B still answers the ended session");
    assert_eq!(a.get_card(&token).error_code(), "SESSION_UNKNOWN");
    for gw in [&a, &b] {
        gw.assert_never_shown(&[&token, &step]);
    }
    for (key, value) in redis.dump() {
        for clear in [token.as_str(), "79991234567", &step] {
            assert!(
                !key.contains(clear) && !String::from_utf8_lossy(&value).contains(clear),
                "{key}"
            );
        }
    }
}

/// The card keys in `redis`.
fn card_keys(redis: &Redis) -> Vec<String> {
    redis
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains(":card:"))
        .collect()
}

#[test]
fn on_a_cluster_the_shared_behaviours_hold_and_a_moved_slot_is_followed() {
    let cluster = Redis::cluster();
    login_storm(&cluster);
    shared_card_and_purge(&cluster);
    exact_guard(&cluster);
    gigma_sessions(&cluster);

    // A card's slot moves to another master after both replicas knew the slot map: B is
    // answered `MOVED` and follows it, and A's next write lands on the new owner.
    let mock = Mock::start();
    let a = replica(&mock, &cluster);
    let b = replica(&mock, &cluster);
    let before = card_keys(&cluster);
    let t = token("moved");
    assert_eq!(a.get_card(&t).status, 200);
    let key = card_keys(&cluster)
        .into_iter()
        .find(|k| !before.contains(k))
        .expect("its key");
    let (from, to) = cluster.move_slot_of(&key);
    assert_ne!(from, to);
    let r = b.get_card(&t);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), Some("MISS"), "B had no copy of its own");
    assert_eq!(mock.calls_for(&t).len(), 1, "B read it from its new node");
    assert_eq!(b.metric("cardgate_shared_cards_total{result=\"hit\"}"), 1.0);
    assert_eq!(a.admin("POST", "/cache/purge", &[("token", &t)]).status, 200);
    assert!(!card_keys(&cluster).contains(&key), "purged on its new node");
    for gw in [&a, &b] {
        let errors = common::redis::shared_errors(gw);
        assert_eq!(errors, 0.0, "every command reached its slot");
    }
}
