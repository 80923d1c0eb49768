//! The set of nodes and the choice of one for a call.
//!
//! Calls go to the up node with the fewest calls under way; ties go round-robin (the scan
//! starts one node further on each call). A node whose ejection is over gets one request
//! a second as a probe. When no node is up at all (the circuit is open), no call is sent:
//! it is answered at once, and [`super::health::Watch`] checks the nodes, one a second
//! each, to find out when one is back — except a node whose ejection no check can end
//! (see [`Node::check_vouches`]): once its `eject_for` is over, one request a second is
//! sent to it as its probe, there being no other node to lose the time on.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::node::{Clock, Node};

pub struct Nodes {
    list: ArcSwap<Vec<Arc<Node>>>,
    next: AtomicUsize,
    /// The clock the nodes were made with.
    clock: Clock,
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
    /// The set of `list`, whose nodes keep time by `clock`.
    pub fn new(list: Vec<Arc<Node>>, clock: Clock) -> Self {
        Nodes {
            list: ArcSwap::from_pointee(list),
            next: AtomicUsize::new(0),
            clock,
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

    /// Every node, in order.
    pub fn all(&self) -> Arc<Vec<Arc<Node>>> {
        self.list.load_full()
    }

    /// The node for the next attempt of a call that has tried `tried`; None when none may
    /// be asked now. `may_probe`: while another node is up, the attempt may go to an
    /// ejected node whose time is up (its failure can be retried elsewhere).
    pub fn pick(&self, tried: &Tried, may_probe: bool) -> Option<Arc<Node>> {
        let list = self.list.load();
        // The clock is read only for a node that is not up.
        let mut now = None;
        let mut now = || *now.get_or_insert_with(|| self.clock.now());
        let start = self.next.fetch_add(1, Relaxed).checked_rem(list.len())?;
        let mut best: Option<&Arc<Node>> = None;
        // An ejected node whose time is up, and one of those that no check can bring back.
        let mut probe = None;
        let mut unvouched = None;
        for node in list.iter().skip(start).chain(list.iter().take(start)) {
            if tried.contains(node.id) {
                continue;
            }
            if node.up() {
                if best.is_none_or(|b| node.outstanding() < b.outstanding()) {
                    best = Some(node);
                }
            } else if (probe.is_none() || unvouched.is_none()) && node.ejection_over(now()) {
                probe = probe.or(Some(node));
                if !node.check_vouches() {
                    unvouched = unvouched.or(Some(node));
                }
            }
        }
        match best {
            Some(best) => match probe {
                Some(p) if may_probe && p.claim_probe(now()) => Some(p.clone()),
                _ => Some(best.clone()),
            },
            // None up: the circuit is open. The checks look for a node that is back,
            // but only a real call can bring back one they cannot vouch for.
            None => unvouched.filter(|p| p.claim_probe(now())).cloned(),
        }
    }

    /// The nodes that are not up, that a passing check would bring back, and that may be
    /// checked now (one probe a second each).
    pub fn due_for_probe(&self) -> Vec<Arc<Node>> {
        let now = self.clock.now();
        let list = self.list.load();
        list.iter()
            .filter(|n| !n.up() && n.check_vouches() && n.claim_probe(now))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;
