//! Hot reload. This module is the swap cell: [`LiveTransform`], the running version of each
//! pipeline's transform, swapped atomically and picked up by the workers at batch
//! boundaries, with its probation. [`policy`] decides (the shadow check a candidate must
//! pass, when a new version is rolled back); [`watch`] drives it from file changes.

mod policy;
mod sample;
mod state;
mod watch;

pub use policy::{CheckError, OutputDiff, ShadowLimits, shadow_check, should_roll_back};
pub use state::{DeploymentStore, Record, Refusal, StateError};
pub use watch::{
    Debouncer, Decision, Watched, apply_config_change, deploy, enrichment_files, reevaluate,
    reload_file, swap_pipeline, watch,
};

use crate::config::ReloadConfig;
use crate::model::Message;
use crate::transform::wasm::{
    InstanceSettings, MessageResult, Processed, RowSpan, TransformEngine, TransformInstance,
    TransformModule, lineage,
};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// One version of a pipeline's transform.
pub struct Version {
    pub module: Arc<TransformModule>,
    pub settings: InstanceSettings,
    pub generation: u64,
    /// Module, config and tables together (see [`lineage`]): what its rows carry.
    label: String,
}

impl Version {
    /// `module` with `settings`, as generation `generation`.
    pub fn new(module: Arc<TransformModule>, settings: InstanceSettings, generation: u64) -> Self {
        let label = lineage(&module, &settings);
        Version {
            module,
            settings,
            generation,
            label,
        }
    }

    /// `name@<module>.<config and tables>`, the `transform_version` of its rows.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Outcome of the last reload attempt, for `/transforms`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LastReload {
    pub result: String,
    pub detail: String,
    pub at_unix_ms: u128,
    /// How the accepted candidate's rows differ from its predecessor's on the shadow sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_diff: Option<OutputDiff>,
}

/// The watch on a new version after its swap. Only what it does worse than the version it
/// replaced counts: a failed record is re-run through the previous version (kept warm for
/// this), and a record both versions fail (bad input) is not the new version's fault.
#[derive(Default)]
struct Probation {
    active: bool,
    batches: u64,
    messages: u64,
    /// Records the new version failed that the previous one turned into rows or skipped.
    new_failures: u64,
    /// Of the new failures, traps (crash, deadline, memory).
    new_traps: u64,
    /// Records both versions failed (not counted against the new version).
    both_failed: u64,
    started: Option<std::time::Instant>,
    previous: Option<TransformInstance>,
}

impl Probation {
    /// Over when every minimum is met: batches, records and time.
    fn over(&self, c: &ReloadConfig) -> bool {
        self.batches >= c.probation_batches
            && self.messages >= c.probation_records
            && self
                .started
                .is_some_and(|t| t.elapsed().as_secs_f64() >= c.probation_seconds as f64)
    }
}

/// The most bytes of recent messages a pipeline keeps for shadow checks (whatever
/// `reload.shadow_messages` says): 200 records of 500 KB would be 100 MB outside every
/// bound. A message bigger than this is not sampled.
pub const SHADOW_BYTES: usize = 8 << 20;

/// What the replaced version made of the records a version on probation failed and it
/// handled (see [`LiveTransform::observe`]).
pub struct Fallback {
    /// The replaced version's lineage label, for the rows it wrote.
    pub label: Arc<str>,
    /// Per record of the observed batch: its result's index in `processed`, if it falls back.
    slot: Vec<Option<usize>>,
    processed: Processed,
}

impl Fallback {
    /// From `processed`, the results of another version for the records at `positions` of
    /// a batch of `len`: the records it handled (rows or a skip) fall back. `None` if none.
    pub fn new(
        label: Arc<str>,
        positions: &[usize],
        len: usize,
        processed: Processed,
    ) -> Option<Fallback> {
        let mut slot = vec![None; len];
        let mut any = false;
        for (j, (&i, r)) in positions.iter().zip(processed.results()).enumerate() {
            if matches!(r, MessageResult::Rows(_) | MessageResult::Skip(_)) {
                slot[i] = Some(j);
                any = true;
            }
        }
        any.then_some(Fallback {
            label,
            slot,
            processed,
        })
    }

    /// The replaced version's result for record `i` of the observed batch, if it handled it,
    /// with the batch its row spans point into.
    pub fn get(&self, i: usize) -> Option<(&MessageResult<RowSpan>, &Processed)> {
        let j = (*self.slot.get(i)?)?;
        Some((&self.processed.results()[j], &self.processed))
    }

