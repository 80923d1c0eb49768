//! The `cardgate` command line: run the gateway, check a config, and (with the default
//! `mock` feature) run the built-in mock CRM or a demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "mock")]
use crate::config::DialectKind;
use crate::config::{Config, ConfigError};
use crate::server;

#[derive(Parser)]
#[command(
    name = "cardgate",
    version,
    about = "Gateway between a chat server and a CRM: Auth API and Search client API"
)]
struct Cli {
    /// The configuration file (TOML; `cardgate check` validates it). SIGHUP reads it again.
    #[arg(long, global = true, default_value = "conf/cardgate.toml")]
    config: PathBuf,
    /// Take over the listening sockets of the running instance with the same config
    /// (zero-downtime upgrade): start the new process with this flag, then, within 5 s, send
    /// SIGQUIT to the old one.
    #[arg(long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration (and resolve the CRM's host and load the TLS files, as
    /// startup does), then exit: 0 when it is valid (a host that does not resolve now is a
    /// warning), 2 with a line naming the file and the key for every mistake when it is not.
    Check,
    /// Run the built-in mock of the internal system (fake cards, for trying things out).
    #[cfg(feature = "mock")]
    MockCrm {
        /// Address:port to listen on (conf/cardgate.toml expects the default).
        #[arg(long, default_value = "127.0.0.1:18181")]
        listen: String,
        /// The dialect the mock speaks.
        #[arg(long, value_enum, default_value = "iq")]
        dialect: DialectKind,
    },
    /// Run the mock CRM and the gateway on loopback, and print requests to try (once all
    /// three addresses are free).
    #[cfg(feature = "mock")]
    Demo {
        /// The dialect of the mock and of the gateway.
        #[arg(long, value_enum, default_value = "iq")]
        dialect: DialectKind,
        /// Address:port of the gateway's chat-server listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Address:port of the gateway's admin listener (metrics, health, cache).
        #[arg(long, default_value = "127.0.0.1:9181")]
        admin: String,
        /// Address:port of the mock CRM.
        #[arg(long, default_value = "127.0.0.1:18181")]
        crm: String,
    },
}

/// Run the command the process was started with.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => match Config::load(&cli.config) {
            Ok(cfg) => finish(
                server::run(cfg, Some(cli.config.clone()), cli.upgrade, Vec::new()),
                Some(&cli.config),
            ),
            Err(e) => fail(&e),
        },
        Some(Command::Check) => check(&cli.config),
        #[cfg(feature = "mock")]
        Some(Command::MockCrm { listen, dialect }) => {
            server::run_mock(&listen, dialect);
            ExitCode::SUCCESS
        }
        #[cfg(feature = "mock")]
        Some(Command::Demo {
            dialect,
            listen,
            admin,
            crm,
        }) => demo(dialect, &listen, &admin, &crm),
    }
}

/// `cardgate check`: every mistake of the file, those of its values and those startup would
/// meet (a host that does not resolve, a TLS file that does not load), a line each.
fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::load_unchecked(path) {
        Ok(cfg) => cfg,
        Err(e) => return fail(&e),
    };
    let mut problems = cfg.problems();
    // A key already found wrong is not judged again by what startup would do with it.
    let key = |p: &ConfigError| p.0.split(':').next().unwrap_or_default().to_string();
    let wrong: Vec<String> = problems.iter().map(key).collect();
    let (found, warnings) = server::check(&cfg);
    problems.extend(found.into_iter().filter(|p| !wrong.contains(&key(p))));
    match ConfigError::all(problems) {
        None => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Some(e) => fail(&e.in_file(path)),
    }
}

