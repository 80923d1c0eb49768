//! The life of the process: what it says when it starts and stops, draining on SIGTERM as
//! a balancer needs it, SIGQUIT with and without a successor (the old process leaves as
//! soon as its last request is answered), SIGINT, `--upgrade` with nothing to take over from or
//! that never gets the sockets, and the private runtime directory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, request, token, Gateway, Mock, Proc, Raw, BIN};

#[test]
fn start_and_stop_are_json_lines_with_what_an_operator_needs() {
    let mock = Mock::start();
    let mut gw = Gateway::start(&mock.url(), &[]);
    let start = gw.wait_event("cardgate started");
    assert_eq!(start["level"], "info");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["dialect"], "iq");
    assert_eq!(start["listen"], gw.addr.as_str());
    assert_eq!(start["admin"], gw.admin.as_str());
    assert_eq!(start["config"], gw.config.to_str().unwrap());
    assert!(start["cacheMaxBytes"].as_u64().unwrap() > 0);
    // Pingora's own messages arrive as JSON lines too, with their source.
    assert!(
        gw.events()
            .iter()
            .any(|e| e["source"].as_str().is_some_and(|s| s.starts_with("pingora"))),
        "{}",
        gw.proc.output()
    );
    // Every line is JSON.
    let out = gw.proc.output();
    assert!(
        out.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{out}"
    );

    // The pid file names the process, in a private directory.
    let pid_file = std::fs::read_dir(&gw.run_dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".pid"))
        .expect("a pid file");
    assert_eq!(
        std::fs::read_to_string(pid_file.path()).unwrap().trim(),
        gw.proc.child.id().to_string()
    );
    let mode = std::fs::metadata(&gw.run_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    gw.proc.signal("TERM");
    gw.proc.wait_exit(Duration::from_secs(6)).expect("exits");
    let stop = gw.wait_event("cardgate stopped");
    assert_eq!(stop["reason"], "SIGTERM");
    assert!(!pid_file.path().exists(), "the pid file is removed at exit");
}

#[test]
fn sigterm_turns_readiness_503_first_and_keeps_accepting_for_the_drain_delay() {
    let mock = Mock::start();
    let mut gw = Gateway::start(&mock.url(), &[("server", "drain_delay = \"4s\"")]);
    let mut kept = Raw::connect(&gw.addr);
    let head = |t: &str| format!("GET /rest/chat/client/id/{t} HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = kept.roundtrip(head(&token("before")).as_bytes()).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, None));

    gw.proc.signal("TERM");
    let signalled = Instant::now();
    gw.wait_event("SIGTERM: draining");
    // A balancer polling on fresh connections sees 503 ...
    let ready = gw.admin("GET", "/readyz", &[]);
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (503, Some("draining"))
    );
    // ... while new chat-server connections are still taken, and answers say "close".
    let fresh = request(
        "GET",
        &gw.url(&format!("/rest/chat/client/id/{}", token("during"))),
        &[],
        None,
    );
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("connection"), Some("close"));
    let r = kept.roundtrip(head(&token("kept")).as_bytes()).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "checked within the delay"
    );

    // After the delay the listener stops; the admin port answers until the process exits.
    gw.proc
        .wait_exit(Duration::from_secs(12))
        .expect("exits after the delay");
    assert!(
        signalled.elapsed() >= Duration::from_secs(4),
        "{:?}",
        signalled.elapsed()
    );
    assert!(gw.proc.child.wait().unwrap().success());
}

#[test]
fn sigquit_without_a_successor_is_logged_and_serving_goes_on_until_sigint() {
    let mock = Mock::start();
    let mut gw = Gateway::start(&mock.url(), &[]);
    gw.proc.signal("QUIT");
    let line = gw.wait_event("no new process waits");
    assert_eq!(line["level"], "warn");
    assert_eq!(gw.get_card(&token("after-quit")).status, 200);
    assert_eq!(gw.admin("GET", "/readyz", &[]).status, 200);
    assert!(!gw.proc.exited());
    // SIGINT ends it at once, cleanly, and says so.
    gw.proc.signal("INT");
    gw.proc
        .wait_exit(Duration::from_secs(5))
        .expect("SIGINT ends the process");
    assert!(gw.proc.child.wait().unwrap().success());
    assert_eq!(gw.wait_event("cardgate stopped")["reason"], "SIGINT");
}

