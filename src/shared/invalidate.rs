//! Dropping cards everywhere: a purge or a clear on one replica removes the cards from
//! Redis and, through the invalidation channel (`<prefix>invalidate`, classic pub/sub),
//! from every replica's own cache. A clear walks every card key with `SCAN`: on a cluster,
//! on each master in turn.

use std::sync::LazyLock;

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Script;

use super::endpoint::Conn;
use super::{Query, Shared};
use crate::keys::CacheKey;

/// Drop the card KEYS[1] and publish ARGV[2] on ARGV[1]: one round trip, one slot (a
/// channel is not a key; on a cluster a `PUBLISH` reaches every node's subscribers).
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 0
",
    )
});

/// At most this many `SCAN` rounds of 1 000 keys per node.
const SCAN_ROUNDS: usize = 10_000;

impl Shared {
    pub(super) fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// Drop one card everywhere: from Redis, and (through the channel) from every
    /// replica's own cache.
    pub async fn purge(&self, id: &CacheKey) {
        let mut eval = PURGE.prepare_invoke();
        eval.key(self.key("card", id))
            .arg(self.channel())
            .arg(crate::keys::hex(id));
        let _: Option<i64> = self.query("invalidate", Query::Script(&eval)).await;
    }

    /// Have every replica drop its own copy of one card (a newer one is in Redis).
    pub async fn announce(&self, id: &CacheKey) {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg(crate::keys::hex(id));
        let _: Option<()> = self.query("invalidate", Query::Cmd(&publish)).await;
    }

    /// Drop every replica's own copies; and every card in Redis unless `keep` (gigma's
    /// cards are sessions: a clear must not log every user out).
    pub async fn clear(&self, keep: bool) {
        if !keep {
            match self.masters().await {
                Some(masters) => {
                    for node in masters {
                        self.delete_cards(Some(&node)).await;
                    }
                }
                None => self.delete_cards(None).await,
            }
        }
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg("*");
        let _: Option<()> = self.query("invalidate", Query::Cmd(&publish)).await;
    }

    /// On a cluster, its masters' addresses (from `CLUSTER NODES`); None on one server.
    async fn masters(&self) -> Option<Vec<(String, u16)>> {
        let conn = self
            .local_conn()
            .or_else(|| self.conn.load_full().map(|c| (*c).clone()))?;
        if !matches!(conn, Conn::Cluster(_)) {
            return None;
        }
        let nodes = redis::cmd("CLUSTER").arg("NODES").clone();
        let text: String = self
            .query_on(conn, "invalidate", Query::Cmd(&nodes))
            .await
            .unwrap_or_default();
        Some(cluster_masters(&text))
    }

    /// Delete every card on `node` (a cluster master), or on the one server.
    async fn delete_cards(&self, node: Option<&(String, u16)>) {
        let pattern = format!("{}card:*", self.prefix);
        let mut cursor: u64 = 0;
        for _ in 0..SCAN_ROUNDS {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let query = match node {
                Some((host, port)) => Query::OnNode(&scan, host, *port),
                None => Query::Cmd(&scan),
            };
            let Some((next, keys)) = self.query::<(u64, Vec<String>)>("invalidate", query).await else {
                break;
            };
            if !keys.is_empty() {
                // On a cluster the keys are sent to their slots' masters.
                let mut del = redis::cmd("DEL");
                del.arg(&keys);
                let _: Option<()> = self.query("invalidate", Query::Cmd(&del)).await;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
}

/// Run `cmd` on the node `host:port` of a cluster.
pub(super) async fn on_node(
    conn: &mut Conn,
    cmd: &redis::Cmd,
    host: &str,
    port: u16,
) -> redis::RedisResult<redis::Value> {
    match conn {
        Conn::Cluster(c) => {
            let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.to_string(),
                port,
            });
            c.route_command(cmd.clone(), at).await
        }
        Conn::Single(c) => cmd.query_async(c).await,
    }
}

/// The `host:port` of each master that `CLUSTER NODES` lists as up.
fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail") || *f == "noaddr") {
                return None;
            }
            let addr = addr.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_that_are_up_are_read_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922\n\
                     c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected\n\
                     d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected\n";
        assert_eq!(
            cluster_masters(nodes),
            vec![("127.0.0.1".to_string(), 7000), ("127.0.0.1".to_string(), 7001)]
        );
    }
}
