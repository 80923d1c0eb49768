//! The search brute-force guard: one-time codes must not be guessable through the gateway.
//!
//! Per search step (keyed by the hashed `stepId`) it remembers the `secretWordValidator`
//! the internal system sent and the number of failed answers. A `secretWord` that does not
//! match the validator is rejected locally; after `search.max_attempts` failures the step
//! is closed (429) without asking the internal system. Per client identifier (hashed,
//! written canonically so that `+7 (999) 123-45-67` and `89991234567` are one phone) at most
//! `search.max_starts_per_hour` first steps go through, so nobody floods a client with SMS
//! or calls. State lives in bounded, expiring moka caches and holds no identifier in clear.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use regex::{Regex, RegexBuilder};

use crate::config::SearchSection;
use crate::error::GatewayError;
use crate::keys::{CacheKey, TokenHasher};
use crate::normalise::SearchAnswer;
use crate::parse::SearchRequest;

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

struct Step {
    validator: Option<Regex>,
    failures: AtomicU32,
}

pub struct SearchGuard {
    steps: Cache<CacheKey, Arc<Step>>,
    starts: Cache<CacheKey, Arc<AtomicU32>>,
    max_attempts: u32,
    max_starts: u32,
}

impl SearchGuard {
    pub fn new(cfg: &SearchSection) -> Self {
        SearchGuard {
            steps: Cache::builder()
                .max_capacity(cfg.max_tracked)
                .time_to_idle(cfg.step_ttl)
                .build(),
            // Created at the first start, never updated: a fixed one-hour window.
            starts: Cache::builder()
                .max_capacity(cfg.max_tracked)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            max_attempts: cfg.max_attempts,
            max_starts: cfg.max_starts_per_hour,
        }
    }

    /// Decide before the internal system is asked. A refused step is counted as failed.
    pub async fn admit(&self, keys: &TokenHasher, req: &SearchRequest) -> Result<(), Refusal> {
        let Some(step_id) = &req.step_id else {
            let key = keys.id_key("search client", canonical_identifier(&req.client).as_bytes());
            let count = self
                .starts
                .get_with(key, async { Arc::new(AtomicU32::new(0)) })
                .await;
            let n = count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            return if n > self.max_starts {
                Err(Refusal::Starts)
            } else {
                Ok(())
            };
        };
        let key = keys.id_key("search step", step_id.as_bytes());
        let Some(step) = self.steps.get(&key).await else {
            return Ok(());
        };
        if step.failures.load(Ordering::Relaxed) >= self.max_attempts {
            return Err(Refusal::Attempts);
        }
        if let (Some(v), Some(word)) = (&step.validator, &req.secret_word) {
            if !v.is_match(word.expose()) {
                step.failures.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::SecretWord);
            }
        }
        Ok(())
    }

    /// Learn from the internal system's answer to an admitted step.
    pub async fn record(
        &self,
        keys: &TokenHasher,
        req: &SearchRequest,
        answer: &Result<SearchAnswer, GatewayError>,
    ) {
        let asked = req
            .step_id
            .as_ref()
            .map(|id| keys.id_key("search step", id.as_bytes()));
        let failed = match answer {
            // The system's own verdict on this step: a wrong code, an unknown step...
            Err(GatewayError::CrmRejected { .. }) => true,
            // "Try again" on the same step after a secret word is a failed attempt too.
            Ok(a) => a.answer_type == 1 && req.secret_word.is_some() && a.step_id == req.step_id,
            // Gateway-side failures say nothing about the code.
            Err(_) => false,
        };
        let mut failures = 0;
        if let Some(key) = asked {
            if failed {
                let step = self
                    .steps
                    .get_with(key, async { Arc::new(Step::new(None, 0)) })
                    .await;
                failures = step.failures.fetch_add(1, Ordering::Relaxed) + 1;
            } else if matches!(answer, Ok(a) if a.answer_type == 2) {
                self.steps.invalidate(&key).await;
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
            // The same step again keeps its failures; a new step starts from none.
            let carried = if Some(key) == asked { failures } else { 0 };
            let validator = validator.as_deref().and_then(compile);
            self.steps
                .insert(key, Arc::new(Step::new(validator, carried)))
                .await;
        }
    }
}

