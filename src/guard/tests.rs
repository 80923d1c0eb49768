//! The search guard: validators, attempts, starts per identifier, and its memory bound.

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

/// Admit, ask nobody, and settle and record with `answer`, as the gateway does.
async fn settle(
    g: &SearchGuard,
    k: &TokenHasher,
    r: &SearchRequest,
    answer: &Result<SearchAnswer, GatewayError>,
) {
    let admission = g
        .admit(k, r)
        .await
        .map_err(|e| format!("refused: {e:?}"))
        .unwrap();
    admission.settle(r, answer);
    g.record(k, r, answer).await;
}

async fn admit(g: &SearchGuard, k: &TokenHasher, r: &SearchRequest) -> Result<(), Refusal> {
    g.admit(k, r).await.map(drop)
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
    assert_eq!(canonical_identifier("tel:+7 999 999 99 90"), "79999999990");
    assert_eq!(canonical_identifier("007 999 999-99-90"), "79999999990");
    assert_eq!(canonical_identifier(" A@B.c "), "a@b.c");
    assert_eq!(canonical_identifier("12345"), "12345");
}

#[test]
fn look_alike_spellings_are_refused() {
    let params = |client: &str| {
        let body = format!(
            "client={}",
            form_urlencoded::byte_serialize(client.as_bytes()).collect::<String>()
        );
        search_params(Some("application/x-www-form-urlencoded"), body.as_bytes(), 256)
    };
    for spelling in [
        "+7\u{a0}999 999 99 90",
        "+7\u{2007}999 999 99 90",
        "+7 \u{ff19}99 999 99 90",
        "+7\u{200b}9999999990",
    ] {
        assert_eq!(params(spelling).unwrap_err().status(), 400, "{spelling:?}");
    }
    assert!(params("+7 999 999-99-90").is_ok());
}

#[tokio::test]
async fn starts_are_limited_per_identifier() {
    let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
    assert_eq!(admit(&g, &k, &req("client=%2B7+999+999+99+90")).await, Ok(()));
    assert_eq!(admit(&g, &k, &req("client=89999999990")).await, Ok(()));
    assert_eq!(
        admit(&g, &k, &req("client=79999999990")).await,
        Err(Refusal::Starts)
    );
    assert_eq!(admit(&g, &k, &req("client=other")).await, Ok(()));
}

#[tokio::test]
async fn validator_and_attempts_are_enforced_per_step() {
    let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
    let first = req("client=x");
    g.record(&k, &first, &step1("s1")).await;
    let bad_form = req("client=x&stepId=s1&secretWord=abc");
    assert_eq!(admit(&g, &k, &bad_form).await, Err(Refusal::SecretWord));
    let guess = req("client=x&stepId=s1&secretWord=1234");
    for _ in 0..2 {
        settle(&g, &k, &guess, &wrong()).await;
    }
    // 1 local + 2 upstream failures = max_attempts.
    assert_eq!(admit(&g, &k, &guess).await, Err(Refusal::Attempts));
    // Another step is untouched; an unknown step goes through and is then counted.
    g.record(&k, &first, &step1("s2")).await;
    assert_eq!(
        admit(&g, &k, &req("client=x&stepId=s2&secretWord=1234")).await,
        Ok(())
    );
    let unknown = req("client=x&stepId=zz&secretWord=1");
    for _ in 0..3 {
        settle(&g, &k, &unknown, &wrong()).await;
    }
    assert_eq!(admit(&g, &k, &unknown).await, Err(Refusal::Attempts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_get_exactly_the_allowed_attempts() {
    let (g, k) = (
        Arc::new(SearchGuard::new(&cfg())),
        Arc::new(TokenHasher::random()),
    );
    g.record(&k, &req("client=x"), &step1("s1")).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (g, k) = (g.clone(), k.clone());
            tokio::spawn(async move {
                let guess = req(&format!("client=x&stepId=s1&secretWord={:04}", i));
                admit(&g, &k, &guess).await.is_ok()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 3);
    // Starts too: 50 concurrent first steps for one phone, 2 allowed.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (g, k) = (g.clone(), k.clone());
            tokio::spawn(async move { admit(&g, &k, &req("client=89999999990")).await.is_ok() })
        })
        .collect();
    let mut started = 0;
    for t in tasks {
        started += usize::from(t.await.unwrap());
    }
    assert_eq!(started, 2);
}

#[tokio::test]
async fn gateway_side_failures_give_the_attempt_back() {
    let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
    g.record(&k, &req("client=x"), &step1("s1")).await;
    let guess = req("client=x&stepId=s1&secretWord=1234");
    for _ in 0..10 {
        settle(&g, &k, &guess, &Err(GatewayError::CrmTimeout)).await;
    }
    let first = req("client=89999999990");
    for _ in 0..10 {
        settle(&g, &k, &first, &Err(GatewayError::CrmTimeout)).await;
    }
}

#[tokio::test]
async fn steps_share_one_compiled_validator() {
    let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
    for i in 0..10 {
        g.record(&k, &req("client=x"), &step1(&format!("s{i}"))).await;
    }
    g.patterns.run_pending_tasks().await;
    assert_eq!(g.patterns.entry_count(), 1);
    let a = g.steps.get(&k.id_key("search step", b"s1")).await.unwrap();
    let b = g.steps.get(&k.id_key("search step", b"s2")).await.unwrap();
    let (a, b) = (
        a.validator.lock().unwrap().clone(),
        b.validator.lock().unwrap().clone(),
    );
    assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
}

#[tokio::test]
async fn a_same_step_retry_keeps_its_failures() {
    let (g, k) = (SearchGuard::new(&cfg()), TokenHasher::random());
    g.record(&k, &req("client=x"), &step1("s1")).await;
    let guess = req("client=x&stepId=s1&secretWord=1111");
    for _ in 0..3 {
        settle(&g, &k, &guess, &step1("s1")).await;
    }
    assert_eq!(admit(&g, &k, &guess).await, Err(Refusal::Attempts));
}
