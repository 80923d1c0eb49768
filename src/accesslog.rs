//! Structured JSON lines on stdout: one per request, and warnings with their cause.
//!
//! A request line names the API, method, status, errorCode, cache result, upstream status
//! and time, and an 8-hex keyed fingerprint of the token. It never carries a token, a
//! secretWord, a path or a body. Lines never block a worker: they go through a bounded
//! queue to a writer thread, which flushes whenever the queue runs empty and at least
//! once a second; when the queue is full a line is dropped and counted
//! (`cardgate_log_lines_dropped_total`), never waited for.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

#[derive(Serialize)]
pub struct Line<'a> {
    pub ts: String,
    pub api: &'a str,
    pub method: &'a str,
    pub status: u16,
    #[serde(rename = "errorCode", skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    /// Search: "first" or "next" step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'a str>,
    #[serde(rename = "upstreamStatus", skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(rename = "upstreamMs", skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    #[serde(rename = "durationMs")]
    pub duration_ms: f64,
    #[serde(rename = "tokenFp", skip_serializing_if = "Option::is_none")]
    pub token_fp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

enum Msg {
    Line(Vec<u8>),
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
}

struct Sink {
    tx: SyncSender<Msg>,
    dropped: IntCounter,
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        // The writer runs for the life of the process; if it cannot start, lines are
        // dropped and counted like any line that finds the queue full.
        let _ = std::thread::Builder::new()
            .name("cardgate-log".into())
            .spawn(move || write_lines(&rx));
        Sink {
            tx,
            dropped: IntCounter::new(
                "cardgate_log_lines_dropped_total",
                "Log lines dropped because the writer fell behind",
            )
            .expect("a constant, valid metric name"),
        }
    })
}

/// The counter of dropped lines, for the metrics registry.
pub fn dropped_counter() -> IntCounter {
    sink().dropped.clone()
}

/// Write lines as they come, in batches: flush when the queue runs empty, and once a
/// second while it does not.
fn write_lines(rx: &Receiver<Msg>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let mut last_flush = Instant::now();
    // A closed stdout must not take the gateway down: write errors are ignored.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            if last_flush.elapsed() >= Duration::from_secs(1) {
                let _ = out.flush();
                last_flush = Instant::now();
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        last_flush = Instant::now();
    }
}

fn send(line: Vec<u8>) {
    let s = sink();
    match s.tx.try_send(Msg::Line(line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => s.dropped.inc(),
    }
}

pub fn emit(line: &Line<'_>) {
    let Ok(mut buf) = serde_json::to_vec(line) else {
        return;
    };
    buf.push(b'\n');
    send(buf);
}

/// A warning line with its cause, at most one per `every` for each `what`
/// (`limiter` keeps the last time).
pub fn warn(what: &str, cause: &dyn std::fmt::Display, limiter: &Mutex<Option<Instant>>, every: Duration) {
    {
        let mut last = limiter.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
    }
    #[derive(Serialize)]
    struct Warn<'a> {
        ts: String,
        level: &'static str,
        msg: &'a str,
        cause: String,
    }
    let line = Warn {
        ts: now(),
        level: "warn",
        msg: what,
        cause: cause.to_string(),
    };
    if let Ok(mut buf) = serde_json::to_vec(&line) {
        buf.push(b'\n');
        send(buf);
    }
}

/// A line about the process itself (not a request), at `level`.
pub fn event(level: &'static str, msg: &str) {
    #[derive(Serialize)]
    struct Event<'a> {
        ts: String,
        level: &'static str,
        msg: &'a str,
    }
    if let Ok(mut buf) = serde_json::to_vec(&Event {
        ts: now(),
        level,
        msg,
    }) {
        buf.push(b'\n');
        send(buf);
    }
}

/// Write out every line queued so far (at exit), waiting at most `limit` in all: a
/// writer stuck on a stalled stdout must not hold the exit.
pub fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    let (done, wait) = mpsc::sync_channel(1);
    let mut msg = Msg::Flush(done);
    loop {
        match sink().tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                msg = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}
