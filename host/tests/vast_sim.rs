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

/// Events for offsets `from..to` of partition 0, ids `o<offset>`.
fn events_at(from: i64, to: i64) -> Vec<(Table, RecordBatch)> {
    let mut b = TableBatcher::new(true);
    for offset in from..to {
        b.push(
            &Row::Event(Event {
                timestamp: Some(1),
                entity_id: "pg-1".into(),
                event_type: "log".into(),
                source: "postgresql".into(),
                environment: "production".into(),
                message: format!("m{offset}"),
                tags: vec![],
                attributes: "{}".into(),
                trace_id: None,
                id: Some(format!("o{offset}")),
                created_at: Some(2),
            }),
            &Lineage {
                topic: "raw-logs",
                partition: 0,
                offset,
                version: "raw-logs@x",
            },
        );
    }
    b.finish()
}

fn landing(first: i64, next: i64) -> vast_processor::sink::Landing {
    vast_processor::sink::Landing {
        group: "g".into(),
        topic: "raw-logs".into(),
        partitions: vec![(0, first, next)],
    }
}

fn sorted_ids(sim: &Simulator) -> Vec<String> {
    let mut v = ids(sim, "events");
    v.sort_by_key(|id| id[1..].parse::<i64>().unwrap());
    v
}

fn expect(from: i64, to: i64) -> Vec<String> {
    (from..to).map(|o| format!("o{o}")).collect()
}

fn landed(sink: &VastSink) -> Option<i64> {
    let asked = [("raw-logs".to_string(), 0)];
    sink.landed("g", &asked).unwrap().get(&asked[0]).copied()
}

/// Exactly once into VAST: the offsets row is written in the flush's transaction; a flush
/// that landed already writes nothing, one that overlaps writes only what is new.
#[test]
fn offsets_land_in_the_rows_transaction_and_a_repeat_writes_nothing() {
    let sim = sim();
    let sink = bootstrapped(&sim);
    assert!(sink.stores_offsets());
    assert_eq!(landed(&sink), None);
    sink.write(&events_at(0, 3), Some(&landing(0, 3))).unwrap();
    assert_eq!(landed(&sink), Some(3));
    sink.write(&events_at(0, 3), Some(&landing(0, 3))).unwrap();
    sink.write(&events_at(1, 5), Some(&landing(1, 5))).unwrap();
    assert_eq!(sorted_ids(&sim), expect(0, 5));
    assert_eq!(landed(&sink), Some(5));
    // One row per group/topic/partition, updated in place with a version.
    let rows = sim.rows("vastdb", "observability", "vast_processor_offsets");
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 1, "{rows:?}");
    let version = rows[0]
        .column_by_name("version")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(version, 2);
    assert_eq!(
        sink.stored_offsets("g").unwrap(),
        [("raw-logs".to_string(), 0, 5)]
    );
    // A recreated topic: the stored offset is lowered, and its new records land.
    sink.reset_offsets("g", &[(("raw-logs".to_string(), 0), 0)])
        .unwrap();
    assert_eq!(landed(&sink), Some(0));
    sink.write(&events_at(0, 1), Some(&landing(0, 1))).unwrap();
    assert_eq!(ids(&sim, "events").len(), 6);
    assert_eq!(landed(&sink), Some(1));
    assert_eq!(sim.open_transactions(), 0);
}

