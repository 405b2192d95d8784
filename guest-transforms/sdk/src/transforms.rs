//! The logic of the four bundled transforms, one function per topic, implementing the rules
//! of shared/telemetry-contract.md. Each takes one message and returns its outcome; the
//! components in guest-transforms/<topic> wrap them, and native tests and benchmarks call
//! them directly.

use crate::json::{self, Kind, Members, Raw};
use crate::otlp::{self, logs_json, metrics as pb};
use crate::tags::Tags;
use crate::time::{nanos_to_micros, parse_iso8601_micros};
use crate::{Event, Message, Metric, MetricType, Outcome, Row, Stats};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Names of the bundled transforms, which are also the topics they are meant for.
pub const BUNDLED: [&str; 4] = ["raw-logs", "raw-queries", "raw-host-logs", "otel-metrics"];

/// Run the bundled transform `name` on one message (`None` for an unknown name).
pub fn by_name(name: &str) -> Option<fn(&Message, &mut Stats) -> Outcome> {
    Some(match name {
        "raw-logs" => raw_logs,
        "raw-queries" => raw_queries,
        "raw-host-logs" => raw_host_logs,
        "otel-metrics" => otel_metrics,
        _ => return None,
    })
}

/// The envelope the database collector writes for `raw-logs` and `raw-queries`.
/// Read through [`Members`] so duplicate keys keep the last value, as Python's `json` does.
struct Collector<'a> {
    timestamp: Option<Raw<'a>>,
    source: Option<Raw<'a>>,
    host: Option<Raw<'a>>,
    database: Option<Raw<'a>>,
    environment: Option<Raw<'a>>,
    tags: Option<Raw<'a>>,
    payload: Option<Raw<'a>>,
    /// The members of `tags` and `payload` when they are objects and the scanner read them
    /// with the envelope (otherwise they are parsed from the raw values when needed).
    tags_members: Option<Members<'a>>,
    payload_members: Option<Members<'a>>,
}

impl<'a> Collector<'a> {
    fn parse(payload: &'a [u8]) -> Result<Self, String> {
        let (m, mut children) = parse_members(payload)?;
        let get = |k: &str| m.get(k).filter(|v| json::kind(*v) != Kind::Null);
        // The last occurrence of a key is the one that counts, for its members too.
        let mut members_of = |k: &str| {
            let i = m.0.iter().rposition(|(key, _)| key == k)?;
            let at = children.iter().position(|(j, _)| *j == i)?;
            Some(children.swap_remove(at).1)
        };
        let tags_members = members_of("tags");
        let payload_members = members_of("payload");
        Ok(Collector {
            timestamp: get("timestamp"),
            source: get("source"),
            host: get("host"),
            database: get("database"),
            environment: get("environment"),
            tags: get("tags"),
            payload: get("payload"),
            tags_members,
            payload_members,
        })
    }
}

/// Parse a JSON object payload into its members, and the members of its object-valued
/// members when the fast reader could; see [`parse_object`] for failures.
fn parse_members(payload: &[u8]) -> Result<(Members<'_>, crate::json::scan::Children<'_>), String> {
    // The single-pass scanner answers for valid objects; everything else takes the slower
    // path below, which words the failure exactly as before.
    let scanned = std::str::from_utf8(payload)
        .ok()
        .and_then(crate::json::scan::object_with_children);
    match scanned {
        Some(found) => Ok(found),
        None => Ok((parse_object(payload)?, Vec::new())),
    }
}

/// Parse a JSON object payload; anything else is a failure with a precise reason.
fn parse_object<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
    let text =
        std::str::from_utf8(payload).map_err(|e| format!("payload is not valid UTF-8: {e}"))?;
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {}
        None => return Err("empty payload: expected a JSON object".into()),
        Some(b'[') => return Err("payload is a JSON array: expected a JSON object".into()),
        Some(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            return Err("payload is a JSON scalar: expected a JSON object".into());
        }
        Some(_) => {}
    }
    serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
}

/// Common columns of collector events.
struct Common {
    timestamp: Option<i64>,
    entity_id: String,
    source: String,
    environment: String,
    tags: Tags,
}

