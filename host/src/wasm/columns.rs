//! The host side of `vast:transform@0.2.0`'s column-wise calls: a batch of [`Message`]s
//! becomes one [`wit::Batch`] (payloads, keys and headers in one buffer), and a
//! [`wit::Output`] becomes one [`Outcome`] per message with whole rows, checked on the way:
//! a guest is untrusted, so every length, offset and char boundary is verified and a
//! malformed output is a contract breach, never a panic.

use super::bindings::vast::transform::types as wit;
use super::v1::vast::transform::types::{Event, Message, Metric, MetricType, Outcome, Row};

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

/// One outcome per entry of `output.outcomes`, rows rebuilt from the columns; the reason
/// when the output breaks the contract's shape.
pub fn lift(output: &wit::Output) -> Result<Vec<Outcome>, String> {
    let n_events = output
        .tables
        .iter()
        .filter(|t| matches!(t, wit::Table::Events))
        .count();
    let n_metrics = output.tables.len() - n_events;
    let mut events = EventColumns::new(&output.events, n_events)?;
    let mut metrics = MetricColumns::new(&output.metrics, n_metrics)?;
    let mut tables = output.tables.iter();
    let mut outcomes = Vec::with_capacity(output.outcomes.len());
    for o in &output.outcomes {
        outcomes.push(match o {
            wit::Outcome::Skip(r) => Outcome::Skip(r.clone()),
            wit::Outcome::Fail(r) => Outcome::Fail(r.clone()),
            wit::Outcome::Rows(n) => {
                let mut rows = Vec::with_capacity((*n as usize).min(1024));
                for _ in 0..*n {
                    rows.push(match tables.next() {
                        Some(wit::Table::Events) => Row::Event(events.next()?),
                        Some(wit::Table::Metrics) => Row::Metric(metrics.next()?),
                        None => return Err("outcomes claim more rows than `tables` lists".into()),
                    });
                }
                Outcome::Rows(rows)
            }
        });
    }
    if tables.next().is_some() {
        return Err("`tables` lists rows that no outcome claims".into());
    }
    Ok(outcomes)
}

/// A checked view of a string column.
struct Strs<'a> {
    name: &'static str,
    text: &'a str,
    ends: &'a [u32],
}

impl<'a> Strs<'a> {
    fn new(name: &'static str, s: &'a wit::Strings, n: usize) -> Result<Self, String> {
        if s.ends.len() != n {
            return Err(format!(
                "column `{name}` has {} entries for {n} rows",
                s.ends.len()
            ));
        }
        if s.ends.windows(2).any(|w| w[0] > w[1])
            || s.ends.last().is_some_and(|&e| e as usize > s.text.len())
        {
            return Err(format!(
                "column `{name}`: ends decrease or run past the text"
            ));
        }
        Ok(Strs {
            name,
            text: &s.text,
            ends: &s.ends,
        })
    }

    /// String `i` (in range: checked by `new`'s length check and the callers' counts).
    fn get(&self, i: usize) -> Result<&'a str, String> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).ok_or_else(|| {
            format!(
                "column `{}`: entry {i} is not on char boundaries",
                self.name
            )
        })
    }

    fn owned(&self, i: usize) -> Result<String, String> {
        self.get(i).map(str::to_string)
    }
}

struct OptStrs<'a> {
    present: &'a [bool],
    values: Strs<'a>,
}

impl<'a> OptStrs<'a> {
    fn new(name: &'static str, s: &'a wit::OptionalStrings, n: usize) -> Result<Self, String> {
        if s.present.len() != n {
            return Err(format!(
                "column `{name}` has {} presence flags for {n} rows",
                s.present.len()
            ));
        }
        Ok(OptStrs {
            present: &s.present,
            values: Strs::new(name, &s.values, n)?,
        })
    }

    fn owned(&self, i: usize) -> Result<Option<String>, String> {
        match self.present[i] {
            true => self.values.owned(i).map(Some),
            false => Ok(None),
        }
    }
}

struct TagCols<'a> {
    ends: &'a [u32],
    keys: Strs<'a>,
    values: Strs<'a>,
}

impl<'a> TagCols<'a> {
    fn new(t: &'a wit::Tags, n: usize) -> Result<Self, String> {
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
        Ok(TagCols {
            ends: &t.ends,
            keys: Strs::new("tags.keys", &t.keys, pairs)?,
            values: Strs::new("tags.values", &t.values, pairs)?,
        })
    }

    fn owned(&self, i: usize) -> Result<Vec<(String, String)>, String> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (start..self.ends[i] as usize)
            .map(|j| Ok((self.keys.owned(j)?, self.values.owned(j)?)))
            .collect()
    }
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

struct EventColumns<'a> {
    c: &'a wit::Events,
    next: usize,
    entity_id: Strs<'a>,
    event_type: Strs<'a>,
    source: Strs<'a>,
    environment: Strs<'a>,
    message: Strs<'a>,
    tags: TagCols<'a>,
    attributes: Strs<'a>,
    trace_id: OptStrs<'a>,
    id: OptStrs<'a>,
}

