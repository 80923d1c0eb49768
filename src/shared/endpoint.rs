//! Where the shared Redis is and how a connection to it is made: one server (`url`), the
//! master that the Sentinels name (`sentinels`), or a Redis Cluster (`cluster`); with the
//! ACL user, the passwords and the TLS material of `[shared]`.
//!
//! The `redis` crate does the protocol work: [`ConnectionManager`] reconnects to one server,
//! [`SentinelClient`] asks the Sentinels for the master and checks that it calls itself
//! master (`ROLE`) before it is used, [`ClusterConnection`] keeps the slot map and follows
//! `MOVED` and `ASK`. What this module adds is the choice between them ([`Conn`] is either
//! connection behind one `ConnectionLike`), and for Sentinel the master in use, replaced by
//! [`Endpoint::find_master`] when the watch finds it gone or demoted.
//!
//! The invalidation channel is classic pub/sub in every mode: on a cluster a `PUBLISH` on
//! any node reaches the subscribers of every node, so a subscription on one seed node
//! (the first that answers) hears every replica's purges.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::{ConfigError, SharedMode as Mode, SharedSection};

/// How long a new connection may take to be made.
const CONNECT: Duration = Duration::from_secs(1);

pub(super) enum Endpoint {
    Single(Client),
    Sentinel(Sentinel),
    Cluster {
        client: ClusterClient,
        /// The seed nodes, for the invalidation channel.
        seeds: Vec<Client>,
    },
}

pub(super) struct Sentinel {
    /// Asks the Sentinels (it keeps a connection to each that answered).
    finder: tokio::sync::Mutex<SentinelClient>,
    /// The name they monitor the master under.
    name: String,
    /// The master in use, once found.
    master: ArcSwapOption<Client>,
}

/// A connection to the shared Redis: every command of the replicas goes through one.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn config_error(key: &str, e: &redis::RedisError) -> ConfigError {
    ConfigError(format!("{key}: {e}"))
}

/// A server's connection info with the section's user and password.
fn with_credentials(info: ConnectionInfo, username: Option<&str>, password: Option<&str>) -> ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(u) = username {
        redis = redis.set_username(u);
    }
    if let Some(p) = password {
        redis = redis.set_password(p);
    }
    info.set_redis_settings(redis)
}

/// A client for one server (a URL) with the section's credentials and TLS material.
fn client(
    key: &str,
    url: &str,
    cfg: &SharedSection,
    password: Option<&str>,
    certs: Option<&redis::TlsCertificates>,
) -> Result<Client, ConfigError> {
    let info = url.into_connection_info().map_err(|e| config_error(key, &e))?;
    let info = with_credentials(info, cfg.username.as_deref(), password);
    match certs {
        Some(certs) => Client::build_with_tls(info, certs.clone()),
        None => Client::open(info),
    }
    .map_err(|e| config_error(key, &e))
}

