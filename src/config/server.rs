//! `[server]` (the chat-server-facing listener and the process) and `[admin]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use ipnet::IpNet;

use super::credentials;
use super::tls::TlsSection;
use super::units::{de_cidrs, de_duration};
use super::{err, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Chat-server-facing listener.
    pub listen: String,
    /// Worker threads of the gateway service.
    pub threads: usize,
    /// On SIGTERM: stop accepting, finish in-flight requests, exit within this.
    #[serde(deserialize_with = "de_duration")]
    pub grace_period: Duration,
    /// Unix socket used to hand listening sockets to a new process (zero-downtime upgrade).
    /// Empty: `cardgate-<port>.upgrade.sock` in the runtime directory.
    pub upgrade_sock: String,
    /// Private directory (mode 0700) of the upgrade socket, the pid file and the upgrade
    /// marker. Empty: `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else
    /// `cardgate-<uid>` under the system's temporary directory.
    pub runtime_dir: String,
    /// On SIGTERM, `/readyz` turns 503 at once and the listeners keep accepting this long
    /// (answers carry `Connection: close`) before they stop, so a balancer that polls
    /// readiness sees the 503 and moves traffic away first.
    #[serde(deserialize_with = "de_duration")]
    pub drain_delay: Duration,
    /// How long an idle keep-alive connection is kept open.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_timeout: Duration,
    /// A request must arrive whole, and its answer be taken, within this once it started.
    #[serde(deserialize_with = "de_duration")]
    pub client_timeout: Duration,
    /// Who may connect to the chat-server listener (empty: everyone). A connection from
    /// elsewhere is closed at accept.
    #[serde(deserialize_with = "de_cidrs")]
    pub allow: Vec<IpNet>,
    /// The chat-server listener over TLS, beside or instead of the plain one.
    pub tls: Option<TlsSection>,
    /// Every chat-server connection starts with a PROXY protocol header (v1 or v2) from a
    /// TCP load balancer: its address is the client's.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the balancers that may send PROXY headers (empty: any
    /// address that reaches the port); others are closed at accept.
    #[serde(deserialize_with = "de_cidrs")]
    pub proxy_from: Vec<IpNet>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            threads: 2,
            grace_period: Duration::from_secs(5),
            upgrade_sock: String::new(),
            runtime_dir: String::new(),
            drain_delay: Duration::ZERO,
            keepalive_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(10),
            allow: Vec::new(),
            tls: None,
            proxy_protocol: false,
            proxy_from: Vec::new(),
        }
    }
}

impl ServerSection {
    pub fn validate(&self, problems: &mut Vec<ConfigError>) {
        if !self.proxy_from.is_empty() && !self.proxy_protocol {
            problems.push(err("server.proxy_from", "needs server.proxy_protocol = true"));
        }
        match &self.tls {
            Some(tls) => {
                tls.validate(problems);
                if !self.listen.is_empty() {
                    problems.extend(check_listen("server.listen", &self.listen).err());
                    if self.listen == tls.listen {
                        problems.push(err("server.tls.listen", "must differ from server.listen"));
                    }
                }
            }
            None if self.listen.is_empty() => problems.push(err(
                "server.listen",
                "may be empty only when [server.tls] listens instead",
            )),
            None => problems.extend(check_listen("server.listen", &self.listen).err()),
        }
        if self.threads == 0 || self.threads > 256 {
            problems.push(err("server.threads", "must be between 1 and 256"));
        }
        if self.grace_period > Duration::from_secs(3600) {
            problems.push(err("server.grace_period", "must be at most 1h"));
        }
        if self.drain_delay > Duration::from_secs(600) {
            problems.push(err("server.drain_delay", "must be at most 10m"));
        }
        if self.runtime_dir.contains('\0') || self.upgrade_sock.contains('\0') {
            problems.push(err("server.runtime_dir", "is not a path"));
        }
        for (key, d) in [
            ("server.keepalive_timeout", self.keepalive_timeout),
            ("server.client_timeout", self.client_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                problems.push(err(key, "must be greater than 0 and at most 1h"));
            }
        }
    }

