//! Rows rendered as JSON objects, every column in table order (`transform test` output and
//! golden files). Timestamps are integer microseconds; tags, attributes and metadata are
//! JSON objects.

use super::{Event, Metric, Row};
use serde_json::{Value, json};

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
            "metric_type": t.as_str(),
            "unit": unit,
            "tags": tags_value(tags),
            "metadata": object_value(metadata),
            "created_at": created_at,
            "id": id,
        }),
    }
}
