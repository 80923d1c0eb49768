//! Assemble and run the Pingora server: the chat-server listener, the admin listener and,
//! for demos, a built-in mock of the internal system.
//!
//! The Pingora `ServerConf` is derived from our config (threads, the upgrade socket in the
//! private runtime directory), so the operator edits one file. Every listen address is
//! checked before anything starts, or, with `--upgrade`, the running process's sockets are
//! taken over ([`crate::upgrade`]); the signal handlers are in place before the pid file
//! names the process; the services run [`Supervised`], so that one that stops unasked ends
//! the process; [`crate::signals`] says what each signal does.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use serde_json::json;

use crate::config::{Config, ConfigError, LogLevel};
use crate::edge::opening::Opening;
use crate::gateway::Gateway;
use crate::listener::Listener;
use crate::logs;
use crate::rundir::RunDir;
use crate::signals::{self, Signals};
use crate::supervise::{Stops, Supervised};
use crate::upgrade::{self, Handover, Waiting};

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
pub fn check_listeners(addrs: &[&str]) -> Result<(), StartError> {
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
    // Signals are handled from here on; a process that waits for an upgrade's sockets can
    // still be stopped while it waits, and handles them once it has them.
    let handlers = (!upgrade).then(signals::install);
    let conf = pingora_conf(&cfg, &rundir);
    let listen = cfg.server.listen.clone();
    let tls_listen = cfg.server.tls.as_ref().map(|t| t.listen.clone());
    let admin_listen = cfg.admin.listen.clone();
    let mut addrs: Vec<String> = cfg.server.addresses().into_iter().map(String::from).collect();
    addrs.push(admin_listen.clone());
    let running = running_or_free(&rundir, upgrade, &addrs)?;
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
    let addrs = addrs.into_iter().collect();
    let received = running.map(|pid| take_over(&rundir, pid, &addrs)).transpose()?;
    let handlers = handlers.unwrap_or_else(signals::install);
    crate::alloc::start();
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    write_pid(&rundir);

    let stops = Stops::new();
    let handover = Handover::new(received);
    let listener = chat_service(&gw, &listen, tls_listen.as_deref());
    let admin = admin_service(&gw, &admin_listen);
    server.add_boxed_service(Box::new(Supervised::new(
        Box::new(listener),
        stops.chat(),
        handover.clone(),
    )));
    server.add_boxed_service(Box::new(Supervised::new(
        Box::new(admin),
        stops.admin(),
        handover.clone(),
    )));
    add_background(&mut server, &gw);
    for service in extra {
        server.add_boxed_service(service);
    }
    logs::event_with(LogLevel::Info, "cardgate started", summary);
    let last_words = signals::LastWords::default();
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            gateway: gw,
            config_path,
            rundir: rundir.clone(),
            handlers: Mutex::new(Some(handlers)),
            stops,
            handover,
            last_words: last_words.clone(),
        }),
    });
    // Pingora's services have ended: what was logged goes out first.
    let (reason, fields) = last_words.get().cloned().unwrap_or(("stopped", json!({})));
    signals::stopped(reason, fields);
    rundir.remove_pid();
    logs::flush(Duration::from_secs(1));
    Ok(())
}

/// With `--upgrade`, the running process to take the sockets from; without, every address
/// must be free.
fn running_or_free(rundir: &RunDir, upgrade: bool, addrs: &[String]) -> Result<Option<u32>, StartError> {
    if !upgrade {
        check_listeners(&addrs.iter().map(String::as_str).collect::<Vec<_>>())?;
        return Ok(None);
    }
    match rundir.running() {
        Some(pid) => Ok(Some(pid)),
        None => Err(StartError::Runtime(format!(
            "--upgrade: no running cardgate to take the sockets from (no live process in {}); start without --upgrade",
            rundir.pid_file.display()
        ))),
    }
}

