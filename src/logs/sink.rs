//! Where log lines go: a bounded queue to one writer thread, which writes to standard
//! output or to `log.file`.
//!
//! No worker ever waits for a write: a line is appended to a queue of bytes under a short
//! lock, and one that finds the queue full (4 MiB) is dropped and counted
//! (`cardgate_log_lines_dropped_total`). The writer writes the whole queue in one go every
//! 100 ms, sooner when 256 KiB wait, and at exit: workers do not wake it line by line. `log.file` is opened for appending and
//! reopened on request (SIGUSR1, after logrotate moved it) or when a reload names another
//! file; a file that cannot be opened leaves the lines going where they went.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::mem;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus::IntCounter;

/// Bytes of lines waiting for the writer at most; a line that does not fit is dropped.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The writer is woken early once this much waits; otherwise it writes every `PERIOD`.
const WAKE_BYTES: usize = 256 * 1024;
const PERIOD: Duration = Duration::from_millis(100);

enum Control {
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
    /// Write to this file from now on (None: standard output); answer whether it opened.
    Open(Option<PathBuf>, SyncSender<Result<(), String>>),
}

/// What waits for the writer: the lines' bytes, in order, and requests to it.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    control: VecDeque<Control>,
}

struct Sink {
    queue: Mutex<Queue>,
    wake: Condvar,
    dropped: IntCounter,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    static WRITER: OnceLock<()> = OnceLock::new();
    let s = SINK.get_or_init(|| Sink {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        dropped: IntCounter::new(
            "cardgate_log_lines_dropped_total",
            "Log lines dropped because the writer fell behind",
        )
        .expect("a constant, valid metric name"),
    });
    WRITER.get_or_init(|| {
        // The writer runs for the life of the process; if it cannot start, the queue fills
        // and lines are dropped and counted like any line that finds it full.
        let _ = std::thread::Builder::new()
            .name("cardgate-log".into())
            .spawn(move || write_lines(s));
    });
    s
}

/// The counter of dropped lines, for the metrics registry.
pub fn dropped_counter() -> IntCounter {
    sink().dropped.clone()
}

/// Queue one complete line (with its newline); never waits for the writer, and wakes it
/// only when much is waiting (a wake per line would cost a system call per request).
pub fn send(line: &[u8]) {
    let s = sink();
    let mut q = s.lock();
    let before = q.bytes.len();
    if before.saturating_add(line.len()) > QUEUE_BYTES {
        drop(q);
        s.dropped.inc();
        return;
    }
    q.bytes.extend_from_slice(line);
    let wake = before < WAKE_BYTES && q.bytes.len() >= WAKE_BYTES;
    drop(q);
    if wake {
        s.wake.notify_one();
    }
}

/// Send lines to `file` (empty: standard output) from now on, after those already queued.
/// Waits for the writer, at most `limit`; the error names the file and the reason.
pub fn open(file: &str, limit: Duration) -> Result<(), String> {
    let path = (!file.is_empty()).then(|| PathBuf::from(file));
    let (done, wait) = mpsc::sync_channel(1);
    request(Control::Open(path, done));
    wait.recv_timeout(limit).unwrap_or_else(|_| {
        Err(format!(
            "log.file: the log writer did not answer within {limit:?}"
        ))
    })
}

/// Write out every line queued so far (at exit), waiting at most `limit`: a writer stuck
/// on a stalled output must not hold the exit.
pub fn flush(limit: Duration) {
    let (done, wait) = mpsc::sync_channel(1);
    request(Control::Flush(done));
    let _ = wait.recv_timeout(limit);
}

fn request(control: Control) {
    let s = sink();
    s.lock().control.push_back(control);
    s.wake.notify_one();
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

/// Write what is queued in batches: every `PERIOD`, sooner when much waits or when asked.
fn write_lines(s: &Sink) {
    let mut out = Out::Stdout(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let mut spare = Vec::new();
    loop {
        let mut q = s.lock();
        if q.bytes.is_empty() && q.control.is_empty() {
            q = s
                .wake
                .wait_timeout(q, PERIOD)
                .map_or_else(|e| e.into_inner().0, |(q, _)| q);
        }
        mem::swap(&mut q.bytes, &mut spare);
        let control = mem::take(&mut q.control);
        drop(q);
        // A closed output must not take the gateway down: write errors are ignored.
        if !spare.is_empty() {
            let _ = out.writer().write_all(&spare);
            let _ = out.writer().flush();
            spare.clear();
            if spare.capacity() > WAKE_BYTES.saturating_mul(2) {
                spare.shrink_to(WAKE_BYTES);
            }
        }
        for c in control {
            match c {
                Control::Flush(done) => {
                    let _ = out.writer().flush();
                    let _ = done.send(());
                }
                Control::Open(path, done) => {
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
        }
    }
}
