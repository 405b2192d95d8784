//! The watcher that drives hot reload: filesystem events (or polling) on transform files,
//! enrichment tables and the config file, debounced, each change turned into a candidate
//! for the pipeline it belongs to.

use super::{LiveTransform, Rejected};
use crate::config::ReloadConfig;
use crate::transform::wasm::TransformEngine;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Merge filesystem events into "this path changed", once it has been quiet for `quiet`.
#[derive(Debug)]
pub struct Debouncer {
    quiet: Duration,
    pending: Vec<(PathBuf, Instant)>,
}

impl Debouncer {
    /// A debouncer with the given quiet time.
    pub fn new(quiet: Duration) -> Self {
        Debouncer {
            quiet,
            pending: Vec::new(),
        }
    }

    /// Note an event on `path` at `now`.
    pub fn touch(&mut self, path: &Path, now: Instant) {
        match self.pending.iter_mut().find(|(p, _)| p == path) {
            Some((_, t)) => *t = now,
            None => self.pending.push((path.to_path_buf(), now)),
        }
    }

    /// Paths quiet since `quiet`, removed from the pending set.
    pub fn ready(&mut self, now: Instant) -> Vec<PathBuf> {
        let quiet = self.quiet;
        let (ready, rest): (Vec<_>, Vec<_>) = self
            .pending
            .drain(..)
            .partition(|(_, t)| now.duration_since(*t) >= quiet);
        self.pending = rest;
        ready.into_iter().map(|(p, _)| p).collect()
    }

    /// When the next path may become ready.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|(_, t)| *t + self.quiet).min()
    }
}

/// What the watcher reloads when a path changes.
pub struct Watched {
    /// A pipeline's `.wasm` file: (live transform, path).
    pub transforms: Vec<(Arc<LiveTransform>, PathBuf)>,
    /// The config file and the config it was loaded as (with the environment applied).
    pub config: Option<(PathBuf, crate::config::Config)>,
    /// Every pipeline's live transform, by pipeline name.
    pub pipelines: Vec<Arc<LiveTransform>>,
}

/// The enrichment files of `config`'s pipelines: (pipeline name, path).
pub fn enrichment_files(config: &crate::config::Config) -> Vec<(String, PathBuf)> {
    config
        .pipelines
        .iter()
        .flat_map(|p| {
            p.enrichment
                .values()
                .map(move |t| (p.name().to_string(), config.base_dir.join(&t.path)))
        })
        .collect()
}