/// Connections dropped before and after an insert or the commit applies: the retry (what
/// the worker does) re-reads the offsets in a new transaction and lands each row once.
#[test]
fn dropped_connections_around_inserts_and_commits_land_each_row_once() {
    let sim = sim();
    let sink = bootstrapped(&sim);
    let mut next = 0;
    for (method, command, kind) in [
        ("POST", "rows", FaultKind::DropBeforeApply),
        ("POST", "rows", FaultKind::DropAfterApply),
        ("PUT", "rows", FaultKind::DropAfterApply),
        ("PUT", "transaction", FaultKind::DropBeforeApply),
        // The commit applied, its answer lost: the outcome is unknown to the sink.
        ("PUT", "transaction", FaultKind::DropAfterApply),
        ("GET", "data", FaultKind::DropBeforeApply),
    ] {
        // A first flush makes the offsets row exist, so updates are exercised too.
        sink.write(&events_at(next, next + 2), Some(&landing(next, next + 2)))
            .unwrap();
        next += 2;
        sim.add_fault(Fault {
            method: Some(method.into()),
            command: Some(command.into()),
            kind: kind.clone(),
            count: Some(1),
            until: None,
        });
        let flush = (events_at(next, next + 3), landing(next, next + 3));
        let mut tries = 0;
        while let Err(e) = sink.write(&flush.0, Some(&flush.1)) {
            assert!(e.is_retriable(), "{method} {command} {kind:?}: {e}");
            tries += 1;
            assert!(tries < 5, "{method} {command} {kind:?}: {e}");
        }
        next += 3;
        assert_eq!(
            sorted_ids(&sim),
            expect(0, next),
            "{method} {command} {kind:?}"
        );
        assert_eq!(landed(&sink), Some(next));
    }
}

fn racing_writes(sim: &Simulator) -> (Vec<Result<(), String>>, VastSink) {
    let first = bootstrapped(sim);
    first.write(&events_at(0, 3), Some(&landing(0, 3))).unwrap();
    // Both transactions read the offsets row before either commits.
    sim.add_fault(Fault {
        method: Some("PUT".into()),
        command: Some("transaction".into()),
        kind: FaultKind::Latency(Duration::from_millis(500)),
        count: Some(2),
        until: None,
    });
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let sink = connect(sim);
                    sink.write(&events_at(3, 6), Some(&landing(3, 6)))
                        .map_err(|e| {
                            assert!(e.is_retriable(), "{e}");
                            e.to_string()
                        })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (results, first)
}

/// Two transactions writing the same flush and updating the same offsets row (a zombie
/// and the partition's owner). With a 409 on the second commit, the loser's retry finds the
/// flush landed: nothing lost, nothing duplicated.
#[test]
fn an_offsets_row_conflict_409_on_the_second_commit_duplicates_nothing() {
    let sim = Simulator::start(
        "127.0.0.1:0",
        SimOptions {
            row_conflicts: vast_sim::RowConflicts::ConflictOnCommit,
            ..SimOptions::new(Credentials::new("AK", SECRET), vec!["vastdb".into()])
        },
    )
    .unwrap();
    let (results, sink) = racing_writes(&sim);
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(lost.len(), 1, "{results:?}");
    assert!(lost[0].contains("409"), "{lost:?}");
    // The loser's retry.
    sink.write(&events_at(3, 6), Some(&landing(3, 6))).unwrap();
    assert_eq!(sorted_ids(&sim), expect(0, 6));
    assert_eq!(landed(&sink), Some(6));
    assert_eq!(sim.open_transactions(), 0);
}

/// The same race where the later commit silently wins (what VAST does is unknown): both
/// commit, nothing is lost, and the absolute values leave the offsets right; the repeat is
/// the one flush a zombie may duplicate (README), its rows with the same ids.
#[test]
fn an_offsets_row_conflict_where_the_last_writer_wins_loses_nothing() {
    let sim = sim();
    let (results, sink) = racing_writes(&sim);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let got = sorted_ids(&sim);
    let distinct: std::collections::BTreeSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), 6, "{got:?}");
    assert_eq!(got.len(), 9, "the racing flush twice: {got:?}");
    assert_eq!(landed(&sink), Some(6));
    // The next flush is written once.
    sink.write(&events_at(6, 8), Some(&landing(6, 8))).unwrap();
    assert_eq!(ids(&sim, "events").len(), 11);
    assert_eq!(landed(&sink), Some(8));
}
