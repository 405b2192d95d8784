//! The loader: a pipeline's transform resolved (a bundled name or a `.wasm` path), its file
//! read within its limits, compiled by the engine, and its instance settings (config,
//! limits, enrichment tables) made ready.

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
    #[error("cannot read transform {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("transform {} is not a regular file (a device, a FIFO or a directory); refused", path.display())]
    NotRegular { path: PathBuf },
    #[error("transform {} is {bytes} bytes, over the limit of {limit} (limits.max_component_mib); refused", path.display())]
    TooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
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
    max_bytes: u64,
) -> Result<Arc<TransformModule>, LoadError> {
    match resolve_transform(spec, base)? {
        TransformSource::Bundled(name) => {
            let bytes = bundled_bytes(name)
                .ok_or_else(|| ConfigError::UnknownTransform(name.to_string()))?;
            Ok(engine.load(name, bytes)?)
        }
        TransformSource::File(path) => Ok(load_file(engine, &path, max_bytes)?.0),
    }
}

/// The name a transform file's versions carry: its file stem.
pub fn module_name(path: &Path) -> &str {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("transform")
}

/// Read (within `max_bytes`) and compile a transform file; its bytes too, for the record.
pub fn load_file(
    engine: &TransformEngine,
    path: &Path,
    max_bytes: u64,
) -> Result<(Arc<TransformModule>, Vec<u8>), LoadError> {
    let bytes = read_component(path, max_bytes)?;
    let module = engine.load(module_name(path), &bytes)?;
    Ok((module, bytes))
}

/// Read a component file: a regular file of at most `max_bytes`, opened without blocking. A
/// symlink to /dev/zero filled memory (4 GB in 5 s), a FIFO blocked the reload thread for
/// good, a 2 GB sparse file took 2 GB: each is refused with a clear error instead.
pub fn read_component(path: &Path, max_bytes: u64) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    // What was opened (after following links) decides, not the path.
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(LoadError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > max_bytes {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            bytes: meta.len(),
            limit: max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file growing while it is read stops at the limit too.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max_bytes {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            bytes: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    Ok(bytes)
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
