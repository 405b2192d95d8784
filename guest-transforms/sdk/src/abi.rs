//! Conversion between the contract's column-wise batches (`vast:transform@0.2.0`) and the
//! whole messages and rows a [`Guest`](crate::Guest) works with. [`export_transform!`]
//! routes every `process` call through [`process`]; transforms never call it themselves.
//!
//! Why column-wise: under 0.1.0 the host made two or three calls into the guest's allocator
//! per message to copy it in, and lifted every row back as a dozen separately allocated
//! strings. Now a call copies a handful of buffers each way; the copying that remains (here)
//! is plain appends inside the guest.

use crate::bindings::vast::transform::types as wit;
use crate::{Event, Header, Message, Metric, Outcome, Row};

/// Decode `batch`, run `f`, encode its outcomes.
pub fn process(batch: wit::Batch, f: impl FnOnce(Vec<Message>) -> Vec<Outcome>) -> wit::Output {
    encode(&f(decode(batch)))
}

/// The messages of a batch. The host sends consistent columns; should one be short or an
/// offset out of range (a host bug), the missing parts read as empty rather than trapping.
pub fn decode(batch: wit::Batch) -> Vec<Message> {
    let wit::Batch {
        topic,
        partitions,
        offsets,
        timestamps_ms,
        payloads,
        has_key,
        keys,
        headers,
    } = batch;
    let mut headers = headers.into_iter().peekable();
    (0..offsets.len())
        .map(|i| {
            let mut own = Vec::new();
            while let Some(h) = headers.next_if(|h| h.message as usize <= i) {
                if h.message as usize == i {
                    own.push(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
            Message {
                topic: topic.clone(),
                partition: partitions.get(i).copied().unwrap_or_default(),
                offset: offsets[i],
                timestamp_ms: timestamps_ms.get(i).copied().flatten(),
                key: has_key
                    .get(i)
                    .copied()
                    .unwrap_or_default()
                    .then(|| item(&keys, i).to_vec()),
                headers: own,
                payload: item(&payloads, i).to_vec(),
            }
        })
        .collect()
}

/// Item `i` of `blobs` (empty when out of range).
fn item(blobs: &wit::Blobs, i: usize) -> &[u8] {
    let start = match i {
        0 => 0,
        _ => blobs.ends.get(i - 1).copied().unwrap_or_default() as usize,
    };
    let end = blobs.ends.get(i).copied().unwrap_or_default() as usize;
    blobs.bytes.get(start..end).unwrap_or_default()
}

/// The contract's output for `outcomes`: one entry per outcome, rows column-wise. Every
/// buffer is allocated once at its exact size (grown buffers fragmented the guest's heap
/// from batch to batch).
pub fn encode(outcomes: &[Outcome]) -> wit::Output {
    let rows = || {
        outcomes.iter().flat_map(|o| match o {
            Outcome::Rows(rows) => rows.as_slice(),
            _ => &[],
        })
    };
    let n_rows = rows().count();
    let mut tables = Vec::with_capacity(n_rows);
    let n_events = rows().filter(|r| matches!(r, Row::Event(_))).count();
    let mut events = Vec::with_capacity(n_events);
    let mut metrics = Vec::with_capacity(n_rows - n_events);
    for row in rows() {
        match row {
            Row::Event(e) => {
                tables.push(wit::Table::Events);
                events.push(e);
            }
            Row::Metric(m) => {
                tables.push(wit::Table::Metrics);
                metrics.push(m);
            }
        }
    }
    let outcomes = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Rows(rows) => wit::Outcome::Rows(rows.len() as u32),
            Outcome::Skip(r) => wit::Outcome::Skip(r.clone()),
            Outcome::Fail(r) => wit::Outcome::Fail(r.clone()),
        })
        .collect();
    wit::Output {
        outcomes,
        tables,
        events: encode_events(&events),
        metrics: encode_metrics(&metrics),
    }
}

fn encode_events(rows: &[&Event]) -> wit::Events {
    wit::Events {
        timestamp: rows.iter().map(|e| e.timestamp).collect(),
        entity_id: strings(rows, |e| &e.entity_id),
        event_type: strings(rows, |e| &e.event_type),
        source: strings(rows, |e| &e.source),
        environment: strings(rows, |e| &e.environment),
        message: strings(rows, |e| &e.message),
        tags: tags(rows, |e| &e.tags),
        attributes: strings(rows, |e| &e.attributes),
        trace_id: optional_strings(rows, |e| e.trace_id.as_deref()),
        id: optional_strings(rows, |e| e.id.as_deref()),
        created_at: rows.iter().map(|e| e.created_at).collect(),
    }
}

fn encode_metrics(rows: &[&Metric]) -> wit::Metrics {
    wit::Metrics {
        metric_name: strings(rows, |m| &m.metric_name),
        entity_id: strings(rows, |m| &m.entity_id),
        timestamp: rows.iter().map(|m| m.timestamp).collect(),
        source: strings(rows, |m| &m.source),
        environment: strings(rows, |m| &m.environment),
        metric_value: rows.iter().map(|m| m.metric_value).collect(),
        metric_type: rows.iter().map(|m| m.metric_type).collect(),
        unit: optional_strings(rows, |m| m.unit.as_deref()),
        tags: tags(rows, |m| &m.tags),
        metadata: strings(rows, |m| &m.metadata),
        created_at: rows.iter().map(|m| m.created_at).collect(),
        id: optional_strings(rows, |m| m.id.as_deref()),
    }
}

/// One string column from `items`, allocated at its exact size.
fn strings<'a, T: 'a>(items: &[T], field: impl Fn(&T) -> &'a str) -> wit::Strings {
    let mut text = String::with_capacity(items.iter().map(|i| field(i).len()).sum());
    let mut ends = Vec::with_capacity(items.len());
    for i in items {
        text.push_str(field(i));
        // Guest memory is 32-bit: the text never exceeds u32.
        ends.push(text.len() as u32);
    }
    wit::Strings { text, ends }
}

fn optional_strings<'a, T: 'a>(
    items: &[T],
    field: impl Fn(&T) -> Option<&'a str>,
) -> wit::OptionalStrings {
    wit::OptionalStrings {
        present: items.iter().map(|i| field(i).is_some()).collect(),
        values: strings(items, |i| field(i).unwrap_or_default()),
    }
}

fn tags<'a, T: 'a>(items: &[T], field: impl Fn(&T) -> &'a [(String, String)]) -> wit::Tags {
    let pairs: Vec<&(String, String)> = items.iter().flat_map(&field).collect();
    let mut end = 0;
    wit::Tags {
        ends: items
            .iter()
            .map(|i| {
                end += field(i).len() as u32;
                end
            })
            .collect(),
        keys: strings(&pairs, |p| &p.0),
        values: strings(&pairs, |p| &p.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricType;

    #[test]
    fn decoding_rebuilds_messages_with_their_headers() {
        let batch = wit::Batch {
            topic: "t".into(),
            partitions: vec![1, 2, 3],
            offsets: vec![10, 11, 12],
            timestamps_ms: vec![Some(5), None, Some(6)],
            payloads: wit::Blobs {
                bytes: b"abcde".to_vec(),
                ends: vec![2, 2, 5],
            },
            has_key: vec![false, true, true],
            keys: wit::Blobs {
                bytes: b"kk".to_vec(),
                ends: vec![0, 0, 2],
            },
            headers: vec![
                wit::Header {
                    message: 1,
                    key: "a".into(),
                    value: None,
                },
                wit::Header {
                    message: 1,
                    key: "b".into(),
                    value: Some(b"v".to_vec()),
                },
                wit::Header {
                    message: 2,
                    key: "c".into(),
                    value: None,
                },
            ],
        };
        let m = decode(batch);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].payload.as_slice(), m[0].key.clone()),
            (&b"ab"[..], None)
        );
        assert_eq!(
            (m[1].payload.as_slice(), m[1].key.clone()),
            (&b""[..], Some(vec![]))
        );
        assert_eq!(m[2].key, Some(b"kk".to_vec()));
        assert_eq!(
            (m[1].partition, m[1].offset, m[1].timestamp_ms),
            (2, 11, None)
        );
        assert!(m[0].headers.is_empty());
        let keys: Vec<_> = m[1].headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(m[1].headers[1].value, Some(b"v".to_vec()));
        assert_eq!(m[2].headers[0].key, "c");
        assert!(m.iter().all(|m| m.topic == "t"));
    }

    fn event(message: &str, tags: &[(&str, &str)]) -> Row {
        Row::Event(Event {
            timestamp: Some(1),
            entity_id: "e".into(),
            event_type: "log".into(),
            source: "s".into(),
            environment: "prod".into(),
            message: message.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            attributes: "{}".into(),
            trace_id: Some("tr".into()),
            id: None,
            created_at: None,
        })
    }

    #[test]
    fn encoding_lays_rows_out_column_wise_in_output_order() {
        let metric = Row::Metric(Metric {
            metric_name: "cpu".into(),
            entity_id: "h".into(),
            timestamp: None,
            source: "s".into(),
            environment: "prod".into(),
            metric_value: 0.5,
            metric_type: MetricType::Gauge,
            unit: None,
            tags: vec![],
            metadata: "{}".into(),
            created_at: Some(3),
            id: Some("x".into()),
        });
        let out = encode(&[
            Outcome::Rows(vec![event("é1", &[("a", "1"), ("b", "2")]), metric]),
            Outcome::Skip("why".into()),
            Outcome::Rows(vec![event("2", &[])]),
            Outcome::Fail("bad".into()),
        ]);
        assert!(matches!(
            out.outcomes.as_slice(),
            [
                wit::Outcome::Rows(2),
                wit::Outcome::Skip(_),
                wit::Outcome::Rows(1),
                wit::Outcome::Fail(_)
            ]
        ));
        assert!(matches!(
            out.tables.as_slice(),
            [wit::Table::Events, wit::Table::Metrics, wit::Table::Events]
        ));
        let e = &out.events;
        assert_eq!(
            (e.message.text.as_str(), e.message.ends.as_slice()),
            ("é12", &[3, 4][..])
        );
        assert_eq!(e.tags.ends, [2, 2]);
        assert_eq!(e.tags.keys.text, "ab");
        assert_eq!(e.tags.values.ends, [1, 2]);
        assert_eq!(e.trace_id.present, [true, true]);
        assert_eq!(e.id.present, [false, false]);
        assert_eq!(e.id.values.ends, [0, 0]);
        let m = &out.metrics;
        assert_eq!(m.metric_name.text, "cpu");
        assert_eq!(
            (m.metric_value.as_slice(), m.created_at.as_slice()),
            (&[0.5][..], &[Some(3)][..])
        );
        assert_eq!(
            (m.id.present.as_slice(), m.id.values.text.as_str()),
            (&[true][..], "x")
        );
        assert_eq!(m.unit.present, [false]);
    }
}
