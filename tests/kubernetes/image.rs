//! The container build file: a static musl production binary on an image without a
//! shell, run as the pods' user, with the ports and arguments of the Deployment.

use std::collections::BTreeSet;
use std::path::Path;

use crate::kit::*;

/// The instructions of a Containerfile, continuation lines joined and comments left out,
/// grouped by stage.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut line = String::new();
    for raw in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        line.push_str(raw.trim_end_matches('\\'));
        line.push(' ');
        if raw.ends_with('\\') {
            continue;
        }
        let taken = std::mem::take(&mut line);
        let Some((instruction, args)) = taken.trim().split_once(' ') else {
            continue;
        };
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("FROM first")
            .push((instruction, args.trim().to_string()));
    }
    stages
}

fn instruction<'a>(stage: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(i, _)| i == name)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn the_container_image_is_a_static_production_binary_run_as_the_pods_user() {
    let text = std::fs::read_to_string(kit("container/Containerfile")).unwrap();
    let stages = stages(&text);
    let (build, run) = (&stages[0], stages.last().unwrap());

    let base = instruction(run, "FROM")[0];
    assert!(
        base == "scratch" || base.starts_with("gcr.io/distroless/static"),
        "{base}"
    );
    assert!(
        instruction(run, "RUN").is_empty(),
        "nothing runs in the final image: it has no shell"
    );

    let cargo = instruction(build, "RUN")
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .unwrap();
    for flag in [
        "--release",
        "--locked",
        "--no-default-features",
        "--bin cardgate",
        "--target",
    ] {
        assert!(cargo.contains(flag), "{flag} missing in {cargo}");
    }
    assert!(
        cargo.contains("readelf -d") && cargo.contains("NEEDED"),
        "the build proves the binary static"
    );
    let target = instruction(build, "ARG")
        .into_iter()
        .find_map(|a| a.strip_prefix("RUST_TARGET="))
        .unwrap();
    assert!(target.ends_with("-unknown-linux-musl"), "{target}");
    for copy in instruction(build, "COPY") {
        let sources: Vec<&str> = copy.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(source).exists(),
                "{source}"
            );
        }
    }

    let kit = Kit::load();
    let pod = &kit.pod()["spec"]["securityContext"];
    let user = format!("{}:{}", n(&pod["runAsUser"]), n(&pod["runAsGroup"]));
    assert_eq!(
        instruction(run, "USER"),
        [user.as_str()],
        "USER: the pod's numeric non-root ids"
    );

    let cfg = kit.config();
    let exposed: BTreeSet<u64> = instruction(run, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([
            listen_port(&cfg, "server.listen"),
            listen_port(&cfg, "admin.listen")
        ])
    );

    let copy = instruction(run, "COPY")[0];
    assert!(copy.starts_with("--from=build "), "{copy}");
    let installed = copy.split_whitespace().last().unwrap();
    let entrypoint: Vec<String> = serde_json::from_str(instruction(run, "ENTRYPOINT")[0]).unwrap();
    assert_eq!(entrypoint, [installed], "exec form, the binary the build copied");
    let cmd: Vec<String> = serde_json::from_str(instruction(run, "CMD")[0]).unwrap();
    let args: Vec<&str> = seq(&kit.container()["args"]).iter().map(s).collect();
    assert_eq!(cmd, args, "the image's default arguments are the Deployment's");
}
