//! What each Unix signal does to a running gateway.
//!
//! - `SIGTERM`: drain. `/readyz` turns 503 and every answer carries `Connection: close` at
//!   once; the listeners keep accepting for `server.drain_delay`, then stop; the process
//!   exits as soon as no request is in flight, within `server.grace_period`. The admin
//!   listener answers until then.
//! - `SIGQUIT`: hand the listening sockets to a new process started with `--upgrade`, when
//!   one waits for them; with none waiting, log it and keep serving.
//! - `SIGHUP`: reload the configuration file ([`crate::reload`]).
//! - `SIGUSR1`: reopen `log.file` (after logrotate moved it).
//! - `SIGINT`: exit at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use serde_json::json;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::LogLevel;
use crate::gateway::Gateway;
use crate::logs;
use crate::rundir::RunDir;

/// Turns Unix signals into reloads and Pingora shutdowns.
pub struct Signals {
    pub gateway: Arc<Gateway>,
    pub config_path: Option<PathBuf>,
    pub rundir: RunDir,
    /// Set once the sockets go to a new process (the admin service follows that stop).
    pub upgrading: Arc<AtomicBool>,
}

struct Handlers {
    term: Signal,
    quit: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

fn handlers() -> std::io::Result<Handlers> {
    Ok(Handlers {
        term: signal(SignalKind::terminate())?,
        quit: signal(SignalKind::quit())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
        usr1: signal(SignalKind::user_defined1())?,
    })
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut h = match handlers() {
            Ok(h) => h,
            Err(e) => {
                logs::event_with(
                    LogLevel::Error,
                    "cannot install signal handlers: exiting",
                    json!({ "error": e.to_string() }),
                );
                return ShutdownSignal::FastShutdown;
            }
        };
        loop {
            tokio::select! {
                _ = h.term.recv() => return self.drain(&mut h.int).await,
                _ = h.quit.recv() => {
                    if let Some(pid) = self.rundir.successor() {
                        logs::event_with(
                            LogLevel::Info,
                            "SIGQUIT: handing the listening sockets to the new process",
                            json!({ "successor": pid }),
                        );
                        self.upgrading.store(true, Ordering::SeqCst);
                        // Keep-alive clients are told to reconnect (to the new process).
                        self.gateway.start_draining();
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    logs::event_with(
                        LogLevel::Warn,
                        "SIGQUIT: no new process waits for the listening sockets (start one with --upgrade first); still serving",
                        json!({ "upgradeSocket": self.rundir.upgrade_sock }),
                    );
                }
                _ = h.int.recv() => {
                    logs::event(LogLevel::Info, "SIGINT: exiting at once");
                    return ShutdownSignal::FastShutdown;
                }
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
    /// and exit once drained. SIGINT during the delay exits at once.
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
            _ = int.recv() => {
                logs::event(LogLevel::Info, "SIGINT: exiting at once");
                return ShutdownSignal::FastShutdown;
            }
        }
        let (gw, rundir) = (self.gateway.clone(), self.rundir.clone());
        std::thread::spawn(move || exit_when_drained(&gw, &rundir, grace));
        ShutdownSignal::GracefulTerminate
    }
}

/// After the listeners have stopped accepting, exit once no request is in flight or when
/// the grace period is over, whichever comes first.
fn exit_when_drained(gw: &Gateway, rundir: &RunDir, grace: Duration) {
    let inflight = gw.inflight();
    let deadline = Instant::now() + grace;
    std::thread::sleep(Duration::from_millis(50).min(grace));
    while inflight.get() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = inflight.get();
    stopped("SIGTERM", json!({ "unfinishedRequests": left }));
    rundir.remove_pid();
    logs::flush(Duration::from_secs(1));
    std::process::exit(0);
}

/// The last line of a process: why it stops.
pub fn stopped(reason: &str, fields: serde_json::Value) {
    let mut line = json!({ "reason": reason, "pid": std::process::id() });
    if let (Some(l), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
        l.extend(f);
    }
    logs::event_with(LogLevel::Info, "cardgate stopped", line);
}
