//! Native unit tests of the bundled transform logic (the golden tests in tests/ run the same
//! logic through the compiled components).

use super::*;
use crate::message;

fn one_event(o: Outcome) -> Event {
    match o {
        Outcome::Rows(mut rows) if rows.len() == 1 => match rows.remove(0) {
            Row::Event(e) => e,
            Row::Metric(m) => panic!("expected an event, got {m:?}"),
        },
        other => panic!("expected one row, got {other:?}"),
    }
}

fn tag<'a>(tags: &'a [(String, String)], k: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn run(f: fn(&Message, &mut Stats) -> Outcome, payload: &[u8]) -> Outcome {
    f(&message("t", 0, payload), &mut Stats::default())
}

#[test]
fn raw_logs_contract_example() {
    let e = one_event(run(
        raw_logs,
        br#"{"timestamp": "2025-10-14T16:01:47.596379", "source": "postgresql", "data_type": "log",
 "host": "pg-1", "database": "app_db", "environment": "development",
 "tags": {"log_level": "warning"}, "payload": {"event_type": "deadlocks", "count": 3}}"#,
    ));
    assert_eq!(e.timestamp, Some(1_760_457_707_596_379));
    assert_eq!(
        (
            e.entity_id.as_str(),
            e.source.as_str(),
            e.environment.as_str()
        ),
        ("pg-1", "postgresql", "development")
    );
    assert_eq!(e.event_type, "log");
    assert_eq!(e.message, "Detected 3 deadlock(s).");
    assert_eq!(tag(&e.tags, "log_level"), Some("warning"));
    assert_eq!(tag(&e.tags, "database"), Some("app_db"));
    assert_eq!(tag(&e.tags, "category"), Some("database_concurrency"));
    assert_eq!(tag(&e.tags, "requires_alert"), None);
    assert_eq!(e.attributes, r#"{"event_type": "deadlocks", "count": 3}"#);
    assert_eq!((e.id, e.created_at), (None, None));
}

