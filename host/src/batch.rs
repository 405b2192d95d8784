//! Rows to Arrow: per-table builders with exactly the schemas of the telemetry contract, plus
//! the lineage columns, flushed into `RecordBatch`es.

use crate::rows::{EventRef, MetricRef, RowRef, Tags};
use crate::wasm::Row;
use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, PrimitiveBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::types::ArrowPrimitiveType;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The output tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Events,
    Metrics,
}

impl Table {
    /// Both tables.
    pub const ALL: [Table; 2] = [Table::Events, Table::Metrics];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Metrics => "metrics",
        }
    }

    /// The table's Arrow schema, with or without lineage columns.
    pub fn schema(self, lineage: bool) -> SchemaRef {
        static SCHEMAS: OnceLock<[SchemaRef; 4]> = OnceLock::new();
        let s = SCHEMAS.get_or_init(|| {
            [
                build_schema(Table::Events, false),
                build_schema(Table::Events, true),
                build_schema(Table::Metrics, false),
                build_schema(Table::Metrics, true),
            ]
        });
        s[(self as usize) * 2 + lineage as usize].clone()
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

fn build_schema(table: Table, lineage: bool) -> SchemaRef {
    let utf8 = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let mut fields = match table {
        Table::Events => vec![
            Field::new("timestamp", ts(), false),
            utf8("entity_id", false),
            utf8("event_type", false),
            utf8("source", false),
            utf8("environment", false),
            utf8("message", false),
            utf8("tags", false),
            utf8("attributes", false),
            utf8("trace_id", true),
            utf8("id", false),
            Field::new("created_at", ts(), false),
        ],
        Table::Metrics => vec![
            utf8("metric_name", false),
            utf8("entity_id", false),
            Field::new("timestamp", ts(), false),
            utf8("source", false),
            utf8("environment", false),
            Field::new("metric_value", DataType::Float64, false),
            utf8("metric_type", false),
            utf8("unit", true),
            utf8("tags", false),
            utf8("metadata", false),
            Field::new("created_at", ts(), false),
            utf8("id", false),
        ],
    };
    if lineage {
        fields.extend(lineage_fields());
    }
    Arc::new(Schema::new(fields))
}

/// The lineage columns appended to both tables.
pub fn lineage_fields() -> Vec<Field> {
    vec![
        Field::new("source_topic", DataType::Utf8, false),
        Field::new("source_partition", DataType::Int32, false),
        Field::new("source_offset", DataType::Int64, false),
        Field::new("transform_version", DataType::Utf8, false),
    ]
}

/// Where a row came from.
#[derive(Debug, Clone, Copy)]
pub struct Lineage<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub version: &'a str,
}

#[derive(Default)]
struct LineageBuilders {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    version: StringBuilder,
}

impl LineageBuilders {
    fn push(&mut self, l: &Lineage<'_>) {
        self.topic.append_value(l.topic);
        self.partition.append_value(l.partition);
        self.offset.append_value(l.offset);
        self.version.append_value(l.version);
    }
    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(take_strings(&mut self.topic));
        cols.push(take_values(&mut self.partition));
        cols.push(take_values(&mut self.offset));
        cols.push(take_strings(&mut self.version));
    }
}

/// Finish a column and leave an empty builder sized like it. A table's flushes are alike, so
/// the next one fills its columns without regrowing them: growing by doubling from empty
/// copied each column about once more per flush (BENCHMARKS.md, seventh round).
fn take_strings(b: &mut StringBuilder) -> ArrayRef {
    let a = b.finish();
    *b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    Arc::new(a)
}

/// [`take_strings`] for fixed-width columns (the timestamps keep their builder's type).
fn take_values<T: ArrowPrimitiveType>(b: &mut PrimitiveBuilder<T>) -> ArrayRef {
    let a = b.finish();
    *b = PrimitiveBuilder::with_capacity(a.len()).with_data_type(a.data_type().clone());
    Arc::new(a)
}

