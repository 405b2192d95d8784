//! `[[pipelines]]`: one input topic, its transform, the transform's settings and limits,
//! enrichment tables, dead-letter topic and flush thresholds.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[pipelines.batch]`: when accumulated rows are flushed to the sink.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Flush when this many rows (all tables) are buffered.
    pub max_rows: usize,
    /// Flush when the buffered rows take about this many bytes.
    pub max_bytes: usize,
    /// Flush when the oldest buffered row is this old, in milliseconds.
    pub max_age_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 100_000,
            max_bytes: 32 * 1024 * 1024,
            max_age_ms: 5_000,
        }
    }
}

/// One `[[pipelines]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Label used in logs and metrics; defaults to the topic.
    #[serde(default)]
    pub name: Option<String>,
    /// The Kafka topic to read.
    pub topic: String,
    /// A bundled transform name, or a path to a `.wasm` component (relative to this file).
    pub transform: String,
    /// Key/values passed to the transform's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Enrichment tables the transform can `lookup`.
    #[serde(default)]
    pub enrichment: BTreeMap<String, TableSpec>,
    /// Per-instance sandbox limits.
    #[serde(default)]
    pub limits: Limits,
    /// Kafka topic that receives records the transform rejects; without one they go to
    /// files under `<data_dir>/dead_letter/`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Flush thresholds.
    #[serde(default)]
    pub batch: BatchConfig,
}

impl PipelineConfig {
    /// The pipeline's label.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.topic)
    }
}

/// One enrichment table in `pipelines.toml`: `[pipelines.enrichment.<name>]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// CSV (`.csv`) or JSON (`.json`) file, relative to the config file.
    pub path: PathBuf,
    /// CSV only: the column holding the lookup key (default: the first column).
    #[serde(default)]
    pub key: Option<String>,
}

/// The largest `limits.max_row_bytes`: a row must fit one VAST insert request (4.5 MiB).
pub const MAX_ROW_BYTES: usize = 4 << 20;

/// Limits applied to every instance of a pipeline's transform.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap per instance, in MiB.
    pub memory_mib: u64,
    /// CPU deadline for one `process` (or `init`) call, in milliseconds.
    pub deadline_ms: u64,
    /// Most rows one message may produce; more is a failure of that message.
    pub max_rows_per_message: usize,
    /// Largest row (its text columns, about as the sinks store it); a larger row is a
    /// contract failure of its message (dead-lettered). The default keeps a row within one
    /// VAST insert request (4.5 MiB) with room for the lineage columns and framing.
    pub max_row_bytes: usize,
    /// Largest `.wasm` file read for the transform, in MiB (a file is read whole into
    /// memory; Python and JavaScript components are 12-20 MiB).
    pub max_component_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            deadline_ms: 2_000,
            max_rows_per_message: 10_000,
            max_row_bytes: MAX_ROW_BYTES,
            max_component_mib: 64,
        }
    }
}

impl Limits {
    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize).saturating_mul(1024 * 1024)
    }

    /// The component file size cap in bytes.
    pub fn max_component_bytes(&self) -> u64 {
        self.max_component_mib.saturating_mul(1024 * 1024)
    }

    /// The CPU deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}
