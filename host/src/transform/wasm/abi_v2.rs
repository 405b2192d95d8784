//! The edge to `vast:transform@0.2.0` (wit/transform.wit), the current contract: its
//! bindings, and the host side of its column-wise calls: a batch of [`Message`]s
//! becomes one [`wit::Batch`] (payloads, keys and headers in one buffer), and a
//! [`wit::Output`] is checked once ([`check`]) and then read in place as borrowed rows
//! ([`event`], [`metric`]): no per-row strings are built. A guest is untrusted, so every
//! length, offset and char boundary is verified and a malformed output is a contract
//! breach, never a panic.

use super::host::StoreState;
use crate::model::{EventRef, Message, MetricRef, MetricType, Tags, TextColumn, entry};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/transform.wit",
        world: "transform",
    });
}

pub use bindings::vast::transform::types as wit;
pub use bindings::{Transform, TransformPre};
pub use wit::Output;

impl wit::Host for StoreState {}

super::host::impl_host_interface!(bindings::vast::transform::host);

/// The batch for `messages`, which must all come from one topic (the caller splits runs).
/// `None` when the batch's payloads or keys do not fit the contract's 32-bit offsets.
pub fn lower(messages: &[Message]) -> Option<wit::Batch> {
    let payloads = blobs(messages, |m| &m.payload)?;
    let keys = blobs(messages, |m| m.key.as_deref().unwrap_or_default())?;
    let mut headers = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        for h in &m.headers {
            headers.push(wit::Header {
                message: i as u32,
                key: h.key.clone(),
                value: h.value.clone(),
            });
        }
    }
    Some(wit::Batch {
        topic: messages
            .first()
            .map(|m| m.topic.clone())
            .unwrap_or_default(),
        partitions: messages.iter().map(|m| m.partition).collect(),
        offsets: messages.iter().map(|m| m.offset).collect(),
        timestamps_ms: messages.iter().map(|m| m.timestamp_ms).collect(),
        payloads,
        has_key: messages.iter().map(|m| m.key.is_some()).collect(),
        keys,
        headers,
    })
}

fn blobs(messages: &[Message], field: impl Fn(&Message) -> &[u8]) -> Option<wit::Blobs> {
    let size: usize = messages.iter().map(|m| field(m).len()).sum();
    u32::try_from(size).ok()?;
    let mut bytes = Vec::with_capacity(size);
    let ends = messages
        .iter()
        .map(|m| {
            bytes.extend_from_slice(field(m));
            bytes.len() as u32
        })
        .collect();
    Some(wit::Blobs { bytes, ends })
}

/// Check that `output` has the contract's shape: every column as long as its table, every
/// string column's ends in order, within its text and on char boundaries, and the outcomes'
/// row counts matching `tables`. After this, [`event`] and [`metric`] only slice. The
/// error is the reason, for a contract breach.
pub fn check(output: &wit::Output) -> Result<(), String> {
    let claimed: u64 = output
        .outcomes
        .iter()
        .map(|o| match o {
            wit::Outcome::Rows(n) => u64::from(*n),
            _ => 0,
        })
        .sum();
    let listed = output.tables.len() as u64;
    if claimed > listed {
        return Err("outcomes claim more rows than `tables` lists".into());
    }
    if claimed < listed {
        return Err("`tables` lists rows that no outcome claims".into());
    }
    let n_events = output
        .tables
        .iter()
        .filter(|t| matches!(t, wit::Table::Events))
        .count();
    check_events(&output.events, n_events)?;
    check_metrics(&output.metrics, output.tables.len() - n_events)
}

fn check_len<T>(name: &str, col: &[T], n: usize) -> Result<(), String> {
    if col.len() == n {
        Ok(())
    } else {
        Err(format!(
            "column `{name}` has {} entries for {n} rows",
            col.len()
        ))
    }
}

fn check_strs(name: &str, s: &wit::Strings, n: usize) -> Result<(), String> {
    check_len(name, &s.ends, n)?;
    match TextColumn::checked(&s.text, &s.ends) {
        Some(_) => Ok(()),
        None => Err(format!(
            "column `{name}`: ends decrease, run past the text or are not on char boundaries"
        )),
    }
}

