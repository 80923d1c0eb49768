//! A Pingora service that may not stop on its own, and the stops the process asks of its
//! listening services.
//!
//! Pingora runs each service as a task; if that task ends or panics while nobody asked the
//! process to stop (a listener that lost its socket, a bug), the process would go on
//! looking alive while it serves nothing. [`Supervised`] runs the service in a task of its
//! own and, when it ends unasked, logs why and exits with code 70, so that the supervisor
//! (systemd, the balancer) sees the truth. Each supervised service follows one of the
//! process's [`Stops`] rather than Pingora's shutdown, which comes only once the drain is
//! over: the chat-server listeners stop when the drain begins, the admin service only when
//! its socket goes to a new process (so that a balancer reads the 503 of `/readyz` until
//! the process exits). Before a service listens, the sockets a previous process handed
//! over go into Pingora's table ([`Handover`]).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ListenFds;
use pingora::server::ShutdownWatch;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::watch;

use crate::config::LogLevel;
use crate::logs;
use crate::upgrade::Handover;

/// Exit code of a process whose service stopped unasked (EX_SOFTWARE).
pub const EXIT_SERVICE_STOPPED: i32 = 70;

/// When the listening services stop accepting.
pub struct Stops {
    chat: watch::Sender<bool>,
    admin: watch::Sender<bool>,
}

impl Stops {
    pub fn new() -> Arc<Self> {
        Arc::new(Stops {
            chat: watch::Sender::new(false),
            admin: watch::Sender::new(false),
        })
    }

    /// What the chat-server listeners follow.
    pub fn chat(&self) -> ShutdownWatch {
        self.chat.subscribe()
    }

    /// What the admin service follows.
    pub fn admin(&self) -> ShutdownWatch {
        self.admin.subscribe()
    }

    /// The chat-server listeners stop accepting; their idle connections close at once.
    pub fn stop_chat(&self) {
        self.chat.send_replace(true);
    }

    /// Every listener stops accepting (its sockets are a new process's now).
    pub fn stop_all(&self) {
        self.stop_chat();
        self.admin.send_replace(true);
    }
}

pub struct Supervised {
    inner: Option<Box<dyn ServiceWithDependents>>,
    name: String,
    threads: Option<usize>,
    /// The stop this service follows.
    stop: ShutdownWatch,
    handover: Arc<Handover>,
}

impl Supervised {
    pub fn new(inner: Box<dyn ServiceWithDependents>, stop: ShutdownWatch, handover: Arc<Handover>) -> Self {
        Supervised {
            name: inner.name().to_string(),
            threads: inner.threads(),
            inner: Some(inner),
            stop,
            handover,
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
        if let Some(table) = &fds {
            self.handover.adopt(table);
        }
        let stop = self.stop.clone();
        let task = tokio::spawn(async move {
            inner.start_service(fds, stop, listeners_per_fd, ready).await;
        });
        let ended = task.await;
        if *self.stop.borrow() || *shutdown.borrow() {
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
