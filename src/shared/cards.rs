//! The second-level card cache (`shared.cards = true`): an L1 miss reads Redis before the
//! CRM; what the CRM answered is written to both, for the same time (freshness plus the
//! stale window). A card is a hash: `v` the sealed record, `f` the end of its freshness on
//! Redis's own clock, so that the scripts judge freshness the same for every replica.
//! Single flight across replicas: the first replica to find no fresh card takes a short
//! lock (`SET NX PX` with a value of its own, held at most `upstream.timeout` plus
//! `queue_timeout`) in the same script, then writes the result and drops its own lock in
//! one more; the others poll every few milliseconds until a fresh card is there, and call
//! the CRM themselves only if the lock goes without one or the time runs out. A miss costs
//! two round trips, a hit one.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;

use super::{Query, Record, Shared};
use crate::keys::CacheKey;

/// How often a replica that waits for another one's result looks.
const POLL: Duration = Duration::from_millis(10);

/// Redis's clock in milliseconds as `now`; and the card KEYS[1] if it is fresh: {1, card}.
const FRESH: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
if fresh > now then return {1, redis.call('HGET', KEYS[1], 'v')} end
";

/// A fresh card, else take the lock KEYS[2] (value ARGV[1]) for ARGV[2] ms: {2, nil}
/// taken, {3, nil} another replica holds it.
static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FRESH}if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {{2, false}} end\nreturn {{3, false}}\n"
    ))
});

/// A fresh card, else {3, nil} while the lock KEYS[2] is held, {2, nil} once it is gone.
static POLL_CARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FRESH}if redis.call('EXISTS', KEYS[2]) == 1 then return {{3, false}} end\nreturn {{2, false}}\n"
    ))
});

/// Keep the sealed card ARGV[1] (unless empty), fresh for ARGV[2] ms and kept for ARGV[3];
/// drop the lock KEYS[2] if it still holds this replica's value ARGV[4].
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
if ARGV[1] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', string.format('%.0f', now + tonumber(ARGV[2])))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return 0
",
    )
});

/// What Redis holds for a card an L1 missed.
pub enum InRedis {
    /// Another replica's fresh record, opened (None: it did not open, a miss).
    Found(Option<Record<Vec<u8>>>),
    /// None fresh, and this replica now holds the lock (its value): it calls the CRM and
    /// puts the result.
    Lead(String),
    /// None fresh, and another replica is calling the CRM for it.
    Follow,
}

impl Shared {
    /// Look `id` up, taking its lock if there is no fresh card: None if Redis cannot say.
    pub async fn card_lookup(&self, id: &CacheKey) -> Option<InRedis> {
        let key = self.key("card", id);
        let token = self.lock_value();
        let mut eval = LOOKUP.prepare_invoke();
        eval.key(&key)
            .key(self.key("lock", id))
            .arg(&token)
            .arg(super::ms(self.hold));
        let (what, sealed): (u8, Option<Vec<u8>>) = self.query("card_get", Query::Script(&eval)).await?;
        let lookup = match (what, sealed) {
            (1, Some(sealed)) => InRedis::Found(self.open(&key, sealed).and_then(Record::decode)),
            (2, _) => InRedis::Lead(token),
            _ => InRedis::Follow,
        };
        let hit = matches!(lookup, InRedis::Found(Some(_)));
        if hit {
            &self.stats.l2_hit
        } else {
            &self.stats.l2_miss
        }
        .inc();
        Some(lookup)
    }

    pub(super) fn open(&self, key: &str, sealed: Vec<u8>) -> Option<Vec<u8>> {
        let plain = self.seal.open(key.as_bytes(), sealed);
        if plain.is_none() {
            self.stats.undecryptable.inc();
        }
        plain
    }

    /// Keep `record` (if any), and drop the lock on `id` if it still holds `lock`: one
    /// round trip.
    pub async fn card_put(&self, id: &CacheKey, record: Option<&Record<&[u8]>>, lock: Option<&str>) {
        let key = self.key("card", id);
        let record = record.filter(|r| !r.keep().is_zero());
        let sealed = record.and_then(|r| {
            self.seal
                .seal_with(key.as_bytes(), r.len(), |out| r.encode_into(out))
        });
        if sealed.is_none() && lock.is_none() {
            return;
        }
        let (fresh, keep) = record.map_or((0, 0), |r| (super::ms(r.fresh), super::ms(r.keep())));
        let mut eval = PUT.prepare_invoke();
        eval.key(&key)
            .key(self.key("lock", id))
            .arg(sealed.unwrap_or_default())
            .arg(fresh)
            .arg(keep)
            .arg(lock.unwrap_or(""));
        let _: Option<i64> = self.query("card_put", Query::Script(&eval)).await;
    }

    /// Wait until the replica holding the lock on `id` stored a fresh card (Some), or the
    /// lock went without one, or as long as a lock is held (None: call the CRM yourself).
    pub async fn card_wait(&self, id: &CacheKey) -> Option<Record<Vec<u8>>> {
        self.stats.lock_waits.inc();
        let until = Instant::now().checked_add(self.hold)?;
        let (card, lock) = (self.key("card", id), self.key("lock", id));
        let mut eval = POLL_CARD.prepare_invoke();
        eval.key(&card).key(&lock);
        while Instant::now() < until {
            tokio::time::sleep(POLL).await;
            let (what, sealed): (u8, Option<Vec<u8>>) = self.query("card_get", Query::Script(&eval)).await?;
            match (what, sealed) {
                (1, Some(sealed)) => {
                    let opened = self.open(&card, sealed).and_then(Record::decode);
                    if opened.is_some() {
                        self.stats.l2_waited.inc();
                    }
                    return opened;
                }
                (3, _) => {}
                _ => return None,
            }
        }
        None
    }
}