fn check_opt(name: &str, s: &wit::OptionalStrings, n: usize) -> Result<(), String> {
    if s.present.len() != n {
        return Err(format!(
            "column `{name}` has {} presence flags for {n} rows",
            s.present.len()
        ));
    }
    check_strs(name, &s.values, n)
}

fn check_tags(t: &wit::Tags, n: usize) -> Result<(), String> {
    let pairs = t.keys.ends.len();
    if t.ends.len() != n
        || t.ends.windows(2).any(|w| w[0] > w[1])
        || t.ends.last().is_some_and(|&e| e as usize > pairs)
    {
        return Err(format!(
            "column `tags`: {} row ends for {n} rows over {pairs} pairs, or ends decrease",
            t.ends.len()
        ));
    }
    check_strs("tags.keys", &t.keys, pairs)?;
    check_strs("tags.values", &t.values, pairs)
}

fn check_events(c: &wit::Events, n: usize) -> Result<(), String> {
    check_len("events.timestamp", &c.timestamp, n)?;
    check_len("events.created-at", &c.created_at, n)?;
    check_strs("events.entity-id", &c.entity_id, n)?;
    check_strs("events.event-type", &c.event_type, n)?;
    check_strs("events.source", &c.source, n)?;
    check_strs("events.environment", &c.environment, n)?;
    check_strs("events.message", &c.message, n)?;
    check_tags(&c.tags, n)?;
    check_strs("events.attributes", &c.attributes, n)?;
    check_opt("events.trace-id", &c.trace_id, n)?;
    check_opt("events.id", &c.id, n)
}

fn check_metrics(c: &wit::Metrics, n: usize) -> Result<(), String> {
    check_len("metrics.timestamp", &c.timestamp, n)?;
    check_len("metrics.metric-value", &c.metric_value, n)?;
    check_len("metrics.metric-type", &c.metric_type, n)?;
    check_len("metrics.created-at", &c.created_at, n)?;
    check_strs("metrics.metric-name", &c.metric_name, n)?;
    check_strs("metrics.entity-id", &c.entity_id, n)?;
    check_strs("metrics.source", &c.source, n)?;
    check_strs("metrics.environment", &c.environment, n)?;
    check_opt("metrics.unit", &c.unit, n)?;
    check_tags(&c.tags, n)?;
    check_strs("metrics.metadata", &c.metadata, n)?;
    check_opt("metrics.id", &c.id, n)
}

/// A column of an output that passed [`check`] (not re-checked: this runs per row and
/// column; an unchecked column would only yield wrong text, never a panic).
fn col(s: &wit::Strings) -> TextColumn<'_> {
    TextColumn::trusted(&s.text, &s.ends)
}

fn opt(s: &wit::OptionalStrings, i: usize) -> Option<&str> {
    s.present
        .get(i)
        .copied()
        .unwrap_or_default()
        .then(|| col(&s.values).get(i))
}

fn tags(t: &wit::Tags, i: usize) -> Tags<'_> {
    let pairs = entry(&t.ends, i);
    Tags::Columns {
        keys: col(&t.keys),
        values: col(&t.values),
        start: pairs.start,
        end: pairs.end,
    }
}

/// Event row `i` of an output that passed [`check`].
pub fn event(c: &wit::Events, i: usize) -> EventRef<'_> {
    EventRef {
        timestamp: c.timestamp.get(i).copied().flatten(),
        entity_id: col(&c.entity_id).get(i),
        event_type: col(&c.event_type).get(i),
        source: col(&c.source).get(i),
        environment: col(&c.environment).get(i),
        message: col(&c.message).get(i),
        tags: tags(&c.tags, i),
        attributes: col(&c.attributes).get(i),
        trace_id: opt(&c.trace_id, i),
        id: opt(&c.id, i),
        created_at: c.created_at.get(i).copied().flatten(),
    }
}

