//! SIGHUP reloads the configuration file: what can change in place changes for the next
//! request, restart-only keys are named and kept, a broken file changes nothing, the admin
//! secret's file is read again; and SIGUSR1 reopens the log file.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{eventually, token, Gateway, Mock};

/// Send SIGHUP and wait until the reload with this result has been counted `n` times.
fn hup(gw: &Gateway, result: &str, n: f64) {
    gw.proc.signal("HUP");
    let name = format!("cardgate_config_reloads_total{{result=\"{result}\"}}");
    assert!(
        eventually(Duration::from_secs(10), || gw.metric_now(&name) == n),
        "{name} never reached {n}: {}",
        gw.proc.output()
    );
}

#[test]
fn a_changed_ttl_takes_effect_for_the_next_request_without_a_restart() {
    let mock = Mock::start();
    let mut gw = Gateway::start(&mock.url(), &[("cache", "ttl = \"60s\"")]);
    let first = token("reload-a");
    assert_eq!(gw.get_card(&first).header("x-cache"), Some("MISS"));
    assert_eq!(gw.get_card(&first).header("x-cache"), Some("HIT"));
    let before = gw.metric_now("cardgate_config_last_reload_timestamp_seconds");
    assert!(before > 0.0);

    gw.edit_config(|t| t.replace("ttl = \"60s\"", "ttl = \"0s\""));
    hup(&gw, "ok", 1.0);
    let line = gw.wait_event("configuration reloaded");
    assert_eq!(line["changed"], serde_json::json!(["cache"]), "{line}");
    assert_eq!(line["trigger"], "SIGHUP");
    assert!(gw.metric_now("cardgate_config_last_reload_timestamp_seconds") >= before);
    assert_eq!(gw.metric_now("cardgate_config_last_reload_successful"), 1.0);

    // No caching from now on: a new token misses twice. The process is the same one.
    let second = token("reload-b");
    assert_eq!(gw.get_card(&second).header("x-cache"), Some("MISS"));
    assert_eq!(gw.get_card(&second).header("x-cache"), Some("MISS"));
    assert_eq!(mock.calls_for(&second).len(), 2);
    assert!(!gw.proc.exited());
}

#[test]
fn restart_only_keys_are_named_and_kept_while_the_rest_changes() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("search", "max_attempts = 5")]);
    let old_listen = gw.addr.clone();
    gw.edit_config(|t| {
        t.replace("threads = 2", "threads = 3")
            .replace(&old_listen, "127.0.0.1:1")
            .replace("max_attempts = 5", "max_attempts = 2")
    });
    hup(&gw, "ok", 1.0);
    let warn = gw.wait_event("need a restart");
    assert_eq!(warn["level"], "warn");
    let keys: Vec<&str> = warn["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["server.listen", "server.threads"], "{warn}");
    let done = gw.wait_event("configuration reloaded");
    assert_eq!(done["changed"], serde_json::json!(["search"]), "{done}");
    // Still listening where it was.
    assert_eq!(gw.get_card(&token("kept")).status, 200);
}

#[test]
fn a_broken_file_changes_nothing_and_is_reported() {
    let mock = Mock::start();
    let gw = Gateway::start(&mock.url(), &[("cache", "ttl = \"60s\"")]);
    let t = token("kept-config");
    assert_eq!(gw.get_card(&t).header("x-cache"), Some("MISS"));

    gw.edit_config(|t| t.replace("ttl = \"60s\"", "ttl = \"sometime\""));
    hup(&gw, "error", 1.0);
    let line = gw.wait_event("not reloaded");
    assert_eq!(line["level"], "error");
    assert!(line["error"].as_str().unwrap().contains("cache.ttl"), "{line}");
    assert_eq!(gw.metric_now("cardgate_config_last_reload_successful"), 0.0);
    assert_eq!(gw.metric_now("cardgate_config_reloads_total{result=\"ok\"}"), 0.0);
    // The running configuration stays: the card is still cached.
    assert_eq!(gw.get_card(&t).header("x-cache"), Some("HIT"));

    // Repaired, it reloads.
    gw.edit_config(|t| t.replace("ttl = \"sometime\"", "ttl = \"30s\""));
    hup(&gw, "ok", 1.0);
    assert_eq!(gw.metric_now("cardgate_config_last_reload_successful"), 1.0);
}

