//! The second-level card cache (`shared.cards = true`): an L1 miss reads Redis before the
//! CRM; what the CRM answered is written to both, for the same time (freshness plus the
//! stale window). Single flight across replicas: the first replica to miss takes a short
//! lock (`SET NX PX`, bounded by `upstream.timeout`); the others poll for its result every
//! few milliseconds (one pipelined `GET`+`EXISTS`), and call the CRM themselves only if
//! the lock goes without a result or the time runs out.

use std::time::{Duration, Instant};

use super::{Query, Shared};
use crate::keys::CacheKey;

/// How often a replica that waits for another one's result looks.
const POLL: Duration = Duration::from_millis(10);

impl Shared {
    /// The record another replica stored for `id`, opened.
    pub async fn card_get(&self, id: &CacheKey) -> Option<Vec<u8>> {
        let key = self.key("card", id);
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let sealed: Option<Vec<u8>> = self.query("card_get", Query::Cmd(&get)).await?;
        let found = sealed.and_then(|s| self.open(&key, &s));
        let result = if found.is_some() { "hit" } else { "miss" };
        self.stats.l2.with_label_values(&[result]).inc();
        found
    }

    pub(super) fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let plain = self.seal.open(key.as_bytes(), sealed);
        if plain.is_none() {
            self.stats.undecryptable.inc();
        }
        plain
    }

    /// Keep `record` for `keep`.
    pub async fn card_put(&self, id: &CacheKey, record: &[u8], keep: Duration) {
        let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return;
        }
        let key = self.key("card", id);
        let Some(sealed) = self.seal.seal(key.as_bytes(), record) else {
            return;
        };
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(sealed).arg("PX").arg(ms);
        let _: Option<()> = self.query("card_put", Query::Cmd(&set)).await;
    }

    /// Take the lock on `id` for at most `hold`: Some(true) if this replica leads,
    /// Some(false) if another does, None if Redis cannot say.
    pub async fn card_lock(&self, id: &CacheKey, hold: Duration) -> Option<bool> {
        let mut set = redis::cmd("SET");
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        set.arg(self.key("lock", id)).arg(1).arg("NX").arg("PX").arg(ms);
        let taken: Option<String> = self.query("card_lock", Query::Cmd(&set)).await?;
        Some(taken.is_some())
    }

    pub async fn card_unlock(&self, id: &CacheKey) {
        let mut del = redis::cmd("DEL");
        del.arg(self.key("lock", id));
        let _: Option<()> = self.query("card_lock", Query::Cmd(&del)).await;
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