/// Apply a changed config file: pipeline-level changes (transform, its config, limits,
/// enrichment tables) are validated and swapped like a new module; anything else needs a
/// restart and is refused (the running config stays). Returns what was done, for the log.
pub fn apply_config_change(
    current: &mut crate::config::Config,
    path: &Path,
    engine: &TransformEngine,
    lives: &[Arc<LiveTransform>],
) -> Result<Vec<String>, String> {
    let mut new =
        crate::config::Config::load(path).map_err(|e| format!("config change rejected: {e}"))?;
    new.apply_env(std::env::vars())
        .map_err(|e| format!("config change rejected: {e}"))?;
    new.validate_runtime()
        .map_err(|e| format!("config change rejected: {e}"))?;
    let mut restart = Vec::new();
    if new.kafka != current.kafka {
        restart.push("[kafka]");
    }
    if new.sink != current.sink {
        restart.push("[sink]");
    }
    if new.runtime != current.runtime {
        restart.push("[runtime]");
    }
    if new.admin != current.admin {
        restart.push("[admin]");
    }
    if new.reload != current.reload {
        restart.push("[reload]");
    }
    let key = |c: &crate::config::Config| {
        c.pipelines
            .iter()
            .map(|p| {
                (
                    p.name().to_string(),
                    p.topic.clone(),
                    p.dead_letter_topic.clone(),
                    p.batch.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    if key(&new) != key(current) {
        restart.push("the set of pipelines, their topics, dead-letter topics or batch limits");
    }
    if !restart.is_empty() {
        return Err(format!(
            "config change needs a restart ({} changed); refused, the running config stays",
            restart.join(", ")
        ));
    }
    let mut done = Vec::new();
    // A refused pipeline keeps its running entry, so the next edit is compared with what runs.
    let mut next = new.clone();
    for (i, p) in new.pipelines.iter().enumerate() {
        let old = current.pipelines.iter().find(|o| o.name() == p.name());
        let Some(live) = lives.iter().find(|l| l.pipeline == p.name()) else {
            continue;
        };
        let same = old.is_some_and(|o| {
            o.transform == p.transform
                && o.config == p.config
                && o.limits == p.limits
                && o.enrichment == p.enrichment
        });
        if same {
            continue;
        }
        match swap_pipeline(live, p, &new, engine) {
            Ok(()) => done.push(format!("{}: {}", p.name(), live.last().detail)),
            Err(e) => {
                done.push(format!("{}: rejected: {}", p.name(), e.0));
                if let Some(o) = old {
                    next.pipelines[i] = o.clone();
                }
            }
        }
    }
    *current = next;
    Ok(done)
}

/// Build `p`'s module and settings from `config` and offer them to `live`.
pub fn swap_pipeline(
    live: &LiveTransform,
    p: &crate::config::PipelineConfig,
    config: &crate::config::Config,
    engine: &TransformEngine,
) -> Result<(), Rejected> {
    let settings = crate::transform::loader::instance_settings(p, &config.base_dir)
        .map_err(|e| live.reject(e.to_string()))?;
    let module = crate::transform::loader::load_transform(
        engine,
        &p.transform,
        &config.base_dir,
        p.limits.max_component_bytes(),
    )
    .map_err(|e| live.reject(e.to_string()))?;
    let hash = module.content_hash().to_string();
    live.try_swap(module, settings)?;
    // Config-level refusals are not the module's fault: only acceptance is recorded.
    live.record_accepted(&hash, None);
    Ok(())
}

/// Watch the transform files and swap in changed ones; runs until `stop` is set.
pub fn watch(
    watched: Watched,
    engine: Arc<TransformEngine>,
    config: ReloadConfig,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let (tx, rx) = crossbeam_channel::unbounded::<PathBuf>();
            let targets = watched.transforms.clone();
            let handler = move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    // Reads (ours included) are not changes.
                    if matches!(ev.kind, notify::EventKind::Access(_)) {
                        return;
                    }
                    for p in ev.paths {
                        cancel_if_superseded(&targets, &p);
                        let _ = tx.send(p);
                    }
                }
            };
            use notify::Watcher;
            let poll = |handler| -> notify::Result<Box<dyn Watcher>> {
                let cfg = notify::Config::default()
                    .with_poll_interval(Duration::from_millis(250))
                    .with_compare_contents(true);
                Ok(Box::new(notify::PollWatcher::new(handler, cfg)?))
            };
            let watcher: notify::Result<Box<dyn Watcher>> = if config.poll {
                poll(handler)
            } else {
                // Filesystems without change events (some network mounts) fall back to polling.
                let h2 = handler.clone();
                notify::recommended_watcher(handler)
                    .map(|w| Box::new(w) as Box<dyn Watcher>)
                    .or_else(|e| {
                        tracing::warn!(error = %e, "no filesystem events here; polling for changes instead");
                        poll(h2)
                    })
            };
            let mut watcher = match watcher {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch files; hot reload is off");
                    return;
                }
            };
            let mut current_config = watched.config.as_ref().map(|(_, c)| c.clone());
            let config_path = watched.config.as_ref().map(|(p, _)| p.clone());
            // Watch directories, not files: editors and deploy tools replace files by rename.
            let mut files: Vec<PathBuf> = watched.transforms.iter().map(|(_, p)| p.clone()).collect();
            files.extend(config_path.clone());
            if let Some(c) = &current_config {
                files.extend(enrichment_files(c).into_iter().map(|(_, f)| f));
            }
            // A symlinked file is watched where it points too: an edit of the target is an
            // edit of the file.
            let targets: Vec<PathBuf> = files.iter().filter_map(|p| p.canonicalize().ok()).collect();
            let mut dirs: Vec<PathBuf> = files
                .iter()
                .chain(&targets)
                .filter_map(|p| {
                    p.parent().map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() })
                })
                .collect();
            dirs.sort();
            dirs.dedup();
            for d in &dirs {
                if let Err(e) = watcher.watch(d, notify::RecursiveMode::NonRecursive) {
                    tracing::error!(dir = %d.display(), error = %e, "cannot watch directory");
                }
            }
            tracing::info!(files = files.len(), "watching transforms, enrichment tables and the config for hot reload");
            let mut debounce = Debouncer::new(Duration::from_millis(config.debounce_ms));
            while !stop.load(Ordering::Relaxed) {
                let wait = debounce
                    .next_due()
                    .map_or(Duration::from_millis(200), |d| {
                        d.saturating_duration_since(Instant::now())
                    })
                    .min(Duration::from_millis(200));
                if let Ok(p) = rx.recv_timeout(wait) {
                    debounce.touch(&p, Instant::now());
                    while let Ok(p) = rx.try_recv() {
                        debounce.touch(&p, Instant::now());
                    }
                }
                for path in debounce.ready(Instant::now()) {
                    for (live, file) in &watched.transforms {
                        if same_file(&path, file) {
                            reload_file(live, file, &engine);
                        }
                    }
                    if let (Some(cp), Some(cfg)) = (&config_path, current_config.as_mut()) {
                        if same_file(&path, cp) {
                            match apply_config_change(cfg, cp, &engine, &watched.pipelines) {
                                Ok(done) if done.is_empty() => tracing::info!("config file changed; nothing to apply"),
                                Ok(done) => tracing::info!(changes = ?done, "config change applied"),
                                Err(e) => {
                                    tracing::warn!("{e}");
                                    // Not one pipeline's: every pipeline's state shows it.
                                    for l in &watched.pipelines {
                                        l.config_refused(&e);
                                    }
                                }
                            }
                        }
                        for (pipeline, file) in enrichment_files(cfg) {
                            if !same_file(&path, &file) {
                                continue;
                            }
                            let (Some(p), Some(live)) = (
                                cfg.pipelines.iter().find(|p| p.name() == pipeline),
                                watched.pipelines.iter().find(|l| l.pipeline == pipeline),
                            ) else {
                                continue;
                            };
                            if file.exists() {
                                let _ = swap_pipeline(live, p, cfg, &engine);
                            } else {
                                tracing::warn!(pipeline = %pipeline, file = %file.display(), "enrichment table deleted; the running version keeps going");
                            }
                        }
                    }
                }
            }
        })
        .expect("cannot start the reload thread")
}

