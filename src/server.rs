//! Assemble and run the Pingora server: the chat-server listener, the admin listener and,
//! for demos, a built-in mock of the internal system.
//!
//! The Pingora `ServerConf` is derived from our config (threads, grace period, the upgrade
//! socket in the private runtime directory), so the operator edits one file. Every listen
//! address is checked before anything starts; the services run [`Supervised`], so that one
//! that stops unasked ends the process; [`crate::signals`] says what each signal does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::http_app::HttpServer;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use serde_json::json;

use crate::admin::Admin;
use crate::config::{Config, ConfigError, LogLevel};
use crate::gateway::Gateway;
use crate::listener::Listener;
use crate::logs;
use crate::rundir::RunDir;
use crate::signals::Signals;
use crate::supervise::{Shutdown, Supervised};

/// Everything the process runs besides the gateway itself (the demo's mock CRM).
pub type Extra = Box<dyn ServiceWithDependents>;

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid (exit code 2).
    Config(ConfigError),
    /// A listener cannot bind (exit code 1): which address, and the system's reason.
    Listen(String),
    /// The runtime directory or an upgrade cannot be used (exit code 1).
    Runtime(String),
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
            StartError::Listen(why) | StartError::Runtime(why) => f.write_str(why),
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
/// `config_path` is the file SIGHUP reads again (None: the configuration came from no file).
pub fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    upgrade: bool,
    extra: Vec<Extra>,
) -> Result<(), StartError> {
    logs::install();
    logs::apply(&cfg.log, None).map_err(|e| StartError::Config(ConfigError(e)))?;
    let rundir = RunDir::new(&cfg.server);
    rundir.prepare().map_err(StartError::Runtime)?;
    let grace = cfg.server.grace_period;
    let conf = ServerConf {
        threads: cfg.server.threads,
        // Upper bound only: the drain watcher exits as soon as nothing is in flight.
        grace_period_seconds: Some(grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: rundir.upgrade_sock.clone(),
        pid_file: rundir.pid_file.to_string_lossy().into_owned(),
        daemon: false,
        work_stealing: false,
        // Pingora's own timeouts of a second or more (the handshake of every accepted
        // connection, the admin port's included) on tokio's timer: its fast timer starts a
        // thread that wakes every 10 ms for the life of the process.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let listen = cfg.server.listen.clone();
    let tls_listen = cfg.server.tls.as_ref().map(|t| t.listen.clone());
    let admin_listen = cfg.admin.listen.clone();
    if upgrade {
        let Some(pid) = rundir.running() else {
            return Err(StartError::Runtime(format!(
                "--upgrade: no running cardgate to take the sockets from (no live process in {}); start without --upgrade",
                rundir.pid_file.display()
            )));
        };
        rundir.announce_successor().map_err(|e| {
            StartError::Runtime(format!(
                "--upgrade: cannot write {}: {e}",
                rundir.successor.display()
            ))
        })?;
        logs::event_with(
            LogLevel::Info,
            "waiting for the running process to hand over its listening sockets: send it SIGQUIT within 5 s",
            json!({ "running": pid, "upgradeSocket": rundir.upgrade_sock }),
        );
    } else {
        let mut addrs = cfg.server.addresses();
        addrs.push(&admin_listen);
        check_listeners(&addrs)?;
    }
    let summary = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "dialect": cfg.upstream.dialect.name(),
        "listen": listen,
        "tlsListen": tls_listen,
        "admin": admin_listen,
        "config": config_path.as_ref().map(|p| p.display().to_string()),
        "cacheMaxBytes": cfg.cache.max_size,
        "threads": cfg.server.threads,
        "upgrade": upgrade,
    });
    let gw = Gateway::new(cfg)?;
    crate::alloc::start();
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        // Only this user may reach the upgrade socket the bootstrap makes.
        rundir.guard_upgrade_socket(Duration::from_secs(6));
    }
    server.bootstrap();
    rundir.withdraw_successor();
    if let Err(e) = rundir.write_pid() {
        logs::warn(
            "cannot write the pid file",
            &format!("{}: {e}", rundir.pid_file.display()),
            &std::sync::Mutex::new(None),
            Duration::ZERO,
        );
    }

    let upgrading = Arc::new(AtomicBool::new(false));
    let mut listener = Service::new("cardgate listener".to_string(), Listener::new(gw.clone()));
    // Unbuffered: the connection state machine keeps its own (small, lazily grown) read
    // buffer and writes each answer whole, so Pingora's 64 KiB read and 1.4 KiB write
    // buffers per connection would only cost memory and a copy.
    if !listen.is_empty() {
        listener.add_listener(ListenerConfig::tcp(&listen).l4_buffer(L4BufferSettings::unbuffered()));
    }
    // The TLS listener is a TCP endpoint too: the listener runs its handshakes (see
    // crate::tls), with the PROXY header first when one is due.
    if let (Some(addr), Some(_)) = (&tls_listen, gw.tls()) {
        listener.add_listener(ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::unbuffered()));
    }
    // Allowlist and connection bound, at accept (before any TLS or HTTP).
    listener.set_connection_filter(gw.chat_gate());

    let mut admin = Service::new(
        "cardgate admin".to_string(),
        HttpServer::new_app(Admin { gateway: gw.clone() }),
    );
    admin.add_tcp(&admin_listen);
    admin.set_connection_filter(gw.admin_gate());
    admin.threads = Some(1);

    server.add_boxed_service(Box::new(Supervised::new(
        Box::new(listener),
        Shutdown::All,
        upgrading.clone(),
    )));
    server.add_boxed_service(Box::new(Supervised::new(
        Box::new(admin),
        Shutdown::OnlyForUpgrade,
        upgrading.clone(),
    )));
    // Re-resolution and health checks of the CRM's nodes; it ends with the process.
    server.add_service(GenBackgroundService::new(
        "cardgate CRM nodes".to_string(),
        gw.crm_watch(),
    ));
    if let Some(watch) = gw.shared_watch() {
        server.add_service(GenBackgroundService::new(
            "cardgate shared".to_string(),
            Arc::new(watch),
        ));
    }
    for service in extra {
        server.add_boxed_service(service);
    }
    logs::event_with(LogLevel::Info, "cardgate started", summary);
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            gateway: gw,
            config_path,
            rundir: rundir.clone(),
            upgrading: upgrading.clone(),
        }),
    });
    // An upgrade, SIGINT or Pingora's own end: what was logged goes out first.
    let reason = if upgrading.load(Ordering::SeqCst) {
        "upgrade: the new process serves"
    } else {
        "SIGINT"
    };
    crate::signals::stopped(reason, json!({}));
    rundir.remove_pid();
    logs::flush(Duration::from_secs(1));
    Ok(())
}

/// What `cardgate check` adds to reading the file: the CRM's host resolves now, exactly as
/// it must at startup.
pub fn check(cfg: &Config) -> Result<(), ConfigError> {
    for url in cfg.upstream_urls()? {
        crate::upstream::resolve(&url)?;
    }
    if let Some(tls) = &cfg.server.tls {
        crate::tls::load(tls).map_err(ConfigError)?;
    }
    crate::upstream::check_tls(&cfg.upstream)
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
