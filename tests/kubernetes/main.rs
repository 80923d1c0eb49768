//! The Kubernetes kit in `deploy/kubernetes/` and the container build file in
//! `deploy/container/`, held to the product: every manifest parses, and what ties them to
//! the gateway is checked against the configuration the ConfigMap mounts (ports, probe
//! paths, secret files, drain timing, hardening, selectors, network policy); that
//! configuration also passes `cardgate check`. No cluster and no image build is needed.

mod check;
mod image;
mod kit;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_yaml_ng::Value as Yaml;
use toml::Value as Toml;

use kit::*;

#[test]
fn every_manifest_parses_and_the_kustomization_applies_them_all() {
    assert_eq!(
        documents("a: 1\n---\n---\nb: 2\n").len(),
        2,
        "a stream of documents"
    );
    let dir = kit("kubernetes");
    let kustomization = documents(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap());
    let listed: BTreeSet<&str> = seq(&kustomization[0]["resources"]).iter().map(s).collect();
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let docs = documents(&std::fs::read_to_string(dir.join(&name)).unwrap());
        assert!(!docs.is_empty(), "{name} is empty");
        for doc in &docs {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{name}: {doc:?}"
            );
            assert!(
                doc["kind"] == "Kustomization" || doc["metadata"]["name"].is_string(),
                "{name}"
            );
        }
        if name != "kustomization.yaml" && name != "secret.example.yaml" {
            files.insert(name);
        }
    }
    assert_eq!(
        listed,
        files.iter().map(String::as_str).collect(),
        "kustomization resources"
    );

    let kit = Kit::load();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        kit.one(kind);
    }
    let cfg = kit.config();
    for section in [
        "server",
        "admin",
        "upstream",
        "cache",
        "limits",
        "log",
        "correlation",
        "search",
        "shared",
    ] {
        assert!(
            cfg.get(section).is_some_and(Toml::is_table),
            "[{section}] missing"
        );
    }
}

#[test]
fn ports_and_probes_are_the_configured_listeners() {
    let kit = Kit::load();
    let cfg = kit.config();
    let (chat, admin) = (
        listen_port(&cfg, "server.listen"),
        listen_port(&cfg, "admin.listen"),
    );
    let declared: BTreeSet<u64> = seq(&kit.container()["ports"])
        .iter()
        .map(|p| kit.port(&p["name"]))
        .collect();
    assert_eq!(declared, BTreeSet::from([chat, admin]), "containerPorts");

    let service = &kit.one("Service")["spec"];
    assert!(kit.selects_pods(&service["selector"]));
    let targets: BTreeSet<u64> = seq(&service["ports"])
        .iter()
        .map(|p| kit.port(&p["targetPort"]))
        .collect();
    assert_eq!(targets, BTreeSet::from([chat, admin]), "Service targetPorts");

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &kit.container()[probe]["httpGet"];
        assert_eq!(s(&get["path"]), path, "{probe}");
        assert_eq!(kit.port(&get["port"]), admin, "{probe} on the admin port");
    }

    // The private runtime directory is writable although the root filesystem is not.
    let (volume, _) = kit
        .mounted(&format!("{}/x", key_str(&cfg, "server.runtime_dir")))
        .unwrap();
    assert!(
        volume["emptyDir"].is_mapping(),
        "server.runtime_dir must be an emptyDir"
    );
    assert_eq!(
        key_str(&cfg, "log.file"),
        "",
        "the container log is standard output"
    );
}

#[test]
fn secret_files_are_keys_of_the_mounted_secret() {
    let kit = Kit::load();
    let cfg = kit.config();
    let secret_name = &kit.secret["metadata"]["name"];
    let secret_keys: BTreeSet<&str> = kit.secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(s)
        .collect();
    let mut used = BTreeSet::new();
    // Every file the configuration names is mounted; a secret is a key of the Secret.
    for (dotted, path) in files(&cfg, "") {
        assert!(path.starts_with('/'), "{dotted}: an absolute path into a mount");
        let (volume, mounted_key) = kit
            .mounted(&path)
            .unwrap_or_else(|| panic!("{dotted}: {path} is not mounted"));
        if !SECRET_FILE_KEYS.contains(&dotted.as_str()) {
            continue;
        }
        assert_eq!(
            &volume["secret"]["secretName"], secret_name,
            "{dotted}: not the Secret"
        );
        assert!(
            secret_keys.contains(mounted_key.as_str()),
            "{dotted}: {mounted_key} is no key of the Secret"
        );
        let twin = dotted.replace("_file", "_env");
        assert!(key(&cfg, &twin).is_none(), "{dotted} and {twin} are both set");
        used.insert(mounted_key);
    }
    for required in [
        "admin.token_file",
        "cache.hash_key_file",
        "shared.encryption_key_file",
    ] {
        assert!(key(&cfg, required).is_some(), "{required} missing");
    }
    // Every key the Deployment mounts is used, and the Secret holds no others.
    let volumes = seq(&kit.pod()["spec"]["volumes"]);
    let volume = volumes
        .iter()
        .find(|v| v["secret"]["secretName"] == *secret_name)
        .unwrap();
    let mounted: BTreeSet<String> = seq(&volume["secret"]["items"])
        .iter()
        .map(|i| s(&i["key"]).to_string())
        .collect();
    assert_eq!(mounted, used);
    assert_eq!(secret_keys, used.iter().map(String::as_str).collect());
    assert!(
        !toml::to_string(&cfg).unwrap().contains("_env ="),
        "secrets come from the Secret's files only"
    );
}

