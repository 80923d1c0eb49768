//! The `cardgate` command: run the gateway, check a config, run the mock CRM, or a demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cardgate::config::{Config, DialectKind};
use cardgate::server;

#[derive(Parser)]
#[command(
    name = "cardgate",
    version,
    about = "Gateway between a chat server and a CRM: Auth API and Search client API"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "conf/cardgate.toml")]
    config: PathBuf,
    /// Take over the listening sockets of a running instance (zero-downtime upgrade:
    /// start the new process with this flag, then send SIGQUIT to the old one).
    #[arg(long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit.
    Check,
    /// Run the built-in mock of the internal system.
    MockCrm {
        #[arg(long, default_value = "127.0.0.1:18181")]
        listen: String,
        #[arg(long, default_value = "iq")]
        dialect: String,
    },
    /// Run the mock CRM and the gateway on loopback, and print requests to try.
    Demo {
        #[arg(long, default_value = "iq")]
        dialect: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        #[arg(long, default_value = "127.0.0.1:18181")]
        crm: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => match Config::load(&cli.config) {
            Ok(cfg) => finish(server::run(cfg, cli.upgrade, Vec::new())),
            Err(e) => fail(&e),
        },
        Some(Command::Check) => match Config::load(&cli.config) {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Some(Command::MockCrm { listen, dialect }) => match parse_dialect(&dialect) {
            Ok(d) => {
                server::run_mock(&listen, d);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Some(Command::Demo {
            dialect,
            listen,
            admin,
            crm,
        }) => demo(&dialect, &listen, &admin, &crm),
    }
}

fn parse_dialect(name: &str) -> Result<DialectKind, String> {
    DialectKind::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = DialectKind::ALL.iter().map(|d| d.name()).collect();
        format!(
            "--dialect: unknown dialect {name:?} (known: {})",
            known.join(", ")
        )
    })
}

fn demo(dialect: &str, listen: &str, admin: &str, crm: &str) -> ExitCode {
    let kind = match parse_dialect(dialect) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    if kind == DialectKind::Gigma && std::env::var_os("GIGMA_APP_TOKEN").is_none() {
        // The demo's mock and gateway share one process: give both the mock's app token.
        std::env::set_var("GIGMA_APP_TOKEN", cardgate::mock::gigma::app_token());
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
    let id = format!("http://{listen}/rest/chat/client/id");
    let search = format!("http://{listen}/rest/chat/client/search/");
    println!("cardgate demo: mock CRM ({dialect}) on http://{crm}, gateway on http://{listen}, admin on http://{admin}");
    println!("Try (tokens here are demo values; the gateway never logs a token):");
    match kind {
        DialectKind::Iq => {
            println!("  curl -i {id}/demo-token-1            # card: X-Cache MISS, then HIT");
            println!("  curl -i -X POST -H 'token: demo-token-1' {id}/");
            println!("  curl -i {id}/missing-1               # the CRM's 404, JSON");
            println!("  curl -i {id}/slow-1                  # CRM_TIMEOUT after 1 s");
            println!("  curl -i {id}/html-1                  # CRM_ERROR (the CRM sent a 500 page)");
            println!(
                "  curl -i --data-urlencode 'client=+7 999 999 99 90' {search}     # answerType 1 + stepId"
            );
            println!(
                "  curl -i --data-urlencode 'client=+7 999 999 99 90' -d stepId=STEP -d secretWord={} {search}  # answerType 2 + token",
                cardgate::mock::SEARCH_CODE
            );
        }
        DialectKind::Gigma => {
            println!("  curl -i --data-urlencode 'client=+7 999 999 99 90' {search}     # a call is placed: stepId");
            println!(
                "  curl -i --data-urlencode 'client=+7 999 999 99 90' -d stepId=STEP -d secretWord={} {search}  # token",
                cardgate::mock::gigma::PASSWORD
            );
            println!(
                "  curl -i -X POST -H 'token: TOKEN' {id}/                       # the counterparty's card"
            );
            println!(
                "  curl -i -X POST -H 'token: TOKEN' http://{admin}/cache/purge  # logs the session out"
            );
            println!("  curl -i {id}/unknown-1               # SESSION_UNKNOWN");
        }
        DialectKind::Bearer => {
            println!("  curl -i {id}/demo-user-1             # card with id = userId");
            println!("  curl -i {id}/profile-1               # card with names from the profile");
            println!("  curl -i {id}/anon-1                  # CLIENT_NOT_FOUND (anonymous)");
            println!("  curl -i {id}/bad-1                   # 401 unauthorized, the system's own code");
            println!("  curl -i -d client=x {search}         # SEARCH_NOT_SUPPORTED");
        }
    }
    println!("  curl -i http://{listen}/no/such/route                               # NOT_FOUND, JSON");
    println!("  curl -s http://{admin}/metrics | grep ^cardgate_");
    if kind != DialectKind::Gigma {
        println!("  curl -i -X POST -H 'token: demo-token-1' http://{admin}/cache/purge");
    }
    println!("Stop with Ctrl-C.");
    let mock: server::Extra = Box::new(cardgate::mock::service(crm, kind));
    finish(server::run(cfg, false, vec![mock]))
}

fn finish(r: Result<(), cardgate::config::ConfigError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("cardgate: {e}");
    ExitCode::from(2)
}
