//! The VAST client and sink against the simulator, over real HTTP on loopback.

use arrow_array::{Array, RecordBatch, StringArray};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;
use vast_processor::batch::{Lineage, TableBatcher, schema};
use vast_processor::model::Table;
use vast_processor::model::{Event, Row};
use vast_processor::sink::Sink;
use vast_processor::sink::vast::VastSink;
use vast_processor::sink::vast::client::{VastClient, VastConfig, VastError};
use vast_processor::sink::vast::sigv4::Credentials;
use vast_sim::{Fault, FaultKind, SimOptions, Simulator};

const SECRET: &str = "s3cr3t-value-never-logged";

fn sim() -> Simulator {
    Simulator::start(
        "127.0.0.1:0",
        SimOptions::new(Credentials::new("AK", SECRET), vec!["vastdb".into()]),
    )
    .unwrap()
}

fn config(endpoint: &str, secret: &str) -> VastConfig {
    VastConfig {
        endpoint: endpoint.into(),
        credentials: Credentials::new("AK", secret),
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
    }
}

/// A sink on the simulator's `vastdb`/`observability` (schema and tables left as they are).
fn connect(sim: &Simulator) -> VastSink {
    VastSink::connect(
        &config(&sim.endpoint(), SECRET),
        "vastdb",
        "observability",
        true,
    )
    .unwrap()
}

/// A sink on the simulator with the schema and tables created.
fn bootstrapped(sim: &Simulator) -> VastSink {
    let sink = connect(sim);
    sink.bootstrap().unwrap();
    sink
}

fn events(ids: &[&str]) -> Vec<(Table, RecordBatch)> {
    let mut b = TableBatcher::new(true);
    for (i, id) in ids.iter().enumerate() {
        b.push(
            &Row::Event(Event {
                timestamp: Some(1),
                entity_id: "pg-1".into(),
                event_type: "log".into(),
                source: "postgresql".into(),
                environment: "production".into(),
                message: format!("m{i}"),
                tags: vec![("log_level".into(), "info".into())],
                attributes: "{}".into(),
                trace_id: None,
                id: Some(id.to_string()),
                created_at: Some(2),
            }),
            &Lineage {
                topic: "raw-logs",
                partition: 0,
                offset: i as i64,
                version: "raw-logs@x",
            },
        );
    }
    b.finish()
}

