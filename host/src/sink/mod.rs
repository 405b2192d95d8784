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
use std::collections::HashMap;
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

/// Where the records of one flush came from: per partition of one topic, the offsets it
/// covers, `first..next`. With exactly-once delivery a sink stores `next` with the rows,
/// atomically, and [`Sink::landed`] reads it back when a partition is assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    /// The consumer group the offsets belong to.
    pub group: String,
    pub topic: String,
    /// `(partition, first, next)`.
    pub partitions: Vec<(i32, i64, i64)>,
}

/// How a flush's offsets compare with what the sink already holds for its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// Nothing of it landed: write it all.
    None,
    /// All of it landed already (written by an earlier owner that lost its session): write
    /// nothing, the offsets are where they should be.
    All,
    /// Part landed: drop each partition's rows below its stored next offset.
    Some(HashMap<i32, i64>),
}

impl Landing {
    /// Compare with the stored next offsets of its partitions (absent: nothing stored).
    pub fn overlap(&self, stored: &HashMap<i32, i64>) -> Overlap {
        let mut partial = HashMap::new();
        let mut all = true;
        for &(p, first, next) in &self.partitions {
            let s = stored.get(&p).copied().unwrap_or(i64::MIN);
            if s < next {
                all = false;
            }
            if s > first {
                partial.insert(p, s);
            }
        }
        if all {
            Overlap::All
        } else if partial.is_empty() {
            Overlap::None
        } else {
            Overlap::Some(partial)
        }
    }

    /// What of `batches` is still to write given the `stored` next offsets: `None` when all
    /// of it landed already (a retry after an uncertain write, a zombie's repeat); rows of
    /// offsets that landed are left out. The one place both sinks decide it.
    pub fn unlanded<'a>(
        &self,
        sink: &str,
        batches: &'a [(Table, RecordBatch)],
        stored: &HashMap<i32, i64>,
    ) -> Option<std::borrow::Cow<'a, [(Table, RecordBatch)]>> {
        use std::borrow::Cow;
        match self.overlap(stored) {
            Overlap::All => {
                tracing::debug!(sink, topic = %self.topic, "this flush landed already; nothing written");
                None
            }
            Overlap::None => Some(Cow::Borrowed(batches)),
            Overlap::Some(landed) => match crate::batch::drop_landed(batches, &landed) {
                Some(kept) => {
                    tracing::info!(sink, topic = %self.topic, partitions = ?landed, "part of this flush landed already; the rest written");
                    Some(Cow::Owned(kept))
                }
                None => {
                    tracing::warn!(sink, topic = %self.topic, "part of this flush landed already, but its rows carry no source offsets to leave it out; written again");
                    Some(Cow::Borrowed(batches))
                }
            },
        }
    }

    /// The stored next offset of each partition after this flush lands.
    pub fn after(&self, stored: &HashMap<i32, i64>) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .map(|&(p, _, next)| (p, stored.get(&p).copied().unwrap_or(next).max(next)))
            .collect()
    }
}

/// A destination for flushed rows. One call carries every table of one flush; it returns
/// only when the rows are durable.
pub trait Sink: Send + Sync {
    /// Write the batches of one flush. With `landing` (exactly-once delivery), the sink
    /// stores the flush's next offsets in the same atomic step as the rows, and writes no
    /// row whose offset it already holds.
    fn write(
        &self,
        batches: &[(Table, RecordBatch)],
        landing: Option<&Landing>,
    ) -> Result<(), SinkError>;
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Whether the sink stores offsets with its rows (exactly-once delivery is possible).
    fn stores_offsets(&self) -> bool {
        false
    }
    /// The next offset stored with the rows of each of `partitions` of `group` (absent:
    /// none stored). Called when partitions are assigned, before they are read.
    fn landed(
        &self,
        _group: &str,
        _partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, SinkError> {
        Ok(HashMap::new())
    }
    /// Set the stored next offsets of `partitions` of `group` to these values, lower ones
    /// included: the partition's log no longer reaches what was stored (the topic was
    /// recreated or truncated), so what is stored belongs to records that are gone.
    fn reset_offsets(
        &self,
        _group: &str,
        _partitions: &[((String, i32), i64)],
    ) -> Result<(), SinkError> {
        Ok(())
    }
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
        SinkConfig::Parquet(_) => Ok(Arc::new(parquet::ParquetSink::open(data_dir))),
        SinkConfig::Vast(v) => Ok(Arc::new(vast::VastSink::build(v, base_dir, lineage)?)),
    }
}
