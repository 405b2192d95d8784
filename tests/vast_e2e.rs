//! Kafka -> processor -> VAST simulator, end to end: the same rows as the Parquet sink,
//! recovery from a 30-second outage without loss or early commits, and clear startup errors.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use vast_processor::sink::vast::sigv4::Credentials;
use vast_processor_tests::*;
use vast_sim::{Fault, FaultKind, SimOptions, Simulator};

const VP: &str = env!("CARGO_BIN_EXE_vp-test");
const SECRET: &str = "e2e-secret-do-not-print";

fn sim() -> Simulator {
    Simulator::start(
        "127.0.0.1:0",
        SimOptions::new(Credentials::new("AK", SECRET), vec!["vastdb".into()]),
    )
    .unwrap()
}

fn vast_env(sim: &Simulator, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("VAST_ENDPOINT", sim.endpoint()),
        ("VAST_ACCESS_KEY", "AK".into()),
        ("VAST_SECRET_KEY", secret.into()),
        ("VAST_BUCKET", "vastdb".into()),
        ("VAST_SCHEMA", "observability".into()),
    ]
}

fn sim_rows(sim: &Simulator, table: &str) -> Vec<Value> {
    vast_processor::cli::commands::batches_to_json(&sim.rows("vastdb", "observability", table))
        .unwrap()
}

/// Rows keyed by id, without `created_at` (processing time differs between runs).
fn by_id(rows: Vec<Value>) -> HashMap<String, Value> {
    rows.into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("created_at");
            (r["id"].as_str().unwrap().to_string(), r)
        })
        .collect()
}

#[test]
fn every_topic_lands_in_vast_exactly_as_in_parquet() {
    let broker = Broker::start();
    let topics = ["raw-logs", "raw-queries", "raw-host-logs", "otel-metrics"];
    for t in topics {
        broker.create_topic(t, 2);
        broker.create_topic(&format!("{t}-dlq"), 1);
        produce(&broker.addr, t, &generated(t, 60, 30, 17));
    }
    let sim = sim();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-vast", &topics, "");
    let mut v = Processor::start_with_env(
        VP,
        dir.path(),
        &cfg,
        &data,
        &["--stop-after-idle", "3"],
        &vast_env(&sim, SECRET),
    );
    assert!(
        v.wait(Duration::from_secs(120)).success(),
        "{}",
        v.log_text()
    );
    assert!(!v.log_text().contains(SECRET), "the secret was logged");
    let cfg = test_config(&broker, "e2e-parquet", &topics, "");
    let mut p = Processor::start(VP, dir.path(), &cfg, &data, &["--stop-after-idle", "3"]);
    assert!(
        p.wait(Duration::from_secs(120)).success(),
        "{}",
        p.log_text()
    );

    for (table, t) in [
        ("events", vast_processor::model::Table::Events),
        ("metrics", vast_processor::model::Table::Metrics),
    ] {
        let in_vast = by_id(sim_rows(&sim, table));
        let in_parquet = by_id(rows(&data, t));
        assert!(!in_vast.is_empty(), "{table}");
        assert_eq!(
            sim_rows(&sim, table).len(),
            in_vast.len(),
            "{table}: duplicates in a clean run"
        );
        assert_eq!(in_vast.len(), in_parquet.len(), "{table}");
        for (id, row) in &in_parquet {
            assert_eq!(in_vast.get(id), Some(row), "{table} row {id}");
        }
    }
    assert_eq!(sim.open_transactions(), 0);
}

#[test]
fn a_30_second_outage_loses_nothing_and_commits_nothing_early() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 2);
    broker.create_topic("raw-logs-dlq", 1);
    let sim = sim();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-outage", &["raw-logs"], "");
    let mut p =
        Processor::start_with_env(VP, dir.path(), &cfg, &data, &[], &vast_env(&sim, SECRET));
    p.wait_joined("group join");
    let records = generated("raw-logs", 1200, 0, 8);
    let mut produced = produce(&broker.addr, "raw-logs", &records[..300]);
    wait_until(Duration::from_secs(60), "first rows", || {
        !sim_rows(&sim, "events").is_empty()
    });

    // Every insert fails with a retriable error for 30 s while records keep arriving.
    let outage_end = Instant::now() + Duration::from_secs(30);
    sim.add_fault(Fault {
        method: Some("POST".into()),
        command: Some("rows".into()),
        kind: FaultKind::Status(503, "ServiceUnavailable".into()),
        count: None,
        until: Some(outage_end),
    });
    for chunk in records[300..].chunks(150) {
        produced.extend(produce(&broker.addr, "raw-logs", chunk));
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(
        outage_end
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_secs(3)),
    );
    // Nothing is committed past what the sink holds.
    let landed: HashSet<(i64, i64)> = sim_rows(&sim, "events")
        .iter()
        .map(|r| {
            (
                r["source_partition"].as_i64().unwrap(),
                r["source_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    for (part, next) in committed(&broker.addr, "e2e-outage", "raw-logs", 2) {
        for off in 0..next.max(0) {
            assert!(
                landed.contains(&(part as i64, off)),
                "offset {part}/{off} committed before it landed"
            );
        }
    }
    assert!(
        landed.len() < produced.len(),
        "the outage did not hold anything back"
    );

    // After recovery every record lands.
    wait_until(Duration::from_secs(120), "recovery", || {
        let ids: HashSet<String> = sim_rows(&sim, "events")
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        ids.len() == produced.len()
    });
    p.signal(15);
    assert!(
        p.wait(Duration::from_secs(30)).success(),
        "{}",
        p.log_text()
    );
    let all = sim_rows(&sim, "events");
    let distinct: HashSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), produced.len());
    assert_eq!(
        all.len(),
        produced.len(),
        "no duplicate inserts: failed transactions were rolled back"
    );
    assert_eq!(
        committed(&broker.addr, "e2e-outage", "raw-logs", 2),
        end_offsets(&produced)
    );
    assert!(
        p.log_text().contains("will retry"),
        "the outage was not retried"
    );
}