/// A check in progress is for content the file no longer holds (a newer file, or one being
/// written): stop it, so the newer version is judged without waiting for a looping
/// candidate's deadline. Runs on the watcher's event thread, while the reload thread checks.
fn cancel_if_superseded(targets: &[(Arc<LiveTransform>, PathBuf)], path: &Path) {
    for (live, file) in targets {
        let Some(checking) = live.checking() else {
            continue;
        };
        if !same_file(path, file) {
            continue;
        }
        let max = live.current().settings.limits.max_component_bytes();
        let now = crate::transform::loader::read_component(file, max)
            .map(|b| crate::transform::wasm::engine::content_hash(&b))
            .unwrap_or_default();
        if now != checking.content_hash {
            live.cancel_check("a newer transform file was written");
        }
    }
}

/// Whether an event's path names the watched file: the same directory (through symlinks),
/// or the same file at the end of a symlink (a config linked from elsewhere).
fn same_file(a: &Path, b: &Path) -> bool {
    let in_dir = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        dir.unwrap_or(Path::new("."))
            .canonicalize()
            .ok()
            .map(|d| d.join(p.file_name().unwrap_or_default()))
    };
    let target = |p: &Path| p.canonicalize().ok();
    a == b
        || (in_dir(a).is_some() && in_dir(a) == in_dir(b))
        || (target(a).is_some() && target(a) == target(b))
}

/// What became of a transform file offered to a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", content = "reason", rename_all = "snake_case")]
pub enum Decision {
    /// It runs now (or already ran: the same content).
    Accepted,
    /// It was refused; the running version keeps going.
    Rejected(String),
    /// The content last evaluated, written again: nothing to decide.
    Unchanged,
    /// Not deployed while a version is pinned by hand.
    Pinned,
    /// Gone, empty (a write in progress) or unreadable for now: nothing decided.
    NotReady(String),
}

/// Load `file` as a candidate for `live` and swap it in if it passes.
pub fn reload_file(live: &LiveTransform, file: &Path, engine: &TransformEngine) -> Decision {
    let max = live.current().settings.limits.max_component_bytes();
    let bytes = match crate::transform::loader::read_component(file, max) {
        Ok(b) => b,
        Err(crate::transform::loader::LoadError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::warn!(pipeline = %live.pipeline, file = %file.display(), "transform file deleted; the running version keeps going");
            return Decision::NotReady("the file was deleted".into());
        }
        Err(e) => return Decision::Rejected(live.reject(e.to_string()).0),
    };
    if bytes.is_empty() {
        // A truncate-then-write in progress; the write that follows triggers another event.
        return Decision::NotReady("the file is empty".into());
    }
    if live.is_pinned() {
        tracing::info!(pipeline = %live.pipeline, file = %file.display(), "transform file changed while a version is pinned; it is judged when unpinned");
        return Decision::Pinned;
    }
    let hash = crate::transform::wasm::engine::content_hash(&bytes);
    {
        let mut seen = live.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.as_deref() == Some(hash.as_str()) {
            tracing::info!(pipeline = %live.pipeline, file = %file.display(), "transform file written with the content last evaluated; nothing to decide");
            return Decision::Unchanged;
        }
        *seen = Some(hash.clone());
    }
    let settings = live.current().settings.clone();
    let decided = match engine.load(crate::transform::loader::module_name(file), &bytes) {
        Ok(module) => live.try_swap(module, settings),
        Err(e) => Err(live.reject(e.to_string())),
    };
    match decided {
        Ok(()) => {
            live.record_accepted(&hash, Some(&bytes));
            Decision::Accepted
        }
        Err(r) if live.last_cancelled() => {
            // Not judged: the same content written again is checked again.
            *live.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Decision::NotReady(r.0)
        }
        Err(r) => {
            live.record_refused(&hash, "rejected", &r.0);
            Decision::Rejected(r.0)
        }
    }
}