#[test]
fn termination_outlasts_pre_stop_drain_delay_and_grace_period() {
    let kit = Kit::load();
    let cfg = kit.config();
    let pre_stop = &kit.container()["lifecycle"]["preStop"];
    assert!(
        pre_stop["exec"].is_null(),
        "the image has no shell: the kubelet's sleep action"
    );
    let sleep = Duration::from_secs(n(&pre_stop["sleep"]["seconds"]));
    let (delay, grace) = (
        duration(&cfg, "server.drain_delay"),
        duration(&cfg, "server.grace_period"),
    );
    // Keep-alive connections of the chat server stay on a terminating pod: only the drain
    // (answers with `Connection: close`) moves them, so it must not be zero.
    assert!(sleep > Duration::ZERO && delay > Duration::ZERO);
    // After SIGTERM the process exits within drain_delay + grace_period; Pingora's own
    // bound is one second above grace_period.
    let kill = Duration::from_secs(n(&kit.pod()["spec"]["terminationGracePeriodSeconds"]));
    let needed = sleep + delay + grace + Duration::from_secs(1);
    assert!(
        kill > needed,
        "terminationGracePeriodSeconds {kill:?} must exceed {needed:?}"
    );
}

#[test]
fn pods_run_hardened_replicated_and_within_their_memory() {
    let kit = Kit::load();
    let cfg = kit.config();
    let deployment = &kit.one("Deployment")["spec"];
    assert!(n(&deployment["replicas"]) >= 2, "replicas");
    assert!(kit.selects_pods(&deployment["selector"]["matchLabels"]));
    let pdb = &kit.one("PodDisruptionBudget")["spec"];
    assert!(
        kit.selects_pods(&pdb["selector"]["matchLabels"]),
        "the PDB selects the Deployment's pods"
    );
    let allowed_down = pdb["maxUnavailable"]
        .as_u64()
        .unwrap_or_else(|| n(&deployment["replicas"]) - n(&pdb["minAvailable"]));
    assert!(
        (1..n(&deployment["replicas"])).contains(&allowed_down),
        "a drain may take some, never all"
    );

    let (pod, ctx) = (
        &kit.pod()["spec"]["securityContext"],
        &kit.container()["securityContext"],
    );
    assert_eq!(ctx["runAsNonRoot"], true);
    assert_eq!(pod["runAsNonRoot"], true);
    assert!(n(&ctx["runAsUser"]) > 0 && ctx["runAsUser"] == pod["runAsUser"]);
    assert_eq!(ctx["readOnlyRootFilesystem"], true);
    assert_eq!(ctx["allowPrivilegeEscalation"], false);
    assert_eq!(seq(&ctx["capabilities"]["drop"]), [Yaml::from("ALL")]);
    assert!(ctx["capabilities"]["add"].is_null());
    assert_eq!(s(&pod["seccompProfile"]["type"]), "RuntimeDefault");
    assert_eq!(kit.pod()["spec"]["automountServiceAccountToken"], false);

    let resources = &kit.container()["resources"];
    assert!(resources["requests"]["cpu"].is_string(), "a CPU request");
    let request = quantity(s(&resources["requests"]["memory"]));
    let limit = quantity(s(&resources["limits"]["memory"]));
    let bounded = size(&cfg, "cache.max_size") + size(&cfg, "search.max_memory");
    // Connections (9.4 KiB each when idle) and the process itself live in the rest.
    assert!(
        request <= limit && limit >= bounded + (128 << 20),
        "{limit} bytes for {bounded}"
    );
}

#[test]
fn network_policy_admits_the_chat_server_and_monitoring_only() {
    let kit = Kit::load();
    let cfg = kit.config();
    let (chat, admin) = (
        listen_port(&cfg, "server.listen"),
        listen_port(&cfg, "admin.listen"),
    );
    let policy = &kit.one("NetworkPolicy")["spec"];
    assert!(kit.selects_pods(&policy["podSelector"]["matchLabels"]));
    assert_eq!(
        seq(&policy["policyTypes"]),
        [Yaml::from("Ingress"), Yaml::from("Egress")]
    );

    let mut admitted = BTreeSet::new();
    for rule in seq(&policy["ingress"]) {
        assert!(
            !seq(&rule["from"]).is_empty(),
            "an ingress rule open to everyone: {rule:?}"
        );
        assert!(
            !seq(&rule["ports"]).is_empty(),
            "an ingress rule to every port: {rule:?}"
        );
        for port in seq(&rule["ports"]) {
            let port = kit.port(&port["port"]);
            admitted.insert(port);
            if port == admin {
                for peer in seq(&rule["from"]) {
                    let ns = serde_yaml_ng::to_string(&peer["namespaceSelector"]).unwrap();
                    assert!(
                        ns.contains("monitoring") && peer["podSelector"].is_mapping(),
                        "admin from {peer:?}"
                    );
                }
            }
        }
    }
    assert_eq!(admitted, BTreeSet::from([chat, admin]));

    let egress: Vec<(String, u64)> = seq(&policy["egress"])
        .iter()
        .inspect(|rule| assert!(!seq(&rule["to"]).is_empty(), "egress open to everyone: {rule:?}"))
        .flat_map(|rule| seq(&rule["ports"]).iter())
        .map(|p| (s(&p["protocol"]).to_string(), n(&p["port"])))
        .collect();
    let crm = url_host_port(key_str(&cfg, "upstream.url")).1;
    let redis = url_host_port(key_str(&cfg, "shared.url")).1;
    for (protocol, port, what) in [
        ("TCP", crm, "the CRM"),
        ("TCP", redis, "Redis"),
        ("UDP", 53, "DNS"),
        ("TCP", 53, "DNS"),
    ] {
        assert!(
            egress.contains(&(protocol.to_string(), port)),
            "no egress to {what} ({protocol} {port})"
        );
    }
    assert_eq!(
        egress.len(),
        4,
        "egress beyond the CRM, Redis and DNS: {egress:?}"
    );
}
