//! The product binary carries only the product: no VAST simulator, no bench, no test guest.
//! (Those live in vast-sim, vast-processor-bench and vast-test-guests, which only tests and
//! tools depend on.)

use std::process::Command;

#[test]
fn the_binary_holds_no_simulator_bench_or_test_guest() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_vast-processor")).unwrap();
    let holds = |needle: &str| bin.windows(needle.len()).any(|w| w == needle.as_bytes());
    // A bundled transform is embedded (the search works on this binary).
    assert!(holds("raw-host-logs"), "the bundled transforms are missing");
    for foreign in [
        // test guests
        "hostile guest panics on purpose",
        "traps-always traps on every message",
        "this module refuses every configuration",
        "fails-half rejects odd offsets",
        // the simulator
        "the request signature does not match",
        // the bench
        "e0. broker read only",
    ] {
        assert!(!holds(foreign), "the product binary contains {foreign:?}");
    }
}

#[test]
fn the_product_depends_on_no_test_or_tool_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-e",
            "normal",
            "-p",
            "vast-processor",
            "--prefix",
            "none",
        ])
        .args(["--offline", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    for krate in ["vast-sim ", "vast-processor-bench ", "vast-test-guests "] {
        assert!(
            !tree.contains(krate),
            "vast-processor depends on {krate}:\n{tree}"
        );
    }
    // rustls stays only as the VAST client's TLS (through ureq): the simulator's server side
    // is not a dependency of the product.
    let direct = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-e",
            "normal",
            "-p",
            "vast-processor",
            "--depth",
            "1",
        ])
        .args(["--prefix", "none", "--offline", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let direct = String::from_utf8_lossy(&direct.stdout);
    assert!(direct.contains("ureq "), "{direct}");
    assert!(!direct.contains("rustls"), "{direct}");
}