#[test]
fn raw_logs_defaults_and_messages() {
    let e = one_event(run(
        raw_logs,
        br#"{"payload": {"event_type": "connection_stats", "active": 2}}"#,
    ));
    assert_eq!(e.timestamp, None);
    assert_eq!(
        (
            e.entity_id.as_str(),
            e.source.as_str(),
            e.environment.as_str()
        ),
        ("unknown", "unknown", "production")
    );
    assert_eq!(e.message, "2/0 active connections.");
    assert_eq!(tag(&e.tags, "log_level"), Some("info"));
    let e = one_event(run(
        raw_logs,
        br#"{"payload": {"event_type": "query_error", "error_code": "XX"}}"#,
    ));
    assert_eq!(e.message, "Query error XX: Unknown");
    let e = one_event(run(raw_logs, br#"{}"#));
    assert_eq!(e.message, "Log event of type 'unknown event' received.");
    assert_eq!(e.attributes, "{}");
}

#[test]
fn raw_logs_bad_input_fails() {
    for bad in [
        &b""[..],
        b"nope",
        b"[1]",
        b"{\"payload\": 3}",
        b"{\"tags\": 3}",
        b"\xff\xfe",
        b"{\"a\": ",
    ] {
        assert!(
            matches!(run(raw_logs, bad), Outcome::Fail(_)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn raw_queries_rules() {
    let e = one_event(run(
        raw_queries,
        br#"{"host": "pg-1", "database": "db", "payload": {"query": "SELECT  1", "calls": "5", "mean_time_ms": "1000.5"}}"#,
    ));
    assert_eq!(e.event_type, "database_query");
    assert_eq!(
        e.message,
        "Query executed 5 times with avg latency 1000.50ms."
    );
    assert_eq!(tag(&e.tags, "performance"), Some("slow"));
    assert_eq!(tag(&e.tags, "query_type"), Some("read"));
    assert_eq!(tag(&e.tags, "database"), Some("db"));
    assert_eq!(tag(&e.tags, "log_level"), None);
    let hash = query_hash("select 1");
    assert_eq!(
        e.attributes,
        format!(
            r#"{{"query": "SELECT  1", "calls": "5", "mean_time_ms": "1000.5","query_hash":"{hash}"}}"#
        )
    );
    let v: serde_json::Value = serde_json::from_str(&e.attributes).unwrap();
    assert_eq!(v["query_hash"], hash.as_str());
}

#[test]
fn query_hash_normalises() {
    assert_eq!(query_hash("  SELECT\n\t1  "), query_hash("select 1"));
    assert_eq!(query_hash("select 1").len(), 16);
    // sha256("select 1")[..16], computed independently.
    assert_eq!(query_hash("select 1"), "822ae07d4783158b");
}

#[test]
fn query_hash_replaces_existing_member() {
    let e = one_event(run(
        raw_queries,
        br#"{"payload": {"query_hash": "old", "query": "delete x", "query_hash": "older"}}"#,
    ));
    let v: serde_json::Value = serde_json::from_str(&e.attributes).unwrap();
    assert_eq!(v["query_hash"], query_hash("delete x").as_str());
    assert_eq!(
        e.attributes.matches("query_hash").count(),
        1,
        "{}",
        e.attributes
    );
    assert_eq!(tag(&e.tags, "query_type"), Some("write"));
}

#[test]
fn host_logs_every_record() {
    let out = run(
        raw_host_logs,
        br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"h"}}]},
            "scopeLogs":[{"logRecords":[{"body":{"stringValue":"a"},"severityText":"Error"},{"body":{"stringValue":"b"}}]},
                         {"logRecords":[{"body":{"stringValue":"c"}}]}]},
            {"scopeLogs":[{"logRecords":[{"timeUnixNano":"2000"}]}]}]}"#,
    );
    let Outcome::Rows(rows) = out else {
        panic!("{out:?}")
    };
    let events: Vec<Event> = rows
        .into_iter()
        .map(|r| match r {
            Row::Event(e) => e,
            Row::Metric(_) => unreachable!(),
        })
        .collect();
    let msgs: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs, ["a", "b", "c", "No message body"]);
    assert_eq!(events[0].entity_id, "h");
    assert_eq!(events[3].entity_id, "unknown_syslog_host");
    assert_eq!(events[3].timestamp, Some(2));
    assert_eq!(tag(&events[0].tags, "requires_alert"), Some("true"));
}

#[test]
fn otel_metrics_gzip_and_plain_agree() {
    use crate::otlp::metrics::*;
    use prost::Message as _;
    use std::io::Write;
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue::string("host.name", "h")],
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "x.errors".into(),
                    description: String::new(),
                    unit: String::new(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            attributes: vec![],
                            start_time_unix_nano: 0,
                            time_unix_nano: 5_000,
                            value: Some(NumberValue::AsInt(1)),
                        }],
                    })),
                }],
            }],
        }],
    }
    .encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&req).unwrap();
    let gz = gz.finish().unwrap();
    let plain = run(otel_metrics, &req);
    assert_eq!(plain, run(otel_metrics, &gz));
    let Outcome::Rows(rows) = plain else { panic!() };
    let Row::Metric(m) = &rows[0] else { panic!() };
    assert_eq!(
        (m.metric_value, m.timestamp, m.unit.as_deref()),
        (1.0, Some(5), None)
    );
    assert_eq!(tag(&m.tags, "severity"), Some("warning"));
    assert_eq!(m.metadata, r#"{"description":""}"#);
}

#[test]
fn otel_metrics_counts_unsupported_kinds() {
    use crate::otlp::metrics::*;
    use prost::Message as _;
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "s".into(),
                    description: String::new(),
                    unit: String::new(),
                    data: Some(Data::Summary(Unsupported {
                        data_points: vec![Empty {}, Empty {}],
                    })),
                }],
            }],
        }],
    }
    .encode_to_vec();
    let mut stats = Stats::default();
    let out = otel_metrics(&message("t", 0, req), &mut stats);
    assert!(matches!(out, Outcome::Skip(_)), "{out:?}");
    assert_eq!(stats.get("skipped_unsupported_points"), 2);
}

