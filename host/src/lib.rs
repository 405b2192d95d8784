//! vast-processor: Kafka telemetry → sandboxed WebAssembly transforms → Arrow → VAST
//! Database (or Parquet).
//!
//! Stages, each with a small boundary type so tests can feed any of them from memory:
//! - [`wasm`]: the transform runtime (`Message` in, [`wasm::MessageResult`] out);
//! - [`rows`]: host-assigned columns and row rendering;
//! - [`config`], [`enrichment`], [`registry`]: what runs where;
//! - [`cli`]: the commands.

pub mod cli;
pub mod config;
pub mod enrichment;
pub mod registry;
pub mod rows;
pub mod wasm;