fn common(c: &mut Collector<'_>) -> Result<Common, String> {
    let mut tags = match c.tags {
        None => Tags::default(),
        Some(raw) if json::kind(raw) == Kind::Null => Tags::default(),
        Some(raw) => {
            let members = (c.tags_members.take())
                .or_else(|| json::members(raw))
                .ok_or_else(|| format!("`tags` must be a JSON object, got {}", kind_name(raw)))?;
            Tags::from_members(&members)
        }
    };
    if let Some(db) = json::non_empty_text(c.database) {
        tags.set("database", db.into_owned());
    }
    Ok(Common {
        timestamp: c
            .timestamp
            .and_then(json::as_str)
            .and_then(|t| parse_iso8601_micros(&t)),
        entity_id: or_default(c.host, "unknown"),
        source: or_default(c.source, "unknown"),
        environment: or_default(c.environment, "production"),
        tags,
    })
}

fn or_default(raw: Option<Raw<'_>>, default: &str) -> String {
    json::non_empty_text(raw).map_or_else(|| default.to_string(), |t| t.into_owned())
}

fn kind_name(raw: Raw<'_>) -> &'static str {
    match json::kind(raw) {
        Kind::Null => "null",
        Kind::Bool => "a boolean",
        Kind::Number => "a number",
        Kind::String => "a string",
        Kind::Object => "an object",
        Kind::Array => "an array",
    }
}

/// The payload as an attributes object: missing or null is `{}`, anything but an object fails.
fn payload_object(payload: Option<Raw<'_>>) -> Result<Option<Raw<'_>>, String> {
    match payload {
        None => Ok(None),
        Some(p) if json::kind(p) == Kind::Null => Ok(None),
        Some(p) if json::kind(p) == Kind::Object => Ok(Some(p)),
        Some(p) => Err(format!(
            "`payload` must be a JSON object, got {}",
            kind_name(p)
        )),
    }
}

fn event(c: Common, event_type: &str, message: String, attributes: String) -> Outcome {
    Outcome::Rows(vec![Row::Event(Event {
        timestamp: c.timestamp,
        entity_id: c.entity_id,
        event_type: event_type.to_string(),
        source: c.source,
        environment: c.environment,
        message,
        tags: c.tags.into(),
        attributes,
        trace_id: None,
        id: None,
        created_at: None,
    })])
}

/// The members of the payload object (empty when there is none), unless already read.
fn payload_members<'a>(
    payload: Option<Raw<'a>>,
    read: Option<Members<'a>>,
) -> Result<Members<'a>, String> {
    if let Some(m) = read {
        return Ok(m);
    }
    match payload {
        Some(raw) => Members::parse(raw.get()).map_err(|e| format!("invalid payload: {e}")),
        None => Ok(Members::default()),
    }
}

/// `raw-logs` → `events`.
pub fn raw_logs(msg: &Message, _stats: &mut Stats) -> Outcome {
    match try_raw_logs(&msg.payload) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(e),
    }
}

fn try_raw_logs(payload: &[u8]) -> Result<Outcome, String> {
    let mut c = Collector::parse(payload)?;
    let mut common = common(&mut c)?;
    let payload = payload_object(c.payload)?;
    let p = payload_members(payload, c.payload_members.take())?;
    if common.tags.get("log_level").is_none() {
        common.tags.set("log_level", "info");
    }
    let event_type = json::non_empty_text(p.get("event_type"));
    // `concat` sizes the string once; `format!` walked its arguments with dynamic dispatch
    // per piece and regrew the string, which cost more in wasm than the text it produced.
    let message = match event_type.as_deref() {
        Some("deadlocks") => [
            "Detected ",
            &json::number_text(p.get("count")),
            " deadlock(s).",
        ]
        .concat(),
        Some("connection_stats") => [
            &json::number_text(p.get("active")),
            "/",
            &json::number_text(p.get("total")),
            " active connections.",
        ]
        .concat(),
        Some("query_error") => [
            "Query error ",
            json::non_empty_text(p.get("error_code"))
                .as_deref()
                .unwrap_or("N/A"),
            ": ",
            json::non_empty_text(p.get("error_message"))
                .as_deref()
                .unwrap_or("Unknown"),
        ]
        .concat(),
        other => [
            "Log event of type '",
            other.unwrap_or("unknown event"),
            "' received.",
        ]
        .concat(),
    };
    common.tags.enrich_log(event_type.as_deref());
    let attributes = payload.map_or_else(|| "{}".to_string(), |p| p.get().to_string());
    Ok(event(common, "log", message, attributes))
}

/// First 16 hex characters of SHA-256 over the normalised query (lower-cased, whitespace
/// runs collapsed to one space, trimmed).
pub fn query_hash(query: &str) -> String {
    lowered_query_hash(&query.to_lowercase())
}

