//! The processing stage shared by the Kafka consumer and the file replay: messages in,
//! transformed by the pipeline's wasm instance, rows batched to Arrow, flushed to the sink
//! with their dead letters, and only then reported as delivered offsets.

pub mod stats;
pub mod worker;

pub use stats::RunStats;
pub use worker::{FlushReason, Worker, WorkerEnv, WorkerError};

use crate::config::{BatchConfig, Config};
use crate::registry::{self, LoadError};
use crate::wasm::{InstanceSettings, TransformEngine, TransformModule};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Everything needed to run one pipeline (one input topic).
#[derive(Clone)]
pub struct PipelineSpec {
    pub name: String,
    pub topic: String,
    pub module: Arc<TransformModule>,
    pub settings: InstanceSettings,
    pub dead_letter_topic: Option<String>,
    pub batch: BatchConfig,
}

/// Load every pipeline of `config`: resolve and compile its transform, load its enrichment
/// tables, and check that `init` accepts its config (so a bad module fails at startup).
pub fn load_pipelines(
    config: &Config,
    engine: &TransformEngine,
) -> Result<Vec<PipelineSpec>, LoadError> {
    let mut specs = Vec::new();
    for p in &config.pipelines {
        let module = registry::load_transform(engine, &p.transform, &config.base_dir)?;
        let settings = registry::instance_settings(p, &config.base_dir)?;
        crate::wasm::TransformInstance::new(module.clone(), settings.clone())?;
        tracing::info!(pipeline = p.name(), topic = %p.topic, transform = module.version(), "pipeline ready");
        specs.push(PipelineSpec {
            name: p.name().to_string(),
            topic: p.topic.clone(),
            module,
            settings,
            dead_letter_topic: p.dead_letter_topic.clone(),
            batch: p.batch.clone(),
        });
    }
    Ok(specs)
}

/// Offsets whose records are durably delivered (rows in the sink, dead letters acknowledged):
/// the next offset to consume per (topic, partition). Workers advance it after each flush;
/// the consumer commits it.
#[derive(Default)]
pub struct DeliveredOffsets {
    inner: Mutex<HashMap<(String, i32), i64>>,
}

impl DeliveredOffsets {
    /// Record that everything before `next` in (topic, partition) is delivered.
    pub fn advance(&self, topic: &str, partition: i32, next: i64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry((topic.to_string(), partition)).or_insert(next);
        *e = (*e).max(next);
    }

    /// A copy of the current positions.
    pub fn snapshot(&self) -> HashMap<(String, i32), i64> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forget partitions (after they were revoked and committed).
    pub fn remove(&self, partitions: &[(String, i32)]) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for tp in partitions {
            m.remove(tp);
        }
    }
}
