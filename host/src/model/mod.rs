//! The ground floor: the host's own records and rows. A [`Message`] is what a source
//! consumed, a [`Row`] ([`Event`] or [`Metric`]) what a transform made of it, a [`Table`]
//! where the row goes. Every room above speaks these types; the wasm contracts convert to
//! and from them at their edge (`transform::wasm::abi_v2`, `abi_v1`), so the model is not
//! pinned to any ABI. This module imports nothing of the crate.

mod json;
mod view;

pub use json::to_json;
pub(crate) use view::entry;
pub use view::{EventRef, MetricRef, RowRef, Tags, TextColumn, check_object, cut_with_marker};

/// A Kafka record header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// One consumed record: its coordinates, key, headers and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

impl Message {
    /// What the record costs while it is in flight, for the runtime's byte bound: its bytes
    /// plus a fixed allowance for the struct and the allocations around it.
    pub fn footprint(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum();
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + headers + 128
    }
}

/// A row of the `events` table. `None` host columns (`timestamp`, `id`, `created_at`) are
/// filled by the host when the row is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub timestamp: Option<i64>,
    pub entity_id: String,
    pub event_type: String,
    pub source: String,
    pub environment: String,
    pub message: String,
    pub tags: Vec<(String, String)>,
    pub attributes: String,
    pub trace_id: Option<String>,
    pub id: Option<String>,
    pub created_at: Option<i64>,
}

/// The kind of a metric point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Gauge,
    Counter,
    Histogram,
}

impl MetricType {
    /// The type's text as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A row of the `metrics` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub metric_name: String,
    pub entity_id: String,
    pub timestamp: Option<i64>,
    pub source: String,
    pub environment: String,
    pub metric_value: f64,
    pub metric_type: MetricType,
    pub unit: Option<String>,
    pub tags: Vec<(String, String)>,
    pub metadata: String,
    pub created_at: Option<i64>,
    pub id: Option<String>,
}

/// One output row.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Event(Event),
    Metric(Metric),
}

impl Row {
    /// The table the row goes to.
    pub fn table(&self) -> Table {
        match self {
            Row::Event(_) => Table::Events,
            Row::Metric(_) => Table::Metrics,
        }
    }
}

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
    // ASCII by construction.
    String::from_utf8(row_id_text(topic, partition, offset, index).to_vec()).unwrap_or_default()
}

/// [`row_id`] as its 36 ASCII bytes, for callers that copy it on (the Arrow builder).
pub fn row_id_text(topic: &str, partition: i32, offset: i64, index: usize) -> [u8; 36] {
    // Runs once per row: hash from a stack buffer (Kafka topic names are at most 249 bytes).
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
    text
}