#[test]
fn upgrade_with_nothing_to_take_over_from_says_so_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nruntime_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\n",
            common::free_port(),
            dir.path().join("run").display(),
            common::free_port()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["--upgrade", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--upgrade: no running cardgate"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[test]
fn an_upgrade_hands_the_sockets_over_through_a_private_socket() {
    let mock = Mock::start();
    let mut old = Gateway::start(&mock.url(), &[]);
    let t = token("upgrade");
    assert_eq!(old.get_card(&t).status, 200);
    let url = old.url(&format!("/rest/chat/client/id/{}", token("lag-upgrade")));

    let mut new = Proc::spawn(&["--upgrade", "--config", old.config.to_str().unwrap()], &[]);
    // The new process announces itself, then waits on the upgrade socket.
    common::wait_event(&new, "waiting for the running process");
    let found = eventually(Duration::from_secs(3), || {
        std::fs::read_dir(&old.run_dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".upgrade.sock"))
    });
    assert!(found, "no upgrade socket in {}", old.run_dir.display());
    let sock = std::fs::read_dir(&old.run_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".upgrade.sock"))
        .unwrap();
    // Private (the directory around it is private too).
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "upgrade socket mode {mode:o}");

    // A request in flight in the old process (the CRM takes 500 ms) when SIGQUIT comes.
    let inflight = std::thread::spawn(move || request("GET", &url, &[], None));
    let arrived = eventually(Duration::from_secs(10), || {
        old.metric_now("cardgate_inflight_requests") >= 1.0
    });
    assert!(arrived, "the request never arrived");
    old.proc.signal("QUIT");
    let quit = Instant::now();
    old.wait_event("handing the listening sockets");
    common::wait_event(&new, "cardgate started");
    // The old process answers what it has, and leaves as soon as it has: within the grace
    // period (5 s in the test config), not after a fixed wait.
    assert_eq!(inflight.join().unwrap().status, 200);
    old.proc
        .wait_exit(Duration::from_secs(15))
        .expect("old process exits");
    let took = quit.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the old process left {took:?} after SIGQUIT"
    );
    assert!(old.proc.child.wait().unwrap().success());
    let stop = old.wait_event("cardgate stopped");
    assert_eq!(
        (stop["reason"].as_str(), stop["unfinishedRequests"].as_i64()),
        (Some("upgrade: the new process serves"), Some(0))
    );
    let r = old.get_card(&token("served-by-new"));
    assert_eq!(r.status, 200);
    assert_eq!(old.admin("GET", "/healthz", &[]).status, 200);
    assert!(!new.exited());
    let pid_file = sock.to_string_lossy().replace(".upgrade.sock", ".pid");
    assert_eq!(
        std::fs::read_to_string(pid_file).unwrap().trim(),
        new.child.id().to_string()
    );
    new.signal("TERM");
    new.wait_exit(Duration::from_secs(6)).expect("new process exits");
}

#[test]
fn an_upgrade_that_never_gets_the_sockets_ends_in_one_line_and_the_old_process_serves_on() {
    let mock = Mock::start();
    let old = Gateway::start(&mock.url(), &[]);
    let mut new = Proc::spawn(&["--upgrade", "--config", old.config.to_str().unwrap()], &[]);
    common::wait_event(&new, "waiting for the running process");
    // No SIGQUIT: the new process gives up after its 5 s and says so once.
    new.wait_exit(Duration::from_secs(15))
        .expect("the waiting process gives up");
    assert_eq!(new.child.wait().unwrap().code(), Some(1));
    eventually(Duration::from_secs(5), || new.output().contains("cardgate: "));
    let out = new.output();
    let said: Vec<&str> = out
        .lines()
        .filter(|l| !l.contains("\"level\":\"info\""))
        .collect();
    assert_eq!(said.len(), 1, "{out}");
    let pid = old.proc.child.id();
    assert!(
        said[0].starts_with("cardgate: --upgrade: no sockets arrived within 5 s")
            && said[0].contains(&format!("(pid {pid})")),
        "{out}"
    );
    // The old process never knew: it serves, and a SIGQUIT now finds nobody waiting.
    assert_eq!(old.get_card(&token("still-old")).status, 200);
    old.proc.signal("QUIT");
    old.wait_event("no new process waits");
    assert_eq!(old.admin("GET", "/readyz", &[]).status, 200);
}
