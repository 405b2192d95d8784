//! The runtime between the sources and the sinks. Sources push records into one
//! [`Runtime`] (its worker pool, bounded queues, shutdown watchdog); each [`Worker`] runs a
//! pipeline's transform on them, batches the rows to Arrow and flushes them to the sink with
//! their dead letters, and only then advances the [`DeliveredOffsets`], which the source's
//! [`Committer`] commits (Kafka's; file replay commits nothing).

pub mod letters;
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
    /// Its dead letters in the log (summarized, shared by the workers).
    pub letters: Arc<letters::LetterLog>,
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
            letters: Arc::default(),
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

/// How a pipeline starts, next to its module.
enum Start {
    /// The transform (its file, when it has one) runs.
    File,
    /// The file's content was refused (or cannot be loaded): the last accepted version runs.
    Refused { hash: String, why: String },
    /// A version pinned by hand runs, whatever the file holds.
    Pinned,
}

/// The module a pipeline starts with: the pinned version, else the file unless its content
/// was refused (then the last accepted version, if one is kept and runs).
fn choose_module(
    p: &crate::config::PipelineConfig,
    config: &Config,
    engine: &TransformEngine,
    settings: &crate::transform::wasm::InstanceSettings,
    file: Option<&std::path::Path>,
    store: Option<&DeploymentStore>,
) -> Result<(Arc<TransformModule>, Start), LoadError> {
    let max = p.limits.max_component_bytes();
    let name = file.map_or("transform", loader::module_name);
    // A kept version, checked to instantiate with today's settings.
    let kept = |hash: &str, bytes: &[u8]| -> Option<Arc<TransformModule>> {
        let ready = engine
            .load(name, bytes)
            .map_err(LoadError::from)
            .and_then(|m| {
                TransformInstance::new(m.clone(), settings.clone())?;
                Ok(m)
            });
        ready
            .inspect_err(|e| tracing::warn!(pipeline = p.name(), version = %hash, error = %e, "a kept version cannot run"))
            .ok()
    };
    if let Some(s) = store
        && let Some(pin) = s.record().pinned
        && let Some(m) = s.bytes(&pin).and_then(|b| kept(&pin, &b))
    {
        let _ = s.running(&pin);
        return Ok((m, Start::Pinned));
    }
    let loaded = match file {
        Some(f) => loader::load_file(engine, f, max).map(|(m, b)| (m, Some(b))),
        None => {
            loader::load_transform(engine, &p.transform, &config.base_dir, max).map(|m| (m, None))
        }
    }
    .and_then(|(m, b)| {
        TransformInstance::new(m.clone(), settings.clone())?;
        Ok((m, b))
    });
    // Why the file does not run, when its content was refused or cannot be loaded.
    let refused = match (&loaded, store) {
        (Ok((m, _)), Some(s)) => s.refusal(m.content_hash()).map(|r| {
            (
                m.content_hash().to_string(),
                format!("its content was {} before: {}", r.decision, r.reason),
            )
        }),
        (Err(e), Some(_)) => Some((String::new(), e.to_string())),
        _ => None,
    };
    if let (Some((hash, why)), Some(s)) = (&refused, store)
        && let Some(m) = s
            .last_accepted(hash)
            .and_then(|(good, bytes)| kept(&good, &bytes))
    {
        if let Err(e) = s.running(m.content_hash()) {
            tracing::warn!(pipeline = p.name(), error = %e, "cannot write the deployment record");
        }
        return Ok((
            m,
            Start::Refused {
                hash: hash.clone(),
                why: why.clone(),
            },
        ));
    }
    let (m, bytes) = loaded?;
    if let (Some((_, why)), Some(f)) = (&refused, file) {
        tracing::warn!(pipeline = p.name(), file = %f.display(), reason = %why, "no accepted version is kept to run instead; the refused file runs");
    }
    if let Some(Err(e)) = store.map(|s| s.accept(m.content_hash(), bytes.as_deref())) {
        tracing::warn!(pipeline = p.name(), error = %e, "cannot write the deployment record");
    }
    Ok((m, Start::File))
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
    load(config, engine, state_dir, false)
}

/// The pipelines as `run` would start them from the deployment records under `state_dir`
/// (the pinned or last accepted version where the file is refused), for another command
/// (a redrive): the records are read, never written.
pub fn load_pipelines_read_only(
    config: &Config,
    engine: &TransformEngine,
    state_dir: &std::path::Path,
) -> Result<Vec<PipelineSpec>, LoadError> {
    load(config, engine, Some(state_dir), true)
}

fn load(
    config: &Config,
    engine: &TransformEngine,
    state_dir: Option<&std::path::Path>,
    read_only: bool,
) -> Result<Vec<PipelineSpec>, LoadError> {
    let mut specs = Vec::new();
    for p in &config.pipelines {
        let settings = loader::instance_settings(p, &config.base_dir)?;
        let file = match resolve_transform(&p.transform, &config.base_dir)? {
            TransformSource::File(f) => Some(f),
            TransformSource::Bundled(_) => None,
        };
        let store = match (state_dir, &file) {
            (Some(dir), Some(_)) => match if read_only {
                DeploymentStore::open_read_only(dir, p.name())
            } else {
                DeploymentStore::open(dir, p.name())
            } {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(pipeline = p.name(), error = %e, "deployment record unreadable; the transform file runs as on a first start");
                    None
                }
            },
            _ => None,
        };
        let (module, start) = choose_module(
            p,
            config,
            engine,
            &settings,
            file.as_deref(),
            store.as_deref(),
        )?;
        let mut spec = PipelineSpec::new(
            p.name(),
            &p.topic,
            module,
            settings,
            p.dead_letter_topic.clone(),
            p.batch.clone(),
            config.reload.clone(),
        );
        tracing::info!(pipeline = p.name(), topic = %p.topic, transform = spec.live.current().label(), "pipeline ready");
        if let Some(s) = store {
            spec.live.attach_state(s);
            match (start, &file) {
                (Start::Refused { hash, why }, Some(f)) => {
                    tracing::warn!(pipeline = p.name(), file = %f.display(), reason = %why, running = spec.live.current().label(), "transform file refused at start; the last accepted version runs");
                    spec.live.start_refusing(f, &hash, &why);
                }
                (Start::Pinned, Some(f)) => {
                    tracing::warn!(pipeline = p.name(), file = %f.display(), running = spec.live.current().label(), "a version pinned by hand runs; the file is not deployed until `transform unpin`");
                    spec.live.start_pinned();
                }
                _ => {}
            }
        }
        spec.live.set_file(file.clone());
        spec.file = file;
        specs.push(spec);
    }
    Ok(specs)
}
