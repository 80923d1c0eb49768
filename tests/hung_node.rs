//! A CRM node that takes connections and never answers (on a raw socket): two timeouts
//! eject it, and it stays out for `eject_for` although it passes every TCP check; once
//! that is over, one lookup a second is its probe, a failed probe doubles the ejection,
//! and only a probe that succeeds brings it back.

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, token, Gateway};

/// A CRM node on a raw socket that takes every connection and never answers on it, until
/// told to answer: then new connections get a card for every request.
struct Hung {
    addr: String,
    answering: Arc<AtomicBool>,
}

impl Hung {
    fn start() -> Hung {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let answering = Arc::new(AtomicBool::new(false));
        let answer = answering.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().map_while(Result::ok) {
                if answer.load(Ordering::SeqCst) {
                    std::thread::spawn(move || answer_cards(stream));
                } else {
                    held.push(stream);
                }
            }
        });
        Hung { addr, answering }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn up(&self, gw: &Gateway) -> f64 {
        gw.metric_now(&format!(
            "cardgate_upstream_node_up{{node=\"{0}@{0}\"}}",
            self.addr
        ))
    }
}

/// Answer every request on one connection with a card, until the peer leaves.
fn answer_cards(stream: TcpStream) {
    const CARD: &str = r#"{"client":{"id":"42"}}"#;
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while common::read_request(&mut reader).is_some() {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            CARD.len()
        );
        if out.write_all((head + CARD).as_bytes()).is_err() {
            return;
        }
    }
}

/// A gateway in front of `node` alone: lookups time out after 500 ms, two timeouts eject
/// it for `eject_for`, and TCP checks run every 200 ms (a hung node passes every one).
fn hung_gateway(node: &Hung, eject_for: &str) -> Gateway {
    let upstream = format!(
        "timeout = \"500ms\"\neject_after = 2\neject_for = \"{eject_for}\"\n\
         health = {{ interval = \"200ms\", timeout = \"100ms\", healthy_after = 1 }}"
    );
    let gw = Gateway::start(&node.url(), &[("upstream", &upstream)]);
    for _ in 0..2 {
        let r = gw.post_card(&token("hung"));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (504, "CRM_TIMEOUT"),
            "{}",
            r.body
        );
    }
    gw
}

/// Wait (bounded) for a `CRM node ejected` event for `length`.
fn ejected_for(gw: &Gateway, length: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        gw.events()
            .iter()
            .any(|e| e["msg"] == "CRM node ejected" && e["for"] == length)
    })
}

#[test]
fn a_node_that_takes_connections_and_never_answers_stays_ejected() {
    let node = Hung::start();
    let gw = hung_gateway(&node, "30s");
    assert!(ejected_for(&gw, "30s"), "{}", gw.proc.output());
    // For the rest of eject_for every lookup is answered at once, across several of the
    // once-a-second checks that lookups with no node up set off (each passes: the node
    // takes the connection).
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(2500) && n < 2000 {
        let asked = Instant::now();
        let r = gw.post_card(&token("hung"));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (503, "CRM_UNAVAILABLE"),
            "lookup {n}: {}",
            r.body
        );
        let waited = asked.elapsed();
        assert!(
            waited < Duration::from_millis(500),
            "lookup {n} waited {waited:?}"
        );
        n += 1;
    }
    assert_eq!(node.up(&gw), 0.0);
    assert_eq!(gw.metric_now("cardgate_upstream_ejections_total"), 1.0);
    assert!(
        !gw.proc.output().contains("CRM node back in"),
        "{}",
        gw.proc.output()
    );
}

#[test]
fn after_eject_for_one_real_call_probes_a_hung_node_and_only_a_success_brings_it_back() {
    let node = Hung::start();
    let gw = hung_gateway(&node, "1s");
    assert!(ejected_for(&gw, "1s"), "{}", gw.proc.output());
    // Once the second is over, one lookup is the node's probe: it waits out the timeout,
    // and the node is out for twice as long.
    let probed = eventually(Duration::from_secs(5), || {
        gw.post_card(&token("hung")).status == 504
    });
    assert!(probed, "{}", gw.proc.output());
    assert!(ejected_for(&gw, "2s"), "{}", gw.proc.output());
    assert_eq!(node.up(&gw), 0.0);
    // The node answers again: its next probe is a lookup that succeeds, and it is back.
    node.answering.store(true, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(10), || {
        gw.post_card(&token("back")).status == 200
    });
    assert!(back, "{}", gw.proc.output());
    let event = gw.wait_event("CRM node back in");
    assert_eq!(event["why"], "a request succeeded");
    assert_eq!(node.up(&gw), 1.0);
}
