//! Search state every replica sees: the brute-force guard's counters and the gigma
//! dialect's open steps.
//!
//! A counter is a Redis hash (`n`: units taken, `v`: the step's validator pattern) that one
//! Lua script checks and increments atomically, so N replicas admit exactly the configured
//! number, also under concurrency: a unit is taken when the attempt is admitted and given
//! back by a second script when the outcome says nothing about the client. Starts keep a
//! fixed window from their first unit; steps expire after `search.step_ttl` idle. Open
//! gigma steps (stepId → phone) are sealed values with the step's TTL. Every key is a keyed
//! hash ([`crate::keys`]), never a step id, phone or token.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{ms, Query, Shared};
use crate::keys::CacheKey;

/// Take a unit if fewer than ARGV[1] are taken; expire after ARGV[2] ms (always when
/// ARGV[3] is 1, else only when the counter is new). Returns {admitted, validator}.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local v = redis.call('HGET', KEYS[1], 'v')
if n >= tonumber(ARGV[1]) then return {0, v} end
redis.call('HINCRBY', KEYS[1], 'n', 1)
if ARGV[3] == '1' or n == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, v}
",
    )
});

/// Give a unit back (never below 0).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if n > 0 then redis.call('HINCRBY', KEYS[1], 'n', -1) end
return 0
",
    )
});

/// The guard's two counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// First steps per client identifier: a fixed window from the first.
    Start,
    /// Failed attempts per step (and its validator): expires when idle.
    Step,
}

impl Counter {
    /// The key kind (`<prefix><kind>:<hex>`).
    pub fn kind(self) -> &'static str {
        match self {
            Counter::Start => "start",
            Counter::Step => "step",
        }
    }
}

impl Shared {
    /// Take one unit of the `counter` of `id` if fewer than `max` are taken, kept for
    /// `ttl`: Some((admitted, the step's validator pattern)), None if Redis cannot say.
    pub async fn reserve(
        &self,
        counter: Counter,
        id: &CacheKey,
        max: u32,
        ttl: Duration,
    ) -> Option<(bool, Option<String>)> {
        let mut eval = RESERVE.prepare_invoke();
        eval.key(self.key(counter.kind(), id))
            .arg(max)
            .arg(ms(ttl))
            .arg(u8::from(counter == Counter::Step));
        let (admitted, validator): (i64, Option<String>) = self.query("guard", Query::Script(&eval)).await?;
        Some((admitted == 1, validator))
    }

    /// Give back the unit an admission took.
    pub async fn release(&self, counter: Counter, id: &CacheKey) {
        let mut eval = RELEASE.prepare_invoke();
        eval.key(self.key(counter.kind(), id));
        let _: Option<i64> = self.query("guard", Query::Script(&eval)).await;
    }

    /// Remember the validator of step `id` (its counter kept).
    pub async fn set_validator(&self, id: &CacheKey, pattern: Option<&str>, ttl: Duration) {
        let key = self.key(Counter::Step.kind(), id);
        let mut pipe = redis::pipe();
        match pattern {
            Some(p) => pipe.hset(&key, "v", p).ignore(),
            None => pipe.hdel(&key, "v").ignore(),
        };
        pipe.pexpire(&key, i64::try_from(ms(ttl)).unwrap_or(i64::MAX))
            .ignore();
        let _: Option<()> = self.query("guard", Query::Pipe(&pipe)).await;
    }

    /// Forget the `kind` entry of `id`; a failure is counted under `op` ([`super::stats::OPS`]).
    pub async fn forget(&self, op: &'static str, kind: &str, id: &CacheKey) {
        let mut del = redis::cmd("DEL");
        del.arg(self.key(kind, id));
        let _: Option<()> = self.query(op, Query::Cmd(&del)).await;
    }

    /// Keep a sealed `value` as the `kind` entry of `id` for `ttl`.
    pub async fn put_sealed(&self, kind: &str, id: &CacheKey, value: &[u8], ttl: Duration) {
        let key = self.key(kind, id);
        let Some(sealed) = self.seal.seal(key.as_bytes(), value) else {
            return;
        };
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(sealed).arg("PX").arg(ms(ttl));
        let _: Option<()> = self.query("steps", Query::Cmd(&set)).await;
    }

    /// The `kind` entry of `id`, opened: Some(None) if there is none, None if Redis
    /// cannot say.
    pub async fn get_sealed(&self, kind: &str, id: &CacheKey) -> Option<Option<Vec<u8>>> {
        let key = self.key(kind, id);
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let sealed: Option<Vec<u8>> = self.query("steps", Query::Cmd(&get)).await?;
        Some(sealed.and_then(|s| self.open(&key, s)))
    }

    /// A keyed hash of a step id or identifier, the same on every replica.
    pub fn id(&self, domain: &str, id: &[u8]) -> CacheKey {
        self.hasher.id_key(domain, id)
    }
}
