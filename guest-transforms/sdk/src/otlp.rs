//! The subset of OTLP the bundled transforms read: metrics as protobuf (messages declared
//! here with prost, so no protoc is needed) and logs as OTLP/JSON.

/// OTLP metrics protobuf messages (opentelemetry-proto `metrics/v1`, `common/v1`,
/// `resource/v1`, `collector/metrics/v1`). Fields the transforms never read are left out;
/// prost skips them when decoding.
pub mod metrics {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportMetricsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceMetrics {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_metrics: Vec<ScopeMetrics>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeMetrics {
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub description: String,
        #[prost(string, tag = "3")]
        pub unit: String,
        #[prost(oneof = "Data", tags = "5, 7, 9, 10, 11")]
        pub data: Option<Data>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        #[prost(message, tag = "5")]
        Gauge(Gauge),
        #[prost(message, tag = "7")]
        Sum(Sum),
        #[prost(message, tag = "9")]
        Histogram(Histogram),
        #[prost(message, tag = "10")]
        ExponentialHistogram(Unsupported),
        #[prost(message, tag = "11")]
        Summary(Unsupported),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Gauge {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sum {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
        #[prost(bool, tag = "3")]
        pub is_monotonic: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<HistogramDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }

    /// Summary and exponential histogram: only the number of points is needed.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Unsupported {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<Empty>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NumberDataPoint {
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(oneof = "NumberValue", tags = "4, 6")]
        pub value: Option<NumberValue>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum NumberValue {
        #[prost(double, tag = "4")]
        AsDouble(f64),
        #[prost(sfixed64, tag = "6")]
        AsInt(i64),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistogramDataPoint {
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "4")]
        pub count: u64,
        #[prost(double, optional, tag = "5")]
        pub sum: Option<f64>,
        #[prost(fixed64, repeated, tag = "6")]
        pub bucket_counts: Vec<u64>,
        #[prost(double, repeated, tag = "7")]
        pub explicit_bounds: Vec<f64>,
        #[prost(double, optional, tag = "11")]
        pub min: Option<f64>,
        #[prost(double, optional, tag = "12")]
        pub max: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        IntValue(i64),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        #[prost(message, tag = "5")]
        ArrayValue(ArrayValue),
        #[prost(message, tag = "6")]
        KvlistValue(KeyValueList),
        #[prost(bytes, tag = "7")]
        BytesValue(Vec<u8>),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }

    impl AnyValue {
        /// A string for this value.
        pub fn string(s: &str) -> AnyValue {
            AnyValue {
                value: Some(Value::StringValue(s.to_string())),
            }
        }
    }

    impl KeyValue {
        /// A string attribute.
        pub fn string(key: &str, value: &str) -> KeyValue {
            KeyValue {
                key: key.to_string(),
                value: Some(AnyValue::string(value)),
            }
        }
    }
}

/// OTLP/JSON logs (`ExportLogsServiceRequest`), as the collector's `otlp_json` encoding writes
/// them. Field names are lowerCamelCase; the snake_case spelling of the protobuf JSON mapping
/// is accepted too.
pub mod logs_json {
    use crate::json::Raw;
    use serde::Deserialize;

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct ExportLogsServiceRequest<'a> {
        #[serde(default, borrow, alias = "resource_logs")]
        pub resource_logs: Vec<ResourceLogs<'a>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct ResourceLogs<'a> {
        #[serde(default, borrow)]
        pub resource: Option<Resource<'a>>,
        #[serde(default, borrow, alias = "scope_logs")]
        pub scope_logs: Vec<ScopeLogs<'a>>,
    }

    #[derive(Deserialize, Default)]
    pub struct Resource<'a> {
        #[serde(default, borrow)]
        pub attributes: Vec<KeyValue<'a>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct ScopeLogs<'a> {
        #[serde(default, borrow, alias = "log_records")]
        pub log_records: Vec<LogRecord<'a>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct LogRecord<'a> {
        #[serde(default, borrow, alias = "time_unix_nano")]
        pub time_unix_nano: Option<Raw<'a>>,
        #[serde(default, borrow, alias = "observed_time_unix_nano")]
        pub observed_time_unix_nano: Option<Raw<'a>>,
        #[serde(default, borrow, alias = "severity_text")]
        pub severity_text: Option<Raw<'a>>,
        #[serde(default, borrow)]
        pub body: Option<Raw<'a>>,
        #[serde(default, borrow)]
        pub attributes: Vec<KeyValue<'a>>,
        #[serde(default, borrow, alias = "trace_id")]
        pub trace_id: Option<Raw<'a>>,
    }

    #[derive(Deserialize)]
    pub struct KeyValue<'a> {
        #[serde(borrow)]
        pub key: std::borrow::Cow<'a, str>,
        #[serde(default, borrow)]
        pub value: Option<Raw<'a>>,
    }
}

/// Text of an OTLP/JSON `AnyValue` object: `stringValue` as is, other kinds as their text
/// (numbers, `true`/`false`, arrays and key/value lists as JSON). `None` for an empty value.
pub fn any_value_json_text(raw: crate::json::Raw<'_>) -> Option<String> {
    let m = crate::json::members(raw)?;
    let (k, v) = m.0.last()?;
    let text = match k.as_ref() {
        "stringValue" | "string_value" | "intValue" | "int_value" | "bytesValue"
        | "bytes_value" => crate::json::text(*v).into_owned(),
        _ => v.get().to_string(),
    };
    Some(text)
}

/// Text of a protobuf `AnyValue`: strings as is, other kinds as their text.
pub fn any_value_text(v: &metrics::AnyValue) -> Option<String> {
    use metrics::Value;
    Some(match v.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BytesValue(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Value::ArrayValue(a) => {
            let items: Vec<String> = a
                .values
                .iter()
                .map(|v| {
                    serde_json::to_string(&any_value_text(v).unwrap_or_default())
                        .unwrap_or_default()
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        Value::KvlistValue(l) => {
            let items: Vec<String> = l
                .values
                .iter()
                .map(|kv| {
                    let v = kv
                        .value
                        .as_ref()
                        .and_then(any_value_text)
                        .unwrap_or_default();
                    format!(
                        "{}:{}",
                        serde_json::to_string(&kv.key).unwrap_or_default(),
                        serde_json::to_string(&v).unwrap_or_default()
                    )
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    })
}