/// Append a JSON object of string pairs to `buf` (later keys win, as in a JSON parser).
pub fn write_tags(buf: &mut String, tags: &Tags<'_>) {
    // The pairs are sliced once into a stack array (rows carry a handful of tags), so the
    // duplicate check below compares slices instead of re-reading column offsets.
    const STACK: usize = 16;
    let n = tags.len();
    let mut small = [("", ""); STACK];
    let heap: Vec<(&str, &str)>;
    let pairs: &[(&str, &str)] = if n <= STACK {
        for (slot, pair) in small.iter_mut().zip(tags.iter()) {
            *slot = pair;
        }
        &small[..n]
    } else {
        heap = tags.iter().collect();
        &heap
    };
    buf.push('{');
    let mut first = true;
    for (i, (k, v)) in pairs.iter().enumerate() {
        // A later duplicate key replaces an earlier one: skip the earlier.
        if pairs[i + 1..].iter().any(|(k2, _)| k2 == k) {
            continue;
        }
        if !first {
            buf.push(',');
        }
        first = false;
        write_json_str(buf, k);
        buf.push(':');
        write_json_str(buf, v);
    }
    buf.push('}');
}

/// For each byte, its JSON escape: 0 none, `u` as `\u00XX`, else the letter after `\\`.
const ESCAPES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