    /// How many records fall back.
    pub fn len(&self) -> usize {
        self.slot.iter().flatten().count()
    }

    /// True when no record falls back.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// The shadow sample: recent messages across partitions, at most `shadow_messages` and
    /// [`SHADOW_BYTES`] (their footprint).
    recent: Mutex<sample::Sample>,
    last: Mutex<LastReload>,
    /// The pipeline's durable deployment record (with `runtime.state_dir`).
    state: Mutex<Option<Arc<DeploymentStore>>>,
    /// The transform file that is not running because its content was refused, and why.
    refused_file: Mutex<Option<RefusedFile>>,
    /// The transform file the pipeline reads (none for a bundled transform).
    file: Mutex<Option<std::path::PathBuf>>,
    /// Held while a candidate is decided: a deploy by hand and the watcher take turns.
    deciding: Mutex<()>,
    /// Pinned by hand: no candidate is deployed until it is unpinned.
    pinned: std::sync::atomic::AtomicBool,
    /// The candidate being checked now, for `/transforms`.
    checking: Mutex<Option<Checking>>,
    /// Stops the check in progress ([`LiveTransform::cancel_check`]), and why.
    cancel: Arc<std::sync::atomic::AtomicBool>,
    cancel_reason: Mutex<String>,
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

/// A transform file on disk that does not run: its content was refused before (or it
/// cannot be loaded), and the last accepted version runs instead.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedFile {
    pub file: String,
    pub content_hash: String,
    pub reason: String,
}

/// A candidate under its shadow check.
#[derive(Debug, Clone, Serialize)]
pub struct Checking {
    pub candidate: String,
    /// SHA-256 of the candidate module.
    pub content_hash: String,
    pub shadow_messages: usize,
    pub started_unix_ms: u128,
}

