//! Resolving a pipeline's transform to a loaded module and ready instances.

use crate::config::{ConfigError, PipelineConfig, TransformSource, resolve_transform};
use crate::transform::enrichment::{Enrichment, EnrichmentError};
use crate::transform::wasm::{InstanceSettings, TransformEngine, TransformError, TransformModule};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a pipeline's transform could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read transform {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Enrichment(#[from] EnrichmentError),
    #[error(transparent)]
    Transform(#[from] TransformError),
}

/// The bytes of a bundled transform.
pub fn bundled_bytes(name: &str) -> Option<&'static [u8]> {
    vast_guest_artifacts::BUNDLED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
}

/// Load a transform given as a bundled name or a `.wasm` path (relative to `base`).
pub fn load_transform(
    engine: &TransformEngine,
    spec: &str,
    base: &Path,
) -> Result<Arc<TransformModule>, LoadError> {
    match resolve_transform(spec, base)? {
        TransformSource::Bundled(name) => {
            let bytes = bundled_bytes(name)
                .ok_or_else(|| ConfigError::UnknownTransform(name.to_string()))?;
            Ok(engine.load(name, bytes)?)
        }
        TransformSource::File(path) => {
            let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("transform")
                .to_string();
            Ok(engine.load(&name, &bytes)?)
        }
    }
}

/// Instance settings for a pipeline: its init config, limits and loaded enrichment tables.
pub fn instance_settings(p: &PipelineConfig, base: &Path) -> Result<InstanceSettings, LoadError> {
    Ok(InstanceSettings {
        config: p
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        limits: p.limits.clone(),
        enrichment: Arc::new(Enrichment::load(&p.enrichment, base)?),
    })
}
