//! The rate rule for lines a peer can cause: at most one line a second of each kind, and
//! the line that is written says how many of its kind were left out since the one before
//! (`suppressed`). A scanner that fails a thousand handshakes, or a client library that
//! sends an address as its TLS server name, then writes a line a second, not a line a
//! connection, and nothing it did goes uncounted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest gap between two lines of one kind.
pub const EVERY: Duration = Duration::from_secs(1);

/// Distinct kinds a [`Throttles`] keeps at most (log targets are module paths: a few dozen);
/// past it the map starts afresh rather than grow.
const MAX_KINDS: usize = 256;

/// When a kind last wrote, and how many of it were left out since.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    last: Option<Instant>,
    suppressed: u64,
}

impl Window {
    /// `Some(left out since the last line)` if a line may be written at `now`.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < EVERY)
        {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The rule for one kind of line.
#[derive(Debug, Default)]
pub struct Throttle(Mutex<Window>);

impl Throttle {
    /// `Some(left out since the last line)` if a line may be written now; else it is
    /// counted as left out.
    pub fn admit(&self) -> Option<u64> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.admit(Instant::now())
    }
}

/// The rule for kinds named at run time (the `log` records of other crates, by target).
#[derive(Debug, Default)]
pub struct Throttles(Mutex<Option<HashMap<String, Window>>>);

impl Throttles {
    pub const fn new() -> Self {
        Throttles(Mutex::new(None))
    }

    /// `Some(left out since the last line)` if a line of the kind `kind` may be written
    /// now; else it is counted as left out.
    pub fn admit(&self, kind: &str) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let map = map.get_or_insert_with(HashMap::new);
        if let Some(w) = map.get_mut(kind) {
            return w.admit(now);
        }
        if map.len() >= MAX_KINDS {
            map.clear();
        }
        map.entry(kind.to_string()).or_default().admit(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_window_and_the_next_says_how_many_were_left_out() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert_eq!(w.admit(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(w.admit(t0 + Duration::from_millis(300)), None);
        }
        assert_eq!(w.admit(t0 + Duration::from_millis(999)), None);
        assert_eq!(w.admit(t0 + EVERY), Some(6));
        assert_eq!(w.admit(t0 + EVERY * 3), Some(0));

        let kinds = Throttles::new();
        assert_eq!(kinds.admit("rustls::a"), Some(0));
        assert_eq!(kinds.admit("rustls::a"), None);
        assert_eq!(kinds.admit("pingora::b"), Some(0), "kinds are apart");
    }
}
