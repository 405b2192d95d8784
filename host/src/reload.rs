//! Hot reload: the running version of each pipeline's transform, swapped atomically at batch
//! boundaries; candidate checks (compile, instantiate, `init`, shadow replay of recent
//! messages against the running version); automatic rollback when a new version's error rate
//! jumps; and the file watcher that drives it.

use crate::wasm::{
    InstanceSettings, Message, MessageResult, TransformEngine, TransformInstance, TransformModule,
};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Hot-reload settings (`[reload]`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch transform files, enrichment tables and the config file.
    pub enabled: bool,
    /// Poll for changes instead of relying on filesystem events.
    pub poll: bool,
    /// Quiet time after the last change before a file is read.
    pub debounce_ms: u64,
    /// Recent messages kept per pipeline for the shadow check.
    pub shadow_messages: usize,
    /// Largest fraction of shadow messages the candidate may fail that the running version accepted.
    pub shadow_max_new_failures: f64,
    /// Batches a new version is watched for after a swap.
    pub probation_batches: u64,
    /// Error-and-trap rate over the probation that triggers a rollback.
    pub rollback_error_rate: f64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            enabled: true,
            poll: false,
            debounce_ms: 300,
            shadow_messages: 200,
            shadow_max_new_failures: 0.0,
            probation_batches: 10,
            rollback_error_rate: 0.2,
        }
    }
}

/// One version of a pipeline's transform.
pub struct Version {
    pub module: Arc<TransformModule>,
    pub settings: InstanceSettings,
    pub generation: u64,
}

/// Outcome of the last reload attempt, for `/transforms`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LastReload {
    pub result: String,
    pub detail: String,
    pub at_unix_ms: u128,
}

#[derive(Default)]
struct Probation {
    batches_left: u64,
    messages: u64,
    failures: u64,
}

/// The live transform of one pipeline, shared by every worker.
pub struct LiveTransform {
    pub pipeline: String,
    current: RwLock<Arc<Version>>,
    previous: Mutex<Option<Arc<Version>>>,
    generation: AtomicU64,
    probation: Mutex<Probation>,
    /// Content hash of a version that was rolled back: kept out until the file changes.
    banned: Mutex<Option<String>>,
    /// Content hash of the last file content evaluated: the same bytes are not judged twice.
    last_seen: Mutex<Option<String>>,
    recent: Mutex<VecDeque<Message>>,
    last: Mutex<LastReload>,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub rolled_back: AtomicU64,
    config: ReloadConfig,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// A candidate that was refused, with why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

impl LiveTransform {
    /// The live transform starting at `module` with `settings`.
    pub fn new(
        pipeline: &str,
        module: Arc<TransformModule>,
        settings: InstanceSettings,
        config: ReloadConfig,
    ) -> Self {
        LiveTransform {
            pipeline: pipeline.into(),
            current: RwLock::new(Arc::new(Version {
                module,
                settings,
                generation: 0,
            })),
            previous: Mutex::new(None),
            generation: AtomicU64::new(0),
            probation: Mutex::new(Probation::default()),
            banned: Mutex::new(None),
            last_seen: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            last: Mutex::new(LastReload {
                result: "initial".into(),
                detail: String::new(),
                at_unix_ms: now_ms(),
            }),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            rolled_back: AtomicU64::new(0),
            config,
        }
    }

