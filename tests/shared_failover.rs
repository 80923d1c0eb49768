//! Replicas on a Redis that Sentinel keeps available (a master and a replica under three
//! real `redis-sentinel`s, with passwords for both): the gateways find the master through
//! the Sentinels, follow a manual failover (the former master, alive, is a replica now and
//! answers writes `READONLY`) and a killed master, under load, without failing a request,
//! within `down-after-milliseconds` plus 5 s; what is written after a switch is shared
//! again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::redis::{resp, Redis, MASTER};
use common::{eventually, token, Gateway, Mock};

const KEY_ENV: (&str, &str) = (
    "CARDGATE_SHARED_KEY",
    "0123456789abcdef0123456789abcdef-test-secret",
);
const DOWN_AFTER: Duration = Duration::from_millis(1000);

fn replica(mock: &Mock, redis: &Redis) -> Gateway {
    let shared = format!(
        "{}\ncards = true\nencryption_key_env = \"{}\"\ntimeout = \"200ms\"",
        redis.toml, KEY_ENV.0
    );
    let mut envs = vec![KEY_ENV];
    envs.extend(redis.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let gw = Gateway::start_with_env(
        &mock.url(),
        &[("shared", shared.as_str()), ("upstream", "timeout = \"3s\"")],
        &envs,
    );
    let connected = eventually(Duration::from_secs(10), || {
        gw.metric_now("cardgate_shared_up") == 1.0
    });
    assert!(connected, "{}", gw.proc.output());
    gw
}

/// Requests on every gateway, each for a new token, until stopped: the statuses that were
/// not 200.
fn load<'a>(
    s: &'a std::thread::Scope<'a, '_>,
    gws: &'a [&'a Gateway],
    stop: &'a AtomicBool,
    sent: &'a AtomicUsize,
) -> Vec<std::thread::ScopedJoinHandle<'a, Vec<u16>>> {
    gws.iter()
        .map(|gw| {
            s.spawn(move || {
                let mut failed = Vec::new();
                // Bounded: the waits below end long before.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let status = gw.get_card(&token("load")).status;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != 200 {
                        failed.push(status);
                    }
                }
                failed
            })
        })
        .collect()
}

/// A card A fetched is served by B without a CRM call.
fn assert_shared(mock: &Mock, a: &Gateway, b: &Gateway) {
    let t = token("after");
    assert_eq!(a.get_card(&t).status, 200);
    assert_eq!(b.get_card(&t).status, 200);
    assert_eq!(mock.calls_for(&t).len(), 1, "shared again");
}

#[test]
fn the_gateways_follow_sentinel_failovers_without_failing_a_request() {
    let sentinel_password = "sentinel-pw-5d1c";
    let redis = Redis::sentinel("data-pw-93ab", sentinel_password, DOWN_AFTER);
    let mock = Mock::start();
    let a = replica(&mock, &redis);
    let b = replica(&mock, &redis);
    assert_shared(&mock, &a, &b);
    let first = redis.master().unwrap().addr.clone();
    let followed = |n: f64| {
        [&a, &b].iter().all(|g| {
            g.metric_now("cardgate_shared_failovers_total") >= n && g.metric_now("cardgate_shared_up") == 1.0
        })
    };

    // A manual failover: the master stays up as a replica of the other node.
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let gws = [&a, &b];
    let (took, failed) = std::thread::scope(|s| {
        let workers = load(s, &gws, &stop, &sent);
        eventually(Duration::from_secs(5), || sent.load(Ordering::Relaxed) > 20);
        let sentinel = &redis.sentinels[0].addr;
        resp(
            sentinel,
            Some(sentinel_password),
            &["SENTINEL", "FAILOVER", MASTER],
        )
        .unwrap();
        let start = Instant::now();
        let done = eventually(Duration::from_secs(20), || followed(1.0));
        let took = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let failed: Vec<u16> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        assert!(done, "not followed:\n{}", a.proc.output());
        (took, failed)
    });
    assert!(failed.is_empty(), "requests failed during the switch: {failed:?}");
    let second = redis.master().unwrap().addr.clone();
    assert_ne!(first, second);
    assert!(
        took <= DOWN_AFTER + Duration::from_secs(5),
        "followed after {took:?}"
    );
    assert_shared(&mock, &a, &b);
    let event = a.wait_event("Redis master changed");
    assert_eq!(event["master"], second.as_str());

    // The master killed: once the Sentinels agree it is down, they promote the replica.
    stop.store(false, Ordering::Relaxed);
    let killed = redis.nodes.iter().position(|n| n.addr == second).unwrap();
    let (took, failed) = std::thread::scope(|s| {
        let workers = load(s, &gws, &stop, &sent);
        let before = sent.load(Ordering::Relaxed);
        eventually(Duration::from_secs(5), || {
            sent.load(Ordering::Relaxed) > before + 20
        });
        // Killed through its pid: the node is owned by `redis`, which outlives the scope.
        let pid = redis.nodes[killed].pid().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success());
        let start = Instant::now();
        let done = eventually(DOWN_AFTER + Duration::from_secs(10), || followed(2.0));
        let took = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let failed: Vec<u16> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        assert!(done, "not followed:\n{}", a.proc.output());
        (took, failed)
    });
    assert!(failed.is_empty(), "requests failed during the switch: {failed:?}");
    assert!(
        took <= DOWN_AFTER + Duration::from_secs(5),
        "followed {took:?} after the kill"
    );
    assert_eq!(redis.master().unwrap().addr, first);
    assert_shared(&mock, &a, &b);
    for gw in [&a, &b] {
        gw.assert_never_shown(&["data-pw-93ab", sentinel_password]);
    }
}