#[cfg(feature = "mock")]
fn demo(kind: DialectKind, listen: &str, admin: &str, crm: &str) -> ExitCode {
    let dialect = kind.name();
    if kind == DialectKind::Gigma && std::env::var_os("GIGMA_APP_TOKEN").is_none() {
        // The demo's mock and gateway share one process: give both the mock's app token.
        std::env::set_var("GIGMA_APP_TOKEN", crate::mock::gigma::app_token());
    }
    let text = format!(
        "[server]\nlisten = \"{listen}\"\nthreads = 2\ngrace_period = \"1s\"\n\
         [admin]\nlisten = \"{admin}\"\n\
         [upstream]\ndialect = \"{dialect}\"\nurl = \"http://{crm}\"\ntimeout = \"1s\"\n"
    );
    let cfg = match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // Nothing is printed until all three addresses are free: a curl line must not reach
    // another process that holds one of them.
    if let Err(e) = server::check_listeners(&[listen, admin, crm]) {
        return finish(Err(e), None);
    }
    let id = format!("http://{listen}/rest/chat/client/id");
    let search = format!("http://{listen}/rest/chat/client/search/");
    println!("cardgate demo: mock CRM ({dialect}) on http://{crm}, gateway on http://{listen}, admin on http://{admin}");
    println!("Try (tokens here are demo values; the gateway never logs a token):");
    // Every line runs as printed (in a POSIX shell); the search lines chain their steps.
    let client = "--data-urlencode 'client=+7 999 999 99 90'";
    let step_id =
        format!("STEP=$(curl -s {client} {search} | sed -n 's/.*\"stepId\":\"\\([^\"]*\\)\".*/\\1/p')");
    let token_of = |code: &str| {
        format!(
            "TOKEN=$(curl -s {client} -d stepId=$STEP -d secretWord={code} {search} | sed -n 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/p')"
        )
    };
    match kind {
        DialectKind::Iq => {
            println!("  curl -i {id}/demo-token-1            # card: X-Cache MISS, then HIT");
            println!("  curl -i -X POST -H 'token: demo-token-1' {id}/");
            println!("  curl -i {id}/missing-1               # the CRM's 404, JSON");
            println!("  curl -i {id}/slow-1                  # CRM_TIMEOUT after 1 s");
            println!("  curl -i {id}/html-1                  # CRM_ERROR (the CRM sent a 500 page)");
            println!("  curl -i {client} {search}     # answerType 1 + stepId");
            println!(
                "  {step_id}; curl -i {client} -d stepId=$STEP -d secretWord={} {search}   # both steps: answerType 2 + token",
                crate::mock::SEARCH_CODE
            );
            println!("  curl -i -X POST -H 'token: demo-token-1' http://{admin}/cache/purge");
        }
        DialectKind::Gigma => {
            println!(
                "  {step_id}; {}; curl -i -X POST -H \"token: $TOKEN\" {id}/; curl -i -X POST -H \"token: $TOKEN\" http://{admin}/cache/purge   # a call is placed, the code logs in, the card, the purge logs out",
                token_of(crate::mock::gigma::PASSWORD)
            );
            println!("  curl -i {id}/unknown-1               # SESSION_UNKNOWN");
        }
        DialectKind::Bearer => {
            println!("  curl -i {id}/demo-user-1             # card with id = userId");
            println!("  curl -i {id}/profile-1               # card with names from the profile");
            println!("  curl -i {id}/anon-1                  # CLIENT_NOT_FOUND (anonymous)");
            println!("  curl -i {id}/bad-1                   # 401 unauthorized, the system's own code");
            println!("  curl -i -d client=x {search}         # SEARCH_NOT_SUPPORTED");
            println!("  curl -i -X POST -H 'token: demo-user-1' http://{admin}/cache/purge");
        }
    }
    println!("  curl -i http://{listen}/no/such/route                               # NOT_FOUND, JSON");
    println!("  curl -s http://{admin}/metrics | grep ^cardgate_");
    println!("Stop with Ctrl-C.");
    let mock: server::Extra = Box::new(crate::mock::service(crm, kind));
    finish(server::run(cfg, None, false, vec![mock]), None)
}

/// The exit code of a run; a configuration mistake found at start is named with `file`.
fn finish(r: Result<(), server::StartError>, file: Option<&std::path::Path>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(server::StartError::Listen(why) | server::StartError::Runtime(why)) => {
            eprintln!("cardgate: {why}");
            ExitCode::from(1)
        }
        Err(server::StartError::Config(e)) => match file {
            Some(file) => fail(&e.in_file(file)),
            None => fail(&e),
        },
    }
}

/// Exit code 2, after each line of `e`.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    for line in e.to_string().lines() {
        eprintln!("cardgate: {line}");
    }
    ExitCode::from(2)
}
