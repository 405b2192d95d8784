//! vast-processor: Kafka telemetry → sandboxed WebAssembly transforms → Arrow → VAST
//! Database (or Parquet). The flow, one way, and the module that owns each step:
//! - [`source`]: the Kafka consumer group and file replay read records as [`model::Message`]s
//!   and push them into the runtime;
//! - [`pipeline`]: the runtime: worker pool, batching hand-off, delivered offsets, and the
//!   [`pipeline::Committer`] that commits them (Kafka's; file replay commits nothing);
//! - [`transform`]: each pipeline's wasm component turns a batch into rows ([`model::Row`]),
//!   with its loader, hot reload and enrichment tables;
//! - [`batch`]: rows into Arrow `RecordBatch`es; [`sink`]: Parquet, VAST, dead letters;
//! - [`model`]: the host's own records, rows and tables (the ground floor, imports nothing);
//! - [`config`]: `pipelines.toml` as serde types; [`admin`], [`metrics`]: health and
//!   Prometheus; [`generate`]: sample telemetry; [`cli`]: the commands (nothing imports it).

pub mod admin;
pub mod batch;
pub mod cli;
pub mod config;
pub mod generate;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod transform;
