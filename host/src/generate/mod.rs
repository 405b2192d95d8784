//! Realistic sample telemetry for the four topics (used by `generate`, the quickstart, the
//! tests and the benchmarks). Deterministic for a given seed.

use std::io::Write;
use vast_transform_sdk::otlp::metrics as pb;

/// A small deterministic PRNG (xorshift64*), so generated data is reproducible.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Uniform float in `0..1`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A generated record: key and payload.
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

const HOSTS: [&str; 6] = ["pg-1", "pg-2", "pg-3", "my-1", "my-2", "pg-replica-1"];
const DATABASES: [&str; 4] = ["app_db", "billing", "analytics", "auth"];
const ENVS: [&str; 3] = ["production", "staging", "development"];

fn iso(ts_us: i64, style: u64) -> String {
    let secs = ts_us.div_euclid(1_000_000);
    let micros = ts_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let date = crate::sink::parquet::civil_date(days);
    let (h, m, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    match style % 3 {
        0 => format!("{date}T{h:02}:{m:02}:{s:02}.{micros:06}"),
        1 => format!("{date}T{h:02}:{m:02}:{s:02}.{micros:06}Z"),
        // Same instant written with a +02:00 offset.
        _ => {
            let local = secs + 7200;
            let (ld, ls) = (local.div_euclid(86_400), local.rem_euclid(86_400));
            format!(
                "{}T{:02}:{:02}:{:02}.{micros:06}+02:00",
                crate::sink::parquet::civil_date(ld),
                ls / 3600,
                ls / 60 % 60,
                ls % 60
            )
        }
    }
}

fn collector(
    rng: &mut Rng,
    ts_us: i64,
    data_type: &str,
    tags: serde_json::Value,
    payload: serde_json::Value,
) -> Record {
    let host = *rng.pick(&HOSTS);
    let db = *rng.pick(&DATABASES);
    let source = if host.starts_with("my") {
        "mysql"
    } else {
        "postgresql"
    };
    let v = serde_json::json!({
        "timestamp": iso(ts_us, rng.below(3)),
        "source": source,
        "data_type": data_type,
        "host": host,
        "database": db,
        "environment": rng.pick(&ENVS),
        "tags": tags,
        "payload": payload,
    });
    Record {
        key: Some(format!("{host}:{db}").into_bytes()),
        payload: v.to_string().into_bytes(),
    }
}

/// One raw-logs record.
pub fn raw_log(rng: &mut Rng, ts_us: i64) -> Record {
    let level = *rng.pick(&["info", "info", "info", "warning", "error", "critical"]);
    let payload = match rng.below(8) {
        0 => serde_json::json!({"event_type": "deadlocks", "count": rng.below(5)}),
        1 => {
            let total = 50 + rng.below(150);
            let active = rng.below(total);
            serde_json::json!({"event_type": "connection_stats", "total": total, "active": active, "idle": total - active})
        }
        2 => {
            serde_json::json!({"event_type": "query_error", "error_code": rng.pick(&["40P01", "23505", "57014"]),
            "error_message": rng.pick(&["deadlock detected", "duplicate key value violates unique constraint", "canceling statement due to statement timeout"]),
            "query": "UPDATE accounts SET balance = balance - $1 WHERE id = $2"})
        }
        3 => {
            serde_json::json!({"event_type": "checkpoint", "buffers_written": rng.below(10_000), "write_time_ms": rng.unit() * 500.0})
        }
        4 => {
            serde_json::json!({"event_type": "replication_lag", "lag_bytes": rng.below(1 << 30), "replica": "pg-replica-1"})
        }
        5 => {
            serde_json::json!({"event_type": "vacuum", "table": rng.pick(&["orders", "users", "événements"]), "removed_tuples": rng.below(100_000)})
        }
        6 => {
            serde_json::json!({"event_type": "authentication_failure", "user": rng.pick(&["app", "admin", "report"]), "client_addr": "10.1.2.3"})
        }
        _ => {
            serde_json::json!({"event_type": "connection", "user": "app", "application_name": "api"})
        }
    };
    collector(
        rng,
        ts_us,
        "log",
        serde_json::json!({"log_level": level}),
        payload,
    )
}

/// One raw-queries record (pg_stat_statements shape; some numbers as strings).
pub fn raw_query(rng: &mut Rng, ts_us: i64) -> Record {
    let query = *rng.pick(&[
        "SELECT * FROM users WHERE id = $1",
        "SELECT o.id, o.total FROM orders o JOIN users u ON u.id = o.user_id WHERE u.email = $1",
        "INSERT INTO events (id, payload) VALUES ($1, $2)",
        "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
        "DELETE FROM sessions WHERE expires_at < now()",
        "VACUUM ANALYZE orders",
    ]);
    let calls = 1 + rng.below(100_000);
    let mean = match rng.below(10) {
        0 => 1000.0 + rng.unit() * 4000.0,
        1 | 2 => 100.0 + rng.unit() * 900.0,
        _ => rng.unit() * 100.0,
    };
    let as_string = rng.below(4) == 0;
    let num = |x: f64| {
        if as_string {
            serde_json::json!(format!("{x:.3}"))
        } else {
            serde_json::json!(x)
        }
    };
    let payload = serde_json::json!({
        "queryid": format!("{}", rng.next_u64() as i64),
        "query": query,
        "calls": if as_string { serde_json::json!(calls.to_string()) } else { serde_json::json!(calls) },
        "total_time_ms": num(mean * calls as f64),
        "mean_time_ms": num(mean),
        "min_time_ms": num(mean * 0.1),
        "max_time_ms": num(mean * 3.0),
        "stddev_time_ms": num(mean * 0.5),
        "rows": calls * (1 + rng.below(10)),
        "cache_hit_ratio": (rng.unit() * 1000.0).round() / 1000.0,
        "shared_blks_hit": rng.below(1_000_000),
        "shared_blks_read": rng.below(10_000),
    });
    collector(rng, ts_us, "query", serde_json::json!({}), payload)
}

/// One raw-host-logs record: an OTLP/JSON logs export with 1-2 resources of 1-4 records.
pub fn raw_host_log(rng: &mut Rng, ts_us: i64) -> Record {
    let resources: Vec<serde_json::Value> = (0..1 + rng.below(2))
        .map(|_| {
            let host = format!("web-{}", rng.below(8));
            let records: Vec<serde_json::Value> = (0..1 + rng.below(4))
                .map(|i| {
                    let sev = *rng.pick(&["INFO", "INFO", "WARN", "ERROR", "EMERGENCY"]);
                    let app = *rng.pick(&["sshd", "cron", "kernel", "nginx"]);
                    serde_json::json!({
                        "timeUnixNano": ((ts_us + i as i64) * 1000).to_string(),
                        "observedTimeUnixNano": ((ts_us + 5) * 1000).to_string(),
                        "severityText": sev,
                        "body": {"stringValue": format!("{app}[{}]: {}", rng.below(30_000), rng.pick(&["session opened", "job finished", "connection reset", "disk usage 91%"]))},
                        "attributes": [
                            {"key": "appname", "value": {"stringValue": app}},
                            {"key": "proc_id", "value": {"intValue": rng.below(30_000).to_string()}},
                        ],
                        "traceId": if rng.below(3) == 0 { format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()) } else { String::new() },
                    })
                })
                .collect();
            serde_json::json!({
                "resource": {"attributes": [
                    {"key": "host.name", "value": {"stringValue": host}},
                    {"key": "deployment.environment", "value": {"stringValue": rng.pick(&ENVS)}},
                ]},
                "scopeLogs": [{"scope": {"name": "syslogreceiver"}, "logRecords": records}],
            })
        })
        .collect();
    Record {
        key: None,
        payload: serde_json::json!({"resourceLogs": resources})
            .to_string()
            .into_bytes(),
    }
}

