//! The set of nodes and the choice of one for a call.
//!
//! Calls go to the up node with the fewest calls under way; ties go round-robin (the scan
//! starts one node further on each call). A node whose ejection is over gets one request
//! a second as a probe. When no node is up at all (the circuit is open), no call is sent:
//! it is answered at once, and [`super::health::Watch`] probes the nodes, one a second
//! each, to find out when one is back.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::node::{now_ms, Node};

pub struct Nodes {
    list: ArcSwap<Vec<Arc<Node>>>,
    next: AtomicUsize,
}

/// The nodes one call has tried already (at most `retries` + 1, plus a hedge).
#[derive(Default)]
pub struct Tried {
    ids: [u64; 12],
    len: usize,
}

impl Tried {
    pub fn push(&mut self, id: u64) {
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = id;
            self.len = self.len.saturating_add(1);
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.ids.get(..self.len).is_some_and(|ids| ids.contains(&id))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Nodes {
    pub fn new(list: Vec<Arc<Node>>) -> Self {
        Nodes {
            list: ArcSwap::from_pointee(list),
            next: AtomicUsize::new(0),
        }
    }

    /// A new set (after a resolution changed it); the nodes that left.
    pub fn publish(&self, list: Vec<Arc<Node>>) -> Vec<Arc<Node>> {
        let old = self.list.swap(Arc::new(list.clone()));
        old.iter()
            .filter(|o| !list.iter().any(|n| n.id == o.id))
            .cloned()
            .collect()
    }

    /// The node for the next attempt of a call that has tried `tried`; None when none may
    /// be asked now. `may_probe`: the attempt may go to an ejected node whose time is up
    /// (its failure can be retried elsewhere).
    pub fn pick(&self, tried: &Tried, may_probe: bool) -> Option<Arc<Node>> {
        let list = self.list.load();
        // The clock is read only for a node that is not up.
        let mut now = None;
        let mut now = || *now.get_or_insert_with(now_ms);
        let start = self.next.fetch_add(1, Relaxed).checked_rem(list.len())?;
        let mut best: Option<&Arc<Node>> = None;
        let mut probe = None;
        for node in list.iter().skip(start).chain(list.iter().take(start)) {
            if tried.contains(node.id) {
                continue;
            }
            if node.up() {
                if best.is_none_or(|b| node.outstanding() < b.outstanding()) {
                    best = Some(node);
                }
            } else if may_probe && probe.is_none() && node.ejection_over(now()) {
                probe = Some(node);
            }
        }
        // None up: the circuit is open. A request probes an ejected node only while
        // another is up to take its retry.
        let best = best?;
        match probe {
            Some(p) if p.claim_probe(now()) => Some(p.clone()),
            _ => Some(best.clone()),
        }
    }

    /// The nodes that are not up and may be probed now (one probe a second each).
    pub fn due_for_probe(&self) -> Vec<Arc<Node>> {
        let now = now_ms();
        let list = self.list.load();
        list.iter()
            .filter(|n| !n.up() && n.claim_probe(now))
            .cloned()
            .collect()
    }
}
