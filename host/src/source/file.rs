//! The file source: replay or backfill a topic from files through the same transform, batch
//! and sink path as Kafka, without a broker.

use crate::cli::transform_test::{Format, read_inputs};
use crate::deadletter::DeadLetterWriter;
use crate::pipeline::{
    DeliveredOffsets, FlushReason, PipelineSpec, RunStats, Worker, WorkerEnv, WorkerError,
};
use crate::sink::Sink;
use crate::wasm::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// Replay `inputs` as records of `spec.topic` (partition 0, offsets counting from 0).
/// Dead letters go to files under `data_dir/dead_letter/`.
pub fn replay(
    mut spec: PipelineSpec,
    inputs: &[PathBuf],
    format: Format,
    sink: Arc<dyn Sink>,
    data_dir: &Path,
    lineage: bool,
    stats: Arc<RunStats>,
) -> Result<(), ReplayError> {
    let msgs = read_inputs(inputs, format).map_err(|e| ReplayError::Input(format!("{e:#}")))?;
    // No broker: dead letters always go to files.
    spec.dead_letter_topic = None;
    let topic = spec.topic.clone();
    let env = WorkerEnv {
        sink,
        delivered: Arc::new(DeliveredOffsets::default()),
        stats,
        abort: Arc::new(AtomicBool::new(false)),
        lineage,
        metrics: Arc::new(crate::metrics::Metrics::new([(
            spec.name.as_str(),
            spec.topic.as_str(),
        )])),
    };
    let dead_letters = DeadLetterWriter::new(None, data_dir.to_path_buf());
    let mut worker = Worker::new(0, Arc::new(vec![spec]), env, dead_letters);
    let mut offset = 0i64;
    let bar = crate::cli::commands::progress(msgs.len() as u64, "records");
    for chunk in msgs.chunks(1024) {
        bar.inc(chunk.len() as u64);
        let batch: Vec<Message> = chunk
            .iter()
            .map(|inp| {
                let m = Message {
                    topic: topic.clone(),
                    partition: 0,
                    offset,
                    timestamp_ms: None,
                    key: None,
                    headers: Vec::new(),
                    payload: inp.payload.clone(),
                };
                offset += 1;
                m
            })
            .collect();
        worker.handle(0, &batch)?;
        worker.flush_due()?;
    }
    worker.flush_all(FlushReason::Shutdown)?;
    bar.finish_and_clear();
    Ok(())
}
