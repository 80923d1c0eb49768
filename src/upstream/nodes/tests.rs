//! The choice of a node for each attempt, on a paused clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::advance;

use super::{Nodes, Tried};
use crate::upstream::node::tests::{call, nodes, ok, timeout};
use crate::upstream::node::{Clock, Node};

/// The set of `n` nodes made with `upstream`, and those nodes.
fn set(
    n: u16,
    upstream: &str,
) -> (
    Nodes,
    Vec<Arc<Node>>,
    crate::config::Config,
    crate::upstream::stats::Stats,
) {
    let clock = Clock::start();
    let (list, cfg, stats) = nodes(n, upstream, clock);
    (Nodes::new(list.clone(), clock), list, cfg, stats)
}

fn picked(set: &Nodes, tried: &Tried, may_probe: bool) -> Option<u64> {
    set.pick(tried, may_probe).map(|n| n.id)
}

#[tokio::test(start_paused = true)]
async fn calls_go_to_the_node_with_the_fewest_under_way() {
    let (set, list, _, _) = set(3, "");
    let _busy = [list[0].busy(), list[0].busy(), list[1].busy()];
    for _ in 0..4 {
        assert_eq!(picked(&set, &Tried::default(), true), Some(list[2].id));
    }
    let _more = [list[2].busy(), list[2].busy()];
    for _ in 0..4 {
        assert_eq!(picked(&set, &Tried::default(), true), Some(list[1].id));
    }
}

#[tokio::test(start_paused = true)]
async fn ties_go_round_robin() {
    let (set, list, _, _) = set(3, "");
    let ids: Vec<_> = (0..6)
        .map(|_| picked(&set, &Tried::default(), true).unwrap())
        .collect();
    let order: Vec<_> = list.iter().chain(&list).map(|n| n.id).collect();
    assert_eq!(ids, order);
}

#[tokio::test(start_paused = true)]
async fn a_call_tries_each_node_once() {
    let (set, list, _, _) = set(3, "");
    let mut tried = Tried::default();
    tried.push(list[0].id);
    tried.push(list[2].id);
    for _ in 0..3 {
        assert_eq!(picked(&set, &tried, true), Some(list[1].id));
    }
    tried.push(list[1].id);
    assert_eq!(picked(&set, &tried, true), None);
}

#[tokio::test(start_paused = true)]
async fn with_no_node_up_the_circuit_is_open_and_each_node_is_checked_once_a_second() {
    let (set, list, _, _) = set(2, "");
    for node in &list {
        node.checked(false, (1, 1), "refused");
    }
    assert_eq!(picked(&set, &Tried::default(), true), None);
    assert_eq!(set.due_for_probe().len(), 2);
    assert!(set.due_for_probe().is_empty());
    advance(Duration::from_secs(1)).await;
    assert_eq!(set.due_for_probe().len(), 2);

    list[1].probe_passed();
    assert_eq!(picked(&set, &Tried::default(), true), Some(list[1].id));
}

#[tokio::test(start_paused = true)]
async fn an_ejected_node_whose_time_is_up_gets_one_call_a_second_as_its_probe() {
    let (set, list, cfg, stats) = set(2, "eject_after = 1\neject_for = \"10s\"");
    let (ejected, up) = (&list[0], &list[1]);
    call(ejected, timeout(), &cfg, &stats);
    let any = Tried::default();
    assert_eq!(picked(&set, &any, true), Some(up.id));
    advance(Duration::from_secs(10)).await;
    // Only a call that can still be retried elsewhere is a probe.
    assert_eq!(picked(&set, &any, false), Some(up.id));
    assert_eq!(picked(&set, &any, true), Some(ejected.id));
    assert_eq!(picked(&set, &any, true), Some(up.id));
    advance(Duration::from_secs(1)).await;
    let probe = set.pick(&any, true).unwrap();
    assert_eq!(probe.id, ejected.id);
    call(&probe, ok(), &cfg, &stats);
    assert!(ejected.up());
}

#[tokio::test(start_paused = true)]
async fn with_no_node_up_a_real_call_probes_a_node_no_tcp_check_can_bring_back() {
    let (set, list, cfg, stats) = set(1, "eject_after = 1\neject_for = \"10s\"");
    let hung = &list[0];
    call(hung, timeout(), &cfg, &stats);
    let any = Tried::default();
    assert_eq!(picked(&set, &any, false), None);
    advance(Duration::from_secs(10)).await;
    assert!(
        set.due_for_probe().is_empty(),
        "a TCP check would not vouch for it"
    );
    assert_eq!(picked(&set, &any, false), Some(hung.id));
    assert_eq!(picked(&set, &any, false), None);
    advance(Duration::from_secs(1)).await;
    assert_eq!(picked(&set, &any, false), Some(hung.id));
}
