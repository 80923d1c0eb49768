//! The operator kit in `deploy/`, checked with the real tools: the alert rules with
//! `promtool check rules` and their unit tests with `promtool test rules`; every PromQL
//! expression of the Grafana dashboard parses and names only metrics a running gateway
//! exports, and the dashboard shows refusals, the CRM's nodes, Redis and TLS; the systemd
//! unit passes `systemd-analyze verify`; the documentation and the shipped config agree on
//! what a reload changes and on the defaults the config's comments name. CI installs the
//! tools; where one is missing outside CI, its test says so and passes.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tls::Setup;
use common::{Gateway, Mock};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

/// Run a tool; None when it is not installed (only allowed outside CI).
fn run(tool: &str, args: &[&str], dir: &Path) -> Option<(bool, String)> {
    match Command::new(tool).args(args).current_dir(dir).output() {
        Ok(out) => {
            let text =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            Some((out.status.success(), text))
        }
        Err(_) => {
            assert!(std::env::var_os("CI").is_none(), "CI must have {tool}");
            eprintln!("{tool} is not installed: check skipped");
            None
        }
    }
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let dir = deploy("prometheus");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let count = rules
        .lines()
        .filter(|l| l.trim().starts_with("- alert: "))
        .count();
    assert!(count >= 12, "{count} alerts");
    if let Some((ok, out)) = run("promtool", &["check", "rules", "alerts.yml"], &dir) {
        assert!(ok, "{out}");
        // promtool parsed every rule the file declares.
        assert!(out.contains(&format!("SUCCESS: {count} rules found")), "{out}");
    }
    if let Some((ok, out)) = run("promtool", &["test", "rules", "alerts_test.yml"], &dir) {
        assert!(ok, "{out}");
    }
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no test"
        );
    }
}

/// The metric names an expression uses (identifiers followed by `{`, `[` or space that
/// are not PromQL's own words).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const WORDS: [&str; 12] = [
        "sum",
        "by",
        "rate",
        "increase",
        "histogram_quantile",
        "le",
        "without",
        "on",
        "avg",
        "max",
        "min",
        "count",
    ];
    let mut names = BTreeSet::new();
    // Label matchers hold no metric names: only what stands outside {...} counts.
    let mut depth = 0u32;
    let mut outside = String::new();
    for c in expr.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    for word in outside.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with(|c: char| c.is_ascii_lowercase()) && !WORDS.contains(&word) && word.contains('_')
        {
            names.insert(word.to_string());
        }
    }
    names
}

#[test]
fn every_dashboard_expression_parses_and_uses_exported_metrics_only() {
    let text = std::fs::read_to_string(deploy("grafana/cardgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 16, "{}", exprs.len());
    // The operator sees refusals at every layer, the CRM's nodes, Redis and the
    // certificate's expiry.
    for metric in [
        "cardgate_tls_client_refused_total",
        "cardgate_connections_refused_total",
        "cardgate_source_refusals_total",
        "cardgate_upstream_node_up",
        "cardgate_shared_up",
        "cardgate_tls_certificate_expiry_seconds",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}"
        );
    }

    // A gateway with every optional part (a TLS listener, [shared] on a Redis that is not
    // there), so that every metric a panel may use exists.
    let mock = Mock::start();
    let tls = Setup::new();
    let tls_lines = tls.tls_lines(&format!("127.0.0.1:{}", common::free_port()), false);
    let shared = "url = \"redis://127.0.0.1:1/0\"\nencryption_key_env = \"CARDGATE_SHARED_KEY\"";
    let gw = Gateway::start_with_env(
        &mock.url(),
        &[("server", &tls_lines), ("shared", shared)],
        &[(
            "CARDGATE_SHARED_KEY",
            "0123456789abcdef0123456789abcdef-test-secret",
        )],
    );
    let exported: BTreeSet<String> = gw
        .metrics_now()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            assert!(exported.contains(&name), "{name} (in {expr}) is not exported");
        }
    }

    // Each expression as a recording rule: promtool parses it.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    if let Some((ok, out)) = run("promtool", &["check", "rules", "dashboard.yml"], dir.path()) {
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
            "{out}"
        );
    }
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let unit = std::fs::read_to_string(deploy("systemd/cardgate.service")).unwrap();
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=cardgate",
        "User=cardgate",
        // The admin secret as a credential, where `token_file = "admin-token"` finds it.
        "LoadCredential=admin-token:/etc/cardgate/admin-token\n",
    ] {
        assert!(unit.contains(line), "{line:?} missing");
    }
    // Verified against the binary this test built (the unit names its installed path).
    let dir = tempfile::tempdir().unwrap();
    let local = unit.replace("/usr/local/bin/cardgate", common::BIN);
    std::fs::write(dir.path().join("cardgate.service"), local).unwrap();
    if let Some((ok, out)) = run("systemd-analyze", &["verify", "cardgate.service"], dir.path()) {
        assert!(ok, "{out}");
        let about_unit: Vec<&str> = out.lines().filter(|l| l.contains("cardgate.service")).collect();
        assert!(about_unit.is_empty(), "systemd-analyze: {out}");
    }
}

