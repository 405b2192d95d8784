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
use crate::transform::reload::{DeploymentStore, LiveTransform};
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
    load_pipelines_with_state(config, engine, None)
}

/// [`load_pipelines`] with the deployment records under `state_dir`: a transform file whose
/// content was rejected or rolled back (or that cannot be loaded at all) does not run; the
/// pipeline's last accepted version does, with a WARN and `/transforms` naming the file.
/// Without a record (a first start) the file runs and is recorded as accepted.
pub fn load_pipelines_with_state(
    config: &Config,
    engine: &TransformEngine,
    state_dir: Option<&std::path::Path>,
) -> Result<Vec<PipelineSpec>, LoadError> {
    let mut specs = Vec::new();
    for p in &config.pipelines {
        let settings = loader::instance_settings(p, &config.base_dir)?;
        let file = match resolve_transform(&p.transform, &config.base_dir)? {
            TransformSource::File(f) => Some(f),
            TransformSource::Bundled(_) => None,
        };
        let store = match (state_dir, &file) {
            (Some(dir), Some(_)) => match DeploymentStore::open(dir, p.name()) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(pipeline = p.name(), error = %e, "deployment record unreadable; the transform file runs as on a first start");
                    None
                }
            },
            _ => None,
        };
        let max = p.limits.max_component_bytes();
        let from_file = || -> Result<(Arc<TransformModule>, Option<Vec<u8>>), LoadError> {
            match &file {
                Some(f) => {
                    let bytes = loader::read_component(f, max)?;
                    let name = f
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or("transform");
                    let module = engine.load(name, &bytes)?;
                    TransformInstance::new(module.clone(), settings.clone())?;
                    Ok((module, Some(bytes)))
                }
                None => {
                    let module =
                        loader::load_transform(engine, &p.transform, &config.base_dir, max)?;
                    TransformInstance::new(module.clone(), settings.clone())?;
                    Ok((module, None))
                }
            }
        };
        let loaded = from_file();
        // Why the file does not run, when its content was refused or cannot be loaded.
        let refused = match (&loaded, &store) {
            (Ok((m, _)), Some(s)) => s.refusal(m.content_hash()).map(|r| {
                (
                    m.content_hash().to_string(),
                    format!("its content was {} before: {}", r.decision, r.reason),
                )
            }),
            (Err(e), Some(_)) => Some((String::new(), e.to_string())),
            _ => None,
        };
        let fallback = refused.as_ref().and_then(|(hash, why)| {
            let s = store.as_ref()?;
            let (good, bytes) = s.last_accepted(hash)?;
            let name = file
                .as_ref()
                .and_then(|f| f.file_stem())
                .and_then(|s| s.to_str())
                .unwrap_or("transform");
            match engine
                .load(name, &bytes)
                .map_err(LoadError::from)
                .and_then(|m| {
                    TransformInstance::new(m.clone(), settings.clone())?;
                    Ok(m)
                }) {
                Ok(m) => Some((m, hash.clone(), why.clone())),
                Err(e) => {
                    tracing::warn!(pipeline = p.name(), version = %good, error = %e, "the last accepted version cannot run either");
                    None
                }
            }
        });
        let (module, refused_file) = match (loaded, fallback) {
            (_, Some((m, hash, why))) => (m, Some((hash, why))),
            (Ok((m, bytes)), None) => {
                if let (Some((_, why)), Some(f)) = (&refused, &file) {
                    tracing::warn!(pipeline = p.name(), file = %f.display(), reason = %why, "no accepted version is kept to run instead; the refused file runs");
                }
                if let Some(Err(e)) = store
                    .as_ref()
                    .map(|s| s.accept(m.content_hash(), bytes.as_deref()))
                {
                    tracing::warn!(pipeline = p.name(), error = %e, "cannot write the deployment record");
                }
                (m, None)
            }
            (Err(e), None) => return Err(e),
        };
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
        if let Some(s) = store {
            spec.live.attach_state(s.clone());
            if let (Some((hash, why)), Some(f)) = (refused_file, &file) {
                tracing::warn!(pipeline = p.name(), file = %f.display(), reason = %why, running = spec.live.current().module.version(), "transform file refused at start; the last accepted version runs");
                spec.live.start_refusing(f, &hash, &why);
                let _ = s.running(spec.live.current().module.content_hash());
            }
        }
        spec.file = file;
        specs.push(spec);
    }
    Ok(specs)
}
