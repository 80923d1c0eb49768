//! The process's memory allocator: jemalloc (installed by `main.rs` as the global
//! allocator), what an allocation really takes, and giving freed memory back after a
//! burst of connections.
//!
//! jemalloc rather than the system's malloc: with the card cache full, every miss frees an
//! evicted card and allocates a new one across a large heap, which jemalloc serves from
//! its size classes without searching free lists. Those classes are up to a quarter apart,
//! so the cache weighs a card by [`usable_size`], what jemalloc really hands out.
//!
//! A burst of connections leaves their buffers and tasks freed but resident. The listener
//! counts connections here; a background thread looks every two seconds and, when at least
//! [`TRIM_AFTER`] connections have closed since its last look, has jemalloc return its
//! unused pages to the system at once (`arena.<all>.purge`), instead of over its
//! ten-second decay, which only runs while the process allocates.

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

/// The allocator `main.rs` installs.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// The bytes an allocation of `size` bytes really takes: jemalloc's size class for it.
pub fn usable_size(size: usize) -> usize {
    if size == 0 {
        return 0;
    }
    // SAFETY: `nallocx` reads no memory; its only requirement, a size above zero, holds.
    let n = unsafe { tikv_jemalloc_sys::nallocx(size, 0) };
    // Zero: the size is beyond what jemalloc can allocate at all.
    if n == 0 {
        size
    } else {
        n
    }
}

/// Start the trimming thread (once per process).
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

/// Return every arena's unused pages to the system.
fn trim() {
    // 4096 is MALLCTL_ARENAS_ALL: the control applies to every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: a NUL-terminated control name; a purge reads and writes no value.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_size_is_a_size_class_at_least_as_large() {
        assert_eq!(usable_size(0), 0);
        for n in [1, 8, 40, 633, 1064, 4096, 70_000] {
            let u = usable_size(n);
            assert!(u >= n && u <= n + n / 4 + 16, "{n} -> {u}");
        }
        assert_eq!(usable_size(1064), 1280);
        trim();
    }
}
