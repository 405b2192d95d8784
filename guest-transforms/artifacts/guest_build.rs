// Shared by the build scripts of vast-guest-artifacts (the bundled transforms, embedded in
// the product) and vast-test-guests (examples and test guests, for tests only), through
// `include!`: build guest packages as wasm32-wasip2 components with a nested cargo, into a
// target directory of their own (so it never contends with the outer build's lock).
// The pattern is wasmtime's test-programs artifacts.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `packages` and return, for each, its constant's stem (`raw-logs` -> `RAW_LOGS`) and
/// the path of its component.
fn build_guests(packages: &[&str]) -> Vec<(String, PathBuf)> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: share one guest target dir per
    // outer target dir, so debug and release builds reuse the same guest builds.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("guest-wasm"))
        .unwrap_or_else(|| root.join("target/guest-wasm"));

    for dir in ["wit", "guest-transforms", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    for pkg in packages {
        cmd.args(["-p", pkg]);
    }
    // Settings meant for the outer (host) build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "__CARGO_FIX_PLZ",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
    ] {
        cmd.env_remove(var);
    }
    // wasm SIMD (which wasmtime compiles to SSE/AVX) lets the guests' byte scanning
    // (memchr, UTF-8 checks, copies) use 16-byte vectors instead of 4-byte words.
    cmd.env(
        "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
        "-Ctarget-feature=+simd128",
    );
    let status = cmd
        .status()
        .expect("failed to run cargo to build the wasm guests");
    assert!(
        status.success(),
        "building the wasm guests failed ({status}); is the wasm32-wasip2 target installed? \
         run `rustup target add wasm32-wasip2`"
    );

    let wasm_dir = target_dir.join("wasm32-wasip2/guest");
    packages
        .iter()
        .map(|pkg| {
            let file = wasm_dir.join(format!("{}.wasm", pkg.replace('-', "_")));
            assert!(file.exists(), "guest build produced no {}", file.display());
            (pkg.replace('-', "_").to_uppercase(), file)
        })
        .collect()
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("non-UTF-8 build path").to_string()
}

fn write_out(file: &str, code: &str) {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    std::fs::write(out_dir.join(file), code).unwrap();
}