fn ids(sim: &Simulator, table: &str) -> Vec<String> {
    sim.rows("vastdb", "observability", table)
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..a.len())
                .map(move |i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn bootstrap_creates_schema_and_sorted_tables_and_rows_appear_only_at_commit() {
    let sim = sim();
    let sink = bootstrapped(&sim);
    let (events_schema, sorted) = sim.table("vastdb", "observability", "events").unwrap();
    assert_eq!(events_schema, *schema(Table::Events, true));
    assert_eq!(sorted, vec![1, 0, 2], "entity_id, timestamp, event_type");
    assert_eq!(
        sim.table("vastdb", "observability", "metrics").unwrap().1,
        vec![0, 1, 2]
    );

    // Isolation: rows inserted in an open transaction are invisible until commit.
    let client = VastClient::connect(&config(&sim.endpoint(), SECRET)).unwrap();
    let tx = client.begin().unwrap();
    let batch = &events(&["a", "b"])[0].1;
    let layout = client
        .list_columns(tx, "vastdb", "observability", "events")
        .unwrap();
    let batch = vast_processor::sink::vast::client::conform(batch, &layout, "events").unwrap();
    client
        .insert(tx, "vastdb", "observability", "events", &batch)
        .unwrap();
    assert!(
        ids(&sim, "events").is_empty(),
        "uncommitted rows are visible"
    );
    client.commit(tx).unwrap();
    assert_eq!(ids(&sim, "events"), ["a", "b"]);
    // Rollback discards.
    let tx = client.begin().unwrap();
    client
        .insert(tx, "vastdb", "observability", "events", &batch)
        .unwrap();
    client.rollback(tx).unwrap();
    assert_eq!(ids(&sim, "events").len(), 2);
    assert_eq!(sim.open_transactions(), 0);

    // The sink: one transaction per flush.
    sink.write(&events(&["c"]), None).unwrap();
    assert_eq!(ids(&sim, "events"), ["a", "b", "c"]);
}

#[test]
fn wrong_credentials_and_non_vast_servers_are_refused_at_connect() {
    let sim = sim();
    let err = VastClient::connect(&config(&sim.endpoint(), "wrong"))
        .err()
        .unwrap();
    assert!(err.is_auth(), "{err}");
    assert!(
        !err.to_string().contains("wrong") && !err.to_string().contains(SECRET),
        "{err}"
    );
    assert!(!format!("{:?}", config(&sim.endpoint(), SECRET)).contains(SECRET));

    // A server that is not VAST.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nServer: nginx/1.25\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let err = VastClient::connect(&config(&format!("http://{addr}"), SECRET))
        .err()
        .unwrap();
    assert!(matches!(err, VastError::NotVast { .. }), "{err}");
    // Nothing listening: unreachable, retriable.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = VastClient::connect(&config(&format!("http://{dead}"), SECRET))
        .err()
        .unwrap();
    assert!(matches!(err, VastError::Unreachable { .. }), "{err}");
    assert!(err.is_retriable());
    // A missing bucket is a clear, fatal error.
    let err = VastSink::connect(
        &config(&sim.endpoint(), SECRET),
        "nope",
        "observability",
        true,
    )
    .err()
    .unwrap();
    assert!(matches!(err, VastError::MissingBucket(_)), "{err}");
}

#[test]
fn slowdown_is_retried_in_place() {
    let sim = sim();
    let sink = bootstrapped(&sim);
    sim.add_fault(Fault {
        method: Some("POST".into()),
        command: Some("rows".into()),
        kind: FaultKind::Status(503, "SlowDown".into()),
        count: Some(2),
        until: None,
    });
    sink.write(&events(&["x"]), None).unwrap();
    assert_eq!(ids(&sim, "events"), ["x"]);
    let inserts = sim
        .log()
        .iter()
        .filter(|l| l.starts_with("POST /vastdb/observability/events?rows"))
        .count();
    assert_eq!(inserts, 3);
}

#[test]
fn a_dropped_connection_after_the_insert_applied_is_not_committed_twice() {
    let sim = sim();
    let sink = bootstrapped(&sim);
    sim.add_fault(Fault {
        method: Some("POST".into()),
        command: Some("rows".into()),
        kind: FaultKind::DropAfterApply,
        count: Some(1),
        until: None,
    });
    let err = sink.write(&events(&["p", "q"]), None).unwrap_err();
    assert!(err.is_retriable(), "{err}");
    // The half-done transaction was rolled back: nothing visible, nothing left open.
    assert!(ids(&sim, "events").is_empty());
    assert_eq!(sim.open_transactions(), 0);
    // The retry (what the worker does) lands the rows exactly once.
    sink.write(&events(&["p", "q"]), None).unwrap();
    assert_eq!(ids(&sim, "events"), ["p", "q"]);
    // A drop before the request applies behaves the same.
    sim.add_fault(Fault {
        method: Some("PUT".into()),
        command: Some("transaction".into()),
        kind: FaultKind::DropBeforeApply,
        count: Some(1),
        until: None,
    });
    assert!(
        sink.write(&events(&["r"]), None)
            .unwrap_err()
            .is_retriable()
    );
    sink.write(&events(&["r"]), None).unwrap();
    assert_eq!(ids(&sim, "events"), ["p", "q", "r"]);
}

#[test]
fn a_table_missing_columns_gets_them_and_inserts_succeed() {
    let sim = sim();
    // An older table, created without the lineage columns (and with nullable columns, as
    // pyarrow would).
    let old = arrow_schema::Schema::new(
        schema(Table::Events, false)
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    );
    sim.create_table("vastdb", "observability", "events", old);
    let sink = connect(&sim);
    let (exists, reports) = sink.inspect().unwrap();
    assert!(exists);
    assert_eq!(
        reports[0].missing_columns,
        [
            "source_topic",
            "source_partition",
            "source_offset",
            "transform_version"
        ]
    );
    sink.write(&events(&["z"]), None).unwrap();
    let (schema, _) = sim.table("vastdb", "observability", "events").unwrap();
    assert!(schema.field_with_name("transform_version").is_ok());
    assert_eq!(ids(&sim, "events"), ["z"]);
}

#[test]
fn a_column_of_another_type_is_a_fatal_schema_mismatch() {
    let sim = sim();
    let mut fields: Vec<arrow_schema::Field> = schema(Table::Events, true)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[5] = arrow_schema::Field::new("message", arrow_schema::DataType::Int64, true);
    sim.create_table(
        "vastdb",
        "observability",
        "events",
        arrow_schema::Schema::new(fields),
    );
    let sink = connect(&sim);
    let err = sink.write(&events(&["z"]), None).unwrap_err();
    assert!(
        !err.is_retriable() && err.to_string().contains("column `message`"),
        "{err}"
    );
    assert!(ids(&sim, "events").is_empty());
}

#[test]
fn check_reports_the_vast_state_and_column_differences() {
    let sim = sim();
    let old = arrow_schema::Schema::new(
        schema(Table::Events, false)
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    );
    sim.create_table("vastdb", "observability", "events", old);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vast-processor"))
        .args(["check", "--config", "pipelines.toml"])
        .current_dir(root)
        .env("VAST_ENDPOINT", sim.endpoint())
        .env("VAST_ACCESS_KEY", "AK")
        .env("VAST_SECRET_KEY", SECRET)
        .env("VAST_BUCKET", "vastdb")
        .env(
            "VAST_PROCESSOR_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("check-cache"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("VAST 5.3.0.1, bucket `vastdb` exists"),
        "{text}"
    );
    assert!(text.contains("table events: exists"), "{text}");
    assert!(text.contains("missing columns (will be added): source_topic, source_partition, source_offset, transform_version"), "{text}");
    assert!(
        text.contains("table metrics: missing (will be created)"),
        "{text}"
    );
    assert!(
        text.contains("pipeline otel-metrics: transform otel-metrics@"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    // `check` changes nothing.
    assert!(sim.table("vastdb", "observability", "metrics").is_none());
}

/// https with a private CA: `sink.ca_file` makes the client trust it; without it, or with
/// another CA, the connection is refused with a certificate error (and nothing is sent).
#[test]
fn https_with_a_custom_ca_file() {
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let sim = Simulator::start(
        "127.0.0.1:0",
        SimOptions {
            tls: Some(
                vast_sim::tls_config(&tls.join("server.pem"), &tls.join("server.key")).unwrap(),
            ),
            ..SimOptions::new(Credentials::new("AK", SECRET), vec!["vastdb".into()])
        },
    )
    .unwrap();
    assert!(sim.endpoint().starts_with("https://127.0.0.1:"));
    let with_ca = |ca: Option<&str>| VastConfig {
        ca_file: ca.map(|f| tls.join(f)),
        ..config(&sim.endpoint(), SECRET)
    };

    // Trusted through the CA file: the whole sink path works over TLS.
    let sink =
        VastSink::connect(&with_ca(Some("ca.pem")), "vastdb", "observability", true).unwrap();
    sink.bootstrap().unwrap();
    sink.write(&events(&["tls-1", "tls-2"]), None).unwrap();
    assert_eq!(ids(&sim, "events"), ["tls-1", "tls-2"]);

    // Not trusted: the system roots do not know this CA, nor does another CA.
    for ca in [None, Some("other-ca.pem")] {
        let err = VastClient::connect(&with_ca(ca)).err().unwrap();
        let text = format!("{err:#}").to_lowercase();
        assert!(
            text.contains("certificate") || text.contains("issuer"),
            "{ca:?}: {err:#}"
        );
    }
    assert_eq!(ids(&sim, "events").len(), 2);

    // A CA file that is not PEM is a clear configuration error.
    let err = VastClient::connect(&with_ca(Some("make.sh")))
        .err()
        .unwrap();
    assert!(err.to_string().contains("make.sh"), "{err}");
}

fn sink_config(sim: &Simulator) -> vast_processor::config::VastSinkConfig {
    vast_processor::config::VastSinkConfig {
        endpoint: Some(sim.endpoint()),
        access_key: Some("AK".into()),
        secret_key: Some(SECRET.into()),
        bucket: Some("vastdb".into()),
        ..Default::default()
    }
}

/// Two processors starting on an empty VAST raced to create the schema: the second got 409
/// "... is locked by another transaction", "cannot prepare tables", exit 2. Preparing the
/// tables retries a conflict with backoff and re-reads the state.
#[test]
fn preparing_the_tables_retries_a_conflict_and_two_starts_both_succeed() {
    let sim = sim();
    sim.add_fault(Fault {
        method: Some("PUT".into()),
        command: Some("transaction".into()),
        kind: FaultKind::Status(409, "Conflict".into()),
        count: Some(1),
        until: None,
    });
    let dir = std::path::Path::new(".");
    VastSink::build(&sink_config(&sim), dir, true).unwrap();
    assert_eq!(sim.open_transactions(), 0);

    // Two at once on another empty database: both start.
    let other = self::sim();
    let cfg = sink_config(&other);
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                VastSink::build(&cfg, std::path::Path::new("."), true).map(|_| ())
            })
        })
        .collect();
    for s in starts {
        s.join().unwrap().unwrap();
    }
    assert_eq!(other.open_transactions(), 0);
}

/// After a commit answered 409 no rollback was sent (insert 200, commit 409, nothing more):
/// the transaction stayed open on the server. Every failed transaction is rolled back.
#[test]
fn a_failed_commit_is_rolled_back() {
    let sim = sim();
    let sink = bootstrapped(&sim);
    sim.add_fault(Fault {
        method: Some("PUT".into()),
        command: Some("transaction".into()),
        kind: FaultKind::Status(409, "Conflict".into()),
        count: Some(1),
        until: None,
    });
    let err = sink.write(&events(&["a"]), None).unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert_eq!(sim.open_transactions(), 0, "{:#?}", sim.log());
    assert!(
        sim.log().last().is_some_and(|l| l.starts_with("DELETE")),
        "{:#?}",
        sim.log()
    );
    sink.write(&events(&["a"]), None).unwrap();
    assert_eq!(ids(&sim, "events"), ["a"]);
}
