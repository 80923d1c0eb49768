//! Where log lines go: a bounded queue to one writer thread, which writes to standard
//! output or to `log.file`.
//!
//! No worker ever waits for a write: a line that finds the queue full is dropped and
//! counted (`cardgate_log_lines_dropped_total`). The writer flushes whenever the queue runs
//! empty and at least once a second, and at exit. `log.file` is opened for appending and
//! reopened on request (SIGUSR1, after logrotate moved it) or when a reload names another
//! file; a file that cannot be opened leaves the lines going where they went.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

enum Msg {
    Line(Vec<u8>),
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
    /// Write to this file from now on (None: standard output); answer whether it opened.
    Open(Option<PathBuf>, SyncSender<Result<(), String>>),
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

/// Queue one complete line (with its newline); never waits.
pub fn send(line: Vec<u8>) {
    let s = sink();
    match s.tx.try_send(Msg::Line(line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => s.dropped.inc(),
    }
}

/// Send lines to `file` (empty: standard output) from now on, after those already queued.
/// Waits for the writer, at most `limit`; the error names the file and the reason.
pub fn open(file: &str, limit: Duration) -> Result<(), String> {
    let path = (!file.is_empty()).then(|| PathBuf::from(file));
    let (done, wait) = mpsc::sync_channel(1);
    queue_control(Msg::Open(path, done), limit)?;
    wait.recv_timeout(limit).unwrap_or_else(|_| {
        Err(format!(
            "log.file: the log writer did not answer within {limit:?}"
        ))
    })
}

/// Write out every line queued so far (at exit), waiting at most `limit` in all: a
/// writer stuck on a stalled output must not hold the exit.
pub fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    let (done, wait) = mpsc::sync_channel(1);
    if queue_control(Msg::Flush(done), limit).is_ok() {
        let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Queue a control message behind the lines, retrying a full queue until `limit`.
fn queue_control(mut msg: Msg, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match sink().tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                msg = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return Err("the log writer is not running or fell behind".into()),
        }
    }
}

/// Where the writer writes.
enum Out {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>),
}

impl Out {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Out::Stdout(w) => w,
            Out::File(w) => w,
        }
    }
}

fn open_file(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("log.file: cannot open {}: {e}", path.display()))
}

/// Write lines as they come, in batches: flush when the queue runs empty, and once a
/// second while it does not.
fn write_lines(rx: &Receiver<Msg>) {
    let mut out = Out::Stdout(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let mut last_flush = Instant::now();
    // A closed output must not take the gateway down: write errors are ignored.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    let _ = out.writer().write_all(&line);
                }
                Msg::Flush(done) => {
                    let _ = out.writer().flush();
                    let _ = done.send(());
                }
                Msg::Open(path, done) => {
                    let _ = out.writer().flush();
                    let opened = match path {
                        None => Ok(Out::Stdout(BufWriter::with_capacity(
                            64 * 1024,
                            std::io::stdout(),
                        ))),
                        Some(p) => open_file(&p).map(|f| Out::File(BufWriter::with_capacity(64 * 1024, f))),
                    };
                    let _ = done.send(opened.map(|o| out = o));
                }
            }
            if last_flush.elapsed() >= Duration::from_secs(1) {
                let _ = out.writer().flush();
                last_flush = Instant::now();
            }
            next = rx.try_recv().ok();
        }
        let _ = out.writer().flush();
        last_flush = Instant::now();
    }
}
