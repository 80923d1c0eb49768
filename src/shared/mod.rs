//! State that several replicas share through Redis (or Valkey): `[shared]`.
//!
//! [`Shared`] is the client: `redis` connection managers (they reconnect by themselves), one
//! per worker thread made on its first request there, whose driver task runs on that
//! thread's runtime, so a round trip wakes no other thread (measured: a second-level miss
//! cost 80 µs of CPU through one connection on the background runtime); every
//! command bounded by `shared.timeout`, every failure counted in
//! `cardgate_shared_errors_total{op}` and logged at most once per 10 s; a request that meets
//! one goes on without Redis (a card from this replica's cache or the CRM). [`Watch`], a
//! background service, connects (also when Redis was down at start), pings once a second
//! for `cardgate_shared_up`, and listens on the invalidation channel: a purge or clear on
//! any replica drops the copies in every replica's own cache. Keys are
//! `<key_prefix><kind>:<hex of the keyed token hash>`, never a token; values are sealed
//! ([`seal`]). [`cards`] is the second-level card cache; [`search`] the guard's counters
//! and gigma's open steps.

pub mod cards;
pub use cards::{InRedis, Record};
pub use search::Counter;
mod seal;
pub mod search;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{ConfigError, SharedSection};
use crate::keys::{CacheKey, TokenHasher};
use crate::logs;
use crate::metrics::Metrics;
pub use seal::Seal;

/// The `op` label values of `cardgate_shared_errors_total`.
pub const OPS: [&str; 7] = [
    "connect",
    "card_get",
    "card_put",
    "invalidate",
    "subscribe",
    "guard",
    "steps",
];

pub struct Shared {
    client: redis::Client,
    /// The background service's connection: used by a thread until it has its own.
    conn: ArcSwapOption<ConnectionManager>,
    /// Every worker thread's own connection, and the threads whose connection is being made.
    locals: ArcSwap<HashMap<ThreadId, ConnectionManager>>,
    connecting: Mutex<HashSet<ThreadId>>,
    me: Weak<Shared>,
    prefix: String,
    timeout: Duration,
    seal: Seal,
    /// Keyed hashes of step ids (the same on every replica).
    hasher: TokenHasher,
    /// The second-level card cache is on.
    pub cards: bool,
    stats: Stats,
    last_warning: Mutex<Option<Instant>>,
}

struct Stats {
    up: IntGauge,
    errors: IntCounterVec,
    seconds: Histogram,
    l2: IntCounterVec,
    lock_waits: IntCounter,
    invalidations: IntCounter,
    undecryptable: IntCounter,
}

impl Stats {
    // Built once from constant names and help texts: registering cannot fail.
    #[allow(clippy::expect_used)]
    fn new(metrics: &Metrics) -> Self {
        let up = IntGauge::new("cardgate_shared_up", "1 while Redis answers this replica").expect("metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "cardgate_shared_errors_total",
                "Redis commands that failed or timed out; the request went on without Redis",
            ),
            &["op"],
        )
        .expect("metric");
        let seconds = Histogram::with_opts(
            HistogramOpts::new("cardgate_shared_command_duration_seconds", "Redis round trips")
                .buckets(vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1]),
        )
        .expect("metric");
        let l2 = IntCounterVec::new(
            Opts::new(
                "cardgate_shared_cards_total",
                "Second-level (Redis) card lookups by result",
            ),
            &["result"],
        )
        .expect("metric");
        let lock_waits = IntCounter::new(
            "cardgate_shared_lock_waits_total",
            "Misses that waited for another replica's CRM call instead of making their own",
        )
        .expect("metric");
        let invalidations = IntCounter::new(
            "cardgate_shared_invalidations_total",
            "Purges and clears received from the invalidation channel",
        )
        .expect("metric");
        let undecryptable = IntCounter::new(
            "cardgate_shared_undecryptable_total",
            "Values in Redis that did not open with this secret (treated as misses)",
        )
        .expect("metric");
        for op in OPS {
            errors.with_label_values(&[op]);
        }
        for r in ["hit", "miss", "waited"] {
            l2.with_label_values(&[r]);
        }
        for c in [
            Box::new(up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(seconds.clone()),
            Box::new(l2.clone()),
            Box::new(lock_waits.clone()),
            Box::new(invalidations.clone()),
            Box::new(undecryptable.clone()),
        ] {
            metrics.register(c);
        }
        Stats {
            up,
            errors,
            seconds,
            l2,
            lock_waits,
            invalidations,
            undecryptable,
        }
    }
}

impl Shared {
    /// `hasher`: the gateway's own keyed hash, which every replica shares (its secret is
    /// required with `[shared]`).
    pub fn new(
        cfg: &SharedSection,
        hasher: TokenHasher,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, ConfigError> {
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| ConfigError(format!("shared.url: {e}")))?;
        // Validated: without cards and gigma nothing sealed is stored, and the guard's
        // keys come from the gateway's own hasher.
        let secret = cfg.secret().ok();
        let seal = Seal::new(secret.as_deref().unwrap_or(&random_secret()));
        Ok(Arc::new_cyclic(|me| Shared {
            client,
            conn: ArcSwapOption::empty(),
            locals: ArcSwap::default(),
            connecting: Mutex::new(HashSet::new()),
            me: me.clone(),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            seal,
            hasher,
            cards: cfg.cards,
            stats: Stats::new(metrics),
            last_warning: Mutex::new(None),
        }))
    }

