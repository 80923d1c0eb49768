//! One cache entry: a stored answer's status, freshness and body in one allocation.
//!
//! Times are kept as milliseconds of a process clock (tokio's, so that tests can pause it)
//! so that the header stays 24 bytes;
//! the body is the answer as it is written to the chat server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

use triomphe::ThinArc;

use super::STALE_RETRY_INTERVAL;

/// Bytes of an entry's allocation before its body: the reference count, [`Meta`] and the
/// body's length (`triomphe`'s header-with-slice layout).
const ALLOC_HEAD: usize = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Meta>();

/// The bytes the allocation of an entry with a body of `body_len` bytes takes.
pub(super) fn alloc_size(body_len: usize) -> usize {
    let size = ALLOC_HEAD.saturating_add(body_len);
    crate::alloc::usable_size(size.saturating_add(7) & !7)
}

/// A stored answer: its status, freshness and body bytes ready to write, in one
/// allocation (a thin, reference-counted header-plus-slice), cheap to clone into an answer.
#[derive(Clone)]
pub struct Stored(ThinArc<Meta, u8>);

/// What an entry knows besides its body; 24 bytes.
struct Meta {
    /// End of freshness, in [`clock_ms`] milliseconds.
    fresh_until: u64,
    /// Length of the stale window after `fresh_until`, in milliseconds.
    stale_for: u32,
    /// When a refresh was last started ahead of expiry or failed, in milliseconds after
    /// `fresh_until - refresh_lead` ([`NEVER`]: not yet): at most one a
    /// [`STALE_RETRY_INTERVAL`], whether the CRM answers or not.
    last_refresh: AtomicU32,
    /// Refresh-ahead: how long before `fresh_until` a hit starts a background refresh, in
    /// milliseconds (0: never).
    refresh_lead: u32,
    status: u16,
    negative: bool,
}

const NEVER: u32 = u32::MAX;

/// An entry as [`Stored::to_shared`] gives it: the bytes, how long they are fresh and how
/// long they are worth keeping.
pub struct SharedRecord {
    pub bytes: Vec<u8>,
    pub fresh: Duration,
    pub keep: Duration,
}

impl SharedRecord {
    pub fn as_record(&self) -> crate::shared::Record<'_> {
        crate::shared::Record {
            bytes: &self.bytes,
            fresh: self.fresh,
            keep: self.keep,
        }
    }
}

/// The shared record's version byte and head length (see [`Stored::to_shared`]).
const SHARED_VERSION: u8 = 1;
const SHARED_HEAD: usize = 20;

/// Wall-clock milliseconds: replicas agree on these, not on their process clocks.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The process clock's origin: entries keep times as milliseconds after it.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Start the clock entries keep time by (before the first entry is made).
pub(super) fn start_clock() {
    LazyLock::force(&EPOCH);
}

/// Milliseconds from [`EPOCH`] to `t` (0 before it).
pub(super) fn clock_ms(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(*EPOCH).as_millis()).unwrap_or(u64::MAX)
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX - 1)
}