/// Pingora's server settings, derived from the configuration and the runtime directory.
fn pingora_conf(cfg: &Config, rundir: &RunDir) -> ServerConf {
    ServerConf {
        threads: cfg.server.threads,
        // Pingora is told to stop once the drain is over (see signals): nothing to wait for.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: rundir.upgrade_sock.clone(),
        pid_file: rundir.pid_file.to_string_lossy().into_owned(),
        daemon: false,
        work_stealing: false,
        // Pingora's own timeouts of a second or more (the admin port's handshake) on
        // tokio's timer: its fast timer starts a thread that wakes every 10 ms for the
        // life of the process.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    }
}

/// The chat-server listening service, on `listen` (unless empty) and the TLS port.
fn chat_service(gw: &Arc<Gateway>, listen: &str, tls_listen: Option<&str>) -> Service<Listener> {
    // Both ports take plain TCP: the listener itself reads PROXY headers and does the TLS
    // handshakes, bounded by server.client_timeout (crate::edge::opening).
    let tls_port = tls_listen.and_then(|a| a.parse().ok()).zip(gw.tls());
    let opening = Opening::new(gw.chat_gate(), tls_port, listen.parse().ok());
    let mut listener = Service::new(
        "cardgate listener".to_string(),
        Listener::new(gw.clone(), opening),
    );
    // Unbuffered: the connection state machine keeps its own (small, lazily grown) read
    // buffer and writes each answer whole, so Pingora's 64 KiB read and 1.4 KiB write
    // buffers per connection would only cost memory and a copy.
    let plain = Some(listen).filter(|l| !l.is_empty());
    for addr in plain.into_iter().chain(tls_listen) {
        listener.add_listener(ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::unbuffered()));
    }
    // The allowlist (behind a balancer: who may send PROXY headers), at accept.
    listener.set_connection_filter(gw.chat_gate());
    listener
}

/// The admin port's listening service, with one thread of its own.
fn admin_service(gw: &Arc<Gateway>, listen: &str) -> Service<crate::admin::Counted> {
    let mut admin = Service::new("cardgate admin".to_string(), crate::admin::app(gw.clone()));
    admin.add_tcp(listen);
    admin.set_connection_filter(gw.admin_gate());
    admin.threads = Some(1);
    admin
}

/// Write the pid file; a failure is logged and the process goes on (it only serves
/// `--upgrade` and operators).
fn write_pid(rundir: &RunDir) {
    if let Err(e) = rundir.write_pid() {
        logs::warn(
            "cannot write the pid file",
            &format!("{}: {e}", rundir.pid_file.display()),
            &std::sync::Mutex::new(None),
            Duration::ZERO,
        );
    }
}

/// The background services; they end with the process.
fn add_background(server: &mut Server, gw: &Arc<Gateway>) {
    // Re-resolution and health checks of the CRM's nodes.
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
}

/// `--upgrade`: wait for the sockets of the process `pid` that serves now, keeping those of
/// `addrs`. While it waits, this process is the running one's announced successor.
fn take_over(rundir: &RunDir, pid: u32, addrs: &HashSet<String>) -> Result<upgrade::Sockets, StartError> {
    let waiting =
        Waiting::bind(&rundir.upgrade_sock).map_err(|e| StartError::Runtime(format!("--upgrade: {e}")))?;
    rundir.announce_successor().map_err(|e| {
        StartError::Runtime(format!(
            "--upgrade: cannot write {}: {e}",
            rundir.successor.display()
        ))
    })?;
    logs::event_with(
        LogLevel::Info,
        &format!(
            "waiting for the running process to hand over its listening sockets: send it SIGQUIT within {} s",
            upgrade::WAIT.as_secs()
        ),
        json!({ "running": pid, "upgradeSocket": rundir.upgrade_sock }),
    );
    let got = waiting.receive(addrs, upgrade::WAIT);
    rundir.withdraw_successor();
    got.map_err(|why| {
        // The waiting line goes out before the one that ends the process.
        logs::flush(Duration::from_secs(1));
        StartError::Runtime(format!(
            "--upgrade: {why} from the running process (pid {pid}): nothing changed, it still serves; \
             send it SIGQUIT once this process says it waits"
        ))
    })
}

/// What `cardgate check` adds to reading the file: the TLS files load and the CRM's hosts
/// are resolved, as at startup. Every problem found, and the warnings to print: a name
/// that does not resolve now is not an error (the gateway starts and resolves it again).
pub fn check(cfg: &Config) -> (Vec<ConfigError>, Vec<String>) {
    let mut problems = Vec::new();
    if let Some(tls) = &cfg.server.tls {
        problems.extend(crate::tls::load(tls).err().map(ConfigError));
    }
    problems.extend(crate::upstream::check_tls(&cfg.upstream).err());
    let warnings = match cfg.upstream_urls() {
        Ok(urls) => {
            let (_, unresolved) = crate::upstream::resolve_at_start(&urls);
            let every = cfg.upstream.resolve_interval;
            unresolved.iter().map(|u| u.warning(every)).collect()
        }
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    (problems, warnings)
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