    /// `<prefix><kind>:<hex>` of a keyed hash.
    fn key(&self, kind: &str, id: &CacheKey) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + 65);
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push(':');
        crate::keys::push_hex(&mut k, id);
        k
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
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
        mut conn: ConnectionManager,
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
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(v)) => {
                self.stats.seconds.observe(start.elapsed().as_secs_f64());
                Some(v)
            }
            Ok(Err(e)) => {
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
    fn local_conn(&self) -> Option<ConnectionManager> {
        let thread = std::thread::current().id();
        if let Some(conn) = self.locals.load().get(&thread) {
            return Some(conn.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let me = self.me.upgrade()?;
        if !lock(&self.connecting).insert(thread) {
            return None;
        }
        runtime.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(2), me.connect()).await {
                Ok(Ok(conn)) => {
                    me.locals.rcu(|locals| {
                        let mut locals = HashMap::clone(locals);
                        locals.insert(thread, conn.clone());
                        locals
                    });
                }
                // The background service counts and logs unavailability; retry in a second.
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            lock(&me.connecting).remove(&thread);
        });
        None
    }

    async fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        ConnectionManager::new_with_config(self.client.clone(), config).await
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

    /// Drop one card everywhere: from Redis, and (through the channel) from every
    /// replica's own cache.
    pub async fn purge(&self, id: &CacheKey) {
        let mut pipe = redis::pipe();
        pipe.del(self.key("card", id))
            .ignore()
            .publish(self.channel(), crate::keys::hex(id))
            .ignore();
        let _: Option<()> = self.query("invalidate", Query::Pipe(&pipe)).await;
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
            self.delete_cards().await;
        }
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg("*");
        let _: Option<()> = self.query("invalidate", Query::Cmd(&publish)).await;
    }

    async fn delete_cards(&self) {
        let pattern = format!("{}card:*", self.prefix);
        let mut cursor: u64 = 0;
        // Bounded: at most 10 000 rounds of 1 000 keys.
        for _ in 0..10_000 {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let Some((next, keys)) = self
                .query::<(u64, Vec<String>)>("invalidate", Query::Cmd(&scan))
                .await
            else {
                break;
            };
            if !keys.is_empty() {
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

/// A command, a pipeline or a Lua script: one round trip each.
enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// What to drop from this replica's cache: one card, or all (None).
pub type Invalidate = Box<dyn Fn(Option<CacheKey>) + Send + Sync>;

/// The background service: connection, liveness, invalidations.
pub struct Watch {
    pub shared: Arc<Shared>,
    pub invalidate: Invalidate,
    /// Set once connected the first time (for the log line).
    pub connected_once: AtomicBool,
}

impl Watch {
    async fn keep_connected(&self) {
        let shared = &self.shared;
        loop {
            if shared.conn.load().is_none() {
                let made = tokio::time::timeout(Duration::from_secs(2), shared.connect()).await;
                match made {
                    Ok(Ok(conn)) => {
                        shared.conn.store(Some(Arc::new(conn)));
                        if !self.connected_once.swap(true, Ordering::Relaxed) {
                            logs::event_with(
                                crate::config::LogLevel::Info,
                                "connected to Redis",
                                serde_json::json!({}),
                            );
                        }
                    }
                    Ok(Err(e)) => shared.failed("connect", &e),
                    Err(_) => shared.failed("connect", &"timed out"),
                }
            }
            // Up when every connection answers: a ping also has a thread's connection
            // notice a restarted Redis before its next request does.
            let ping = redis::cmd("PING");
            let mut up = match shared.conn.load_full() {
                Some(conn) => {
                    let pong = shared.query_on::<String>((*conn).clone(), "connect", Query::Cmd(&ping));
                    pong.await.is_some()
                }
                None => false,
            };
            for conn in shared.locals.load().values() {
                let pong = shared.query_on::<String>(conn.clone(), "connect", Query::Cmd(&ping));
                up &= pong.await.is_some();
            }
            shared.stats.up.set(i64::from(up));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn listen(&self) {
        let shared = &self.shared;
        let mut first_try = true;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), shared.client.get_async_pubsub()).await {
                Ok(Ok(mut pubsub)) => {
                    if pubsub.subscribe(shared.channel()).await.is_ok() {
                        // Copies kept while the channel was down may have missed a purge:
                        // drop them all (not when it was up from the start: none was missed).
                        if !first_try {
                            (self.invalidate)(None);
                        }
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            let payload: Vec<u8> = msg.get_payload().unwrap_or_default();
                            shared.stats.invalidations.inc();
                            if payload == b"*" {
                                (self.invalidate)(None);
                            } else if let Some(key) = crate::keys::key_from_hex(&payload) {
                                (self.invalidate)(Some(key));
                            }
                        }
                    }
                    shared.failed("subscribe", &"the invalidation channel closed");
                }
                Ok(Err(e)) => shared.failed("subscribe", &e),
                Err(_) => shared.failed("subscribe", &"timed out"),
            }
            first_try = false;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for Watch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = shutdown.changed() => {}
            () = self.keep_connected() => {}
            () = self.listen() => {}
        }
    }
}
