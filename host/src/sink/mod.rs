//! Sinks: where flushed Arrow batches go (Parquet files, VAST Database), and where rejected
//! records go (dead letters). A [`Sink`] write must be durable (or committed) when it returns
//! `Ok`, because offsets are committed right after. Each `[sink]` variant builds its sink
//! here ([`build`]), so `crate::config` stays plain data.

pub mod deadletter;
pub mod parquet;
pub mod vast;

use crate::config::SinkConfig;
use crate::model::Table;
use arrow_array::RecordBatch;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether trying again can help, kept apart from what went wrong (one failure can be
/// temporary for one sink and final for another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Temporary (I/O hiccup, full disk, server busy): retry with backoff.
    Retry,
    /// Retrying cannot help (bad credentials, schema mismatch): stop the pipeline.
    Stop,
}

/// Why a sink write failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("{sink} sink: {source}{}", if self.hint == RetryHint::Retry { " (will retry)" } else { "" })]
pub struct SinkError {
    pub sink: &'static str,
    pub hint: RetryHint,
    #[source]
    pub source: Box<SinkFailure>,
}

/// What went wrong in a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkFailure {
    /// A file system operation (`action` says which: "cannot create", "cannot fsync", ...).
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Parquet encoder.
    #[error("parquet {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: ::parquet::errors::ParquetError,
    },
    /// The VAST tabular API (the hint, when present, says what to check).
    #[error("{source}{hint}")]
    Vast {
        #[source]
        source: vast::client::VastError,
        hint: &'static str,
    },
    /// Anything else a sink reports (test and benchmark sinks).
    #[error("{0}")]
    Other(String),
}

impl SinkError {
    /// A temporary failure of `sink`.
    pub fn retry(sink: &'static str, source: SinkFailure) -> Self {
        SinkError {
            sink,
            hint: RetryHint::Retry,
            source: Box::new(source),
        }
    }

    /// A failure of `sink` that retrying cannot fix.
    pub fn stop(sink: &'static str, source: SinkFailure) -> Self {
        SinkError {
            sink,
            hint: RetryHint::Stop,
            source: Box::new(source),
        }
    }

    /// True when the write may succeed if tried again.
    pub fn is_retriable(&self) -> bool {
        self.hint == RetryHint::Retry
    }
}

/// A destination for flushed rows. One call carries every table of one flush; it returns
/// only when the rows are durable.
pub trait Sink: Send + Sync {
    /// Write the batches of one flush.
    fn write(&self, batches: &[(Table, RecordBatch)]) -> Result<(), SinkError>;
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Is the sink reachable and writable right now? (for `/readyz`; must be cheap)
    fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Build the configured sink. `base_dir` resolves relative paths of the config file,
/// `data_dir` is the Parquet output directory (`--data-dir` or `sink.data_dir`), `lineage`
/// whether rows carry the lineage columns. The VAST sink connects, checks the server and
/// prepares its tables here, so a bad setting stops the start.
pub fn build(
    config: &SinkConfig,
    base_dir: &Path,
    data_dir: &Path,
    lineage: bool,
) -> Result<Arc<dyn Sink>, vast::BuildError> {
    match config {
        SinkConfig::Parquet(_) => Ok(Arc::new(parquet::ParquetSink::new(data_dir))),
        SinkConfig::Vast(v) => Ok(Arc::new(vast::VastSink::build(v, base_dir, lineage)?)),
    }
}