#[test]
fn otel_metrics_rejects_garbage() {
    for bad in [&b"\x0a\xff\xff\xff"[..], b"hello world", b"\x1f\x8b\x00"] {
        assert!(
            matches!(run(otel_metrics, bad), Outcome::Fail(_)),
            "{bad:?}"
        );
    }
}

#[test]
fn by_name_knows_the_bundled_set() {
    for name in BUNDLED {
        assert!(by_name(name).is_some());
    }
    assert!(by_name("nope").is_none());
}

/// Fuzzing (a short proptest run in every `cargo test`; failures are kept in
/// `proptest-regressions/` and replayed first): the decoders never panic on any input.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_like() -> impl Strategy<Value = Vec<u8>> {
        // Mostly JSON-shaped bytes, so the parsers get past the first character.
        prop_oneof![
            any::<Vec<u8>>(),
            "[{}\\[\\]\":,a-z0-9 .eE+-]{0,200}".prop_map(String::into_bytes),
            "\\{\"(host|payload|tags|timestamp|resourceLogs|query)\": [\\[\\]{}\":,a-z0-9 .-]{0,120}\\}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn json_transforms_never_panic(bytes in json_like()) {
            for f in [raw_logs, raw_queries, raw_host_logs] {
                let _ = run(f, &bytes);
            }
        }

        #[test]
        fn otel_metrics_never_panics(bytes in any::<Vec<u8>>(), gz in any::<bool>()) {
            let payload = if gz {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&bytes).unwrap();
                e.finish().unwrap()
            } else {
                bytes
            };
            let _ = run(otel_metrics, &payload);
        }

        #[test]
        fn timestamps_never_panic_and_round_trip(s in "\\PC{0,40}", y in 1970i64..2100, mo in 1u32..13, d in 1u32..29, h in 0u32..24, mi in 0u32..60, se in 0u32..60) {
            let _ = crate::time::parse_iso8601_micros(&s);
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}Z");
            let with_offset = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}+00:00");
            prop_assert_eq!(crate::time::parse_iso8601_micros(&text), crate::time::parse_iso8601_micros(&with_offset));
            prop_assert!(crate::time::parse_iso8601_micros(&text).is_some());
        }
    }
}

#[test]
fn query_hash_is_added_when_only_a_nested_member_has_that_name() {
    let e = one_event(run(
        raw_queries,
        br#"{"payload": {"query": "select 2", "plan": {"query_hash": "inner"}}}"#,
    ));
    let v: serde_json::Value = serde_json::from_str(&e.attributes).unwrap();
    assert_eq!(v["query_hash"], query_hash("select 2").as_str());
    assert_eq!(v["plan"]["query_hash"], "inner", "{}", e.attributes);
}

/// What the histogram metadata spelled before the integer fast paths: `{:?}`, or `null`.
fn debug_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else {
        "null".into()
    }
}

#[test]
fn metadata_numbers_are_spelled_as_before() {
    let edges = [
        0.0,
        -0.0,
        1.0,
        -5.0,
        0.5,
        1e-7,
        999_999_999_999_999.0,
        1e15,
        -1e15,
        1e16,
        9_007_199_254_740_993.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    for v in edges {
        let mut s = String::new();
        json_f64(&mut s, v);
        assert_eq!(s, debug_f64(v), "{v:?}");
    }
    for n in [0, 1, 9, 10, u64::from(u32::MAX), i64::MAX as u64, u64::MAX] {
        let mut s = String::new();
        push_int(&mut s, n);
        assert_eq!(s, n.to_string());
    }
    for n in [i64::MIN, -1, 0, i64::MAX] {
        let mut s = String::new();
        push_int(&mut s, n);
        assert_eq!(s, n.to_string());
    }
}

proptest::proptest! {
    #[test]
    fn any_f64_is_spelled_as_before(bits in proptest::prelude::any::<u64>(), whole in -2e15f64..2e15) {
        for v in [f64::from_bits(bits), whole.trunc(), whole] {
            let mut s = String::new();
            json_f64(&mut s, v);
            proptest::prop_assert_eq!(s, debug_f64(v));
        }
    }
}
