//! Test guest: a transform built directly against the frozen `vast:transform@0.1.0` contract
//! (wit/compat/transform-0.1.0.wit), without the SDK, as components shipped before 0.2.0
//! were. The host must keep running it. Per message: payload `skip` is skipped, `fail`
//! fails, anything else becomes an event (and a metric too when it starts with `metric`).

#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/compat/transform-0.1.0.wit",
        world: "transform",
    });
}

use bindings::vast::transform::host;
use bindings::vast::transform::types::{Event, Message, Metric, MetricType, Outcome, Row};

struct Legacy;

impl bindings::Guest for Legacy {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        host::counter("legacy_batches", 1);
        batch.iter().map(outcome).collect()
    }
}

fn outcome(m: &Message) -> Outcome {
    let text = String::from_utf8_lossy(&m.payload).into_owned();
    match text.as_str() {
        "skip" => return Outcome::Skip("asked to skip".into()),
        "fail" => return Outcome::Fail("asked to fail".into()),
        _ => {}
    }
    let key = m
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned());
    let mut rows = vec![Row::Event(Event {
        timestamp: m.timestamp_ms.map(|t| t * 1000),
        entity_id: m.topic.clone(),
        event_type: "legacy".into(),
        source: "legacy-v0-1".into(),
        environment: "test".into(),
        message: text.clone(),
        tags: key.iter().map(|k| ("key".to_string(), k.clone())).collect(),
        attributes: "{}".into(),
        trace_id: None,
        id: None,
        created_at: None,
    })];
    if text.starts_with("metric") {
        rows.push(Row::Metric(Metric {
            metric_name: text.clone(),
            entity_id: m.topic.clone(),
            timestamp: None,
            source: "legacy-v0-1".into(),
            environment: "test".into(),
            metric_value: m.offset as f64,
            metric_type: MetricType::Counter,
            unit: Some("1".into()),
            tags: vec![],
            metadata: "{}".into(),
            created_at: None,
            id: None,
        }));
    }
    Outcome::Rows(rows)
}

bindings::export!(Legacy with_types_in bindings);
