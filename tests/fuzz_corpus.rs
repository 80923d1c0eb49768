//! Every committed fuzz input, seeds and regressions alike (`fuzz/corpus/<target>/seed-*`
//! and `regression-*`), replayed through the same property functions the fuzz targets
//! run, on every `cargo test`, with or without a fuzzing toolchain. (What a local fuzzing
//! run adds to those folders is not committed and not replayed here.)

use std::path::Path;

use cardgate::testkit::fuzz;

fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("seed-") || name.starts_with("regression-")
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus for {target}");
    for input in inputs {
        let data = std::fs::read(&input).unwrap();
        let run = std::panic::catch_unwind(|| property(&data));
        assert!(run.is_ok(), "{target}: {} fails its property", input.display());
    }
}

#[test]
fn request_framing_corpus() {
    replay("request", fuzz::request_framing);
}

#[test]
fn answer_framing_corpus() {
    replay("answer", fuzz::answer_framing);
}

#[test]
fn route_corpus() {
    replay("route", fuzz::route);
}

#[test]
fn search_params_corpus() {
    replay("search_params", fuzz::search_params);
}

#[test]
fn normalise_corpus() {
    replay("normalise", fuzz::normalise);
}

#[test]
fn card_scan_corpus() {
    replay("card_scan", fuzz::card_scan);
}

#[test]
fn config_corpus() {
    replay("config", fuzz::config);
}
