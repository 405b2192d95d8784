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
    use crate::json::scan::Cursor;
    use crate::json::{self, Raw};
    use serde::Deserialize;

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct ExportLogsServiceRequest<'a> {
        #[serde(default, borrow, alias = "resource_logs")]
        pub resource_logs: Vec<ResourceLogs<'a>>,
    }

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct ResourceLogs<'a> {
        #[serde(default, borrow)]
        pub resource: Option<Resource<'a>>,
        #[serde(default, borrow, alias = "scope_logs")]
        pub scope_logs: Vec<ScopeLogs<'a>>,
    }

    #[derive(Deserialize, Default, Debug, PartialEq)]
    pub struct Resource<'a> {
        #[serde(default, borrow)]
        pub attributes: Vec<KeyValue<'a>>,
    }

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct ScopeLogs<'a> {
        #[serde(default, borrow, alias = "log_records")]
        pub log_records: Vec<LogRecord<'a>>,
    }

    #[derive(Deserialize, Default, Debug, PartialEq)]
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

    #[derive(Deserialize, Debug, PartialEq)]
    pub struct KeyValue<'a> {
        #[serde(borrow)]
        pub key: std::borrow::Cow<'a, str>,
        #[serde(default, borrow)]
        pub value: Option<Raw<'a>>,
    }

    /// The request in `text`, read in one pass by the scanner: serde_json's derived reader
    /// (which also scans every captured value twice) was half of raw-host-logs' time. The
    /// answer is what serde_json's would be, or `None` wherever serde_json might answer
    /// otherwise: invalid JSON, a field of another kind, a field given twice (under either
    /// name), a key-value without its key, a struct written as an array. The caller then
    /// asks serde_json, which decides and words any error. A differential test holds the
    /// two readers equal.
    pub fn read(text: &str) -> Option<ExportLogsServiceRequest<'_>> {
        let mut c = Cursor::new(text);
        let resource_logs = only_list(&mut c, &["resourceLogs", "resource_logs"], resource_logs)?;
        c.end()
            .then_some(ExportLogsServiceRequest { resource_logs })
    }

    /// The fields of one struct seen so far, by bit.
    #[derive(Default)]
    struct Seen(u8);

    impl Seen {
        /// `None` when field `bit` was seen before (serde rejects duplicate fields).
        fn first(&mut self, bit: u8) -> Option<()> {
            let mask = 1 << bit;
            if self.0 & mask != 0 {
                return None;
            }
            self.0 |= mask;
            Some(())
        }
    }

    fn skip(c: &mut Cursor<'_>) -> Option<()> {
        c.raw().map(drop)
    }

    /// A sequence field (`null` is not one, for serde either).
    fn list<'a, T>(
        c: &mut Cursor<'a>,
        item: impl Fn(&mut Cursor<'a>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::new();
        c.array(|c| {
            out.push(item(c)?);
            Some(())
        })?;
        Some(out)
    }

    /// An `Option` field: `null` is `None`.
    fn optional<'a, T>(
        c: &mut Cursor<'a>,
        read: impl Fn(&mut Cursor<'a>) -> Option<T>,
    ) -> Option<Option<T>> {
        if c.null() {
            return Some(None);
        }
        read(c).map(Some)
    }

    fn resource_logs<'a>(c: &mut Cursor<'a>) -> Option<ResourceLogs<'a>> {
        let mut out = ResourceLogs::default();
        let mut seen = Seen::default();
        c.object(|key, c| match key.as_ref() {
            "resource" => {
                seen.first(0)?;
                out.resource = optional(c, resource)?;
                Some(())
            }
            "scopeLogs" | "scope_logs" => {
                seen.first(1)?;
                out.scope_logs = list(c, scope_logs)?;
                Some(())
            }
            _ => skip(c),
        })?;
        Some(out)
    }

    /// A struct with one field, a list under either of `names` (a field absent is empty).
    fn only_list<'a, T>(
        c: &mut Cursor<'a>,
        names: &[&str],
        item: impl Fn(&mut Cursor<'a>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::new();
        let mut seen = Seen::default();
        c.object(|key, c| {
            if !names.contains(&key.as_ref()) {
                return skip(c);
            }
            seen.first(0)?;
            out = list(c, &item)?;
            Some(())
        })?;
        Some(out)
    }

    fn resource<'a>(c: &mut Cursor<'a>) -> Option<Resource<'a>> {
        let attributes = only_list(c, &["attributes"], key_value)?;
        Some(Resource { attributes })
    }

    fn scope_logs<'a>(c: &mut Cursor<'a>) -> Option<ScopeLogs<'a>> {
        let log_records = only_list(c, &["logRecords", "log_records"], log_record)?;
        Some(ScopeLogs { log_records })
    }

    fn log_record<'a>(c: &mut Cursor<'a>) -> Option<LogRecord<'a>> {
        let mut out = LogRecord::default();
        let mut seen = Seen::default();
        c.object(|key, c| {
            let (bit, slot) = match key.as_ref() {
                "timeUnixNano" | "time_unix_nano" => (0, &mut out.time_unix_nano),
                "observedTimeUnixNano" | "observed_time_unix_nano" => {
                    (1, &mut out.observed_time_unix_nano)
                }
                "severityText" | "severity_text" => (2, &mut out.severity_text),
                "body" => (3, &mut out.body),
                "traceId" | "trace_id" => (4, &mut out.trace_id),
                "attributes" => {
                    seen.first(5)?;
                    out.attributes = list(c, key_value)?;
                    return Some(());
                }
                _ => return skip(c),
            };
            seen.first(bit)?;
            *slot = optional(c, Cursor::raw)?;
            Some(())
        })?;
        Some(out)
    }

    fn key_value<'a>(c: &mut Cursor<'a>) -> Option<KeyValue<'a>> {
        let (mut key, mut value) = (None, None);
        let mut seen = Seen::default();
        c.object(|k, c| match k.as_ref() {
            "key" => {
                seen.first(0)?;
                let raw = c.raw()?;
                // A string only; as_str unescapes, refusing what serde refuses.
                key = Some(json::as_str(raw)?);
                Some(())
            }
            "value" => {
                seen.first(1)?;
                value = optional(c, Cursor::raw)?;
                Some(())
            }
            _ => skip(c),
        })?;
        Some(KeyValue { key: key?, value })
    }
}

