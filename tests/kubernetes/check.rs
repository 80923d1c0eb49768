//! The ConfigMap's configuration through the real binary's `cardgate check`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use toml::Value as Toml;

use crate::kit::*;

/// How [`the_configmap_config_passes_cardgate_check`] hands the secrets to the binary:
/// `Env` rewrites each `*_file` key to its `*_env` twin with the secret in the
/// environment; `Files` keeps the `*_file` keys and writes the files (readable by their
/// owner alone, as the Deployment's `defaultMode` and `fsGroup` make them) into a temporary
/// directory, as the pod reads them.
#[derive(PartialEq)]
#[allow(dead_code)] // one of the two is in use
enum Secrets {
    Env,
    Files,
}

const SECRETS: Secrets = Secrets::Files;

/// `*_file` keys whose `*_env` twin the binary does not read: left out under
/// `Secrets::Env`. Every one has its twin.
const FILE_ONLY: [&str; 0] = [];

/// The ConfigMap's configuration made runnable on this machine, written into `dir`: the
/// secrets handed over as [`SECRETS`] says, each 48 bytes long but `short`'s (5 bytes); a
/// private runtime directory; the CRM's host made one that resolves here (`check`
/// resolves it as the start does). Returns the file and the environment the check needs.
fn runnable(dir: &Path, short: &str) -> (PathBuf, Vec<(String, String)>) {
    let mut cfg = Kit::load().config();
    let mut envs = Vec::new();
    for dotted in SECRET_FILE_KEYS {
        let (section, name) = dotted.split_once('.').unwrap();
        let Some(table) = cfg.get_mut(section).and_then(Toml::as_table_mut) else {
            continue;
        };
        if !table.contains_key(name) {
            continue;
        }
        let value = if dotted == short {
            "short".to_string()
        } else {
            format!("{:0<48}", dotted)
        };
        if SECRETS == Secrets::Files {
            let path = dir.join(name);
            std::fs::write(&path, &value).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            table.insert(name.into(), path.to_str().unwrap().into());
            continue;
        }
        table.remove(name);
        if !FILE_ONLY.contains(&dotted) {
            let twin = name.replace("_file", "_env");
            let var =
                format!("CARDGATE_KUBE_{section}_{}", twin.trim_end_matches("_env")).to_ascii_uppercase();
            table.insert(twin, var.clone().into());
            envs.push((var, value));
        }
    }
    cfg["server"]["runtime_dir"] = dir.join("run").to_str().unwrap().into();
    let url = key_str(&cfg, "upstream.url");
    let (host, port) = url_host_port(url);
    let local = url.replacen(&format!("{host}:{port}"), &format!("127.0.0.1:{port}"), 1);
    assert_ne!(local, url);
    cfg["upstream"]["url"] = local.into();

    let path = dir.join("cardgate.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    (path, envs)
}

fn check(path: &Path, envs: &[(String, String)]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_configmap_config_passes_cardgate_check() {
    let dir = tempfile::tempdir().unwrap();
    let (path, envs) = runnable(dir.path(), "");
    let (ok, text) = check(&path, &envs);
    assert!(
        ok,
        "cardgate check: {text}\n{}",
        std::fs::read_to_string(&path).unwrap()
    );

    // The check reads the secrets: one too short is refused, naming its key.
    let (path, envs) = runnable(dir.path(), "shared.encryption_key_file");
    let (ok, text) = check(&path, &envs);
    assert!(!ok && text.contains("shared.encryption_key"), "{text}");
}
