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
    /// The running version (hot-swappable); `module`/`settings` are the startup version.
    pub live: Arc<crate::reload::LiveTransform>,
    /// The `.wasm` file the transform was loaded from (watched for hot reload), if any.
    pub file: Option<std::path::PathBuf>,
}

impl PipelineSpec {
    /// A spec whose live version starts at `module`/`settings`.
    pub fn new(
        name: &str,
        topic: &str,
        module: Arc<TransformModule>,
        settings: InstanceSettings,
        dead_letter_topic: Option<String>,
        batch: BatchConfig,
        reload: crate::reload::ReloadConfig,
    ) -> Self {
        let live = Arc::new(crate::reload::LiveTransform::new(
            name,
            module.clone(),
            settings.clone(),
            reload,
        ));
        PipelineSpec {
            name: name.into(),
            topic: topic.into(),
            module,
            settings,
            dead_letter_topic,
            batch,
            live,
            file: None,
        }
    }
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
        let mut spec = PipelineSpec::new(
            p.name(),
            &p.topic,
            module,
            settings,
            p.dead_letter_topic.clone(),
            p.batch.clone(),
            config.reload.clone(),
        );
        if let crate::config::TransformSource::File(f) =
            crate::config::resolve_transform(&p.transform, &config.base_dir)?
        {
            spec.file = Some(f);
        }
        specs.push(spec);
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