/// The text bytes of every string column of `o`: no row of it can be larger.
pub fn text_bytes(o: &wit::Output) -> usize {
    let s = |c: &wit::Strings| c.text.len();
    let t = |c: &wit::Tags| c.keys.text.len() + c.values.text.len() + 6 * c.keys.ends.len();
    let e = &o.events;
    let m = &o.metrics;
    s(&e.entity_id)
        + s(&e.event_type)
        + s(&e.source)
        + s(&e.environment)
        + s(&e.message)
        + t(&e.tags)
        + s(&e.attributes)
        + s(&e.trace_id.values)
        + s(&e.id.values)
        + s(&m.metric_name)
        + s(&m.entity_id)
        + s(&m.source)
        + s(&m.environment)
        + s(&m.unit.values)
        + t(&m.tags)
        + s(&m.metadata)
        + s(&m.id.values)
}

/// The `attributes` of event row `i` (all the host checks of a row's content).
pub fn event_attributes(c: &wit::Events, i: usize) -> &str {
    col(&c.attributes).get(i)
}

/// The `metadata` of metric row `i`.
pub fn metric_metadata(c: &wit::Metrics, i: usize) -> &str {
    col(&c.metadata).get(i)
}

/// Metric row `i` of an output that passed [`check`].
pub fn metric(c: &wit::Metrics, i: usize) -> MetricRef<'_> {
    MetricRef {
        metric_name: col(&c.metric_name).get(i),
        entity_id: col(&c.entity_id).get(i),
        timestamp: c.timestamp.get(i).copied().flatten(),
        source: col(&c.source).get(i),
        environment: col(&c.environment).get(i),
        metric_value: c.metric_value.get(i).copied().unwrap_or_default(),
        metric_type: match c.metric_type.get(i) {
            Some(wit::MetricType::Counter) => MetricType::Counter,
            Some(wit::MetricType::Histogram) => MetricType::Histogram,
            _ => MetricType::Gauge,
        },
        unit: opt(&c.unit, i),
        tags: tags(&c.tags, i),
        metadata: col(&c.metadata).get(i),
        created_at: c.created_at.get(i).copied().flatten(),
        id: opt(&c.id, i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Header;

    fn msg(offset: i64, payload: &str) -> Message {
        Message {
            topic: "t".into(),
            partition: 2,
            offset,
            timestamp_ms: Some(7),
            key: Some(b"k".to_vec()),
            headers: vec![Header {
                key: "h".into(),
                value: None,
            }],
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn lowering_makes_columns() {
        let mut second = msg(2, "cde");
        second.key = None;
        second.headers.push(Header {
            key: "g".into(),
            value: Some(b"v".to_vec()),
        });
        let b = lower(&[msg(1, "ab"), second]).unwrap();
        assert_eq!(b.topic, "t");
        assert_eq!((b.partitions, b.offsets), (vec![2, 2], vec![1, 2]));
        assert_eq!(b.timestamps_ms, [Some(7), Some(7)]);
        assert_eq!(
            (b.payloads.bytes, b.payloads.ends),
            (b"abcde".to_vec(), vec![2, 5])
        );
        assert_eq!(b.has_key, [true, false]);
        assert_eq!((b.keys.bytes, b.keys.ends), (b"k".to_vec(), vec![1, 1]));
        let h: Vec<_> = b
            .headers
            .iter()
            .map(|h| (h.message, h.key.as_str(), h.value.clone()))
            .collect();
        assert_eq!(
            h,
            [
                (0, "h", None),
                (1, "h", None),
                (1, "g", Some(b"v".to_vec()))
            ]
        );
    }

    fn strings(items: &[&str]) -> wit::Strings {
        let mut text = String::new();
        let ends = items
            .iter()
            .map(|s| {
                text.push_str(s);
                text.len() as u32
            })
            .collect();
        wit::Strings { text, ends }
    }

    fn opt(items: &[Option<&str>]) -> wit::OptionalStrings {
        wit::OptionalStrings {
            present: items.iter().map(Option::is_some).collect(),
            values: strings(&items.iter().map(|s| s.unwrap_or("")).collect::<Vec<_>>()),
        }
    }

    fn no_events() -> wit::Events {
        wit::Events {
            timestamp: vec![],
            entity_id: strings(&[]),
            event_type: strings(&[]),
            source: strings(&[]),
            environment: strings(&[]),
            message: strings(&[]),
            tags: wit::Tags {
                ends: vec![],
                keys: strings(&[]),
                values: strings(&[]),
            },
            attributes: strings(&[]),
            trace_id: opt(&[]),
            id: opt(&[]),
            created_at: vec![],
        }
    }

    fn one_metric() -> wit::Metrics {
        wit::Metrics {
            metric_name: strings(&["cpu"]),
            entity_id: strings(&["h"]),
            timestamp: vec![Some(1)],
            source: strings(&["s"]),
            environment: strings(&["e"]),
            metric_value: vec![0.5],
            metric_type: vec![wit::MetricType::Gauge],
            unit: opt(&[Some("%")]),
            tags: wit::Tags {
                ends: vec![2],
                keys: strings(&["a", "b"]),
                values: strings(&["1", "é"]),
            },
            metadata: strings(&["{}"]),
            created_at: vec![None],
            id: opt(&[None]),
        }
    }

    fn output() -> wit::Output {
        wit::Output {
            outcomes: vec![
                wit::Outcome::Skip("s".into()),
                wit::Outcome::Rows(1),
                wit::Outcome::Fail("f".into()),
                wit::Outcome::Rows(0),
            ],
            tables: vec![wit::Table::Metrics],
            events: no_events(),
            metrics: one_metric(),
        }
    }

    #[test]
    fn checked_outputs_are_read_in_place() {
        let o = output();
        check(&o).unwrap();
        let m = metric(&o.metrics, 0);
        assert_eq!(m.metric_name, "cpu");
        assert_eq!(m.unit, Some("%"));
        assert_eq!((m.id, m.timestamp, m.created_at), (None, Some(1), None));
        assert_eq!(m.metric_type, MetricType::Gauge);
        assert_eq!(m.tags.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "é")]);
        let mut o = output();
        o.events = two_events();
        o.tables = vec![wit::Table::Events, wit::Table::Metrics, wit::Table::Events];
        o.outcomes[3] = wit::Outcome::Rows(2);
        check(&o).unwrap();
        let (e0, e1) = (event(&o.events, 0), event(&o.events, 1));
        assert_eq!((e0.message, e1.message), ("first", "second ✓"));
        assert_eq!((e0.trace_id, e1.trace_id), (Some("t"), None));
        assert_eq!(e0.tags.len(), 0);
        assert_eq!(e1.tags.iter().collect::<Vec<_>>(), [("k", "v")]);
        assert_eq!((e0.timestamp, e1.created_at), (None, Some(9)));
    }

    fn two_events() -> wit::Events {
        wit::Events {
            timestamp: vec![None, Some(3)],
            entity_id: strings(&["a", "b"]),
            event_type: strings(&["log", "log"]),
            source: strings(&["s", "s"]),
            environment: strings(&["p", "p"]),
            message: strings(&["first", "second ✓"]),
            tags: wit::Tags {
                ends: vec![0, 1],
                keys: strings(&["k"]),
                values: strings(&["v"]),
            },
            attributes: strings(&["{}", "{}"]),
            trace_id: opt(&[Some("t"), None]),
            id: opt(&[None, Some("x")]),
            created_at: vec![None, Some(9)],
        }
    }

    #[test]
    fn malformed_outputs_are_contract_errors() {
        type Break = fn(&mut wit::Output);
        let breaks: [(&str, Break); 8] = [
            ("more rows", |o| o.outcomes[3] = wit::Outcome::Rows(1)),
            ("no outcome claims", |o| {
                o.outcomes[1] = wit::Outcome::Rows(0)
            }),
            ("entries", |o| o.metrics.metric_value.clear()),
            ("ends decrease", |o| o.metrics.metric_name.ends = vec![9]),
            ("boundaries", |o| o.metrics.tags.values.ends = vec![1, 2]),
            ("presence", |o| o.metrics.unit.present.clear()),
            ("pairs", |o| o.metrics.tags.ends = vec![3]),
            ("past the text", |o| o.metrics.metadata.ends = vec![3]),
        ];
        for (want, f) in breaks {
            let mut o = output();
            f(&mut o);
            let err = check(&o).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
