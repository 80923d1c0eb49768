//! The search brute-force guard: one-time codes must not be guessable through the gateway.
//!
//! Per search step (keyed by the hashed `stepId`) it remembers the `secretWordValidator`
//! the internal system sent and the number of failed answers. A `secretWord` that does not
//! match the validator is rejected locally; after `search.max_attempts` failures the step
//! is closed (429) without asking the internal system. Per client identifier (hashed,
//! written canonically so that `+7 (999) 123-45-67` and `89991234567` are one phone) at most
//! `search.max_starts_per_hour` first steps go through, so nobody floods a client with SMS
//! or calls. State lives in bounded, expiring moka caches and holds no identifier in clear.
//! With `[shared]` the counters and validators live in Redis ([`crate::shared::search`]),
//! so that every replica counts against the same limits; while Redis cannot answer, each
//! replica counts locally.

// Input from the chat server or the CRM reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;
use regex::{Regex, RegexBuilder};

use crate::config::SearchSection;
use crate::error::GatewayError;
use crate::keys::{CacheKey, TokenHasher};
use crate::normalise::SearchAnswer;
use crate::parse::SearchRequest;
use crate::shared::{Counter, Shared};

/// Compiled validators are bounded in size (the regex crate matches in linear time).
const VALIDATOR_SIZE_LIMIT: usize = 256 * 1024;

/// Why the guard refused a step, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    SecretWord,
    Attempts,
    Starts,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::SecretWord => "secret_word",
            Refusal::Attempts => "attempts",
            Refusal::Starts => "starts",
        }
    }

    pub fn error(self) -> GatewayError {
        match self {
            Refusal::SecretWord => GatewayError::SecretWordInvalid,
            Refusal::Attempts => GatewayError::TooManyAttempts,
            Refusal::Starts => GatewayError::TooManySearches,
        }
    }
}

/// What the guard keeps per step: the validator (shared with every step that got the
/// same pattern) and the attempts counted against it, in-flight ones included.
struct Step {
    validator: Mutex<Option<Arc<Regex>>>,
    attempts: AtomicU32,
}

/// What an admitted step holds: the counter it took one unit of.
enum Held {
    Step(Arc<Step>),
    Start(Arc<AtomicU32>),
    /// A unit of a counter in Redis, and its key.
    Shared(Arc<Shared>, Counter, CacheKey),
}

/// One admitted attempt (or first step). [`Admission::settle`] gives it back when the
/// outcome says nothing about the client; dropped unsettled, it stays counted.
#[must_use = "settle the admission with the outcome"]
pub struct Admission(Held);

impl Admission {
    /// Settle with the outcome, on the very counter the admission took from (even if the
    /// step was evicted and tracked anew meanwhile).
    pub fn settle(self, req: &SearchRequest, answer: &Result<SearchAnswer, GatewayError>) {
        let gateway_side = matches!(answer, Err(e) if !matches!(e, GatewayError::CrmRejected { .. }));
        let failed = match answer {
            // The system's own verdict on this step: a wrong code, an unknown step...
            Err(GatewayError::CrmRejected { .. }) => true,
            // "Try again" on the same step after a secret word is a failed attempt too.
            Ok(a) => a.answer_type == 1 && req.secret_word.is_some() && a.step_id == req.step_id,
            // Gateway-side failures say nothing about the code.
            Err(_) => false,
        };
        match self.0 {
            // A first step that never reached the client is given back.
            Held::Start(count) if gateway_side => release(&count),
            Held::Start(_) => {}
            Held::Step(step) if !failed => release(&step.attempts),
            Held::Step(_) => {}
            Held::Shared(shared, Counter::Start, key) if gateway_side => {
                tokio::spawn(async move { shared.release(Counter::Start, &key).await });
            }
            Held::Shared(shared, Counter::Step, key) if !failed => {
                tokio::spawn(async move { shared.release(Counter::Step, &key).await });
            }
            Held::Shared(..) => {}
        }
    }
}

