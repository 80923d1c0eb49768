//! The `gigma` and `bearer` dialects over real HTTP, with the exact upstream requests the
//! mock saw.

mod common;

use std::thread;
use std::time::Duration;

use common::{token, Gateway, Mock};
use serde_json::{json, Value};

const SEARCH: &str = "/rest/chat/client/search/";
const APP_TOKEN: &str = "gigma-app-token-for-tests-5b1f";

fn gigma(extra: &[(&str, &str)]) -> (Mock, Gateway) {
    let env = [("GIGMA_APP_TOKEN", APP_TOKEN)];
    let mock = Mock::start_dialect("gigma", &env);
    let mut sections = vec![("upstream", "dialect = \"gigma\"")];
    sections.extend_from_slice(extra);
    let gw = Gateway::start_with_env(&mock.url(), &sections, &env);
    (mock, gw)
}

fn calls(mock: &Mock, path: &str) -> Vec<Value> {
    mock.journal().into_iter().filter(|e| e["path"] == path).collect()
}

fn body(e: &Value) -> Value {
    serde_json::from_str(e["body"].as_str().unwrap()).unwrap()
}

fn first_step(gw: &Gateway, client: &str) -> String {
    let r = gw.search(SEARCH, &[("client", client)], false);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["stepId"].as_str().unwrap().to_string()
}

fn login(gw: &Gateway, client: &str, step: &str, code: &str) -> common::Resp {
    gw.search(
        SEARCH,
        &[("client", client), ("stepId", step), ("secretWord", code)],
        true,
    )
}

#[test]
fn gigma_first_step_normalises_the_phone_and_places_a_call() {
    let (mock, gw) = gigma(&[]);
    for client in ["+7 (999) 999-99-90", "8 999 999 99 90", "79999999990"] {
        let r = gw.search(SEARCH, &[("client", client)], false);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["answerType"], 1);
        assert_eq!(v["secretWordValidator"], "^\\d{4}$");
        assert!(
            v["answerText"].as_str().unwrap().contains("+7 999 ***-**-90"),
            "{v}"
        );
        assert_eq!(v["stepId"].as_str().unwrap().len(), 32);
        let last = calls(&mock, "/counterparty/send_password").pop().unwrap();
        assert_eq!(last["method"], "POST");
        assert_eq!(last["headers"]["token"], APP_TOKEN);
        assert_eq!(last["headers"]["content-type"], "application/json");
        assert_eq!(body(&last), json!({"phone": "79999999990"}));
    }
    let before = mock.journal().len();
    for client in ["not a phone", "12345", "a@b.c"] {
        let r = gw.search(SEARCH, &[("client", client)], false);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "BAD_REQUEST"),
            "{client}"
        );
    }
    assert_eq!(mock.journal().len(), before, "a non-phone reached gigma");
}

#[test]
fn gigma_login_answers_a_token_whose_card_the_auth_api_serves() {
    let (mock, gw) = gigma(&[]);
    let client = "+7 999 123-45-67";
    let step = first_step(&gw, client);

    // Unknown step, another phone: refused here.
    let before = calls(&mock, "/counterparty/login").len();
    let r = login(&gw, client, "0123456789abcdef0123456789abcdef", "1111");
    assert_eq!((r.status, r.error_code().as_str()), (400, "STEP_UNKNOWN"));
    let r = login(&gw, "+7 999 000-00-00", &step, "1111");
    assert_eq!((r.status, r.error_code().as_str()), (400, "STEP_UNKNOWN"));
    assert_eq!(calls(&mock, "/counterparty/login").len(), before);

    // A wrong code: gigma's error, with the step.
    let r = login(&gw, client, &step, "0000");
    assert_eq!((r.status, r.error_code().as_str()), (400, "WRONG_CODE"));
    assert_eq!(r.json()["stepId"], step.as_str());
    assert_eq!(r.json()["errorMessage"], "Invalid password");

    let r = login(&gw, client, &step, cardgate::testkit::mock::GIGMA_PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["answerType"], 2);
    let t = v["token"].as_str().unwrap().to_string();
    let last = calls(&mock, "/counterparty/login").pop().unwrap();
    assert_eq!(last["headers"]["token"], APP_TOKEN);
    assert_eq!(body(&last), json!({"phone": "79991234567", "password": "1111"}));

    let r = gw.post_card(&t);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")), "{}", r.body);
    let c = &r.json()["client"];
    assert_eq!(c["id"], "234567");
    assert_eq!(
        (
            c["surname"].as_str(),
            c["firstname"].as_str(),
            c["patronymic"].as_str()
        ),
        (Some("Петров"), Some("Алексей"), Some("Викторович"))
    );
    assert_eq!(c["name"], "Петров Алексей Викторович");
    assert_eq!(c["birthDate"], "1980-04-02");
    assert_eq!(
        (c["type"].as_str(), c["enabled"].as_bool()),
        (Some("0"), Some(true))
    );
    assert_eq!(
        c["contacts"],
        json!({"phone": "+79991234567", "email": "support@itecho.ru"})
    );
    let names: Vec<&str> = c["fieldList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["address", "secondPhone", "manager", "typeName"]);

    // The step is used up; an unknown token has no session, and gigma is not asked.
    let r = login(&gw, client, &step, "1111");
    assert_eq!(r.error_code(), "STEP_UNKNOWN");
    let before = mock.journal().len();
    let unknown = token("nosession");
    let r = gw.post_card(&unknown);
    assert_eq!((r.status, r.error_code().as_str()), (401, "SESSION_UNKNOWN"));
    assert_eq!(mock.journal().len(), before);

    // Purge logs the session out.
    let r = gw.admin("POST", "/cache/purge", &[("token", &t)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"purged": 1, "sessionEnded": true}));
    let logout = calls(&mock, "/counterparty/logout").pop().expect("a logout call");
    assert_eq!(logout["headers"]["authorization"], format!("Bearer {t}"));
    assert_eq!(logout["headers"]["token"], APP_TOKEN);
    assert_eq!(body(&logout), json!({"from_all_devices": false}));
    assert_eq!(gw.post_card(&t).error_code(), "SESSION_UNKNOWN");

    gw.assert_never_shown(&[&t, APP_TOKEN, &unknown, "\"0000\"", "\"1111\"", "password"]);
}

