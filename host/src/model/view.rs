//! Borrowed views of rows ([`RowRef`]) as a transform's output holds them, read in place
//! without copying their strings, with the host-side checks and host-assigned columns.

use super::{Event, Message, Metric, MetricType, Row, row_id_text};

/// A string column as one text buffer plus end offsets (Arrow's Utf8 layout), as a 0.2.0
/// guest returns it. Built only by the runtime after checking that every end is in order,
/// within the text and on a char boundary, so each entry is a plain slice.
#[derive(Debug, Clone, Copy)]
pub struct TextColumn<'a> {
    text: &'a str,
    ends: &'a [u32],
}

impl<'a> TextColumn<'a> {
    /// The column if `ends` is non-decreasing, within `text` and on char boundaries.
    pub(crate) fn checked(text: &'a str, ends: &'a [u32]) -> Option<Self> {
        let mut prev = 0u32;
        for &e in ends {
            if e < prev || !text.is_char_boundary(e as usize) {
                return None;
            }
            prev = e;
        }
        Some(TextColumn { text, ends })
    }

    /// A column whose ends the caller has checked with [`TextColumn::checked`] (a column
    /// that was not only yields wrong or empty entries from [`TextColumn::get`], never a panic).
    pub(crate) fn trusted(text: &'a str, ends: &'a [u32]) -> Self {
        TextColumn { text, ends }
    }

    /// Entries in the column.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the column has no entries.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Entry `i` (`""` past the end; callers index within lengths the runtime checked).
    pub fn get(&self, i: usize) -> &'a str {
        self.text.get(entry(self.ends, i)).unwrap_or_default()
    }
}

/// Entry `i` of a list given by end offsets (the contract's layout for strings, blobs and
/// tag runs): from the previous end, or 0, to its own end; empty past the end.
pub(crate) fn entry(ends: &[u32], i: usize) -> std::ops::Range<usize> {
    let end = ends.get(i).copied().unwrap_or_default() as usize;
    let start = match i {
        0 => 0,
        _ => ends.get(i - 1).copied().unwrap_or_default() as usize,
    };
    start..end
}

/// A row's tags: owned pairs (0.1.0 guests, tests) or a range of a 0.2.0 output's columns.
#[derive(Debug, Clone, Copy)]
pub enum Tags<'a> {
    Pairs(&'a [(String, String)]),
    Columns {
        keys: TextColumn<'a>,
        values: TextColumn<'a>,
        start: usize,
        end: usize,
    },
}

impl<'a> Tags<'a> {
    /// Number of pairs, duplicates included.
    pub fn len(&self) -> usize {
        match self {
            Tags::Pairs(p) => p.len(),
            Tags::Columns { start, end, .. } => end - start,
        }
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pair `j` (0-based within this row).
    pub fn get(&self, j: usize) -> (&'a str, &'a str) {
        match self {
            Tags::Pairs(p) => p.get(j).map_or(("", ""), |(k, v)| (k, v)),
            Tags::Columns {
                keys,
                values,
                start,
                ..
            } => (keys.get(start + j), values.get(start + j)),
        }
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        (0..self.len()).map(|j| self.get(j))
    }
}

/// An event row borrowed from a call's output; `None` host columns are filled on the way
/// out (see [`RowRef::to_row`] and `TableBatcher::push_ref`).
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub timestamp: Option<i64>,
    pub entity_id: &'a str,
    pub event_type: &'a str,
    pub source: &'a str,
    pub environment: &'a str,
    pub message: &'a str,
    pub tags: Tags<'a>,
    pub attributes: &'a str,
    pub trace_id: Option<&'a str>,
    pub id: Option<&'a str>,
    pub created_at: Option<i64>,
}

/// A metric row borrowed from a call's output.
#[derive(Debug, Clone, Copy)]
pub struct MetricRef<'a> {
    pub metric_name: &'a str,
    pub entity_id: &'a str,
    pub timestamp: Option<i64>,
    pub source: &'a str,
    pub environment: &'a str,
    pub metric_value: f64,
    pub metric_type: MetricType,
    pub unit: Option<&'a str>,
    pub tags: Tags<'a>,
    pub metadata: &'a str,
    pub created_at: Option<i64>,
    pub id: Option<&'a str>,
}