fn write_json_str(buf: &mut String, s: &str) {
    // Every character JSON requires escaping is ASCII, so scanning bytes is exact for UTF-8,
    // and runs without escapes (nearly all tag text) are copied in one piece. A table lookup
    // per byte is cheaper than a chain of comparisons.
    buf.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPES[usize::from(b)];
        if esc == 0 {
            continue;
        }
        buf.push_str(&s[start..i]);
        buf.push('\\');
        if esc == b'u' {
            let _ = write!(buf, "u{b:04x}");
        } else {
            buf.push(char::from(esc));
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

#[derive(Default)]
struct EventBuilders {
    timestamp: TimestampMicrosecondBuilder,
    entity_id: StringBuilder,
    event_type: StringBuilder,
    source: StringBuilder,
    environment: StringBuilder,
    message: StringBuilder,
    tags: StringBuilder,
    attributes: StringBuilder,
    trace_id: StringBuilder,
    id: StringBuilder,
    created_at: TimestampMicrosecondBuilder,
    lineage: LineageBuilders,
    rows: usize,
}

#[derive(Default)]
struct MetricBuilders {
    metric_name: StringBuilder,
    entity_id: StringBuilder,
    timestamp: TimestampMicrosecondBuilder,
    source: StringBuilder,
    environment: StringBuilder,
    metric_value: Float64Builder,
    metric_type: StringBuilder,
    unit: StringBuilder,
    tags: StringBuilder,
    metadata: StringBuilder,
    created_at: TimestampMicrosecondBuilder,
    id: StringBuilder,
    lineage: LineageBuilders,
    rows: usize,
}

/// Accumulates rows of both tables until a flush.
pub struct TableBatcher {
    lineage: bool,
    events: EventBuilders,
    metrics: MetricBuilders,
    bytes: usize,
    opened: Option<Instant>,
    scratch: String,
}

impl TableBatcher {
    /// A batcher; `lineage` adds the lineage columns.
    pub fn new(lineage: bool) -> Self {
        TableBatcher {
            lineage,
            events: EventBuilders::default(),
            metrics: MetricBuilders::default(),
            bytes: 0,
            opened: None,
            scratch: String::new(),
        }
    }

    /// Rows buffered (both tables).
    pub fn rows(&self) -> usize {
        self.events.rows + self.metrics.rows
    }

    /// Approximate bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest buffered row arrived.
    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    /// Add one completed row (every host column set, as [`RowRef::to_row`] leaves it).
    pub fn push(&mut self, row: &Row, lineage: &Lineage<'_>) {
        self.push_ref(&RowRef::from(row), 0, lineage, 0);
    }

    /// Add row `index` of the message `lineage` names, as the transform returned it; host
    /// columns are filled as [`RowRef::to_row`] fills them, with `now_us` as processing time.
    /// Each string is copied once, from the transform's output into its column.
    pub fn push_ref(&mut self, row: &RowRef<'_>, index: usize, lineage: &Lineage<'_>, now_us: i64) {
        self.opened.get_or_insert_with(Instant::now);
        self.bytes += 64 + lineage.topic.len() + lineage.version.len();
        let mut buf = [0; 36];
        let id = row.id(
            &mut buf,
            (lineage.topic, lineage.partition, lineage.offset),
            index,
        );
        match row {
            RowRef::Event(e) => self.push_event(e, id, now_us, lineage),
            RowRef::Metric(m) => self.push_metric(m, id, now_us, lineage),
        }
    }

    fn push_event(&mut self, e: &EventRef<'_>, id: &str, now_us: i64, lineage: &Lineage<'_>) {
        let b = &mut self.events;
        b.timestamp.append_value(e.timestamp.unwrap_or(now_us));
        b.entity_id.append_value(e.entity_id);
        b.event_type.append_value(e.event_type);
        b.source.append_value(e.source);
        b.environment.append_value(e.environment);
        b.message.append_value(e.message);
        self.scratch.clear();
        write_tags(&mut self.scratch, &e.tags);
        b.tags.append_value(&self.scratch);
        b.attributes.append_value(e.attributes);
        b.trace_id.append_option(e.trace_id);
        b.id.append_value(id);
        b.created_at.append_value(e.created_at.unwrap_or(now_us));
        if self.lineage {
            b.lineage.push(lineage);
        }
        b.rows += 1;
        self.bytes += e.entity_id.len()
            + e.event_type.len()
            + e.source.len()
            + e.environment.len()
            + e.message.len()
            + self.scratch.len()
            + e.attributes.len()
            + e.trace_id.map_or(0, str::len)
            + id.len();
    }

    fn push_metric(&mut self, m: &MetricRef<'_>, id: &str, now_us: i64, lineage: &Lineage<'_>) {
        let b = &mut self.metrics;
        b.metric_name.append_value(m.metric_name);
        b.entity_id.append_value(m.entity_id);
        b.timestamp.append_value(m.timestamp.unwrap_or(now_us));
        b.source.append_value(m.source);
        b.environment.append_value(m.environment);
        b.metric_value.append_value(m.metric_value);
        b.metric_type
            .append_value(crate::rows::metric_type(m.metric_type));
        b.unit.append_option(m.unit);
        self.scratch.clear();
        write_tags(&mut self.scratch, &m.tags);
        b.tags.append_value(&self.scratch);
        b.metadata.append_value(m.metadata);
        b.created_at.append_value(m.created_at.unwrap_or(now_us));
        b.id.append_value(id);
        if self.lineage {
            b.lineage.push(lineage);
        }
        b.rows += 1;
        self.bytes += m.metric_name.len()
            + m.entity_id.len()
            + m.source.len()
            + m.environment.len()
            + self.scratch.len()
            + m.metadata.len()
            + id.len();
    }

    /// Take the buffered rows as one `RecordBatch` per non-empty table and reset.
    pub fn finish(&mut self) -> Vec<(Table, RecordBatch)> {
        let mut out = Vec::with_capacity(2);
        if self.events.rows > 0 {
            let b = &mut self.events;
            let mut cols: Vec<ArrayRef> = vec![
                take_values(&mut b.timestamp),
                take_strings(&mut b.entity_id),
                take_strings(&mut b.event_type),
                take_strings(&mut b.source),
                take_strings(&mut b.environment),
                take_strings(&mut b.message),
                take_strings(&mut b.tags),
                take_strings(&mut b.attributes),
                take_strings(&mut b.trace_id),
                take_strings(&mut b.id),
                take_values(&mut b.created_at),
            ];
            if self.lineage {
                b.lineage.finish(&mut cols);
            }
            b.rows = 0;
            let batch = RecordBatch::try_new(Table::Events.schema(self.lineage), cols)
                .expect("builders match the events schema");
            out.push((Table::Events, batch));
        }
        if self.metrics.rows > 0 {
            let b = &mut self.metrics;
            let mut cols: Vec<ArrayRef> = vec![
                take_strings(&mut b.metric_name),
                take_strings(&mut b.entity_id),
                take_values(&mut b.timestamp),
                take_strings(&mut b.source),
                take_strings(&mut b.environment),
                take_values(&mut b.metric_value),
                take_strings(&mut b.metric_type),
                take_strings(&mut b.unit),
                take_strings(&mut b.tags),
                take_strings(&mut b.metadata),
                take_values(&mut b.created_at),
                take_strings(&mut b.id),
            ];
            if self.lineage {
                b.lineage.finish(&mut cols);
            }
            b.rows = 0;
            let batch = RecordBatch::try_new(Table::Metrics.schema(self.lineage), cols)
                .expect("builders match the metrics schema");
            out.push((Table::Metrics, batch));
        }
        self.bytes = 0;
        self.opened = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::{Event, Metric, MetricType};
    use arrow_array::{Array, StringArray};

    fn event(tags: Vec<(&str, &str)>) -> Row {
        Row::Event(Event {
            timestamp: Some(1),
            entity_id: "e".into(),
            event_type: "log".into(),
            source: "s".into(),
            environment: "p".into(),
            message: "m".into(),
            tags: tags
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            attributes: "{}".into(),
            trace_id: None,
            id: Some("i".into()),
            created_at: Some(2),
        })
    }

    fn lin() -> Lineage<'static> {
        Lineage {
            topic: "t",
            partition: 1,
            offset: 7,
            version: "v@1",
        }
    }

    #[test]
    fn schemas_follow_the_contract() {
        let names: Vec<String> = Table::Events
            .schema(false)
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "timestamp",
                "entity_id",
                "event_type",
                "source",
                "environment",
                "message",
                "tags",
                "attributes",
                "trace_id",
                "id",
                "created_at"
            ]
        );
        let m = Table::Metrics.schema(true);
        assert_eq!(m.fields().len(), 16);
        assert!(m.field_with_name("unit").unwrap().is_nullable());
        assert!(!m.field_with_name("metric_value").unwrap().is_nullable());
        assert_eq!(
            m.field_with_name("source_offset").unwrap().data_type(),
            &DataType::Int64
        );
    }

    #[test]
    fn batches_rows_per_table_and_resets() {
        let mut b = TableBatcher::new(true);
        b.push(
            &event(vec![("a", "1"), ("b", "x\"y\n"), ("a", "2")]),
            &lin(),
        );
        b.push(
            &Row::Metric(Metric {
                metric_name: "m".into(),
                entity_id: "e".into(),
                timestamp: Some(3),
                source: "s".into(),
                environment: "p".into(),
                metric_value: 1.5,
                metric_type: MetricType::Counter,
                unit: None,
                tags: vec![],
                metadata: "{}".into(),
                created_at: Some(4),
                id: Some("j".into()),
            }),
            &lin(),
        );
        assert_eq!(b.rows(), 2);
        assert!(b.bytes() > 0 && b.opened().is_some());
        let out = b.finish();
        assert_eq!(out.len(), 2);
        let tags = out[0]
            .1
            .column_by_name("tags")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_string();
        assert_eq!(tags, r#"{"b":"x\"y\n","a":"2"}"#);
        let parsed: serde_json::Value = serde_json::from_str(&tags).unwrap();
        assert_eq!(parsed["a"], "2");
        assert_eq!(out[1].1.column_by_name("unit").unwrap().null_count(), 1);
        assert_eq!((b.rows(), b.bytes(), b.opened()), (0, 0, None));
        assert!(b.finish().is_empty());
    }

    #[test]
    fn json_string_escaping_round_trips() {
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "ctl\u{1}\u{1f}",
            "ünï ✓",
            "tab\tnl\n",
            "cr\r\u{7f}",
        ] {
            let mut buf = String::new();
            write_json_str(&mut buf, s);
            assert_eq!(serde_json::from_str::<String>(&buf).unwrap(), s);
        }
    }
}
