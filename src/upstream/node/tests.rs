//! Ejection and health-check thresholds of one node, on a paused clock: `advance` moves
//! the nodes' clock exactly, so no test waits.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::advance;

use super::{Clock, Ejection, Node, Target};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::failure::Failure;
use crate::upstream::stats::Stats;
use crate::upstream::UpstreamAnswer;

/// `n` nodes of one URL on `clock`, with `upstream` (lines of `[upstream]`).
pub(in crate::upstream) fn nodes(n: u16, upstream: &str, clock: Clock) -> (Vec<Arc<Node>>, Config, Stats) {
    let cfg = Config::from_toml(&format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{upstream}\n")).unwrap();
    let target = Arc::new(Target::new(0, cfg.upstream_urls().unwrap().remove(0)));
    let stats = Stats::new(&Metrics::new("iq"));
    let list = (0..n)
        .map(|i| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 10 + i));
            Arc::new(Node::new(target.clone(), addr, &cfg, &stats, clock))
        })
        .collect();
    (list, cfg, stats)
}

/// One call to `node` that ends in `result`.
pub(in crate::upstream) fn call(
    node: &Node,
    result: Result<UpstreamAnswer, Failure>,
    cfg: &Config,
    stats: &Stats,
) {
    let busy = node.busy();
    node.report(&busy, &result, Ejection::of(cfg), stats);
}

pub(in crate::upstream) fn ok() -> Result<UpstreamAnswer, Failure> {
    Ok(UpstreamAnswer::json(200, "{}"))
}

/// The call's budget ran out: the node took the connection and did not answer.
pub(in crate::upstream) fn timeout() -> Result<UpstreamAnswer, Failure> {
    Err(Failure::timeout())
}

/// The node did not take the connection.
fn refused() -> Result<UpstreamAnswer, Failure> {
    Err(Failure::connect_io(&io::Error::from(
        io::ErrorKind::ConnectionRefused,
    )))
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn eject_after_failures_in_a_row_take_a_node_out() {
    let (nodes, cfg, stats) = nodes(1, "eject_after = 3\neject_for = \"10s\"", Clock::start());
    let node = &nodes[0];
    call(node, timeout(), &cfg, &stats);
    call(node, refused(), &cfg, &stats);
    call(node, ok(), &cfg, &stats); // the count starts again
    call(node, timeout(), &cfg, &stats);
    call(node, refused(), &cfg, &stats);
    // A timeout in what an earlier attempt left of the budget does not count.
    for _ in 0..5 {
        call(node, Err(Failure::timeout().counted(false)), &cfg, &stats);
    }
    assert!(node.up());
    assert_eq!(stats.ejections.get(), 0);
    call(node, timeout(), &cfg, &stats);
    assert!(!node.up());
    assert_eq!(stats.ejections.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_ejection_doubles_while_its_probes_fail_up_to_five_minutes() {
    let clock = Clock::start();
    let (nodes, cfg, stats) = nodes(1, "eject_after = 1\neject_for = \"60s\"", clock);
    let node = &nodes[0];
    call(node, timeout(), &cfg, &stats);
    for secs in [60, 120, 240, 300, 300] {
        advance(Duration::from_secs(secs) - MS).await;
        assert!(!node.ejection_over(clock.now()), "out for {secs} s");
        advance(MS).await;
        assert!(node.ejection_over(clock.now()), "out for {secs} s only");
        assert!(!node.up());
        call(node, timeout(), &cfg, &stats); // its probe fails
    }
    assert_eq!(stats.ejections.get(), 6);
}

#[tokio::test(start_paused = true)]
async fn calls_under_way_at_the_ejection_neither_eject_again_nor_bring_back() {
    let clock = Clock::start();
    let (nodes, cfg, stats) = nodes(1, "eject_after = 1\neject_for = \"10s\"", clock);
    let node = &nodes[0];
    let ejection = Ejection::of(&cfg);
    let (first, second, third) = (node.busy(), node.busy(), node.busy());
    node.report(&first, &timeout(), ejection, &stats);
    node.report(&second, &timeout(), ejection, &stats);
    node.report(&third, &ok(), ejection, &stats);
    assert!(!node.up());
    assert_eq!(stats.ejections.get(), 1);
    advance(Duration::from_secs(10)).await;
    assert!(
        node.ejection_over(clock.now()),
        "the ejection was not made longer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_has_one_probe_a_second() {
    let clock = Clock::start();
    let (nodes, _, _) = nodes(1, "", clock);
    let node = &nodes[0];
    assert!(node.claim_probe(clock.now()));
    assert!(!node.claim_probe(clock.now()));
    advance(Duration::from_secs(1) - MS).await;
    assert!(!node.claim_probe(clock.now()));
    advance(MS).await;
    assert!(node.claim_probe(clock.now()));
}

#[tokio::test(start_paused = true)]
async fn health_checks_flip_a_node_after_their_thresholds() {
    let (nodes, cfg, _) = nodes(
        1,
        "health = { healthy_after = 2, unhealthy_after = 3 }",
        Clock::start(),
    );
    let node = &nodes[0];
    let after = (
        cfg.upstream.health.healthy_after,
        cfg.upstream.health.unhealthy_after,
    );
    node.checked(false, after, "refused");
    node.checked(false, after, "refused");
    node.checked(true, after, ""); // the count starts again
    node.checked(false, after, "refused");
    node.checked(false, after, "refused");
    assert!(node.up());
    node.checked(false, after, "refused");
    assert!(!node.up());
    node.checked(true, after, "");
    assert!(!node.up());
    node.checked(true, after, "");
    assert!(node.up());
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_passes_brings_a_node_back() {
    let (nodes, cfg, stats) = nodes(2, "eject_after = 1\neject_for = \"10s\"", Clock::start());
    let (hung, refusing) = (&nodes[0], &nodes[1]);
    call(hung, timeout(), &cfg, &stats);
    advance(Duration::from_secs(10)).await;
    call(hung, ok(), &cfg, &stats); // the call made after eject_for is its probe
    assert!(hung.up());

    // With no node up, a passing check is a probe: a node it vouches for is back at once.
    call(refusing, refused(), &cfg, &stats);
    refusing.probe_passed();
    assert!(refusing.up());
    call(hung, timeout(), &cfg, &stats);
    hung.probe_passed();
    assert!(!hung.up(), "a TCP connect says nothing of a node that timed out");
}

#[tokio::test(start_paused = true)]
async fn a_tcp_check_does_not_end_an_ejection_for_timeouts() {
    let ejected = "eject_after = 1\neject_for = \"10s\"";
    let (tcp_checked, cfg, stats) = nodes(2, ejected, Clock::start());
    let (hung, refusing) = (&tcp_checked[0], &tcp_checked[1]);
    call(hung, timeout(), &cfg, &stats);
    call(refusing, refused(), &cfg, &stats);
    let after = (1, 1);
    refusing.checked(true, after, "");
    assert!(!refusing.up(), "not before eject_for is over");
    advance(Duration::from_secs(10)).await;
    for _ in 0..3 {
        hung.checked(true, after, "");
        refusing.checked(true, after, "");
    }
    assert!(!hung.up() && !hung.check_vouches());
    assert!(refusing.up());

    // An HTTP check is an answer: it ends any ejection.
    let http = format!("{ejected}\nhealth = {{ path = \"/health\" }}");
    let (http_checked, cfg, stats) = nodes(1, &http, Clock::start());
    let hung = &http_checked[0];
    call(hung, timeout(), &cfg, &stats);
    advance(Duration::from_secs(10)).await;
    hung.checked(true, after, "");
    assert!(hung.up());
}