    /// The generation of the running version (cheap: workers compare it before each batch).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The running version.
    pub fn current(&self) -> Arc<Version> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The version before the last swap.
    pub fn previous(&self) -> Option<Arc<Version>> {
        self.previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last reload attempt.
    pub fn last(&self) -> LastReload {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_last(&self, result: &str, detail: String) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = LastReload {
            result: result.into(),
            detail,
            at_unix_ms: now_ms(),
        };
    }

    /// Keep the tail of a processed batch for shadow checks.
    pub fn remember(&self, batch: &[Message]) {
        let n = self.config.shadow_messages;
        if n == 0 {
            return;
        }
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for m in &batch[batch.len().saturating_sub(n)..] {
            if r.len() == n {
                r.pop_front();
            }
            r.push_back(m.clone());
        }
    }

    /// Record a batch's results under `generation`; after a swap, roll back if the new
    /// version's error rate over the probation exceeds the threshold.
    pub fn observe<R>(&self, generation: u64, results: &[MessageResult<R>]) {
        if generation != self.generation() {
            return;
        }
        let failures = results
            .iter()
            .filter(|r| matches!(r, MessageResult::Fail(_) | MessageResult::Error(_)))
            .count() as u64;
        let verdict = {
            let mut p = self.probation.lock().unwrap_or_else(|e| e.into_inner());
            if p.batches_left == 0 {
                return;
            }
            p.batches_left -= 1;
            p.messages += results.len() as u64;
            p.failures += failures;
            should_roll_back(
                p.messages,
                p.failures,
                p.batches_left,
                self.config.rollback_error_rate,
            )
        };
        if verdict {
            self.roll_back();
        }
    }

    fn roll_back(&self) {
        let Some(prev) = self
            .previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let bad = self.current();
        *self.banned.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(bad.module.content_hash().to_string());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Version {
            module: prev.module.clone(),
            settings: prev.settings.clone(),
            generation,
        });
        *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Probation::default();
        self.rolled_back.fetch_add(1, Ordering::Relaxed);
        tracing::error!(pipeline = %self.pipeline, bad = bad.module.version(), restored = prev.module.version(), "new transform version failed too often after the swap: rolled back");
        self.set_last(
            "rolled_back",
            format!(
                "{} failed too often after the swap; {} restored",
                bad.module.version(),
                prev.module.version()
            ),
        );
    }

    /// Check a candidate and, if it passes, make it the running version (workers pick it up
    /// at their next batch boundary).
    pub fn try_swap(
        &self,
        module: Arc<TransformModule>,
        settings: InstanceSettings,
    ) -> Result<(), Rejected> {
        let cur = self.current();
        if cur.module.content_hash() == module.content_hash()
            && cur.settings.config == settings.config
            && cur.settings.limits == settings.limits
            && cur.settings.enrichment == settings.enrichment
        {
            return Ok(());
        }
        let banned = self
            .banned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if banned.as_deref() == Some(module.content_hash())
            && cur.settings.config == settings.config
        {
            return Err(self.reject(format!(
                "{} was rolled back; it stays out until the file changes",
                module.version()
            )));
        }
        let sample: Vec<Message> = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if let Err(why) = shadow_check(
            &cur,
            &module,
            &settings,
            &sample,
            self.config.shadow_max_new_failures,
        ) {
            return Err(self.reject(why));
        }
        *self.banned.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let generation = self.generation() + 1;
        let version = module.version().to_string();
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(cur.clone());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Version {
            module,
            settings,
            generation,
        });
        *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Probation {
            batches_left: self.config.probation_batches,
            ..Default::default()
        };
        self.generation.store(generation, Ordering::Release);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pipeline = %self.pipeline, from = cur.module.version(), to = %version, shadow = sample.len(), "transform swapped");
        self.set_last(
            "accepted",
            format!(
                "{} -> {version} (shadow-checked on {} messages)",
                cur.module.version(),
                sample.len()
            ),
        );
        Ok(())
    }

    /// Count and report a refused candidate.
    pub fn reject(&self, why: String) -> Rejected {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(pipeline = %self.pipeline, reason = %why, "transform candidate rejected; the running version keeps going");
        self.set_last("rejected", why.clone());
        Rejected(why)
    }
}

/// The rollback decision: enough evidence (at least 20 messages, or the probation over)
/// and an error rate above `threshold`.
pub fn should_roll_back(messages: u64, failures: u64, batches_left: u64, threshold: f64) -> bool {
    if messages == 0 {
        return false;
    }
    let rate = failures as f64 / messages as f64;
    (messages >= 20 || batches_left == 0) && rate > threshold
}