/// [`query_hash`] of a query already lower-cased.
fn lowered_query_hash(lower: &str) -> String {
    let mut h = Sha256::new();
    for (i, word) in lower.split_whitespace().enumerate() {
        if i > 0 {
            h.update(b" ");
        }
        h.update(word.as_bytes());
    }
    let digest = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(16);
    for &b in &digest[..8] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// `payload`, whose top-level members are `members`, with `"query_hash": hash` added, or
/// replacing the value of a top-level `query_hash` it already has (later duplicates dropped).
/// Members nested deeper are the payload's own and stay as they are.
fn with_query_hash(payload: Option<Raw<'_>>, members: &Members<'_>, hash: &str) -> String {
    let mut quoted = String::with_capacity(hash.len() + 2);
    json::push_json_string(&mut quoted, hash);
    let Some(raw) = payload else {
        return ["{\"query_hash\":", &quoted, "}"].concat();
    };
    let text = raw.get();
    if !members.0.iter().any(|(k, _)| k == "query_hash") {
        // Fast path: splice the new member in before the closing brace, no re-serialisation.
        let body = text[1..text.len() - 1].trim();
        let sep = if body.is_empty() { "" } else { "," };
        return ["{", body, sep, "\"query_hash\":", &quoted, "}"].concat();
    }
    let mut out = String::with_capacity(text.len() + 32);
    out.push('{');
    let mut seen = false;
    for (k, v) in &members.0 {
        let is_hash = k == "query_hash";
        if is_hash && seen {
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        json::push_json_string(&mut out, k);
        out.push(':');
        if is_hash {
            seen = true;
            out.push_str(&quoted);
        } else {
            out.push_str(v.get());
        }
    }
    out.push('}');
    out
}

/// `raw-queries` → `events`.
pub fn raw_queries(msg: &Message, _stats: &mut Stats) -> Outcome {
    match try_raw_queries(&msg.payload) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(e),
    }
}

fn try_raw_queries(payload: &[u8]) -> Result<Outcome, String> {
    let mut c = Collector::parse(payload)?;
    let mut common = common(&mut c)?;
    let payload = payload_object(c.payload)?;
    let p = payload_members(payload, c.payload_members.take())?;
    let mean = p.get("mean_time_ms").and_then(json::as_f64).unwrap_or(0.0);
    let message = format!(
        "Query executed {} times with avg latency {:.2}ms.",
        json::number_text(p.get("calls")),
        mean
    );
    let performance = if mean > 1000.0 {
        "slow"
    } else if mean > 100.0 {
        "acceptable"
    } else {
        "good"
    };
    common.tags.set("performance", performance);
    let query = json::non_empty_text(p.get("query"));
    let attributes = match query.as_deref() {
        Some(q) => {
            let lower = q.to_lowercase();
            if json::contains(&lower, "select") {
                common.tags.set("query_type", "read");
            } else if ["insert", "update", "delete"]
                .iter()
                .any(|w| json::contains(&lower, w))
            {
                common.tags.set("query_type", "write");
            }
            with_query_hash(payload, &p, &lowered_query_hash(&lower))
        }
        None => payload.map_or_else(|| "{}".to_string(), |p| p.get().to_string()),
    };
    Ok(event(common, "database_query", message, attributes))
}

/// Serialise tags as a JSON object with string values.
fn tags_json(tags: &Tags) -> String {
    let mut out = String::with_capacity(16 + tags.0.len() * 24);
    out.push('{');
    for (i, (k, v)) in tags.0.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::push_json_string(&mut out, k);
        out.push(':');
        json::push_json_string(&mut out, v);
    }
    out.push('}');
    out
}

fn nanos_field(raw: Option<Raw<'_>>) -> Option<i64> {
    let raw = raw?;
    let n: u64 = match json::kind(raw) {
        Kind::Number => raw.get().parse().ok()?,
        Kind::String => json::as_str(raw)?.trim().parse().ok()?,
        _ => return None,
    };
    nanos_to_micros(n)
}

/// `raw-host-logs` (OTLP/JSON logs) → `events`, one per log record of every resource.
pub fn raw_host_logs(msg: &Message, _stats: &mut Stats) -> Outcome {
    match try_raw_host_logs(&msg.payload) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(e),
    }
}

