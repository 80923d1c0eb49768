//! Everything the gateway writes about itself, as JSON lines: the access log
//! ([`access`]), events about the process (start, stop, reloads, admin actions, warnings
//! with their cause), Pingora's own messages and panics, all through one [`sink`] that
//! never blocks a worker.
//!
//! Every event line has `ts`, `level` and `msg`, plus fields of its kind
//! (docs/operations.md lists them). Events less severe than `log.level` are not written;
//! request lines follow `log.access` instead.

pub mod access;
pub mod sink;
pub mod throttle;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::config::{LogLevel, LogSection};
use throttle::{Throttle, Throttles};

pub use access::now;
pub use sink::flush;

/// The least severe level written, as `LogLevel as u8`.
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Take the `[log]` settings: at start, and again on every reload. Errors name the key.
pub fn apply(log: &LogSection, previous: Option<&LogSection>) -> Result<(), String> {
    // The file first: if it cannot be opened, nothing changes.
    if previous.map(|p| p.file.as_str()) != Some(log.file.as_str()) {
        sink::open(&log.file, Duration::from_secs(2))?;
    }
    LEVEL.store(log.level as u8, Ordering::Relaxed);
    ::log::set_max_level(match log.level {
        LogLevel::Error => ::log::LevelFilter::Error,
        LogLevel::Warn => ::log::LevelFilter::Warn,
        LogLevel::Info => ::log::LevelFilter::Info,
        LogLevel::Debug => ::log::LevelFilter::Debug,
    });
    Ok(())
}

/// Reopen `log.file` (after logrotate moved it away).
pub fn reopen(log: &LogSection) -> Result<(), String> {
    sink::open(&log.file, Duration::from_secs(2))
}

#[derive(Serialize)]
struct Event<'a> {
    ts: access::Ts,
    level: &'static str,
    msg: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    fields: Option<Value>,
}

fn write_event(level: LogLevel, msg: &str, fields: Option<Value>) {
    if !enabled(level) {
        return;
    }
    let event = Event {
        ts: now(),
        level: level.name(),
        msg,
        fields: fields.filter(Value::is_object),
    };
    if let Ok(mut buf) = serde_json::to_vec(&event) {
        buf.push(b'\n');
        sink::send(&buf);
    }
}

/// A line about the process itself (not a request).
pub fn event(level: LogLevel, msg: &str) {
    write_event(level, msg, None);
}

/// A line about the process with fields of its own (`fields` is a JSON object).
pub fn event_with(level: LogLevel, msg: &str, fields: Value) {
    write_event(level, msg, Some(fields));
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
    write_event(
        LogLevel::Warn,
        what,
        Some(serde_json::json!({ "cause": cause.to_string() })),
    );
}

/// A warning a peer caused (`fields` is a JSON object), under `throttle`'s rule: the line
/// that is written carries `suppressed`, the count of those left out before it.
pub fn peer_warn(throttle: &Throttle, msg: &str, fields: Value) {
    if !enabled(LogLevel::Warn) {
        return;
    }
    if let Some(left_out) = throttle.admit() {
        write_event(LogLevel::Warn, msg, Some(with_suppressed(fields, left_out)));
    }
}

fn with_suppressed(mut fields: Value, left_out: u64) -> Value {
    if let (Some(map), true) = (fields.as_object_mut(), left_out > 0) {
        map.insert("suppressed".into(), left_out.into());
    }
    fields
}

/// Warnings and errors of other crates, by target: rustls and Pingora write them for what
/// one peer sent (an address as the server name, a failed read).
static BRIDGED: Throttles = Throttles::new();

/// Pingora's, rustls's and other crates' messages (through the `log` facade), as event
/// lines with their source; warnings and errors follow the [`throttle`] rule by source.
struct Bridge;

impl ::log::Log for Bridge {
    fn enabled(&self, meta: &::log::Metadata<'_>) -> bool {
        enabled(level_of(meta.level()))
    }

    fn log(&self, record: &::log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = level_of(record.level());
        let mut fields = serde_json::json!({ "source": record.target() });
        if level <= LogLevel::Warn {
            let Some(left_out) = BRIDGED.admit(record.target()) else {
                return;
            };
            fields = with_suppressed(fields, left_out);
        }
        let msg = record.args().to_string();
        write_event(level, &msg, Some(fields));
    }

    fn flush(&self) {}
}

fn level_of(level: ::log::Level) -> LogLevel {
    match level {
        ::log::Level::Error => LogLevel::Error,
        ::log::Level::Warn => LogLevel::Warn,
        ::log::Level::Info => LogLevel::Info,
        ::log::Level::Debug | ::log::Level::Trace => LogLevel::Debug,
    }
}

/// Route Pingora's messages and panics into the log (once per process).
pub fn install() {
    let _ = ::log::set_logger(&Bridge);
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        write_event(
            LogLevel::Error,
            "panic",
            Some(serde_json::json!({ "panic": text, "location": location, "thread": thread })),
        );
        flush(Duration::from_millis(500));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_panics_and_pingora_messages_are_json_lines_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cardgate.log");
        let section = LogSection {
            file: file.to_string_lossy().into_owned(),
            ..LogSection::default()
        };
        install();
        apply(&section, None).unwrap();
        event_with(LogLevel::Info, "hello", serde_json::json!({ "n": 1 }));
        event(LogLevel::Debug, "not at info");
        ::log::warn!(target: "pingora_core::test", "from pingora");
        let _ = std::thread::spawn(|| panic!("on purpose")).join();
        flush(Duration::from_secs(2));
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let find = |msg: &str| lines.iter().find(|l| l["msg"] == msg).cloned();
        let hello = find("hello").expect("event");
        assert_eq!(
            (hello["level"].as_str(), hello["n"].as_i64()),
            (Some("info"), Some(1))
        );
        assert!(find("not at info").is_none());
        let p = find("from pingora").expect("pingora message");
        assert_eq!(
            (p["level"].as_str(), p["source"].as_str()),
            (Some("warn"), Some("pingora_core::test"))
        );
        let panic = find("panic").expect("panic line");
        assert_eq!(panic["panic"], "on purpose");
        assert!(panic["location"].as_str().unwrap().contains("logs/mod.rs"));

        // Moved away by logrotate: reopening makes a new file.
        let rotated = dir.path().join("cardgate.log.1");
        std::fs::rename(&file, &rotated).unwrap();
        event(LogLevel::Warn, "before reopen");
        reopen(&section).unwrap();
        event(LogLevel::Warn, "after reopen");
        apply(&LogSection::default(), Some(&section)).unwrap();
        flush(Duration::from_secs(2));
        assert!(std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("before reopen"));
        let new = std::fs::read_to_string(&file).unwrap();
        assert!(
            new.contains("after reopen") && !new.contains("before reopen"),
            "{new}"
        );
        let bad = LogSection {
            file: dir.path().join("no/such/dir.log").to_string_lossy().into_owned(),
            ..LogSection::default()
        };
        assert!(apply(&bad, None)
            .unwrap_err()
            .starts_with("log.file: cannot open"));
    }
}