/// How far a new version's probation has come.
#[derive(Debug, Clone, Serialize)]
pub struct ProbationProgress {
    pub messages: u64,
    pub batches: u64,
    pub new_failures: u64,
    /// Of the new failures, traps.
    pub new_traps: u64,
    pub both_failed: u64,
    pub seconds: f64,
    /// The minimums it must reach (records, batches, seconds).
    pub needs_messages: u64,
    pub needs_batches: u64,
    pub needs_seconds: u64,
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
            current: RwLock::new(Arc::new(Version::new(module, settings, 0))),
            previous: Mutex::new(None),
            generation: AtomicU64::new(0),
            probation: Mutex::new(Probation::default()),
            banned: Mutex::new(None),
            last_seen: Mutex::new(None),
            recent: Mutex::new(sample::Sample::default()),
            last: Mutex::new(LastReload {
                result: "initial".into(),
                detail: String::new(),
                at_unix_ms: now_ms(),
                output_diff: None,
            }),
            state: Mutex::new(None),
            refused_file: Mutex::new(None),
            file: Mutex::new(None),
            deciding: Mutex::new(()),
            pinned: std::sync::atomic::AtomicBool::new(false),
            checking: Mutex::new(None),
            cancel: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            cancel_reason: Mutex::new(String::new()),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            rolled_back: AtomicU64::new(0),
            config,
        }
    }

    /// Keep this pipeline's deployment decisions in `store` from now on.
    pub fn attach_state(&self, store: Arc<DeploymentStore>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    /// The deployment record, when there is one.
    pub fn state(&self) -> Option<Arc<DeploymentStore>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Write a decision through to the deployment record; a record that cannot be written
    /// costs durability, never the pipeline.
    fn record(&self, what: impl FnOnce(&DeploymentStore) -> Result<(), StateError>) {
        if let Some(Err(e)) = self.state().map(|store| what(&store)) {
            tracing::warn!(pipeline = %self.pipeline, error = %e, transient = e.is_transient(), "cannot write the deployment record; the decision holds until a restart");
        }
    }

    /// `hash` (with its component `bytes`, when known) is running: record it as accepted.
    pub fn record_accepted(&self, hash: &str, bytes: Option<&[u8]>) {
        self.record(|s| s.accept(hash, bytes));
        *self.refused_file.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Record that the module content `hash` was refused.
    pub fn record_refused(&self, hash: &str, decision: &str, reason: &str) {
        self.record(|s| s.refuse(hash, decision, reason));
    }

    /// At start: the file's content (`hash`) was refused, so `fallback` runs instead.
    pub fn start_refusing(&self, file: &std::path::Path, hash: &str, reason: &str) {
        *self.banned.lock().unwrap_or_else(|p| p.into_inner()) = Some(hash.to_string());
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(hash.to_string());
        *self.refused_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(RefusedFile {
            file: file.display().to_string(),
            content_hash: hash.to_string(),
            reason: reason.to_string(),
        });
        self.set_last(
            "refused_at_start",
            format!(
                "{} is not run ({reason}); {} runs, the last accepted version",
                file.display(),
                self.current().label()
            ),
        );
    }

    /// The transform file that does not run, if any.
    pub fn refused_file(&self) -> Option<RefusedFile> {
        self.refused_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set the transform file the pipeline reads.
    pub fn set_file(&self, file: Option<std::path::PathBuf>) {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = file;
    }

    /// The transform file the pipeline reads, if it has one.
    pub fn file(&self) -> Option<std::path::PathBuf> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a version is pinned by hand.
    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Acquire)
    }

    /// At start: the pinned version (from the record) runs.
    pub fn start_pinned(&self) {
        self.pinned.store(true, Ordering::Release);
        self.set_last(
            "pinned",
            format!(
                "{} runs, pinned by hand; the file is not deployed until `transform unpin {}`",
                self.current().label(),
                self.pipeline
            ),
        );
    }

    /// A config change was refused as a whole (invalid, or it needs a restart): shown as
    /// this pipeline's last decision, `config_refused`.
    pub fn config_refused(&self, why: &str) {
        self.set_last("config_refused", why.to_string());
    }

    /// Stop the check in progress, if any, within an epoch tick (nothing is decided).
    pub fn cancel_check(&self, reason: &str) {
        if self.checking().is_some() {
            *self.cancel_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_string();
            self.cancel.store(true, Ordering::Release);
        }
    }

    /// Whether the last check was cancelled.
    pub fn last_cancelled(&self) -> bool {
        self.last().result == "cancelled"
    }

    /// The candidate being checked, if any.
    pub fn checking(&self) -> Option<Checking> {
        self.checking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The probation in progress, if any.
    pub fn probation(&self) -> Option<ProbationProgress> {
        let p = self.probation.lock().unwrap_or_else(|p| p.into_inner());
        p.active.then(|| ProbationProgress {
            messages: p.messages,
            batches: p.batches,
            new_failures: p.new_failures,
            new_traps: p.new_traps,
            both_failed: p.both_failed,
            seconds: p.started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            needs_messages: self.config.probation_records,
            needs_batches: self.config.probation_batches,
            needs_seconds: self.config.probation_seconds,
        })
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
        self.set_decision(result, detail, None);
    }

    fn set_decision(&self, result: &str, detail: String, output_diff: Option<OutputDiff>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = LastReload {
            result: result.into(),
            detail,
            at_unix_ms: now_ms(),
            output_diff,
        };
    }

    /// Keep some of a processed batch for shadow checks: at most a quarter of the sample per
    /// batch, spread over it, so one batch does not replace the sample and the cost on the
    /// worker stays small.
    pub fn remember(&self, batch: &[Message]) {
        let n = self.config.shadow_messages;
        if n == 0 || batch.is_empty() {
            return;
        }
        let take = (n / 4).max(1).min(batch.len());
        let stride = batch.len() / take;
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for m in batch.iter().rev().step_by(stride.max(1)).take(take).rev() {
            r.push(m, m.footprint(), n, SHADOW_BYTES);
        }
    }

    /// Messages and bytes in the shadow sample.
    pub fn sample_size(&self) -> (usize, usize) {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).size()
    }

    /// Record a batch's results under `generation`; during a probation, roll back when the
    /// new version fails more of the records the previous version handled than
    /// `rollback_error_rate` allows. The records the new version failed and the previous one
    /// handled come back as a [`Fallback`]: they land as the previous version wrote them, so a
    /// candidate on probation costs no record (only bad input, failed by both, is
    /// dead-lettered).
    pub fn observe<R>(
        &self,
        generation: u64,
        msgs: &[Message],
        results: &[MessageResult<R>],
    ) -> Option<Fallback> {
        if generation != self.generation() {
            return None;
        }
        let failed =
            |r: &MessageResult<R>| matches!(r, MessageResult::Fail(_) | MessageResult::Error(_));
        let (verdict, fallback) = {
            let mut p = self.probation.lock().unwrap_or_else(|e| e.into_inner());
            if !p.active {
                return None;
            }
            let trapped =
                |r: &MessageResult<R>| matches!(r, MessageResult::Error(e) if e.is_trap());
            let (positions, traps): (Vec<usize>, Vec<bool>) = results
                .iter()
                .enumerate()
                .filter(|(_, r)| failed(r))
                .map(|(i, r)| (i, trapped(r)))
                .unzip();
            let (mut new, mut new_traps) = (
                positions.len() as u64,
                traps.iter().filter(|t| **t).count() as u64,
            );
            let mut fallback = None;
            if let (false, Some(prev)) = (positions.is_empty(), p.previous.as_mut()) {
                let failing: Vec<Message> = positions.iter().map(|&i| msgs[i].clone()).collect();
                let before = prev.process_batch(&failing, crate::model::now_micros());
                let handled: Vec<bool> = before
                    .results()
                    .iter()
                    .map(|r| matches!(r, MessageResult::Rows(_) | MessageResult::Skip(_)))
                    .collect();
                new = handled.iter().filter(|h| **h).count() as u64;
                new_traps = handled
                    .iter()
                    .zip(&traps)
                    .filter(|(h, t)| **h && **t)
                    .count() as u64;
                fallback = Fallback::new(prev.lineage().clone(), &positions, msgs.len(), before);
            }
            p.batches += 1;
            p.messages += msgs.len() as u64;
            p.new_failures += new;
            p.new_traps += new_traps;
            p.both_failed += positions.len() as u64 - new;
            let over = p.over(&self.config);
            let roll = should_roll_back(
                p.messages,
                p.new_failures,
                over,
                self.config.rollback_error_rate,
            ) || p.new_traps > self.config.rollback_max_new_traps;
            let verdict = if roll {
                Some((p.messages, p.new_failures, p.new_traps, p.both_failed))
            } else {
                if over {
                    // Passed: the previous version need not stay warm any longer.
                    *p = Probation::default();
                }
                None
            };
            (verdict, fallback)
        };
        if let Some(counts) = verdict {
            self.roll_back(counts);
        }
        fallback
    }

    /// Whether a new version is still being watched after its swap.
    pub fn on_probation(&self) -> bool {
        self.probation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active
    }

    fn roll_back(&self, (messages, new_failures, new_traps, both_failed): (u64, u64, u64, u64)) {
        let (Some(prev), bad) = (self.previous(), self.current()) else {
            return;
        };
        let rate = new_failures as f64 / messages.max(1) as f64;
        let over = if new_traps > self.config.rollback_max_new_traps {
            format!(
                "{new_traps} of them traps, over reload.rollback_max_new_traps = {}",
                self.config.rollback_max_new_traps
            )
        } else {
            format!("over {}", self.config.rollback_error_rate)
        };
        let reason = format!(
            "{} failed {new_failures} of {messages} records after the swap that {} handled (rate {rate:.3}, {over}; {both_failed} more failed in both versions and did not count); {} restored",
            bad.label(),
            prev.label(),
            prev.label()
        );
        tracing::error!(pipeline = %self.pipeline, bad = bad.label(), restored = prev.label(), new_failures, new_traps, messages, both_failed, "new transform version failed too often after the swap: rolled back");
        self.restore(&prev, &bad, reason);
    }

    /// Run `prev` again in place of `bad`, which is banned (in the record too) as rolled back.
    fn restore(&self, prev: &Version, bad: &Arc<Version>, reason: String) {
        *self.banned.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(bad.module.content_hash().to_string());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Version::new(
            prev.module.clone(),
            prev.settings.clone(),
            generation,
        ));
        *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Probation::default();
        // The rolled-back version stays visible as the previous one.
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(bad.clone());
        self.rolled_back.fetch_add(1, Ordering::Relaxed);
        self.record(|s| {
            if bad.module.content_hash() != prev.module.content_hash() {
                s.refuse(bad.module.content_hash(), "rolled_back", &reason)?;
            }
            s.running(prev.module.content_hash())
        });
        self.set_last("rolled_back", reason);
    }

    /// Roll back by hand (`transform rollback`): the previous version runs again and the
    /// current one is kept out (a restart included) until its ban is lifted.
    pub fn roll_back_by_hand(&self, engine: &TransformEngine) -> Result<String, String> {
        let _turn = self.deciding.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_pinned() {
            return Err(format!(
                "{} is pinned; `transform unpin {}` first",
                self.current().label(),
                self.pipeline
            ));
        }
        let bad = self.current();
        // The previous version, unless it is itself out (after an automatic rollback the
        // previous one is the bad version): then the last accepted one the record keeps.
        let banned = |hash: &str| {
            self.banned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_deref()
                == Some(hash)
                || self.state().is_some_and(|s| s.refusal(hash).is_some())
        };
        let prev = match self.previous().filter(|p| {
            !banned(p.module.content_hash()) && p.module.content_hash() != bad.module.content_hash()
        }) {
            Some(p) => p,
            None => {
                let kept = self
                    .state()
                    .and_then(|s| s.last_accepted(bad.module.content_hash()));
                let Some((_, bytes)) = kept else {
                    return Err(format!(
                        "{} has no previous version to roll back to",
                        bad.label()
                    ));
                };
                let module = engine
                    .load(bad.module.name(), &bytes)
                    .map_err(|e| e.to_string())?;
                Arc::new(Version::new(module, bad.settings.clone(), 0))
            }
        };
        TransformInstance::new(prev.module.clone(), prev.settings.clone())
            .map_err(|e| format!("{} cannot run: {e}", prev.label()))?;
        let reason = format!(
            "{} rolled back by hand; {} restored",
            bad.label(),
            prev.label()
        );
        tracing::warn!(pipeline = %self.pipeline, bad = bad.label(), restored = prev.label(), "transform rolled back by hand");
        self.restore(&prev, &bad, reason.clone());
        Ok(reason)
    }

    /// Pin `want` (a version label, `name@<hash>` or a content-hash prefix of at least 6
    /// characters): the running, the previous or a kept accepted version. It runs until
    /// unpinned, a restart included; no candidate is deployed meanwhile.
    pub fn pin(&self, want: &str, engine: &TransformEngine) -> Result<String, String> {
        let _turn = self.deciding.lock().unwrap_or_else(|p| p.into_inner());
        let names = |name: &str, hash: &str, label: Option<&str>| {
            label == Some(want)
                || want == format!("{name}@{}", &hash[..hash.len().min(12)])
                || (want.len() >= 6 && hash.starts_with(want))
        };
        let of = |v: &Version| names(v.module.name(), v.module.content_hash(), Some(v.label()));
        let cur = self.current();
        let target: Arc<Version> = if of(&cur) {
            cur.clone()
        } else if let Some(prev) = self.previous().filter(|p| of(p)) {
            prev
        } else {
            let store = self.state();
            let kept = store.as_ref().and_then(|s| {
                let r = s.record();
                let hash = r
                    .accepted
                    .iter()
                    .rev()
                    .find(|h| names(cur.module.name(), h, None))?
                    .clone();
                Some((hash.clone(), s.bytes(&hash)?))
            });
            let Some((_, bytes)) = kept else {
                return Err(format!(
                    "no version `{want}` is running, previous or kept (kept: {})",
                    store.map_or_else(String::new, |s| s.record().accepted.join(", "))
                ));
            };
            let module = engine
                .load(cur.module.name(), &bytes)
                .map_err(|e| e.to_string())?;
            Arc::new(Version::new(module, cur.settings.clone(), 0))
        };
        if !Arc::ptr_eq(&target, &cur) {
            TransformInstance::new(target.module.clone(), target.settings.clone())
                .map_err(|e| format!("{} cannot run: {e}", target.label()))?;
            let generation = self.generation() + 1;
            *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(cur.clone());
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Version::new(
                target.module.clone(),
                target.settings.clone(),
                generation,
            ));
            *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Probation::default();
            self.generation.store(generation, Ordering::Release);
        }
        self.pinned.store(true, Ordering::Release);
        let hash = target.module.content_hash().to_string();
        self.record(|s| {
            s.pin(Some(&hash))?;
            s.running(&hash)
        });
        let label = self.current().label().to_string();
        tracing::warn!(pipeline = %self.pipeline, version = %label, "transform pinned by hand");
        let detail = format!("{label} pinned by hand (was {})", cur.label());
        self.set_last("pinned", detail.clone());
        Ok(detail)
    }

    /// Lift a pin: the next candidate (the file as it is now, when re-evaluated) is judged.
    pub fn unpin(&self) -> Result<String, String> {
        let _turn = self.deciding.lock().unwrap_or_else(|p| p.into_inner());
        if !self.pinned.swap(false, Ordering::AcqRel) {
            return Err(format!("{} is not pinned", self.pipeline));
        }
        self.record(|s| s.pin(None));
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let detail = format!("{} unpinned", self.current().label());
        tracing::info!(pipeline = %self.pipeline, "transform unpinned");
        self.set_last("unpinned", detail.clone());
        Ok(detail)
    }

    /// Lift the ban of a refused or rolled-back content (`hash`: at least 6 characters of
    /// it): offered again, it is judged like any candidate.
    pub fn unban(&self, hash: &str) -> Result<String, String> {
        let _turn = self.deciding.lock().unwrap_or_else(|p| p.into_inner());
        if hash.len() < 6 {
            return Err("give at least 6 characters of the content hash".into());
        }
        let mut lifted = Vec::new();
        if let Some(store) = self.state() {
            for h in store
                .record()
                .refused
                .keys()
                .filter(|h| h.starts_with(hash))
            {
                match store.unban(h) {
                    Ok(true) => lifted.push(h.clone()),
                    Ok(false) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        {
            let mut banned = self.banned.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = banned.clone().filter(|b| b.starts_with(hash)) {
                if !lifted.contains(&b) {
                    lifted.push(b);
                }
                *banned = None;
            }
        }
        if lifted.is_empty() {
            return Err(format!("no ban of a content hash starting with `{hash}`"));
        }
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let detail = format!("ban lifted: {}", lifted.join(", "));
        tracing::info!(pipeline = %self.pipeline, hashes = ?lifted, "transform ban lifted by hand");
        self.set_last("unbanned", detail.clone());
        Ok(detail)
    }

    /// Check a candidate and, if it passes, make it the running version (workers pick it up
    /// at their next batch boundary).
    pub fn try_swap(
        &self,
        module: Arc<TransformModule>,
        settings: InstanceSettings,
    ) -> Result<(), Rejected> {
        let _turn = self.deciding.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current();
        if self.is_pinned() {
            return Err(self.reject(format!(
                "{} is pinned by hand; `transform unpin {}` to deploy again",
                cur.label(),
                self.pipeline
            )));
        }
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
        let rolled_back = (cur.module.content_hash() != module.content_hash())
            .then(|| self.state()?.refusal(module.content_hash()))
            .flatten()
            .filter(|r| r.decision == "rolled_back");
        if let Some(r) = rolled_back {
            return Err(self.reject(format!(
                "{} was rolled back before ({}); it stays out until the ban is lifted or the deployment record removed",
                module.version(),
                r.reason
            )));
        }
        let sample: Vec<Message> = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .messages();
        let limits = ShadowLimits {
            max_new_failures: self.config.shadow_max_new_failures,
            max_changed: self.config.shadow_max_changed,
            budget: std::time::Duration::from_millis(self.config.check_budget_ms),
        };
        self.cancel.store(false, Ordering::Release);
        *self.checking.lock().unwrap_or_else(|p| p.into_inner()) = Some(Checking {
            candidate: lineage(&module, &settings),
            content_hash: module.content_hash().to_string(),
            shadow_messages: sample.len(),
            started_unix_ms: now_ms(),
        });
        let checked = shadow_check(&cur, &module, &settings, &sample, limits, &self.cancel);
        let checking = self
            .checking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let diff = match checked {
            Ok(diff) => diff,
            Err(CheckError::Refused(why)) => return Err(self.reject(why)),
            Err(CheckError::Cancelled) => {
                let why = format!(
                    "the check of {} was cancelled ({}); nothing decided",
                    checking.map_or_else(String::new, |c| c.candidate),
                    self.cancel_reason.lock().unwrap_or_else(|p| p.into_inner())
                );
                tracing::info!(pipeline = %self.pipeline, "{why}");
                self.set_last("cancelled", why.clone());
                return Err(Rejected(why));
            }
        };
        *self.banned.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let generation = self.generation() + 1;
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(cur.clone());
        let next = Arc::new(Version::new(module, settings, generation));
        let version = next.label().to_string();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        // The version it replaces stays warm through the probation: failures are re-run on
        // it, and a rollback needs no compile.
        let warm = TransformInstance::new(cur.module.clone(), cur.settings.clone()).ok();
        *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Probation {
            active: true,
            started: Some(std::time::Instant::now()),
            previous: warm,
            ..Default::default()
        };
        self.generation.store(generation, Ordering::Release);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let changes = diff.summary();
        tracing::info!(pipeline = %self.pipeline, from = %cur.label(), to = %version, shadow = sample.len(), changed = diff.changed, "transform swapped; {changes}");
        self.set_decision(
            "accepted",
            format!(
                "{} -> {version} (shadow-checked on {} messages; {changes})",
                cur.label(),
                sample.len()
            ),
            Some(diff),
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