/// Instantiate the candidate (`init` with its config) and replay `sample` through it and the
/// running version; refuse it when it traps or fails messages the running version accepted
/// (more than `max_new` of the sample), naming the first differences.
pub fn shadow_check(
    running: &Version,
    module: &Arc<TransformModule>,
    settings: &InstanceSettings,
    sample: &[Message],
    max_new: f64,
) -> Result<(), String> {
    let mut cand =
        TransformInstance::new(module.clone(), settings.clone()).map_err(|e| e.to_string())?;
    if sample.is_empty() {
        return Ok(());
    }
    let mut base = TransformInstance::new(running.module.clone(), running.settings.clone())
        .map_err(|e| format!("running version: {e}"))?;
    let before = base.process(sample, 0);
    let after = cand.process(sample, 0);
    let mut diffs = Vec::new();
    for ((m, b), a) in sample.iter().zip(&before).zip(&after) {
        let ok_before = matches!(b, MessageResult::Rows(_) | MessageResult::Skip(_));
        let why = match a {
            MessageResult::Error(e) if e.is_trap() => Some(format!("traps: {e}")),
            MessageResult::Fail(e) if ok_before => Some(format!("fails: {e}")),
            MessageResult::Error(e) if ok_before => Some(format!("error: {e}")),
            _ => None,
        };
        if let Some(w) = why {
            diffs.push(format!("{}/{}@{}: {w}", m.topic, m.partition, m.offset));
        }
    }
    let allowed = (max_new * sample.len() as f64).floor() as usize;
    if diffs.len() > allowed {
        return Err(format!(
            "{} shadow-checked on {} recent messages: {} would newly fail (allowed {allowed}); first: {}",
            module.version(),
            sample.len(),
            diffs.len(),
            diffs.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    Ok(())
}

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
    let settings = crate::registry::instance_settings(p, &config.base_dir)
        .map_err(|e| live.reject(e.to_string()))?;
    let module = crate::registry::load_transform(engine, &p.transform, &config.base_dir)
        .map_err(|e| live.reject(e.to_string()))?;
    live.try_swap(module, settings)
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
            let handler = move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    // Reads (ours included) are not changes.
                    if matches!(ev.kind, notify::EventKind::Access(_)) {
                        return;
                    }
                    for p in ev.paths {
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
            let mut dirs: Vec<PathBuf> = files
                .iter()
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
                                Err(e) => tracing::warn!("{e}"),
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

fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| {
        p.parent()
            .and_then(|d| d.canonicalize().ok())
            .map(|d| d.join(p.file_name().unwrap_or_default()))
    };
    a == b || (canon(a).is_some() && canon(a) == canon(b))
}

/// Load `file` as a candidate for `live` and swap it in if it passes.
pub fn reload_file(live: &LiveTransform, file: &Path, engine: &TransformEngine) {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(pipeline = %live.pipeline, file = %file.display(), "transform file deleted; the running version keeps going");
            return;
        }
        Err(e) => {
            live.reject(format!("cannot read {}: {e}", file.display()));
            return;
        }
    };
    if bytes.is_empty() {
        // A truncate-then-write in progress; the write that follows triggers another event.
        return;
    }
    let hash = crate::vast::sigv4::sha256_hex(&bytes);
    {
        let mut seen = live.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.as_deref() == Some(hash.as_str()) {
            return;
        }
        *seen = Some(hash);
    }
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("transform");
    let settings = live.current().settings.clone();
    match engine.load(name, &bytes) {
        Ok(module) => {
            let _ = live.try_swap(module, settings);
        }
        Err(e) => {
            live.reject(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn rollback_decision() {
        assert!(!should_roll_back(0, 0, 5, 0.2));
        assert!(!should_roll_back(10, 10, 5, 0.2), "too little evidence yet");
        assert!(should_roll_back(10, 10, 0, 0.2), "probation over");
        assert!(should_roll_back(100, 50, 5, 0.2));
        assert!(!should_roll_back(100, 10, 5, 0.2));
        assert!(
            !should_roll_back(100, 20, 0, 0.2),
            "at the threshold is fine"
        );
    }
}
