//! The bench's command line, run as a process.

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vast-processor-bench"))
        .arg("--cache-dir")
        .arg(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-cache"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--scenario` and `--batch` narrow the bench down (for profiling one line at a time);
/// an unknown scenario or a zero batch is refused.
#[test]
fn bench_scenario_and_batch_select_lines() {
    let out = bench(&[
        "--topic",
        "raw-logs",
        "--messages",
        "30",
        "--runs",
        "1",
        "--scenario",
        "a,c",
        "--batch",
        "7",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let lines: Vec<&str> = report.lines().filter(|l| l.contains("msgs/s")).collect();
    assert_eq!(lines.len(), 2, "{report}");
    assert!(lines[0].contains("a. wasm, batch 7 "), "{report}");
    assert!(lines[1].contains("c. full path, 1 worker"), "{report}");
    for bad in [["--scenario", "x"], ["--batch", "0"]] {
        let out = bench(&["--messages", "1", bad[0], bad[1]]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(text(&out.stderr).contains(bad[1]), "{}", text(&out.stderr));
    }
}

#[test]
fn bench_runs_every_scenario_and_prints_figures() {
    let out = bench(&[
        "--topic",
        "otel-metrics",
        "--messages",
        "50",
        "--runs",
        "1",
        "--workers",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for scenario in [
        "a. wasm, batch 1 ",
        "a. wasm, batch 100 ",
        "a. wasm, batch 1000 ",
        "a. wasm, batch 10000 ",
        "b. native",
        "c. full path, 1 worker",
        "d. full path, 2 workers",
        "peak RSS of the bench process",
    ] {
        assert!(
            report.contains(scenario),
            "missing {scenario:?} in\n{report}"
        );
    }
    // 5 points per otel-metrics record: rows/s is five times msgs/s on the native line.
    let native = report.lines().find(|l| l.contains("b. native")).unwrap();
    let nums: Vec<f64> = native
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!((nums[1] / nums[0] - 5.0).abs() < 0.01, "{native}");
}
