//! The Search client API over real HTTP (iq dialect): the two-step flow in both encodings,
//! the error shape, the brute-force guard, token pre-warm, and secrets kept out of output.

mod common;

use std::time::Duration;

use common::{eventually, token, Gateway, Mock};
use serde_json::Value;

const SEARCH: &str = "/rest/chat/client/search/";

fn searches(mock: &Mock) -> Vec<Value> {
    mock.journal()
        .into_iter()
        .filter(|e| e["path"] == SEARCH)
        .collect()
}

/// The error shape of this route: errorCode, errorText = errorMessage, and stepId if sent.
fn search_error(r: &common::Resp, step: Option<&str>) -> String {
    let code = r.error_code();
    let v = r.json();
    assert_eq!(v["errorMessage"], v["errorText"], "{}", r.body);
    match step {
        Some(s) => assert_eq!(v["stepId"], s, "{}", r.body),
        None => assert!(v.get("stepId").is_none(), "{}", r.body),
    }
    code
}

#[test]
fn two_steps_identify_a_client_in_both_encodings() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    for (json, path) in [(false, SEARCH), (true, "/rest/chat/client/search/chat-42")] {
        let client = format!("+7 999 {} 90", if json { "111-22" } else { "333-44" });
        let r = gw.search(
            path,
            &[
                ("client", &client),
                ("clientIdType", "phone"),
                ("channelId", "support"),
            ],
            json,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let step1 = r.json();
        assert_eq!(step1["answerType"], 1);
        assert_eq!(step1["secretWordValidator"], "^\\d{4}$");
        assert_eq!(step1["crmHint"]["kept"], true, "unknown fields pass through");
        let step_id = step1["stepId"].as_str().unwrap().to_string();

        let r = gw.search(
            path,
            &[
                ("client", &client),
                ("stepId", &step_id),
                ("secretWord", cardgate::testkit::mock::SEARCH_CODE),
            ],
            json,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let step2 = r.json();
        assert_eq!(step2["answerType"], 2);
        assert!(step2["token"].as_str().unwrap().starts_with("srch-"));

        // The CRM saw POST /rest/chat/client/search/ in the chat server's encoding.
        let seen = searches(&mock);
        let last = &seen[seen.len() - 2..];
        let want_ct = if json {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        };
        for e in last {
            assert_eq!(e["method"], "POST");
            assert_eq!(e["headers"]["content-type"], want_ct);
        }
        if json {
            let body: Value = serde_json::from_str(last[0]["body"].as_str().unwrap()).unwrap();
            assert_eq!(body["client"], client.as_str());
            assert_eq!(body["channelId"], "support");
        } else {
            assert!(last[0]["body"].as_str().unwrap().contains("clientIdType=phone"));
        }
    }
    assert_eq!(
        gw.metric("cardgate_search_requests_total{outcome=\"answer2\",step=\"next\"}"),
        2.0
    );
}

#[test]
fn search_encoding_can_be_fixed_for_the_crm() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("upstream", "search_encoding = \"json\"")]);
    let r = gw.search(SEARCH, &[("client", "a@b.c"), ("clientIdType", "email")], false);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = searches(&mock);
    assert_eq!(seen[0]["headers"]["content-type"], "application/json");
    let body: Value = serde_json::from_str(seen[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"client": "a@b.c", "clientIdType": "email"})
    );
}

#[test]
fn search_errors_carry_code_text_message_and_step() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("limits", "max_body_bytes = 256")]);
    let step_id = gw.search(SEARCH, &[("client", "errors")], false).json()["stepId"]
        .as_str()
        .unwrap()
        .to_string();

    let r = gw.search(
        SEARCH,
        &[("client", "errors"), ("stepId", &step_id), ("secretWord", "0000")],
        true,
    );
    assert_eq!(
        (r.status, search_error(&r, Some(&step_id)).as_str()),
        (400, "WRONG_CODE")
    );
    let r = gw.search(SEARCH, &[("client", "missing-x")], false);
    assert_eq!(
        (r.status, search_error(&r, None).as_str()),
        (404, "CLIENT_NOT_FOUND")
    );

    // Bad requests: none reaches the CRM.
    let before = searches(&mock).len();
    let r = gw.search(SEARCH, &[("stepId", "s1")], false);
    assert_eq!((r.status, search_error(&r, None).as_str()), (400, "BAD_REQUEST"));
    let r = gw.search(SEARCH, &[("client", "x"), ("clientIdType", "fax")], true);
    assert_eq!((r.status, search_error(&r, None).as_str()), (400, "BAD_REQUEST"));
    let post =
        |ct: &str, body: &[u8]| common::request("POST", &gw.url(SEARCH), &[("content-type", ct)], Some(body));
    let r = post("text/plain", b"client=x");
    assert_eq!((r.status, search_error(&r, None).as_str()), (400, "BAD_REQUEST"));
    let r = post("application/json", b"{\"client\":");
    assert_eq!((r.status, search_error(&r, None).as_str()), (400, "BAD_REQUEST"));
    let r = post("application/x-www-form-urlencoded", &[b'a'; 300]);
    assert_eq!(
        (r.status, search_error(&r, None).as_str()),
        (413, "PAYLOAD_TOO_LARGE")
    );
    let r = common::request("GET", &gw.url(SEARCH), &[], None);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(searches(&mock).len(), before);

    // Gateway-side failures get the same shape, with the step.
    for (mode, status, code) in [
        ("500", 502, "CRM_ERROR"),
        ("reset", 502, "CRM_UNAVAILABLE"),
        ("slow", 504, "CRM_TIMEOUT"),
    ] {
        mock.fail(mode);
        let r = gw.search(
            SEARCH,
            &[("client", "errors"), ("stepId", &step_id), ("secretWord", "1234")],
            false,
        );
        assert_eq!(
            (r.status, search_error(&r, Some(&step_id))),
            (status, code.to_string())
        );
    }
}