#[test]
fn wrong_credentials_stop_the_processor_at_startup_with_a_clear_message() {
    let broker = Broker::start();
    broker.create_topic("raw-logs", 1);
    let sim = sim();
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(&broker, "e2e-auth", &["raw-logs"], "");
    let mut p = Processor::start_with_env(
        VP,
        dir.path(),
        &cfg,
        &dir.path().join("data"),
        &[],
        &vast_env(&sim, "not-the-secret"),
    );
    let status = p.wait(Duration::from_secs(60));
    assert!(!status.success());
    let log = p.log_text();
    assert!(
        log.contains("HTTP 403") && log.contains("check VAST_ACCESS_KEY and VAST_SECRET_KEY"),
        "{log}"
    );
    assert!(
        !log.contains("not-the-secret") && !log.contains(SECRET),
        "a secret was printed:\n{log}"
    );
}

/// An OTLP metrics request of one gauge whose description is `description`, gzipped: a
/// small record that becomes one huge row.
fn gauge_with_description(description: String) -> Vec<u8> {
    use std::io::Write;
    use vast_transform_sdk::otlp::metrics as pb;
    let req = pb::ExportMetricsServiceRequest {
        resource_metrics: vec![pb::ResourceMetrics {
            resource: Some(pb::Resource {
                attributes: vec![pb::KeyValue::string("host.name", "pg-1")],
            }),
            scope_metrics: vec![pb::ScopeMetrics {
                metrics: vec![pb::Metric {
                    name: "postgresql.backends".into(),
                    description,
                    unit: "1".into(),
                    data: Some(pb::Data::Gauge(pb::Gauge {
                        data_points: vec![pb::NumberDataPoint {
                            attributes: vec![],
                            start_time_unix_nano: 0,
                            time_unix_nano: 1_760_457_600_000_000_000,
                            value: Some(pb::NumberValue::AsInt(3)),
                        }],
                    })),
                }],
            }],
        }],
    };
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&prost::Message::encode_to_vec(&req)).unwrap();
    e.finish().unwrap()
}

/// One row over the VAST insert limit stopped every pipeline on every restart ("one row
/// serializes to ... over the insert limit", lag 100/100). It is dead-lettered instead
/// (class `contract`, with its size), the other records land, and the offsets reach the end.
#[test]
fn one_oversized_row_is_dead_lettered_and_the_rest_lands() {
    let broker = Broker::start();
    broker.create_topic("otel-metrics", 1);
    broker.create_topic("otel-metrics-dlq", 1);
    let mut records = generated("otel-metrics", 99, 0, 23);
    let big = gauge_with_description("A".repeat(5_000_000));
    assert!(
        big.len() < 64 * 1024,
        "the record itself is small ({} B)",
        big.len()
    );
    records.insert(50, (None, big));
    let produced = produce(&broker.addr, "otel-metrics", &records);
    let sim = sim();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = test_config(&broker, "e2e-big-row", &["otel-metrics"], "");
    let mut p = Processor::start_with_env(
        VP,
        dir.path(),
        &cfg,
        &data,
        &["--stop-after-idle", "3"],
        &vast_env(&sim, SECRET),
    );
    assert!(
        p.wait(Duration::from_secs(120)).success(),
        "{}",
        p.log_text()
    );
    let points = vast_processor::generate::POINTS_PER_METRICS_RECORD;
    assert_eq!(sim_rows(&sim, "metrics").len(), 99 * points);
    let letters = read_topic(
        &broker.addr,
        "otel-metrics-dlq",
        1,
        1,
        Duration::from_secs(20),
    );
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.headers["x-vast-error-class"], "contract");
    assert_eq!(l.headers["x-vast-source-offset"], "50");
    let error = &l.headers["x-vast-error"];
    assert!(
        error.contains("limits.max_row_bytes") && error.contains("bytes"),
        "{error}"
    );
    assert_eq!(
        committed(&broker.addr, "e2e-big-row", "otel-metrics", 1),
        end_offsets(&produced)
    );
    assert_eq!(sim.open_transactions(), 0);
}