impl Stored {
    /// An entry fresh for `fresh` from `now`, then stale for `stale`; a hit refreshes it in
    /// the background once it is within `lead` of the end of its freshness
    /// (`cache.refresh_ahead` of its TTL; zero: never).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        status: u16,
        body: &[u8],
        negative: bool,
        now: Instant,
        fresh: Duration,
        stale: Duration,
        lead: Duration,
    ) -> Self {
        let meta = Meta {
            fresh_until: clock_ms(now).saturating_add(u64::try_from(fresh.as_millis()).unwrap_or(u64::MAX)),
            stale_for: millis_u32(stale),
            last_refresh: AtomicU32::new(NEVER),
            refresh_lead: millis_u32(lead.min(fresh)),
            status,
            negative,
        };
        Stored(ThinArc::from_header_and_slice(meta, body))
    }

    /// The entry as replicas exchange it (see [`crate::shared`]): version, status,
    /// negative, the end of freshness in Unix milliseconds, the stale window, the lead,
    /// then the body; and how long it is worth keeping from `now`.
    pub(super) fn to_shared(&self, now: Instant) -> SharedRecord {
        let m = self.meta();
        let left = m.fresh_until.saturating_sub(clock_ms(now));
        let fresh_until_unix = unix_ms().saturating_add(left);
        let mut out = Vec::with_capacity(self.body().len().saturating_add(SHARED_HEAD));
        out.push(SHARED_VERSION);
        out.extend_from_slice(&m.status.to_le_bytes());
        out.push(u8::from(m.negative));
        out.extend_from_slice(&fresh_until_unix.to_le_bytes());
        out.extend_from_slice(&m.stale_for.to_le_bytes());
        out.extend_from_slice(&m.refresh_lead.to_le_bytes());
        out.extend_from_slice(self.body());
        let keep = left.saturating_add(u64::from(m.stale_for));
        SharedRecord {
            bytes: out,
            fresh: Duration::from_millis(left),
            keep: Duration::from_millis(keep),
        }
    }

    /// An entry another replica stored, as this one keeps it; None if it is malformed or
    /// entirely past its stale window.
    pub(super) fn from_shared(bytes: &[u8], now: Instant) -> Option<Self> {
        let (head, body) = (bytes.get(..SHARED_HEAD)?, bytes.get(SHARED_HEAD..)?);
        if head.first() != Some(&SHARED_VERSION) {
            return None;
        }
        let u16_at = |i: usize| {
            Some(u16::from_le_bytes(
                head.get(i..i.checked_add(2)?)?.try_into().ok()?,
            ))
        };
        let u32_at = |i: usize| {
            Some(u32::from_le_bytes(
                head.get(i..i.checked_add(4)?)?.try_into().ok()?,
            ))
        };
        let u64_at = |i: usize| {
            Some(u64::from_le_bytes(
                head.get(i..i.checked_add(8)?)?.try_into().ok()?,
            ))
        };
        let status = u16_at(1)?;
        let negative = *head.get(3)? != 0;
        let fresh_until_unix = u64_at(4)?;
        let stale_for = u32_at(12)?;
        let lead = u32_at(16)?;
        let unix = unix_ms();
        let fresh = Duration::from_millis(fresh_until_unix.saturating_sub(unix));
        // Part of the stale window may be gone already.
        let past = unix.saturating_sub(fresh_until_unix);
        let stale = Duration::from_millis(u64::from(stale_for).checked_sub(past)?);
        if fresh.is_zero() && stale.is_zero() {
            return None;
        }
        let lead = Duration::from_millis(u64::from(lead));
        Some(Self::new(status, body, negative, now, fresh, stale, lead))
    }

    /// Still fresh, within its refresh-ahead lead of the end of freshness, and no refresh
    /// started or failed in the last [`STALE_RETRY_INTERVAL`]: true for one caller, who
    /// starts the background refresh (every other hit goes on without any work).
    pub fn claim_refresh(&self, now: Instant) -> bool {
        let m = self.meta();
        let due = m.refresh_lead > 0
            && clock_ms(now).saturating_add(u64::from(m.refresh_lead)) >= m.fresh_until
            && self.is_fresh(now);
        if !due {
            return false;
        }
        let last = m.last_refresh.load(Ordering::Relaxed);
        let at = self.since_refresh_window(now);
        let recent = last != NEVER && at.saturating_sub(last) < millis_u32(STALE_RETRY_INTERVAL);
        !recent
            && m.last_refresh
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn meta(&self) -> &Meta {
        &self.0.header.header
    }

    pub fn status(&self) -> u16 {
        self.meta().status
    }

    /// The answer body.
    pub fn body(&self) -> &[u8] {
        &self.0.slice
    }

    /// A "not found" answer of the CRM.
    pub fn is_negative(&self) -> bool {
        self.meta().negative
    }

    /// The errorCode of a negative answer (read back from its body), for the log line.
    pub fn error_code(&self) -> Option<String> {
        if !self.is_negative() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(self.body()).ok()?;
        v.get("errorCode")?.as_str().map(str::to_string)
    }

    pub(super) fn same_entry(&self, other: &Stored) -> bool {
        std::ptr::eq(self.0.slice.as_ptr(), other.0.slice.as_ptr())
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        clock_ms(now) < self.meta().fresh_until
    }

    /// End of the stale window, in [`clock_ms`] milliseconds.
    pub(super) fn stale_until(&self) -> u64 {
        self.meta()
            .fresh_until
            .saturating_add(u64::from(self.meta().stale_for))
    }

    /// May this entry stand in for a failed refresh at `now`?
    pub fn may_serve_stale(&self, now: Instant) -> bool {
        !self.meta().negative && clock_ms(now) < self.stale_until()
    }

    /// Milliseconds after `fresh_until - refresh_lead` (0 before it).
    fn since_refresh_window(&self, now: Instant) -> u32 {
        let m = self.meta();
        let window = m.fresh_until.saturating_sub(u64::from(m.refresh_lead));
        u32::try_from(clock_ms(now).saturating_sub(window)).unwrap_or(NEVER - 1)
    }

    /// Was a refresh started ahead of expiry, or did one fail, less than
    /// [`STALE_RETRY_INTERVAL`] ago?
    pub(super) fn refresh_failed_recently(&self, now: Instant) -> bool {
        match self.meta().last_refresh.load(Ordering::Relaxed) {
            NEVER => false,
            at => self.since_refresh_window(now).saturating_sub(at) < millis_u32(STALE_RETRY_INTERVAL),
        }
    }

    pub(super) fn note_failed_refresh(&self, now: Instant) {
        self.meta()
            .last_refresh
            .store(self.since_refresh_window(now), Ordering::Relaxed);
    }
}

/// The body, so that an answer can share it without a copy.
impl AsRef<[u8]> for Stored {
    fn as_ref(&self) -> &[u8] {
        self.body()
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("status", &self.status())
            .field("bytes", &self.body().len())
            .field("negative", &self.is_negative())
            .finish()
    }
}
