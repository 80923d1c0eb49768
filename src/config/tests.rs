//! The configuration as a file says it: defaults, keys named in errors, every mistake at once.

use super::*;
use std::time::Duration;

const MIN: &str = "[upstream]\nurl = \"http://127.0.0.1:18081\"\n";

#[test]
fn defaults_apply_with_only_the_url() {
    let c = Config::from_toml(MIN).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.upstream.timeout, Duration::from_secs(2));
    assert_eq!(c.upstream.auth_method, AuthMethod::Post);
    assert_eq!(c.cache.max_size, 256 * 1024 * 1024);
    assert_eq!(c.limits.max_body_bytes, 16 * 1024);
}

#[test]
fn missing_url_is_an_error() {
    let e = Config::from_toml("[server]\nthreads = 1\n").unwrap_err();
    assert!(e.0.contains("upstream.url"), "{e}");
    let e = Config::from_toml("[server]\nthreads = 1\n[upstream]\ntimeout = \"1s\"\n").unwrap_err();
    assert!(e.0.starts_with("upstream.url"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        (
            "[upstream]\nurl = \"http://x:1\"\ntimeout = \"soon\"\n",
            "upstream.timeout",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\n[cache]\nmax_size = \"lots\"\n",
            "cache.max_size",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\n[cache]\nttl2 = \"1s\"\n",
            "cache",
        ),
        ("[upstream]\nurl = \"ftp://x\"\n", "upstream.url"),
        (
            "[upstream]\nurl = \"http://x:1\"\ndialect = \"soap\"\n",
            "upstream.dialect",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\n[server]\nlisten = \"nowhere\"\n",
            "server.listen",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\ntoken_header = \"bad header\"\n",
            "upstream.token_header",
        ),
        ("[upstream]\ntimeout = \"1s\"\n", "upstream.url: is required"),
        (
            "[upstream]\nurl = \"http://x:1\"\nurls = [\"http://y:1\"]\n",
            "upstream.urls",
        ),
        (
            "[upstream]\nurls = [\"http://x:1\", \"https://y:1\"]\n",
            "upstream.urls",
        ),
        (
            "[upstream]\nurls = [\"http://x:1\", \"http://x:1/other\"]\n",
            "upstream.urls[1]",
        ),
        (
            "[upstream]\nurls = [\"http://x:1\", \"ftp://y\"]\n",
            "upstream.urls[1]",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\nhedge_after = \"5s\"\n",
            "upstream.hedge_after",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\nhealth = { path = \"health\" }\n",
            "upstream.health.path",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\nhealth = { interval = \"1s\", timeout = \"2s\" }\n",
            "upstream.health.timeout",
        ),
        (
            "[upstream]\nurl = \"http://x:1\"\nretries = 99\n",
            "upstream.retries",
        ),
    ];
    for (text, key) in cases {
        let e = Config::from_toml(text).unwrap_err();
        assert!(e.0.starts_with(key), "expected {key} in {e}");
    }
}

#[test]
fn several_urls_with_their_defaults() {
    let c = Config::from_toml("[upstream]\nurls = [\"https://a:8443\", \"https://b:8443/api\"]\n").unwrap();
    let urls = c.upstream_urls().unwrap();
    assert_eq!((urls.len(), urls[1].base_path.as_str()), (2, "/api"));
    let u = &c.upstream;
    assert_eq!((u.retries, u.eject_after, u.hedge_after), (1, 5, None));
    assert_eq!(
        (u.eject_for, u.resolve_interval),
        (Duration::from_secs(10), Duration::from_secs(30))
    );
    assert_eq!(
        (
            u.health.interval,
            u.health.healthy_after,
            u.health.unhealthy_after
        ),
        (Duration::from_secs(5), 2, 3)
    );
}

#[test]
fn sizes_accept_units_and_integers() {
    let c = Config::from_toml(&format!(
        "{MIN}[limits]\nmax_body_bytes = 2048\n[cache]\nmax_size = \"1MiB\"\n"
    ))
    .unwrap();
    assert_eq!(c.limits.max_body_bytes, 2048);
    assert_eq!(c.cache.max_size, 1024 * 1024);
}

#[test]
fn keys_inside_inline_tables_are_named() {
    let e = Config::from_toml("upstream = { url = \"http://x:1\", timeout = \"soon\" }\n").unwrap_err();
    assert!(e.0.starts_with("upstream.timeout: invalid duration"), "{e}");
    assert!(e.0.ends_with("(line 1, column 44)"), "{e}");
    let e = Config::from_toml(&format!("cache = {{ ttl = \"1s\", tll = \"2s\" }}\n{MIN}")).unwrap_err();
    assert!(e.0.starts_with("cache.tll: "), "{e}");
    assert!(e.0.contains("unknown field `tll`"), "{e}");
    let e = Config::from_toml(&format!("{MIN}[server]\nthreads = \"two\"\n")).unwrap_err();
    assert!(e.0.starts_with("server.threads: "), "{e}");
    assert!(e.0.contains("(line 4, column 11)"), "{e}");
}

#[test]
fn proxy_from_without_proxy_protocol_is_refused() {
    let e = Config::from_toml(&format!("{MIN}[server]\nproxy_from = [\"10.0.0.0/8\"]\n")).unwrap_err();
    assert!(e.0.starts_with("server.proxy_from: "), "{e}");
    let ok = format!("{MIN}[server]\nproxy_protocol = true\nproxy_from = [\"10.0.0.0/8\"]\n");
    assert!(Config::from_toml(&ok).is_ok());
}

#[test]
fn a_shared_secret_that_is_named_must_be_there_even_without_cards() {
    let e = Config::from_toml(&format!(
        "{MIN}[shared]\nurl = \"redis://127.0.0.1:6379/0\"\nencryption_key_env = \"CARDGATE_TEST_UNSET_SHARED_KEY\"\n"
    ))
    .unwrap_err();
    assert!(e.0.starts_with("shared.encryption_key_env: "), "{e}");
    assert!(e.0.contains("is not set"), "{e}");
}

#[test]
fn a_reload_keeps_the_running_shared_section_and_names_it() {
    // Parsed only: validating would read the secret's variable.
    let with = |url: &str| {
        toml::from_str::<Config>(&format!(
            "{MIN}[cache]\nttl = \"5s\"\n[shared]\nurl = \"{url}\"\n"
        ))
        .unwrap()
    };
    let running = with("redis://127.0.0.1:6379/0");
    let mut next = with("redis://10.0.0.9:6379/1");
    next.cache.ttl = Duration::from_secs(9);
    assert_eq!(next.keep_restart_only(&running), vec!["shared"]);
    assert_eq!(next.shared, running.shared);
    assert_eq!(next.cache.ttl, Duration::from_secs(9), "the rest changes");
}

#[test]
fn syntax_errors_name_line_and_column() {
    let e = Config::from_toml(&format!("{MIN}[cache\nttl = 1\n")).unwrap_err();
    assert!(e.0.starts_with("TOML error (line 3, column 7): "), "{e}");
    let e = Config::from_toml("[upstream]\nurl = \"http://x:1\"\ntimeout = \n").unwrap_err();
    assert!(e.0.starts_with("TOML error (line 3, column 11): "), "{e}");
}

#[test]
fn every_mistake_of_a_file_is_named_a_line_each() {
    let e = Config::from_toml(&format!(
        "{MIN}retries = 99\n[server]\nthreads = 0\ngrace_period = \"2h\"\n[cache]\nmax_size = 1\n[search]\nmax_attempts = 0\n"
    ))
    .unwrap_err();
    let keys: Vec<&str> = e.0.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "server.threads",
            "server.grace_period",
            "upstream.retries",
            "cache.max_size",
            "search.max_attempts"
        ],
        "{e}"
    );
    let named = e.in_file(Path::new("/etc/c.toml"));
    assert!(named.0.lines().all(|l| l.starts_with("/etc/c.toml: ")), "{named}");
}

#[test]
fn an_admin_port_off_loopback_needs_a_secret_or_an_allowlist() {
    for listen in ["0.0.0.0:9181", "10.30.0.5:9181", "[::]:9181"] {
        let e = Config::from_toml(&format!("{MIN}[admin]\nlisten = \"{listen}\"\n")).unwrap_err();
        assert!(e.0.starts_with("admin.listen: "), "{e}");
        assert!(
            e.0.contains("admin.token_env") && e.0.contains("admin.allow"),
            "{e}"
        );
        let allowed = format!("{MIN}[admin]\nlisten = \"{listen}\"\nallow = [\"10.30.0.0/24\"]\n");
        assert!(Config::from_toml(&allowed).is_ok());
    }
    for listen in ["127.0.0.1:9181", "127.0.0.2:9181", "[::1]:9181"] {
        assert!(Config::from_toml(&format!("{MIN}[admin]\nlisten = \"{listen}\"\n")).is_ok());
    }
}

#[test]
fn address_ranges_are_networks_written_without_spaces() {
    let ok = Config::from_toml(&format!(
        "{MIN}[server]\nallow = [\"10.20.0.0/16\", \"192.0.2.7\", \"::1\"]\n"
    ))
    .unwrap();
    assert_eq!(ok.server.allow.len(), 3);
    for (item, says) in [
        ("10.20.0.1/16", "host bits set: write \"10.20.0.0/16\""),
        ("2001:db8::1/32", "\"2001:db8::/32\""),
        (" 10.20.0.0/16", "spaces"),
        ("10.20.0.0/16\t", "spaces"),
        ("10.20.0.0/33", "not an address range"),
    ] {
        let e = Config::from_toml(&format!("{MIN}[server]\nallow = [\"{item}\"]\n")).unwrap_err();
        assert!(e.0.starts_with("server.allow: item 0: "), "{e}");
        assert!(e.0.contains(says), "{item:?}: {e}");
    }
}

#[test]
fn every_secret_comes_from_its_env_key_or_its_file_twin_never_both() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{:0<48}\n", "a-file-secret")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = secret.display();
    let shared = "[shared]\nurl = \"redis://127.0.0.1:6379/0\"\ncards = true\n";
    let gigma = "[upstream]\nurl = \"http://127.0.0.1:18081\"\ndialect = \"gigma\"\n[upstream.gigma]\n";
    for (name, head) in [
        ("admin.token", format!("{MIN}[admin]\n")),
        ("cache.hash_key", format!("{MIN}[cache]\n")),
        ("shared.encryption_key", format!("{MIN}{shared}")),
        ("upstream.gigma.app_token", gigma.to_string()),
    ] {
        let key = name.rsplit('.').next().unwrap();
        let from_file = format!("{head}{key}_file = \"{file}\"\n");
        let cfg = Config::from_toml(&from_file);
        assert!(cfg.is_ok(), "{name}: {cfg:?}");
        let both = format!("{from_file}{key}_env = \"CARDGATE_TEST_SET_TOO\"\n");
        let e = Config::from_toml(&both).unwrap_err();
        assert!(
            e.0.contains(&format!("{name}_env"))
                && e.0.contains(&format!("{name}_file"))
                && e.0.contains("not both"),
            "{name}: {e}"
        );
    }
    let cfg = Config::from_toml(&format!("{MIN}[admin]\ntoken_file = \"{file}\"\n")).unwrap();
    assert_eq!(
        cfg.admin.token().unwrap(),
        Some(format!("{:0<48}", "a-file-secret"))
    );
    // Without either key, the gigma token comes from GIGMA_APP_TOKEN, as it always has.
    let e = Config::from_toml(gigma);
    if std::env::var_os("GIGMA_APP_TOKEN").is_none() {
        let e = e.unwrap_err();
        assert!(
            e.0.contains("upstream.gigma.app_token_env: environment variable GIGMA_APP_TOKEN"),
            "{e}"
        );
    }
    // A file every user may read is refused, naming its key.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Config::from_toml(&format!("{MIN}[admin]\ntoken_file = \"{file}\"\n")).unwrap_err();
    assert!(
        e.0.starts_with("admin.token_file: ") && e.0.contains("readable by every user"),
        "{e}"
    );
}