/// Bytes one tracked step costs (moka's entry, the key, the step), measured by
/// `cargo bench --bench memory -- guard` and rounded up; validators are shared.
pub const STEP_BYTES: u64 = 512;

/// Distinct validator patterns kept compiled (internal systems send a handful).
const MAX_PATTERNS: u64 = 64;

pub struct SearchGuard {
    steps: Cache<CacheKey, Arc<Step>>,
    starts: Cache<CacheKey, Arc<AtomicU32>>,
    patterns: Cache<String, Option<Arc<Regex>>>,
    /// `search.max_attempts` and `max_starts_per_hour` (changed in place by a reload).
    max_attempts: AtomicU32,
    max_starts: AtomicU32,
    step_ttl: Duration,
    shared: Option<Arc<Shared>>,
}

impl SearchGuard {
    pub fn new(cfg: &SearchSection) -> Self {
        SearchGuard {
            // Bounded in bytes: every step weighs the same, its validator being shared.
            steps: Cache::builder()
                .max_capacity(cfg.max_tracked.saturating_mul(STEP_BYTES).min(cfg.max_memory))
                .weigher(|_, _| STEP_BYTES as u32)
                .time_to_idle(cfg.step_ttl)
                .build(),
            // Created at the first start, never updated: a fixed one-hour window.
            starts: Cache::builder()
                .max_capacity(cfg.max_tracked)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            patterns: Cache::builder().max_capacity(MAX_PATTERNS).build(),
            max_attempts: AtomicU32::new(cfg.max_attempts),
            max_starts: AtomicU32::new(cfg.max_starts_per_hour),
            step_ttl: cfg.step_ttl,
            shared: None,
        }
    }

