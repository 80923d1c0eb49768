//! Reading the kit: the manifests as `kubectl apply -k` sees them (YAML streams of one or
//! more documents), the configuration the ConfigMap mounts, and the values both write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;
use toml::Value as Toml;

pub const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// The secret keys read from files, each the twin of an `*_env` key (at most one of the
/// pair is set).
pub const SECRET_FILE_KEYS: [&str; 5] = [
    "admin.token_file",
    "cache.hash_key_file",
    "shared.encryption_key_file",
    "shared.password_file",
    "shared.sentinel_password_file",
];

pub fn kit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(name)
}

/// Every document of a YAML stream (`---` separated), empty ones left out.
pub fn documents(text: &str) -> Vec<Yaml> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Yaml::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

pub fn n(v: &Yaml) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v:?}"))
}

pub fn seq(v: &Yaml) -> &[Yaml] {
    v.as_sequence().map_or(&[], |s| s.as_slice())
}

/// A dotted key of the configuration.
pub fn key<'a>(cfg: &'a Toml, dotted: &str) -> Option<&'a Toml> {
    dotted.split('.').try_fold(cfg, |v, k| v.get(k))
}

pub fn key_str<'a>(cfg: &'a Toml, dotted: &str) -> &'a str {
    key(cfg, dotted)
        .and_then(Toml::as_str)
        .unwrap_or_else(|| panic!("{dotted} missing"))
}

pub fn duration(cfg: &Toml, dotted: &str) -> Duration {
    humantime::parse_duration(key_str(cfg, dotted)).unwrap()
}

pub fn size(cfg: &Toml, dotted: &str) -> u64 {
    key_str(cfg, dotted)
        .parse::<bytesize::ByteSize>()
        .unwrap()
        .as_u64()
}

/// Every file the configuration names (`*_file` keys, `upstream.client_cert` and
/// `client_key`), with its dotted key.
pub fn files(cfg: &Toml, prefix: &str) -> Vec<(String, String)> {
    let Some(table) = cfg.as_table() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (name, value) in table {
        let dotted = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value.as_str() {
            Some(path) if name.ends_with("_file") || name == "client_cert" || name == "client_key" => {
                found.push((dotted, path.to_string()))
            }
            _ => found.extend(files(value, &dotted)),
        }
    }
    found
}

/// The port of `address:port`.
pub fn listen_port(cfg: &Toml, dotted: &str) -> u64 {
    let addr: std::net::SocketAddr = key_str(cfg, dotted).parse().unwrap();
    assert!(
        addr.ip().is_unspecified(),
        "{dotted} must listen on every pod address"
    );
    u64::from(addr.port())
}

/// Host and port of a URL (`scheme://[user@]host[:port][/path]`), the scheme's port if none.
pub fn url_host_port(url: &str) -> (String, u64) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority = rest.split('/').next().unwrap();
    let hostport = authority.rsplit('@').next().unwrap();
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        "redis" | "rediss" => 6379,
        other => panic!("scheme {other}"),
    };
    match hostport.rsplit_once(':') {
        Some((host, port)) if !port.ends_with(']') => (host.to_string(), port.parse().unwrap()),
        _ => (hostport.to_string(), default),
    }
}

/// A Kubernetes memory quantity in bytes ("768Mi", "1Gi", "512M", "1000").
pub fn quantity(q: &str) -> u64 {
    let units = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    units
        .iter()
        .find_map(|(suffix, unit)| q.strip_suffix(suffix).map(|n| n.parse::<u64>().unwrap() * unit))
        .unwrap_or_else(|| q.parse().unwrap())
}

/// The kit as `kubectl apply -k deploy/kubernetes` sees it, plus the Secret it expects.
pub struct Kit {
    pub objects: Vec<Yaml>,
    pub secret: Yaml,
}

impl Kit {
    pub fn load() -> Kit {
        let read = |name: &str| std::fs::read_to_string(kit("kubernetes").join(name)).unwrap();
        let kustomization = documents(&read("kustomization.yaml")).remove(0);
        let mut objects = Vec::new();
        for file in seq(&kustomization["resources"]) {
            objects.extend(documents(&read(s(file))));
        }
        let secret = documents(&read("secret.example.yaml")).remove(0);
        Kit { objects, secret }
    }

    pub fn one(&self, kind: &str) -> &Yaml {
        let mut of_kind = self.objects.iter().filter(|o| o["kind"] == kind);
        let object = of_kind.next().unwrap_or_else(|| panic!("no {kind}"));
        assert!(of_kind.next().is_none(), "several {kind}s");
        object
    }

    pub fn pod(&self) -> &Yaml {
        &self.one("Deployment")["spec"]["template"]
    }

    pub fn container(&self) -> &Yaml {
        let containers = seq(&self.pod()["spec"]["containers"]);
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    /// The configuration the Deployment runs with: the ConfigMap's file `--config` names.
    pub fn config(&self) -> Toml {
        let args: Vec<&str> = seq(&self.container()["args"]).iter().map(s).collect();
        let path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
        let (volume, item) = self
            .mounted(path)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        let map = self.one("ConfigMap");
        assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
        toml::from_str(s(&map["data"][item.as_str()])).unwrap()
    }

    /// The volume a path of the container lies in, and the key of its ConfigMap or
    /// Secret (or the path inside it, for other volumes) that the path names.
    pub fn mounted(&self, path: &str) -> Option<(&Yaml, String)> {
        let mount = seq(&self.container()["volumeMounts"]).iter().find(|m| {
            path.strip_prefix(s(&m["mountPath"]))
                .is_some_and(|rest| rest.starts_with('/'))
        })?;
        let inside = &path[s(&mount["mountPath"]).len() + 1..];
        let volume = seq(&self.pod()["spec"]["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let source = if volume["secret"].is_mapping() {
            &volume["secret"]
        } else {
            &volume["configMap"]
        };
        let items = seq(&source["items"]);
        if items.is_empty() {
            return Some((volume, inside.to_string()));
        }
        let item = items.iter().find(|i| i["path"] == inside)?;
        Some((volume, s(&item["key"]).to_string()))
    }

    /// A port of the container, by number or by name.
    pub fn port(&self, port: &Yaml) -> u64 {
        if let Some(number) = port.as_u64() {
            return number;
        }
        let ports = seq(&self.container()["ports"]);
        let named = ports
            .iter()
            .find(|p| p["name"] == *port)
            .unwrap_or_else(|| panic!("no port {port:?}"));
        n(&named["containerPort"])
    }

    /// The pod template's labels include every one of these (a selector's matchLabels).
    pub fn selects_pods(&self, selector: &Yaml) -> bool {
        let labels = self.pod()["metadata"]["labels"].as_mapping().unwrap();
        let wanted = selector.as_mapping().unwrap();
        !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}
