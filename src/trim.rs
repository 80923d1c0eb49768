//! Give freed memory back to the system.
//!
//! glibc's malloc keeps what a burst of connections freed (their buffers, their tasks) in
//! its arenas for good; a gateway that once held 5,000 connections would keep their
//! memory resident after they closed. A background thread looks every two seconds at
//! how much of the heap is free and, past a few MiB, asks malloc to return it
//! (`malloc_trim`). It never runs on a worker thread.

use std::time::Duration;

/// Free heap bytes worth a trim.
const TRIM_ABOVE: usize = 4 * 1024 * 1024;
const EVERY: Duration = Duration::from_secs(2);

/// Start the trimming thread (once per process; a no-op where malloc is not glibc's).
pub fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("cardgate-trim".into())
                .spawn(|| loop {
                    std::thread::sleep(EVERY);
                    // SAFETY: both are plain glibc calls without pointer arguments.
                    unsafe {
                        if libc::mallinfo2().fordblks > TRIM_ABOVE {
                            libc::malloc_trim(0);
                        }
                    }
                });
        });
    }
}
