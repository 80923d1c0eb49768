//! The background service of `[shared]`: it keeps the connection (also when Redis was down
//! at start), checks once a second that every connection of this replica answers
//! (`cardgate_shared_up`), follows the Sentinels to a new master, and listens on the
//! invalidation channel: a purge or clear on any replica drops the copies in this replica's
//! own cache.
//!
//! With Sentinel the check is `ROLE` on the background connection: a master that stopped
//! answering or became a replica has the Sentinels asked again, every second until they
//! name one that answers as master; so do, at once, a command answered `READONLY` and a
//! Sentinel's `+switch-master` event. The
//! connections to the former master are dropped, requests go on without Redis until each
//! worker thread has a connection to the new one, and the subscription moves there too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Query, Shared};
use crate::keys::CacheKey;
use crate::logs;

/// What to drop from this replica's cache: one card, or all (None).
pub type Invalidate = Box<dyn Fn(Option<CacheKey>) + Send + Sync>;

/// The most the Sentinels (and the check of the master they name) may take to answer.
const ASK_SENTINELS: Duration = Duration::from_secs(2);

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
            if shared.endpoint.is_sentinel()
                && (shared.conn.load().is_none() || shared.lost.swap(false, Ordering::AcqRel))
            {
                self.follow_master().await;
            }
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
            let up = self.check().await;
            if !up && shared.endpoint.is_sentinel() {
                shared.lost.store(true, Ordering::Release);
            }
            shared.stats.up.set(i64::from(up));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shared.master_lost.notified() => {}
            }
        }
    }

    /// Up when every connection answers (and, with Sentinel, the master is still master):
    /// a ping also has a thread's connection notice a restarted Redis before its next
    /// request does.
    async fn check(&self) -> bool {
        let shared = &self.shared;
        let ping = redis::cmd("PING");
        let mut up = match shared.conn.load_full() {
            Some(conn) if shared.endpoint.is_sentinel() => {
                let role = redis::cmd("ROLE");
                let answer = shared.query_on::<redis::Role>((*conn).clone(), "connect", Query::Cmd(&role));
                match answer.await {
                    Some(redis::Role::Primary { .. }) => true,
                    Some(_) => {
                        shared.failed("connect", &"the Redis in use is no longer the master");
                        false
                    }
                    None => false,
                }
            }
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
        up
    }

    /// Ask the Sentinels for the master; move every connection to it if it is another one.
    async fn follow_master(&self) {
        let shared = &self.shared;
        match tokio::time::timeout(ASK_SENTINELS, shared.endpoint.find_master()).await {
            Ok(Ok(Some(addr))) => {
                let first = !shared.switch();
                if !first {
                    shared.stats.failovers.inc();
                }
                logs::event_with(
                    if first {
                        crate::config::LogLevel::Info
                    } else {
                        crate::config::LogLevel::Warn
                    },
                    if first {
                        "Redis master found"
                    } else {
                        "Redis master changed: following it"
                    },
                    serde_json::json!({ "master": addr }),
                );
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                shared.lost.store(true, Ordering::Release);
                shared.failed("connect", &format_args!("asking the Sentinels: {e}"));
            }
            Err(_) => {
                shared.lost.store(true, Ordering::Release);
                shared.failed("connect", &"the Sentinels did not answer in time");
            }
        }
    }

    /// Sentinel: listen to the Sentinels' `+switch-master` events, which name the new
    /// master as soon as a failover promotes it (a former master that is still up may
    /// call itself master for a while: `ROLE` alone would not notice in time).
    async fn sentinel_events(&self) {
        let shared = &self.shared;
        loop {
            let asked = tokio::time::timeout(ASK_SENTINELS, shared.endpoint.sentinel_pubsub()).await;
            match asked {
                Ok(None) => return std::future::pending().await,
                Ok(Some(Ok((mut pubsub, name)))) => {
                    if pubsub.subscribe("+switch-master").await.is_ok() {
                        // A switch may have passed while nobody listened.
                        shared.master_gone();
                        let mut events = pubsub.on_message();
                        while let Some(event) = events.next().await {
                            let text: String = event.get_payload().unwrap_or_default();
                            if text.split(' ').next() == Some(name) {
                                shared.master_gone();
                            }
                        }
                    }
                    shared.failed("subscribe", &"the Sentinels' events stopped");
                }
                Ok(Some(Err(e))) => shared.failed("subscribe", &format_args!("the Sentinels' events: {e}")),
                Err(_) => shared.failed("subscribe", &"the Sentinels did not answer in time"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn listen(&self) {
        let shared = &self.shared;
        let mut first_try = true;
        loop {
            let mut switched = shared.switched.subscribe();
            match tokio::time::timeout(Duration::from_secs(2), shared.endpoint.pubsub()).await {
                Ok(Ok(mut pubsub)) => {
                    if pubsub.subscribe(shared.channel()).await.is_ok() {
                        // Copies kept while the channel was down may have missed a purge:
                        // drop them all (not when it was up from the start: none was missed).
                        if !first_try {
                            (self.invalidate)(None);
                        }
                        let mut messages = pubsub.on_message();
                        let moved = loop {
                            tokio::select! {
                                msg = messages.next() => {
                                    let Some(msg) = msg else { break false };
                                    let payload: Vec<u8> = msg.get_payload().unwrap_or_default();
                                    shared.stats.invalidations.inc();
                                    if payload == b"*" {
                                        (self.invalidate)(None);
                                    } else if let Some(key) = crate::keys::key_from_hex(&payload) {
                                        (self.invalidate)(Some(key));
                                    }
                                }
                                // Another master: subscribe there.
                                _ = switched.changed() => break true,
                            }
                        };
                        if moved {
                            first_try = false;
                            continue;
                        }
                    }
                    shared.failed("subscribe", &"the invalidation channel closed");
                }
                Ok(Err(e)) => shared.failed("subscribe", &e),
                Err(_) => shared.failed("subscribe", &"timed out"),
            }
            first_try = false;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = switched.changed() => {}
            }
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
            () = self.sentinel_events() => {}
        }
    }
}
