//! The second-level card cache (`shared.cards = true`): an L1 miss reads Redis before the
//! CRM; what the CRM answered is written to both, for the same time (freshness plus the
//! stale window). Single flight across replicas: the first replica to miss takes a short
//! lock (`SET NX PX`, bounded by `upstream.timeout`) in the same script that found no
//! card, and writes the result and drops the lock in one pipeline; the others poll for its
//! result every few milliseconds (one pipelined `GET`+`EXISTS`), and call the CRM themselves
//! only if the lock goes without a result or the time runs out. A miss costs two round
//! trips, a hit one.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;

use super::{Query, Shared};
use crate::keys::CacheKey;

/// How often a replica that waits for another one's result looks.
const POLL: Duration = Duration::from_millis(10);

/// The card KEYS[1] if there is one ({1, card}); else take the lock KEYS[2] for ARGV[1] ms:
/// {2, nil} taken, {3, nil} another replica holds it.
static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local card = redis.call('GET', KEYS[1])
if card then return {1, card} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {2, false} end
return {3, false}
",
    )
});

/// What Redis holds for a card an L1 missed.
pub enum InRedis {
    /// Another replica's record, opened (None: it did not open, a miss).
    Found(Option<Vec<u8>>),
    /// None, and this replica now holds the lock: it calls the CRM and puts the result.
    Lead,
    /// None, and another replica is calling the CRM for it.
    Follow,
}

impl Shared {
    /// Look `id` up, taking its lock if there is no card: None if Redis cannot say.
    pub async fn card_lookup(&self, id: &CacheKey, hold: Duration) -> Option<InRedis> {
        let key = self.key("card", id);
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut eval = LOOKUP.prepare_invoke();
        eval.key(&key).key(self.key("lock", id)).arg(ms);
        let (what, sealed): (u8, Option<Vec<u8>>) = self.query("card_get", Query::Script(&eval)).await?;
        let lookup = match (what, sealed) {
            (1, Some(sealed)) => InRedis::Found(self.open(&key, &sealed)),
            (2, _) => InRedis::Lead,
            _ => InRedis::Follow,
        };
        let hit = matches!(lookup, InRedis::Found(Some(_)));
        self.stats
            .l2
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
        Some(lookup)
    }

    pub(super) fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let plain = self.seal.open(key.as_bytes(), sealed);
        if plain.is_none() {
            self.stats.undecryptable.inc();
        }
        plain
    }

    /// Keep `record` (if any) for `keep`, and drop the lock on `id` if `unlock`: one
    /// round trip.
    pub async fn card_put(&self, id: &CacheKey, record: Option<(&[u8], Duration)>, unlock: bool) {
        let key = self.key("card", id);
        let mut pipe = redis::pipe();
        if let Some((record, keep)) = record {
            let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
            if let Some(sealed) = self.seal.seal(key.as_bytes(), record).filter(|_| ms > 0) {
                pipe.cmd("SET").arg(&key).arg(sealed).arg("PX").arg(ms).ignore();
            }
        }
        if unlock {
            pipe.del(self.key("lock", id)).ignore();
        }
        if pipe.is_empty() {
            return;
        }
        let _: Option<()> = self.query("card_put", Query::Pipe(&pipe)).await;
    }

    /// Wait until the replica holding the lock on `id` stored its result (Some), or the
    /// lock went without one, or `until` (None: call the CRM yourself).
    pub async fn card_wait(&self, id: &CacheKey, until: Instant) -> Option<Vec<u8>> {
        self.stats.lock_waits.inc();
        let (card, lock) = (self.key("card", id), self.key("lock", id));
        let mut pipe = redis::pipe();
        pipe.get(&card).exists(&lock);
        while Instant::now() < until {
            tokio::time::sleep(POLL).await;
            let (sealed, locked): (Option<Vec<u8>>, bool) =
                self.query("card_get", Query::Pipe(&pipe)).await?;
            if let Some(sealed) = sealed {
                let opened = self.open(&card, &sealed);
                if opened.is_some() {
                    self.stats.l2.with_label_values(&["waited"]).inc();
                }
                return opened;
            }
            if !locked {
                return None;
            }
        }
        None
    }
}