/// One output row without copying its strings: the worker appends these straight to the
/// Arrow builders (copying each string once, from the guest's output into the column).
#[derive(Debug, Clone, Copy)]
pub enum RowRef<'a> {
    Event(EventRef<'a>),
    Metric(MetricRef<'a>),
}

impl<'a> From<&'a Row> for RowRef<'a> {
    fn from(row: &'a Row) -> Self {
        match row {
            Row::Event(e) => RowRef::Event(EventRef {
                timestamp: e.timestamp,
                entity_id: &e.entity_id,
                event_type: &e.event_type,
                source: &e.source,
                environment: &e.environment,
                message: &e.message,
                tags: Tags::Pairs(&e.tags),
                attributes: &e.attributes,
                trace_id: e.trace_id.as_deref(),
                id: e.id.as_deref(),
                created_at: e.created_at,
            }),
            Row::Metric(m) => RowRef::Metric(MetricRef {
                metric_name: &m.metric_name,
                entity_id: &m.entity_id,
                timestamp: m.timestamp,
                source: &m.source,
                environment: &m.environment,
                metric_value: m.metric_value,
                metric_type: m.metric_type,
                unit: m.unit.as_deref(),
                tags: Tags::Pairs(&m.tags),
                metadata: &m.metadata,
                created_at: m.created_at,
                id: m.id.as_deref(),
            }),
        }
    }
}

impl RowRef<'_> {
    /// The row's id as given by the transform, `None` when it left it to the host (missing
    /// or empty).
    fn given_id(&self) -> Option<&str> {
        let id = match self {
            RowRef::Event(e) => e.id,
            RowRef::Metric(m) => m.id,
        };
        id.filter(|s| !s.is_empty())
    }

    /// About how many bytes the row takes as the sinks store it: its text columns, tags as
    /// their JSON object, and a fixed part for the numbers and lineage. An upper-bound check
    /// (`limits.max_row_bytes`), not an exact size.
    pub fn approx_bytes(&self) -> usize {
        let opt = |s: Option<&str>| s.map_or(0, str::len);
        let tags = |t: &Tags<'_>| t.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>();
        256 + match self {
            RowRef::Event(e) => {
                e.entity_id.len()
                    + e.event_type.len()
                    + e.source.len()
                    + e.environment.len()
                    + e.message.len()
                    + tags(&e.tags)
                    + e.attributes.len()
                    + opt(e.trace_id)
                    + opt(e.id)
            }
            RowRef::Metric(m) => {
                m.metric_name.len()
                    + m.entity_id.len()
                    + m.source.len()
                    + m.environment.len()
                    + opt(m.unit)
                    + tags(&m.tags)
                    + m.metadata.len()
                    + opt(m.id)
            }
        }
    }

    /// Check what the host cannot store: `attributes`/`metadata` must be JSON objects.
    pub fn check(&self) -> Result<(), String> {
        match self {
            RowRef::Event(e) => check_object("attributes", e.attributes),
            RowRef::Metric(m) => check_object("metadata", m.metadata),
        }
    }

    /// The row's stored id as row `index` of the message at (`topic`, `partition`,
    /// `offset`): the transform's, or the deterministic [`row_id`] (formatted into `buf`)
    /// when it left it missing or empty.
    pub fn id<'s>(
        &'s self,
        buf: &'s mut [u8; 36],
        (topic, partition, offset): (&str, i32, i64),
        index: usize,
    ) -> &'s str {
        match self.given_id() {
            Some(id) => id,
            None => {
                *buf = row_id_text(topic, partition, offset, index);
                // ASCII by construction.
                std::str::from_utf8(buf).unwrap_or_default()
            }
        }
    }

    /// An owned, completed copy as row `index` of message `m`: the id from [`RowRef::id`],
    /// missing `timestamp`/`created_at` the processing time `now_us`
    /// (`TableBatcher::push_ref` fills the same values).
    pub fn to_row(&self, m: &Message, index: usize, now_us: i64) -> Row {
        let mut buf = [0; 36];
        let id = Some(
            self.id(&mut buf, (&m.topic, m.partition, m.offset), index)
                .to_string(),
        );
        let pairs = |t: &Tags<'_>| -> Vec<(String, String)> {
            t.iter().map(|(k, v)| (k.into(), v.into())).collect()
        };
        match self {
            RowRef::Event(e) => Row::Event(Event {
                timestamp: Some(e.timestamp.unwrap_or(now_us)),
                entity_id: e.entity_id.into(),
                event_type: e.event_type.into(),
                source: e.source.into(),
                environment: e.environment.into(),
                message: e.message.into(),
                tags: pairs(&e.tags),
                attributes: e.attributes.into(),
                trace_id: e.trace_id.map(Into::into),
                id,
                created_at: Some(e.created_at.unwrap_or(now_us)),
            }),
            RowRef::Metric(x) => Row::Metric(Metric {
                metric_name: x.metric_name.into(),
                entity_id: x.entity_id.into(),
                timestamp: Some(x.timestamp.unwrap_or(now_us)),
                source: x.source.into(),
                environment: x.environment.into(),
                metric_value: x.metric_value,
                metric_type: x.metric_type,
                unit: x.unit.map(Into::into),
                tags: pairs(&x.tags),
                metadata: x.metadata.into(),
                created_at: Some(x.created_at.unwrap_or(now_us)),
                id,
            }),
        }
    }
}

