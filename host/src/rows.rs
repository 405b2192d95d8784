//! Host-side row completion (host-assigned columns, checks) and JSON rendering.

use crate::wasm::{Event, Message, Metric, MetricType, Row};
use serde_json::{Map, Value, json};

/// A row the transform returned that the host cannot store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row {index}: {reason}")]
pub struct RowError {
    pub index: usize,
    pub reason: String,
}

/// Processing time now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The deterministic row id: 128 bits of XXH3 over (topic, partition, offset, row index),
/// formatted like a UUID. A redelivered message yields identical ids, so duplicates can be
/// removed downstream.
pub fn row_id(topic: &str, partition: i32, offset: i64, index: usize) -> String {
    // Runs once per row: hash from a stack buffer (Kafka topic names are at most 249 bytes)
    // and format straight into the one String the row keeps.
    let mut stack = [0u8; 256 + 21];
    let mut heap = Vec::new();
    let t = topic.len();
    let buf: &mut [u8] = if t <= 256 {
        &mut stack[..t + 21]
    } else {
        heap.resize(t + 21, 0);
        &mut heap
    };
    buf[..t].copy_from_slice(topic.as_bytes());
    buf[t] = 0;
    buf[t + 1..t + 5].copy_from_slice(&partition.to_le_bytes());
    buf[t + 5..t + 13].copy_from_slice(&offset.to_le_bytes());
    buf[t + 13..t + 21].copy_from_slice(&(index as u64).to_le_bytes());
    let digest = xxhash_rust::xxh3::xxh3_128(buf);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // 8-4-4-4-12 hex digits written into a fixed buffer, a byte at a time (a push per
    // character, or a u128 shift per digit, showed in profiles).
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in digest.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    // ASCII by construction.
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

fn check_object(what: &str, text: &str) -> Result<(), String> {
    if !text.trim_start().starts_with('{') {
        return Err(format!(
            "`{what}` must be a JSON object, got {:?}",
            truncate(text, 60)
        ));
    }
    vast_transform_sdk::json::validate_object(text)
        .map_err(|e| format!("`{what}` is not valid JSON: {e}"))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Check the rows of one message and fill the host-assigned columns: `id` (deterministic),
/// `created_at` (processing time) and a missing `timestamp` (processing time).
pub fn complete(rows: &mut [Row], m: &Message, now_us: i64) -> Result<(), RowError> {
    for (index, row) in rows.iter_mut().enumerate() {
        let err = |reason| RowError { index, reason };
        let (id, created_at, timestamp) = match row {
            Row::Event(e) => {
                check_object("attributes", &e.attributes).map_err(err)?;
                (&mut e.id, &mut e.created_at, &mut e.timestamp)
            }
            Row::Metric(x) => {
                check_object("metadata", &x.metadata).map_err(err)?;
                (&mut x.id, &mut x.created_at, &mut x.timestamp)
            }
        };
        if id.as_deref().is_none_or(str::is_empty) {
            *id = Some(row_id(&m.topic, m.partition, m.offset, index));
        }
        created_at.get_or_insert(now_us);
        timestamp.get_or_insert(now_us);
    }
    Ok(())
}

/// The output table of a row.
pub fn table(row: &Row) -> &'static str {
    match row {
        Row::Event(_) => "events",
        Row::Metric(_) => "metrics",
    }
}

/// Tags as the JSON object text stored in the `tags` column (later keys win).
pub fn tags_json(tags: &[(String, String)]) -> String {
    let mut map = Map::with_capacity(tags.len());
    for (k, v) in tags {
        map.insert(k.clone(), Value::String(v.clone()));
    }
    Value::Object(map).to_string()
}

fn tags_value(tags: &[(String, String)]) -> Value {
    Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn object_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The metric type's text as stored.
pub fn metric_type(t: MetricType) -> &'static str {
    match t {
        MetricType::Gauge => "gauge",
        MetricType::Counter => "counter",
        MetricType::Histogram => "histogram",
    }
}

/// A row as a JSON object with every column in table order (`transform test` output).
/// Timestamps are integer microseconds; tags, attributes and metadata are JSON objects.
pub fn to_json(row: &Row) -> Value {
    match row {
        Row::Event(Event {
            timestamp,
            entity_id,
            event_type,
            source,
            environment,
            message,
            tags,
            attributes,
            trace_id,
            id,
            created_at,
        }) => json!({
            "timestamp": timestamp,
            "entity_id": entity_id,
            "event_type": event_type,
            "source": source,
            "environment": environment,
            "message": message,
            "tags": tags_value(tags),
            "attributes": object_value(attributes),
            "trace_id": trace_id,
            "id": id,
            "created_at": created_at,
        }),
        Row::Metric(Metric {
            metric_name,
            entity_id,
            timestamp,
            source,
            environment,
            metric_value,
            metric_type: t,
            unit,
            tags,
            metadata,
            created_at,
            id,
        }) => json!({
            "metric_name": metric_name,
            "entity_id": entity_id,
            "timestamp": timestamp,
            "source": source,
            "environment": environment,
            "metric_value": metric_value,
            "metric_type": metric_type(*t),
            "unit": unit,
            "tags": tags_value(tags),
            "metadata": object_value(metadata),
            "created_at": created_at,
            "id": id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message {
            topic: "raw-logs".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: None,
            key: None,
            headers: vec![],
            payload: vec![],
        }
    }

    fn event(attributes: &str) -> Row {
        Row::Event(Event {
            timestamp: None,
            entity_id: "e".into(),
            event_type: "log".into(),
            source: "s".into(),
            environment: "p".into(),
            message: "m".into(),
            tags: vec![],
            attributes: attributes.into(),
            trace_id: None,
            id: None,
            created_at: None,
        })
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = row_id("t", 0, 1, 0);
        assert_eq!(a, row_id("t", 0, 1, 0));
        assert_eq!(a.len(), 36);
        assert_ne!(a, row_id("t", 0, 1, 1));
        assert_ne!(a, row_id("t", 0, 2, 0));
        assert_ne!(a, row_id("t", 1, 1, 0));
        assert_ne!(a, row_id("u", 0, 1, 0));
    }

    #[test]
    fn ids_are_the_uuid_form_of_xxh3_128_over_the_coordinates() {
        // Ids must never change between releases (downstream de-duplication relies on them):
        // pin the layout, including a topic longer than the stack buffer.
        for topic in ["raw-logs".to_string(), "t".repeat(300)] {
            let mut buf = topic.as_bytes().to_vec();
            buf.push(0);
            buf.extend_from_slice(&7i32.to_le_bytes());
            buf.extend_from_slice(&42i64.to_le_bytes());
            buf.extend_from_slice(&3u64.to_le_bytes());
            let hex = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&buf));
            let want = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            assert_eq!(row_id(&topic, 7, 42, 3), want);
        }
    }

    #[test]
    fn complete_fills_host_columns_and_keeps_given_ones() {
        let mut rows = vec![event("{}"), event("{\"a\":1}")];
        if let Row::Event(e) = &mut rows[1] {
            e.id = Some("mine".into());
            e.timestamp = Some(5);
        }
        complete(&mut rows, &msg(), 1000).unwrap();
        let Row::Event(e0) = &rows[0] else {
            unreachable!()
        };
        let Row::Event(e1) = &rows[1] else {
            unreachable!()
        };
        assert_eq!(
            e0.id.as_deref(),
            Some(row_id("raw-logs", 3, 42, 0).as_str())
        );
        assert_eq!((e0.timestamp, e0.created_at), (Some(1000), Some(1000)));
        assert_eq!((e1.id.as_deref(), e1.timestamp), (Some("mine"), Some(5)));
    }

    #[test]
    fn complete_rejects_non_object_attributes() {
        for bad in ["[1]", "\"x\"", "{", ""] {
            let err = complete(&mut [event(bad)], &msg(), 0).unwrap_err();
            assert_eq!(err.index, 0, "{bad}");
        }
    }
}
