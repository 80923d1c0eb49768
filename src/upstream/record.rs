//! What one request's calls to the internal system leave for its access-log line: the
//! status and duration of the last call, and the correlation every call carries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::correlation::Correlation;

/// The status and duration of the last upstream call made for one request, for its
/// access-log line, and the correlation every call for it carries.
#[derive(Debug, Default)]
pub struct CallRecord {
    status: AtomicU64,
    micros: AtomicU64,
    /// The request id and trace context the call carries to the CRM.
    pub(super) correlation: Correlation,
}

impl CallRecord {
    /// A record for a call that carries `correlation` to the CRM.
    pub fn new(correlation: Correlation) -> Self {
        CallRecord {
            correlation,
            ..CallRecord::default()
        }
    }

    pub(super) fn record(&self, status: Option<u16>, elapsed: Duration) {
        self.status.store(status.map_or(0, u64::from), Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
        self.micros.store(micros, Ordering::Relaxed);
    }

    /// The correlation back, once the calls are made.
    pub fn into_correlation(self) -> Correlation {
        self.correlation
    }

    /// The upstream status (None: no answer) and duration, if a call was made.
    pub fn get(&self) -> Option<(Option<u16>, Duration)> {
        let micros = self.micros.load(Ordering::Relaxed);
        if micros == 0 {
            return None;
        }
        let status = u16::try_from(self.status.load(Ordering::Relaxed))
            .ok()
            .filter(|s| *s != 0);
        Some((status, Duration::from_micros(micros)))
    }
}
