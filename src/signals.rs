//! What each Unix signal does to a running gateway.
//!
//! The handlers are installed before the pid file is written and before anything listens
//! ([`install`]): a signal sent as soon as the process can be seen is handled, never the
//! default action (SIGHUP's ends a process).
//!
//! - `SIGTERM`: drain. `/readyz` turns 503 and every answer carries `Connection: close` at
//!   once; the listeners keep accepting for `server.drain_delay`, then stop; the process
//!   exits as soon as nothing is in flight, within `server.grace_period`. The admin
//!   listener answers until then.
//! - `SIGQUIT`: hand the listening sockets to a new process started with `--upgrade`
//!   ([`crate::upgrade`]). Once it has them, every listener here stops and the process
//!   exits as soon as nothing is in flight, within `server.grace_period`. With no new
//!   process waiting, or a handover that failed, it is logged and the gateway keeps serving.
//! - `SIGHUP`: reload the configuration file ([`crate::reload`]).
//! - `SIGUSR1`: reopen `log.file` (after logrotate moved it).
//! - `SIGINT`: exit at once.
//!
//! Pingora is told to shut down only once the drain is over; the process's last line says
//! why it stopped ([`LastWords`]), written when Pingora's services have ended.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::config::LogLevel;
use crate::gateway::Gateway;
use crate::logs;
use crate::rundir::RunDir;
use crate::supervise::Stops;
use crate::upgrade::Handover;

/// The signals the gateway handles.
pub struct Handlers {
    term: Signal,
    quit: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

/// Install the handlers now. tokio registers them on a runtime's driver; they stay in place
/// for the life of the process, and any runtime's driver (Pingora's, later) delivers what
/// arrives, also what arrived in between.
pub fn install() -> std::io::Result<Handlers> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async { handlers() })
}

/// The handlers, registered on the current runtime.
fn handlers() -> std::io::Result<Handlers> {
    Ok(Handlers {
        term: signal(SignalKind::terminate())?,
        quit: signal(SignalKind::quit())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
        usr1: signal(SignalKind::user_defined1())?,
    })
}

/// Why the process stops, and the fields of its last line.
pub type LastWords = Arc<OnceLock<(&'static str, Value)>>;

/// Turns Unix signals into drains, upgrades, reloads and Pingora shutdowns.
pub struct Signals {
    pub gateway: Arc<Gateway>,
    pub config_path: Option<PathBuf>,
    pub rundir: RunDir,
    pub handlers: Mutex<Option<std::io::Result<Handlers>>>,
    pub stops: Arc<Stops>,
    pub handover: Arc<Handover>,
    pub last_words: LastWords,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let installed = self
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(handlers);
        let mut h = match installed {
            Ok(h) => h,
            Err(e) => {
                logs::event_with(
                    LogLevel::Error,
                    "cannot install signal handlers: exiting",
                    json!({ "error": e.to_string() }),
                );
                self.exit_now("no signal handlers", 1);
            }
        };
        loop {
            tokio::select! {
                _ = h.term.recv() => return self.drain(&mut h.int).await,
                _ = h.quit.recv() => {
                    if self.upgrade(&mut h.int).await {
                        return ShutdownSignal::GracefulUpgrade;
                    }
                }
                _ = h.int.recv() => self.exit_now("SIGINT", 0),
                _ = h.hup.recv() => {
                    let _ = crate::reload::reload(&self.gateway, self.config_path.as_deref(), "SIGHUP");
                }
                _ = h.usr1.recv() => match logs::reopen(&self.gateway.config().log) {
                    Ok(()) => logs::event(LogLevel::Info, "SIGUSR1: log file reopened"),
                    Err(e) => logs::event_with(
                        LogLevel::Error,
                        "SIGUSR1: log file not reopened; lines go where they went",
                        json!({ "error": e }),
                    ),
                },
            }
        }
    }
}

