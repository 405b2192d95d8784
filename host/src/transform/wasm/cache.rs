//! On-disk cache of compiled components, keyed by the component's content hash and the
//! engine's compatibility hash, so a restart does not recompile.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The default cache directory: `$VAST_PROCESSOR_CACHE_DIR`, else `$XDG_CACHE_HOME` or
/// `~/.cache` + `/vast-processor`.
pub fn default_dir() -> Option<PathBuf> {
    // Empty values count as unset, as for every variable of .env.example.
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var("VAST_PROCESSOR_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("vast-processor"))
}

fn entry(dir: &Path, engine: &Engine, content_hash: &str) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{content_hash}-{:016x}.cwasm", h.finish()))
}

/// Load a component compiled earlier, if the cache has a usable one.
pub fn load(dir: &Path, engine: &Engine, content_hash: &str) -> Option<Component> {
    let path = entry(dir, engine, content_hash);
    // Read into memory rather than mmap the file: a file truncated or replaced while mapped
    // would crash the process with SIGBUS.
    let bytes = std::fs::read(&path).ok()?;
    // SAFETY: the file was written by `store` below from `Component::serialize` with an
    // engine of the same compatibility hash (part of the file name); wasmtime additionally
    // checks the header. The cache directory must be writable only by this service's user
    // (see SECURITY.md): whoever can write it can run native code in this process.
    match unsafe { Component::deserialize(engine, &bytes) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled-component cache entry");
            None
        }
    }
}

/// Store a compiled component (best effort: a read-only cache only costs a recompile).
pub fn store(dir: &Path, engine: &Engine, content_hash: &str, component: &Component) {
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = entry(dir, engine, content_hash);
        let tmp = dir.join(format!(".{}.tmp{}", content_hash, std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        tracing::debug!(dir = %dir.display(), error = %e, "could not write compiled-component cache");
    }
}