impl Endpoint {
    pub fn new(cfg: &SharedSection) -> Result<Self, ConfigError> {
        let password = cfg.password()?;
        let certs = cfg.certificates()?;
        Ok(match cfg.mode()? {
            Mode::Single(url) => Endpoint::Single(client(
                "shared.url",
                url,
                cfg,
                password.as_deref(),
                certs.as_ref(),
            )?),
            Mode::Sentinel { sentinels, master } => {
                let key = "shared.sentinels";
                let mut addrs = Vec::with_capacity(sentinels.len());
                for s in sentinels {
                    let info = SharedSection::node_url(s)
                        .into_connection_info()
                        .map_err(|e| config_error(key, &e))?;
                    addrs.push(info.addr().clone());
                }
                let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(|e| config_error(key, &e))?;
                if let Some(p) = cfg.sentinel_password()? {
                    b = b.set_client_to_sentinel_password(p);
                }
                if let Some(u) = &cfg.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &password {
                    b = b.set_client_to_redis_password(p);
                }
                if cfg.tls() {
                    b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                    if let Some(certs) = certs {
                        b = b
                            .set_client_to_sentinel_certificates(certs.clone())
                            .set_client_to_redis_certificates(certs);
                    }
                }
                Endpoint::Sentinel(Sentinel {
                    finder: tokio::sync::Mutex::new(b.build().map_err(|e| config_error(key, &e))?),
                    name: master.to_string(),
                    master: ArcSwapOption::empty(),
                })
            }
            Mode::Cluster(nodes) => {
                let key = "shared.cluster";
                let urls: Vec<String> = nodes.iter().map(|n| SharedSection::node_url(n)).collect();
                let mut seeds = Vec::with_capacity(urls.len());
                for url in &urls {
                    seeds.push(client(key, url, cfg, password.as_deref(), certs.as_ref())?);
                }
                let mut b = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT)
                    .response_timeout(cfg.timeout);
                if let Some(u) = &cfg.username {
                    b = b.username(u);
                }
                if let Some(p) = &password {
                    b = b.password(p);
                }
                if let Some(certs) = certs {
                    b = b.certs(certs);
                }
                Endpoint::Cluster {
                    client: b.build().map_err(|e| config_error(key, &e))?,
                    seeds,
                }
            }
        })
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, Endpoint::Sentinel(_))
    }

    /// A new connection: to the server, the master in use, or the cluster.
    pub async fn connect(&self) -> RedisResult<Conn> {
        let single = |client: Client| async move {
            // Every command is bounded by `shared.timeout` where it is sent (one timer each).
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(Some(CONNECT))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(client, config)
                .await
                .map(Conn::Single)
        };
        match self {
            Endpoint::Single(client) => single(client.clone()).await,
            Endpoint::Sentinel(s) => match s.master.load_full() {
                Some(master) => single((*master).clone()).await,
                None => Err(no_master()),
            },
            Endpoint::Cluster { client, .. } => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// A subscriber connection for the invalidation channel.
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Endpoint::Single(client) => client.get_async_pubsub().await,
            Endpoint::Sentinel(s) => match s.master.load_full() {
                Some(master) => master.get_async_pubsub().await,
                None => Err(no_master()),
            },
            Endpoint::Cluster { seeds, .. } => {
                let mut last = no_master();
                for seed in seeds {
                    match tokio::time::timeout(CONNECT, seed.get_async_pubsub()).await {
                        Ok(Ok(pubsub)) => return Ok(pubsub),
                        Ok(Err(e)) => last = e,
                        Err(_) => last = timed_out(),
                    }
                }
                Err(last)
            }
        }
    }

    /// Sentinel: a subscriber connection to the first Sentinel that answers, and the
    /// master's name; None in the other modes.
    pub async fn sentinel_pubsub(&self) -> Option<RedisResult<(PubSub, &str)>> {
        let Endpoint::Sentinel(s) = self else {
            return None;
        };
        let found = s.finder.lock().await.async_get_sentinel_client().await;
        Some(match found {
            Ok(client) => client.get_async_pubsub().await.map(|p| (p, s.name.as_str())),
            Err(e) => Err(e),
        })
    }

    /// Sentinel: ask the Sentinels for the master; its address if it is not the one in use
    /// (it is then, and the connections to the former one are to be dropped).
    pub async fn find_master(&self) -> RedisResult<Option<String>> {
        let Endpoint::Sentinel(s) = self else {
            return Ok(None);
        };
        let found = s.finder.lock().await.async_get_client().await?;
        let addr = found.get_connection_info().addr().to_string();
        let current = s.master.load();
        if current
            .as_ref()
            .is_some_and(|c| c.get_connection_info().addr().to_string() == addr)
        {
            return Ok(None);
        }
        s.master.store(Some(Arc::new(found)));
        Ok(Some(addr))
    }
}

fn no_master() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "no Redis master known yet: the Sentinels are being asked",
    ))
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out"))
}