#[test]
fn metric_names_are_read_outside_label_matchers() {
    let names = metric_names("sum by (le) (rate(cardgate_x_bucket{job=\"a_b\"}[5m])) / sum(cardgate_y)");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["cardgate_x_bucket", "cardgate_y"]
    );
}

/// The shipped config's keys, commented out or not, as `section.key`, with their lines.
fn shipped_keys() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cardgate.toml")).unwrap();
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
    let (mut section, mut keys) = (String::new(), Vec::new());
    for line in text.lines() {
        let bare = line.trim_start_matches('#').trim();
        if let Some(name) = bare.strip_prefix('[').and_then(|r| r.split(']').next()) {
            if word(name) {
                section = name.to_string();
            }
        } else if let Some((key, _)) = bare.split_once(" = ") {
            if !section.is_empty() && word(key) {
                keys.push((format!("{section}.{key}"), line.to_string()));
            }
        }
    }
    keys
}

/// docs/configuration.md's rows, by `section.key`: (default, reload), where a section's
/// table without a reload column takes its heading's "(restart)" or "(all reload in
/// place)".
fn documented_keys() -> Vec<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let (mut rows, mut section, mut whole, mut columns) = (Vec::new(), String::new(), None, 0);
    for line in text.lines() {
        if line.starts_with('#') {
            if let Some(name) = line.split('`').nth(1).and_then(|t| t.strip_prefix('[')) {
                section = name.trim_end_matches(']').to_string();
                whole = [("(restart)", "restart"), ("reload in place)", "yes")]
                    .iter()
                    .find(|(mark, _)| line.ends_with(mark))
                    .map(|(_, r)| r.to_string());
            }
        } else if line.starts_with("| key |") {
            columns = line.split('|').count();
        } else if line.starts_with("| `") {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let reload = if columns == 6 {
                cells[3].to_string()
            } else {
                whole.clone().unwrap_or_default()
            };
            for k in cells[1].split('`').skip(1).step_by(2) {
                rows.push((format!("{section}.{k}"), cells[2].to_string(), reload.clone()));
            }
        }
    }
    rows
}

#[test]
fn the_docs_say_of_every_shipped_key_its_default_and_whether_a_reload_changes_it() {
    let documented = documented_keys();
    let keys = shipped_keys();
    assert!(keys.len() > 60, "{keys:?}");
    let mut checked = 0;
    for (key, line) in keys {
        let Some((_, default, reload)) = documented.iter().find(|(k, _, _)| *k == key) else {
            panic!("docs/configuration.md has no row for {key}");
        };
        assert!(
            reload.starts_with("yes") || reload.starts_with("restart"),
            "docs/configuration.md does not say whether a reload changes {key}: {reload:?}"
        );
        // The shipped line names its default as its value or in its comment.
        if !line.contains("default ") {
            continue;
        }
        // `""` (unset) is described in words on both sides.
        for value in default.split('`').skip(1).step_by(2).filter(|v| *v != "\"\"") {
            assert!(
                line.contains(value),
                "{key}: the documented default {value} is not in {line:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} defaults compared");
}
