//! The edge to `vast:transform@0.1.0` (wit/compat/transform-0.1.0.wit), the frozen first
//! contract, for components built against it: whole messages in, whole rows out. Its record
//! types mirror the host's model field for field, so each side converts by moving fields.

use super::MessageResult;
use super::host::StoreState;
use crate::model;
use wasmtime::Store;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/compat/transform-0.1.0.wit",
        world: "transform",
    });
}

use bindings::vast::transform::types as wit;
pub use bindings::{Transform, TransformPre};

impl wit::Host for StoreState {}

super::host::impl_host_interface!(bindings::vast::transform::host);

/// Call a 0.1.0 component's `process` on `batch`: one result per outcome it returned (the
/// caller checks the count), rows converted to the model. The error is a trap.
pub fn process(
    b: &Transform,
    store: &mut Store<StoreState>,
    batch: &[model::Message],
) -> wasmtime::Result<Vec<MessageResult>> {
    let input: Vec<wit::Message> = batch.iter().map(message).collect();
    let outs = b.call_process(store, &input)?;
    Ok(outs.into_iter().map(outcome).collect())
}

fn message(m: &model::Message) -> wit::Message {
    wit::Message {
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
        timestamp_ms: m.timestamp_ms,
        key: m.key.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| wit::Header {
                key: h.key.clone(),
                value: h.value.clone(),
            })
            .collect(),
        payload: m.payload.clone(),
    }
}

fn outcome(o: wit::Outcome) -> MessageResult {
    match o {
        wit::Outcome::Rows(rows) => MessageResult::Rows(rows.into_iter().map(row).collect()),
        wit::Outcome::Skip(r) => MessageResult::Skip(r),
        wit::Outcome::Fail(r) => MessageResult::Fail(r),
    }
}

fn row(r: wit::Row) -> model::Row {
    match r {
        wit::Row::Event(e) => model::Row::Event(model::Event {
            timestamp: e.timestamp,
            entity_id: e.entity_id,
            event_type: e.event_type,
            source: e.source,
            environment: e.environment,
            message: e.message,
            tags: e.tags,
            attributes: e.attributes,
            trace_id: e.trace_id,
            id: e.id,
            created_at: e.created_at,
        }),
        wit::Row::Metric(m) => model::Row::Metric(model::Metric {
            metric_name: m.metric_name,
            entity_id: m.entity_id,
            timestamp: m.timestamp,
            source: m.source,
            environment: m.environment,
            metric_value: m.metric_value,
            metric_type: match m.metric_type {
                wit::MetricType::Gauge => model::MetricType::Gauge,
                wit::MetricType::Counter => model::MetricType::Counter,
                wit::MetricType::Histogram => model::MetricType::Histogram,
            },
            unit: m.unit,
            tags: m.tags,
            metadata: m.metadata,
            created_at: m.created_at,
            id: m.id,
        }),
    }
}
