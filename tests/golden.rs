//! Golden conformance tests: every bundled transform, run through its compiled component
//! exactly as `vast-processor transform test` does, against checked-in expected output.
//!
//! To accept new output after an intended change: `BLESS=1 cargo test -p vast-processor-tests
//! --test golden`, then review the diff of tests/golden/*.expected.jsonl.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vast_processor::cli::transform_test::{self, TestArgs};
use vast_processor::source::file::Format;
use vast_processor::transform::wasm::TransformEngine;

/// Fixed processing time (2025-10-14T16:00:00Z) so rows without a timestamp are stable.
const NOW: i64 = 1_760_457_600_000_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn engine() -> &'static TransformEngine {
    static ENGINE: OnceLock<TransformEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        TransformEngine::new(Some(
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache"),
        ))
        .unwrap()
    })
}

fn golden(
    case: &str,
    topic: &str,
    transform: Option<&str>,
    format: Format,
    inputs: &[&str],
    config: &str,
) {
    let expect = root().join(format!("tests/golden/{case}.expected.jsonl"));
    let args = TestArgs {
        topic: topic.into(),
        transform: transform.map(str::to_string),
        config: root().join(config),
        format,
        config_set: vec![],
        input: inputs.iter().map(|i| root().join(i)).collect(),
        expect: Some(expect),
        bless: std::env::var_os("BLESS").is_some(),
        now: Some(NOW),
        batch_size: 1000,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = transform_test::run(&args, engine(), &mut out, &mut err).unwrap();
    assert!(
        outcome.matched,
        "{case}: output differs from the golden file\n{}\n{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    assert!(!outcome.lines.is_empty(), "{case}: produced nothing");
}

#[test]
fn raw_logs() {
    golden(
        "raw-logs",
        "raw-logs",
        None,
        Format::Jsonl,
        &[
            "samples/raw-logs.jsonl",
            "tests/golden/inputs/raw-logs-edge.jsonl",
        ],
        "pipelines.toml",
    );
}

#[test]
fn raw_queries() {
    golden(
        "raw-queries",
        "raw-queries",
        None,
        Format::Jsonl,
        &[
            "samples/raw-queries.jsonl",
            "tests/golden/inputs/raw-queries-edge.jsonl",
        ],
        "pipelines.toml",
    );
}

#[test]
fn raw_host_logs() {
    golden(
        "raw-host-logs",
        "raw-host-logs",
        None,
        Format::Jsonl,
        &[
            "samples/raw-host-logs.jsonl",
            "tests/golden/inputs/raw-host-logs-edge.jsonl",
        ],
        "pipelines.toml",
    );
}

#[test]
fn otel_metrics() {
    golden(
        "otel-metrics",
        "otel-metrics",
        None,
        Format::Raw,
        &["samples/otel-metrics"],
        "pipelines.toml",
    );
}

#[test]
fn team_enrich_example() {
    golden(
        "team-enrich",
        "raw-logs",
        Some(vast_test_guests::TEAM_ENRICH_PATH),
        Format::Jsonl,
        &["samples/raw-logs.jsonl"],
        "guest-transforms/examples/team-enrich/pipelines.toml",
    );
}