/// One otel-metrics record: an OTLP protobuf metrics export, gzip-compressed half the time.
pub fn otel_metric(rng: &mut Rng, ts_us: i64) -> Record {
    let nanos = (ts_us as u64) * 1000;
    let host = *rng.pick(&HOSTS);
    let point = |rng: &mut Rng, int: bool, max: u64| {
        let n = rng.below(max);
        let value = if int {
            pb::NumberValue::AsInt(n as i64)
        } else {
            pb::NumberValue::AsDouble(n as f64)
        };
        pb::NumberDataPoint {
            attributes: vec![pb::KeyValue::string(
                "database",
                rng.pick::<&str>(&DATABASES),
            )],
            start_time_unix_nano: nanos.saturating_sub(60_000_000_000),
            time_unix_nano: nanos,
            value: Some(value),
        }
    };
    let metrics = vec![
        pb::Metric {
            name: "postgresql.backends".into(),
            description: "The number of backends.".into(),
            unit: "1".into(),
            data: Some(pb::Data::Gauge(pb::Gauge {
                data_points: (0..2).map(|_| point(rng, true, 200)).collect(),
            })),
        },
        pb::Metric {
            name: "postgresql.commits".into(),
            description: "The number of commits.".into(),
            unit: "1".into(),
            data: Some(pb::Data::Sum(pb::Sum {
                data_points: vec![point(rng, true, 1_000_000)],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
        },
        pb::Metric {
            name: "postgresql.errors".into(),
            description: String::new(),
            unit: String::new(),
            data: Some(pb::Data::Sum(pb::Sum {
                data_points: vec![point(rng, false, 3)],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
        },
        pb::Metric {
            name: "postgresql.query.duration".into(),
            description: "Query latency.".into(),
            unit: "ms".into(),
            data: Some(pb::Data::Histogram(pb::Histogram {
                data_points: vec![pb::HistogramDataPoint {
                    attributes: vec![],
                    start_time_unix_nano: nanos.saturating_sub(60_000_000_000),
                    time_unix_nano: nanos,
                    count: 10,
                    sum: Some(rng.unit() * 1000.0),
                    bucket_counts: vec![2, 5, 3, 0],
                    explicit_bounds: vec![1.0, 10.0, 100.0],
                    min: Some(0.4),
                    max: Some(95.0),
                }],
                aggregation_temporality: 2,
            })),
        },
    ];
    let req = pb::ExportMetricsServiceRequest {
        resource_metrics: vec![pb::ResourceMetrics {
            resource: Some(pb::Resource {
                attributes: vec![
                    pb::KeyValue::string("host.name", host),
                    pb::KeyValue::string(
                        "db.system",
                        if host.starts_with("my") {
                            "mysql"
                        } else {
                            "postgresql"
                        },
                    ),
                    pb::KeyValue::string("deployment.environment", rng.pick::<&str>(&ENVS)),
                ],
            }),
            scope_metrics: vec![pb::ScopeMetrics { metrics }],
        }],
    };
    let bytes = prost::Message::encode_to_vec(&req);
    let payload = if rng.below(2) == 0 {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).expect("writing to a Vec cannot fail");
        e.finish().expect("writing to a Vec cannot fail")
    } else {
        bytes
    };
    Record { key: None, payload }
}

/// Data points per `otel_metric` record (2 gauge + 1 + 1 sum + 1 histogram).
pub const POINTS_PER_METRICS_RECORD: usize = 5;

/// A record for `topic`, or `None` for a topic without a generator.
pub fn record(topic: &str, rng: &mut Rng, ts_us: i64) -> Option<Record> {
    Some(match topic {
        "raw-logs" => raw_log(rng, ts_us),
        "raw-queries" => raw_query(rng, ts_us),
        "raw-host-logs" => raw_host_log(rng, ts_us),
        "otel-metrics" => otel_metric(rng, ts_us),
        _ => return None,
    })
}

/// A malformed record for `topic` (for dead-letter testing).
pub fn malformed(topic: &str, rng: &mut Rng) -> Record {
    let payload: Vec<u8> = match (topic, rng.below(3)) {
        ("otel-metrics", 0) => vec![0xde, 0xad, 0xbe, 0xef, 0x01, 0x02],
        ("otel-metrics", _) => vec![0x1f, 0x8b, 0x08, 0x00, 0xff],
        (_, 0) => b"{\"host\": \"pg-1\", \"payload\": {".to_vec(),
        (_, 1) => b"[1, 2, 3]".to_vec(),
        _ => b"not json at all".to_vec(),
    };
    Record {
        key: Some(b"bad".to_vec()),
        payload,
    }
}

/// Generated messages for `topic` (partition 0, offsets from 0).
pub fn messages(topic: &str, n: usize) -> Vec<crate::model::Message> {
    let mut rng = Rng::new(42);
    (0..n)
        .map(|i| {
            let r =
                record(topic, &mut rng, 1_760_457_600_000_000 + i as i64).expect("bundled topic");
            crate::model::Message {
                topic: topic.into(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: r.key,
                headers: vec![],
                payload: r.payload,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_records_parse_and_vary() {
        let mut rng = Rng::new(7);
        for topic in crate::config::BUNDLED {
            let a = record(topic, &mut rng, 1_760_457_600_000_000).unwrap();
            let b = record(topic, &mut rng, 1_760_457_600_000_000).unwrap();
            assert_ne!(a.payload, b.payload, "{topic}");
            if topic != "otel-metrics" {
                serde_json::from_slice::<serde_json::Value>(&a.payload).unwrap();
            }
        }
    }

    #[test]
    fn iso_styles_are_the_same_instant() {
        let t = 1_760_457_707_596_379;
        for style in 0..3 {
            assert_eq!(
                vast_transform_sdk::time::parse_iso8601_micros(&iso(t, style)),
                Some(t),
                "{}",
                iso(t, style)
            );
        }
    }
}
