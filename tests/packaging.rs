//! Packaging checks: the `transform new` scaffold builds into a component that passes its own
//! golden test, and the Dockerfile, compose file and .env.example agree with the code and the
//! README (Docker itself cannot run here; hadolint runs in .ci/run).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use vast_processor_tests::root;

const VP: &str = env!("CARGO_BIN_EXE_vp-test");

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The outer `cargo test` exports variables meant for its own crates; start clean.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn a_new_transform_builds_and_passes_its_golden_test() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(VP)
        .args(["transform", "new", "demo-enrich", "--dir"])
        .arg(dir.path()));
    assert!(out.contains("created"), "{out}");
    let krate = dir.path().join("demo-enrich");
    // Same dependency versions as the workspace (cargo prunes the rest): no resolution.
    std::fs::copy(root().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    // A target directory kept between runs, so only the first build is slow.
    let target = root().join("target/scaffold-test");
    run(cargo()
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .args(["test", "--quiet"]));
    run(cargo()
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "--target", "wasm32-wasip2"]));
    let wasm_dir = krate.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&wasm_dir).unwrap();
    std::fs::copy(
        target.join("wasm32-wasip2/release/demo_enrich.wasm"),
        wasm_dir.join("demo_enrich.wasm"),
    )
    .unwrap();
    // The README's test command, as written there.
    let golden = |extra: &[&str]| {
        Command::new(VP)
            .current_dir(&krate)
            .args([
                "--cache-dir",
                root()
                    .join("target/e2e-scratch/wasm-cache")
                    .to_str()
                    .unwrap(),
                "transform",
                "test",
                "--topic",
                "demo-enrich",
                "--config",
                "pipelines.toml",
                "--input",
                "samples/input.jsonl",
                "--now",
                "1760457600000000",
                "--expect",
                "samples/expected.jsonl",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = golden(&[]);
    assert!(
        ok.status.success(),
        "golden test of the scaffold failed:\n{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    // The golden file holds every outcome kind: rows, a skip, a dead letter.
    let expected = std::fs::read_to_string(krate.join("samples/expected.jsonl")).unwrap();
    assert!(expected.contains("\"table\":\"events\""), "{expected}");
    assert!(expected.contains("\"skipped\""), "{expected}");
    assert!(expected.contains("\"error\""), "{expected}");
    // A changed transform config changes the output: the comparison notices.
    let changed = golden(&["--config-set", "skip_level=info"]);
    assert_eq!(changed.status.code(), Some(1), "a mismatch must exit 1");
}

/// `KEY=` lines and commented `# KEY=` examples of .env.example.
fn env_example_vars() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(".env.example")).unwrap();
    text.lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_environment_variable_is_in_env_example_and_the_readme() {
    let vars = env_example_vars();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    // What the code reads (config.rs apply_env, the cache, logging, profiling).
    for v in [
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_GROUP_ID",
        "KAFKA_TOPICS",
        "VAST_ENDPOINT",
        "VAST_ACCESS_KEY",
        "VAST_SECRET_KEY",
        "VAST_BUCKET",
        "VAST_SCHEMA",
        "VAST_PROCESSOR_CACHE_DIR",
        "VAST_PROCESSOR_PERFMAP",
        "RUST_LOG",
    ] {
        assert!(vars.contains(v), ".env.example lacks {v}");
        assert!(readme.contains(v), "README.md does not mention {v}");
    }
    // Read by the allocator and `main` before `.env` is loaded: documented, not in the file.
    for v in ["MIMALLOC_PURGE_DELAY", "MIMALLOC_ALLOW_THP"] {
        assert!(readme.contains(v), "README.md does not mention {v}");
    }
    assert!(
        vars.iter().any(|v| v.starts_with("KAFKA_PROPERTY_")),
        ".env.example shows no KAFKA_PROPERTY_ example"
    );
    // The compose file passes only documented variables.
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    for part in compose.split("${").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        assert!(
            vars.contains(&name),
            "docker-compose.yml uses {name}, not in .env.example"
        );
    }
    // .env.example loads: empty values count as unset, so it runs the Parquet default.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join(".env.example"), dir.path().join(".env")).unwrap();
    std::fs::copy(
        root().join("pipelines.toml"),
        dir.path().join("pipelines.toml"),
    )
    .unwrap();
    let out = Command::new(VP)
        .current_dir(dir.path())
        .args(["--no-cache", "check", "--config", "pipelines.toml"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("parquet"),
        "check with .env.example as .env:\n{text}"
    );
}

/// The instructions of the Dockerfile's stages, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(head) => cur.push_str(head),
            None => {
                cur.push_str(l);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_matches_the_repository() {
    let ins = dockerfile();
    let root = root();
    // The builder uses the pinned toolchain and the shared build script.
    let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(
        ins.iter()
            .any(|i| i.starts_with(&format!("FROM rust:{channel}-"))),
        "the builder image must be rust:{channel}-*"
    );
    assert!(ins.iter().any(|i| i == "RUN scripts/build-release"));
    let quickstart = std::fs::read_to_string(root.join("scripts/quickstart")).unwrap();
    assert!(
        quickstart.contains("scripts/build-release"),
        "quickstart must build the same way"
    );
    // Every file copied from the context exists and is not excluded.
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    for i in ins
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
    {
        let parts: Vec<&str> = i.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "COPY source {src} does not exist");
        }
    }
    // Runs as a non-root user, with a health check on the admin port it exposes and listens on.
    assert!(ins.iter().any(|i| i == "USER 10001:10001"));
    let port = ins
        .iter()
        .find_map(|i| i.strip_prefix("EXPOSE "))
        .expect("EXPOSE")
        .trim()
        .to_string();
    let health = ins
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    assert!(
        health.contains(&format!("127.0.0.1:{port}/healthz")),
        "{health}"
    );
    let cmd = ins
        .iter()
        .find_map(|i| i.strip_prefix("CMD "))
        .expect("CMD");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert!(
        args.join(" ")
            .contains(&format!("--admin-addr 0.0.0.0:{port}")),
        "{cmd}"
    );
    // The command line the image runs is one the binary accepts.
    assert_eq!(args[0], "run");
    let help = run(Command::new(VP).args(["run", "--help"]));
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "`run` has no {flag}");
    }
    assert!(Path::new(&args[args.iter().position(|a| a == "--config").unwrap() + 1]).is_absolute());
}