impl Step {
    fn new(validator: Option<Regex>, failures: u32) -> Self {
        Step {
            validator,
            failures: AtomicU32::new(failures),
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
mod tests {
    use super::*;
    use crate::parse::{search_params, SearchRequest};

    fn cfg() -> SearchSection {
        SearchSection {
            max_attempts: 3,
            max_starts_per_hour: 2,
            ..SearchSection::default()
        }
    }

    fn req(body: &str) -> SearchRequest {
        search_params(Some("application/x-www-form-urlencoded"), body.as_bytes(), 256).unwrap()
    }

    fn step1(step: &str) -> Result<SearchAnswer, GatewayError> {
        Ok(SearchAnswer {
            body: Default::default(),
            answer_type: 1,
            step_id: Some(step.into()),
            validator: Some(r"^\d{4}$".into()),
            token: None,
            session: None,
        })
    }

    fn wrong() -> Result<SearchAnswer, GatewayError> {
        Err(GatewayError::CrmRejected {
            status: 400,
            code: "WRONG".into(),
            text: "wrong".into(),
        })
    }

    #[test]
    fn identifiers_have_one_spelling() {
        for p in [
            "+7 (999) 999-99-90",
            "8 999 999 99 90",
            "79999999990",
            "9999999990",
        ] {
            assert_eq!(canonical_identifier(p), "79999999990", "{p}");
        }
        assert_eq!(canonical_identifier(" A@B.c "), "a@b.c");
        assert_eq!(canonical_identifier("12345"), "12345");
    }

    #[tokio::test]
    async fn starts_are_limited_per_identifier() {
        let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
        assert_eq!(g.admit(&k, &req("client=%2B7+999+999+99+90")).await, Ok(()));
        assert_eq!(g.admit(&k, &req("client=89999999990")).await, Ok(()));
        assert_eq!(
            g.admit(&k, &req("client=79999999990")).await,
            Err(Refusal::Starts)
        );
        assert_eq!(g.admit(&k, &req("client=other")).await, Ok(()));
    }

    #[tokio::test]
    async fn validator_and_attempts_are_enforced_per_step() {
        let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
        let first = req("client=x");
        g.record(&k, &first, &step1("s1")).await;
        let bad_form = req("client=x&stepId=s1&secretWord=abc");
        assert_eq!(g.admit(&k, &bad_form).await, Err(Refusal::SecretWord));
        let guess = req("client=x&stepId=s1&secretWord=1234");
        for _ in 0..2 {
            assert_eq!(g.admit(&k, &guess).await, Ok(()));
            g.record(&k, &guess, &wrong()).await;
        }
        // 1 local + 2 upstream failures = max_attempts.
        assert_eq!(g.admit(&k, &guess).await, Err(Refusal::Attempts));
        // Another step is untouched; an unknown step goes through and is then counted.
        g.record(&k, &first, &step1("s2")).await;
        assert_eq!(
            g.admit(&k, &req("client=x&stepId=s2&secretWord=1234")).await,
            Ok(())
        );
        let unknown = req("client=x&stepId=zz&secretWord=1");
        for _ in 0..3 {
            assert_eq!(g.admit(&k, &unknown).await, Ok(()));
            g.record(&k, &unknown, &wrong()).await;
        }
        assert_eq!(g.admit(&k, &unknown).await, Err(Refusal::Attempts));
    }

    #[tokio::test]
    async fn a_same_step_retry_keeps_its_failures() {
        let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
        g.record(&k, &req("client=x"), &step1("s1")).await;
        let guess = req("client=x&stepId=s1&secretWord=1111");
        for _ in 0..3 {
            assert_eq!(g.admit(&k, &guess).await, Ok(()));
            g.record(&k, &guess, &step1("s1")).await;
        }
        assert_eq!(g.admit(&k, &guess).await, Err(Refusal::Attempts));
    }
}