#[test]
fn gigma_steps_expire_and_wrong_codes_meet_the_guard() {
    let (mock, gw) = gigma(&[
        ("search", "max_attempts = 2"),
        ("upstream", "[upstream.gigma]\nstep_ttl = \"1s\""),
    ]);
    let client = "89990001122";
    let step = first_step(&gw, client);
    for _ in 0..2 {
        assert_eq!(login(&gw, client, &step, "0000").error_code(), "WRONG_CODE");
    }
    let before = calls(&mock, "/counterparty/login").len();
    let r = login(&gw, client, &step, "1111");
    assert_eq!((r.status, r.error_code().as_str()), (429, "TOO_MANY_ATTEMPTS"));
    assert_eq!(calls(&mock, "/counterparty/login").len(), before);

    let step = first_step(&gw, client);
    // The behaviour under test: the step's 1 s lifetime (upstream.gigma.step_ttl) running out.
    thread::sleep(Duration::from_millis(1300));
    assert_eq!(login(&gw, client, &step, "1111").error_code(), "STEP_UNKNOWN");
}

#[test]
fn gigma_refusing_the_app_token_is_a_configuration_error() {
    let mock = Mock::start_dialect("gigma", &[("GIGMA_APP_TOKEN", APP_TOKEN)]);
    let wrong = "not-the-app-token-9f8e";
    let gw = Gateway::start_with_env(
        &mock.url(),
        &[("upstream", "dialect = \"gigma\"")],
        &[("GIGMA_APP_TOKEN", wrong)],
    );
    let r = gw.search(SEARCH, &[("client", "79990001122")], false);
    assert_eq!((r.status, r.error_code().as_str()), (503, "CRM_CONFIG_ERROR"));
    gw.assert_never_shown(&[wrong]);

    // Without the variable the gateway does not start, and says which variable.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[upstream]\ndialect = \"gigma\"\nurl = \"{}\"\n", mock.url()),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove("GIGMA_APP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GIGMA_APP_TOKEN") && err.contains("upstream.gigma.app_token_env"),
        "{err}"
    );
}

fn bearer(extra: &[(&str, &str)]) -> (Mock, Gateway) {
    let mock = Mock::start_dialect("bearer", &[]);
    let mut sections = vec![("upstream", "dialect = \"bearer\"")];
    sections.extend_from_slice(extra);
    let gw = Gateway::start(&mock.url(), &sections);
    (mock, gw)
}

fn bearer_calls(mock: &Mock, t: &str) -> Vec<Value> {
    mock.journal()
        .into_iter()
        .filter(|e| e["headers"]["authorization"] == format!("Bearer {t}"))
        .collect()
}

#[test]
fn bearer_checks_the_token_and_builds_a_card() {
    let (mock, gw) = bearer(&[("upstream", "[upstream.bearer]\nclient_type = \"1\"")]);
    let t = token("user");
    let r = gw.get_card(&t);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")), "{}", r.body);
    let c = &r.json()["client"];
    assert_eq!(c["id"], cardgate::testkit::mock::bearer_user_id(&t));
    for f in ["name", "surname", "firstname", "patronymic"] {
        assert_eq!(c[f], "", "{f} is present and empty");
    }
    assert_eq!(
        (c["type"].as_str(), c["enabled"].as_bool()),
        (Some("1"), Some(true))
    );
    let seen = bearer_calls(&mock, &t);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["method"], "GET");
    assert_eq!(seen[0]["path"], "/v3/security/api/auth/auth");
    assert_eq!(seen[0]["headers"]["accept"], "application/json");
    assert_eq!(
        seen[0]["headers"]["user-agent"],
        concat!("cardgate/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(gw.post_card(&t).header("x-cache"), Some("HIT"));

    let t2 = token("profile");
    let c = gw.post_card(&t2).json()["client"].clone();
    assert_eq!(
        (c["firstname"].as_str(), c["surname"].as_str(), c["name"].as_str()),
        (Some("Ivan"), Some("Petrov"), Some("Petrov Ivan Sergeevich"))
    );
    gw.assert_never_shown(&[&t, &t2]);
}

#[test]
fn bearer_anonymous_and_unauthorized_are_negative_answers() {
    let (mock, gw) = bearer(&[]);
    let anon = token("anon");
    let bad = token("bad");
    for _ in 0..2 {
        let r = gw.post_card(&anon);
        assert_eq!((r.status, r.error_code().as_str()), (404, "CLIENT_NOT_FOUND"));
        let r = gw.post_card(&bad);
        assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
        assert_eq!(r.json()["errorText"], "Unauthorized");
    }
    assert_eq!(
        bearer_calls(&mock, &anon).len(),
        1,
        "anonymous is cached negatively"
    );
    assert_eq!(bearer_calls(&mock, &bad).len(), 1, "401 is cached negatively");

    let r = gw.search(SEARCH, &[("client", "x")], false);
    assert_eq!((r.status, r.error_code().as_str()), (501, "SEARCH_NOT_SUPPORTED"));
    assert_eq!(r.json()["errorMessage"], r.json()["errorText"]);
    gw.assert_never_shown(&[&anon, &bad]);
}