#[test]
fn the_guard_stops_brute_force_without_asking_the_crm() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &mock.url(),
        &[("search", "max_attempts = 3\nmax_starts_per_hour = 2")],
    );
    let client = "+7 (999) 555-66-77";
    let step_id = gw.search(SEARCH, &[("client", client)], false).json()["stepId"]
        .as_str()
        .unwrap()
        .to_string();
    let attempt = |word: &str| {
        gw.search(
            SEARCH,
            &[("client", client), ("stepId", &step_id), ("secretWord", word)],
            false,
        )
    };

    // Not what the validator asks for: refused here.
    let before = searches(&mock).len();
    let r = attempt("12ab");
    assert_eq!(
        (r.status, search_error(&r, Some(&step_id)).as_str()),
        (400, "SECRET_WORD_INVALID")
    );
    assert_eq!(
        searches(&mock).len(),
        before,
        "the CRM saw a locally refused attempt"
    );

    // Two wrong codes reach the CRM; with the local refusal that makes max_attempts.
    for word in ["0001", "0002"] {
        assert_eq!(search_error(&attempt(word), Some(&step_id)), "WRONG_CODE");
    }
    assert_eq!(searches(&mock).len(), before + 2);
    for word in ["0003", cardgate::testkit::mock::SEARCH_CODE] {
        let r = attempt(word);
        assert_eq!(
            (r.status, search_error(&r, Some(&step_id)).as_str()),
            (429, "TOO_MANY_ATTEMPTS")
        );
    }
    assert_eq!(
        searches(&mock).len(),
        before + 2,
        "the CRM saw attempts past the limit"
    );

    // First steps per identifier, whatever its notation: 1 above + 1 here, then refused.
    assert_eq!(
        gw.search(SEARCH, &[("client", "8 999 555 66 77")], true).status,
        200
    );
    let before = searches(&mock).len();
    let r = gw.search(SEARCH, &[("client", "79995556677")], false);
    assert_eq!(
        (r.status, search_error(&r, None).as_str()),
        (429, "TOO_MANY_SEARCHES")
    );
    assert_eq!(searches(&mock).len(), before);
    assert_eq!(
        gw.search(SEARCH, &[("client", "someone@else.org")], false).status,
        200
    );

    for reason in ["secret_word", "attempts", "starts"] {
        let n = gw.metric(&format!(
            "cardgate_search_guard_refusals_total{{reason=\"{reason}\"}}"
        ));
        assert!(n >= 1.0, "{reason}: {n}");
    }
}

fn identify(gw: &Gateway, client: &str) -> String {
    let step = gw.search(SEARCH, &[("client", client)], false).json();
    let r = gw.search(
        SEARCH,
        &[
            ("client", client),
            ("stepId", step["stepId"].as_str().unwrap()),
            ("secretWord", cardgate::testkit::mock::SEARCH_CODE),
        ],
        false,
    );
    r.json()["token"].as_str().unwrap().to_string()
}

#[test]
fn a_finished_search_prewarms_the_card() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let t = identify(&gw, "prewarm@example.org");
    assert!(
        eventually(Duration::from_secs(5), || {
            gw.metric_now("cardgate_prewarm_total{outcome=\"ok\"}") >= 1.0
        }),
        "no pre-warm"
    );
    let r = gw.post_card(&t);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    assert_eq!(
        mock.calls_for(&t).len(),
        1,
        "the card was fetched once, in the background"
    );
    gw.assert_never_shown(&[&t]);

    let cold = Gateway::start(&mock.url(), &[("search", "prewarm = false")]);
    let t = identify(&cold, "cold@example.org");
    assert_eq!(cold.post_card(&t).header("x-cache"), Some("MISS"));
}

#[test]
fn secret_words_and_identifiers_never_show() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[]);
    let secret = token("secretword");
    let client = format!("{}@example.org", token("client"));
    // A first step carrying a secret word: forwarded to the CRM, never shown by us.
    let r = gw.search(SEARCH, &[("client", &client), ("secretWord", &secret)], false);
    assert_eq!(r.status, 200);
    let step_id = r.json()["stepId"].as_str().unwrap().to_string();
    let r = gw.search(
        SEARCH,
        &[("client", &client), ("stepId", &step_id), ("secretWord", &secret)],
        true,
    );
    assert_eq!(search_error(&r, Some(&step_id)), "SECRET_WORD_INVALID");
    assert!(
        searches(&mock)[0]["body"].as_str().unwrap().contains(&secret),
        "the secret word reached the CRM"
    );
    gw.assert_never_shown(&[&secret, &client]);
    let out = gw.proc.output();
    assert!(out.contains("\"api\":\"search\""), "{out}");
}
