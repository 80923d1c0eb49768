//! Test harness: runs the real `cardgate` binary (gateway and mock CRM) on ephemeral
//! loopback ports and talks HTTP to them.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod certs;
pub mod redis;
pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// A port that was free a moment ago (a clash is retried by the starters below).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A request's header fields, names in lower case.
pub type Fields = Vec<(String, String)>;

/// One request read from a scripted CRM's connection: its header fields and its body;
/// None once the peer has closed.
pub fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(Fields, Vec<u8>)> {
    let mut fields = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = fields
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((fields, body))
}

/// A loopback port that refuses connections for as long as the returned socket lives: it
/// is bound, so nothing else takes it, and never listens.
pub fn refusing_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

/// A token no other test uses, long enough that grepping output for it means something.
pub fn token(prefix: &str) -> String {
    let mut b = [0u8; 8];
    getrandom(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-tok-{hex}")
}

fn getrandom(buf: &mut [u8]) {
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    f.read_exact(buf).unwrap();
}

/// A child process whose stdout and stderr are collected.
pub struct Proc {
    pub child: Child,
    output: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn cardgate");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Proc { child, output }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait for exit up to `limit`; the time it took, or None.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.exited() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool, proc: &mut Proc) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if proc.exited() {
            return false;
        }
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Assert the uniform error shape and return the errorCode.
    pub fn error_code(&self) -> String {
        assert_ne!(self.status, 200, "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let v = self.json();
        assert!(v["errorText"].is_string(), "{}", self.body);
        v["errorCode"]
            .as_str()
            .expect("errorCode is a string")
            .to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(15)).build()
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_string();
            (n, v)
        })
        .collect();
    let body = resp.into_string().unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

/// The mock CRM, as its own process.
pub struct Mock {
    pub addr: String,
    pub proc: Proc,
}

impl Mock {
    pub fn start() -> Mock {
        Self::start_dialect("iq", &[])
    }

    pub fn start_dialect(dialect: &str, envs: &[(&str, &str)]) -> Mock {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            if let Some(mock) = Self::start_at(&addr, dialect, envs) {
                return mock;
            }
        }
        panic!("mock CRM did not start");
    }

    /// A mock on `addr` (a node brought back where it was), if it could listen there.
    pub fn start_at(addr: &str, dialect: &str, envs: &[(&str, &str)]) -> Option<Mock> {
        let mut proc = Proc::spawn(&["mock-crm", "--listen", addr, "--dialect", dialect], envs);
        wait_until(
            Duration::from_secs(10),
            || TcpStream::connect(addr).is_ok(),
            &mut proc,
        )
        .then(|| Mock {
            addr: addr.to_string(),
            proc,
        })
    }

    /// Stop it for good (a node that died).
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn journal(&self) -> Vec<Value> {
        let r = request("GET", &format!("{}/__mock/journal", self.url()), &[], None);
        r.json().as_array().unwrap().clone()
    }

    /// Requests the mock saw for a token (in its header or its path).
    pub fn calls_for(&self, token: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["headers"]["token"] == token || e["path"].as_str().unwrap_or("").contains(token))
            .collect()
    }

    pub fn fail(&self, mode: &str) {
        let r = request(
            "POST",
            &format!("{}/__mock/fail", self.url()),
            &[],
            Some(mode.as_bytes()),
        );
        assert_eq!(r.status, 200);
    }
}

/// The gateway, as its own process, with a config written for it.
pub struct Gateway {
    pub addr: String,
    pub admin: String,
    pub proc: Proc,
    /// The configuration file the gateway runs with (rewrite it, then SIGHUP).
    pub config: std::path::PathBuf,
    /// Its private runtime directory (pid file, upgrade socket).
    pub run_dir: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Start with `[upstream] url = crm_url` plus `extra` TOML lines placed in their sections:
    /// `extra` is a list of (section, lines).
    pub fn start(crm_url: &str, extra: &[(&str, &str)]) -> Gateway {
        Self::start_with_env(crm_url, extra, &[])
    }

