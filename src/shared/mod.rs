//! State that several replicas share through Redis (or Valkey): `[shared]`.
//!
//! [`Shared`] is the client: one connection per worker thread made on its first request
//! there, whose driver task runs on that thread's runtime, so a round trip wakes no other
//! thread (measured: a second-level miss cost 80 µs of CPU through one connection on the
//! background runtime). [`endpoint`] makes them: to one server, to the master the Sentinels
//! name, or to a Redis Cluster. Every command is bounded by `shared.timeout`, every failure
//! counted in `cardgate_shared_errors_total{op}` and logged at most once per 10 s; a request
//! that meets one goes on without Redis (a card from this replica's cache or the CRM).
//! [`Watch`], a background service, keeps the connections and the invalidation channel
//! ([`invalidate`]). Keys are `<key_prefix><kind>:{<hex of the keyed token hash>}`, never a
//! token, the hex a cluster hash tag; values are sealed ([`seal`]). [`cards`] is the
//! second-level card cache; [`search`] the guard's counters and gigma's open steps.

pub mod cards;
pub use cards::InRedis;
pub use record::Record;
pub use search::Counter;
mod endpoint;
mod invalidate;
mod record;
mod seal;
pub mod search;
mod stats;
mod watch;
pub use watch::Watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{ConfigError, SharedSection, UpstreamSection};
use crate::keys::{CacheKey, TokenHasher};
use crate::logs;
use crate::metrics::Metrics;
use endpoint::{Conn, Endpoint};
pub use seal::Seal;
use stats::Stats;

pub struct Shared {
    endpoint: Endpoint,
    /// The background service's connection: used by a thread until it has its own.
    conn: ArcSwapOption<Conn>,
    /// Every worker thread's own connection, and the threads whose connection is being made.
    locals: ArcSwap<HashMap<ThreadId, Conn>>,
    connecting: Mutex<HashSet<ThreadId>>,
    me: Weak<Shared>,
    prefix: String,
    timeout: Duration,
    seal: Seal,
    /// Keyed hashes of step ids (the same on every replica).
    hasher: TokenHasher,
    /// The second-level card cache is on.
    pub cards: bool,
    /// The longest a replica holds the lock on a card it calls the CRM for.
    hold: Duration,
    /// This process's lock values: a random prefix, then a count.
    lock_prefix: u64,
    locks: AtomicU64,
    stats: Stats,
    last_warning: Mutex<Option<Instant>>,
    /// How many times the connections were dropped for another master (Sentinel): a
    /// connection made for an earlier one is not kept.
    switched: tokio::sync::watch::Sender<u64>,
    /// Set (and `master_lost` notified) when a command met a replica: the Sentinels are
    /// asked again at once.
    lost: AtomicBool,
    master_lost: tokio::sync::Notify,
}