#[test]
fn the_admin_token_from_a_credentials_file_guards_the_port_and_a_sighup_reads_it_again() {
    use std::os::unix::fs::PermissionsExt;
    let mock = Mock::start();
    // As systemd's LoadCredential= hands it over: a relative name, found in the directory
    // $CREDENTIALS_DIRECTORY names (not in the working directory).
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("admin-token");
    let write = |secret: &str, mode: u32| {
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let (first, second) = ("first-admin-token-0123456789", "second-admin-token-0123456789");
    write(first, 0o600);
    let gw = Gateway::start_with_env(
        &mock.url(),
        &[("admin", "token_file = \"admin-token\"\nmetrics_public = true")],
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    );
    let clear = |secret: Option<&str>| {
        let bearer = secret.map(|s| format!("Bearer {s}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        gw.admin("POST", "/cache/clear", &headers).status
    };
    assert_eq!(clear(None), 401);
    assert_eq!(clear(Some(second)), 401);
    assert_eq!(clear(Some(first)), 200);

    // The same config, a new secret in the file: the SIGHUP reads it.
    write(second, 0o600);
    hup(&gw, "ok", 1.0);
    assert_eq!(clear(Some(first)), 401);
    assert_eq!(clear(Some(second)), 200);

    // A file every user may read fails the reload; the running secret stays.
    write(first, 0o644);
    hup(&gw, "error", 1.0);
    let line = gw.wait_event("not reloaded");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("admin.token_file") && error.contains("readable by every user"),
        "{line}"
    );
    assert_eq!(clear(Some(second)), 200);
    assert_eq!(clear(Some(first)), 401);
    gw.assert_never_shown(&[first, second]);
}

#[test]
fn sigusr1_reopens_the_log_file_after_it_was_moved() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cardgate.log");
    let gw = Gateway::start(&mock.url(), &[("log", &format!("file = \"{}\"", file.display()))]);
    let first = token("before-rotate");
    assert_eq!(gw.get_card(&first).status, 200);
    assert!(eventually(Duration::from_secs(5), || std::fs::read_to_string(
        &file
    )
    .unwrap_or_default()
    .contains("\"api\":\"auth\"")));
    let rotated = dir.path().join("cardgate.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    gw.proc.signal("USR1");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("log file reopened")),
        "no new file"
    );
    let second = token("after-rotate");
    assert_eq!(gw.get_card(&second).status, 200);
    assert!(eventually(Duration::from_secs(5), || std::fs::read_to_string(
        &file
    )
    .unwrap_or_default()
    .contains("\"api\":\"auth\"")));
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("cardgate started"), "{old}");
    assert!(!old.contains("log file reopened"));
    // Nothing went to standard output but what Pingora printed before the file opened.
    assert!(!gw.proc.output().contains("\"api\":\"auth\""));
    for t in [&first, &second] {
        assert!(!old.contains(t.as_str()));
        assert!(!std::fs::read_to_string(&file).unwrap().contains(t.as_str()));
    }
}

/// SIGHUPs from the moment the pid file names the process, while it starts and after,
/// each followed by a new admin connection: the process lives through every one and
/// answers every connection it accepts (a SIGHUP that found no handler yet ended the
/// process, and the connections it had queued were reset).
#[test]
fn sighups_from_the_first_moment_never_end_the_process_or_reset_an_admin_connection() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let (listen, admin) = (common::free_port(), common::free_port());
    let run = dir.path().join("run");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\nruntime_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [upstream]\nurl = \"{}\"\n",
            run.display(),
            mock.url()
        ),
    )
    .unwrap();
    let mut proc = common::Proc::spawn(&["--config", path.to_str().unwrap()], &[]);
    let pid = proc.child.id();
    let pid_file = run.join(format!("cardgate-{listen}.pid"));
    // Polled without a pause: the first SIGHUP follows the pid file as closely as can be.
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid.to_string()) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no pid file: {}",
            proc.output()
        );
        assert!(!proc.exited(), "{}", proc.output());
        std::thread::yield_now();
    }
    let hup = || {
        // SAFETY: kill only sends a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    };
    let metrics = format!("127.0.0.1:{admin}");
    let (mut answered, start) = (0, std::time::Instant::now());
    while answered < 40 {
        assert!(start.elapsed() < Duration::from_secs(20), "{answered} answers");
        hup();
        assert!(!proc.exited(), "SIGHUP ended the process: {}", proc.output());
        // A fresh connection each time; before the admin port listens it is refused.
        let Ok(mut conn) = std::net::TcpStream::connect(&metrics) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        let read = conn
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .and_then(|()| conn.read_to_string(&mut answer));
        assert!(read.is_ok(), "{read:?}: {}", proc.output());
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        answered += 1;
    }
    let reloaded = eventually(Duration::from_secs(10), || {
        let r = common::request("GET", &format!("http://{metrics}/metrics"), &[], None);
        common::sample(&r.body, "cardgate_config_reloads_total{result=\"ok\"}") >= 1.0
    });
    assert!(reloaded, "{}", proc.output());
    assert!(!proc.exited());
}