/// Check that `text`, the column `what`, is a JSON object (what the host stores there).
pub fn check_object(what: &str, text: &str) -> Result<(), String> {
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

/// Cut `s` to at most `max` bytes, at a char boundary, with a marker saying how many bytes
/// went; true when it was cut. For texts from guests and records that have a size limit
/// (log lines, counter names, dead-letter error headers).
pub fn cut_with_marker(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    let dropped = s.len() - at;
    s.truncate(at);
    s.push_str(&format!("…[{dropped} bytes cut]"));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::row_id;

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
    fn to_row_fills_host_columns_and_keeps_given_ones() {
        let mut given = event("{\"a\":1}");
        if let Row::Event(e) = &mut given {
            e.id = Some("mine".into());
            e.timestamp = Some(5);
        }
        let mut empty_id = event("{}");
        if let Row::Event(e) = &mut empty_id {
            e.id = Some(String::new());
        }
        let Row::Event(e0) = RowRef::from(&event("{}")).to_row(&msg(), 0, 1000) else {
            unreachable!()
        };
        let Row::Event(e1) = RowRef::from(&given).to_row(&msg(), 1, 1000) else {
            unreachable!()
        };
        let Row::Event(e2) = RowRef::from(&empty_id).to_row(&msg(), 2, 1000) else {
            unreachable!()
        };
        assert_eq!(
            e0.id.as_deref(),
            Some(row_id("raw-logs", 3, 42, 0).as_str())
        );
        assert_eq!((e0.timestamp, e0.created_at), (Some(1000), Some(1000)));
        assert_eq!((e1.id.as_deref(), e1.timestamp), (Some("mine"), Some(5)));
        assert_eq!(e2.id, Some(row_id("raw-logs", 3, 42, 2)));
    }

    #[test]
    fn check_rejects_non_object_attributes() {
        for bad in ["[1]", "\"x\"", "{", ""] {
            let row = event(bad);
            let err = RowRef::from(&row).check().unwrap_err();
            assert!(err.contains("attributes"), "{bad}: {err}");
        }
        assert_eq!(RowRef::from(&event(" {\"a\": [1]}")).check(), Ok(()));
    }

    #[test]
    fn text_columns_are_checked_once_and_sliced() {
        assert!(TextColumn::checked("abc", &[1, 0]).is_none());
        assert!(TextColumn::checked("abc", &[4]).is_none());
        assert!(TextColumn::checked("é", &[1]).is_none());
        let c = TextColumn::checked("aébc", &[1, 3, 3, 5]).unwrap();
        let all: Vec<_> = (0..c.len()).map(|i| c.get(i)).collect();
        assert_eq!(all, ["a", "é", "", "bc"]);
        assert_eq!(c.get(9), "");
    }
}