impl<'a> EventColumns<'a> {
    fn new(c: &'a wit::Events, n: usize) -> Result<Self, String> {
        check_len("events.timestamp", &c.timestamp, n)?;
        check_len("events.created-at", &c.created_at, n)?;
        Ok(EventColumns {
            c,
            next: 0,
            entity_id: Strs::new("events.entity-id", &c.entity_id, n)?,
            event_type: Strs::new("events.event-type", &c.event_type, n)?,
            source: Strs::new("events.source", &c.source, n)?,
            environment: Strs::new("events.environment", &c.environment, n)?,
            message: Strs::new("events.message", &c.message, n)?,
            tags: TagCols::new(&c.tags, n)?,
            attributes: Strs::new("events.attributes", &c.attributes, n)?,
            trace_id: OptStrs::new("events.trace-id", &c.trace_id, n)?,
            id: OptStrs::new("events.id", &c.id, n)?,
        })
    }

    /// The next event row (the count was checked against `tables` in `new`).
    fn next(&mut self) -> Result<Event, String> {
        let i = self.next;
        self.next += 1;
        Ok(Event {
            timestamp: self.c.timestamp[i],
            entity_id: self.entity_id.owned(i)?,
            event_type: self.event_type.owned(i)?,
            source: self.source.owned(i)?,
            environment: self.environment.owned(i)?,
            message: self.message.owned(i)?,
            tags: self.tags.owned(i)?,
            attributes: self.attributes.owned(i)?,
            trace_id: self.trace_id.owned(i)?,
            id: self.id.owned(i)?,
            created_at: self.c.created_at[i],
        })
    }
}

struct MetricColumns<'a> {
    c: &'a wit::Metrics,
    next: usize,
    metric_name: Strs<'a>,
    entity_id: Strs<'a>,
    source: Strs<'a>,
    environment: Strs<'a>,
    unit: OptStrs<'a>,
    tags: TagCols<'a>,
    metadata: Strs<'a>,
    id: OptStrs<'a>,
}

impl<'a> MetricColumns<'a> {
    fn new(c: &'a wit::Metrics, n: usize) -> Result<Self, String> {
        check_len("metrics.timestamp", &c.timestamp, n)?;
        check_len("metrics.metric-value", &c.metric_value, n)?;
        check_len("metrics.metric-type", &c.metric_type, n)?;
        check_len("metrics.created-at", &c.created_at, n)?;
        Ok(MetricColumns {
            c,
            next: 0,
            metric_name: Strs::new("metrics.metric-name", &c.metric_name, n)?,
            entity_id: Strs::new("metrics.entity-id", &c.entity_id, n)?,
            source: Strs::new("metrics.source", &c.source, n)?,
            environment: Strs::new("metrics.environment", &c.environment, n)?,
            unit: OptStrs::new("metrics.unit", &c.unit, n)?,
            tags: TagCols::new(&c.tags, n)?,
            metadata: Strs::new("metrics.metadata", &c.metadata, n)?,
            id: OptStrs::new("metrics.id", &c.id, n)?,
        })
    }

    fn next(&mut self) -> Result<Metric, String> {
        let i = self.next;
        self.next += 1;
        Ok(Metric {
            metric_name: self.metric_name.owned(i)?,
            entity_id: self.entity_id.owned(i)?,
            timestamp: self.c.timestamp[i],
            source: self.source.owned(i)?,
            environment: self.environment.owned(i)?,
            metric_value: self.c.metric_value[i],
            metric_type: match self.c.metric_type[i] {
                wit::MetricType::Gauge => MetricType::Gauge,
                wit::MetricType::Counter => MetricType::Counter,
                wit::MetricType::Histogram => MetricType::Histogram,
            },
            unit: self.unit.owned(i)?,
            tags: self.tags.owned(i)?,
            metadata: self.metadata.owned(i)?,
            created_at: self.c.created_at[i],
            id: self.id.owned(i)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::v1::vast::transform::types::Header;
    use super::*;

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
    fn lifting_rebuilds_rows_per_message() {
        let out = lift(&output()).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], Outcome::Skip("s".into()));
        assert_eq!(out[2], Outcome::Fail("f".into()));
        assert_eq!(out[3], Outcome::Rows(vec![]));
        let Outcome::Rows(rows) = &out[1] else {
            panic!("rows expected")
        };
        let Row::Metric(m) = &rows[0] else {
            panic!("metric expected")
        };
        assert_eq!(m.metric_name, "cpu");
        assert_eq!(m.unit.as_deref(), Some("%"));
        assert_eq!(m.id, None);
        assert_eq!(m.tags, [("a".into(), "1".into()), ("b".into(), "é".into())]);
    }

    #[test]
    fn malformed_outputs_are_contract_errors() {
        type Break = fn(&mut wit::Output);
        let breaks: [(&str, Break); 7] = [
            ("more rows", |o| o.outcomes[3] = wit::Outcome::Rows(1)),
            ("no outcome claims", |o| {
                o.outcomes[1] = wit::Outcome::Rows(0)
            }),
            ("entries", |o| o.metrics.metric_value.clear()),
            ("ends decrease", |o| o.metrics.metric_name.ends = vec![9]),
            ("boundaries", |o| o.metrics.tags.values.ends = vec![1, 2]),
            ("presence", |o| o.metrics.unit.present.clear()),
            ("pairs", |o| o.metrics.tags.ends = vec![3]),
        ];
        for (want, f) in breaks {
            let mut o = output();
            f(&mut o);
            let err = lift(&o).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
