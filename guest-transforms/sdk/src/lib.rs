//! Guest-side SDK for vast-processor transforms.
//!
//! A transform is a WebAssembly component implementing the `vast:transform` world in
//! `wit/transform.wit`. This crate gives transform authors:
//! - the types a transform works with ([`Message`], [`Outcome`], [`Row`], [`Event`],
//!   [`Metric`]), the `host` imports, and the [`export_transform!`] macro that exports a
//!   [`Guest`] implementation (the SDK converts to and from the contract's column-wise
//!   batches, see [`abi`]);
//! - helpers for the common chores: JSON scalars that may be numbers or strings, ISO 8601 and
//!   nanosecond timestamps, tags, gzip detection, OTLP decoding;
//! - the logic of the four bundled transforms ([`transforms`]), plain Rust functions that the
//!   bundled components wrap and that native tests and benchmarks call directly.
//!
//! Minimal transform:
//! ```no_run
//! use vast_transform_sdk::{export_transform, Guest, Message, Outcome};
//! struct Mine;
//! impl Guest for Mine {
//!     fn init(_config: Vec<(String, String)>) -> Result<(), String> { Ok(()) }
//!     fn process(batch: Vec<Message>) -> Vec<Outcome> {
//!         batch.iter().map(|m| Outcome::Skip(format!("{} bytes ignored", m.payload.len()))).collect()
//!     }
//! }
//! export_transform!(Mine);
//! ```

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_transform_world",
        default_bindings_module: "vast_transform_sdk::bindings",
        generate_all,
    });
}

pub mod abi;

// Transforms allocate and free a handful of short strings per message, and the canonical ABI
// frees every returned string after each batch: talc does that much faster than dlmalloc,
// and `process_each_scoped` avoids most of it (see arena.rs).
#[cfg(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
pub mod arena;

/// Without the SDK's allocator (natively, or with the `talc` feature off) there is no arena:
/// each of these runs `f` as it is.
#[cfg(not(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
)))]
pub mod arena {
    /// See the wasm build's `arena::scoped`.
    pub fn scoped<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// See the wasm build's `arena::outside`.
    pub fn outside<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// See the wasm build's `arena::scratch`.
    pub fn scratch<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

pub mod gzip;
pub mod json;
pub mod otlp;
pub mod tags;
pub mod time;
pub mod transforms;

pub use bindings::vast::transform::host;
pub use bindings::vast::transform::host::Level;

/// What a transform implements: `init` once per instance, then `process` once per batch.
/// Export it with [`export_transform!`].
pub trait Guest {
    /// Called once per instance with the pipeline's transform config (the `config` table of
    /// its `pipelines.toml` entry); an error rejects the module (a hot reload keeps the
    /// running version).
    fn init(config: Vec<(String, String)>) -> Result<(), String>;

    /// Transform one batch: exactly one outcome per message, in input order.
    fn process(batch: Vec<Message>) -> Vec<Outcome>;
}

/// Export a [`Guest`] implementation as the component's `vast:transform` world. The SDK
/// converts between whole messages and rows and the contract's column-wise batches
/// ([`abi`]).
#[macro_export]
macro_rules! export_transform {
    ($ty:ident) => {
        const _: () = {
            impl $crate::bindings::Guest for $ty {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    <$ty as $crate::Guest>::init(config)
                }

                fn process(
                    batch: $crate::bindings::vast::transform::types::Batch,
                ) -> $crate::bindings::vast::transform::types::Output {
                    $crate::abi::process(batch, <$ty as $crate::Guest>::process)
                }
            }
    $crate::bindings::__export_transform_world!($ty with_types_in $crate::bindings);
        };
    };
}

/// A Kafka record header. A null value is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// One input record, exactly as it was consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Kafka record timestamp, milliseconds since the Unix epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

/// A row of the `events` table. Timestamps are microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `None`: the host uses the processing time.
    pub timestamp: Option<i64>,
    pub entity_id: String,
    pub event_type: String,
    pub source: String,
    pub environment: String,
    pub message: String,
    /// Tag values are always strings; the host stores them as one JSON object.
    pub tags: Vec<(String, String)>,
    /// A JSON object, stored as given (the host checks it is an object).
    pub attributes: String,
    pub trace_id: Option<String>,
    /// `None`: the host derives a deterministic id from topic, partition, offset and row index.
    pub id: Option<String>,
    /// `None`: the host uses the processing time.
    pub created_at: Option<i64>,
}

pub use bindings::vast::transform::types::MetricType;

/// A row of the `metrics` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub metric_name: String,
    pub entity_id: String,
    /// `None`: the host uses the processing time.
    pub timestamp: Option<i64>,
    pub source: String,
    pub environment: String,
    pub metric_value: f64,
    pub metric_type: MetricType,
    pub unit: Option<String>,
    pub tags: Vec<(String, String)>,
    /// A JSON object, stored as given (the host checks it is an object).
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

/// What became of one input message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Zero or more rows (zero is a valid, successful result).
    Rows(Vec<Row>),
    /// Filtered on purpose; the reason is counted, not dead-lettered.
    Skip(String),
    /// Bad input; the record goes to the dead-letter destination with this text.
    Fail(String),
}

/// Per-batch statistics a transform wants reported as guest counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    counters: Vec<(&'static str, i64)>,
}

impl Stats {
    /// Add `delta` to counter `name`.
    pub fn add(&mut self, name: &'static str, delta: i64) {
        match self.counters.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v += delta,
            None => self.counters.push((name, delta)),
        }
    }

    /// The value of counter `name` so far (0 when never added).
    pub fn get(&self, name: &str) -> i64 {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Send the counters to the host through the `counter` import and reset them.
    ///
    /// Only meaningful inside a component; natively the import does not exist, so this is a
    /// no-op there and native tests read the counters with [`Stats::get`] instead.
    pub fn flush(&mut self) {
        #[cfg(target_arch = "wasm32")]
        for (name, delta) in self.counters.drain(..) {
            host::counter(name, delta);
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.counters.clear();
    }
}

/// Run `f` over every message of a batch, one outcome per message, then report counters.
///
/// A panic inside `f` traps the whole call; the host then retries message by message so
/// only the culprit fails. Transforms should still return `Outcome::Fail` for bad input.
pub fn process_each(
    batch: &[Message],
    mut f: impl FnMut(&Message, &mut Stats) -> Outcome,
) -> Vec<Outcome> {
    let mut stats = Stats::default();
    let out = batch.iter().map(|m| f(m, &mut stats)).collect();
    stats.flush();
    out
}

/// Like [`process_each`], but every allocation made while it runs (parsed fields, rows,
/// outcomes) comes from a per-batch arena that is released all at once when the next batch
/// starts, instead of being freed one by one. Faster for transforms that build many small
/// strings; the one rule is that `f` must not keep anything it allocates beyond the batch
/// (no caches in statics filled during `process`). Without the `talc` feature, or natively,
/// it is `process_each`.
pub fn process_each_scoped(
    batch: &[Message],
    f: impl FnMut(&Message, &mut Stats) -> Outcome,
) -> Vec<Outcome> {
    arena::scoped(|| process_each(batch, f))
}

/// Build a message for tests and benchmarks.
pub fn message(topic: &str, offset: i64, payload: impl Into<Vec<u8>>) -> Message {
    Message {
        topic: topic.to_string(),
        partition: 0,
        offset,
        timestamp_ms: None,
        key: None,
        headers: Vec::new(),
        payload: payload.into(),
    }
}