/// Text of an OTLP/JSON `AnyValue` object: `stringValue` as is, other kinds as their text
/// (numbers, `true`/`false`, arrays and key/value lists as JSON). `None` for an empty value.
pub fn any_value_json_text(raw: crate::json::Raw<'_>) -> Option<String> {
    let (k, v) = crate::json::last_member(raw)?;
    let text = match k.as_ref() {
        "stringValue" | "string_value" | "intValue" | "int_value" | "bytesValue"
        | "bytes_value" => crate::json::text(v).into_owned(),
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

#[cfg(test)]
mod tests {
    use super::logs_json::{ExportLogsServiceRequest, read};
    use proptest::prelude::*;

    /// What serde_json's derived reader makes of `text` (the reference).
    fn reference(text: &str) -> Option<ExportLogsServiceRequest<'_>> {
        serde_json::from_str(text).ok()
    }

    /// Values of the wrong kind for any field, and odd but valid ones.
    fn other() -> BoxedStrategy<String> {
        prop_oneof![
            Just("null"),
            Just("1"),
            Just("-2.5e3"),
            Just("true"),
            Just("\"s\""),
            Just("\"a\\u00e9\\n\""),
            Just("\"\\ud800\""),
            Just("{}"),
            Just("[]"),
            Just("[1,{\"a\":null}]"),
        ]
        .prop_map(String::from)
        .boxed()
    }

    /// An object with each of `fields` (its key spellings and its value) absent, present or,
    /// when `bad`, given twice, plus unknown members, in any order; when `bad`, sometimes
    /// something else than an object.
    fn object(
        bad: bool,
        fields: Vec<(Vec<&'static str>, BoxedStrategy<String>)>,
    ) -> BoxedStrategy<String> {
        let mut members: Vec<BoxedStrategy<Vec<String>>> = fields
            .into_iter()
            .map(|(keys, value)| {
                let required = keys[0] == "key";
                let member = (proptest::sample::select(keys), value)
                    .prop_map(|(k, v)| format!("\"{k}\" : {v}"));
                // A key-value's key is required: only a bad one lacks it.
                let absent = if required && !bad { 0 } else { 2 };
                let twice = if bad { 1 } else { 0 };
                prop_oneof![absent => Just(0), 12 => Just(1), twice => Just(2)]
                    .prop_flat_map(move |n| proptest::collection::vec(member.clone(), n))
                    .boxed()
            })
            .collect();
        let unknown = other().prop_map(|v| format!("\"zz\":{v}"));
        members.push(proptest::collection::vec(unknown, 0..2).boxed());
        let object = members
            .prop_map(|m| m.into_iter().flatten().collect::<Vec<_>>())
            .prop_shuffle()
            .prop_map(|m| format!("{{{}}}", m.join(",")));
        if !bad {
            return object.boxed();
        }
        let seq =
            proptest::collection::vec(other(), 0..3).prop_map(|v| format!("[{}]", v.join(",")));
        prop_oneof![30 => object, 1 => other(), 1 => seq].boxed()
    }

    fn list(bad: bool, item: BoxedStrategy<String>) -> BoxedStrategy<String> {
        let items =
            proptest::collection::vec(item, 0..3).prop_map(|v| format!("[ {} ]", v.join(" ,")));
        if !bad {
            return items.boxed();
        }
        prop_oneof![30 => items, 1 => other()].boxed()
    }

    /// A key that is a string (sometimes escaped), or when `bad` sometimes not.
    fn key(bad: bool) -> BoxedStrategy<String> {
        let good = prop_oneof![Just("\"host.name\""), Just("\"p\\u00e9d\"")].prop_map(String::from);
        if !bad {
            return good.boxed();
        }
        prop_oneof![12 => good, 1 => other()].boxed()
    }

    /// An OTLP/JSON logs request with every field's kind varied; with `bad`, also duplicate
    /// fields, fields of the wrong kind and structs written as something else.
    fn document(bad: bool) -> BoxedStrategy<String> {
        let value = || prop_oneof![Just("{\"stringValue\":\"v\"}".to_string()), other()].boxed();
        let kv = object(
            bad,
            vec![
                (vec!["key", "k\\u0065y"], key(bad)),
                (vec!["value"], value()),
            ],
        );
        let record = object(
            bad,
            vec![
                (vec!["timeUnixNano", "time_unix_nano"], other()),
                (
                    vec!["observedTimeUnixNano", "observed_time_unix_nano"],
                    other(),
                ),
                (vec!["severityText", "severity_text"], other()),
                (vec!["body"], value()),
                (vec!["traceId", "trace_id"], other()),
                (vec!["attributes"], list(bad, kv.clone())),
            ],
        );
        let scope = object(
            bad,
            vec![(vec!["logRecords", "log_records"], list(bad, record))],
        );
        let resource = prop_oneof![
            Just("null".to_string()),
            object(bad, vec![(vec!["attributes"], list(bad, kv))])
        ];
        let rl = object(
            bad,
            vec![
                (vec!["resource"], resource.boxed()),
                (vec!["scopeLogs", "scope_logs"], list(bad, scope)),
            ],
        );
        object(
            bad,
            vec![(vec!["resourceLogs", "resource_logs"], list(bad, rl))],
        )
    }

    #[test]
    fn reads_a_collector_export_like_serde() {
        let text = r#" {"resourceLogs":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"db-1"}}]},
            "scopeLogs":[{"scope":{},"logRecords":[{"timeUnixNano":"1700000000000000000","severityText":"WARN",
            "body":{"stringValue":"disk \"full\""},"attributes":[{"key":"pid","value":{"intValue":"42"}}],
            "traceId":"abc","flags":1}]}]}]} "#;
        let fast = read(text).expect("the scanner reads a valid export");
        assert_eq!(Some(&fast), reference(text).as_ref());
        assert_eq!(
            fast.resource_logs[0].scope_logs[0].log_records[0].attributes[0].key,
            "pid"
        );
    }

    #[test]
    fn leaves_to_serde_what_it_might_answer_differently() {
        for text in [
            r#"{"resourceLogs":[],"resource_logs":[]}"#,
            r#"{"resourceLogs":null}"#,
            r#"{"resourceLogs":[{"resource":[[]]}]}"#,
            r#"{"resourceLogs":[{"resource":{"attributes":[{"value":null}]}}]}"#,
            r#"{"resourceLogs":[{"resource":{"attributes":[{"key":1}]}}]}"#,
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":1,"body":2}]}]}]}"#,
            r#"{"resourceLogs":[]} x"#,
        ] {
            assert_eq!(read(text), None, "{text}");
        }
        // A struct written as an array is valid for serde, and left to it.
        let seq = r#"{"resourceLogs":[[null,[]]]}"#;
        assert_eq!(read(seq), None);
        assert!(reference(seq).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Whenever the scanner answers, serde_json gives the same request.
        #[test]
        fn the_scanner_answers_only_as_serde_would(text in document(true), cut in 0usize..400) {
            for text in [text.as_str(), &text[..text.floor_char_boundary(cut.min(text.len()))]] {
                if let Some(fast) = read(text) {
                    prop_assert_eq!(Some(fast), reference(text), "{}", text);
                }
            }
        }

        /// Requests of the expected shape (any field absent, null, aliased or unknown) are
        /// read by the scanner, the same as by serde_json.
        #[test]
        fn the_scanner_reads_every_well_formed_request(text in document(false)) {
            let fast = read(&text);
            prop_assert!(fast.is_some(), "{}", text);
            prop_assert_eq!(fast, reference(&text), "{}", text);
        }
    }
}
