//! Real Redis for the replicas to share, on loopback ports, stopped on drop: one server, a
//! three-master Redis Cluster, or a master and a replica under three Sentinels (Debian's
//! `redis-server`, `redis-cli` and `redis-sentinel`); and a small RESP client that reads
//! what they hold.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, free_port};

/// One `redis-server` (or `redis-sentinel`) process, killed on drop.
pub struct Node {
    pub addr: String,
    child: Child,
}

impl Node {
    /// Start `bin` with the config file `conf` plus `args` on a free port (`--port` is
    /// added); None if it did not come up.
    fn start(bin: &str, conf: Option<&Path>, args: &[String], addr: &str) -> Option<Node> {
        let port = addr.rsplit(':').next().unwrap();
        let mut cmd = Command::new(bin);
        if let Some(conf) = conf {
            cmd.arg(conf);
        }
        cmd.args(["--port", port, "--bind", "127.0.0.1"]);
        if bin == "redis-server" {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (is Debian's redis-server installed?)"));
        let mut n = Node {
            addr: addr.to_string(),
            child,
        };
        // Up once it answers anything (an error too: it may want a password).
        let up = eventually(Duration::from_secs(5), || {
            if n.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            match resp(&n.addr, None, &["PING"]) {
                Ok(_) => true,
                Err(e) => e.contains("NOAUTH"),
            }
        });
        if up {
            Some(n)
        } else {
            n.stop();
            None
        }
    }

    /// A server that speaks TLS only, from the config file `conf`, on a free port; up once
    /// the port takes connections.
    pub fn tls_server(conf: &Path) -> Node {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let port = addr.rsplit(':').next().unwrap();
            let child = Command::new("redis-server")
                .arg(conf)
                .args(["--port", "0", "--tls-port", port, "--bind", "127.0.0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            let mut n = Node { addr, child };
            let up = eventually(Duration::from_secs(5), || {
                n.child.try_wait().ok().flatten().is_none() && TcpStream::connect(&n.addr).is_ok()
            });
            if up {
                return n;
            }
            n.stop();
        }
        panic!("redis-server (TLS) did not start");
    }

    /// Start a server with `args` on a free port, retried on a clash.
    pub fn server(args: &[String]) -> Node {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            if let Some(n) = Node::start("redis-server", None, args, &addr) {
                return n;
            }
        }
        panic!("redis-server did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Redis a test's replicas share.
pub struct Redis {
    /// The data nodes: one server; the cluster's masters; the Sentinels' master and replica.
    pub nodes: Vec<Node>,
    pub sentinels: Vec<Node>,
    /// The `[shared]` lines that say where it is and how to log in.
    pub toml: String,
    /// The environment those lines need (password variables).
    pub env: Vec<(String, String)>,
    /// The data nodes' password, for this side's commands.
    pub password: Option<String>,
    pub sentinel_password: Option<String>,
    pub dir: tempfile::TempDir,
}

pub const MASTER: &str = "cardgate-master";

impl Redis {
    /// One server.
    pub fn start() -> Redis {
        let node = Node::server(&[]);
        Redis {
            toml: format!("url = \"redis://{}/0\"", node.addr),
            nodes: vec![node],
            sentinels: Vec::new(),
            env: Vec::new(),
            password: None,
            sentinel_password: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// One server again on `addr` (after [`Redis::stop`]).
    pub fn start_at(addr: &str) -> Option<Node> {
        Node::start("redis-server", None, &[], addr)
    }

    pub fn addr(&self) -> &str {
        &self.nodes[0].addr
    }

    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }

    /// Three masters made one cluster by `redis-cli --cluster create`; ready when every
    /// node says `cluster_state:ok`.
    pub fn cluster() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                Node::server(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf.display().to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    "--dir".into(),
                    dir.path().display().to_string(),
                ])
            })
            .collect();
        let addrs: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let ok = eventually(Duration::from_secs(10), || {
            addrs.iter().all(|a| {
                resp(a, None, &["CLUSTER", "INFO"])
                    .is_ok_and(|v| String::from_utf8_lossy(&v.concat()).contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the cluster did not come up");
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        Redis {
            toml: format!("cluster = [{}]", list.join(", ")),
            nodes,
            sentinels: Vec::new(),
            env: Vec::new(),
            password: None,
            sentinel_password: None,
            dir,
        }
    }

    /// A master and its replica, both with `password`, under three Sentinels (quorum 2,
    /// down after `down_after`) that ask for `sentinel_password`; ready when every Sentinel
    /// knows the replica and the two other Sentinels.
    pub fn sentinel(password: &str, sentinel_password: &str, down_after: Duration) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let auth = |extra: &[&str]| -> Vec<String> {
            [
                "--requirepass",
                password,
                "--masterauth",
                password,
                "--dir",
                &dir.path().display().to_string(),
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
        };
        let master = Node::server(&auth(&[]));
        let replica = Node::server(&auth(&["--replicaof", "127.0.0.1", &master.port().to_string()]));
        let linked = eventually(Duration::from_secs(10), || {
            resp(&replica.addr, Some(password), &["INFO", "replication"])
                .is_ok_and(|v| String::from_utf8_lossy(&v.concat()).contains("master_link_status:up"))
        });
        assert!(linked, "the replica did not sync");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor {MASTER} 127.0.0.1 {port} 2\n\
                     sentinel down-after-milliseconds {MASTER} {down}\n\
                     sentinel failover-timeout {MASTER} 10000\n\
                     sentinel auth-pass {MASTER} {password}\n\
                     sentinel sentinel-pass {sentinel_password}\n\
                     requirepass {sentinel_password}\n",
                    port = master.port(),
                    down = down_after.as_millis(),
                ),
            )
            .unwrap();
            let args = ["--dir".to_string(), dir.path().display().to_string()];
            let node = (0..5)
                .find_map(|_| {
                    let addr = format!("127.0.0.1:{}", free_port());
                    Node::start("redis-sentinel", Some(&conf), &args, &addr)
                })
                .expect("redis-sentinel did not start");
            sentinels.push(node);
        }
        let ready = eventually(Duration::from_secs(20), || {
            sentinels.iter().all(|s| {
                let known = |what: &str| {
                    resp(&s.addr, Some(sentinel_password), &["SENTINEL", what, MASTER])
                        .map(|v| v.iter().filter(|f| f.as_slice() == b"ip").count())
                        .unwrap_or(0)
                };
                known("REPLICAS") == 1 && known("SENTINELS") == 2
            })
        });
        assert!(ready, "the Sentinels did not find each other and the replica");
        let list: Vec<String> = sentinels.iter().map(|s| format!("\"{}\"", s.addr)).collect();
        let pw_file = dir.path().join("sentinel-password");
        std::fs::write(&pw_file, format!("{sentinel_password}\n")).unwrap();
        set_mode(&pw_file, 0o600);
        Redis {
            toml: format!(
                "sentinels = [{}]\nmaster_name = \"{MASTER}\"\nsentinel_password_file = \"{}\"\npassword_env = \"CARDGATE_REDIS_PASSWORD\"",
                list.join(", "),
                pw_file.display()
            ),
            nodes: vec![master, replica],
            sentinels,
            env: vec![("CARDGATE_REDIS_PASSWORD".into(), password.into())],
            password: Some(password.into()),
            sentinel_password: Some(sentinel_password.into()),
            dir,
        }
    }

    /// The data node the Sentinels name master (the first Sentinel that answers), if it
    /// is up.
    pub fn master(&self) -> Option<&Node> {
        let named = self.sentinels.iter().find_map(|s| {
            let pw = self.sentinel_password.as_deref();
            let addr = resp(&s.addr, pw, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]).ok()?;
            let (ip, port) = (addr.first()?, addr.get(1)?);
            Some(format!(
                "{}:{}",
                String::from_utf8_lossy(ip),
                String::from_utf8_lossy(port)
            ))
        })?;
        self.nodes
            .iter()
            .find(|n| n.addr == named && resp(&n.addr, self.password.as_deref(), &["PING"]).is_ok())
    }

    /// One command, sent to the node that holds its key (a cluster's `MOVED` followed; a
    /// Sentinel's master): the bulk strings of the answer, None on an error or no answer.
    pub fn command(&self, args: &[&str]) -> Option<Vec<Vec<u8>>> {
        let mut addr = self
            .master()
            .map_or(self.nodes[0].addr.clone(), |n| n.addr.clone());
        for _ in 0..3 {
            match resp(&addr, self.password.as_deref(), args) {
                Ok(v) => return Some(v),
                Err(e) if e.starts_with("MOVED") => addr = e.rsplit(' ').next()?.to_string(),
                Err(_) => return None,
            }
        }
        None
    }

    /// Every key under the gateways' prefix, on every master, with its value (a hash's
    /// fields and values one after another).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let masters: Vec<&Node> = match self.master() {
            Some(m) if !self.sentinels.is_empty() => vec![m],
            _ => self.nodes.iter().collect(),
        };
        let mut out = Vec::new();
        for node in masters {
            let keys = resp(&node.addr, self.password.as_deref(), &["KEYS", "cardgate:*"]).unwrap();
            for k in keys {
                let k = String::from_utf8(k).unwrap();
                let kind = self.command(&["TYPE", &k]).unwrap().concat();
                let read = if kind == b"hash" { "HGETALL" } else { "GET" };
                let v = self.command(&[read, &k]).unwrap_or_default().concat();
                out.push((k, v));
            }
        }
        out
    }
}

impl Redis {
    /// Cluster: move the slot of `key`, with its keys, to another master (what `redis-cli
    /// --cluster reshard` does, for one slot); the addresses it moved from and to.
    pub fn move_slot_of(&self, key: &str) -> (String, String) {
        let one = |addr: &str, args: &[&str]| {
            resp(addr, None, args).unwrap_or_else(|e| panic!("{args:?} on {addr}: {e}"))
        };
        let text = |v: Vec<Vec<u8>>| String::from_utf8(v.concat()).unwrap();
        let slot = text(one(&self.nodes[0].addr, &["CLUSTER", "KEYSLOT", key]));
        let n: u32 = slot.parse().unwrap();
        let owns = |addr: &str| {
            let nodes = text(one(addr, &["CLUSTER", "NODES"]));
            nodes.lines().filter(|l| l.contains("myself")).any(|l| {
                l.split(' ').skip(8).any(|range| match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u32>().unwrap()..=b.parse().unwrap()).contains(&n),
                    None => range.parse::<u32>().ok() == Some(n),
                })
            })
        };
        let from = self
            .nodes
            .iter()
            .find(|nd| owns(&nd.addr))
            .expect("the slot's owner");
        let to = self.nodes.iter().find(|nd| nd.addr != from.addr).unwrap();
        let id = |nd: &Node| text(one(&nd.addr, &["CLUSTER", "MYID"]));
        let (from_id, to_id) = (id(from), id(to));
        one(&to.addr, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        one(&from.addr, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        let keys = one(&from.addr, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
        let keys: Vec<String> = keys.into_iter().map(|k| String::from_utf8(k).unwrap()).collect();
        let port = to.port().to_string();
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        migrate.extend(keys.iter().map(String::as_str));
        one(&from.addr, &migrate);
        for nd in [to, from] {
            one(&nd.addr, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        for nd in &self.nodes {
            one(&nd.addr, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        (from.addr.clone(), to.addr.clone())
    }
}

/// Redis failures a gateway counted, all `op`s together.
pub fn shared_errors(gw: &super::Gateway) -> f64 {
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("cardgate_shared_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One command over RESP to `addr` (after `AUTH password` if given): the bulk strings of
/// the answer, flattened; Err with the error line (or why there was none).
pub fn resp(addr: &str, password: Option<&str>, args: &[&str]) -> Result<Vec<Vec<u8>>, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    let mut push = |args: &[&str]| {
        req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    };
    if let Some(pw) = password {
        push(&["AUTH", pw]);
    }
    push(args);
    conn.write_all(&req).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(conn);
    if password.is_some() {
        read_value(&mut r, &mut Vec::new())?;
    }
    let mut out = Vec::new();
    read_value(&mut r, &mut out)?;
    Ok(out)
}

fn read_value(r: &mut impl BufRead, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("closed".into());
    }
    let (kind, rest) = line.trim_end().split_at(1);
    let int = |s: &str| s.parse::<i64>().map_err(|e| e.to_string());
    match kind {
        "+" | ":" => out.push(rest.as_bytes().to_vec()),
        "-" => return Err(rest.to_string()),
        "$" => {
            let n = int(rest)?;
            if n >= 0 {
                let mut buf = vec![0u8; usize::try_from(n).unwrap() + 2];
                std::io::Read::read_exact(r, &mut buf).map_err(|e| e.to_string())?;
                buf.truncate(buf.len() - 2);
                out.push(buf);
            }
        }
        "*" => {
            for _ in 0..int(rest)?.max(0) {
                read_value(r, out)?;
            }
        }
        _ => return Err(format!("unexpected {line:?}")),
    }
    Ok(())
}

/// Wait (bounded) until `ready` holds; how long it took.
pub fn timed(limit: Duration, ready: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    eventually(limit, ready).then(|| start.elapsed())
}
