//! A Pingora service that may not stop on its own.
//!
//! Pingora runs each service as a task; if that task ends or panics while nobody asked the
//! process to stop (a listener that lost its socket, a bug), the process would go on
//! looking alive while it serves nothing. [`Supervised`] runs the service in a task of its
//! own and, when it ends unasked, logs why and exits with code 70, so that the supervisor
//! (systemd, the balancer) sees the truth. The admin service is also kept answering through
//! a graceful stop ([`Shutdown::OnlyForUpgrade`]), so a balancer can read the 503 of
//! `/readyz` until the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ListenFds;
use pingora::server::ShutdownWatch;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::watch;

use crate::config::LogLevel;
use crate::logs;

/// Exit code of a process whose service stopped unasked (EX_SOFTWARE).
pub const EXIT_SERVICE_STOPPED: i32 = 70;

/// Which of Pingora's shutdowns the service follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every one: the service stops accepting when the process starts to stop.
    All,
    /// Only the one that hands the sockets to a new process; on SIGTERM the service goes on
    /// until the process exits.
    OnlyForUpgrade,
}

pub struct Supervised {
    inner: Option<Box<dyn ServiceWithDependents>>,
    name: String,
    threads: Option<usize>,
    follows: Shutdown,
    /// Set when the process hands its sockets to a new one.
    upgrading: Arc<AtomicBool>,
}

impl Supervised {
    pub fn new(inner: Box<dyn ServiceWithDependents>, follows: Shutdown, upgrading: Arc<AtomicBool>) -> Self {
        Supervised {
            name: inner.name().to_string(),
            threads: inner.threads(),
            inner: Some(inner),
            follows,
            upgrading,
        }
    }
}

#[async_trait]
impl ServiceWithDependents for Supervised {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        let theirs = match self.follows {
            Shutdown::All => shutdown.clone(),
            Shutdown::OnlyForUpgrade => upgrade_only(shutdown.clone(), self.upgrading.clone()),
        };
        let task = tokio::spawn(async move {
            inner.start_service(fds, theirs, listeners_per_fd, ready).await;
        });
        let ended = task.await;
        if *shutdown.borrow() {
            return; // asked to stop
        }
        let how = match ended {
            Err(e) if e.is_panic() => "panicked",
            _ => "ended",
        };
        logs::event_with(
            LogLevel::Error,
            "a service stopped while the process was not asked to stop: exiting",
            serde_json::json!({ "service": self.name, "how": how, "exitCode": EXIT_SERVICE_STOPPED }),
        );
        logs::flush(std::time::Duration::from_secs(1));
        std::process::exit(EXIT_SERVICE_STOPPED);
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }
}

/// A shutdown watch that fires only when `real` fires during an upgrade.
fn upgrade_only(mut real: ShutdownWatch, upgrading: Arc<AtomicBool>) -> ShutdownWatch {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        while real.changed().await.is_ok() {
            if *real.borrow() && upgrading.load(Ordering::SeqCst) {
                let _ = tx.send(true);
                return;
            }
        }
        // Pingora dropped its side: keep ours, so the service never reads a closed watch
        // as a shutdown.
        std::future::pending::<()>().await;
        drop(tx);
    });
    rx
}