    /// Count in Redis, shared by every replica (locally while it cannot answer).
    pub fn with_shared(mut self, shared: Arc<Shared>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// New limits for the attempts and starts admitted from now on.
    pub fn apply(&self, cfg: &SearchSection) {
        self.max_attempts.store(cfg.max_attempts, Ordering::Relaxed);
        self.max_starts.store(cfg.max_starts_per_hour, Ordering::Relaxed);
    }

    fn start_key(keys: &TokenHasher, req: &SearchRequest) -> CacheKey {
        keys.id_key("search client", canonical_identifier(&req.client).as_bytes())
    }

    /// Decide before the internal system is asked. An admitted step holds one attempt
    /// (or one start) from here on, so that concurrent guesses cannot all pass; the
    /// [`Admission`] gives it back when the outcome says nothing about the client. A
    /// local refusal counts as a failed attempt.
    pub async fn admit(&self, keys: &TokenHasher, req: &SearchRequest) -> Result<Admission, Refusal> {
        if let Some(shared) = &self.shared {
            if let Some(admitted) = self.admit_shared(shared, req).await {
                return admitted;
            }
        }
        let Some(step_id) = &req.step_id else {
            let count = self
                .starts
                .get_with(Self::start_key(keys, req), async { Arc::new(AtomicU32::new(0)) })
                .await;
            reserve(&count, self.max_starts.load(Ordering::Relaxed)).ok_or(Refusal::Starts)?;
            return Ok(Admission(Held::Start(count)));
        };
        let key = keys.id_key("search step", step_id.as_bytes());
        // An unknown step is tracked from its first attempt on, so its guesses are counted
        // before the internal system answers any of them.
        let step = self
            .steps
            .get_with(key, async { Arc::new(Step::new(None)) })
            .await;
        reserve(&step.attempts, self.max_attempts.load(Ordering::Relaxed)).ok_or(Refusal::Attempts)?;
        let validator = step.validator.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let (Some(v), Some(word)) = (validator, &req.secret_word) {
            if !v.is_match(word.expose()) {
                return Err(Refusal::SecretWord);
            }
        }
        Ok(Admission(Held::Step(step)))
    }

    /// [`SearchGuard::admit`] on the counters in Redis; None if Redis cannot say.
    async fn admit_shared(
        &self,
        shared: &Arc<Shared>,
        req: &SearchRequest,
    ) -> Option<Result<Admission, Refusal>> {
        let hour = Duration::from_secs(3600);
        let Some(step_id) = &req.step_id else {
            let key = shared.id("search client", canonical_identifier(&req.client).as_bytes());
            let max = self.max_starts.load(Ordering::Relaxed);
            let (admitted, _) = shared.reserve(Counter::Start, &key, max, hour).await?;
            return Some(if admitted {
                Ok(Admission(Held::Shared(shared.clone(), Counter::Start, key)))
            } else {
                Err(Refusal::Starts)
            });
        };
        let key = shared.id("search step", step_id.as_bytes());
        let max = self.max_attempts.load(Ordering::Relaxed);
        let (admitted, pattern) = shared.reserve(Counter::Step, &key, max, self.step_ttl).await?;
        if !admitted {
            return Some(Err(Refusal::Attempts));
        }
        let validator = match &pattern {
            Some(p) => self.compiled(p).await,
            None => None,
        };
        if let (Some(v), Some(word)) = (validator, &req.secret_word) {
            if !v.is_match(word.expose()) {
                // Counted as a failed attempt: the unit stays taken.
                return Some(Err(Refusal::SecretWord));
            }
        }
        Some(Ok(Admission(Held::Shared(shared.clone(), Counter::Step, key))))
    }

    /// Learn from the internal system's answer: a finished step is forgotten, a next step
    /// gets its validator.
    pub async fn record(
        &self,
        keys: &TokenHasher,
        req: &SearchRequest,
        answer: &Result<SearchAnswer, GatewayError>,
    ) {
        if let (Some(id), Ok(SearchAnswer { answer_type: 2, .. })) = (&req.step_id, answer) {
            let key = keys.id_key("search step", id.as_bytes());
            self.steps.invalidate(&key).await;
            if let Some(shared) = &self.shared {
                shared.forget("guard", Counter::Step.kind(), &key).await;
            }
        }
        if let Ok(SearchAnswer {
            answer_type: 1,
            step_id: Some(next),
            validator,
            ..
        }) = answer
        {
            let key = keys.id_key("search step", next.as_bytes());
            if let Some(shared) = &self.shared {
                let pattern = validator.as_deref().filter(|p| p.len() <= MAX_PATTERN_BYTES);
                shared.set_validator(&key, pattern, self.step_ttl).await;
            }
            let validator = match validator {
                Some(pattern) => self.compiled(pattern).await,
                None => None,
            };
            // The same step again keeps its attempts; a new step starts from none.
            let step = self
                .steps
                .get_with(key, async { Arc::new(Step::new(None)) })
                .await;
            *step.validator.lock().unwrap_or_else(|e| e.into_inner()) = validator;
        }
    }

    /// The compiled form of a validator, shared by every step that carries the pattern.
    async fn compiled(&self, pattern: &str) -> Option<Arc<Regex>> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return None;
        }
        self.patterns
            .get_with_by_ref(pattern, async { compile(pattern).map(Arc::new) })
            .await
    }
}

/// Longest validator pattern considered (longer ones are not enforced).
const MAX_PATTERN_BYTES: usize = 4096;

/// Take one unit of `counter` if fewer than `max` are taken.
fn reserve(counter: &AtomicU32, max: u32) -> Option<()> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then(|| n.saturating_add(1))
        })
        .ok()
        .map(|_| ())
}

/// Give one unit of `counter` back.
fn release(counter: &AtomicU32) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

impl Step {
    fn new(validator: Option<Arc<Regex>>) -> Self {
        Step {
            validator: Mutex::new(validator),
            attempts: AtomicU32::new(0),
        }
    }
}

/// A validator the internal system sent; one that does not compile is not enforced.
fn compile(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(pattern)
        .size_limit(VALIDATOR_SIZE_LIMIT)
        .build()
        .ok()
}

/// One spelling per identifier: phones as digits with country code 7 (see
/// [`crate::parse::phone_digits`]), anything else trimmed and lowercased.
pub fn canonical_identifier(client: &str) -> String {
    crate::parse::phone_digits(client).unwrap_or_else(|| client.trim().to_lowercase())
}

#[cfg(test)]
mod tests;