/// Install `bytes` where `live`'s pipeline reads its transform (a temporary file renamed over
/// it, so the watcher never sees half a module) and decide on it now.
pub fn deploy(
    live: &LiveTransform,
    bytes: &[u8],
    engine: &TransformEngine,
) -> Result<Decision, String> {
    let Some(file) = live.file() else {
        return Err(format!(
            "pipeline {} runs the bundled transform {}; set its `transform` to a .wasm path to deploy files",
            live.pipeline,
            live.current().module.name()
        ));
    };
    if live.is_pinned() {
        return Err(format!(
            "{} is pinned by hand; `transform unpin {}` first",
            live.current().label(),
            live.pipeline
        ));
    }
    let max = live.current().settings.limits.max_component_bytes();
    if bytes.is_empty() || bytes.len() as u64 > max {
        return Err(format!(
            "the component is {} bytes; it must be 1 to {max} (limits.max_component_mib)",
            bytes.len()
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.deploy-{}",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("transform"),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot install {}: {e}", file.display()));
    }
    // Judged here and now, even if the same content was judged before: a deploy asks.
    *live.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Ok(reload_file(live, &file, engine))
}

/// Judge the transform file as it is now (after an unpin or a lifted ban).
pub fn reevaluate(live: &LiveTransform, engine: &TransformEngine) -> Option<Decision> {
    let file = live.file()?;
    *live.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Some(reload_file(live, &file, engine))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form a config path takes (relative to the working directory, absolute, a
    /// symlink to a file elsewhere) names the file that an event's absolute path reports.
    #[test]
    fn an_event_matches_relative_absolute_and_symlinked_paths() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("etc");
        std::fs::create_dir(&real_dir).unwrap();
        let real = real_dir.join("real.toml");
        std::fs::write(&real, "x").unwrap();
        let link = dir.path().join("pipelines.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let cwd = std::env::current_dir().unwrap();
        // A relative path from the working directory to the link.
        let rel = pathdiff(&link, &cwd);
        assert!(rel.is_relative());
        // The watcher reports absolute paths: the link's directory and the target's.
        assert!(same_file(&link, &rel), "relative vs absolute");
        assert!(
            same_file(&link, &link.canonicalize().unwrap()),
            "the link resolves"
        );
        assert!(
            same_file(&real, &link),
            "an edit of the target is an edit of the link"
        );
        assert!(same_file(&real, &rel), "and of a relative link");
        assert!(!same_file(&real_dir.join("other.toml"), &link));
        // A bare file name is in the working directory.
        assert!(same_file(&cwd.join("Cargo.toml"), Path::new("Cargo.toml")));
    }

    /// `to` relative to `base` (both absolute), through `..` where needed.
    fn pathdiff(to: &Path, base: &Path) -> PathBuf {
        let base = base.canonicalize().unwrap();
        let to_dir = to.parent().unwrap().canonicalize().unwrap();
        let common = base
            .components()
            .zip(to_dir.components())
            .take_while(|(a, b)| a == b)
            .count();
        let mut out = PathBuf::new();
        for _ in base.components().skip(common) {
            out.push("..");
        }
        for c in to_dir.components().skip(common) {
            out.push(c);
        }
        out.join(to.file_name().unwrap())
    }

    #[test]
    fn debounce_waits_for_quiet() {
        let mut d = Debouncer::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let p = Path::new("/x/a.wasm");
        d.touch(p, t0);
        d.touch(p, t0 + Duration::from_millis(50));
        d.touch(Path::new("/x/b.wasm"), t0 + Duration::from_millis(60));
        assert!(
            d.ready(t0 + Duration::from_millis(120)).is_empty(),
            "still writing"
        );
        assert_eq!(d.next_due(), Some(t0 + Duration::from_millis(150)));
        assert_eq!(
            d.ready(t0 + Duration::from_millis(155)),
            vec![PathBuf::from("/x/a.wasm")]
        );
        assert_eq!(
            d.ready(t0 + Duration::from_millis(165)),
            vec![PathBuf::from("/x/b.wasm")]
        );
        assert!(d.next_due().is_none());
    }
}
