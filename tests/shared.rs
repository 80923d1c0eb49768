//! Several replicas on one real `redis-server` (no persistence, an ephemeral loopback
//! port): a login storm spread over three replicas makes one CRM call; a card one replica
//! fetched is served by another without one; a purge on one replica is gone on the
//! others; Redis killed mid-test fails no request (the fallback is counted, `/readyz`
//! stays 200, `cardgate_shared_up` says 0), and once it is back it is shared again; what
//! Redis holds contains neither a token nor a card's names or phone.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, token, Gateway, Mock};

const KEY_ENV: (&str, &str) = (
    "CARDGATE_SHARED_KEY",
    "0123456789abcdef0123456789abcdef-test-secret",
);

struct Redis {
    addr: String,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            if let Some(r) = Self::start_at(&addr) {
                return r;
            }
        }
        panic!("redis-server did not start (is Debian's redis-server installed?)");
    }

    fn start_at(addr: &str) -> Option<Redis> {
        let port = addr.rsplit(':').next().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let mut r = Redis {
            addr: addr.to_string(),
            child,
        };
        let up = eventually(Duration::from_secs(5), || r.command(&["PING"]).is_some());
        if up {
            Some(r)
        } else {
            r.stop();
            None
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One command over RESP: the bulk strings of the answer (flattened), None if Redis
    /// does not answer.
    fn command(&self, args: &[&str]) -> Option<Vec<Vec<u8>>> {
        let mut conn = TcpStream::connect(&self.addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        conn.write_all(&req).ok()?;
        let mut r = BufReader::new(conn);
        let mut out = Vec::new();
        read_value(&mut r, &mut out)?;
        Some(out)
    }

    /// Every key under the gateways' prefix, with its value.
    fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let keys = self.command(&["KEYS", "cardgate:*"]).unwrap();
        keys.into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .filter_map(|k| {
                let v = self.command(&["GET", &k])?.into_iter().next()?;
                Some((k, v))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_value(r: &mut impl BufRead, out: &mut Vec<Vec<u8>>) -> Option<()> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let (kind, rest) = line.trim_end().split_at(1);
    match kind {
        "+" | ":" => out.push(rest.as_bytes().to_vec()),
        "-" => return None,
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n >= 0 {
                let mut buf = vec![0u8; usize::try_from(n).ok()? + 2];
                std::io::Read::read_exact(r, &mut buf).ok()?;
                buf.truncate(buf.len() - 2);
                out.push(buf);
            }
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            for _ in 0..n.max(0) {
                read_value(r, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

fn replica(mock: &Mock, redis: &Redis) -> Gateway {
    let shared = format!(
        "url = \"redis://{}/0\"\ncards = true\nencryption_key_env = \"{}\"\ntimeout = \"200ms\"",
        redis.addr, KEY_ENV.0
    );
    let gw = Gateway::start_with_env(
        &mock.url(),
        &[("shared", &shared), ("upstream", "timeout = \"3s\"")],
        &[KEY_ENV],
    );
    let connected = eventually(Duration::from_secs(10), || {
        gw.metric_now("cardgate_shared_up") == 1.0
    });
    assert!(connected, "{}", gw.proc.output());
    gw
}

#[test]
fn a_login_storm_over_three_replicas_makes_one_crm_call() {
    let mock = Mock::start();
    let redis = Redis::start();
    let replicas: Vec<Gateway> = (0..3).map(|_| replica(&mock, &redis)).collect();
    // The mock answers `lag` tokens after 500 ms: every request arrives while the first waits.
    let t = token("lag-storm");
    let answers: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..300)
            .map(|i| {
                let (gw, t) = (&replicas[i % 3], &t);
                s.spawn(move || gw.get_card(t).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(mock.calls_for(&t).len(), 1, "one CRM call for the whole fleet");
    let waited: f64 = replicas
        .iter()
        .map(|g| g.metric("cardgate_shared_lock_waits_total"))
        .sum();
    assert!(waited >= 1.0, "another replica waited for the lock holder");
    for gw in &replicas {
        gw.assert_never_shown(&[&t]);
    }
}

#[test]
fn a_card_is_shared_a_purge_reaches_every_replica_and_redis_holds_nothing_in_clear() {
    let mock = Mock::start();
    let redis = Redis::start();
    let a = replica(&mock, &redis);
    let b = replica(&mock, &redis);
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
}

#[test]
fn without_redis_every_request_is_answered_and_it_is_shared_again_when_back() {
    let mock = Mock::start();
    let mut redis = Redis::start();
    let addr = redis.addr.clone();
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
    let errors: f64 = ["card_get", "card_lock", "card_put"]
        .iter()
        .map(|op| a.metric_now(&format!("cardgate_shared_errors_total{{op=\"{op}\"}}")))
        .sum();
    assert!(errors >= 10.0, "every fallback counted: {errors}");
    assert_eq!(a.admin("GET", "/readyz", &[]).status, 200, "it can still serve");
    a.wait_event("Redis unavailable");

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
