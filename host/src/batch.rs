//! Rows to Arrow: per-table builders with exactly the schemas of the telemetry contract, plus
//! the lineage columns, flushed into `RecordBatch`es.

use crate::model::{EventRef, MetricRef, Row, RowRef, Table, Tags};
use arrow_array::types::{
    ArrowPrimitiveType, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef, PrimitiveArray, RecordBatch, StringArray};
use arrow_buffer::{Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// A table's Arrow schema, with or without lineage columns (built once per process).
pub fn schema(table: Table, lineage: bool) -> SchemaRef {
    static SCHEMAS: OnceLock<[SchemaRef; 4]> = OnceLock::new();
    let s = SCHEMAS.get_or_init(|| {
        [
            build_schema(Table::Events, false),
            build_schema(Table::Events, true),
            build_schema(Table::Metrics, false),
            build_schema(Table::Metrics, true),
        ]
    });
    s[(table as usize) * 2 + lineage as usize].clone()
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

/// Drop the rows whose partition has a stored next offset above their own (they landed
/// already, written by an earlier owner of the partition). `None` when the batches carry no
/// lineage columns to tell.
pub fn drop_landed(
    batches: &[(Table, RecordBatch)],
    stored: &std::collections::HashMap<i32, i64>,
) -> Option<Vec<(Table, RecordBatch)>> {
    let mut out = Vec::with_capacity(batches.len());
    for (table, b) in batches {
        let partitions = b
            .column_by_name("source_partition")?
            .as_any()
            .downcast_ref::<PrimitiveArray<Int32Type>>()?;
        let offsets = b
            .column_by_name("source_offset")?
            .as_any()
            .downcast_ref::<PrimitiveArray<Int64Type>>()?;
        let keep: arrow_array::BooleanArray = partitions
            .values()
            .iter()
            .zip(offsets.values().iter())
            .map(|(p, o)| Some(stored.get(p).is_none_or(|next| o >= next)))
            .collect();
        let kept = arrow_select::filter::filter_record_batch(b, &keep).ok()?;
        if kept.num_rows() > 0 {
            out.push((*table, kept));
        }
    }
    Some(out)
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
    topic: Utf8Column,
    partition: ValueColumn<Int32Type>,
    offset: ValueColumn<Int64Type>,
    version: Utf8Column,
}

impl LineageBuilders {
    fn push(&mut self, l: &Lineage<'_>) {
        self.topic.append_value(l.topic);
        self.partition.append_value(l.partition);
        self.offset.append_value(l.offset);
        self.version.append_value(l.version);
    }
    fn columns(&mut self) -> [&mut dyn Column; 4] {
        [
            &mut self.topic,
            &mut self.partition,
            &mut self.offset,
            &mut self.version,
        ]
    }
}

/// A column being filled. Its buffers survive the flush: [`Column::finish`] moves them into
/// the Arrow array without copying, and [`Column::recycle`] takes them back once the sink is
/// done with the batch. Fresh buffers per flush (arrow's builders) had every batch
/// page-fault its memory in again after the allocator returned the last one to the OS:
/// three quarters of the full path's page faults (BENCHMARKS.md, eighth round).
trait Column {
    /// The filled column as an array; the column starts empty.
    fn finish(&mut self) -> ArrayRef;
    /// Take back the buffers of `array` (this column's last [`Column::finish`]) if nothing
    /// else holds them; otherwise reserve as much as it held. Ignored if the column already
    /// has new rows or `array` is of another type.
    fn recycle(&mut self, array: ArrayRef);
}

/// A UTF-8 column: the bytes of every value, their end offsets and (lazily) a validity map.
struct Utf8Column {
    values: Vec<u8>,
    /// Always starts with 0.
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Default for Utf8Column {
    fn default() -> Self {
        Utf8Column {
            values: Vec::new(),
            offsets: vec![0],
            nulls: NullBufferBuilder::new(0),
        }
    }
}

impl Utf8Column {
    fn end(&self) -> i32 {
        // A flush holds at most `max_bytes` (32 MiB by default) of rows; arrow's builder
        // panicked past i32 offsets in the same way.
        i32::try_from(self.values.len()).expect("string column over 2 GiB in one batch")
    }

    fn append_value(&mut self, v: &str) {
        self.values.extend_from_slice(v.as_bytes());
        self.offsets.push(self.end());
        self.nulls.append_non_null();
    }

    fn append_option(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.append_value(v),
            None => {
                self.offsets.push(self.end());
                self.nulls.append_null();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.offsets.len() == 1
    }
}

impl Column for Utf8Column {
    fn finish(&mut self) -> ArrayRef {
        let values = Buffer::from_vec(std::mem::take(&mut self.values));
        let offsets = ScalarBuffer::from(std::mem::replace(&mut self.offsets, vec![0]));
        let nulls = self.nulls.finish();
        // SAFETY: the offsets start at 0, never decrease and end at the values' length, and
        // every value between two offsets was appended from a `&str` (valid UTF-8); arrow's
        // `StringBuilder` skipped the same checks.
        Arc::new(unsafe {
            StringArray::new_unchecked(OffsetBuffer::new_unchecked(offsets), values, nulls)
        })
    }

    fn recycle(&mut self, array: ArrayRef) {
        if !self.is_empty() || array.data_type() != &DataType::Utf8 {
            return;
        }
        // The array's buffers, held only by this `StringArray` once `array` is dropped.
        let owned = StringArray::from(array.to_data());
        drop(array);
        let rows = owned.len();
        let (offsets, values, _) = owned.into_parts();
        let bytes = values.len();
        self.values = reuse(values, bytes);
        self.offsets = reuse(offsets.into_inner().into_inner(), rows + 1);
        self.offsets.push(0);
    }
}

/// `buffer` as an empty `Vec` if it is ours alone, else a new one with room for `capacity`.
fn reuse<T: arrow_buffer::ArrowNativeType>(buffer: Buffer, capacity: usize) -> Vec<T> {
    match buffer.into_vec::<T>() {
        Ok(mut v) => {
            v.clear();
            v
        }
        Err(_) => Vec::with_capacity(capacity),
    }
}

/// A fixed-width column without nulls (times, partitions, offsets, values).
struct ValueColumn<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
}

impl<T: ArrowPrimitiveType> Default for ValueColumn<T> {
    fn default() -> Self {
        ValueColumn { values: Vec::new() }
    }
}

impl<T: ArrowPrimitiveType> ValueColumn<T> {
    fn append_value(&mut self, v: T::Native) {
        self.values.push(v);
    }
}

impl<T: ArrowPrimitiveType> Column for ValueColumn<T> {
    fn finish(&mut self) -> ArrayRef {
        let values = ScalarBuffer::from(std::mem::take(&mut self.values));
        Arc::new(PrimitiveArray::<T>::new(values, None))
    }

    fn recycle(&mut self, array: ArrayRef) {
        if !self.values.is_empty() || array.data_type() != &T::DATA_TYPE {
            return;
        }
        let owned = PrimitiveArray::<T>::from(array.to_data());
        drop(array);
        let rows = owned.len();
        let (_, values, _) = owned.into_parts();
        self.values = reuse(values.into_inner(), rows);
    }
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
    timestamp: ValueColumn<TimestampMicrosecondType>,
    entity_id: Utf8Column,
    event_type: Utf8Column,
    source: Utf8Column,
    environment: Utf8Column,
    message: Utf8Column,
    tags: Utf8Column,
    attributes: Utf8Column,
    trace_id: Utf8Column,
    id: Utf8Column,
    created_at: ValueColumn<TimestampMicrosecondType>,
    lineage: LineageBuilders,
    rows: usize,
}

#[derive(Default)]
struct MetricBuilders {
    metric_name: Utf8Column,
    entity_id: Utf8Column,
    timestamp: ValueColumn<TimestampMicrosecondType>,
    source: Utf8Column,
    environment: Utf8Column,
    metric_value: ValueColumn<Float64Type>,
    metric_type: Utf8Column,
    unit: Utf8Column,
    tags: Utf8Column,
    metadata: Utf8Column,
    created_at: ValueColumn<TimestampMicrosecondType>,
    id: Utf8Column,
    lineage: LineageBuilders,
    rows: usize,
}

impl EventBuilders {
    /// The columns in the events schema's order.
    fn columns(&mut self, lineage: bool) -> Vec<&mut dyn Column> {
        let mut c: Vec<&mut dyn Column> = vec![
            &mut self.timestamp,
            &mut self.entity_id,
            &mut self.event_type,
            &mut self.source,
            &mut self.environment,
            &mut self.message,
            &mut self.tags,
            &mut self.attributes,
            &mut self.trace_id,
            &mut self.id,
            &mut self.created_at,
        ];
        if lineage {
            c.extend(self.lineage.columns());
        }
        c
    }
}

impl MetricBuilders {
    /// The columns in the metrics schema's order.
    fn columns(&mut self, lineage: bool) -> Vec<&mut dyn Column> {
        let mut c: Vec<&mut dyn Column> = vec![
            &mut self.metric_name,
            &mut self.entity_id,
            &mut self.timestamp,
            &mut self.source,
            &mut self.environment,
            &mut self.metric_value,
            &mut self.metric_type,
            &mut self.unit,
            &mut self.tags,
            &mut self.metadata,
            &mut self.created_at,
            &mut self.id,
        ];
        if lineage {
            c.extend(self.lineage.columns());
        }
        c
    }
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
        b.metric_type.append_value(m.metric_type.as_str());
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
        for table in Table::ALL {
            let rows = match table {
                Table::Events => std::mem::take(&mut self.events.rows),
                Table::Metrics => std::mem::take(&mut self.metrics.rows),
            };
            if rows == 0 {
                continue;
            }
            let columns = self.columns(table);
            let cols = columns.into_iter().map(|c| c.finish()).collect();
            let batch = RecordBatch::try_new(schema(table, self.lineage), cols)
                .expect("columns match the table's schema");
            out.push((table, batch));
        }
        self.bytes = 0;
        self.opened = None;
        out
    }

    fn columns(&mut self, table: Table) -> Vec<&mut dyn Column> {
        match table {
            Table::Events => self.events.columns(self.lineage),
            Table::Metrics => self.metrics.columns(self.lineage),
        }
    }

    /// Give back batches from [`TableBatcher::finish`] once the sink is done with them: the
    /// next rows are written into their buffers (see [`Column`]). Columns that already hold
    /// new rows, or whose buffers someone else still holds, are left as they are.
    pub fn recycle(&mut self, batches: Vec<(Table, RecordBatch)>) {
        for (table, batch) in batches {
            let columns = self.columns(table);
            let (_, arrays, _) = batch.into_parts();
            if arrays.len() != columns.len() {
                continue;
            }
            for (c, a) in columns.into_iter().zip(arrays) {
                c.recycle(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Metric, MetricType};
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
        let names: Vec<String> = schema(Table::Events, false)
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
        let m = schema(Table::Metrics, true);
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

    fn message_column(batch: &RecordBatch) -> &StringArray {
        batch
            .column_by_name("message")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
    }

    fn with_message(message: &str, trace_id: Option<&str>) -> Row {
        let Row::Event(mut e) = event(vec![("k", "v")]) else {
            unreachable!()
        };
        e.message = message.into();
        e.trace_id = trace_id.map(Into::into);
        Row::Event(e)
    }

    #[test]
    fn recycled_buffers_are_written_again_and_shared_ones_left_alone() {
        let mut b = TableBatcher::new(true);
        for i in 0..100 {
            b.push(&with_message(&format!("first {i}"), Some("t")), &lin());
        }
        let first = b.finish();
        let buffer = message_column(&first[0].1).value_data().as_ptr();
        b.recycle(first);
        b.push(&with_message("second", None), &lin());
        b.push(&with_message("third", Some("x")), &lin());
        let second = b.finish();
        let batch = &second[0].1;
        // The next batch is written into the same memory, and is read back intact.
        assert_eq!(message_column(batch).value_data().as_ptr(), buffer);
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(message_column(batch).value(0), "second");
        assert_eq!(message_column(batch).value(1), "third");
        let trace = batch.column_by_name("trace_id").unwrap();
        assert_eq!((trace.is_null(0), trace.is_null(1)), (true, false));
        let offsets = batch.column_by_name("source_offset").unwrap();
        assert_eq!(offsets.len(), 2);

        // A batch someone still holds (a sink that kept it) keeps its buffers and values.
        let kept = second[0].1.clone();
        b.recycle(second);
        b.push(&with_message("fourth", None), &lin());
        let third = b.finish();
        assert_ne!(message_column(&third[0].1).value_data().as_ptr(), buffer);
        assert_eq!(message_column(&third[0].1).value(0), "fourth");
        assert_eq!(message_column(&kept).value(0), "second");
        assert_eq!(message_column(&kept).value(1), "third");

        // A batch that did not come from this batcher (here: strings where the events table
        // has times and offsets) is no panic; its columns are left alone.
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        let numbers: ArrayRef = Arc::new(PrimitiveArray::<Int64Type>::from(vec![1]));
        for column in [strings, numbers] {
            let fields: Vec<Field> = (0..15)
                .map(|i| Field::new(format!("c{i}"), column.data_type().clone(), false))
                .collect();
            let foreign =
                RecordBatch::try_new(Arc::new(Schema::new(fields)), vec![column; 15]).unwrap();
            b.recycle(vec![(Table::Events, foreign)]);
        }

        // Rows pushed before a late recycle are kept.
        b.push(&with_message("fifth", None), &lin());
        b.recycle(third);
        let fourth = b.finish();
        assert_eq!(message_column(&fourth[0].1).value(0), "fifth");
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