fn try_raw_host_logs(payload: &[u8]) -> Result<Outcome, String> {
    // The scanner reads valid requests; serde_json decides the rest (and words the error).
    // The request's lists (it borrows its strings from the payload) are this message's
    // temporaries: scratch memory, as in otel-metrics; rows copy what they keep.
    let req = crate::arena::scratch(|| {
        let scanned = std::str::from_utf8(payload).ok().and_then(logs_json::read);
        match scanned {
            Some(req) => Ok(req),
            None => parse_object(payload),
        }
    })
    .map_err(|e: String| e.as_str().to_owned())?;
    let mut rows = Vec::new();
    for rl in &req.resource_logs {
        let mut host = None;
        let mut env = None;
        for kv in rl.resource.iter().flat_map(|r| &r.attributes) {
            match kv.key.as_ref() {
                "host.name" => host = kv.value.and_then(otlp::any_value_json_text),
                "deployment.environment" => env = kv.value.and_then(otlp::any_value_json_text),
                _ => {}
            }
        }
        let entity_id = host
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown_syslog_host".into());
        let environment = env
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "production".into());
        for rec in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
            let mut tags = Tags(Vec::with_capacity(rec.attributes.len() + 3));
            for kv in &rec.attributes {
                if let Some(v) = kv.value.and_then(otlp::any_value_json_text) {
                    tags.set(&kv.key, v);
                }
            }
            if let Some(sev) = json::non_empty_text(rec.severity_text) {
                tags.set("log_level", sev.to_lowercase());
            }
            let attributes = tags_json(&tags);
            let event_type = tags.get("event_type").map(str::to_string);
            tags.enrich_log(event_type.as_deref());
            let message = rec
                .body
                .and_then(json::members)
                .and_then(|b| b.get("stringValue").or_else(|| b.get("string_value")))
                .and_then(json::as_str)
                .map_or_else(|| "No message body".to_string(), |s| s.into_owned());
            rows.push(Row::Event(Event {
                timestamp: nanos_field(rec.time_unix_nano)
                    .or_else(|| nanos_field(rec.observed_time_unix_nano)),
                entity_id: entity_id.clone(),
                event_type: "syslog".into(),
                source: "syslog".into(),
                environment: environment.clone(),
                message,
                tags: tags.into(),
                attributes,
                trace_id: json::non_empty_text(rec.trace_id).map(|t| t.into_owned()),
                id: None,
                created_at: None,
            }));
        }
    }
    Ok(Outcome::Rows(rows))
}

/// `otel-metrics` (OTLP protobuf, gzip or plain) → `metrics`, one row per data point.
pub fn otel_metrics(msg: &Message, stats: &mut Stats) -> Outcome {
    match try_otel_metrics(&msg.payload, stats) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(e),
    }
}

fn json_f64(out: &mut String, v: f64) {
    // Histogram bounds are mostly whole numbers (1, 10, 100...): those are written as the
    // integer plus ".0", exactly what `{:?}` prints below 1e16, without the shortest-digits
    // search of float formatting. Negative zero takes the general path ("-0.0").
    if v.fract() == 0.0 && v.abs() < 1e15 && (v != 0.0 || v.is_sign_positive()) {
        push_int(out, v as i64);
        out.push_str(".0");
    } else if v.is_finite() {
        let _ = write!(out, "{v:?}");
    } else {
        // Non-finite values have no JSON spelling: null keeps the object valid.
        out.push_str("null");
    }
}

/// Append the decimal digits of `n` (itoa, as serde_json writes integers: cheaper than
/// `write!`'s formatting machinery).
fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// The metadata of a gauge or sum point: the metric's description object, closed.
fn closed(description: &str) -> String {
    let mut md = String::with_capacity(description.len() + 1);
    md.push_str(description);
    md.push('}');
    md
}