    /// Every chat-server listen address: plain first, then TLS.
    pub fn addresses(&self) -> Vec<&str> {
        let plain = Some(self.listen.as_str()).filter(|l| !l.is_empty());
        plain
            .into_iter()
            .chain(self.tls.as_ref().map(|t| t.listen.as_str()))
            .collect()
    }

    /// The private runtime directory: configured, `$RUNTIME_DIRECTORY`, or
    /// `<temp>/cardgate-<uid>`.
    pub fn runtime_dir(&self) -> PathBuf {
        if !self.runtime_dir.is_empty() {
            return PathBuf::from(&self.runtime_dir);
        }
        match std::env::var_os("RUNTIME_DIRECTORY") {
            // systemd may list several directories, separated by ':'.
            Some(dirs) if !dirs.is_empty() => {
                let dirs = dirs.to_string_lossy().into_owned();
                PathBuf::from(dirs.split(':').next().unwrap_or(&dirs))
            }
            _ => {
                // SAFETY: getuid has no preconditions and cannot fail.
                let uid = unsafe { libc::getuid() };
                std::env::temp_dir().join(format!("cardgate-{uid}"))
            }
        }
    }

    /// A file of this instance in the runtime directory: `cardgate-<port>.<suffix>`, so
    /// that instances on one machine do not collide.
    pub fn runtime_file(&self, suffix: &str) -> PathBuf {
        let port = self
            .addresses()
            .first()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map_or(0, |a| a.port());
        self.runtime_dir().join(format!("cardgate-{port}.{suffix}"))
    }

    /// The upgrade socket path: configured, or in the runtime directory.
    pub fn upgrade_sock(&self) -> String {
        if !self.upgrade_sock.is_empty() {
            return self.upgrade_sock.clone();
        }
        self.runtime_file("upgrade.sock").to_string_lossy().into_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Metrics, health, readiness and cache administration. Loopback by default.
    pub listen: String,
    /// Who may connect to the admin listener (empty: everyone who can reach it).
    #[serde(deserialize_with = "de_cidrs")]
    pub allow: Vec<IpNet>,
    /// Environment variable holding the admin secret: when set, every endpoint but
    /// `/healthz` and `/readyz` needs `Authorization: Bearer <secret>`.
    pub token_env: Option<String>,
    /// The same secret from a file (a relative name is looked up in
    /// `$CREDENTIALS_DIRECTORY` first); read again on every reload.
    pub token_file: Option<PathBuf>,
    /// `/metrics` without the secret (for a Prometheus that has none).
    pub metrics_public: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: DEFAULT_ADMIN.into(),
            allow: Vec::new(),
            token_env: None,
            token_file: None,
            metrics_public: false,
        }
    }
}

/// Not 9090, which is Prometheus's own.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9181";

/// Shortest admin secret accepted.
const MIN_ADMIN_TOKEN: usize = 16;

impl AdminSection {
    pub fn validate(&self, server: &ServerSection, problems: &mut Vec<ConfigError>) {
        match check_listen("admin.listen", &self.listen) {
            Err(e) => problems.push(e),
            Ok(addr) if !addr.ip().is_loopback() && !self.has_token() && self.allow.is_empty() => {
                // As Redis's protected mode: an open admin port is a mistake until said otherwise.
                problems.push(err(
                    "admin.listen",
                    format!(
                        "{addr} is reachable from other machines and nothing guards it: set \
                         admin.token_env or admin.token_file (a secret every request but /healthz and /readyz must \
                         carry) or admin.allow (the addresses that may connect), or listen on loopback"
                    ),
                ));
            }
            Ok(_) => {}
        }
        if server.listen == self.listen {
            problems.push(err("admin.listen", "must differ from server.listen"));
        }
        problems.extend(self.token().err());
    }

    /// Whether a secret guards the admin port.
    fn has_token(&self) -> bool {
        self.token_env.is_some() || self.token_file.is_some()
    }

    /// The admin secret, when `token_env` or `token_file` names one.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        credentials::secret(
            "admin.token",
            self.token_env.as_deref(),
            self.token_file.as_deref(),
            MIN_ADMIN_TOKEN,
        )
    }
}

pub(super) fn check_listen(key: &str, addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.parse::<SocketAddr>()
        .map_err(|e| err(key, format!("{addr:?} is not an address:port ({e})")))
}