    pub fn start_with_env(crm_url: &str, extra: &[(&str, &str)], envs: &[(&str, &str)]) -> Gateway {
        let section = |name: &str| -> String {
            extra
                .iter()
                .filter(|(s, _)| *s == name)
                .map(|(_, l)| format!("{l}\n"))
                .collect()
        };
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let admin = format!("127.0.0.1:{}", free_port());
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cardgate.toml");
            let text = format!(
                "[server]\nlisten = \"{addr}\"\nthreads = 2\ngrace_period = \"5s\"\nruntime_dir = \"{run}\"\n{server}\
                 [admin]\nlisten = \"{admin}\"\n{admin_extra}\
                 [upstream]\n{url}{timeout}{upstream}\
                 [cache]\n{cache}[limits]\n{limits}[log]\n{log}[search]\n{search}{shared}",
                run = dir.path().join("run").display(),
                // No URL: the test gives `upstream.urls` itself.
                url = if crm_url.is_empty() { String::new() } else { format!("url = \"{crm_url}\"\n") },
                // A test that sets its own timeout replaces this one.
                timeout = if section("upstream").lines().any(|l| l.starts_with("timeout")) { "" } else { "timeout = \"1s\"\n" },
                server = section("server"),
                admin_extra = section("admin"),
                upstream = section("upstream"),
                cache = section("cache"),
                limits = section("limits"),
                log = section("log"),
                search = section("search"),
                shared = match section("shared") {
                    s if s.is_empty() => s,
                    s => format!("[shared]\n{s}"),
                },
            );
            std::fs::write(&path, text).unwrap();
            let mut proc = Proc::spawn(&["--config", path.to_str().unwrap()], envs);
            let ready_url = format!("http://{admin}/readyz");
            // Its own pid file first: a port another process holds must not pass for ours.
            let pid_file = dir
                .path()
                .join("run")
                .join(format!("cardgate-{}.pid", addr.rsplit(':').next().unwrap_or("0")));
            let pid = proc.child.id().to_string();
            let ready = wait_until(
                Duration::from_secs(15),
                || {
                    std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid)
                        && TcpStream::connect(&addr).is_ok()
                        && ureq::get(&ready_url)
                            .timeout(Duration::from_secs(2))
                            .call()
                            .is_ok()
                },
                &mut proc,
            );
            if ready {
                return Gateway {
                    addr,
                    admin,
                    proc,
                    config: path,
                    run_dir: dir.path().join("run"),
                    dir,
                };
            }
            eprintln!("gateway did not start (retrying): {}", proc.output());
        }
        panic!("gateway did not start");
    }

    /// Fails if the gateway runs Pingora's fast-timer thread, which wakes every 10 ms for
    /// the life of the process once a Pingora timeout under the threshold (a second, see
    /// `server.rs`) has been made, or Pingora's `fast_sleep` called.
    pub fn assert_no_timer_thread(&self) {
        let tasks = format!("/proc/{}/task", self.proc.child.id());
        let names: Vec<String> = std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect();
        assert!(names.len() > 1, "{names:?}");
        assert!(!names.iter().any(|n| n == "Timer thread"), "{names:?}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Change the configuration file (the next SIGHUP reads it).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
    }

    /// The event lines (those with a `level`) printed so far.
    pub fn events(&self) -> Vec<Value> {
        events(&self.proc.output())
    }

    /// Wait (bounded) for an event line whose `msg` contains `msg`, and return it.
    pub fn wait_event(&self, msg: &str) -> Value {
        wait_event(&self.proc, msg)
    }

    pub fn get_card(&self, token: &str) -> Resp {
        request(
            "GET",
            &self.url(&format!("/rest/chat/client/id/{token}")),
            &[],
            None,
        )
    }

    pub fn post_card(&self, token: &str) -> Resp {
        request(
            "POST",
            &self.url("/rest/chat/client/id/"),
            &[("token", token)],
            Some(b""),
        )
    }

    /// A search step: `form` pairs sent as a form, or as a JSON object when `json`.
    pub fn search(&self, path: &str, params: &[(&str, &str)], json: bool) -> Resp {
        let (ct, body) = if json {
            let map: serde_json::Map<String, Value> = params
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect();
            ("application/json", serde_json::to_vec(&map).unwrap())
        } else {
            let body = params
                .iter()
                .map(|(k, v)| format!("{k}={}", form_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            ("application/x-www-form-urlencoded", body.into_bytes())
        };
        request("POST", &self.url(path), &[("content-type", ct)], Some(&body))
    }

    pub fn admin(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let body = (method == "POST").then_some(&b""[..]);
        request(method, &format!("http://{}{path}", self.admin), headers, body)
    }

    /// /metrics once every request answered so far has been counted: a request is in flight
    /// until its log line and metrics are done, so wait (bounded) for none to be.
    pub fn metrics(&self) -> String {
        let settled = eventually(Duration::from_secs(5), || {
            sample(&self.metrics_now(), "cardgate_inflight_requests") == 0.0
        });
        assert!(settled, "requests stayed in flight");
        self.metrics_now()
    }

    pub fn metrics_now(&self) -> String {
        self.admin("GET", "/metrics", &[]).body
    }

    /// The value of one sample line of /metrics (0 when absent), once settled.
    pub fn metric(&self, name: &str) -> f64 {
        sample(&self.metrics(), name)
    }

    /// The value of one sample line of /metrics right now.
    pub fn metric_now(&self, name: &str) -> f64 {
        sample(&self.metrics_now(), name)
    }

    /// Assert that none of `secrets` appears in anything the gateway printed or exports.
    pub fn assert_never_shown(&self, secrets: &[&str]) {
        // Once nothing is in flight, every answered request's log line has been written;
        // wait until this side of the pipe has read them all.
        let metrics = self.metrics();
        let answered: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("cardgate_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let access_lines = |out: &str| {
            out.lines()
                // Request lines only: not prewarm lines, not warnings (which carry a level).
                .filter(|l| {
                    l.starts_with('{') && !l.contains(r#""api":"prewarm""#) && !l.contains(r#""level":"#)
                })
                .count() as f64
        };
        let arrived = eventually(Duration::from_secs(5), || {
            access_lines(&self.proc.output()) >= answered
        });
        assert!(arrived, "{answered} requests answered, fewer log lines arrived");
        let out = self.proc.output();
        for s in secrets {
            assert!(!out.contains(s), "secret {s:?} in gateway output:\n{out}");
            assert!(!metrics.contains(s), "secret {s:?} in metrics");
        }
    }
}

/// The event lines (JSON with a `level`) of some output.
pub fn events(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("level").is_some())
        .collect()
}

/// Wait (bounded) for an event line of `proc` whose `msg` contains `msg`.
pub fn wait_event(proc: &Proc, msg: &str) -> Value {
    let mut found = None;
    let seen = eventually(Duration::from_secs(10), || {
        found = events(&proc.output())
            .into_iter()
            .find(|e| e["msg"].as_str().is_some_and(|m| m.contains(msg)));
        found.is_some()
    });
    assert!(seen, "no event {msg:?} in:\n{}", proc.output());
    found.unwrap()
}

pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Wait (bounded) until `ready` holds.
pub fn eventually(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A TCP connection from a given loopback source address (127.0.0.2, 127.0.0.3, ... are
/// all this machine's on Linux).
pub fn connect_from(source: &str, addr: &str) -> std::io::Result<TcpStream> {
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&from.into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

/// A raw HTTP/1.1 connection, to control framing and check connection reuse.
pub struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            stream: BufReader::new(s),
        }
    }

    /// Connect from a given loopback source address (127.0.0.2, 127.0.0.3, ... are all
    /// this machine's on Linux).
    pub fn connect_from(source: &str, addr: &str) -> Raw {
        let s = connect_from(source, addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            stream: BufReader::new(s),
        }
    }

    /// One GET of `path` on this connection (keep-alive).
    pub fn get(&mut self, path: &str) -> Option<Resp> {
        self.roundtrip(format!("GET {path} HTTP/1.1\r\nHost: cardgate\r\n\r\n").as_bytes())
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.get_mut().write_all(raw).unwrap();
    }

    /// Read one response (Content-Length framed); None if the connection is closed.
    pub fn read(&mut self) -> Option<Resp> {
        let mut resp = self.read_head()?;
        let len: usize = resp.header("content-length").map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).ok()?;
        resp.body = String::from_utf8_lossy(&body).into_owned();
        Some(resp)
    }

    /// Read the status line and headers of a response only (the answer to HEAD, 100).
    pub fn read_head(&mut self) -> Option<Resp> {
        let mut status_line = String::new();
        if self.stream.read_line(&mut status_line).ok()? == 0 {
            return None;
        }
        let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Some(Resp {
            status,
            headers,
            body: String::new(),
        })
    }

    /// True once the server has closed the connection (reads end), within the read timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        }
    }

    pub fn roundtrip(&mut self, raw: &[u8]) -> Option<Resp> {
        self.send(raw);
        self.read()
    }
}
