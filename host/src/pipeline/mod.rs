//! The runtime between the sources and the sinks. Sources push records into one
//! [`Runtime`] (its worker pool, bounded queues, shutdown watchdog); each [`Worker`] runs a
//! pipeline's transform on them, batches the rows to Arrow and flushes them to the sink with
//! their dead letters, and only then advances the [`DeliveredOffsets`], which the source's
//! [`Committer`] commits (Kafka's; file replay commits nothing).

pub mod offsets;
pub mod runtime;

pub mod worker;

pub use crate::metrics::RunStats;
pub use offsets::DeliveredOffsets;
pub use runtime::{Committer, NoCommit, Runtime, RuntimeError, RuntimeOptions, WorkerThreads};
pub use worker::{FlushReason, Worker, WorkerEnv, WorkerError};

use crate::config::{BatchConfig, Config, ReloadConfig, TransformSource, resolve_transform};
use crate::transform::loader::{self, LoadError};
use crate::transform::reload::LiveTransform;
use crate::transform::wasm::{
    InstanceSettings, TransformEngine, TransformInstance, TransformModule,
};
use std::sync::Arc;

/// Everything needed to run one pipeline (one input topic).
#[derive(Clone)]
pub struct PipelineSpec {
    pub name: String,
    pub topic: String,
    pub dead_letter_topic: Option<String>,
    pub batch: BatchConfig,
    /// The running version of the transform (hot-swappable): module, settings, limits.
    pub live: Arc<LiveTransform>,
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
        reload: ReloadConfig,
    ) -> Self {
        let live = Arc::new(LiveTransform::new(name, module, settings, reload));
        PipelineSpec {
            name: name.into(),
            topic: topic.into(),
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
        let module = loader::load_transform(
            engine,
            &p.transform,
            &config.base_dir,
            p.limits.max_component_bytes(),
        )?;
        let settings = loader::instance_settings(p, &config.base_dir)?;
        TransformInstance::new(module.clone(), settings.clone())?;
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
        if let TransformSource::File(f) = resolve_transform(&p.transform, &config.base_dir)? {
            spec.file = Some(f);
        }
        specs.push(spec);
    }
    Ok(specs)
}
