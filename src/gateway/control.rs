//! What the operator asks of the gateway, beside the requests it answers: the
//! configuration in force and its reload, draining, the admin port's purge, clear and
//! metrics, the admin secret, and the edge's state (the listeners' gates, TLS material).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::Guard;
use serde_json::json;

use super::Gateway;
use crate::config::{Config, LogLevel, TlsSection};
use crate::edge::Gate;
use crate::error::GatewayError;
use crate::keys::Fingerprint;
use crate::logs;
use crate::metrics::Metrics;
use crate::parse;
use crate::tls::{Material, Tls};
use crate::upstream::CallRecord;

/// What an admin purge did.
pub struct Purge {
    /// The token's keyed fingerprint, for the admin's log line.
    pub token_fp: Fingerprint,
    /// A card was cached for the token and is gone.
    pub purged: bool,
    /// Whether the dialect ended a session behind the token (gigma), or why it could not.
    pub session_ended: Result<bool, GatewayError>,
}

/// What a reload changed.
#[derive(Debug)]
pub struct Reloaded {
    /// Sections whose values changed in place.
    pub changed: Vec<&'static str>,
    /// Keys the new file changes that only a restart can change: left as they were.
    pub need_restart: Vec<&'static str>,
}

impl Gateway {
    /// The configuration in force now.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.cfg.load()
    }

    /// Put a newly read configuration in force: what can change in place changes for
    /// the next request; keys that need a restart keep their running values. `Err`: the
    /// new settings cannot be applied (a log file that does not open, TLS files that do
    /// not load); nothing changed.
    pub fn reload(&self, mut next: Config) -> Result<Reloaded, String> {
        let running = self.cfg.load_full();
        let need_restart = next.keep_restart_only(&running);
        let changed = next.changed_sections(&running);
        let admin_token = next.admin.token().map_err(|e| e.to_string())?;
        // The TLS files are part of the configuration, as in nginx: a certificate that
        // does not load fails the reload as a whole.
        let tls = self.read_tls(next.server.tls.as_ref())?;
        logs::apply(&next.log, Some(&running.log))?;
        self.admin_token.store(Arc::new(
            admin_token.map(|t| *blake3::hash(t.as_bytes()).as_bytes()),
        ));
        self.chat_gate.apply(
            next.server.allow.clone(),
            next.server.proxy_from.clone(),
            next.limits.max_connections,
        );
        self.admin_gate
            .apply(next.admin.allow.clone(), Vec::new(), usize::MAX);
        self.sources.apply(&next.limits);
        if let Some((tls, material)) = tls {
            put_tls(&self.metrics, &tls, material, "SIGHUP");
        }
        self.cache.apply(&next.cache);
        self.guard.apply(&next.search);
        self.upstream.apply(&next);
        self.cfg.store(Arc::new(next));
        Ok(Reloaded {
            changed,
            need_restart,
        })
    }

    /// The TLS listener's state, when there is one.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// Read the TLS files again and put them in force; a bad file keeps the old material.
    /// Counted and logged either way; `Ok(false)`: there is no TLS listener.
    pub fn reload_tls(&self, section: Option<&TlsSection>, trigger: &str) -> Result<bool, String> {
        match self.read_tls(section) {
            Ok(Some((tls, material))) => {
                put_tls(&self.metrics, &tls, material, trigger);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(why) => {
                logs::event_with(
                    LogLevel::Error,
                    "TLS certificate not reloaded: the old one stays in use",
                    json!({ "trigger": trigger, "error": why }),
                );
                Err(why)
            }
        }
    }

    /// The TLS files of `section`, read and checked against the listener, not yet in
    /// force (a failure is counted). `None`: there is no TLS listener.
    fn read_tls(&self, section: Option<&TlsSection>) -> Result<Option<(Arc<Tls>, Material)>, String> {
        let (Some(tls), Some(section)) = (&self.tls, section) else {
            return Ok(None);
        };
        match crate::tls::load(section).and_then(|m| tls.check(&m).map(|()| m)) {
            Ok(material) => Ok(Some((tls.clone(), material))),
            Err(why) => {
                self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                Err(why)
            }
        }
    }

    /// The background service that re-resolves and health-checks the CRM's nodes.
    pub fn crm_watch(&self) -> Arc<crate::upstream::Watch> {
        self.upstream.watch()
    }

    /// The background service of `[shared]`: the Redis connection, and the invalidations
    /// that drop this replica's copies.
    pub fn shared_watch(self: &Arc<Self>) -> Option<crate::shared::Watch> {
        let shared = self.shared.clone()?;
        let gw = Arc::downgrade(self);
        Some(crate::shared::Watch {
            shared,
            invalidate: Box::new(move |key| {
                if let Some(gw) = gw.upgrade() {
                    gw.cache.drop_local(key);
                }
            }),
            connected_once: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The chat-server listener's accept-time filter.
    pub fn chat_gate(&self) -> Arc<Gate> {
        self.chat_gate.clone()
    }

    /// The admin listener's accept-time filter.
    pub fn admin_gate(&self) -> Arc<Gate> {
        self.admin_gate.clone()
    }

    /// Whether an admin request may go on: no secret is configured, or `authorization`
    /// is `Bearer <secret>` (compared in constant time, as hashes, so neither the
    /// secret's bytes nor its length leak through timing).
    pub fn admin_authorized(&self, authorization: Option<&[u8]>) -> bool {
        let expected = self.admin_token.load();
        let Some(expected) = expected.as_ref() else {
            return true;
        };
        let given = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .map(|t| *blake3::hash(t).as_bytes())
            .unwrap_or([0; 32]);
        let ok = bool::from(subtle::ConstantTimeEq::ct_eq(&given[..], &expected[..]));
        if !ok {
            self.metrics.admin_unauthorized.inc();
        }
        ok && authorization.is_some()
    }

    /// Count a reload attempt.
    pub fn observe_reload(&self, ok: bool) {
        self.metrics.observe_reload(ok);
    }

    /// From now on readiness is 503 and every answer closes its connection.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// What is still under way: requests being answered, and chat-server connections open
    /// (once the listeners stop, idle ones close at once: a drain waits for both to be 0).
    pub fn in_flight(&self) -> (i64, i64) {
        (self.metrics.inflight.get(), self.metrics.connections_open.get())
    }

    /// The Prometheus text of every metric, the cache gauges brought up to date.
    pub async fn metrics_text(&self) -> Vec<u8> {
        let (entries, bytes) = self.cache.usage().await;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.cache_entries.set(gauge(entries));
        self.metrics.cache_bytes.set(gauge(bytes));
        self.metrics.render()
    }

    /// Drop the card of a token, and end the session behind it where the dialect has
    /// sessions. `Err`: the token is not one the chat server could have sent.
    pub async fn purge(&self, raw_token: &[u8]) -> Result<Purge, GatewayError> {
        let token = parse::token(raw_token, self.config().limits.max_token_bytes)?;
        let key = self.hasher.cache_key(token.as_bytes());
        let purged = self.cache.purge(&key).await;
        if let Some(shared) = self.cache.shared() {
            shared.purge(&key).await;
        }
        let session_ended = self
            .dialect
            .end_session(&self.upstream, &token, &CallRecord::default())
            .await;
        Ok(Purge {
            token_fp: self.hasher.fingerprint(token.as_bytes()),
            purged,
            session_ended,
        })
    }

    /// Drop every cached card; how many there were. With `[shared]` and gigma, the
    /// sessions stay in Redis (every replica reads them back), so nobody is logged out.
    pub async fn clear(&self) -> u64 {
        if let Some(shared) = self.cache.shared() {
            let sessions = self.config().upstream.dialect == crate::config::DialectKind::Gigma;
            shared.clear(sessions).await;
        }
        self.cache.clear().await
    }
}

/// Put checked TLS material in force, counted and logged.
fn put_tls(metrics: &Metrics, tls: &Tls, material: Material, trigger: &str) {
    let days = material.days_left();
    tls.put(material);
    metrics.tls_reloads.with_label_values(&["ok"]).inc();
    logs::event_with(
        LogLevel::Info,
        "TLS certificate reloaded",
        json!({ "trigger": trigger, "daysLeft": days }),
    );
}
