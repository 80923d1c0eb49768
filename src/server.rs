//! Assemble and run the Pingora server: the chat-server listener, the admin listener and,
//! for demos, a built-in mock of the internal system.
//!
//! The Pingora `ServerConf` is derived from our config (threads, grace period, upgrade
//! socket), so the operator edits one file. SIGTERM turns readiness to 503, stops accepting,
//! lets in-flight requests finish and exits as soon as none is left, within
//! `server.grace_period`. SIGQUIT hands the listening sockets to a new process started with
//! `--upgrade` (Pingora's zero-downtime upgrade). SIGINT exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use prometheus::IntGauge;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::Admin;
use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;
use crate::listener::Listener;

/// Everything the process runs besides the gateway itself (the demo's mock CRM).
pub type Extra = Box<dyn ServiceWithDependents>;

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid (exit code 2).
    Config(ConfigError),
    /// A listener cannot bind (exit code 1): which address, and the system's reason.
    Listen(String),
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Listen(why) => f.write_str(why),
        }
    }
}

/// Every listening address must be free before Pingora starts: its listener threads would
/// otherwise retry a taken port for seconds and then panic while the rest runs on. An
/// upgrade takes the sockets over from the old process instead, so it skips this.
fn check_listeners(addrs: &[&str]) -> Result<(), StartError> {
    for addr in addrs {
        std::net::TcpListener::bind(addr)
            .map_err(|e| StartError::Listen(format!("cannot listen on {addr}: {e}")))?;
    }
    Ok(())
}

/// Run the gateway (and any extra services) until a signal ends the process.
pub fn run(cfg: Config, upgrade: bool, extra: Vec<Extra>) -> Result<(), StartError> {
    let grace = cfg.server.grace_period;
    let conf = ServerConf {
        threads: cfg.server.threads,
        // Upper bound only: the drain watcher below exits as soon as nothing is in flight.
        grace_period_seconds: Some(grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: cfg.upgrade_sock(),
        pid_file: format!("{}.pid", cfg.upgrade_sock().trim_end_matches(".upgrade.sock")),
        daemon: false,
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let listen = cfg.server.listen.clone();
    let admin_listen = cfg.admin.listen.clone();
    if !upgrade {
        check_listeners(&[&listen, &admin_listen])?;
    }
    let gw = Gateway::new(cfg)?;
    crate::trim::start();
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut listener = Service::new("cardgate listener".to_string(), Listener::new(gw.clone()));
    // Unbuffered: the connection state machine keeps its own (small, lazily grown) read
    // buffer and writes each answer whole, so Pingora's 64 KiB read and 1.4 KiB write
    // buffers per connection would only cost memory and a copy.
    listener.add_listener(ListenerConfig::tcp(&listen).l4_buffer(L4BufferSettings::unbuffered()));

    let draining = Arc::new(AtomicBool::new(false));
    let mut admin = Service::new(
        "cardgate admin".to_string(),
        HttpServer::new_app(Admin {
            gateway: gw.clone(),
            draining: draining.clone(),
        }),
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);

    server.add_service(listener);
    server.add_service(admin);
    for service in extra {
        server.add_boxed_service(service);
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            draining,
            inflight: gw.inflight(),
            grace,
        }),
    });
    // An upgrade, SIGINT or Pingora's own end: what was logged goes out first.
    crate::accesslog::flush(Duration::from_secs(1));
    Ok(())
}

/// Turns Unix signals into Pingora shutdowns, and ends a graceful one early once drained.
struct Signals {
    draining: Arc<AtomicBool>,
    inflight: IntGauge,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            eprintln!("cardgate: cannot install signal handlers");
            return ShutdownSignal::FastShutdown;
        };
        let kind = loop {
            tokio::select! {
                _ = term.recv() => break ShutdownSignal::GracefulTerminate,
                _ = quit.recv() => break ShutdownSignal::GracefulUpgrade,
                _ = int.recv() => break ShutdownSignal::FastShutdown,
                // A habitual `systemctl reload` must never end the gateway.
                _ = hup.recv() => crate::accesslog::event(
                    "warn",
                    "SIGHUP received: reloading the configuration in place is not supported yet; nothing changed",
                ),
            }
        };
        self.draining.store(true, Ordering::SeqCst);
        if matches!(kind, ShutdownSignal::GracefulTerminate) {
            let (inflight, grace) = (self.inflight.clone(), self.grace);
            std::thread::spawn(move || exit_when_drained(&inflight, grace));
        }
        kind
    }
}

/// After the listeners have stopped accepting, exit once no request is in flight or when
/// the grace period is over, whichever comes first.
fn exit_when_drained(inflight: &IntGauge, grace: Duration) {
    let deadline = Instant::now() + grace;
    std::thread::sleep(Duration::from_millis(50).min(grace));
    while inflight.get() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::accesslog::flush(Duration::from_secs(1));
    std::process::exit(0);
}

/// Run only the mock internal system (`cardgate mock-crm`); SIGTERM ends it at once.
#[cfg(feature = "mock")]
pub fn run_mock(listen: &str, dialect: crate::config::DialectKind) {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: format!("/tmp/cardgate-mock-{}.upgrade.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(crate::mock::service(listen, dialect));
    server.run(RunArgs::default());
}
