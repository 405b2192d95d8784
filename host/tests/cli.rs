//! The `vast-processor` binary's `transform test` command, run as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn vp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vast-processor"))
        .args(args)
        .current_dir(root())
        .env(
            "VAST_PROCESSOR_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache"),
        )
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const NOW: &str = "1760457600000000";

/// The README's examples, exactly: each topic's sample input against its golden file.
#[test]
fn readme_examples_match_their_golden_files() {
    for (topic, format, input) in [
        ("raw-logs", "jsonl", "samples/raw-logs.jsonl"),
        ("raw-queries", "jsonl", "samples/raw-queries.jsonl"),
        ("raw-host-logs", "jsonl", "samples/raw-host-logs.jsonl"),
        ("otel-metrics", "raw", "samples/otel-metrics"),
    ] {
        let out = vp(&[
            "transform",
            "test",
            "--topic",
            topic,
            "--format",
            format,
            "--input",
            input,
        ]);
        assert!(out.status.success(), "{topic}: {}", text(&out.stderr));
        let lines: Vec<serde_json::Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!lines.is_empty(), "{topic}");
        for l in &lines {
            assert!(l["input"].is_u64(), "{l}");
            assert!(
                l.get("row").is_some() || l.get("error").is_some() || l.get("skipped").is_some(),
                "{l}"
            );
        }
        // The summary on stderr names the transform version.
        assert!(
            text(&out.stderr).contains(&format!("{topic}@")),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn expect_passes_on_a_matching_golden_file() {
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "otel-metrics",
        "--format",
        "raw",
        "--input",
        "samples/otel-metrics",
        "--now",
        NOW,
        "--expect",
        "tests/golden/otel-metrics.expected.jsonl",
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn expect_mismatch_prints_a_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let golden =
        std::fs::read_to_string(root().join("tests/golden/raw-logs.expected.jsonl")).unwrap();
    let changed = golden.replacen("Detected 3 deadlock(s).", "Detected 4 deadlock(s).", 1);
    assert_ne!(golden, changed);
    let path = dir.path().join("golden.jsonl");
    std::fs::write(&path, changed).unwrap();
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "raw-logs",
        "--input",
        "samples/raw-logs.jsonl",
        "tests/golden/inputs/raw-logs-edge.jsonl",
        "--now",
        NOW,
        "--expect",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("line 1:"), "{report}");
    assert!(
        report.contains(
            r#"row.message: expected "Detected 4 deadlock(s).", got "Detected 3 deadlock(s).""#
        ),
        "{report}"
    );
    assert!(report.contains("MISMATCH: 1 of"), "{report}");
}

#[test]
fn bless_writes_a_golden_file_that_then_matches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.jsonl");
    let p = path.to_str().unwrap();
    let args = [
        "transform",
        "test",
        "--topic",
        "raw-queries",
        "--input",
        "samples/raw-queries.jsonl",
        "--expect",
        p,
    ];
    let mut bless = args.to_vec();
    bless.push("--bless");
    assert!(vp(&bless).status.success());
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        !written.contains("\"id\"") && !written.contains("created_at"),
        "{written}"
    );
    // Run again without a fixed clock: id and created_at are ignored, the rest is stable.
    let out = vp(&args);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn transform_override_config_set_and_errors_are_clear() {
    // A bundled transform refuses unknown config.
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "raw-logs",
        "--config-set",
        "colour=red",
        "--input",
        "samples/raw-logs.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("rejected its config in `init`: unknown config key `colour`"),
        "{}",
        text(&out.stderr)
    );
    // An unknown topic without --transform names the configured topics.
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "nope",
        "--input",
        "samples/raw-logs.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("no pipeline for topic `nope`") && err.contains("raw-logs, raw-queries"),
        "{err}"
    );
    // An unknown bundled name lists the bundled ones.
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "x",
        "--transform",
        "raw-logz",
        "--input",
        "samples/raw-logs.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown transform `raw-logz`"),
        "{}",
        text(&out.stderr)
    );
    // A missing .wasm file names the path.
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "x",
        "--transform",
        "missing.wasm",
        "--input",
        "samples/raw-logs.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read transform missing.wasm"),
        "{}",
        text(&out.stderr)
    );
    // A missing input file is named too.
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "raw-logs",
        "--input",
        "nope.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read input nope.jsonl"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_wasm_path_overrides_the_configured_transform() {
    let out = vp(&[
        "transform",
        "test",
        "--topic",
        "raw-logs",
        "--transform",
        vast_test_guests::HOSTILE_PATH,
        "--input",
        "samples/raw-logs.jsonl",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("hostile@"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn replay_writes_the_same_rows_as_transform_test_and_dead_letters_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = vp(&[
        "replay",
        "--topic",
        "raw-logs",
        "--input",
        "samples/raw-logs.jsonl",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows =
        vast_processor::cli::commands::table_rows(&data, vast_processor::model::Table::Events)
            .unwrap();
    // samples/raw-logs.jsonl: 6 valid records and one that is not JSON.
    assert_eq!(rows.len(), 6);
    let expected = vp(&[
        "transform",
        "test",
        "--topic",
        "raw-logs",
        "--input",
        "samples/raw-logs.jsonl",
    ]);
    let want: Vec<serde_json::Value> = text(&expected.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l.get("row").is_some())
        .collect();
    for (r, w) in rows.iter().zip(&want) {
        assert_eq!(r["id"], w["row"]["id"]);
        assert_eq!(r["message"], w["row"]["message"]);
        assert_eq!(r["source_topic"], "raw-logs");
        assert!(
            r["transform_version"]
                .as_str()
                .unwrap()
                .starts_with("raw-logs@")
        );
    }
    let dead = vast_processor::sink::deadletter::read_dead_letter_files(&data);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["source_offset"], 6);
    assert!(
        dead[0]["error"].as_str().unwrap().contains("invalid JSON"),
        "{}",
        dead[0]
    );
    // `data summary` reads it back.
    let out = vp(&["data", "summary", "--data-dir", data.to_str().unwrap()]);
    assert!(
        text(&out.stdout).contains("events: 6 row(s)"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("dead-letter files: 1"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn run_refuses_bad_config_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "[kafka]\nbootstrap_server = 'x'\n").unwrap();
    let out = vp(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown field `bootstrap_server`"),
        "{}",
        text(&out.stderr)
    );
}

/// A malformed `.env` must stop the processor with the line, not drop what it holds (the
/// VAST settings in it were silently ignored and `check` passed on the Parquet sink). The
/// line's text, which may hold a secret, is not echoed.
#[test]
fn a_malformed_dotenv_line_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("pipelines.toml"),
        dir.path().join("pipelines.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "VAST_ENDPOINT=http://127.0.0.1:1\nVAST_SECRET_KEY='s3cr3t-value\nVAST_BUCKET=b\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vast-processor"))
        .arg("check")
        .current_dir(dir.path())
        .env_remove("VAST_ENDPOINT")
        .env_remove("VAST_SECRET_KEY")
        .env_remove("VAST_BUCKET")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}{}", text(&out.stdout));
    assert!(err.contains(".env: line 2"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn a_dotenv_file_in_the_working_directory_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("pipelines.toml"),
        dir.path().join("pipelines.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "KAFKA_TOPICS=raw-logs,no-such-topic\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vast-processor"))
        .arg("run")
        .current_dir(dir.path())
        .env_remove("KAFKA_TOPICS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("KAFKA_TOPICS") && err.contains("`no-such-topic`"),
        "{err}"
    );
}

/// At start-up too, a transform path that is a FIFO is a clear error at once (reading it
/// would block forever).
#[test]
fn a_fifo_as_the_transform_file_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("t.wasm");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path and a plain mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::write(
        dir.path().join("pipelines.toml"),
        "[[pipelines]]\ntopic = \"t\"\ntransform = \"t.wasm\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vast-processor"))
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("is not a regular file"), "{report}");
}
