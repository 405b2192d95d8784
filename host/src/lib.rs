//! vast-processor: Kafka telemetry → sandboxed WebAssembly transforms → Arrow → VAST
//! Database (or Parquet).
//!
//! Stages, each with a small boundary type so tests can feed any of them from memory:
//! - [`wasm`]: the transform runtime (`Message` in, [`wasm::MessageResult`] out);
//! - [`rows`]: host-assigned columns and row rendering;
//! - [`batch`]: rows to Arrow `RecordBatch`es; [`sink`]: where batches go (Parquet);
//! - [`source`]: Kafka consumer group and file replay; [`pipeline`]: the workers between
//!   them, and the delivered-offset tracking; [`deadletter`]: rejected records;
//! - [`config`], [`enrichment`], [`registry`]: what runs where; [`generate`]: sample data;
//! - [`cli`]: the commands.

pub mod admin;
pub mod batch;
pub mod bench;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod enrichment;
pub mod generate;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod reload;
pub mod rows;
pub mod sink;
pub mod source;
pub mod vast;
pub mod wasm;