fn try_otel_metrics(payload: &[u8], stats: &mut Stats) -> Result<Outcome, String> {
    use prost::Message as _;
    if payload.is_empty() {
        return Ok(Outcome::Skip("empty payload".into()));
    }
    // The gunzipped bytes and the decoded request are this message's temporaries: they come
    // from scratch memory (`arena::scratch`), and every string a row or an error keeps is
    // copied out of them below. In talc, their many small allocations and frees were ~15%
    // of the transform's guest time.
    let req = crate::arena::scratch(|| {
        let bytes = crate::gzip::maybe_gunzip(payload)?;
        pb::ExportMetricsServiceRequest::decode(bytes.as_ref())
            .map_err(|e| format!("invalid OTLP metrics protobuf: {e}"))
    })
    .map_err(|e| e.as_str().to_owned())?;
    if req.resource_metrics.is_empty() {
        // Arbitrary bytes can decode as a message made only of unknown fields; a real
        // export always carries at least one resource.
        return Err(
            "payload decodes to an empty ExportMetricsServiceRequest: not OTLP metrics".into(),
        );
    }
    let mut rows = Vec::new();
    let mut skipped = 0i64;
    for rm in &req.resource_metrics {
        let (mut host, mut source, mut env) = (None, None, None);
        for kv in rm.resource.iter().flat_map(|r| &r.attributes) {
            let slot = match kv.key.as_str() {
                "host.name" => &mut host,
                "db.system" => &mut source,
                "deployment.environment" => &mut env,
                _ => continue,
            };
            *slot = kv
                .value
                .as_ref()
                .and_then(otlp::any_value_text)
                .filter(|s| !s.is_empty());
        }
        let entity_id = host.unwrap_or_else(|| "unknown_host".into());
        let source = source.unwrap_or_else(|| "unknown".into());
        let environment = env.unwrap_or_else(|| "production".into());
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let unit = (!m.unit.is_empty()).then(|| m.unit.clone());
            let mut description = String::with_capacity(m.description.len() + 20);
            description.push_str("{\"description\":");
            json::push_json_string(&mut description, &m.description);
            let row = |value: f64,
                       kind: MetricType,
                       attrs: &[pb::KeyValue],
                       time: u64,
                       metadata: String| {
                let mut tags = Tags(Vec::with_capacity(attrs.len() + 1));
                for kv in attrs {
                    if let Some(pb::Value::StringValue(s)) =
                        kv.value.as_ref().and_then(|v| v.value.as_ref())
                    {
                        tags.set(&kv.key, s.clone());
                    }
                }
                if json::contains(&m.name, "error") && value > 0.0 {
                    tags.set("severity", "warning");
                }
                Row::Metric(Metric {
                    metric_name: m.name.clone(),
                    entity_id: entity_id.clone(),
                    timestamp: nanos_to_micros(time),
                    source: source.clone(),
                    environment: environment.clone(),
                    metric_value: value,
                    metric_type: kind,
                    unit: unit.clone(),
                    tags: tags.into(),
                    metadata,
                    created_at: None,
                    id: None,
                })
            };
            let number = |p: &pb::NumberDataPoint| match p.value {
                Some(pb::NumberValue::AsDouble(d)) => d,
                Some(pb::NumberValue::AsInt(i)) => i as f64,
                None => 0.0,
            };
            match &m.data {
                Some(pb::Data::Gauge(g)) => {
                    for p in &g.data_points {
                        rows.push(row(
                            number(p),
                            MetricType::Gauge,
                            &p.attributes,
                            p.time_unix_nano,
                            closed(&description),
                        ));
                    }
                }
                Some(pb::Data::Sum(s)) => {
                    for p in &s.data_points {
                        rows.push(row(
                            number(p),
                            MetricType::Counter,
                            &p.attributes,
                            p.time_unix_nano,
                            closed(&description),
                        ));
                    }
                }
                Some(pb::Data::Histogram(h)) => {
                    for p in &h.data_points {
                        let mut md = description.clone();
                        md.push_str(",\"count\":");
                        push_int(&mut md, p.count);
                        md.push_str(",\"bucket_counts\":[");
                        for (i, c) in p.bucket_counts.iter().enumerate() {
                            if i > 0 {
                                md.push(',');
                            }
                            push_int(&mut md, *c);
                        }
                        md.push_str("],\"explicit_bounds\":[");
                        for (i, b) in p.explicit_bounds.iter().enumerate() {
                            if i > 0 {
                                md.push(',');
                            }
                            json_f64(&mut md, *b);
                        }
                        md.push(']');
                        if let Some(min) = p.min {
                            md.push_str(",\"min\":");
                            json_f64(&mut md, min);
                        }
                        if let Some(max) = p.max {
                            md.push_str(",\"max\":");
                            json_f64(&mut md, max);
                        }
                        md.push('}');
                        rows.push(row(
                            p.sum.unwrap_or(0.0),
                            MetricType::Histogram,
                            &p.attributes,
                            p.time_unix_nano,
                            md,
                        ));
                    }
                }
                Some(pb::Data::Summary(u)) | Some(pb::Data::ExponentialHistogram(u)) => {
                    skipped += u.data_points.len() as i64;
                }
                None => {}
            }
        }
    }
    if skipped > 0 {
        stats.add("skipped_unsupported_points", skipped);
        if rows.is_empty() {
            return Ok(Outcome::Skip(format!(
                "{skipped} data point(s) of unsupported kinds (summary, exponential histogram)"
            )));
        }
    }
    Ok(Outcome::Rows(rows))
}

#[cfg(test)]
mod tests;
