//! Replicas on a Redis that speaks TLS only, asks for a client certificate and knows the
//! gateway only as an ACL user with the commands, keys and channels it needs: the card
//! cache, the purge channel and the guard work through it, the password and the client
//! key read from `$CREDENTIALS_DIRECTORY` as systemd's `LoadCredential=` leaves them; and
//! `cardgate check` refuses a password in a URL, a password given twice and a password
//! file every user may read.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::certs::{ca, leaf, write};
use common::redis::{set_mode, Node};
use common::{eventually, token, Gateway, Mock, BIN};

const KEY_ENV: (&str, &str) = (
    "CARDGATE_SHARED_KEY",
    "0123456789abcdef0123456789abcdef-test-secret",
);
const PASSWORD: &str = "acl-pw-0f3e9c";

/// What the gateway needs of Redis, and nothing else (docs/operations.md shows it).
const ACL: &str = "~cardgate:* &cardgate:* -@all +ping +role +evalsha +script|load +time +get +set +del +exists +scan +hget +hset +hdel +hincrby +pexpire +publish +subscribe +cluster|nodes +cluster|slots";

struct Setup {
    _redis: Node,
    /// The `[shared]` lines.
    toml: String,
    creds: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let authority = ca("redis CA");
    let (cert, key) = leaf(&authority, &["127.0.0.1"], 1, false);
    let (client_cert, client_key) = leaf(&authority, &["cardgate"], 2, false);
    let ca_file = write(d, "ca.pem", &authority.cert.pem());
    let conf = write(
        d,
        "redis.conf",
        &format!(
            "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients yes\n\
             save \"\"\nappendonly no\ndir {}\nuser default off\nuser cardgate on >{PASSWORD} {ACL}\n",
            write(d, "server.pem", &cert).display(),
            write(d, "server.key", &key).display(),
            ca_file.display(),
            d.display(),
        ),
    );
    let redis = Node::tls_server(&conf);
    // What systemd's LoadCredential= leaves: files only the service's user may read.
    let creds = d.join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for (name, text) in [
        ("redis-password", format!("{PASSWORD}\n")),
        ("redis-client.pem", client_cert),
        ("redis-client.key", client_key),
    ] {
        set_mode(&write(&creds, name, &text), 0o400);
    }
    let toml = format!(
        "url = \"rediss://{}/0\"\nca_file = \"{}\"\nclient_cert = \"redis-client.pem\"\nclient_key = \"redis-client.key\"\n\
         username = \"cardgate\"\npassword_file = \"redis-password\"\n",
        redis.addr,
        ca_file.display()
    );
    Setup {
        _redis: redis,
        toml,
        creds,
        _dir: dir,
    }
}

fn replica(mock: &Mock, s: &Setup) -> Gateway {
    let shared = format!(
        "{}cards = true\nencryption_key_env = \"{}\"\ntimeout = \"500ms\"",
        s.toml, KEY_ENV.0
    );
    let creds = s.creds.display().to_string();
    let gw = Gateway::start_with_env(
        &mock.url(),
        &[("shared", shared.as_str()), ("upstream", "timeout = \"3s\"")],
        &[KEY_ENV, ("CREDENTIALS_DIRECTORY", &creds)],
    );
    let connected = eventually(Duration::from_secs(10), || {
        gw.metric_now("cardgate_shared_up") == 1.0
    });
    assert!(connected, "{}", gw.proc.output());
    gw
}

#[test]
fn over_tls_with_a_client_certificate_and_an_acl_user_the_replicas_share() {
    let s = setup();
    let mock = Mock::start();
    let a = replica(&mock, &s);
    let b = replica(&mock, &s);
    let t = token("tls");
    assert_eq!(a.get_card(&t).status, 200);
    assert_eq!(b.get_card(&t).status, 200);
    assert_eq!(mock.calls_for(&t).len(), 1, "B read it from Redis");

    // The purge channel and the guard's scripts work as the ACL user.
    assert_eq!(a.get_card(&t).header("x-cache"), Some("HIT"));
    assert_eq!(b.admin("POST", "/cache/purge", &[("token", &t)]).status, 200);
    let gone = eventually(Duration::from_secs(3), || {
        a.get_card(&t).header("x-cache") == Some("MISS")
    });
    assert!(gone, "the purge did not reach A");
    let r = a.search(
        "/rest/chat/client/search/",
        &[("client", "someone@example.org")],
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(b.admin("POST", "/cache/clear", &[]).status, 200);

    for gw in [&a, &b] {
        let errors = common::redis::shared_errors(gw);
        assert_eq!(errors, 0.0, "{}", gw.proc.output());
        gw.assert_never_shown(&[PASSWORD, &t]);
    }
}

fn check(shared: &str, creds: Option<&Path>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[upstream]\nurl = \"http://127.0.0.1:18081\"\n[cache]\nhash_key_env = \"{}\"\n[shared]\n{shared}\n", KEY_ENV.0),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config", path.to_str().unwrap()])
        .env(KEY_ENV.0, KEY_ENV.1)
        .env_remove("CREDENTIALS_DIRECTORY");
    if let Some(creds) = creds {
        cmd.env("CREDENTIALS_DIRECTORY", creds);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_refuses_a_password_in_a_url_twice_given_or_readable_by_every_user() {
    let (ok, out) = check("url = \"redis://cardgate:hunter2@127.0.0.1:6379/0\"", None);
    assert!(
        !ok && out.contains("shared.url: must not hold a password"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "hunter2\n");
    set_mode(&pw, 0o644);
    let (ok, out) = check(
        &format!(
            "url = \"redis://127.0.0.1:6379/0\"\npassword_file = \"{}\"",
            pw.display()
        ),
        None,
    );
    assert!(
        !ok && out.contains("shared.password_file: ") && out.contains("readable by every user"),
        "{out}"
    );
    set_mode(&pw, 0o600);
    let (ok, out) = check(
        "url = \"redis://127.0.0.1:6379/0\"\npassword_file = \"pw\"",
        Some(dir.path()),
    );
    assert!(ok, "found in $CREDENTIALS_DIRECTORY: {out}");
    let (ok, out) = check(
        "url = \"redis://127.0.0.1:6379/0\"\npassword_file = \"pw\"\npassword_env = \"X\"",
        Some(dir.path()),
    );
    assert!(!ok && out.contains("not both"), "{out}");
    let (ok, out) = check("url = \"redis://127.0.0.1:6379/0\"\npassword_file = \"pw\"", None);
    assert!(
        !ok && out.contains("shared.password_file: pw: "),
        "not in the working directory: {out}"
    );
}