impl Shared {
    /// `hasher`: the gateway's own keyed hash, which every replica shares ([`hasher`]);
    /// `upstream`: the CRM calls a lock on a card waits for.
    pub fn new(
        cfg: &SharedSection,
        upstream: &UpstreamSection,
        hasher: TokenHasher,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, ConfigError> {
        let endpoint = Endpoint::new(cfg)?;
        // Validated: without cards and gigma nothing sealed is stored, and the guard's
        // keys come from the gateway's own hasher.
        let secret = cfg.secret().ok();
        let seal = Seal::new(secret.as_deref().unwrap_or(&random_secret()));
        Ok(Arc::new_cyclic(|me| Shared {
            endpoint,
            conn: ArcSwapOption::empty(),
            locals: ArcSwap::default(),
            connecting: Mutex::new(HashSet::new()),
            me: me.clone(),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            seal,
            hasher,
            cards: cfg.cards,
            // The lock outlives the leader's call: its wait for a slot, then its budget.
            hold: upstream.queue_timeout.saturating_add(upstream.timeout),
            lock_prefix: u64::from_le_bytes(random_secret()[..8].try_into().unwrap_or_default()),
            locks: AtomicU64::new(0),
            stats: Stats::new(metrics),
            last_warning: Mutex::new(None),
            switched: tokio::sync::watch::Sender::new(0),
            lost: AtomicBool::new(false),
            master_lost: tokio::sync::Notify::new(),
        }))
    }

    /// A lock value no other lock (of this replica or another) has: 32 hex digits.
    fn lock_value(&self) -> String {
        let n = self.locks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut value = String::with_capacity(32);
        crate::keys::push_hex(&mut value, &self.lock_prefix.to_be_bytes());
        crate::keys::push_hex(&mut value, &n.to_be_bytes());
        value
    }

    /// `<prefix><kind>:{<hex>}` of a keyed hash. The hex is the key's hash tag: every key
    /// of one id (a card and its lock) is in one cluster slot, so that a script may use
    /// them together.
    fn key(&self, kind: &str, id: &CacheKey) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + 67);
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push_str(":{");
        crate::keys::push_hex(&mut k, id);
        k.push('}');
        k
    }

    /// Run one command (or pipeline) within `shared.timeout`; None (counted, logged) if
    /// Redis is not there, fails or is slow.
    async fn query<T: redis::FromRedisValue>(&self, op: &'static str, cmd: Query<'_>) -> Option<T> {
        let conn = match self.local_conn() {
            Some(conn) => conn,
            None => match self.conn.load_full() {
                Some(conn) => (*conn).clone(),
                None => {
                    self.failed(op, &"not connected");
                    return None;
                }
            },
        };
        self.query_on(conn, op, cmd).await
    }

    async fn query_on<T: redis::FromRedisValue>(
        &self,
        mut conn: Conn,
        op: &'static str,
        cmd: Query<'_>,
    ) -> Option<T> {
        let start = Instant::now();
        let sent = async {
            match cmd {
                Query::Cmd(c) => c.query_async::<T>(&mut conn).await,
                Query::Pipe(p) => p.query_async::<T>(&mut conn).await,
                // EVALSHA; the script is loaded on a NOSCRIPT answer (a restarted Redis).
                Query::Script(s) => s.invoke_async::<T>(&mut conn).await,
                Query::OnNode(c, host, port) => invalidate::on_node(&mut conn, c, host, port)
                    .await
                    .and_then(|v| redis::from_redis_value(v).map_err(Into::into)),
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(v)) => {
                self.stats.seconds.observe(start.elapsed().as_secs_f64());
                Some(v)
            }
            Ok(Err(e)) => {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) {
                    self.master_gone();
                }
                self.failed(op, &e);
                None
            }
            Err(_) => {
                self.failed(op, &"no answer within shared.timeout");
                None
            }
        }
    }

    /// This thread's own connection; if it has none yet, one is made in a task on this
    /// thread's runtime (at most one attempt per thread and second) and None is returned.
    fn local_conn(&self) -> Option<Conn> {
        let thread = std::thread::current().id();
        if let Some(conn) = self.locals.load().get(&thread) {
            return Some(conn.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let me = self.me.upgrade()?;
        if !lock(&self.connecting).insert(thread) {
            return None;
        }
        let generation = *self.switched.borrow();
        runtime.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(2), me.connect()).await {
                // Not if it was made for a master the Sentinels no longer name.
                Ok(Ok(conn)) if *me.switched.borrow() == generation => {
                    me.locals.rcu(|locals| {
                        let mut locals = HashMap::clone(locals);
                        locals.insert(thread, conn.clone());
                        locals
                    });
                }
                Ok(Ok(_)) => {}
                // The background service counts and logs unavailability; retry in a second.
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            lock(&me.connecting).remove(&thread);
        });
        None
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        self.endpoint.connect().await
    }

    /// The master in use may be gone (a command met a replica, a Sentinel announced a
    /// switch): have the watch ask the Sentinels at once.
    fn master_gone(&self) {
        if self.endpoint.is_sentinel() {
            self.lost.store(true, std::sync::atomic::Ordering::Release);
            self.master_lost.notify_one();
        }
    }

    /// Drop every connection, for the master the Sentinels named now; whether there was
    /// one before.
    fn switch(&self) -> bool {
        self.conn.store(None);
        self.locals.store(Arc::default());
        let mut before = 0;
        self.switched.send_modify(|g| {
            before = *g;
            *g = g.wrapping_add(1);
        });
        before > 0
    }

    fn failed(&self, op: &'static str, cause: &dyn std::fmt::Display) {
        self.stats.errors.with_label_values(&[op]).inc();
        logs::warn(
            "Redis unavailable: going on without it",
            &format_args!("{op}: {cause}"),
            &self.last_warning,
            Duration::from_secs(10),
        );
    }
}

/// A command, a pipeline or a Lua script: one round trip each.
enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
    /// A command for one node of a cluster (`host`, `port`).
    OnNode(&'a redis::Cmd, &'a str, u16),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The keyed hash of the cache keys when `cache.hash_key_env` is not set: derived from the
/// shared secret, so that every replica derives the same keys.
pub fn hasher(cfg: &SharedSection) -> Result<TokenHasher, ConfigError> {
    Ok(TokenHasher::from_secret(&blake3::derive_key(
        "cardgate cache keys v1",
        &cfg.secret()?,
    )))
}

fn random_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    getrandom::getrandom(&mut s).unwrap_or_default();
    s
}

/// A Redis PX or PEXPIRE argument: whole milliseconds, at least 1.
fn ms(d: Duration) -> u64 {
    crate::config::millis(d).max(1)
}
