//! Writes the OTLP protobuf sample inputs in `samples/otel-metrics/` (checked in; rerun
//! after changing them): `cargo run -p vast-transform-sdk --example otlp_samples -- samples/otel-metrics`.

use prost::Message;
use std::io::Write;
use vast_transform_sdk::otlp::metrics::*;

fn resource(attrs: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource { attributes: attrs })
}

fn int_attr(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
    }
}

fn number(time: u64, value: Option<NumberValue>, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: 0,
        time_unix_nano: time,
        value,
    }
}

fn metric(name: &str, description: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(data),
    }
}

fn request(resources: Vec<(Option<Resource>, Vec<Metric>)>) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: resources
            .into_iter()
            .map(|(resource, metrics)| ResourceMetrics {
                resource,
                scope_metrics: vec![ScopeMetrics { metrics }],
            })
            .collect(),
    }
    .encode_to_vec()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const T: u64 = 1_760_457_707_596_379_123;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "samples/otel-metrics".into());
    std::fs::create_dir_all(&dir).unwrap();
    let pg = || {
        resource(vec![
            KeyValue::string("host.name", "pg-1"),
            KeyValue::string("db.system", "postgresql"),
            KeyValue::string("deployment.environment", "staging"),
            KeyValue::string("service.name", "collector"),
        ])
    };
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "01-gauge.pb",
            request(vec![(
                pg(),
                vec![metric(
                    "postgresql.backends",
                    "Number of backends.",
                    "1",
                    Data::Gauge(Gauge {
                        data_points: vec![
                            number(
                                T,
                                Some(NumberValue::AsInt(12)),
                                vec![KeyValue::string("database", "app_db"), int_attr("shard", 3)],
                            ),
                            number(
                                T + 1_000,
                                Some(NumberValue::AsDouble(0.0)),
                                vec![KeyValue::string("database", "idle_db")],
                            ),
                        ],
                    }),
                )],
            )]),
        ),
        (
            "02-sum.pb.gz",
            gzip(&request(vec![(
                pg(),
                vec![
                    metric(
                        "postgresql.errors",
                        "",
                        "",
                        Data::Sum(Sum {
                            data_points: vec![number(T, Some(NumberValue::AsInt(2)), vec![])],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        }),
                    ),
                    metric(
                        "postgresql.error_rate",
                        "Errors per second.",
                        "1/s",
                        Data::Sum(Sum {
                            data_points: vec![
                                number(T, Some(NumberValue::AsDouble(0.0)), vec![]),
                                number(T, None, vec![]),
                            ],
                            aggregation_temporality: 2,
                            is_monotonic: false,
                        }),
                    ),
                ],
            )])),
        ),
        (
            "03-histogram.pb",
            request(vec![(
                pg(),
                vec![metric(
                    "postgresql.query.duration",
                    "Query latency.",
                    "ms",
                    Data::Histogram(Histogram {
                        data_points: vec![
                            HistogramDataPoint {
                                attributes: vec![KeyValue::string("database", "app_db")],
                                start_time_unix_nano: 0,
                                time_unix_nano: T,
                                count: 10,
                                sum: Some(123.5),
                                bucket_counts: vec![1, 4, 5, 0],
                                explicit_bounds: vec![1.0, 10.0, 100.0],
                                min: Some(0.5),
                                max: Some(88.25),
                            },
                            HistogramDataPoint {
                                attributes: vec![],
                                start_time_unix_nano: 0,
                                time_unix_nano: T,
                                count: 0,
                                sum: None,
                                bucket_counts: vec![],
                                explicit_bounds: vec![],
                                min: None,
                                max: None,
                            },
                        ],
                        aggregation_temporality: 2,
                    }),
                )],
            )]),
        ),
        (
            "04-multi-resource.pb.gz",
            gzip(&request(vec![
                (
                    resource(vec![
                        int_attr("host.name", 42),
                        KeyValue::string("db.system", "mysql"),
                    ]),
                    vec![metric(
                        "mysql.threads",
                        "",
                        "",
                        Data::Gauge(Gauge {
                            data_points: vec![number(T, Some(NumberValue::AsDouble(7.5)), vec![])],
                        }),
                    )],
                ),
                (
                    None,
                    vec![
                        metric(
                            "system.cpu.utilization",
                            "",
                            "1",
                            Data::Gauge(Gauge {
                                data_points: vec![number(
                                    T,
                                    Some(NumberValue::AsDouble(0.25)),
                                    vec![KeyValue::string("cpu", "cpu0")],
                                )],
                            }),
                        ),
                        metric(
                            "system.summary",
                            "",
                            "",
                            Data::Summary(Unsupported {
                                data_points: vec![Empty {}, Empty {}],
                            }),
                        ),
                    ],
                ),
            ])),
        ),
        (
            "05-summary-only.pb",
            request(vec![(
                pg(),
                vec![metric(
                    "rpc.latency",
                    "",
                    "ms",
                    Data::Summary(Unsupported {
                        data_points: vec![Empty {}],
                    }),
                )],
            )]),
        ),
        (
            "06-garbage.bin",
            b"\xde\xad\xbe\xef this is not protobuf \xff\xfe".to_vec(),
        ),
        ("07-truncated.pb", {
            let full = request(vec![(
                pg(),
                vec![metric(
                    "x",
                    "",
                    "",
                    Data::Gauge(Gauge {
                        data_points: vec![number(T, Some(NumberValue::AsInt(1)), vec![])],
                    }),
                )],
            )]);
            full[..full.len() - 5].to_vec()
        }),
        ("08-empty.pb", Vec::new()),
        (
            "09-bad-gzip.gz",
            vec![0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02, 0x03],
        ),
    ];
    for (name, bytes) in files {
        std::fs::write(format!("{dir}/{name}"), bytes).unwrap();
    }
}
