//! Give freed memory back to the system after a burst of connections.
//!
//! glibc's malloc keeps what a burst of connections freed (their buffers, their tasks) in
//! its arenas; a gateway that once held 5,000 connections would keep their memory
//! resident after they closed. The listener counts connections here; a background thread
//! looks every two seconds and, when at least [`TRIM_AFTER`] connections have closed
//! since its last look, asks malloc to return free memory (`malloc_trim`, in every glibc;
//! it briefly locks the arenas, so it runs only after such a burst and never on a worker
//! thread).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connections that must have closed since the last look for a trim.
const TRIM_AFTER: usize = 256;
const EVERY: Duration = Duration::from_secs(2);

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A connection opened.
pub fn opened() {
    let live = LIVE.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// A connection closed.
pub fn closed() {
    let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

/// Start the trimming thread (once per process; it only counts where malloc is not
/// glibc's).
pub fn start() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("cardgate-trim".into())
            .spawn(|| loop {
                std::thread::sleep(EVERY);
                let live = LIVE.load(Ordering::Relaxed);
                let peak = PEAK.swap(live, Ordering::Relaxed);
                if peak.saturating_sub(live) >= TRIM_AFTER {
                    trim();
                }
            });
    });
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a plain glibc call without pointer arguments.
    unsafe {
        libc::malloc_trim(0);
    }
}