impl Signals {
    /// SIGTERM: readiness 503 at once, accept for `drain_delay`, then stop the listeners
    /// and wait until nothing is in flight, within `grace_period`.
    async fn drain(&self, int: &mut Signal) -> ShutdownSignal {
        let cfg = self.gateway.config();
        let (delay, grace) = (cfg.server.drain_delay, cfg.server.grace_period);
        drop(cfg);
        self.gateway.start_draining();
        logs::event_with(
            LogLevel::Info,
            "SIGTERM: draining",
            json!({ "drainDelayMs": delay.as_millis() as u64, "gracePeriodMs": grace.as_millis() as u64 }),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = int.recv() => self.exit_now("SIGINT", 0),
        }
        self.stops.stop_chat();
        let left = self.drained(grace, int).await;
        self.say_last("SIGTERM", json!({ "unfinishedRequests": left }));
        ShutdownSignal::GracefulTerminate
    }

    /// SIGQUIT: hand the sockets to the process waiting for them; once it has them, stop
    /// every listener and wait until nothing is in flight. False: this process serves on.
    async fn upgrade(&self, int: &mut Signal) -> bool {
        let upgrade_sock = self.rundir.upgrade_sock.clone();
        let Some(pid) = self.rundir.successor() else {
            logs::event_with(
                LogLevel::Warn,
                "SIGQUIT: no new process waits for the listening sockets (start one with --upgrade first); still serving",
                json!({ "upgradeSocket": upgrade_sock }),
            );
            return false;
        };
        logs::event_with(
            LogLevel::Info,
            "SIGQUIT: handing the listening sockets to the new process",
            json!({ "successor": pid }),
        );
        let handover = self.handover.clone();
        let sent = tokio::task::spawn_blocking(move || handover.send(&upgrade_sock))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(why) = sent {
            logs::event_with(
                LogLevel::Error,
                "SIGQUIT: the listening sockets were not handed over; still serving",
                json!({ "successor": pid, "error": why }),
            );
            return false;
        }
        // Keep-alive clients are told to reconnect (to the new process).
        self.gateway.start_draining();
        self.stops.stop_all();
        let grace = self.gateway.config().server.grace_period;
        logs::event_with(
            LogLevel::Info,
            "SIGQUIT: the new process has the listening sockets; draining",
            json!({ "successor": pid, "gracePeriodMs": grace.as_millis() as u64 }),
        );
        let left = self.drained(grace, int).await;
        self.say_last(
            "upgrade: the new process serves",
            json!({ "unfinishedRequests": left }),
        );
        true
    }

    /// Once the listeners have stopped: wait until no request is in flight and every
    /// chat-server connection has closed, or `grace` is over. The requests left.
    async fn drained(&self, grace: Duration, int: &mut Signal) -> i64 {
        let deadline = Instant::now() + grace;
        // A connection accepted as the stop came is counted once its task runs.
        let mut pause = Duration::from_millis(50).min(grace);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = int.recv() => self.exit_now("SIGINT", 0),
            }
            pause = Duration::from_millis(10);
            let (requests, connections) = self.gateway.in_flight();
            if (requests <= 0 && connections <= 0) || Instant::now() >= deadline {
                return requests.max(0);
            }
        }
    }

    /// The reason of the process's last line (the first one given stands).
    fn say_last(&self, reason: &'static str, fields: Value) {
        let _ = self.last_words.set((reason, fields));
    }

    /// Exit now, with the last line said.
    fn exit_now(&self, reason: &str, code: i32) -> ! {
        if reason == "SIGINT" {
            logs::event(LogLevel::Info, "SIGINT: exiting at once");
        }
        stopped(reason, json!({}));
        self.rundir.remove_pid();
        logs::flush(Duration::from_secs(1));
        std::process::exit(code);
    }
}

/// The last line of a process: why it stops.
pub fn stopped(reason: &str, fields: serde_json::Value) {
    let mut line = json!({ "reason": reason, "pid": std::process::id() });
    if let (Some(l), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
        l.extend(f);
    }
    logs::event_with(LogLevel::Info, "cardgate stopped", line);
}
