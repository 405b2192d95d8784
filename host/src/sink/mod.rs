//! Sinks: where flushed Arrow batches go. A [`Sink`] write must be durable (or committed)
//! when it returns `Ok`, because offsets are committed right after.

pub mod parquet;
pub mod vast;

use crate::batch::Table;
use arrow_array::RecordBatch;

/// Why a sink write failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// Temporary (I/O hiccup, full disk, server busy): retry with backoff.
    #[error("{sink} sink: {message} (will retry)")]
    Retriable { sink: &'static str, message: String },
    /// Retrying cannot help (bad credentials, schema mismatch): stop the pipeline.
    #[error("{sink} sink: {message}")]
    Fatal { sink: &'static str, message: String },
}

impl SinkError {
    /// True when the write may succeed if tried again.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable { .. })
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
