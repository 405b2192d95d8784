//! Poison and hostile input through the real pipeline (`replay`: transform in wasm, Arrow,
//! Parquet, dead-letter files): each record is processed or dead-lettered, never a crash,
//! hang or OOM of the host.

use std::io::Write;
use std::path::Path;
use std::process::Command;

fn replay(topic: &str, inputs: &Path, data: &Path) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new(env!("CARGO_BIN_EXE_vast-processor"))
        .args([
            "replay",
            "--topic",
            topic,
            "--format",
            "raw",
            "--config",
            "pipelines.toml",
            "--input",
        ])
        .arg(inputs)
        .arg("--data-dir")
        .arg(data)
        .current_dir(root)
        .env(
            "VAST_PROCESSOR_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("poison-cache"),
        )
        .env_remove("VAST_ENDPOINT")
        .output()
        .unwrap()
}

/// Replay `inputs` (it must succeed) and return the dead letters it wrote.
fn replay_ok(topic: &str, inputs: &Path, data: &Path) -> Vec<(i64, String)> {
    let out = replay(topic, inputs, data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dead(data)
}

fn dead(data: &Path) -> Vec<(i64, String)> {
    let mut v: Vec<(i64, String)> = vast_processor::sink::deadletter::read_dead_letter_files(data)
        .iter()
        .map(|l| {
            (
                l["source_offset"].as_i64().unwrap(),
                l["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn rows(data: &Path, table: vast_processor::model::Table) -> Vec<serde_json::Value> {
    vast_processor::cli::commands::table_rows(data, table).unwrap()
}

#[test]
fn hostile_json_records_are_processed_or_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in");
    std::fs::create_dir(&inp).unwrap();
    let big = format!(
        r#"{{"host": "pg-1", "payload": {{"event_type": "vacuum", "blob": "{}"}}}}"#,
        "x".repeat(10 << 20)
    );
    let deep = format!(
        r#"{{"host": "pg-1", "payload": {{"a": {}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("00-empty", vec![]),
        ("01-ten-mib", big.into_bytes()),
        ("02-invalid-utf8", b"{\"host\": \"\xff\xfe\"}".to_vec()),
        ("03-deep-10000", deep.into_bytes()),
        ("04-huge-numbers", br#"{"host": "pg-1", "payload": {"event_type": "deadlocks", "count": 1e999999, "n": 123456789012345678901234567890}}"#.to_vec()),
        ("05-nul-bytes", b"\0\0\0\0".to_vec()),
        ("06-fine", br#"{"host": "pg-2", "payload": {"event_type": "deadlocks", "count": 1}}"#.to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(inp.join(name), bytes).unwrap();
    }
    let data = dir.path().join("data");
    let dead = replay_ok("raw-logs", &inp, &data);
    let offsets: Vec<i64> = dead.iter().map(|(o, _)| *o).collect();
    let events = rows(&data, vast_processor::model::Table::Events);
    let kept: Vec<i64> = events
        .iter()
        .map(|r| r["source_offset"].as_i64().unwrap())
        .collect();
    // Every record is accounted for exactly once, in the rows or the dead letters. (The
    // 10,000-deep payload is kept as raw JSON text: it is never parsed into a tree.)
    let mut all: Vec<i64> = offsets.iter().chain(&kept).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (0..files.len() as i64).collect::<Vec<_>>(),
        "dead {dead:?}, kept {kept:?}"
    );
    // The 10 MiB record makes a row over `limits.max_row_bytes` (4 MiB, the limit both
    // sinks hold): a contract dead letter with the size, whose letter keeps the payload.
    assert_eq!(offsets, [0, 1, 2, 5], "{dead:?}");
    assert!(dead[1].1.contains("limits.max_row_bytes"), "{dead:?}");
    let letters = vast_processor::sink::deadletter::read_dead_letter_files(&data);
    let big = letters
        .iter()
        .find(|l| l["source_offset"] == 1)
        .expect("the big record's letter");
    assert_eq!(big["error_class"], "contract");
    assert!(
        big["value_base64"].as_str().unwrap().len() > (10 << 20) * 4 / 3,
        "the 10 MiB record kept its payload"
    );
    let huge = events.iter().find(|r| r["source_offset"] == 4).unwrap();
    assert_eq!(huge["message"], "Detected 1e999999 deadlock(s).");
}

#[test]
fn hostile_protobuf_records_are_processed_or_dead_lettered() {
    use prost::Message as _;
    use vast_transform_sdk::otlp::metrics::AnyValue;
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in");
    std::fs::create_dir(&inp).unwrap();
    // A gzip bomb: 200 MiB of zeros in a few hundred KiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    // An attribute value nested 10,000 arrays deep, encoded by hand from the inside out (a
    // struct that deep would overflow this test's own stack).
    fn field(tag: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 8);
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }
    let mut v = AnyValue::string("leaf").encode_to_vec();
    for _ in 0..10_000 {
        v = field(5, &field(1, &v)); // AnyValue.array_value { values: [v] }
    }
    let kv = [field(1, b"k"), field(2, &v)].concat(); // KeyValue
    let deep = field(1, &field(1, &field(1, &kv))); // request.resource_metrics.resource.attributes
    let ok = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/otel-metrics/01-gauge.pb"),
    )
    .unwrap();
    for (name, bytes) in [
        ("00-bomb.gz", bomb),
        ("01-deep.pb", deep),
        ("02-empty", vec![]),
        ("03-ok.pb", ok),
        (
            "04-random",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ] {
        std::fs::write(inp.join(name), bytes).unwrap();
    }
    let data = dir.path().join("data");
    let dead = replay_ok("otel-metrics", &inp, &data);
    let offsets: Vec<i64> = dead.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [0, 1, 4], "{dead:?}");
    assert!(dead[0].1.contains("refused"), "{dead:?}");
    let metrics = rows(&data, vast_processor::model::Table::Metrics);
    assert!(metrics.iter().all(|r| r["source_offset"] == 3));
    assert_eq!(metrics.len(), 2);
}
