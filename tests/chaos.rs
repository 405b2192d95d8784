//! Crash safety under load: the processor is killed with SIGKILL at 10 pseudo-random moments
//! (some right after a hot swap of its transform) while records keep arriving, and restarted
//! each time. Afterwards every input offset is in the rows or the dead letters, and each
//! row appears once (exactly-once delivery, the default: no de-duplication step).

use std::collections::HashSet;
use std::time::Duration;
use vast_processor::model::Table;
use vast_processor_tests::*;

const VP: &str = env!("CARGO_BIN_EXE_vp-test");

#[test]
fn ten_kills_at_random_moments_lose_nothing() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("transforms")).unwrap();
    let wasm = dir.path().join("transforms/raw-logs.wasm");
    std::fs::write(&wasm, vast_guest_artifacts::RAW_LOGS).unwrap();
    let versions = [
        vast_guest_artifacts::RAW_LOGS.to_vec(),
        std::fs::read(vast_test_guests::TEAM_ENRICH_PATH).unwrap(),
    ];
    let cfg = test_config(&broker, "e2e-chaos", &["raw-logs"], "")
        .replace(
            "transform = \"raw-logs\"",
            "transform = \"transforms/raw-logs.wasm\"",
        )
        .replace("max_rows = 5000", "max_rows = 100")
        .replace("[runtime]", "[reload]\ndebounce_ms = 100\n[runtime]");
    let data = dir.path().join("data");

    let load = Load::start(
        &broker.addr,
        "raw-logs",
        30,
        25,
        100,
        Duration::from_millis(60),
    );
    let mut rng = vast_processor::generate::Rng::new(2026);
    for round in 0..10 {
        let mut p = Processor::start(VP, dir.path(), &cfg, &data, &[]);
        p.wait_joined("group join");
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
        if round % 3 == 1 {
            // Kill right after a hot swap.
            let tmp = wasm.with_extension("tmp");
            std::fs::write(&tmp, &versions[(round / 3 + 1) % 2]).unwrap();
            std::fs::rename(&tmp, &wasm).unwrap();
            std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
        }
        p.signal(9);
        p.wait(Duration::from_secs(10));
    }
    let produced = load.finish();
    let mut last = Processor::start(VP, dir.path(), &cfg, &data, &["--stop-after-idle", "3"]);
    assert!(
        last.wait(Duration::from_secs(120)).success(),
        "{}",
        last.log_text()
    );

    let all = rows(&data, Table::Events);
    let ids: HashSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let offsets: HashSet<(i64, i64)> = all
        .iter()
        .map(|r| {
            (
                r["source_partition"].as_i64().unwrap(),
                r["source_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let letters = read_topic(
        &broker.addr,
        "raw-logs-dlq",
        1,
        produced.len() / 25,
        Duration::from_secs(30),
    );
    let dead: HashSet<(i64, i64)> = letters
        .iter()
        .map(|l| {
            (
                l.headers["x-vast-source-partition"].parse().unwrap(),
                l.headers["x-vast-source-offset"].parse().unwrap(),
            )
        })
        .collect();
    for p in &produced {
        let key = (p.partition as i64, p.offset);
        assert!(
            offsets.contains(&key) || dead.contains(&key),
            "offset {}/{} lost",
            p.partition,
            p.offset
        );
    }
    // One row per valid record, with its own id.
    assert_eq!(
        ids.len(),
        offsets.len(),
        "a record's rows got different ids"
    );
    assert_eq!(all.len(), ids.len(), "duplicated rows");
    assert_eq!(
        offsets.len() + dead.len(),
        produced.len(),
        "rows {} + dead letters {}",
        offsets.len(),
        dead.len()
    );
    assert_eq!(
        committed(&broker.addr, "e2e-chaos", "raw-logs", 2),
        end_offsets(&produced)
    );
}
